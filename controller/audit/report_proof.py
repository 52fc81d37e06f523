"""What a conformance report offers as proof: chain checks, head, keys, the re-verify command.

The CLI fills this in from whatever source the report was made from (the
controller's API, a data dir, an export file); the renderers only show it.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from controller.audit.chain import Checkpoint, VerifyResult


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """One verification that was run for the report, and what it covered."""

    what: str
    result: VerifyResult


@dataclass(frozen=True, slots=True)
class Proof:
    """Everything an auditor needs to re-check the report without trusting it."""

    source: str
    checks: tuple[ChainCheck, ...]
    checkpoints: tuple[Checkpoint, ...]
    key_id: str | None
    export_path: str | None
    export_sha256: str | None
    command: str

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.result.ok for c in self.checks)

    @property
    def head_seq(self) -> int | None:
        return self.checks[0].result.last_seq if self.checks else None

    @property
    def head_hash(self) -> str | None:
        return self.checks[0].result.last_hash if self.checks else None

    @property
    def signing_key_ids(self) -> tuple[str, ...]:
        """The key ids the retained checkpoints say they were signed with."""
        return tuple(sorted({c.key_id for c in self.checkpoints if c.key_id}))


def verify_command(*, export: str | None = None, data_dir: str | None = None, keyed: bool) -> str:
    """The exact ``corral audit verify`` command that re-checks the report's source offline."""
    argv: Sequence[str] = ["corral", "audit", "verify"]
    if export is not None:
        argv = [*argv, "--file", export]
    elif data_dir is not None:
        argv = [*argv, "--data-dir", data_dir]
    if keyed:
        argv = [*argv, "--key-file", "KEY"]
    return shlex.join(argv)
