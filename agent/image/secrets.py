"""Find secrets about to be baked into an image, so a build can warn or refuse.

Every clone of an image carries every byte of it: a private key, a cloud
credential or an SSH host key baked in is shared by the whole fleet and by
anyone who can pull the image. Secrets belong to the runtime (environment,
mounted files), never to the artifact.

The check must stay cheap on a tree of 100k files: it looks at the names of
regular files first and reads at most the first :data:`PEEK_BYTES` of the few
candidates whose name suggests a secret. It is a safety net, not a scanner for
every possible secret: an ordinary configuration file is never flagged.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from agent.errors import AgentError
from agent.manifest.format import Entry, EntryError, EntryType
from agent.paths import display_path

log = logging.getLogger(__name__)

PEEK_BYTES = 16 * 1024
"""How much of a candidate file is read (a PEM bundle may hold certificates first)."""

_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----|PuTTY-User-Key-File-")
_DOCKER_AUTH = re.compile(rb'"(?:auth|identitytoken|registrytoken)"\s*:\s*"[^"\s]+"')
_KUBE_TOKEN = re.compile(
    rb"^[ \t]*-?[ \t]*(?:token|client-key-data|password|id-token|refresh-token|access-token)"
    rb"[ \t]*:[ \t]*['\"]?[^\s'\"#]",
    re.MULTILINE,
)
_NETRC_PASSWORD = re.compile(rb"(?:^|\s)password\s+\S", re.MULTILINE)
_ENV_ASSIGNMENT = re.compile(
    rb"^[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_.-]*)[ \t]*=[ \t]*(.*?)[ \t\r]*$", re.MULTILINE
)
_SECRET_WORDS = frozenset(
    {"KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "PASS", "PWD", "APIKEY", "CREDENTIALS"}
)
_KEY_NAMES = ("*.pem", "*.key", "*.p8", "*.ppk", "id_*", "*_key")
# Every name any check below can flag; the rest of a large tree is skipped at once.
_CANDIDATE = re.compile(
    rb"id_.*|.*_key|.*\.(?:pem|key|p8|ppk|json)|credentials|config|[._]netrc|\.pgpass"
    rb"|\.env(?:\..*)?|msal_token_cache.*",
    re.DOTALL,
)
_ENV_TEMPLATES = (".example", ".sample", ".template", ".dist", ".defaults")


@dataclass(frozen=True, slots=True)
class SecretWarning:
    """A file that looks like a secret: where it is, what kind, and why."""

    path: bytes
    kind: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": display_path(self.path), "kind": self.kind, "reason": self.reason}

    def __str__(self) -> str:
        return f"{display_path(self.path)}: {self.reason}"


class SecretsFoundError(AgentError):
    """Bake was asked to be strict and found secret-looking files."""

    def __init__(self, warnings: Iterable[SecretWarning]) -> None:
        self.warnings = tuple(warnings)
        super().__init__(f"{len(self.warnings)} secret-looking file(s) found; nothing was written")


_Peek = Callable[[], bytes]


def _private_key(path: bytes, name: bytes, peek: _Peek) -> str | None:
    text = os.fsdecode(name)
    if text.endswith(".pub") or not any(fnmatchcase(text, p) for p in _KEY_NAMES):
        return None
    if _PRIVATE_KEY.search(peek()):
        return "contains a private key"
    return None


def _ssh_host_key(path: bytes, name: bytes, peek: _Peek) -> str | None:
    if (
        path.startswith(b"/etc/ssh/")
        and fnmatchcase(os.fsdecode(name), "ssh_host_*_key")
        and peek().strip()
    ):
        return "is an SSH host private key: every instance cloned from the image would share it"
    return None


def _cloud_credentials(path: bytes, name: bytes, peek: _Peek) -> str | None:
    reason = _cloud_file(path, os.fsdecode(name))
    return reason if reason is not None and peek().strip() else None


def _cloud_file(path: bytes, text: str) -> str | None:
    if path.endswith(b"/.aws/credentials"):
        return "holds AWS credentials"
    if b"/.config/gcloud/" in path and (
        fnmatchcase(text, "*credentials*.json") or text == "application_default_credentials.json"
    ):
        return "holds Google Cloud credentials"
    if b"/.azure/" in path and (
        text in ("accessTokens.json", "service_principal_entries.json")
        or text.startswith("msal_token_cache")
    ):
        return "holds Azure credentials"
    return None


def _docker_credentials(path: bytes, name: bytes, peek: _Peek) -> str | None:
    if path.endswith(b"/.docker/config.json") and _DOCKER_AUTH.search(peek()):
        return "holds container registry credentials (auths)"
    return None


def _kube_credentials(path: bytes, name: bytes, peek: _Peek) -> str | None:
    if path.endswith(b"/.kube/config") and _KUBE_TOKEN.search(peek()):
        return "holds Kubernetes credentials (token or client key)"
    return None


def _netrc(path: bytes, name: bytes, peek: _Peek) -> str | None:
    if name in (b".netrc", b"_netrc") and _NETRC_PASSWORD.search(peek()):
        return "holds login passwords (.netrc)"
    return None


def _pgpass(path: bytes, name: bytes, peek: _Peek) -> str | None:
    if name == b".pgpass" and any(
        line.strip() and not line.lstrip().startswith(b"#") for line in peek().splitlines()
    ):
        return "holds PostgreSQL passwords (.pgpass)"
    return None


def _is_secret_name(variable: bytes) -> bool:
    words = set(re.split(r"[_.-]", variable.decode("ascii", "replace").upper()))
    return bool(words & _SECRET_WORDS) and "PUBLIC" not in words


def _literal(value: bytes) -> bytes:
    value = value.split(b" #", 1)[0].strip()
    if len(value) >= 2 and value[:1] == value[-1:] and value[:1] in (b"'", b'"'):
        value = value[1:-1]
    return value


def _dotenv(path: bytes, name: bytes, peek: _Peek) -> str | None:
    if name != b".env" and not name.startswith(b".env."):
        return None
    if name.endswith(tuple(suffix.encode() for suffix in _ENV_TEMPLATES)):
        return None
    for match in _ENV_ASSIGNMENT.finditer(peek()):
        variable, value = match.group(1), _literal(match.group(2))
        if _is_secret_name(variable) and value and not value.startswith(b"$"):
            return f"assigns a secret-looking value to {variable.decode('ascii', 'replace')}"
    return None


# Checked in order; the first that matches names the file (one warning per path).
_CHECKS: tuple[tuple[str, Callable[[bytes, bytes, _Peek], str | None]], ...] = (
    ("ssh_host_key", _ssh_host_key),
    ("private_key", _private_key),
    ("cloud_credentials", _cloud_credentials),
    ("docker_credentials", _docker_credentials),
    ("kube_credentials", _kube_credentials),
    ("netrc", _netrc),
    ("pgpass", _pgpass),
    ("dotenv", _dotenv),
)


def _read_head(path: bytes) -> bytes:
    """The first PEEK_BYTES of a regular file, never following links or blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, PEEK_BYTES)
    finally:
        os.close(fd)


def is_candidate(name: bytes) -> bool:
    """Whether a regular file called ``name`` may be a secret (only those are ever read)."""
    return _CANDIDATE.fullmatch(name) is not None


def check_file(path: bytes, peek: _Peek) -> SecretWarning | None:
    """The warning for the regular file at ``path`` whose first bytes ``peek`` returns, if any.

    ``peek`` is called only when the name alone does not settle the question.
    """
    name = path.rsplit(b"/", 1)[-1]
    if not _CANDIDATE.fullmatch(name):
        return None
    for kind, check in _CHECKS:
        reason = check(path, name, peek)
        if reason is not None:
            return SecretWarning(path, kind, reason)
    return None


def find_secrets(
    root: str | bytes | os.PathLike[str], entries: Iterable[Entry]
) -> list[SecretWarning]:
    """Secret-looking regular files among ``entries`` (scanned under ``root``), by path.

    Only candidate files are opened, and only their first :data:`PEEK_BYTES`.
    A candidate that cannot be read is logged and skipped: a bake must not fail
    because of the safety net.
    """
    base = os.fsencode(root).rstrip(b"/")
    warnings: list[SecretWarning] = []
    for entry in entries:
        if entry.type is not EntryType.REGULAR or entry.error is not EntryError.NONE:
            continue
        cache: list[bytes] = []

        def peek(path: bytes = entry.path, cache: list[bytes] = cache) -> bytes:
            if not cache:
                try:
                    cache.append(_read_head(base + path))
                except OSError as exc:
                    log.warning(
                        "cannot read %s to check it for secrets: %s",
                        display_path(path),
                        exc.strerror,
                    )
                    cache.append(b"")
            return cache[0]

        warning = check_file(entry.path, peek)
        if warning is not None:
            warnings.append(warning)
    return warnings
