"""Kernel file events for the checked tree: one inotify watch per directory.

inotify watches a directory's own inode and the names directly in it, so the
agent adds a watch on every directory under the policy's include paths, minus
the excluded (mutable) ones and, with ``one_filesystem``, other filesystems.
Events become *touches*: the paths whose state must be looked at again. A touch
never says what changed; the rescan (:mod:`agent.daemon.watch.touched`) looks.

No silent loss:

- a directory is watched before it is listed (``watch_tree``), so a name
  created in it after the listing is an event, not a gap;
- a new or moved-in directory is a *subtree* touch: the caller watches it, then
  scans it;
- a full event queue (``IN_Q_OVERFLOW``) sets :attr:`TreeWatcher.overflowed`;
  the caller rewatches everything and rescans in full;
- when the kernel has no watches left (``ENOSPC``: ``fs.inotify.max_user_watches``),
  the directories left unwatched are counted (:attr:`TreeWatcher.unwatched`),
  the first failure is logged once, and the caller keeps scanning on the
  interval for them.

The library is ``inotify_simple``: a thin, maintained ctypes wrapper over
``inotify_init1``/``inotify_add_watch`` with no thread or event loop of its
own, which fits the agent's threads and lets it poll the descriptor itself.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from inotify_simple import INotify, flags, parse_events

from agent.errors import AgentError
from agent.manifest.policy import Policy
from agent.scan.rules import include_roots

log = logging.getLogger(__name__)

WATCH_MASK = (
    flags.MODIFY
    | flags.ATTRIB
    | flags.CLOSE_WRITE
    | flags.MOVED_FROM
    | flags.MOVED_TO
    | flags.CREATE
    | flags.DELETE
    | flags.DELETE_SELF
    | flags.MOVE_SELF
    | flags.ONLYDIR
    | flags.DONT_FOLLOW
    | flags.EXCL_UNLINK
)
_NEW_DIRECTORY = flags.CREATE | flags.MOVED_TO
_SELF = flags.DELETE_SELF | flags.MOVE_SELF


class WatchUnavailableError(AgentError):
    """The kernel offers no inotify instance (not Linux, or max_user_instances reached)."""


@dataclass(frozen=True, slots=True)
class Touch:
    """A path to look at again; ``subtree`` when everything below it may be new."""

    path: bytes
    subtree: bool = False


class TreeWatcher:
    """The inotify watches of one root under one policy, and the events they produce."""

    def __init__(
        self, root: str, policy: Policy, *, inotify: Callable[[], INotify] = INotify
    ) -> None:
        """Raises WatchUnavailableError when the kernel gives no inotify instance.

        ``inotify`` makes the instance (tests pass one that fails on purpose).
        """
        try:
            self._inotify = inotify()
        except OSError as exc:
            raise WatchUnavailableError(f"inotify is not available: {exc.strerror}") from exc
        self._base = os.fsencode(root).rstrip(b"/")
        self._policy = policy
        self._roots = include_roots(policy)
        self._lock = threading.Lock()
        self._paths: dict[int, bytes] = {}
        """Watch descriptor -> the directory it watches (path inside the root)."""
        self._wds: dict[bytes, int] = {}
        self._unwatched: set[bytes] = set()
        self._exhaustion_logged = False
        self.overflowed = False
        """Set when the kernel dropped events; the owner clears it after a full rescan."""
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._poller = select.poll()
        self._poller.register(self._inotify.fileno(), select.POLLIN)
        self._poller.register(self._wake_read, select.POLLIN)

    # -- watches ----------------------------------------------------------------

    @property
    def watched(self) -> int:
        return len(self._paths)

    @property
    def unwatched(self) -> int:
        """Directories that should be watched but are not (the kernel ran out of watches)."""
        return len(self._unwatched)

    def watch_all(self) -> None:
        """Watch every directory under the include paths (again: existing watches stay)."""
        for rel in self._roots:
            self.watch_tree(rel)

    def watch_tree(self, rel: bytes) -> None:
        """Watch ``rel`` and every directory below it, each before it is listed."""
        device = self.device_of(rel)
        stack = [rel]
        while stack:
            directory = stack.pop()
            if self._policy.excludes(directory):
                continue
            try:
                st = os.lstat(self._base + directory)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or (device is not None and st.st_dev != device):
                continue  # a mount point is recorded by the scan, not entered
            self._add(directory)
            try:
                listing = os.scandir(self._base + directory)
            except OSError:
                continue  # gone or unreadable: the rescan records what it can
            prefix = directory.rstrip(b"/") + b"/"
            with listing:
                for child in listing:
                    if child.is_dir(follow_symlinks=False):
                        stack.append(prefix + child.name)

    def device_of(self, rel: bytes) -> int | None:
        """The device of the include path holding ``rel`` (None: any device will do)."""
        if not self._policy.one_filesystem:
            return None
        for root in self._roots:
            if rel == root or rel.startswith(root.rstrip(b"/") + b"/"):
                try:
                    return os.lstat(self._base + root).st_dev
                except OSError:
                    return None
        return None

    def _add(self, directory: bytes) -> None:
        try:
            wd = self._inotify.add_watch(self._base + directory, WATCH_MASK)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._note_exhausted(directory)
            elif exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("cannot watch %s: %s", os.fsdecode(directory), exc.strerror)
                with self._lock:
                    self._unwatched.add(directory)
            return
        with self._lock:
            old = self._paths.get(wd)
            if old is not None and old != directory and self._wds.get(old) == wd:
                del self._wds[old]  # the same directory, moved: its watch follows it
            self._paths[wd] = directory
            self._wds[directory] = wd
            self._unwatched.discard(directory)

    def _note_exhausted(self, directory: bytes) -> None:
        with self._lock:
            self._unwatched.add(directory)
        if not self._exhaustion_logged:
            self._exhaustion_logged = True
            log.error(
                "inotify watches exhausted (fs.inotify.max_user_watches): %s and other "
                "directories are not watched; their changes are found by interval scans only. "
                "Raise the limit (sysctl fs.inotify.max_user_watches) to watch them",
                os.fsdecode(directory),
                extra={"max_user_watches": _max_user_watches()},
            )

    def unwatch_tree(self, rel: bytes) -> None:
        """Drop the watches of ``rel`` and below (it moved away or vanished)."""
        prefix = rel.rstrip(b"/") + b"/"
        with self._lock:
            doomed = [p for p in self._wds if p == rel or p.startswith(prefix)]
            wds = [self._wds.pop(p) for p in doomed]
            for wd in wds:
                self._paths.pop(wd, None)
            self._unwatched = {p for p in self._unwatched if p != rel and not p.startswith(prefix)}
        for wd in wds:
            with contextlib.suppress(OSError):  # already gone with its directory
                self._inotify.rm_watch(wd)

    def unwatched_directories(self) -> list[bytes]:
        """The directories left without a watch, sorted."""
        with self._lock:
            return sorted(self._unwatched)

    def knows_directory(self, rel: bytes) -> bool:
        """Whether ``rel`` is a directory of the tree, watched or left unwatched."""
        with self._lock:
            return rel in self._wds or rel in self._unwatched

    def retry_unwatched(self) -> None:
        """Try again to watch what could not be watched (the limit may have been raised)."""
        pending = self.unwatched_directories()
        for directory in pending:
            with self._lock:
                self._unwatched.discard(directory)
            self.watch_tree(directory)
        if pending and not self._unwatched:
            self._exhaustion_logged = False  # a later exhaustion is said again
            log.info("every directory is watched again", extra={"watched": self.watched})

    # -- events -------------------------------------------------------------------

    def read(self, timeout: float | None) -> list[Touch] | None:
        """Touches from the events available within ``timeout`` seconds (None: wait).

        Returns an empty list when nothing came, and None once :meth:`wake` was called.
        """
        ready = self._poller.poll(None if timeout is None else int(timeout * 1000))
        fds = {fd for fd, _ in ready}
        if self._wake_read in fds:
            return None
        if self._inotify.fileno() not in fds:
            return []
        data = os.read(self._inotify.fileno(), 1 << 20)
        return self._touches(parse_events(data))

    def _touches(self, events: Iterable[tuple[int, int, int, str]]) -> list[Touch]:
        touches: list[Touch] = []
        for wd, mask, _cookie, name in events:
            if mask & flags.Q_OVERFLOW:
                self.overflowed = True
                continue
            with self._lock:
                directory = self._paths.get(wd)
                if mask & flags.IGNORED:
                    if directory is not None and self._wds.get(directory) == wd:
                        del self._wds[directory]
                    self._paths.pop(wd, None)
                    continue
            if directory is None:
                continue  # a watch already dropped
            if not name:
                if mask & (flags.ATTRIB | _SELF):
                    touches.append(Touch(directory))  # the directory itself
                continue
            path = directory.rstrip(b"/") + b"/" + os.fsencode(name)
            if self._policy.excludes(path):
                continue
            subtree = bool(mask & flags.ISDIR and mask & _NEW_DIRECTORY)
            touches.append(Touch(path, subtree=subtree))
        return touches

    def wake(self) -> None:
        """Make a blocked :meth:`read` return None (to stop)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")

    def close(self) -> None:
        self._inotify.close()
        os.close(self._wake_read)
        os.close(self._wake_write)


def _max_user_watches() -> int | None:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches", encoding="ascii") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None
