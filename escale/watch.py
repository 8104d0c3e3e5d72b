"""Wake the daemon early when something changes in a synced folder.

watchdog (inotify on Linux, FSEvents on macOS) is a maintained, portable library;
hand-rolled inotify would be Linux-only. Events only shorten the sleep between
cycles: the periodic full scan still finds everything, so a missed event (an
overflowed inotify queue, a network filesystem) costs latency, never a change.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

log = logging.getLogger(__name__)

#: watchdog's events that are a change; never "opened" nor "closed_no_write" (a read:
#: a backup, an indexer or the user opening a file must not cost a cycle)
CHANGES = frozenset(("created", "deleted", "modified", "moved", "closed", "attrib"))


class FolderWatcher:
    def __init__(self, root: Path, wake: threading.Event, ignore_marks: tuple[str, ...] = (".escale-tmp-",)):
        self.root = Path(root)
        self.wake = wake
        self.ignore_marks = ignore_marks
        self._observer = None

    def _relevant(self, path: str) -> bool:
        try:
            rel = Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return False
        if rel == ".escale" or rel.startswith(".escale/"):
            return False
        name = rel.rpartition("/")[2]
        return not any(m in name for m in self.ignore_marks)

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
                paths = [event.src_path, getattr(event, "dest_path", "") or ""]
                if event.event_type in CHANGES and any(p and watcher._relevant(p) for p in paths):
                    watcher.wake.set()

        try:
            self._observer = Observer()
            self._observer.schedule(Handler(), str(self.root), recursive=True)
            self._observer.daemon = True
            self._observer.start()
            return True
        except OSError as exc:
            log.info("cannot watch %s (%s): changes are found by the periodic scan only", self.root, exc)
            self._observer = None
            return False

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
