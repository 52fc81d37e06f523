"""Layers applied in memory: the OCI rules, and refusing unsafe archives."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.image.oci.layers import ImageTree, member_path
from agent.image.oci.tarheader import MAX_HEADER, LayerError
from agent.manifest.format import Entry, EntryType
from agent.manifest.policy import Policy
from tests.fixtures.layer_tars import KEY, D, M, layer, placed
from tests.fixtures.trickle import Trickle

EVERYTHING = Policy(exclude=())


_placed_in: list[Path] = []
"""Where :func:`apply` puts layer files to walk them in place; empty: it streams them."""


@pytest.fixture(params=["streamed", "placed"], autouse=True)
def way(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every test of this module runs twice: layers streamed, and layers walked in place."""
    if request.param == "placed":
        _placed_in.append(tmp_path)
    yield request.param
    _placed_in.clear()


def apply_to(tree: ImageTree, data: io.BytesIO, label: str) -> None:
    """Apply ``data`` to ``tree``: streamed, or placed if the test runs that way."""
    if not _placed_in:
        tree.apply(data, label)
        return
    with placed(data.getvalue(), _placed_in[0], label) as layer:
        tree.apply(layer, label)


def apply(*layers: io.BytesIO, policy: Policy = EVERYTHING) -> dict[bytes, Entry]:
    with ImageTree() as tree:
        for number, data in enumerate(layers):
            apply_to(tree, data, f"layer {number}")
        return {entry.path: entry for entry in tree.entries(policy)}


def test_files_directories_and_symlinks_carry_their_attributes() -> None:
    tree = apply(
        layer(
            D("etc/"),
            M("etc/passwd", data=b"root:x:0:0\n", mode=0o4755, uid=5, gid=6),
            M("etc/sh", tarfile.SYMTYPE, link="/bin/busybox", mode=0o644),
            M("etc/fifo", tarfile.FIFOTYPE, mode=0o600),
            M("etc/null", tarfile.CHRTYPE, mode=0o666, major=1, minor=3),
        )
    )
    assert tree[b"/"] == Entry(b"/", EntryType.DIRECTORY, 0o555, 0, 0)
    assert tree[b"/etc/passwd"] == Entry(
        b"/etc/passwd",
        EntryType.REGULAR,
        0o4755,
        5,
        6,
        11,
        hashlib.sha256(b"root:x:0:0\n").digest(),
    )
    link = tree[b"/etc/sh"]
    assert (link.mode, link.link_target) == (0o777, b"/bin/busybox")
    assert link.sha256 == hashlib.sha256(b"/bin/busybox").digest()
    assert tree[b"/etc/fifo"].type is EntryType.FIFO
    assert (tree[b"/etc/null"].rdev_major, tree[b"/etc/null"].rdev_minor) == (1, 3)


def test_whiteouts_remove_lower_paths_and_subtrees() -> None:
    tree = apply(
        layer(D("a/"), M("a/keep", data=b"1"), M("a/gone", data=b"2"), D("a/dir/"),
              M("a/dir/x", data=b"3")),
        layer(D("a/"), M("a/.wh.gone", mode=0), M("a/.wh.dir", mode=0)),
    )  # fmt: skip
    assert sorted(tree) == [b"/", b"/a", b"/a/keep"]


def test_a_whiteout_hides_lower_layers_only() -> None:
    tree = apply(layer(D("a/"), M("a/f", data=b"new"), M("a/.wh.f")))
    assert b"/a/f" in tree


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_directory_hides_lower_contents_whatever_the_order(marker_first: bool) -> None:
    upper = [D("d/"), M("d/.wh..wh..opq", mode=0), D("d/sub/"), M("d/sub/new", data=b"n")]
    if not marker_first:
        upper.append(upper.pop(1))
    tree = apply(
        layer(D("d/"), M("d/old", data=b"o"), D("d/sub/"), M("d/sub/lower", data=b"l")),
        layer(*upper),
    )
    assert sorted(tree) == [b"/", b"/d", b"/d/sub", b"/d/sub/new"]


def test_directories_merge_and_take_the_later_attributes() -> None:
    tree = apply(
        layer(D("d/", 0o755), M("d/a", data=b"a")),
        layer(D("d/", 0o700, uid=7), M("d/b", data=b"b")),
    )
    assert (tree[b"/d"].mode, tree[b"/d"].uid) == (0o700, 7)
    assert {b"/d/a", b"/d/b"} <= tree.keys()


def test_other_objects_replace_what_was_there() -> None:
    tree = apply(
        layer(D("d/"), M("d/x", data=b"x"), M("f", data=b"f"), M("l", tarfile.SYMTYPE, link="d")),
        layer(M("d", data=b"now a file"), D("f/"), M("l", data=b"file")),
    )
    assert tree[b"/d"].type is EntryType.REGULAR and b"/d/x" not in tree
    assert tree[b"/f"].type is EntryType.DIRECTORY
    assert tree[b"/l"].type is EntryType.REGULAR


def test_implied_parents_are_0755_root_owned_in_their_layer() -> None:
    tree = apply(
        layer(D("opt/", 0o700, uid=9), M("opt/a", data=b"a"), M("s", tarfile.SYMTYPE, link="opt")),
        layer(M("opt/b", data=b"b"), M("s/c", data=b"c"), M("new/deep/f", data=b"f")),
    )
    assert (tree[b"/opt"].mode, tree[b"/opt"].uid) == (0o755, 0)
    assert {b"/opt/a", b"/opt/b"} <= tree.keys()
    assert tree[b"/s"].type is EntryType.DIRECTORY  # the lower symlink is replaced
    assert tree[b"/new/deep"] == Entry(b"/new/deep", EntryType.DIRECTORY, 0o755, 0, 0)


def test_hard_links_share_the_target_attributes() -> None:
    tree = apply(
        layer(M("a", data=b"content", mode=0o4711, uid=3), M("b", tarfile.LNKTYPE, link="a"))
    )
    assert tree[b"/b"]._replace(path=b"/a") == tree[b"/a"]


def test_root_member_sets_the_root_and_later_layers_reset_its_owner() -> None:
    assert apply(layer(D("./", 0o750, uid=4)))[b"/"][2:4] == (0o750, 4)
    assert apply(layer(D("./", 0o750, uid=4)), layer(M("x")))[b"/"][2:4] == (0o750, 0)
    with ImageTree(root_mode=0o755) as tree:
        apply_to(tree, layer(M("x")), "l")
        assert tree.entries(EVERYTHING)[0].mode == 0o755


def test_overlay_whiteout_device_removes() -> None:
    tree = apply(layer(M("f", data=b"f")), layer(M("f", tarfile.CHRTYPE, mode=0)))
    assert b"/f" not in tree


def test_policy_excludes_and_includes_apply() -> None:
    base = layer(D("tmp/"), M("tmp/x"), D("usr/"), M("usr/a"), D("var/"), M("var/b"))
    tree = apply(base, policy=Policy(include=("/usr",)))
    assert sorted(tree) == [b"/usr", b"/usr/a"]
    base.seek(0)
    assert b"/tmp" not in apply(base, policy=Policy())
    base.seek(0)
    ignored = apply(base, policy=Policy(exclude=(), ignore_attributes=("content",)))
    assert ignored[b"/usr/a"].sha256 == b""


def test_non_utf8_and_long_names_round_trip() -> None:
    long = "d" * 150 + "/f"
    tree = apply(layer(M("caf\udce9", data=b"x"), M(long, data=b"y")))
    assert b"/caf\xe9" in tree
    assert b"/" + long.encode() in tree


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ((M("/etc/passwd"),), "absolute path"),
        ((M("a/../../etc"),), "'..'"),
        ((M("x", tarfile.LNKTYPE, link="/etc/shadow"),), "leaves the root"),
        ((M("x", tarfile.LNKTYPE, link="../outside"),), "leaves the root"),
        ((M("x", tarfile.LNKTYPE, link="missing"),), "no such file"),
        ((M("s", tarfile.SYMTYPE, link="/etc"), M("s/passwd")), "non-directory"),
        ((M("./", data=b"x"),), "not a directory"),
        ((M("c", b"Z"),), "unsupported type"),
        ((M("a" * 5000),), "more than 4096"),
    ],
)
def test_unsafe_archives_are_refused(members: tuple[M, ...], message: str) -> None:
    with pytest.raises(LayerError, match=message):
        apply(layer(*members))


def test_huge_extended_headers_are_refused_before_they_are_read() -> None:
    record = b"path=" + b"a" * (MAX_HEADER + 10) + b"\n"
    payload = b"%d " % (len(record) + 8) + record
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, len(payload)
    data = io.BytesIO()
    data.write(header.tobuf(tarfile.USTAR_FORMAT))
    data.write(payload + bytes(-len(payload) % 512) + bytes(1024))
    data.seek(0)
    with pytest.raises(LayerError, match="extended tar header"):
        apply(data)


def test_too_many_members_are_refused() -> None:
    with ImageTree(max_members=3) as tree, pytest.raises(LayerError, match="more than 3 members"):
        apply_to(tree, layer(*(M(f"f{i}") for i in range(4))), "l")


def test_garbage_is_not_a_layer() -> None:
    with pytest.raises(LayerError, match="not a valid layer tar"):
        apply(io.BytesIO(b"\x01" * 2048))


def test_member_path_normalises() -> None:
    assert member_path(b"./etc//hosts") == b"/etc/hosts"
    assert member_path(b"./") == member_path(b".") == b"/"


@pytest.mark.parametrize("read_size", [1 << 20, 4096, 333])
def test_contents_are_hashed_whatever_their_size_and_however_the_stream_is_cut(
    read_size: int,
) -> None:
    big = bytes(range(256)) * 5000  # over a MiB: hashed on the other thread
    data = layer(
        M("small", data=b"s" * 3000),
        M("big", data=big),
        M("big-link", tarfile.LNKTYPE, link="big"),
        M("root/.ssh/id_rsa", data=KEY),
        M("after", data=b"a" * 100_000),
    ).getvalue()
    tree = ImageTree()
    tree.apply(Trickle(data, read_size), "l")
    entries = {entry.path: entry for entry in tree.entries(EVERYTHING)}
    for path, content in ((b"/small", b"s" * 3000), (b"/big", big), (b"/root/.ssh/id_rsa", KEY),
                          (b"/after", b"a" * 100_000)):  # fmt: skip
        assert entries[path].sha256 == hashlib.sha256(content).digest(), path
    assert entries[b"/big-link"].sha256 == entries[b"/big"].sha256
    assert [w.path for w in tree.warnings(list(entries.values()))] == [b"/root/.ssh/id_rsa"]
    assert (tree.files_hashed, tree.bytes_hashed) == (4, 3000 + len(big) + len(KEY) + 100_000)
