"""Report sequence numbers that only ever increase within one boot of the instance.

The controller refuses a duplicate or stale report by its ``seq`` within
``(instance, boot_id)``. An agent restarted within the same boot (a crash, an
upgrade, a container restart) must therefore continue above every number it
has used. Decision: the next number is ``max(last + 1, now in Unix ms)``.

- ``last`` is persisted in ``DATA_DIR/seq.json`` with the boot id, written
  atomically (temporary file, fsync, rename) before the number is used, so a
  restart continues above it even when the clock stepped back.
- the clock floor keeps numbers increasing when the data directory was lost
  or is unwritable (a failed write is logged and counted, never fatal).

Numbers are therefore not dense; the controller must only rely on order.
The data directory is the agent's own, never inside the watched root.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable

log = logging.getLogger(__name__)

FILE_NAME = "seq.json"


class SequenceNumbers:
    """Issues strictly increasing sequence numbers for one boot id."""

    def __init__(
        self,
        *,
        boot_id: str,
        data_dir: str | None,
        clock: Callable[[], float],
        on_write_error: Callable[[OSError], None] | None = None,
    ) -> None:
        self._boot_id = boot_id
        self._path = os.path.join(data_dir, FILE_NAME) if data_dir else None
        self._clock = clock
        self._on_write_error = on_write_error
        self._last = self._load()

    @property
    def last(self) -> int:
        return self._last

    def _load(self) -> int:
        if self._path is None:
            return 0
        try:
            with open(self._path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable sequence state %s: %s", self._path, exc)
            return 0
        if not isinstance(data, dict) or data.get("boot_id") != self._boot_id:
            return 0  # a new boot: numbering starts over
        last = data.get("seq")
        return last if isinstance(last, int) and last >= 0 else 0

    def _store(self, value: int) -> None:
        if self._path is None:
            return
        directory = os.path.dirname(self._path)
        try:
            fd, temporary = tempfile.mkstemp(prefix=".seq.", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump({"boot_id": self._boot_id, "seq": value}, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, self._path)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as exc:
            log.warning("cannot persist the report sequence in %s: %s", directory, exc)
            if self._on_write_error is not None:
                self._on_write_error(exc)

    def next(self) -> int:
        """The next number: above every number issued in this boot, persisted first."""
        value = max(self._last + 1, int(self._clock() * 1000))
        self._store(value)
        self._last = value
        return value
