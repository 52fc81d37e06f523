"""Policy: exclude glob semantics, TOML loading, defaults and the trip through the manifest."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from agent.errors import PolicyError
from agent.manifest.policy import ATTRIBUTES, DEFAULT_EXCLUDE, Policy, load_policy


def _excluded(pattern: str, path: str | bytes) -> bool:
    raw = path if isinstance(path, bytes) else path.encode()
    return Policy(exclude=(pattern,)).excludes(raw)


@pytest.mark.parametrize(
    ("pattern", "path", "excluded"),
    [
        # A pattern excludes the path and its whole subtree, nothing beside it.
        ("/var/log", "/var/log", True),
        ("/var/log", "/var/log/syslog", True),
        ("/var/log", "/var/log/nginx/access.log", True),
        ("/var/log", "/var/logs", False),
        ("/var/log", "/var", False),
        ("/var/log/", "/var/log/x", True),
        ("/tmp/*", "/tmp", False),
        ("/tmp/*", "/tmp/a", True),
        ("/tmp/*", "/tmp/a/b", True),
        # "*" stays inside one component, "**" crosses components.
        ("/home/*/.cache", "/home/ann/.cache", True),
        ("/home/*/.cache", "/home/ann/.cache/pip/x", True),
        ("/home/*/.cache", "/home/ann/src/.cache", False),
        ("/home/*/.cache", "/home/.cache", False),
        ("/home/**/.cache", "/home/.cache", True),
        ("/home/**/.cache", "/home/ann/src/.cache", True),
        ("**/__pycache__", "/__pycache__", True),
        ("**/__pycache__", "/usr/lib/python3/x/__pycache__/m.pyc", True),
        ("**/__pycache__", "/usr/lib/__pycache__x", False),
        ("/srv/**", "/srv/a/b/c", True),
        ("/srv/**", "/srv", False),
        ("/etc/*.bak", "/etc/passwd.bak", True),
        ("/etc/*.bak", "/etc/sub/passwd.bak", False),
        ("/etc/*.bak", "/etc/passwd", False),
        # "?" is one character, never "/".
        ("/data/v?", "/data/v1", True),
        ("/data/v?", "/data/v10", False),
        ("/data/v?", "/data/v", False),
        ("/a?b", "/a/b", False),
        # Character classes.
        ("/data/[ab]", "/data/a", True),
        ("/data/[ab]", "/data/c", False),
        ("/data/[a-c]x", "/data/bx", True),
        ("/data/[a-c]x", "/data/dx", False),
        ("/data/[!a]", "/data/b", True),
        ("/data/[!a]", "/data/a", False),
        ("/data[!a]x", "/data/x", False),
        ("/data/[]]", "/data/]", True),
        ("/data/[[]", "/data/[", True),
        ("/data/[*]", "/data/*", True),
        ("/data/[*]", "/data/x", False),
        # Regular-expression metacharacters are literal.
        ("/a.b", "/axb", False),
        ("/a+b(c)", "/a+b(c)", True),
        ("/x$", "/x$", True),
        # Non-ASCII patterns match characters, not bytes.
        ("/données", "/données/x", True),
        ("/caf?", "/café", True),
        ("/caf?", "/cafés", False),
        ("/[éè]t", "/ét", True),
        ("/[éè]t", "/et", False),
        ("/[!é]t", "/èt", True),
        ("/日本/*", "/日本/語", True),
        # A byte that is not UTF-8 is one character.
        ("/caf?", b"/caf\xe9", True),
        ("/raw/*", b"/raw/\xff\xfe", True),
        # "/" alone excludes everything.
        ("/", "/", True),
        ("/", "/etc/passwd", True),
    ],
)
def test_exclude_semantics(pattern: str, path: str | bytes, excluded: bool) -> None:
    assert _excluded(pattern, path) is excluded


def test_names_with_newlines_are_matched_whole() -> None:
    assert _excluded("/var/log", b"/var/log/a\nb")
    assert not _excluded("/x*", b"/y\n/x")


@pytest.mark.parametrize(
    "pattern", ["var/log", "relative", "/unclosed[ab", "/bad-range[z-a]", "*.log"]
)
def test_invalid_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(PolicyError):
        Policy(exclude=(pattern,))


def test_default_policy() -> None:
    policy = Policy()
    assert policy.include == ("/",)
    assert policy.exclude == DEFAULT_EXCLUDE
    assert policy.one_filesystem is True
    assert policy.ignore_attributes == ()
    for path in [b"/proc/1/status", b"/sys", b"/dev/null", b"/run/x", b"/tmp/x", b"/var/tmp/x"]:
        assert policy.excludes(path)
    for path in [b"/var/log/syslog", b"/var/cache/apt", b"/var/lib/corral-agent/state"]:
        assert policy.excludes(path)
    for path in [b"/", b"/etc/passwd", b"/var", b"/var/lib/dpkg/status", b"/usr/bin/env"]:
        assert not policy.excludes(path)


def test_empty_exclude_checks_everything() -> None:
    assert not Policy(exclude=()).excludes(b"/proc")


def test_relative_include_is_refused() -> None:
    with pytest.raises(PolicyError, match="absolute"):
        Policy(include=("etc",))


def test_ignore_attributes_are_validated_and_canonical() -> None:
    assert Policy(ignore_attributes=("uid", "mode", "uid")).ignore_attributes == ("mode", "uid")
    with pytest.raises(PolicyError, match="owner"):
        Policy(ignore_attributes=("owner",))
    with pytest.raises(PolicyError, match="type"):
        Policy(ignore_attributes=("type",))  # a type change always counts
    assert "type" not in ATTRIBUTES


def test_round_trip_through_proto() -> None:
    policy = Policy(
        include=("/etc", "/usr"),
        exclude=("/etc/*.bak", "/données/**"),
        ignore_attributes=("uid", "mode"),
        one_filesystem=False,
    )
    assert Policy.from_proto(policy.to_proto()) == policy
    assert policy.to_json() == {
        "include": ["/etc", "/usr"],
        "exclude": ["/etc/*.bak", "/données/**"],
        "ignore_attributes": ["mode", "uid"],
        "one_filesystem": False,
    }


def _load(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return load_policy(str(path))


def test_load_policy_table(tmp_path: Path) -> None:
    policy = _load(
        tmp_path,
        """
        [policy]
        include = ["/etc", "/usr", "/opt/app"]
        extra_exclude = ["/opt/app/uploads", "**/__pycache__"]
        ignore_attributes = ["uid", "gid"]
        one_filesystem = false
        """,
    )
    assert policy.include == ("/etc", "/usr", "/opt/app")
    assert policy.exclude == (*DEFAULT_EXCLUDE, "/opt/app/uploads", "**/__pycache__")
    assert policy.ignore_attributes == ("gid", "uid")
    assert policy.one_filesystem is False


def test_load_policy_top_level_and_exclude_replaces_defaults(tmp_path: Path) -> None:
    policy = _load(tmp_path, 'exclude = ["/srv/data"]\n')
    assert policy.exclude == ("/srv/data",)
    assert policy.include == ("/",)
    assert not policy.excludes(b"/tmp/x")


def test_empty_file_is_the_default_policy(tmp_path: Path) -> None:
    assert _load(tmp_path, "") == Policy()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("excludes = []\n", "unknown policy key"),
        ('exclude = "/tmp"\n', "list of strings"),
        ("one_filesystem = 1\n", "true or false"),
        ('ignore_attributes = ["colour"]\n', "unknown attribute"),
        ('extra_exclude = ["tmp"]\n', "absolute"),
        ("[policy\n", "not valid TOML"),
        ("policy = 3\n", "must be a table"),
    ],
)
def test_load_policy_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        _load(tmp_path, text)


def test_load_policy_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(str(tmp_path / "absent.toml"))


def test_documented_examples_load() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 3
    for block in blocks:
        data = tomllib.loads(block)
        Policy.from_mapping(data.get("policy", data))
