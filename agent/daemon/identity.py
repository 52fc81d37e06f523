"""Who this agent speaks for: instance id, boot id and the image it was baked from.

Decisions (documented for operators in docs/agent.md):

- **Instance id.** A configured id (flag, env, TOML) always wins. Otherwise the
  agent watching the host (``--root /``) uses the host's ``/etc/machine-id``.
  An agent watching another root (a container's or a mounted image's
  filesystem) uses ``ROOT/etc/machine-id`` when present and refuses to start
  otherwise: the host's id would make every such agent on one host claim the
  same instance.
- **Boot id.** The kernel's ``/proc/sys/kernel/random/boot_id``: it changes on
  every boot, and report sequence numbers are strictly increasing within it.
- **Image.** ``image.json`` written by ``corral bake`` names the image
  (reference, digest), the manifest digest and the baseline root; the agent
  checks the manifest file beside it has that digest before trusting either.

Filesystem locations are parameters so tests use fixture trees.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError, PolicyError
from agent.manifest.policy import Policy

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class IdentityError(AgentError):
    """The agent cannot tell which instance, boot or image it reports for."""


@dataclass(frozen=True)
class ImageIdentity:
    """The baked image as image.json describes it."""

    name: str
    version: str
    image_ref: str
    image_digest: str
    manifest_digest: str
    root: bytes
    entry_count: int
    policy: Policy


def check_instance_id(value: str) -> str:
    """Return ``value`` when it is a usable instance id; IdentityError otherwise."""
    if not _ID.match(value):
        raise IdentityError(
            f"instance id {value!r} is not valid: 1-128 characters from "
            "letters, digits and . _ : -, starting with a letter or digit"
        )
    return value


def _read_machine_id(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            value = handle.read().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"cannot read {path}: {exc}") from exc
    if not value or value == "uninitialized":
        return None
    if not _MACHINE_ID.match(value):
        raise IdentityError(f"{path} does not hold a machine id (32 hex digits): {value[:40]!r}")
    return value


def resolve_instance_id(configured: str | None, *, root: str, host_root: str = "/") -> str:
    """The instance id: configured, else the machine-id of the host or of ``root``."""
    if configured:
        return check_instance_id(configured)
    watches_host = os.path.realpath(root) == os.path.realpath(host_root)
    path = os.path.join(root, "etc", "machine-id")
    machine_id = _read_machine_id(path)
    if machine_id is not None:
        return machine_id
    if watches_host:
        raise IdentityError(
            f"no instance id: {path} is missing or empty; "
            "pass --instance-id or set CORRAL_AGENT_INSTANCE_ID"
        )
    raise IdentityError(
        f"no instance id for root {root}: it has no etc/machine-id, and the host's id "
        "would be shared by every root watched on this host; "
        "pass --instance-id or set CORRAL_AGENT_INSTANCE_ID"
    )


def read_boot_id(proc: str = "/proc") -> str:
    """The kernel's boot id (a UUID that changes on every boot)."""
    path = os.path.join(proc, "sys", "kernel", "random", "boot_id")
    try:
        with open(path, encoding="ascii") as handle:
            value = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"cannot read the boot id from {path}: {exc}") from exc
    if not value:
        raise IdentityError(f"{path} is empty")
    return value


def _field(data: dict[str, Any], key: str, path: str) -> Any:
    if key not in data:
        raise IdentityError(f"{path} has no {key!r}: was it written by `corral bake`?")
    return data[key]


def _string(data: dict[str, Any], key: str, path: str) -> str:
    value = _field(data, key, path)
    if not isinstance(value, str) or not value:
        raise IdentityError(f"{path}: {key!r} must be a non-empty string")
    return value


def read_image_json(path: str) -> ImageIdentity:
    """Parse the baked image.json. Raises IdentityError saying what is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise IdentityError(f"cannot read image description {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IdentityError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise IdentityError(f"{path} must hold a JSON object")
    manifest_digest = _string(data, "manifest_digest", path)
    if not _DIGEST.match(manifest_digest):
        raise IdentityError(f"{path}: manifest_digest {manifest_digest!r} is not sha256:<64 hex>")
    root_hex = _string(data, "root", path)
    try:
        root = bytes.fromhex(root_hex)
    except ValueError:
        root = b""
    if len(root) != 32:
        raise IdentityError(f"{path}: root must be 64 hex digits (got {root_hex[:70]!r})")
    policy_data = _field(data, "policy", path)
    if not isinstance(policy_data, dict):
        raise IdentityError(f"{path}: policy must be an object")
    try:
        policy = Policy.from_mapping(policy_data)
    except PolicyError as exc:
        raise IdentityError(f"{path}: {exc}") from exc
    entry_count = data.get("entry_count", 0)
    return ImageIdentity(
        name=str(data.get("name", "")),
        version=str(data.get("version", "")),
        image_ref=_string(data, "image_ref", path),
        image_digest=_string(data, "image_digest", path),
        manifest_digest=manifest_digest,
        root=root,
        entry_count=entry_count if isinstance(entry_count, int) else 0,
        policy=policy,
    )


def check_manifest_digest(path: str, expected: str) -> None:
    """Stream-hash the manifest file and compare with image.json's digest."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise IdentityError(f"cannot read manifest {path}: {exc.strerror}") from exc
    actual = "sha256:" + digest.hexdigest()
    if actual != expected:
        raise IdentityError(
            f"manifest {path} has digest {actual}, but image.json names {expected}: "
            "they come from different bakes"
        )
