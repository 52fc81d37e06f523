"""Tar headers whose bytes depend only on what is archived.

Image digests are the SHA-256 of a tarball, so its bytes must not depend on the
Python version, the host or the time of the build. corral therefore writes the
POSIX (pax/ustar) headers itself instead of relying on :mod:`tarfile`'s choices:

- a plain ustar header when the name fits in 100 bytes of ASCII and every
  number fits its octal field; otherwise a pax extended header (``path``,
  ``linkpath``, ``uid``, ``gid``, ``size`` records, with ``hdrcharset=BINARY``
  when a name is not UTF-8) before the ustar header, as POSIX specifies;
- user and group names are always empty (owners are numeric);
- the archive ends with two zero blocks and is padded to a 10 KiB record.

:mod:`agent.image.tarwriter` assembles the stream from these headers and the files'
content, and hashes it on the way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

BLOCK = 512
RECORD = 20 * BLOCK
REGULAR = b"0"
SYMLINK = b"2"
CHAR_DEVICE = b"3"
BLOCK_DEVICE = b"4"
DIRECTORY = b"5"
FIFO = b"6"
_PAX = b"x"
_PAX_NAME = b"././@PaxHeader"
_MAGIC = b"ustar\x0000"
_ID_LIMIT = 8**7
_SIZE_LIMIT = 8**11


@dataclass(frozen=True, slots=True)
class Header:
    """One member's metadata. ``name`` is relative (``b"etc/hosts"``, ``b"."`` for the root)."""

    name: bytes
    kind: bytes
    mode: int
    uid: int
    gid: int
    size: int = 0
    mtime: int = 0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0


_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s64s8s8s167s")
_NO_DEVICE = bytes(8)


def _ustar(
    name: bytes, header: Header, *, kind: bytes, size: int, uid: int, gid: int, link: bytes
) -> bytes:
    device = header.kind in (CHAR_DEVICE, BLOCK_DEVICE)
    block = _USTAR.pack(
        name,
        b"%07o" % (header.mode & 0o7777),
        b"%07o" % uid,
        b"%07o" % gid,
        b"%011o" % size,
        b"%011o" % header.mtime,
        b"        ",
        kind,
        link,
        _MAGIC,
        b"",  # uname, gname
        b"%07o" % header.devmajor if device else _NO_DEVICE,
        b"%07o" % header.devminor if device else _NO_DEVICE,
        b"",  # prefix + padding
    )
    return block[:148] + b"%06o\0" % sum(block) + block[155:]


_SIMPLE_TAIL = _MAGIC + bytes(64) + _NO_DEVICE + _NO_DEVICE + bytes(167)
_SIMPLE_MTIME = b"00000000000\0"
_SIMPLE_SUM = sum(_SIMPLE_MTIME) + sum(b"        ") + sum(_SIMPLE_TAIL)
"""The checksum of the constant fields (the checksum field counts as spaces)."""


def simple_header(
    name: bytes,
    kind: bytes,
    *,
    mode: int,
    uid: int,
    gid: int,
    size: int = 0,
    linkname: bytes = b"",
) -> bytes | None:
    """The ustar header of a non-device member with mtime 0, or None when it needs pax.

    The fast path for the common member: same bytes as :func:`encode_header`,
    assembled from its fields so that only the variable ones are summed for
    the checksum.
    """
    if (
        len(name) > 99  # room for a directory's "/"
        or len(linkname) > 100
        or not (name.isascii() and linkname.isascii())
        or uid >= _ID_LIMIT
        or gid >= _ID_LIMIT
        or size >= _SIZE_LIMIT
    ):
        return None
    if kind == DIRECTORY:
        name = b"./" if name == b"." else name + b"/"
    numbers = b"%07o\0%07o\0%07o\0%011o\0" % (mode & 0o7777, uid, gid, size)
    checksum = _SIMPLE_SUM + sum(name) + sum(numbers) + kind[0] + sum(linkname)
    return b"".join(
        (
            name.ljust(100, b"\0"),
            numbers,
            _SIMPLE_MTIME,
            b"%06o\0 " % checksum,
            kind,
            linkname.ljust(100, b"\0"),
            _SIMPLE_TAIL,
        )
    )


def _record(key: bytes, value: bytes) -> bytes:
    """One pax record, ``"LEN key=value\\n"`` where LEN counts itself."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length += 1
    return b"%d" % length + body


def _is_portable(value: bytes, limit: int) -> bool:
    return len(value) <= limit and value.isascii()


def encode_header(header: Header) -> bytes:
    """The header block(s) for ``header``: ustar, preceded by a pax header when needed."""
    name = header.name + b"/" if header.kind == DIRECTORY and header.name != b"." else header.name
    if header.kind == DIRECTORY and header.name == b".":
        name = b"./"
    records: list[bytes] = []
    if not _is_portable(name, 100):
        records.append(_record(b"path", name))
    if not _is_portable(header.linkname, 100):
        records.append(_record(b"linkpath", header.linkname))
    for key, value, limit in (
        (b"uid", header.uid, _ID_LIMIT),
        (b"gid", header.gid, _ID_LIMIT),
        (b"size", header.size, _SIZE_LIMIT),
    ):
        if value >= limit:
            records.append(_record(key, b"%d" % value))
    plain = _ustar(
        name,
        header,
        kind=header.kind,
        size=header.size if header.size < _SIZE_LIMIT else 0,
        uid=header.uid if header.uid < _ID_LIMIT else 0,
        gid=header.gid if header.gid < _ID_LIMIT else 0,
        link=header.linkname,
    )
    if not records:
        return plain
    if not all(_utf8(value) for value in (name, header.linkname)):
        records.insert(0, _record(b"hdrcharset", b"BINARY"))
    payload = b"".join(records)
    extended = _ustar(
        _PAX_NAME,
        Header(_PAX_NAME, _PAX, 0o644, 0, 0),
        kind=_PAX,
        size=len(payload),
        uid=0,
        gid=0,
        link=b"",
    )
    return extended + payload + bytes(-len(payload) % BLOCK) + plain


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
