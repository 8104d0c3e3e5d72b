"""The mass-deletion guard: a scan that deletes most of the folder is held back.

An unmounted sub-folder, a script run in the wrong place or a stray ``rm -r`` all
look, to a scan, like the user deleting files on purpose; once published, the
deletions reach every client. So when one scan would delete more than ``max
delete`` allows (by default more than half of the synced files, and more than
:data:`FLOOR`), those deletions are held back: everything else still syncs, the
cycle reports an error (exit 1) every time, and the deletions are published only
after ``escalectl confirm-deletes`` (or a looser ``max delete``). Renames are not
deletions. As rclone bisync's ``--max-delete``, the limit is a percentage by
default; a plain number is a count of files.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from .index import DIR_VERSION, GONE, Entry

log = logging.getLogger(__name__)

#: a scan deleting this many files or fewer is never held back by a percentage limit
FLOOR = 50
DEFAULT_MAX_DELETE = "50%"
#: State meta keys: what the daemon holds back, and what escalectl confirmed
HELD_KEY = "held_deletes"
CONFIRMED_KEY = "confirmed_deletes"


@dataclass(frozen=True)
class DeleteLimit:
    """``max delete``: a percentage of the synced files (above :data:`FLOOR` files), a
    count of files, or no limit (``off``)."""

    percent: float | None = 50.0
    count: int | None = None

    @classmethod
    def parse(cls, text: str) -> "DeleteLimit":
        """``50%``, ``200`` or ``off`` (ValueError otherwise)."""
        t = text.strip().lower()
        if t in ("off", "no", "none", "unlimited"):
            return cls(None, None)
        if t.endswith("%"):
            try:
                pct = float(t[:-1].strip().replace(",", "."))
            except ValueError:
                raise ValueError(f"'{text}' is not a percentage (e.g. 50%)") from None
            if not 0 <= pct <= 100:
                raise ValueError(f"'{text}': a percentage is between 0% and 100%")
            return cls(pct, None)
        if t.isdigit():
            return cls(None, int(t))
        raise ValueError(f"'{text}' is neither a percentage (50%), a number of files (200) nor 'off'")

    def exceeded(self, deleted: int, synced: int) -> bool:
        if self.count is not None:
            return deleted > self.count
        if self.percent is None or self.percent >= 100:
            return False
        return deleted > FLOOR and deleted * 100 > self.percent * synced

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        return "off" if self.percent is None else f"{self.percent:g}%"


def is_file_deletion(e: Entry) -> bool:
    return e.kind == GONE and e.prev != DIR_VERSION


class DeletionGuard:
    """Splits a scan's changes into what may be published and the deletions held back."""

    def __init__(self, limit: DeleteLimit):
        self.limit = limit

    def screen(self, changes: list[Entry], synced_files: int, confirmed: set[str]
               ) -> tuple[list[Entry], list[Entry]]:
        """(changes to publish, deletions held back). Rename sources travel with their
        rename; deletions confirmed by the user do not count."""
        gone = [e for e in changes if e.kind == GONE]
        if not gone:
            return changes, []
        renamed = {e.origin for e in changes if e.origin is not None}
        candidates = [e for e in gone if e.path not in renamed and e.path not in confirmed]
        files = sum(1 for e in candidates if is_file_deletion(e))
        if not files or not self.limit.exceeded(files, synced_files):
            return changes, []
        held = {e.path for e in candidates}
        return [e for e in changes if e.path not in held], candidates


def load_paths(text: str | None) -> list[str]:
    """The path list stored under HELD_KEY / CONFIRMED_KEY."""
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    paths = value.get("paths") if isinstance(value, dict) else None
    return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


def dump_paths(paths: list[str], **extra) -> str:
    return json.dumps({"paths": sorted(paths), **extra})
