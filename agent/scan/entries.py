"""One manifest entry from one ``lstat``: the scanner's and the image builder's shared rule.

Built as plain tuples (``tuple.__new__``, no ``NamedTuple.__new__`` frame): a scan of
a hundred thousand files builds a hundred thousand of them.
"""

from __future__ import annotations

import os
import stat
from hashlib import sha256

from agent.manifest.format import Entry, EntryError, EntryType

TYPES = {
    stat.S_IFREG: EntryType.REGULAR,
    stat.S_IFDIR: EntryType.DIRECTORY,
    stat.S_IFLNK: EntryType.SYMLINK,
    stat.S_IFCHR: EntryType.CHAR_DEVICE,
    stat.S_IFBLK: EntryType.BLOCK_DEVICE,
    stat.S_IFIFO: EntryType.FIFO,
    stat.S_IFSOCK: EntryType.SOCKET,
}
REGULAR = EntryType.REGULAR
NO_ERROR = EntryError.NONE
new_tuple = tuple.__new__  # builds an Entry without NamedTuple.__new__'s Python frame


def regular_entry(
    path: bytes, st: os.stat_result, digest: bytes, error: EntryError = NO_ERROR
) -> Entry:
    fields = (path, REGULAR, st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_size)
    return new_tuple(Entry, (*fields, digest, b"", 0, 0, error))


def other_entry(
    path: bytes,
    st: os.stat_result,
    kind: EntryType,
    digest: bytes = b"",
    target: bytes = b"",
    *,
    error: EntryError = NO_ERROR,
) -> Entry:
    major = minor = 0
    if kind is EntryType.CHAR_DEVICE or kind is EntryType.BLOCK_DEVICE:
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    mode = st.st_mode & 0o7777
    fields = (path, kind, mode, st.st_uid, st.st_gid, 0, digest, target, major, minor, error)
    return new_tuple(Entry, fields)


def entry_from_stat(
    path: bytes,
    st: os.stat_result,
    *,
    digest: bytes = b"",
    target: bytes = b"",
    owner: tuple[int, int] | None = None,
) -> Entry | None:
    """The entry a scan records for ``path`` seen with ``st`` (None for a socket).

    ``digest`` is a regular file's content digest, ``target`` a symlink's
    target (whose digest is derived here). ``owner`` replaces the stat's uid
    and gid: an image build records owners as they will be unpacked. Sockets
    cannot be archived, so an image leaves them out.
    """
    kind = TYPES.get(stat.S_IFMT(st.st_mode), EntryType.SOCKET)
    if kind is EntryType.SOCKET:
        return None
    if kind is REGULAR:  # the common case, built in one step
        uid, gid = owner if owner is not None else (st.st_uid, st.st_gid)
        fields = (path, REGULAR, st.st_mode & 0o7777, uid, gid, st.st_size)
        return new_tuple(Entry, (*fields, digest, b"", 0, 0, NO_ERROR))
    if kind is EntryType.SYMLINK:
        entry = other_entry(path, st, kind, sha256(target).digest(), target)
    else:
        entry = other_entry(path, st, kind)
    return entry if owner is None else entry._replace(uid=owner[0], gid=owner[1])
