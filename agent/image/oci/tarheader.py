"""Tar headers read quickly and boundedly: one ``struct.unpack`` per ordinary header.

:class:`BoundedInfo` replaces tarfile's ustar decoding (its pure-Python field
parsing dominates a layer of small files) and refuses extended headers (pax,
GNU long names) larger than :data:`MAX_HEADER`, so a hostile layer cannot make
the bake read gigabytes of "header".
"""

from __future__ import annotations

import struct
import tarfile
from typing import Self

from agent.errors import AgentError

MAX_HEADER = 1 << 20
"""Largest pax or GNU long-name header accepted, in bytes."""


class LayerError(AgentError):
    """A layer cannot be applied: unsafe, malformed or too large."""


_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_USTAR_MAGICS = (b"ustar\x00", b"ustar ")
_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_CHECKSUM_SPACES = 8 * 0x20


def _octal(field: bytes) -> int:
    """An octal number field, as :mod:`tarfile` reads it (ValueError: not plain octal)."""
    if field[0] in (0o200, 0o377):
        raise ValueError("base-256 number")
    try:
        return int(field.rstrip(b"\0 "), 8)  # the usual "0000644\0"
    except ValueError:
        text = field.split(b"\0", 1)[0].strip()
        return int(text, 8) if text else 0


def _text(field: bytes, encoding: str, errors: str) -> str:
    return field.split(b"\0", 1)[0].decode(encoding, errors)


class BoundedInfo(tarfile.TarInfo):
    """A TarInfo that refuses extended headers too large to hold in memory, and parses fast.

    :mod:`tarfile` reads a pax or GNU long-name header whole before it hands
    out the member; these checks run first. :meth:`frombuf` decodes the
    common header (ustar magic, octal numbers, valid unsigned checksum) in
    one struct unpack, and leaves every other case to :mod:`tarfile`; the two
    give equal members (tests/unit/test_oci_layers.py).
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if len(buf) != tarfile.BLOCKSIZE or buf == _ZERO_BLOCK:
            return super().frombuf(buf, encoding, errors)
        (name, mode, uid, gid, size, mtime, checksum, kind, linkname, magic, _version,
         uname, gname, major, minor, prefix) = _HEADER.unpack(buf)  # fmt: skip
        if magic not in _USTAR_MAGICS or kind == tarfile.GNUTYPE_SPARSE:
            return super().frombuf(buf, encoding, errors)
        try:
            numbers = [_octal(f) for f in (mode, uid, gid, size, mtime, checksum, major, minor)]
        except ValueError:
            return super().frombuf(buf, encoding, errors)
        if sum(buf) - sum(buf[148:156]) + _CHECKSUM_SPACES != numbers[5]:
            return super().frombuf(buf, encoding, errors)  # signed sums, or a bad header
        info = cls()
        info.name = _text(name, encoding, errors)
        info.mode, info.uid, info.gid, info.size, info.mtime = numbers[:5]
        info.chksum = numbers[5]
        info.type = kind
        info.linkname = _text(linkname, encoding, errors)
        info.uname = _text(uname, encoding, errors)
        info.gname = _text(gname, encoding, errors)
        info.devmajor, info.devminor = numbers[6], numbers[7]
        if kind == tarfile.AREGTYPE and info.name.endswith("/"):
            info.type = tarfile.DIRTYPE
        if info.type == tarfile.DIRTYPE:
            info.name = info.name.rstrip("/")
        text_prefix = _text(prefix, encoding, errors)
        if text_prefix and kind not in tarfile.GNU_TYPES:
            info.name = text_prefix + "/" + info.name
        return info

    def _proc_pax(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        self._check_header_size()
        return super()._proc_pax(tarfile)  # type: ignore[misc, no-any-return]

    def _proc_gnulong(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        self._check_header_size()
        return super()._proc_gnulong(tarfile)  # type: ignore[misc, no-any-return]

    def _check_header_size(self) -> None:
        if self.size > MAX_HEADER:
            raise LayerError(
                f"extended tar header of {self.size} bytes (more than {MAX_HEADER}): "
                "not a sane image layer"
            )
