"""Image artifacts: same tree -> same bytes; unpacked instances scan to the baked root."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from agent.image import artifact
from agent.image.artifact import ArtifactError, build_artifact
from agent.image.tarstream import DIRECTORY, REGULAR, SYMLINK, Header, encode_header, simple_header
from agent.image.unpack import unpack_artifact
from agent.manifest.format import Entry, EntryType, read_manifest
from agent.manifest.policy import Policy
from agent.scan.scanner import scan

IS_ROOT = os.geteuid() == 0
POLICY = Policy(exclude=("/tmp/*",))


def make_tree(root: Path) -> None:
    """A small root with the awkward cases: modes, links, long and non-UTF-8 names."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("port = 8080\n")
    (root / "etc" / "empty").write_bytes(b"")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n" * 300)
    os.chmod(root / "bin" / "tool", 0o4755)
    os.symlink("/bin/tool", root / "bin" / "alias")
    os.symlink("x" * 150, root / "bin" / "dangling-long-target")
    deep = root / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "long-name.txt").write_text("deep\n")
    (root / "etc" / "caf\u00e9").write_text("unicode\n")
    os.mkdir(os.path.join(os.fsencode(root), b"raw\xff"))
    Path(os.fsdecode(os.path.join(os.fsencode(root), b"raw\xff", b"f"))).write_text("raw\n")
    os.mkfifo(root / "etc" / "pipe")
    os.link(root / "etc" / "app.conf", root / "etc" / "hardlink.conf")
    (root / "ro").mkdir()
    (root / "ro" / "inside").write_text("read-only dir\n")
    os.chmod(root / "ro", 0o555)
    (root / "tmp").mkdir()
    (root / "tmp" / "scratch").write_text("mutable\n")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    make_tree(root)
    return root


def test_same_tree_gives_byte_identical_artifacts(tree: Path, tmp_path: Path) -> None:
    first = build_artifact(tree, tmp_path / "a", name="web", version="1", policy=POLICY)
    second = build_artifact(tree, tmp_path / "b", name="web", version="1", policy=POLICY)
    for name in ("image.tar", "manifest.pb", "image.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    digest = hashlib.sha256((tmp_path / "a" / "image.tar").read_bytes()).hexdigest()
    assert first.image_digest == second.image_digest == f"sha256:{digest}"
    assert first.image_ref == f"web@sha256:{digest}"


def test_mtimes_do_not_change_the_digest(tree: Path, tmp_path: Path) -> None:
    before = build_artifact(tree, tmp_path / "a", name="web", version="1", policy=POLICY)
    os.utime(tree / "etc" / "app.conf", (12345, 67890))
    os.utime(tree / "etc", (1, 2))
    after = build_artifact(tree, tmp_path / "b", name="web", version="1", policy=POLICY)
    assert before.image_digest == after.image_digest


def test_content_changes_the_digest(tree: Path, tmp_path: Path) -> None:
    before = build_artifact(tree, tmp_path / "a", name="web", version="1", policy=POLICY)
    (tree / "etc" / "app.conf").write_text("port = 9090\n")
    after = build_artifact(tree, tmp_path / "b", name="web", version="1", policy=POLICY)
    assert before.image_digest != after.image_digest
    assert before.manifest.root != after.manifest.root


@pytest.mark.skipif(not IS_ROOT, reason="changing a file's owner needs root")
def test_owners_are_normalised_unless_preserved(tree: Path, tmp_path: Path) -> None:
    before = build_artifact(tree, tmp_path / "a", name="web", version="1", policy=POLICY)
    os.chown(tree / "etc" / "app.conf", 1234, 5678)
    after = build_artifact(tree, tmp_path / "b", name="web", version="1", policy=POLICY)
    assert before.image_digest == after.image_digest
    kept = build_artifact(tree, tmp_path / "c", name="web", version="1", policy=POLICY, owner=None)
    entry = next(e for e in kept.manifest.entries if e.path == b"/etc/app.conf")
    assert (entry.uid, entry.gid) == (1234, 5678)


def test_members_are_normalised_and_ordered(tree: Path, tmp_path: Path) -> None:
    build_artifact(tree, tmp_path / "a", name="web", version="1", policy=POLICY, owner=(7, 8))
    with tarfile.open(tmp_path / "a" / "image.tar", encoding="utf-8") as archive:
        members = archive.getmembers()
    assert members[0].name == "." and members[0].isdir()
    assert all(m.mtime == 0 and m.uid == 7 and m.gid == 8 for m in members)
    assert all(m.uname == "" and m.gname == "" for m in members)
    assert not any(m.islnk() for m in members)  # hard links are stored as copies
    assert not any("atime" in m.pax_headers or "ctime" in m.pax_headers for m in members)
    names = [m.name for m in members]
    assert "tmp/scratch" in names  # mutable paths are in the image, just never checked
    tool = next(m for m in members if m.name == "bin/tool")
    assert tool.mode == 0o4755
    assert next(m for m in members if m.name.endswith("long-name.txt")).name == (
        "d" * 60 + "/" + "e" * 60 + "/long-name.txt"
    )


def test_image_json_and_manifest(tree: Path, tmp_path: Path) -> None:
    result = build_artifact(tree, tmp_path / "a", name="web", version="1.2", policy=POLICY)
    document = json.loads((tmp_path / "a" / "image.json").read_text())
    assert document["image_digest"] == result.image_digest
    assert document["image_ref"] == f"web@{result.image_digest}"
    assert document["artifact"] == "image.tar"
    assert document["root"] == result.manifest.root.hex()
    manifest, digest = read_manifest(str(tmp_path / "a" / "manifest.pb"))
    assert digest == document["manifest_digest"] != document["image_digest"]
    assert manifest.root == result.manifest.root
    assert {"name", "version", "entry_count", "byte_count", "policy"} <= set(document)
    assert all(entry.uid == 0 and entry.gid == 0 for entry in manifest.entries)
    assert not any(entry.path.startswith(b"/tmp/") for entry in manifest.entries)


def test_unpacked_instance_scans_to_the_baked_root(tree: Path, tmp_path: Path) -> None:
    owner = (os.geteuid(), os.getegid())
    result = build_artifact(
        tree, tmp_path / "a", name="web", version="1", policy=POLICY, owner=owner
    )
    unpacked = unpack_artifact(tmp_path / "a" / "image.tar", tmp_path / "instance")
    assert unpacked.members == result.member_count
    live = scan(tmp_path / "instance", POLICY, workers=0)
    assert live.root == result.manifest.root
    assert stat.S_IMODE(os.stat(tmp_path / "instance" / "ro").st_mode) == 0o555
    assert os.readlink(tmp_path / "instance" / "bin" / "alias") == "/bin/tool"
    # and a drifted instance does not
    os.chmod(tmp_path / "instance" / "ro", 0o755)
    (tmp_path / "instance" / "etc" / "app.conf").write_text("patched\n")
    assert scan(tmp_path / "instance", POLICY, workers=0).root != result.manifest.root


def _scanned_as_unpacked(root: Path, policy: Policy, owner: tuple[int, int]) -> list[Entry]:
    """What a scan of ``root`` records, with owners as an image of it unpacks them."""
    uid = 0 if policy.ignores("uid") else owner[0]
    gid = 0 if policy.ignores("gid") else owner[1]
    return [
        entry._replace(uid=uid, gid=gid)
        for entry in scan(root, policy, workers=0).entries
        if entry.type is not EntryType.SOCKET  # an image cannot hold one
    ]


@pytest.mark.parametrize(
    "policy",
    [
        POLICY,
        Policy(),
        Policy(include=("/etc", "/bin/alias", "/missing"), exclude=("/etc/pipe",)),
        Policy(include=("/etc", "/d" + "d" * 59), ignore_attributes=("uid", "mode", "content")),
        Policy(exclude=("/**/*.txt", "/ro")),
    ],
)
def test_manifest_is_what_a_scan_records(tree: Path, tmp_path: Path, policy: Policy) -> None:
    socket_path = tree / "etc" / "sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(socket_path))
        (tree / "big").write_bytes(os.urandom(3 << 20))  # spans several tar buffers
        result = build_artifact(tree, tmp_path / "a", name="web", version="1", policy=policy)
    assert list(result.manifest.entries) == sorted(_scanned_as_unpacked(tree, policy, (0, 0)))
    with tarfile.open(tmp_path / "a" / "image.tar") as archive:
        assert "etc/sock" not in archive.getnames()


def test_deep_trees_do_not_hold_a_descriptor_per_level(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = build_artifact(tree, tmp_path / "a", name="web", version="1", policy=POLICY)
    monkeypatch.setattr(artifact, "_MAX_DIR_FDS", 1)
    by_path = build_artifact(tree, tmp_path / "b", name="web", version="1", policy=POLICY)
    assert by_path.image_digest == held.image_digest
    assert by_path.manifest_digest == held.manifest_digest


def test_a_file_changing_size_during_the_build_fails_it(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return st
        fields = list(st)
        fields[stat.ST_SIZE] += 1  # as if the file shrank after it was examined
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", stale_fstat)
    with pytest.raises(ArtifactError, match="changed while the image was being built"):
        build_artifact(tree, tmp_path / "a", name="web", version="1", policy=POLICY)
    assert not (tmp_path / "a" / "image.tar").exists()
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".partial")]


@pytest.mark.skipif(not IS_ROOT, reason="restoring another owner needs root")
def test_root_restores_normalised_owners(tree: Path, tmp_path: Path) -> None:
    result = build_artifact(tree, tmp_path / "a", name="web", version="1", policy=POLICY)
    unpack_artifact(tmp_path / "a" / "image.tar", tmp_path / "instance")
    assert scan(tmp_path / "instance", POLICY, workers=0).root == result.manifest.root


def test_unprivileged_unpack_refuses_foreign_owners(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_artifact(tree, tmp_path / "a", name="web", version="1", policy=POLICY, owner=(0, 0))
    monkeypatch.setattr(os, "geteuid", lambda: 4321)
    monkeypatch.setattr(os, "getegid", lambda: 4321)
    with pytest.raises(ArtifactError, match="--owner 4321:4321"):
        unpack_artifact(tmp_path / "a" / "image.tar", tmp_path / "instance")


def test_output_inside_the_root_is_refused(tree: Path) -> None:
    with pytest.raises(ArtifactError, match="inside the image root"):
        build_artifact(tree, tree / "out", name="web", version="1", policy=POLICY)


def test_invalid_name_is_refused(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="not a valid reference name"):
        build_artifact(tree, tmp_path / "a", name="Web App", version="1", policy=POLICY)


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uid, info.gid = os.geteuid(), os.getegid()
    for key, value in fields.items():
        setattr(info, key, value)
    return info


ROOT = (_info(".", tarfile.DIRTYPE), b"")


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([ROOT, (_info("/etc/passwd"), b"x")], "unsafe member name"),
        ([ROOT, (_info("../escape"), b"x")], "unsafe member name"),
        ([ROOT, (_info("a/../../escape"), b"x")], "unsafe member name"),
        (
            [ROOT, (_info("link", tarfile.SYMTYPE, linkname="/etc"), b""), (_info("link/x"), b"x")],
            "no directory parent",
        ),
        ([ROOT, (_info("orphan/x"), b"x")], "no directory parent"),
        ([ROOT, (_info("f"), b"x"), (_info("f"), b"y")], "appears twice"),
        ([ROOT, (_info("f"), b"x"), (_info("h", tarfile.LNKTYPE, linkname="f"), b"")], "type"),
        ([(_info("f"), b"x")], "no directory parent"),
        ([], "no root directory"),
    ],
)
def test_unsafe_artifacts_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], message: str
) -> None:
    path = tmp_path / "evil.tar"
    path.write_bytes(_tar(members))
    with pytest.raises(ArtifactError, match=message):
        unpack_artifact(path, tmp_path / "dest")
    assert not (tmp_path / "escape").exists()


def test_garbage_is_not_an_artifact(tmp_path: Path) -> None:
    path = tmp_path / "garbage.tar"
    path.write_bytes(b"not a tarball" * 100)
    with pytest.raises(ArtifactError):
        unpack_artifact(path, tmp_path / "dest")


@pytest.mark.parametrize(
    "header",
    [
        Header(b"etc/hosts", REGULAR, 0o644, 0, 0, size=12),
        Header(b".", DIRECTORY, 0o755, 0, 0),
        Header(b"usr/lib", DIRECTORY, 0o2755, 1000, 1000),
        Header(b"bin/sh", SYMLINK, 0o777, 0, 0, linkname=b"busybox"),
        Header(b"x" * 99, REGULAR, 0o600, 0, 0, size=(1 << 33) - 1),
    ],
)
def test_fast_headers_match_tarfile(header: Header) -> None:
    info = tarfile.TarInfo(os.fsdecode(header.name))
    info.type, info.mode, info.uid, info.gid = header.kind, header.mode, header.uid, header.gid
    info.size, info.linkname, info.mtime = header.size, os.fsdecode(header.linkname), 0
    expected = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    fast = simple_header(
        header.name,
        header.kind,
        mode=header.mode,
        uid=header.uid,
        gid=header.gid,
        size=header.size,
        linkname=header.linkname,
    )
    assert fast == encode_header(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        Header(b"n" * 300, REGULAR, 0o644, 0, 0),
        Header(b"caf\xc3\xa9", REGULAR, 0o644, 0, 0),
        Header(b"raw\xff", REGULAR, 0o644, 0, 0),
        Header(b"link", SYMLINK, 0o777, 0, 0, linkname=b"t" * 200),
        Header(b"big-ids", REGULAR, 0o644, 8**7, 8**8),
    ],
)
def test_pax_headers_read_back(header: Header) -> None:
    fast = simple_header(
        header.name,
        header.kind,
        mode=header.mode,
        uid=header.uid,
        gid=header.gid,
        linkname=header.linkname,
    )
    assert fast is None
    data = encode_header(header) + bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tf:
        (member,) = tf.getmembers()
    assert os.fsencode(member.name) == header.name
    assert os.fsencode(member.linkname) == header.linkname
    assert (member.uid, member.gid) == (header.uid, header.gid)
