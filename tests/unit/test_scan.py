"""The scanner records every kind of object faithfully and survives a hostile tree."""

from __future__ import annotations

import gc
import hashlib
import os
import pickle
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.manifest.format import Entry, EntryError, EntryType, Manifest, decode, root_of
from agent.manifest.policy import Policy
from agent.scan import hashing
from agent.scan import scanner as scan_module
from agent.scan.result import ScanResult
from agent.scan.rules import Exclusions
from agent.scan.scanner import scan

OPEN = Policy(exclude=())


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """Fail instead of hanging forever if a scan ever blocks on a FIFO or device."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("scan hung"))
    signal.alarm(30)
    yield
    signal.alarm(0)


def by_path(result: ScanResult) -> dict[bytes, Entry]:
    return {entry.path: entry for entry in result.entries}


def write(path: Path, data: bytes = b"x", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_every_entry_type_is_recorded_without_opening_special_files(
    tmp_path: Path, workers: int
) -> None:
    write(tmp_path / "etc/hostname", b"web-1\n", 0o640)
    write(tmp_path / "bin/tool", b"#!/bin/sh\n", 0o4755)
    (tmp_path / "etc/link").symlink_to("hostname")
    os.mkfifo(tmp_path / "fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock"))
    try:
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(tmp_path / "loop", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD (run as root)")
    os.chown(tmp_path / "etc/hostname", 123, 456)

    result = scan(tmp_path, OPEN, workers=workers)
    listener.close()
    entries = by_path(result)

    assert [entry.path for entry in result.entries] == sorted(entries)
    assert entries[b"/"].type is EntryType.DIRECTORY
    hostname = entries[b"/etc/hostname"]
    assert hostname == Entry(
        b"/etc/hostname",
        EntryType.REGULAR,
        0o640,
        123,
        456,
        6,
        hashlib.sha256(b"web-1\n").digest(),
    )
    assert entries[b"/bin/tool"].mode == 0o4755
    link = entries[b"/etc/link"]
    assert (link.type, link.link_target) == (EntryType.SYMLINK, b"hostname")
    assert link.sha256 == hashlib.sha256(b"hostname").digest()
    assert entries[b"/fifo"].type is EntryType.FIFO
    assert entries[b"/sock"].type is EntryType.SOCKET
    null = entries[b"/null"]
    assert (null.type, null.rdev_major, null.rdev_minor) == (EntryType.CHAR_DEVICE, 1, 3)
    assert null.sha256 == b"" and null.size == 0
    loop = entries[b"/loop"]
    assert (loop.type, loop.rdev_major, loop.rdev_minor) == (EntryType.BLOCK_DEVICE, 7, 0)
    assert result.errors == 0
    assert result.files_hashed == 2
    assert result.bytes_hashed == 6 + 10


def test_empty_files_hard_links_and_large_files(tmp_path: Path) -> None:
    write(tmp_path / "empty", b"")
    big = os.urandom(hashing.BUFFER_BYTES * 2 + 17)  # several reads, a short last one
    write(tmp_path / "big", big)
    write(tmp_path / "exact", b"e" * hashing.BUFFER_BYTES)  # one full read, then EOF
    os.link(tmp_path / "big", tmp_path / "hard")

    entries = by_path(scan(tmp_path, OPEN))

    assert entries[b"/empty"].sha256 == hashlib.sha256(b"").digest()
    assert entries[b"/empty"].size == 0
    assert entries[b"/big"].sha256 == hashlib.sha256(big).digest()
    assert entries[b"/hard"] == entries[b"/big"]._replace(path=b"/hard")
    assert entries[b"/exact"].sha256 == hashlib.sha256(b"e" * hashing.BUFFER_BYTES).digest()


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret", b"do not read")
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")  # a loop
    (root / "dir").symlink_to(outside)  # a link to a directory elsewhere
    (root / "dangling").symlink_to("/nowhere")
    (root / "self").symlink_to("self")

    result = scan(root, OPEN)

    assert {entry.path for entry in result.entries} == {
        b"/",
        b"/a",
        b"/b",
        b"/dir",
        b"/dangling",
        b"/self",
    }
    assert all(entry.type is EntryType.SYMLINK for entry in result.entries[1:])
    assert by_path(result)[b"/dir"].link_target == os.fsencode(outside)
    assert result.errors == 0


def test_non_utf8_names_round_trip_through_the_manifest(tmp_path: Path) -> None:
    name = b"caf\xe9-\xff\xfe.bin"  # Latin-1, not UTF-8
    base = os.fsencode(tmp_path)
    os.mkdir(base + b"/d\x80")
    with open(base + b"/d\x80/" + name, "wb") as handle:
        handle.write(b"bytes")
    os.symlink(b"\xff", base + b"/l\xfe")

    result = scan(base, OPEN)
    manifest = Manifest.build(OPEN, result.entries)
    entries = by_path(result)

    assert entries[b"/d\x80/" + name].sha256 == hashlib.sha256(b"bytes").digest()
    assert entries[b"/l\xfe"].link_target == b"\xff"
    assert list(decode(manifest.encode()).entries) == result.entries


def test_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    depth = 1200  # > sys.getrecursionlimit(); paths stay under PATH_MAX
    path = os.fsencode(tmp_path)
    for _ in range(depth):
        path += b"/d"
        os.mkdir(path)
    write(Path(os.fsdecode(path)) / "f", b"deep")

    try:
        result = scan(tmp_path, OPEN)
    finally:
        _remove_deep_tree(os.fsencode(tmp_path), depth)

    assert len(result.entries) == depth + 2
    assert result.entries[-1].path == b"/d" * depth + b"/f"
    assert result.entries[-1].sha256 == hashlib.sha256(b"deep").digest()


def _remove_deep_tree(base: bytes, depth: int) -> None:
    """Bottom-up, without recursion (shutil.rmtree, used by pytest's cleanup, would overflow)."""
    os.unlink(base + b"/d" * depth + b"/f")
    for level in range(depth, 0, -1):
        os.rmdir(base + b"/d" * level)


def test_excluded_paths_are_neither_recorded_nor_entered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "etc/keep")
    write(tmp_path / "var/log/syslog")
    write(tmp_path / "var/lib/app.pyc")
    write(tmp_path / "var/lib/app.py")
    listed: list[bytes] = []
    real_scandir = os.scandir

    def spying_scandir(path: bytes) -> Iterator[os.DirEntry[bytes]]:
        listed.append(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spying_scandir)
    base = os.fsencode(tmp_path)

    literal = scan(tmp_path, Policy(exclude=("/var/log",)), workers=0)
    assert {e.path for e in literal.entries} >= {b"/etc/keep", b"/var", b"/var/lib/app.pyc"}
    assert not any(e.path.startswith(b"/var/log") for e in literal.entries)
    assert base + b"/var/log" not in listed

    globbed = scan(tmp_path, Policy(exclude=("/var/l*g", "**/*.pyc")), workers=0)
    paths = {e.path for e in globbed.entries}
    assert b"/var/lib/app.py" in paths
    assert b"/var/lib/app.pyc" not in paths
    assert not any(path.startswith(b"/var/log") for path in paths)


def test_include_roots_are_deduplicated_and_missing_ones_skipped(tmp_path: Path) -> None:
    write(tmp_path / "usr/lib/libc.so")
    write(tmp_path / "etc/passwd")
    policy = Policy(include=("/usr", "/usr/lib", "/opt", "/etc/passwd"), exclude=())

    paths = [entry.path for entry in scan(tmp_path, policy).entries]

    assert paths == [b"/etc/passwd", b"/usr", b"/usr/lib", b"/usr/lib/libc.so"]


def test_ignored_attributes_are_recorded_as_zero(tmp_path: Path) -> None:
    write(tmp_path / "f", b"content", 0o600)
    (tmp_path / "l").symlink_to("f")
    policy = Policy(exclude=(), ignore_attributes=("mode", "content", "target"))

    entries = by_path(scan(tmp_path, policy))

    assert entries[b"/f"].mode == 0 and entries[b"/f"].sha256 == b""
    assert entries[b"/f"].size == 7
    assert entries[b"/l"].link_target == b"" and entries[b"/l"].sha256 == b""


def test_one_filesystem_records_a_mount_point_but_does_not_enter_it(tmp_path: Path) -> None:
    write(tmp_path / "root/file")
    mount_point = tmp_path / "root/mnt"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "corral-test", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        _one_filesystem_on_dev()
        return
    try:
        write(mount_point / "inside")
        staying = {e.path for e in scan(tmp_path / "root", OPEN).entries}
        crossing = {
            e.path
            for e in scan(tmp_path / "root", Policy(exclude=(), one_filesystem=False)).entries
        }
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    assert b"/mnt" in staying and b"/mnt/inside" not in staying
    assert b"/mnt/inside" in crossing


def _one_filesystem_on_dev() -> None:
    """Fallback where mounting is not permitted: /dev/pts is its own filesystem."""
    if os.stat("/dev").st_dev == os.stat("/dev/pts").st_dev:
        pytest.skip("cannot mount and /dev/pts is not a separate filesystem here")
    staying = scan("/", Policy(include=("/dev",), exclude=()), workers=0)
    crossing = scan("/", Policy(include=("/dev",), exclude=(), one_filesystem=False), workers=0)
    assert b"/dev/pts" in {e.path for e in staying.entries}
    assert not any(e.path.startswith(b"/dev/pts/") for e in staying.entries)
    assert any(e.path.startswith(b"/dev/pts/") for e in crossing.entries)


def test_a_file_deleted_before_it_is_read_is_recorded_as_vanished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "keep", b"k")
    victim = write(tmp_path / "victim", b"v")
    real_hash, real_listed = hashing.hash_file, hashing.hash_listed

    def delete_victim(path: bytes) -> None:
        if path.endswith(b"/victim") and os.path.exists(path):
            os.unlink(path)

    def deleting_hash(path: bytes, ino: int, size: int, buffer: object = None) -> hashing.Outcome:
        delete_victim(path)
        return real_hash(path, ino, size)

    def deleting_listed(path: bytes, buffer: object = None) -> hashing.Listed:
        delete_victim(path)  # a scan without a cache: the hashing process stats the file
        return real_listed(path)

    monkeypatch.setattr(hashing, "hash_file", deleting_hash)
    monkeypatch.setattr(hashing, "hash_listed", deleting_listed)
    monkeypatch.setattr(scan_module, "hash_file", deleting_hash)

    for workers in (0, 2):
        write(victim, b"v")
        result = scan(tmp_path, OPEN, workers=workers)
        entries = by_path(result)
        assert entries[b"/victim"].error is EntryError.VANISHED
        assert entries[b"/victim"].sha256 == b""
        assert entries[b"/keep"].error is EntryError.NONE
        assert result.errors == 1


def test_a_listed_file_is_hashed_with_the_attributes_of_what_was_opened(tmp_path: Path) -> None:
    """Without a cache the walk does not lstat files: the hashing process reports what it saw."""
    regular = write(tmp_path / "regular", b"content", 0o640)
    os.mkfifo(tmp_path / "now-a-fifo")  # a name listed as a file, replaced since
    (tmp_path / "now-a-link").symlink_to("regular")

    digest, fields = hashing.hash_listed(os.fsencode(regular))
    st = regular.lstat()
    assert digest == hashlib.sha256(b"content").digest()
    assert fields == (
        st.st_mode,
        st.st_ino,
        st.st_uid,
        st.st_gid,
        7,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )
    for gone in ("now-a-fifo", "now-a-link", "absent"):  # never read, never a hang
        assert hashing.hash_listed(os.fsencode(tmp_path / gone)) == (EntryError.VANISHED, ())


def test_a_file_replaced_after_listing_is_recorded_as_vanished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listed, then replaced (new inode) or removed before lstat: never a crash."""
    write(tmp_path / "replaced", b"old")
    write(tmp_path / "removed", b"gone")
    (tmp_path / "gone-dir").mkdir()
    real_hash = hashing.hash_file
    real_scandir = os.scandir

    def listing_then_removing(path: bytes) -> object:
        listing = list(real_scandir(path))
        if path.rstrip(b"/") == os.fsencode(tmp_path):
            os.unlink(tmp_path / "removed")
            os.rmdir(tmp_path / "gone-dir")
        return _FakeListing(listing)

    def replacing_hash(path: bytes, ino: int, size: int, buffer: object = None) -> hashing.Outcome:
        if path.endswith(b"/replaced"):  # as a package manager does: rename over it
            write(Path(os.fsdecode(path + b".new")), b"new")
            os.replace(path + b".new", path)
        return real_hash(path, ino, size)

    monkeypatch.setattr(os, "scandir", listing_then_removing)
    monkeypatch.setattr(scan_module, "hash_file", replacing_hash)

    entries = by_path(scan(tmp_path, OPEN, workers=0))

    assert entries[b"/replaced"].error is EntryError.VANISHED
    assert entries[b"/removed"].error is EntryError.VANISHED
    assert entries[b"/gone-dir"].error is EntryError.VANISHED


class _FakeListing:
    """A scandir iterator over a listing taken earlier."""

    def __init__(self, items: list[os.DirEntry[bytes]]) -> None:
        self._items = items

    def __iter__(self) -> Iterator[os.DirEntry[bytes]]:
        return iter(self._items)

    def __enter__(self) -> _FakeListing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_unreadable_files_and_directories_are_recorded_not_fatal(
    request: pytest.FixtureRequest,
) -> None:
    """A real permission check: the scan runs as an unprivileged user in a child process."""
    shared = Path(tempfile.mkdtemp(prefix="corral-scan-", dir="/tmp"))  # traversable by all
    request.addfinalizer(lambda: shutil.rmtree(shared))
    base = shared / "tree"
    write(base / "readable", b"ok")
    write(base / "secret", b"no", 0o600)
    (base / "locked").mkdir(mode=0o700)
    write(base / "locked/inner", b"hidden")
    for path in (shared, base):
        path.chmod(0o755)
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges and scan
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            results = [scan(base, OPEN, workers=w).entries for w in (0, 2)]
            os.write(write_end, pickle.dumps(results))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    inline, pooled = pickle.loads(data)

    assert inline == pooled
    entries = {entry.path: entry for entry in inline}
    assert entries[b"/readable"].sha256 == hashlib.sha256(b"ok").digest()
    assert entries[b"/secret"].error is EntryError.UNREADABLE
    assert entries[b"/secret"].size == 2 and entries[b"/secret"].mode == 0o600
    assert entries[b"/locked"].error is EntryError.UNREADABLE
    assert b"/locked/inner" not in entries


def test_a_scan_leaves_the_garbage_collector_as_it_found_it(tmp_path: Path) -> None:
    write(tmp_path / "file", b"x")
    assert gc.isenabled()
    scan(tmp_path, OPEN, workers=0)
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0  # what the scan made was promoted, not left frozen
    gc.disable()
    try:
        scan(tmp_path, OPEN, workers=0)
        assert not gc.isenabled()
    finally:
        gc.enable()
    gc.freeze()  # a process that froze its own objects keeps them frozen
    try:
        frozen = gc.get_freeze_count()
        scan(tmp_path, OPEN, workers=0)
        # Not unfrozen (that would make it 0), nothing of the scan's added; frozen
        # objects the rest of the process frees meanwhile may lower it.
        assert 0 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()


def test_result_root_matches_the_manifest_root(tmp_path: Path) -> None:
    write(tmp_path / "a", b"a")
    write(tmp_path / "d/b", b"b")
    result = scan(tmp_path, OPEN)
    assert result.root == root_of(result.entries)
    assert result.root == Manifest.build(OPEN, result.entries).root


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        scan(tmp_path / "missing", OPEN)
    with pytest.raises(NotADirectoryError):
        scan(write(tmp_path / "file"), OPEN)


def test_progress_is_reported_and_can_abandon_the_scan(tmp_path: Path) -> None:
    for index in range(2500):
        write(tmp_path / f"d{index % 7}" / f"f{index}", b"%d" % index)
    calls: list[tuple[int, int]] = []
    scan(tmp_path, OPEN, progress=lambda entries, hashed: calls.append((entries, hashed)))
    assert len(calls) >= 2
    assert calls[-1][0] == 2500 + 8

    class StopError(Exception):
        pass

    def stop(entries: int, hashed: int) -> None:
        raise StopError

    with pytest.raises(StopError):
        scan(tmp_path, OPEN, progress=stop)


def test_only_ancestors_of_literal_excludes_need_the_exclude_check() -> None:
    literal = Exclusions(Policy(exclude=("/var/log", "/tmp/")))
    assert literal.may_exclude(b"/")
    assert literal.may_exclude(b"/var")
    assert not literal.may_exclude(b"/usr")
    assert not literal.may_exclude(b"/var/log")  # excluded itself: never listed
    globbed = Exclusions(Policy(exclude=("/var/log", "**/*.pyc")))
    assert globbed.may_exclude(b"/usr/lib")
    assert not Exclusions(Policy(exclude=())).may_exclude(b"/")
