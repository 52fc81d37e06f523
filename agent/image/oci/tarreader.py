"""A layer's tar stream walked member by member, contents handed out as views of the stream.

:class:`LayerReader` reads the uncompressed layer in chunks of :data:`CHUNK`
bytes and steps through them block by block. Each member comes out as a
:class:`Member` once the extended headers before it (pax, GNU long names) are
applied, as Go's ``archive/tar`` hands members to an engine's unpacker:

- pax ``path``, ``linkpath``, ``size``, ``uid`` and ``gid`` records replace the
  header's fields (an empty value keeps the field), then a GNU long name or
  link replaces the name or link; global pax headers are skipped, as
  containers/storage skips them;
- a type ``\\0`` member whose final name ends in ``/`` is a directory, other
  ``\\0`` and contiguous (``7``) members are regular files;
- a hard link, symlink, device, directory or FIFO has no data, whatever its
  size field says;
- a sparse file (old GNU, or GNU pax 0.0, 0.1, 1.0) reads as its full size,
  with zeros in the holes;
- the archive ends where the stream does, or at a zero block followed by a
  second one or by the end of the stream (a header right after a single zero
  block is an error, as in Go); what follows the end is not read here.

A regular member's content comes from :meth:`LayerReader.content` as
memoryviews of the chunks, without a copy; whatever the caller leaves unread
is skipped. A reader whose stream can step over bytes (a layer walked in place
in its file) need not read contents at all: :meth:`LayerReader.ranges` says
where one lies, and the reader skips it. A truncated stream, an extended header larger than
:data:`~agent.image.oci.tarheader.MAX_HEADER` or a member type outside the list
above raises :class:`~agent.image.oci.tarheader.LayerError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from agent.image.oci.tarheader import (
    BLOCK,
    BLOCK_DEVICE,
    CHAR_DEVICE,
    CONTIGUOUS,
    DIRECTORY,
    FIFO,
    GNU_LONG_LINK,
    GNU_LONG_NAME,
    GNU_SPARSE,
    HARD_LINK,
    HEADER_ONLY,
    MAX_HEADER,
    OLD_REGULAR,
    PAX,
    PAX_GLOBAL,
    REGULAR,
    SPARSE_MAP,
    SYMLINK,
    Header,
    LayerError,
    SparseRegion,
    check_sparse_map,
    decimal,
    gnu_real_size,
    gnu_sparse_map,
    is_gnu,
    malformed,
    owner_id,
    parse_header,
    pax_records,
    pax_sparse_map,
    text_sparse_map,
)
from agent.scan.hashing import Ranges

CHUNK = 1 << 20
"""Bytes read from the stream at a time."""

_EXTENDED = (PAX, PAX_GLOBAL, GNU_LONG_NAME, GNU_LONG_LINK)
_KINDS = frozenset((REGULAR, DIRECTORY, SYMLINK, HARD_LINK, CHAR_DEVICE, BLOCK_DEVICE, FIFO))
_ZEROS = memoryview(bytes(CHUNK))


Member = Header
"""One member of a layer as the reader yields it: its kind is one of the ``tarheader``
types REGULAR, DIRECTORY, SYMLINK, HARD_LINK, CHAR_DEVICE, BLOCK_DEVICE, FIFO."""


def shown(name: bytes) -> str:
    """A member name for a message: quoted, undecodable bytes escaped."""
    return repr(name.decode("utf-8", "backslashreplace"))


class Chunks(Protocol):
    """Where the tar comes from: each read returns up to ``size`` bytes, nothing at the end."""

    def read(self, size: int, /) -> bytes: ...


class LayerReader:
    """Members of the tar read from ``stream``; iterate once, front to back."""

    def __init__(
        self,
        stream: Chunks,
        *,
        chunk: int = CHUNK,
        skip: Callable[[int], bool] | None = None,
        origin: int = 0,
    ) -> None:
        """``skip``, when the stream can, steps over that many bytes without reading them
        (False: the stream ends first); ``origin`` is where the stream starts in its file,
        so that :meth:`ranges` names file offsets."""
        self._stream = stream
        self._read_size = chunk
        self._skip = skip
        self._start = origin
        """Where the current chunk starts."""
        self._chunk = b""
        self._view = memoryview(self._chunk)
        self._pos = 0
        self._left = 0
        """Bytes of the current member's data not handed out yet."""
        self._padding = 0
        self._size = 0
        self._regions: list[SparseRegion] | None = None

    # -- the stream ----------------------------------------------------------------

    def _refill(self) -> bool:
        """Read the next chunk; False at the end of the stream."""
        self._start += len(self._chunk)
        self._chunk = self._stream.read(self._read_size)
        self._view = memoryview(self._chunk)
        self._pos = 0
        return bool(self._chunk)

    def _pass(self, count: int) -> None:
        """Step over ``count`` bytes."""
        available = len(self._chunk) - self._pos
        if count > available and self._skip is not None:
            if not self._skip(count - available):
                raise malformed("the stream ends inside a member's data")
            self._start += len(self._chunk) + count - available
            self._chunk = b""
            self._view = memoryview(self._chunk)
            self._pos = 0
            return
        while True:
            available = len(self._chunk) - self._pos
            if count <= available:
                self._pos += count
                return
            count -= available
            if not self._refill():
                raise malformed("the stream ends inside a member's data")

    def _block(self) -> bytes | None:
        """The next 512 bytes; None at the end of the stream."""
        pos = self._pos
        if pos + BLOCK <= len(self._chunk):
            self._pos = pos + BLOCK
            return self._chunk[pos : pos + BLOCK]
        parts = [self._chunk[pos:]]
        have = len(parts[0])
        while have < BLOCK:
            if not self._refill():
                if have == 0:
                    return None
                raise malformed("the stream ends inside a header")
            part = self._chunk[: BLOCK - have]
            self._pos = len(part)
            parts.append(part)
            have += len(part)
        return b"".join(parts)

    def _pieces(self, count: int) -> Iterator[memoryview]:
        """The next ``count`` bytes of the current member's data, as views."""
        while count:
            pos = self._pos
            available = len(self._chunk) - pos
            if not available:
                if not self._refill():
                    raise malformed("the stream ends inside a member's data")
                continue
            take = count if count < available else available
            self._pos = pos + take
            self._left -= take
            count -= take
            yield self._view[pos : pos + take]

    def _read(self, count: int) -> bytes:
        """The next ``count`` bytes of the current member's data (at most MAX_HEADER)."""
        return b"".join(self._pieces(count))

    # -- members ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[Member]:
        while True:
            member = self._next()
            if member is None:
                return
            yield member

    def _next(self) -> Member | None:
        records: dict[bytes, bytes] | None = None
        long_name = long_link = None
        while True:
            pos = self._pos + self._left + self._padding
            if pos + BLOCK <= len(self._chunk):  # the next header lies in this chunk
                self._pos = pos + BLOCK
                block: bytes | None = self._chunk[pos : pos + BLOCK]
            else:
                self._pass(self._left + self._padding)
                block = self._block()
            self._left = self._padding = 0
            header = None if block is None else parse_header(block)
            if header is None:
                if block is not None:  # a zero block: the end, unless something else follows
                    after = self._block()
                    if after is not None and any(after):
                        raise malformed("a zero block is followed by a header")
                return None
            assert block is not None
            kind = header.kind
            if kind in _KINDS and records is None and long_name is None and long_link is None:
                stored = 0 if kind in HEADER_ONLY else header.size  # the usual member
                self._left, self._padding, self._regions = stored, -stored % BLOCK, None
                return header
            if kind not in _EXTENDED:
                return self._member(block, header, records or {}, long_name, long_link)
            if header.size > MAX_HEADER:
                raise LayerError(
                    f"extended tar header of {header.size} bytes (more than {MAX_HEADER}): "
                    "not a sane image layer"
                )
            self._left, self._padding = header.size, -header.size % BLOCK
            if header.kind == PAX:
                records = pax_records(self._read(header.size))
            elif header.kind == GNU_LONG_NAME:
                long_name = self._read(header.size).partition(b"\0")[0]
            elif header.kind == GNU_LONG_LINK:
                long_link = self._read(header.size).partition(b"\0")[0]

    def _member(
        self,
        block: bytes,
        header: Header,
        records: dict[bytes, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
    ) -> Member:
        name, link, size, uid, gid = header.name, header.link, header.size, header.uid, header.gid
        if records:
            name = records.get(b"path") or name
            link = records.get(b"linkpath") or link
            if text := records.get(b"size"):
                size = decimal(text, "pax size")
            if text := records.get(b"uid"):
                uid = owner_id(decimal(text, "pax uid"), "uid")
            if text := records.get(b"gid"):
                gid = owner_id(decimal(text, "pax gid"), "gid")
        if long_name is not None:
            name = long_name
        if long_link is not None:
            link = long_link
        kind = header.kind
        if kind == OLD_REGULAR:
            kind = DIRECTORY if name.endswith(b"/") else REGULAR
        elif kind == CONTIGUOUS:
            kind = REGULAR
        stored = 0 if kind in HEADER_ONLY else size
        self._left, self._padding, self._regions = stored, -stored % BLOCK, None
        if kind == GNU_SPARSE:
            if not is_gnu(block):
                raise malformed(f"member {shown(name)} has the sparse type without a GNU header")
            kind, size = REGULAR, gnu_real_size(block)
            self._regions = self._gnu_sparse_map(block)
        elif records and self._is_pax_sparse(records):
            if kind in HEADER_ONLY:
                raise malformed(f"member {shown(name)} has a sparse map but no data")
            name = records.get(b"GNU.sparse.name") or name
            if text := records.get(b"GNU.sparse.size") or records.get(b"GNU.sparse.realsize"):
                size = decimal(text, "sparse file size")
            self._regions = self._pax_sparse_map(records)
        if kind not in _KINDS:
            raise LayerError(f"member {shown(name)} has unsupported type {kind!r}")
        if self._regions is not None:
            check_sparse_map(self._regions, size, self._left)
        self._size = size
        return Header(name, kind, header.mode, uid, gid, size, link, header.major, header.minor)

    @staticmethod
    def _is_pax_sparse(records: dict[bytes, bytes]) -> bool:
        version = (records.get(b"GNU.sparse.major"), records.get(b"GNU.sparse.minor"))
        if version in ((b"0", b"0"), (b"0", b"1"), (b"1", b"0")):
            return True
        return version == (None, None) and bool(records.get(SPARSE_MAP))

    def _gnu_sparse_map(self, block: bytes) -> list[SparseRegion]:
        """The old GNU map: in the header, then in extension blocks before the data."""
        regions, extended = gnu_sparse_map(block, extension=False)
        read = 0
        while extended:
            read += BLOCK
            extension = self._block()
            if extension is None:
                raise malformed("the stream ends inside a GNU sparse map")
            if read > MAX_HEADER:
                raise LayerError(f"GNU sparse map of more than {MAX_HEADER} bytes")
            more, extended = gnu_sparse_map(extension, extension=True)
            regions += more
        return regions

    def _pax_sparse_map(self, records: dict[bytes, bytes]) -> list[SparseRegion]:
        """GNU pax sparse: 0.x keeps the map in records, 1.0 at the start of the data."""
        if records.get(b"GNU.sparse.major") != b"1":
            return pax_sparse_map(records)
        text = bytearray()
        while (regions := text_sparse_map(text)) is None:
            if len(text) >= MAX_HEADER:
                raise LayerError(f"GNU sparse map of more than {MAX_HEADER} bytes")
            if self._left < BLOCK:
                raise malformed("GNU sparse map runs past the member's data")
            text += self._read(BLOCK)
        return regions

    def following(self) -> int:
        """Step over the current member's content; where the next header starts in the
        stream's file: a reader started there (with that ``origin``) reads the members
        that follow. LayerError if the stream ends first."""
        self._pass(self._left + self._padding)
        self._left = self._padding = 0
        return self._start + self._pos

    # -- content ---------------------------------------------------------------------

    def whole(self) -> memoryview | None:
        """The rest of the current member's content as one view if the chunk holds it, else None.

        The fast case for small files; :meth:`content` serves every case.
        """
        pos, left = self._pos, self._left
        if pos + left <= len(self._chunk) and self._regions is None:
            self._pos, self._left = pos + left, 0
            return self._view[pos : pos + left]
        return None

    def ranges(self) -> Ranges:
        """Where the current member's content lies in the stream's file, without reading it.

        (offset, length) pairs in order, an offset of -1 for a sparse file's
        holes. The content is then skipped, not read, when the walk goes on.
        """
        start = self._start + self._pos
        if self._regions is None:
            return [(start, self._left)] if self._left else []
        ranges: Ranges = []
        end = 0
        for region in self._regions:
            if region.offset > end:
                ranges.append((-1, region.offset - end))
            if region.length:
                ranges.append((start, region.length))
                start += region.length
            end = region.offset + region.length
        if self._size > end:
            ranges.append((-1, self._size - end))
        return ranges

    def content(self) -> Iterator[memoryview]:
        """The current member's content (``size`` bytes) as views of the chunks read.

        A view keeps its chunk (an immutable ``bytes``) alive, so it may be
        hashed later, on another thread.
        """
        if self._regions is None:
            yield from self._pieces(self._left)
            return
        end = 0
        for region in self._regions:
            yield from _zeros(region.offset - end)
            yield from self._pieces(region.length)
            end = region.offset + region.length
        yield from _zeros(self._size - end)


def _zeros(count: int) -> Iterator[memoryview]:
    while count > 0:
        yield _ZEROS[: min(count, CHUNK)]
        count -= CHUNK
