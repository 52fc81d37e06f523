"""What a scan returns, and how it reports progress while it runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from agent.manifest.format import Entry, root_of

Progress = Callable[[int, int], None]
"""Called with (entries seen, bytes hashed) about every thousand entries during a scan."""


@dataclass(frozen=True)
class ScanResult:
    """What a scan found: entries sorted by path, and what it cost.

    ``root`` is computed on first use (baking builds a manifest, which computes
    the same root, and need not pay twice); a scan with a cache computes it
    from the leaves it kept (or reuses the cached root) before returning.
    """

    entries: list[Entry]
    files_hashed: int
    files_cached: int
    bytes_hashed: int
    errors: int
    seconds: float
    _root: bytes | None = field(default=None, repr=False, compare=False)

    @cached_property
    def root(self) -> bytes:
        if self._root is not None:
            return self._root
        return root_of(self.entries)
