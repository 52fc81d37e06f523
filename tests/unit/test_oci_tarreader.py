"""The layer tar reader: members as the engines read them, and every malformed stream refused.

Well-formed archives come from :mod:`tarfile` (ustar, GNU and pax) and GNU tar
(sparse files); whatever tarfile reads from them, the reader must read too,
however the stream is cut into chunks. Malformed ones are made by hand and
by hypothesis: each must fail with a LayerError that says what is wrong,
never another exception, and never hang.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.image.oci import tarheader
from agent.image.oci.tarheader import MAX_HEADER, LayerError, parse_header, pax_records
from agent.image.oci.tarreader import LayerReader, Member

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = {
    tarfile.REGTYPE: tarheader.REGULAR,
    tarfile.DIRTYPE: tarheader.DIRECTORY,
    tarfile.SYMTYPE: tarheader.SYMLINK,
    tarfile.LNKTYPE: tarheader.HARD_LINK,
    tarfile.CHRTYPE: tarheader.CHAR_DEVICE,
    tarfile.BLKTYPE: tarheader.BLOCK_DEVICE,
    tarfile.FIFOTYPE: tarheader.FIFO,
}


class Chunked(io.RawIOBase):
    """``data`` handed out in reads no longer than the next of ``sizes`` (cycled)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        super().__init__()
        self._data, self._sizes, self._pos, self._turn = data, sizes or [1 << 20], 0, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        limit = self._sizes[self._turn % len(self._sizes)]
        self._turn += 1
        wanted = limit if size is None or size < 0 else min(size, limit)
        out = self._data[self._pos : self._pos + wanted]
        self._pos += len(out)
        return out


def read_all(data: bytes, sizes: list[int] | None = None) -> list[tuple[Member, bytes]]:
    reader = LayerReader(Chunked(data, sizes or []))
    out = []
    for member in reader:
        content = b""
        if member.kind == tarheader.REGULAR:
            content = b"".join(bytes(piece) for piece in reader.content())
            assert len(content) == member.size
        out.append((member, content))
    return out


class Seekable:
    """``data`` read in pieces, and stepped over without reading, as a placed layer is."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, size: int, /) -> bytes:
        out = self._data[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def skip(self, count: int) -> bool:
        if self._pos + count > len(self._data):
            return False
        self._pos += count
        return True


def read_ranged(
    data: bytes, chunk: int = 700, origin: int = 4096, every: int = 2
) -> list[tuple[Member, bytes]]:
    """:func:`read_all`, the contents taken from where :meth:`LayerReader.ranges` says they lie
    in a file that holds ``data`` from ``origin``; contents are never read by the reader.
    A new reader takes over every ``every`` members, where :meth:`LayerReader.following`
    says, as the walker's batches do."""
    out: list[tuple[Member, bytes]] = []
    start = origin
    while True:
        stream = Seekable(data[start - origin :])
        reader = LayerReader(stream, chunk=chunk, skip=stream.skip, origin=start)
        for count, member in enumerate(reader, start=1):
            content = b""
            if member.kind == tarheader.REGULAR:
                content = b"".join(
                    bytes(length) if at < 0 else data[at - origin : at - origin + length]
                    for at, length in reader.ranges()
                )
            out.append((member, content))
            if count == every:
                start = reader.following()
                break
        else:
            return out


def sample(fmt: int) -> bytes:
    """An archive with one member of each kind, long and odd names, big owner ids."""
    out = io.BytesIO()
    long_dir = "d" * 120
    with tarfile.open(fileobj=out, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as archive:  # fmt: skip

        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data else None)

        for name, kind in ((long_dir, tarfile.DIRTYPE), ("etc", tarfile.DIRTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, 0o755
            add(info)
        info = tarfile.TarInfo("etc/passwd")
        info.mode, info.uid, info.gid = 0o4755, 1000, 2000
        add(info, b"root:x:0:0\n" * 100)
        add(tarfile.TarInfo("etc/empty"))
        add(tarfile.TarInfo(f"{long_dir}/{'f' * 90}"), b"deep")
        add(tarfile.TarInfo("caf\udce9"), b"not utf-8")
        add(tarfile.TarInfo("\u00e9t\u00e9"), b"utf-8")
        for name, kind, link in (
            ("etc/link", tarfile.SYMTYPE, "/" + "t" * 150),
            ("etc/hard", tarfile.LNKTYPE, "etc/passwd"),
            ("etc/fifo", tarfile.FIFOTYPE, ""),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            try:
                add(info)
            except ValueError:  # a long link target in plain ustar
                continue
        device = tarfile.TarInfo("dev/null")
        device.type, device.devmajor, device.devminor, device.mode = tarfile.CHRTYPE, 1, 3, 0o666
        add(device)
        if fmt != tarfile.USTAR_FORMAT:
            big = tarfile.TarInfo("big-owner")
            big.uid = big.gid = 8**8 + 5  # base-256 in GNU, a pax record in pax
            add(big, b"x")
    return out.getvalue()


def tarfile_members(data: bytes) -> list[tuple[Member, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8",
                      errors="surrogateescape") as archive:  # fmt: skip
        for info in archive:
            content = b""
            if info.isreg():
                extracted = archive.extractfile(info)
                assert extracted is not None
                content = extracted.read()
            size = info.size if info.isreg() else 0
            member = Member(
                os.fsencode(info.name),
                KINDS[info.type],
                info.mode,
                info.uid,
                info.gid,
                size,
                os.fsencode(info.linkname),
                info.devmajor if info.isdev() else 0,
                info.devminor if info.isdev() else 0,
            )
            out.append((member, content))
    return out


def normalised(members: list[tuple[Member, bytes]]) -> list[tuple[Member, bytes]]:
    """Sizes of data-less members and trailing slashes of directories, as tarfile reports."""
    out = []
    for member, content in members:
        name = member.name.rstrip(b"/") if member.kind == tarheader.DIRECTORY else member.name
        size = member.size if member.kind == tarheader.REGULAR else 0
        out.append((member._replace(name=name, size=size), content))
    return out


@pytest.mark.parametrize(
    "fmt",
    [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
    ids=["ustar", "gnu", "pax"],
)
def test_members_read_as_tarfile_reads_them(fmt: int) -> None:
    data = sample(fmt)
    ours = normalised(read_all(data))
    assert ours == tarfile_members(data)
    names = [member.name for member, _ in ours]
    assert b"caf\xe9" in names and "\u00e9t\u00e9".encode() in names
    assert any(len(name) > 200 for name in names)


@FUZZ
@given(
    fmt=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    sizes=st.lists(st.integers(1, 1500), min_size=1, max_size=8),
)
def test_any_cut_of_the_stream_reads_the_same(fmt: int, sizes: list[int]) -> None:
    data = sample(fmt)
    assert read_all(data, sizes) == read_all(data)
    assert read_ranged(data, chunk=sizes[0]) == read_all(data)


def test_unread_content_is_skipped_and_contents_are_views_that_stay_valid() -> None:
    data = sample(tarfile.PAX_FORMAT)
    reader = LayerReader(Chunked(data, [700]))
    kept = []
    for member in reader:
        if member.name == b"etc/passwd":
            kept = list(reader.content())  # views kept past later reads
    assert b"".join(bytes(piece) for piece in kept) == b"root:x:0:0\n" * 100


def block(**fields: bytes) -> bytes:
    """A ustar header with the given raw fields (the rest filled in) and a valid checksum."""
    layout = {"name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8),
              "size": (124, 12), "type": (156, 1), "link": (157, 100), "magic": (257, 8),
              "major": (329, 8), "minor": (337, 8), "prefix": (345, 155),
              "extra": (386, 126)}  # fmt: skip
    values = {"name": b"f", "mode": b"0000644\0", "uid": b"0000000\0", "gid": b"0000000\0",
              "size": b"00000000000\0", "type": b"0", "magic": b"ustar\x0000"} | fields  # fmt: skip
    raw = bytearray(512)
    for key, value in values.items():
        at, width = layout[key]
        raw[at : at + width] = value.ljust(width, b"\0")[:width]
    return with_checksum(raw)


def with_checksum(raw: bytearray) -> bytes:
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw)
    return bytes(raw)


def archive(*blocks: bytes, end: bool = True) -> bytes:
    return b"".join(blocks) + (bytes(1024) if end else b"")


def member(name: bytes, data: bytes = b"", kind: bytes = b"0", **fields: bytes) -> bytes:
    header = block(name=name, type=kind, size=b"%011o\0" % len(data), **fields)
    return header + data + bytes(-len(data) % 512)


def pax(records: dict[bytes, bytes], kind: bytes = b"x") -> bytes:
    body = b""
    for key, value in records.items():
        rest = b" " + key + b"=" + value + b"\n"
        length = len(rest) + 1
        while len(str(length)) + len(rest) != length:
            length += 1
        body += str(length).encode() + rest
    return member(b"PaxHeader", body, kind)


def test_extended_headers_amend_the_next_member_as_go_does() -> None:
    data = archive(
        pax({b"path": b"from/pax", b"uid": b"70000", b"size": b"3", b"linkpath": b""}),
        member(b"short", b"abc", link=b"kept"),
        member(b"././@LongLink", b"gnu/long/name\0", b"L"),
        member(b"ignored", b"x"),
        pax({b"path": b"global/rename"}, kind=b"g"),
        member(b"not-renamed"),
        member(b"old/dir/", kind=b"\0"),
        member(b"contiguous", b"c", kind=b"7"),
        block(name=b"link", type=b"2", link=b"target", size=b"00000000777\0"),
    )
    got = [(m.name, m.kind, m.uid, m.size, m.link, c) for m, c in read_all(data)]
    assert got == [
        (b"from/pax", b"0", 70000, 3, b"kept", b"abc"),
        (b"gnu/long/name", b"0", 0, 1, b"", b"x"),
        (b"not-renamed", b"0", 0, 0, b"", b""),
        (b"old/dir/", b"5", 0, 0, b"", b""),
        (b"contiguous", b"0", 0, 1, b"", b"c"),
        (b"link", b"2", 0, 0o777, b"target", b""),  # a symlink's size field is ignored
    ]


def test_headers_follow_go_for_prefixes_numbers_and_checksums() -> None:
    prefixed = parse_header(block(name=b"name", prefix=b"some/dir"))
    gnu = parse_header(block(name=b"name", prefix=b"junk", magic=b"ustar  \0"))
    spaced = parse_header(block(mode=b"  644 \0\0", size=b"\0\0 12 \0\0\0\0\0\0"))
    base256 = parse_header(block(uid=b"\x80\0\0\0\0\x01\x00\x00"))
    assert prefixed is not None and prefixed.name == b"some/dir/name"
    assert gnu is not None and gnu.name == b"name"
    assert spaced is not None and (spaced.mode, spaced.size) == (0o644, 0o12)
    assert base256 is not None and base256.uid == 65536
    signed = bytearray(block(name=b"\xe9t\xe9"))
    signed[148:156] = b" " * 8
    signed[148:156] = b"%06o\0 " % (sum(struct.unpack("512b", signed)) & 0o777777)
    assert parse_header(bytes(signed)) is not None  # an old tar's signed checksum
    assert parse_header(bytes(512)) is None


@FUZZ
@given(st.binary(min_size=512, max_size=512), st.integers(-3, 3), st.integers(-3, 3))
def test_the_checksum_test_is_exact(raw: bytes, laps: int, steps: int) -> None:
    """A checksum off by multiples of 65521 (adler32's modulus, which the fast sum relies on)
    or of 255 still fails: the sum is exact, not a remainder."""
    data = bytearray(raw)
    for at, width in ((100, 8), (108, 8), (116, 8), (124, 12), (329, 8), (337, 8)):
        data[at : at + width] = b"0" * (width - 1) + b"\0"  # only the checksum can be wrong
    data[148:156] = b" " * 8
    unsigned = sum(data)
    signed = sum(struct.unpack("512b", data))
    stored = unsigned + laps * 65521 + steps * 255
    stored = stored if 0 <= stored < 8**7 else 0
    data[148:156] = b"%07o\0" % stored
    try:
        parse_header(bytes(data))
    except LayerError:
        assert stored not in (unsigned, signed)
    else:
        assert stored in (unsigned, signed)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01" * 2048, "not a valid layer tar: checksum .* is not an octal number"),
        (b"X" + block()[1:], "not a valid layer tar: a header's checksum does not match"),
        (member(b"f", b"data")[:300], "ends inside a header"),
        (member(b"f", b"data" * 200)[:900], "ends inside a member's data"),
        (bytes(512) + member(b"f"), "zero block is followed by a header"),
        (archive(block(size=b"0000009999x\0")), "not an octal number"),
        (archive(block(size=b"\xc0" + bytes(11))), "negative size"),
        (archive(block(uid=b"\x80\0\0\x01\0\0\0\0")), "uid 4294967296 is out of range"),
        (archive(block(type=b"V")), "unsupported type b'V'"),
        (archive(pax({b"uid": b"4294967296"}), member(b"f")), "out of range"),
        (archive(pax({b"size": b"-1"}), member(b"f")), "not a decimal number"),
        (archive(pax({b"path": b"a\0b"}), member(b"f")), "NUL byte"),
        (archive(member(b"p", b"99 path=x\n", b"x"), member(b"f")), "malformed"),
        (archive(member(b"p", b"6 path\n", b"x"), member(b"f")), "malformed"),
        (archive(member(b"p", b"9 path=xy", b"x"), member(b"f")), "malformed"),
        (archive(member(b"p", b"x path=a\n", b"x"), member(b"f")), "malformed"),
        (archive(member(b"s", kind=b"S")), "sparse type without a GNU header"),
        (
            archive(
                pax(
                    {
                        b"GNU.sparse.major": b"0",
                        b"GNU.sparse.minor": b"1",
                        b"GNU.sparse.numblocks": b"2",
                        b"GNU.sparse.map": b"0,5",
                    }
                ),
                member(b"s", b"12345"),
            ),
            "2 regions",
        ),
        (
            archive(
                pax(
                    {
                        b"GNU.sparse.map": b"4,5,0,1",
                        b"GNU.sparse.numblocks": b"2",
                        b"GNU.sparse.size": b"10",
                    }
                ),
                member(b"s", b"123456"),
            ),
            "overlap",
        ),
        (
            archive(
                pax(
                    {
                        b"GNU.sparse.map": b"8,5",
                        b"GNU.sparse.numblocks": b"1",
                        b"GNU.sparse.size": b"10",
                    }
                ),
                member(b"s", b"12345"),
            ),
            "pass the end",
        ),
        (
            archive(
                pax(
                    {
                        b"GNU.sparse.map": b"0,5",
                        b"GNU.sparse.numblocks": b"1",
                        b"GNU.sparse.size": b"10",
                    }
                ),
                member(b"s", b"1234567"),
            ),
            "stores 7",
        ),
        (
            archive(
                pax({b"GNU.sparse.map": b"0,1", b"GNU.sparse.numblocks": b"1"}),
                member(b"d", kind=b"5"),
            ),
            "sparse map but no data",
        ),
        (
            archive(
                pax({b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0"}),
                member(b"s", b"99999999999"),
            ),
            "runs past the member's data",
        ),
    ],
)
def test_malformed_streams_are_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(LayerError, match=message):
        read_all(data)
    with pytest.raises(LayerError, match=message):
        read_ranged(data)


def test_huge_extended_headers_are_refused_before_they_are_read() -> None:
    header = block(name=b"././@PaxHeader", type=b"x", size=b"%011o\0" % (MAX_HEADER + 1))
    never_read = Chunked(header, [512])  # the stream ends right after the header
    with pytest.raises(LayerError, match="extended tar header of 1048577 bytes"):
        list(LayerReader(never_read))


def test_empty_streams_and_lone_zero_blocks_end_the_archive() -> None:
    assert read_all(b"") == []
    assert read_all(bytes(512)) == []
    assert [m.name for m, _ in read_all(member(b"f"))] == [b"f"]  # no end marker at all


def sparse_file(path: Path) -> bytes:
    """A 3 MiB file with two written stretches, the rest holes; returns its content."""
    with path.open("wb") as out:
        out.truncate(3 << 20)
        out.seek(1 << 20)
        out.write(b"x" * 5000)
        out.seek((2 << 20) + 100)
        out.write(b"y" * 3000)
    return path.read_bytes()


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to write sparse archives")
@pytest.mark.parametrize(
    ("options", "marker"),
    [
        (["--format=gnu"], b"S"),
        (["--format=posix", "--sparse-version=0.0"], b"GNU.sparse.offset"),
        (["--format=posix", "--sparse-version=0.1"], b"GNU.sparse.map"),
        (["--format=posix", "--sparse-version=1.0"], b"GNU.sparse.major=1"),
    ],
)
def test_sparse_files_read_whole_with_their_holes(
    tmp_path: Path, options: list[str], marker: bytes
) -> None:
    content = sparse_file(tmp_path / "sparse")
    if os.stat(tmp_path / "sparse").st_blocks * 512 >= len(content):
        pytest.skip("this filesystem keeps no holes")
    target = tmp_path / "out.tar"
    subprocess.run(["tar", "--sparse", *options, "-cf", str(target), "-C", str(tmp_path),
                    "sparse"], check=True)  # fmt: skip
    data = target.read_bytes()
    assert marker in (data[156:157] if marker == b"S" else data)  # the sparse form is used
    assert len(data) < len(content)
    for sizes in ([1 << 20], [512], [333, 1000]):
        [(got, got_content)] = read_all(data, sizes)
        assert (got.name, got.kind, got.size) == (b"sparse", tarheader.REGULAR, len(content))
        assert got_content == content
        assert read_ranged(data, chunk=sizes[0]) == [(got, content)]


def test_old_gnu_sparse_maps_continue_in_extension_blocks() -> None:
    regions = [(offset * 1024, 10) for offset in range(30)]  # 4 in the header, 26 after
    entries = b"".join(b"%011o\0%011o\0" % region for region in regions)
    header = bytearray(block(name=b"s", type=b"S", magic=b"ustar  \0",
                             size=b"%011o\0" % (10 * len(regions))))  # fmt: skip
    header[386 : 386 + 96] = entries[:96]
    header[482] = 1
    header[483:495] = b"%011o\0" % (30 * 1024)
    extension = [bytearray(512), bytearray(512)]
    extension[0][:504] = entries[96 : 96 + 504]
    extension[0][504] = 1
    extension[1][: len(entries) - 600] = entries[600:]
    data = b"a" * 10 * len(regions)
    stream = archive(with_checksum(header), *map(bytes, extension), data + bytes(-len(data) % 512))
    [(got, content)] = read_all(stream)
    assert read_ranged(stream) == [(got, content)]
    assert got.size == 30 * 1024 and len(content) == 30 * 1024
    assert content.count(b"a") == 300 and content[1024:1034] == b"a" * 10


def test_pax_records_gather_sparse_0_0_pairs_and_refuse_disorder() -> None:
    records = pax_records(b"25 GNU.sparse.offset=100\n25 GNU.sparse.numbytes=5\n")
    assert records[b"GNU.sparse.map"] == b"100,5"
    with pytest.raises(LayerError, match="out of order"):
        pax_records(b"25 GNU.sparse.numbytes=5\n")


def valid_layer() -> bytes:
    return archive(
        pax({b"path": b"p" * 200}),
        member(b"x", b"content" * 100),
        member(b"././@LongLink", b"long/name\0", b"L"),
        member(b"y", b"more"),
        member(b"dir/", kind=b"5"),
        member(b"l", kind=b"1", link=b"x"),
    )


def outcome(data: bytes) -> list[tuple[Member, bytes]] | str:
    """What reading ``data`` gives: members, or the LayerError's message; the same
    streamed or placed (contents skipped, found by their ranges)."""

    def attempt(read: Callable[[], list[tuple[Member, bytes]]]) -> list[tuple[Member, bytes]] | str:
        try:
            return read()
        except LayerError as exc:
            return str(exc)

    streamed = attempt(lambda: read_all(data, [700]))
    assert attempt(lambda: read_ranged(data)) == streamed
    return streamed


@FUZZ
@given(st.data())
def test_damaged_layers_give_members_or_a_layer_error(data: st.DataObject) -> None:
    damaged = bytearray(valid_layer())
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(damaged) - 1))
        damaged[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged)))
    outcome(bytes(damaged[:cut]))  # anything but LayerError fails the test


@FUZZ
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            key: st.binary(max_size=width)
            for key, width in (
                ("name", 100),
                ("mode", 8),
                ("uid", 8),
                ("size", 12),
                ("type", 1),
                ("link", 100),
                ("magic", 8),
                ("major", 8),
                ("prefix", 155),
                ("extra", 126),
            )
        },
    ),
    body=st.binary(max_size=2048),
)
def test_headers_with_any_fields_give_members_or_a_layer_error(
    fields: dict[str, bytes], body: bytes
) -> None:
    outcome(block(**fields) + body)


@FUZZ
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=30)), max_size=4),
       st.sampled_from([b"x", b"g", b"L", b"K"]))  # fmt: skip
def test_extended_headers_with_any_content_give_members_or_a_layer_error(
    records: list[tuple[bytes, bytes]], kind: bytes
) -> None:
    body = b"".join(b"%d %s=%s\n" % (len(k) + len(v) + 5, k, v) for k, v in records)
    outcome(archive(member(b"ext", body, kind), member(b"f", b"data")))
