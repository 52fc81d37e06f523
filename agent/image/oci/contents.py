"""How a layer's regular files get their digests: hashed as the tar streams past, or by workers.

:class:`StreamedContents` serves a layer read as a stream (compressed, or not
in a file): the content is hashed from views of the stream's chunks as they
pass and dropped. Small files are hashed right there; large ones (at least
:data:`HANDOFF` bytes) on a second thread, since :mod:`hashlib` lets go of the
GIL for them.

:class:`PlacedContents` serves a layer that lies uncompressed in a file
(:mod:`agent.image.oci.placed`): the walk only names where each file's
content lies, and forked workers hash it from the file in batches, so no
content passes through the walking process.

Either way a file's digest lands in its node (anything with a ``digest``
attribute), maybe after the walk has moved on; a hard link made meanwhile
gets its target's digest when that lands (:meth:`link`); :meth:`finish`
returns once every digest has.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator
from typing import Protocol, cast

from agent.image.oci.placed import PlacedLayer, WalkedMembers
from agent.image.oci.tarreader import LayerReader
from agent.image.secrets import PEEK_BYTES
from agent.scan.hashing import Ranges
from agent.scan.hashpool import Finished, HashPool

HANDOFF = 256 << 10
"""A streamed file at least this large is hashed on the second thread."""
BATCH_BYTES = 1 << 20
"""Content a batch of placed files may hold before it goes to a worker."""
BATCH_FILES = 512
"""Files a batch of placed files may hold before it goes to a worker."""

_QUEUED_PIECES = 16
_EMPTY = memoryview(b"")
_EMPTY_DIGEST = hashlib.sha256().digest()


class Node(Protocol):
    """What gets a digest: a regular file's node in the image tree."""

    size: int
    digest: bytes


class Contents(Protocol):
    def add(self, node: Node, *, peek: bool) -> bytes:
        """Have ``node.digest`` set from the current member's content; its first
        PEEK_BYTES if ``peek``, else b""."""
        ...

    def link(self, target: Node, node: Node) -> None:
        """Give ``node`` the digest of ``target`` (now, or when it lands)."""
        ...

    def finish(self) -> None:
        """Return once every digest has landed."""
        ...

    def close(self) -> None:
        """Stop what still works for this layer (after :meth:`finish`, nothing does)."""
        ...


class _LargeFileHasher:
    """Hashes large files' content on a second thread; each digest lands in its node.

    The tar stream is walked in order on one thread; hashing need not be.
    :mod:`hashlib` releases the GIL on buffers over 2 KiB, so this runs on
    another core while the walk goes on. Pieces are views of the stream's
    chunks; at most :data:`_QUEUED_PIECES` wait (as many chunks held).
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[hashlib._Hash, memoryview, Node | None] | None] = (
            queue.Queue(maxsize=_QUEUED_PIECES)
        )
        self._thread = threading.Thread(target=self._work, name="layer-file-digest", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            digest, piece, node = item
            digest.update(piece)
            if node is not None:
                node.digest = digest.digest()
            self._queue.task_done()
        self._queue.task_done()

    def update(self, digest: hashlib._Hash, piece: memoryview, node: Node | None) -> None:
        """Add ``piece`` to ``digest``; then, if ``node`` is given, set its digest."""
        self._queue.put((digest, piece, node))

    def wait(self) -> None:
        """Return once every file submitted so far has its digest."""
        self._queue.join()

    def close(self) -> None:
        """Finish the queued files and stop the thread."""
        self._queue.put(None)
        self._thread.join()


class StreamedContents:
    """Digests of the files ``reader`` streams, from the chunks as they pass."""

    def __init__(self, reader: LayerReader) -> None:
        self._reader = reader
        self._hasher = _LargeFileHasher()

    def add(self, node: Node, *, peek: bool) -> bytes:
        size = node.size
        view = self._reader.whole() if size < HANDOFF else None
        if view is not None:  # most files: one view, hashed here
            node.digest = hashlib.sha256(view).digest()
            return bytes(view[:PEEK_BYTES]) if peek else b""
        return self._hash_pieces(self._reader.content(), size, node)

    def _hash_pieces(self, pieces: Iterator[memoryview], size: int, node: Node) -> bytes:
        """Hash a file that is large or spans chunks; returns its first PEEK_BYTES."""
        digest = hashlib.sha256()
        head = b""
        if size < HANDOFF:
            for piece in pieces:
                if len(head) < PEEK_BYTES:
                    head += bytes(piece[: PEEK_BYTES - len(head)])
                digest.update(piece)
            node.digest = digest.digest()
            return head
        last = _EMPTY
        for piece in pieces:  # each goes when the next is known, the last one with the node
            if len(head) < PEEK_BYTES:
                head += bytes(piece[: PEEK_BYTES - len(head)])
            if last:
                self._hasher.update(digest, last, None)
            last = piece
        self._hasher.update(digest, last, node)
        return head

    def link(self, target: Node, node: Node) -> None:
        self._hasher.wait()  # the target's digest may still be on its way
        node.digest = target.digest

    def finish(self) -> None:
        self._hasher.wait()

    def close(self) -> None:
        self._hasher.close()


class PlacedContents:
    """Digests of a placed layer's files, hashed by ``pool``'s workers from the file.

    Files go in batches (up to :data:`BATCH_BYTES` of content or
    :data:`BATCH_FILES` files) of neighbours in the tar, which a worker maps
    and hashes where they lie. A file whose digest is still out keeps, in
    ``_waiting``, the nodes that get it when it lands: itself, and any hard
    link made to it meanwhile.
    """

    def __init__(self, layer: PlacedLayer, members: WalkedMembers, pool: HashPool) -> None:
        self._layer = layer
        self._members = members
        self._pool = pool
        self._files: list[Ranges] = []
        self._nodes: list[list[Node]] = []
        self._bytes = 0
        self._waiting: dict[int, list[Node]] = {}

    def add(self, node: Node, *, peek: bool) -> bytes:
        if not node.size:
            node.digest = _EMPTY_DIGEST
            return b""
        ranges = self._members.ranges()
        nodes = [node]
        self._waiting[id(node)] = nodes
        self._files.append(ranges)
        self._nodes.append(nodes)
        self._bytes += node.size
        if self._bytes >= BATCH_BYTES or len(self._files) >= BATCH_FILES:
            self._submit()
        return self._layer.head(ranges, PEEK_BYTES) if peek else b""

    def link(self, target: Node, node: Node) -> None:
        waiting = self._waiting.get(id(target))
        if waiting is None:
            node.digest = target.digest
        else:
            waiting.append(node)

    def _submit(self) -> None:
        batch = self._layer.batch(self._files)
        finished = self._layer.run(lambda: self._pool.submit(self._nodes, batch))
        self._files, self._nodes, self._bytes = [], [], 0
        self._land(finished)

    def finish(self) -> None:
        if self._files:
            self._submit()
        self._land(self._layer.run(self._pool.drain))

    def close(self) -> None:
        if self._waiting:  # the walk failed: what is still out is not wanted
            self._pool.close()

    def _land(self, finished: Finished) -> None:
        for tag, outcomes in finished:
            batch = cast(list[list[Node]], tag)  # the tag _submit gave
            for nodes, outcome in zip(batch, outcomes, strict=True):
                if not isinstance(outcome, bytes):
                    raise self._layer.changed()
                for node in nodes:
                    node.digest = outcome
                del self._waiting[id(nodes[0])]
