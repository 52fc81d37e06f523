"""Python's cycle collector, paused around work that builds large acyclic structures."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cycle collector off for the block, back on (if it was) after, also on error.

    For work that allocates hundreds of thousands of objects which live to its
    end and form no reference cycles (an image tree, an audit report): every
    collection those allocations set off walks them all again and frees
    nothing. Reference counting still frees everything as it goes.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
