"""The report of one cycle: counts and the errors met, per file or per object.

Errors are logged as they are added (logger ``escale.sync.report``) and kept for the
CLI, which prints the summary and derives its exit code from them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


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
    #: (event, path) of each file this cycle moved, for the log (escale/journal.py)
    files: list[tuple[str, str]] = field(default_factory=list)
    #: local changes this cycle found but could not publish (changing or unreadable files,
    #: deletions held back, no room on the relay); None when it did not push
    unpublished: int | None = None

    @property
    def did_work(self) -> bool:
        return bool(self.sent or self.received or self.deleted or self.conflicts)

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
