"""Watch a synced folder: wake the daemon early, and tell it which folders changed.

watchdog (inotify on Linux, FSEvents on macOS) is a maintained, portable library;
hand-rolled inotify would be Linux-only. Its events do two things:

- they shorten the sleep between cycles (any platform);
- on Linux, on a local file system, they say which folders changed (:meth:`FolderWatcher.take`),
  so an idle daemon cycle rescans those folders only: O(changes), not O(files).

What the watcher says is only trusted when it cannot have missed a change: inotify on a
local file system (a network file system does not report other machines' writes), no
kernel queue overflow since the last take, the observer alive, the synced folder still the
one watched. Otherwise — and at start, and at least every ``full scan`` seconds (the
caller's choice) — :meth:`take` answers None and the cycle scans the whole folder, as it
did before the watcher existed. A missed event therefore costs latency, never a change.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: seconds between two full scans of a watched folder at most (option ``full scan``)
DEFAULT_FULL_SCAN = 3600.0

#: watchdog's events that are a change; never "opened" nor "closed_no_write" (a read:
#: a backup, an indexer or the user opening a file must not cost a cycle)
CHANGES = frozenset(("created", "deleted", "modified", "moved", "closed", "attrib"))

#: file systems where inotify sees every change (all writes go through this kernel).
#: NFS, SMB/CIFS, FUSE (sshfs, rclone mount…), 9p and the like report only this
#: machine's own writes: their folders are scanned whole every cycle.
LOCAL_FILESYSTEMS = frozenset((
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs", "reiserfs", "jfs", "bcachefs",
    "nilfs2", "overlay", "vfat", "exfat", "ntfs3", "hfsplus", "ramfs"))

#: watchdog says a kernel queue overflow (events lost) only in its log: these loggers
#: are listened to, and an overflow makes the next scan a full one
_OVERFLOW_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")


def _room_for_a_watch(path: Path) -> bool:
    """Can inotify add one more watch now (one init, one add, one close)? watchdog skips a
    subfolder whose watch it cannot add (the per-user limit fs.inotify.max_user_watches,
    reached by a large tree or by other programs) and says nothing: changes there would
    reach no event. A watcher that met a full limit watches its folder anew once there is room."""
    from watchdog.observers.inotify_c import InotifyConstants, inotify_add_watch, inotify_init

    fd = inotify_init()
    if fd < 0:
        return False
    try:
        return (inotify_add_watch(fd, os.fsencode(path), InotifyConstants.IN_ATTRIB) >= 0
                or ctypes.get_errno() != errno.ENOSPC)  # (a folder gone is not this question)
    finally:
        os.close(fd)


def filesystem_type(path: Path, mounts: str = "/proc/self/mountinfo") -> str | None:
    """The type of the file system holding ``path`` (Linux), or None if unknown."""
    try:
        target = os.path.realpath(path)
        with open(mounts, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        fields = line.split()
        try:
            sep = fields.index("-")
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # \040: a space
            fstype = fields[sep + 1]
        except (ValueError, IndexError):
            continue
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind


class _OverflowListener(logging.Handler):
    def __init__(self, watcher: "FolderWatcher"):
        super().__init__(logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.watcher.lost_events()


class FolderWatcher:
    """Watches ``root`` recursively; :attr:`wake` is set on any change."""

    def __init__(self, root: Path, wake: threading.Event, ignore_marks: tuple[str, ...] = (".escale-tmp-",),
                 full_scan: float = DEFAULT_FULL_SCAN):
        self.root = Path(root)
        self.wake = wake
        self.full_scan = full_scan  # seconds between two full scans at most; 0: every cycle
        self._last_full: float | None = None  # when the last full scan that finished began
        self._taken_at = 0.0
        self.ignore_marks = ignore_marks
        self._observer = None
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        self._lost = True  # nothing is known until the first take (the start's full scan)
        self._identity: tuple[int, int] | None = None
        self._listener: _OverflowListener | None = None
        self.trusted = False  # whether take() may ever answer a set (local fs, inotify)
        self._short = False  # some folders may not be watched (no room for a watch, unreadable): watch anew
        self._grown = True  # watchdog added watches (new folders) since the last take: is there room?

    def _relative(self, path: str) -> str | None:
        """The path relative to the root, or None for escale's own and temporary files."""
        try:
            rel = Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return None
        if rel == ".":
            return ""
        if rel == ".escale" or rel.startswith(".escale/"):
            return None
        name = rel.rpartition("/")[2]
        return None if any(m in name for m in self.ignore_marks) else rel

    def _relevant(self, path: str) -> bool:
        return self._relative(path) is not None

    def note(self, event_type: str, paths: list[str], is_directory: bool) -> None:
        """Record one watchdog event: the folders whose listing it changes are dirty."""
        if event_type not in CHANGES:
            return
        touched = False
        with self._lock:
            for p in paths:
                rel = self._relative(p) if p else None
                if rel is None:
                    continue
                touched = True
                self._grown |= is_directory and event_type in ("created", "moved")
                if is_directory:
                    self._dirty.add(rel)  # a folder's own listing changed (or it is new, or gone)
                if rel and not (is_directory and event_type == "modified"):
                    self._dirty.add(rel.rpartition("/")[0])  # the folder listing it
        if touched:
            self.wake.set()

    def pending(self) -> set[str] | None:
        """The changed folders noted so far (None: the next take is a full scan), kept."""
        with self._lock:
            return None if self._lost else set(self._dirty)

    def lost_events(self) -> None:
        """The kernel dropped events: the next take answers None (a full scan)."""
        with self._lock:
            self._lost = True
        log.info("%s: file system events were lost; the next cycle scans the whole folder", self.root)
        self.wake.set()

    def take(self) -> set[str] | None:
        """The folders (relative, "" the top) changed since the last take, and forget them;
        None when that set cannot be trusted to hold every change, or a full scan is due:
        scan everything. Hand the answer back to :meth:`finished`."""
        self._taken_at = time.monotonic()
        dirty = self._take()
        if dirty is not None and (self._last_full is None or self.full_scan <= 0
                                  or self._taken_at - self._last_full >= self.full_scan):
            return None
        return dirty

    def finished(self, taken: set[str] | None, complete: bool, again: set[str] = frozenset()) -> None:
        """The scan of what :meth:`take` answered ended: ``complete`` if every change it found
        was published, else its folders are scanned again (all of them after a full scan);
        ``again``: folders to scan next time anyway (a file still being written, a folder
        that could not be read)."""
        if not complete:
            self.restore(taken)
        elif taken is None:
            self._last_full = self._taken_at
        self.restore(set(again))

    def _take(self) -> set[str] | None:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            lost, self._lost = self._lost, False
            grown, self._grown = self._grown, False
        observer = self._observer
        if not self.trusted:
            return None
        died = (observer is None or not observer.is_alive()
                or not all(e.is_alive() for e in observer.emitters))  # a watch that failed
        try:
            st = os.stat(self.root)
            same = (st.st_dev, st.st_ino) == self._identity
        except OSError:
            same = False
        # watchdog skips a folder it cannot watch, without a word: when it added watches, was
        # there room? (the probe costs ~1 ms of CPU: idle cycles, which add none, do not pay it)
        if (grown or self._short) and not _room_for_a_watch(self.root):
            if not self._short:
                log.warning("%s: inotify has no room for more watches (fs.inotify.max_user_watches): every "
                            "cycle scans the whole folder until there is", self.root)
            self._short = True
            return None
        if not same or self._short or died:  # replaced (renamed, remounted), or not all watched: watch it anew
            log.info("%s: %s; watching it again", self.root,
                     "the synced folder changed under the watcher" if not same else
                     "the watcher stopped" if died else "some folders may not have been watched")
            self._short = False
            self.stop()
            self.start()
            with self._lock:  # this take is the full scan the new watch needs
                self._lost = False
            return None
        return None if lost else dirty

    def rewatch(self) -> None:
        """Some folder may have no watch (it could not be read when watched: inotify needs
        read access, and watchdog skips a folder it cannot watch without a word): the next
        take watches the folder anew and answers None (a full scan)."""
        with self._lock:
            self._short = True

    def restore(self, dirty: set[str] | None) -> None:
        """Give back what a take returned (a cycle that did not finish with it)."""
        with self._lock:
            if dirty is None:
                self._lost = True
            else:
                self._dirty |= dirty

    def start(self) -> bool:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency
            log.info("watchdog is not installed: changes are found by the periodic scan only")
            return False
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                watcher.note(event.event_type, [event.src_path, getattr(event, "dest_path", "") or ""],
                             event.is_directory)

        with self._lock:
            self._lost = True
            self._dirty = set()
            self._grown = True  # every folder was just watched
        try:
            st = os.stat(self.root)
            self._identity = (st.st_dev, st.st_ino)
            self._observer = Observer()
            self._observer.schedule(Handler(), str(self.root), recursive=True)
            self._observer.daemon = True
            self._observer.start()
        except OSError as exc:
            log.info("cannot watch %s (%s): changes are found by the periodic scan only", self.root, exc)
            self._observer = None
            return False
        fstype = filesystem_type(self.root)
        inotify = type(self._observer).__name__.startswith("Inotify")
        self.trusted = inotify and fstype in LOCAL_FILESYSTEMS
        if not self.trusted:
            log.info("%s: %s: every cycle scans the whole folder (%s)", self.root, fstype or "unknown file system",
                     "not inotify" if not inotify else "a file system whose changes inotify may not all see")
        if self._listener is None:
            self._listener = _OverflowListener(self)
            for name in _OVERFLOW_LOGGERS:
                logger = logging.getLogger(name)
                if logger.getEffectiveLevel() > logging.WARNING:
                    logger.setLevel(logging.WARNING)  # the overflow warning must reach the listener
                logger.addHandler(self._listener)
        return True

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        if self._listener is not None:
            for name in _OVERFLOW_LOGGERS:
                logging.getLogger(name).removeHandler(self._listener)
            self._listener = None
