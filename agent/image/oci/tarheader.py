"""The pieces of a layer tar that describe its members, parsed as the engines parse them.

Podman (containers/storage), Docker and containerd unpack layers with Go's
``archive/tar``, so its reading of a header is the one that decides what an
image contains; these functions follow it rather than :mod:`tarfile`:

- a header block: octal numbers (spaces and NULs trimmed, or base-256 when
  the top bit is set), a checksum that must match the block's unsigned or
  signed byte sum, names cut at the first NUL, and the ustar ``prefix``
  joined only under the POSIX magic (a GNU header keeps other fields there);
- a pax extended header: ``LEN key=value\\n`` records, strictly formed;
  GNU sparse 0.0's repeated ``GNU.sparse.offset``/``numbytes`` records are
  gathered into a ``GNU.sparse.map`` as for 0.1;
- the three GNU sparse maps: the old one inside GNU headers (and the
  extension blocks after them), 0.1's ``GNU.sparse.map`` record, and 1.0's
  text at the start of the member's data. A map's regions must be in
  order, apart and inside the file.

Everything here is untrusted input: a malformed field raises
:class:`LayerError` naming what is wrong, and nothing is read beyond what a
caller hands in (the caller bounds that by :data:`MAX_HEADER`).
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from agent.errors import AgentError

BLOCK = 512
MAX_HEADER = 1 << 20
"""Largest pax or GNU long-name header, or GNU sparse map, accepted, in bytes."""
MAX_ID = (1 << 32) - 1
"""Largest owner id or device number a Linux filesystem can hold."""

REGULAR = b"0"
OLD_REGULAR = b"\0"
HARD_LINK = b"1"
SYMLINK = b"2"
CHAR_DEVICE = b"3"
BLOCK_DEVICE = b"4"
DIRECTORY = b"5"
FIFO = b"6"
CONTIGUOUS = b"7"
PAX = b"x"
PAX_GLOBAL = b"g"
GNU_LONG_NAME = b"L"
GNU_LONG_LINK = b"K"
GNU_SPARSE = b"S"
HEADER_ONLY = frozenset((HARD_LINK, SYMLINK, CHAR_DEVICE, BLOCK_DEVICE, DIRECTORY, FIFO))
"""Types whose size field is ignored: no data follows their header."""

SPARSE_MAP = b"GNU.sparse.map"
_SPARSE_OFFSET = b"GNU.sparse.offset"
_SPARSE_NUMBYTES = b"GNU.sparse.numbytes"
_POSIX_MAGIC = b"ustar\x0000"
_GNU_MAGIC = b"ustar  \x00"
_MAGIC = slice(257, 265)
_ZERO_BLOCK = bytes(BLOCK)
# name mode uid gid size (mtime) chksum type linkname magic+version (uname gname)
# devmajor devminor prefix
_FIELDS = struct.Struct("100s8s8s8s12s12x8sc100s8s64x8s8s155s12x")
_SIGNED = struct.Struct("148b8x356b")
_CHECKSUM_FIELD = slice(148, 156)
_CHECKSUM_SPACES = 8 * 0x20
_HALF = BLOCK // 2
_GNU_SPARSE_ENTRIES = 4
_GNU_SPARSE_AT = 386
_GNU_EXTENDED_AT = 482
_GNU_REAL_SIZE = slice(483, 495)
_EXTENSION_ENTRIES = 21
_EXTENSION_EXTENDED_AT = 504
_SPARSE_ENTRY = 24


class LayerError(AgentError):
    """A layer cannot be applied: unsafe, malformed or too large."""


def malformed(detail: str) -> LayerError:
    """The error for a stream that breaks the tar format."""
    return LayerError(f"not a valid layer tar: {detail}")


class Header(NamedTuple):
    """What a header block says of a member (amended by extended headers before it)."""

    name: bytes
    kind: bytes
    mode: int
    uid: int
    gid: int
    size: int
    link: bytes
    major: int
    minor: int


class SparseRegion(NamedTuple):
    """A stretch of a sparse file's data that the archive carries; the rest reads as zeros."""

    offset: int
    length: int


def number(field: bytes, what: str) -> int:
    """A numeric field: octal text (spaces and NULs around it), or base-256; never negative."""
    if field[0] & 0x80:
        if field[0] & 0x40:
            raise malformed(f"negative {what} in a header")
        return int.from_bytes(field, "big") - (0x80 << (8 * (len(field) - 1)))
    text = field.strip(b" \0")
    if not text:
        return 0
    if text.isdigit():
        try:
            return int(text, 8)
        except ValueError:
            pass  # an 8 or a 9
    raise malformed(f"{what} {field!r} in a header is not an octal number")


def _unsigned_sum(block: bytes) -> int:
    """The block's byte sum with the checksum field read as spaces.

    Summing 512 bytes in Python costs more than parsing the rest of the
    header, so C sums them: :func:`zlib.adler32`'s low half is 1 + the byte
    sum modulo 65521, which is the sum itself for 256 bytes (at most 65,280).
    """
    return (
        (zlib.adler32(block[:_HALF]) & 0xFFFF)
        + (zlib.adler32(block[_HALF:]) & 0xFFFF)
        - 2
        - sum(block[_CHECKSUM_FIELD])
        + _CHECKSUM_SPACES
    )


def parse_header(block: bytes) -> Header | None:
    """The header in a 512-byte ``block``; None for a zero block (the end of the archive)."""
    if block == _ZERO_BLOCK:
        return None
    (name, mode, uid, gid, size, checksum, kind, link, magic, major, minor,
     prefix) = _FIELDS.unpack(block)  # fmt: skip
    stored = number(checksum, "checksum")
    if stored != _unsigned_sum(block) and sum(_SIGNED.unpack(block)) + _CHECKSUM_SPACES != stored:
        raise malformed("a header's checksum does not match")
    name = name.partition(b"\0")[0]
    posix = magic == _POSIX_MAGIC
    gnu = magic == _GNU_MAGIC
    if posix:
        prefix = prefix.partition(b"\0")[0]
        if prefix:
            name = prefix + b"/" + name
    device = kind in (CHAR_DEVICE, BLOCK_DEVICE) and (posix or gnu)
    return Header(
        name,
        kind,
        number(mode, "mode"),
        owner_id(number(uid, "uid"), "uid"),
        owner_id(number(gid, "gid"), "gid"),
        number(size, "size"),
        link.partition(b"\0")[0],
        owner_id(number(major, "device major"), "device major") if device else 0,
        owner_id(number(minor, "device minor"), "device minor") if device else 0,
    )


def owner_id(value: int, what: str) -> int:
    """``value`` if a filesystem can record it as an owner id or device number."""
    if value > MAX_ID:
        raise LayerError(f"{what} {value} is out of range (more than {MAX_ID})")
    return value


def pax_records(data: bytes) -> dict[bytes, bytes]:
    """The records of a pax extended header's data, later ones winning.

    GNU sparse 0.0 repeats ``GNU.sparse.offset`` and ``GNU.sparse.numbytes``;
    those pairs become one ``GNU.sparse.map`` value, as 0.1 writes it.
    """
    records: dict[bytes, bytes] = {}
    regions: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        length = int(digits) if digits.isdigit() else 0
        stop = pos + length
        if length < 5 or stop > end or data[stop - 1] != 0x0A or space + 1 >= stop:
            raise malformed("a pax header record is malformed")
        key, equals, value = data[space + 1 : stop - 1].partition(b"=")
        if not equals or not key or b"\0" in key:
            raise malformed(f"pax header record {key!r} is malformed")
        if key in (b"path", b"linkpath") and b"\0" in value:
            raise malformed(f"pax {key.decode()} record holds a NUL byte")
        if key in (_SPARSE_OFFSET, _SPARSE_NUMBYTES):
            expected = _SPARSE_OFFSET if len(regions) % 2 == 0 else _SPARSE_NUMBYTES
            if key != expected or b"," in value:
                raise malformed("GNU sparse 0.0 records out of order")
            regions.append(value)
        else:
            records[key] = value
        pos = stop
    if regions:
        records[SPARSE_MAP] = b",".join(regions)
    return records


def decimal(text: bytes, what: str) -> int:
    """A non-negative decimal number from a pax record or a sparse map."""
    if not text.isdigit():
        raise malformed(f"{what} {text[:40]!r} is not a decimal number")
    return int(text)


def gnu_sparse_map(block: bytes, extension: bool) -> tuple[list[SparseRegion], bool]:
    """The sparse regions in a GNU header (or an extension block), and whether more follow."""
    first, count, flag = (
        (0, _EXTENSION_ENTRIES, _EXTENSION_EXTENDED_AT)
        if extension
        else (_GNU_SPARSE_AT, _GNU_SPARSE_ENTRIES, _GNU_EXTENDED_AT)
    )
    regions = []
    for at in range(first, first + count * _SPARSE_ENTRY, _SPARSE_ENTRY):
        if block[at] == 0:  # where GNU tar stops reading too
            break
        offset = number(block[at : at + 12], "sparse offset")
        length = number(block[at + 12 : at + _SPARSE_ENTRY], "sparse length")
        regions.append(SparseRegion(offset, length))
    return regions, block[flag] != 0


def is_gnu(block: bytes) -> bool:
    """Whether a header block has the GNU magic (and so may carry an old sparse map)."""
    return block[_MAGIC] == _GNU_MAGIC


def gnu_real_size(block: bytes) -> int:
    """A GNU sparse header's size of the file with its holes."""
    return number(block[_GNU_REAL_SIZE], "sparse file size")


def pax_sparse_map(records: dict[bytes, bytes]) -> list[SparseRegion]:
    """GNU sparse 0.0 or 0.1: the map from ``GNU.sparse.numblocks`` and ``GNU.sparse.map``."""
    count = decimal(records.get(b"GNU.sparse.numblocks", b""), "sparse region count")
    text = records.get(SPARSE_MAP, b"")
    numbers = text.split(b",") if text else []
    if len(numbers) != 2 * count:
        raise malformed(f"GNU sparse map has {len(numbers)} numbers for {count} regions")
    return _regions([decimal(n, "sparse map number") for n in numbers])


def text_sparse_map(data: bytes | bytearray) -> list[SparseRegion] | None:
    """GNU sparse 1.0: the map at the start of the data, or None while ``data`` lacks its end.

    The text is a count, then an offset and a length per region, each on its
    own line; the caller feeds whole blocks until this returns a map.
    """
    first = data.find(b"\n")
    if first < 0:
        return None
    count = decimal(bytes(data[:first]), "sparse region count")
    if data.count(b"\n") < 2 * count + 1:
        return None
    lines = bytes(data).split(b"\n", 2 * count + 1)[1 : 2 * count + 1]
    return _regions([decimal(line, "sparse map number") for line in lines])


def _regions(numbers: list[int]) -> list[SparseRegion]:
    return [SparseRegion(o, n) for o, n in zip(numbers[::2], numbers[1::2], strict=True)]


def check_sparse_map(regions: list[SparseRegion], size: int, stored: int) -> None:
    """Regions in order, apart, inside ``size``, and carrying exactly the ``stored`` bytes."""
    end = 0
    for region in regions:
        if region.offset < end or region.offset + region.length > size:
            raise malformed("GNU sparse map regions overlap, are out of order or pass the end")
        end = region.offset + region.length
    if sum(region.length for region in regions) != stored:
        raise malformed(
            f"GNU sparse map covers {sum(r.length for r in regions)} bytes "
            f"but the member stores {stored}"
        )
