"""The report of one cycle: counts and the errors met, per file or per object.

Errors are logged as they are added (logger ``escale.sync.report``) and kept for the
CLI, which prints the summary and derives its exit code from them.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from ..names import shown

log = logging.getLogger(__name__)
activity = logging.getLogger("escale.activity")

#: a report keeps this many (event, path) pairs for the cycle's log; past it, each further
#: file is logged (DEBUG) as it happens and only counted: a first sync of a million files
#: must not hold a million names until the cycle ends
KEPT_FILES = 1000


@dataclass
class CycleReport:
    """What one cycle did; the CLI prints it and derives the exit code."""

    repository: str
    sent: int = 0
    received: int = 0
    deleted: int = 0
    conflicts: int = 0
    errors: list[str] = field(default_factory=list)
    relay_error: str | None = None
    waiting_for_room: bool = False
    #: (event, path) of the first KEPT_FILES files this cycle moved, for the log (escale/journal.py)
    files: list[tuple[str, str]] = field(default_factory=list)
    #: event -> how many more files past those (logged at DEBUG when they happened)
    more_files: Counter = field(default_factory=Counter)
    #: local changes this cycle found but could not publish (changing or unreadable files,
    #: deletions held back, no room on the relay); None when it did not push
    unpublished: int | None = None

    @property
    def did_work(self) -> bool:
        return bool(self.sent or self.received or self.deleted or self.conflicts)

    def moved(self, event: str, path: str) -> None:
        """Note one file this cycle moved (names past KEPT_FILES are logged now, not kept)."""
        if len(self.files) < KEPT_FILES:
            self.files.append((event, path))
            return
        self.more_files[event] += 1
        if activity.isEnabledFor(logging.DEBUG):
            activity.debug("%s: %s %s", self.repository, event, shown(path),
                           extra={"repository": self.repository, "event": event, "path": path})

    def error(self, message: str) -> None:
        log.error("%s: %s", self.repository, message)
        self.errors.append(message)

    def summary(self) -> str:
        s = (f"{self.repository}: {self.sent} sent, {self.received} received, {self.deleted} deleted, "
             f"{self.conflicts} conflicts, {len(self.errors)} errors")
        if self.relay_error:
            s += f" (relay failed: {self.relay_error})"
        elif self.waiting_for_room:
            s += " (waiting for room on the relay)"
        return s
