"""Scan: what changed in the synced folder since the base (the last synced state).

A full scan walks every folder, one at a time, against that folder's base and checksum
rows. With the daemon's folder watcher (escale/watch.py) a cycle walks only the folders
the watcher saw change, and the new folders below them: an idle cycle lists nothing.
The watcher decides when its word cannot be trusted (then the scan is full); a scan
whose changes were not all published hands its folders back (:meth:`Scanner.done`).
"""
from __future__ import annotations

import logging
import os
import stat
from typing import Callable

from ..checksum import FileChangedError
from ..errors import EscaleError
from ..folder import TMP_MARK, LocalChanged
from ..fsnames import is_state_name
from ..index import DIR, FILE, Entry, LocalFile, Synced
from ..names import db_key
from ..plan import Changes, folder_changes
from .context import Repo
from .report import CycleReport

log = logging.getLogger(__name__)


class Scanner:
    """Finds the local changes of one repository, cycle after cycle."""

    def __init__(self, ctx: Repo):
        self.ctx = ctx
        self.watcher = None  # the daemon's FolderWatcher, while it runs
        self.scanned: dict[str, LocalFile] = {}  # the last scan's changed files, as seen
        self.walked = 0  # how many folders the last scan listed
        self.again: set[str] = set()  # folders to scan next time anyway (changing files, unreadable)
        self._taken: set[str] | None = None
        #: folders holding files with more than one name (hard links) → their inodes: an edit
        #: through another name is seen by no watch of the folder, so each watched cycle walks them
        self.linked: dict[str, set[int]] = {}
        self._relinked = False  # a watched walk found a new name of such a file: scan it all next
        #: folders a scan could not read: inotify could not watch them either (it needs read
        #: access), so once one is read the watcher watches the folder anew
        self.blinded: set[str] = set()
        self._rewatch = False
        #: called with (the changes so far, the report) after each folder: the pusher publishes
        #: a large scan's changes as it goes (push.Pusher._stream), taking them out of ``into``
        self.each_folder: Callable[[Changes, CycleReport], None] | None = None

    def _root_dev(self) -> int | None:
        try:
            return os.stat(self.ctx.folder.root).st_dev
        except OSError:
            return None

    def _another_file_system(self, path: str) -> None:
        """A mount point inside the synced folder: inotify does not report what another
        machine or path changes there, so the watcher is not trusted any more (every cycle
        scans the whole folder, as without it)."""
        log.info("%s: %s is on another file system than the synced folder; every cycle scans the whole "
                 "folder", self.ctx.name, path)
        self.watcher.trusted = False

    def _watchable_length(self) -> int | None:
        """How long (bytes) a folder's path relative to the root may be for inotify to watch
        it: watchdog watches each folder by its whole path, and one longer than PATH_MAX is
        skipped without a word (ENAMETOOLONG), while the scan walks it by descriptor."""
        root = os.fsencode(self.ctx.folder.root)
        try:
            return os.pathconf(root, "PC_PATH_MAX") - len(root) - 2  # the "/" between, the NUL
        except (OSError, ValueError):
            return None

    def _too_deep(self, path: str) -> None:
        log.info("%s: %s is too deep for the watcher (a path longer than PATH_MAX); every cycle scans the "
                 "whole folder", self.ctx.name, path[:200] + "…")
        self.watcher.trusted = False

    def done(self, complete: bool) -> None:
        """The changes of the last scan were all published (``complete``), or not: then the
        watcher hands the same folders to the next scan."""
        if self.watcher is not None:
            self.watcher.finished(self._taken, complete, self.again)
            if self._relinked:  # where its other names are, only a full scan finds
                self.watcher.restore(None)
            if self._rewatch:
                self.watcher.rewatch()

    def changes(self, unsettled: set[str], report: CycleReport) -> list[Entry]:
        """What changed since the base, in publishing order; paths found but not settled
        (changing, unreadable) are added to ``unsettled``. Hand the outcome to :meth:`done`.

        Walk the folder one folder at a time and compare each with that folder's base
        and checksum rows (one query each): memory and work per unchanged file stay small,
        and only what changed becomes an Entry (plan.folder_changes). Base rows of folders
        the walk did not reach are deletions — unless the walk could not read them.

        With ``changed`` (a watcher's folders), only those are walked, each with the new
        folders below it; the rows of a changed folder that is gone are deletions."""
        def descend(path: str) -> bool:  # a walk of millions of folders still stops on SIGTERM
            self.ctx.check_stop()
            return self.ctx.filter.may_descend(path)

        changed = self._taken = self.watcher.take() if self.watcher is not None else None
        self._relinked = self._rewatch = False
        if changed is not None:
            changed = changed | self.linked.keys()
        folder, cache, state = self.ctx.folder, self.ctx.cache, self.ctx.state
        self.scanned = {}  # what is sent is opened again as the very file the scan saw
        blind = folder.unreadable = {}  # what the scan could not even list (filled as the walk goes)

        def in_scope(p: str, k: str) -> bool:
            return p not in unsettled and not (blind and _within(p, blind)) and self.ctx.scope_push(p, k)

        into = Changes()
        walked: set[str] = set()
        # a file system mounted inside the folder: its changes may not reach the watcher
        root_dev = self._root_dev() if self.watcher is not None and self.watcher.trusted else None
        deepest = self._watchable_length() if root_dev is not None else None  # beyond: not watched
        tops: list[str] = [""]
        vanished: list[str] = []
        chosen = self._changed_folders(changed) if changed is not None else None
        if chosen is None:
            changed = None
        else:
            tops, vanished = chosen
        enter = descend if changed is None else (  # below a changed folder, only the new folders
            lambda path, walked_anyway=frozenset(tops): (path not in walked_anyway and descend(path)
                                                         and not state.knows_folder(path)))
        with cache.batch():
            flt = self.ctx.filter
            for rel, found in folder.scan_folders(None if flt.accepts_every_file else flt.accepts_file,
                                                  flt.accepts_dir, enter, tops):
                blind = folder.unreadable
                walked.add(db_key(rel))
                known = cache.folder(rel)
                if rel in self.blinded:  # read now, so unwatched until watched anew
                    self.blinded.discard(rel)
                    self._rewatch = self.watcher is not None
                if deepest is not None and len(rel) * 4 > deepest and len(os.fsencode(rel)) > deepest:
                    self._too_deep(rel)
                    deepest = None
                for lf in found.values():
                    if lf.dev != root_dev and root_dev is not None:
                        self._another_file_system(lf.path)
                        root_dev = None
                    if lf.kind != FILE:
                        continue
                    row = known.pop(lf.path, None)
                    if row is not None and row[:3] == (lf.size, lf.mtime_ns, lf.inode):
                        lf.hash = row[3]
                        continue
                    self.ctx.check_stop()
                    try:
                        folder.fill_hash(lf)
                    except (FileChangedError, FileNotFoundError) as exc:
                        log.info("%s: %s is changing; will send it once it settles (%s)", self.ctx.name, lf.path,
                                 exc)
                        unsettled.add(lf.path)
                    except OSError as exc:  # stays an error every cycle until it can be read
                        report.error(f"{lf.path}: cannot read it ({exc.strerror or exc}); not sent until it "
                                     "can be read")
                        unsettled.add(lf.path)
                if known:  # files gone from this folder
                    cache.forget_all(p for p in known if p not in found)
                base = state.base_folder(rel)
                for lf in folder_changes(found, base, into, me=self.ctx.me, in_scope=in_scope):
                    self.scanned[lf.path] = lf
                if changed is not None:  # a known folder gone from this one: its rows are deletions too
                    vanished += _lost_folders(found, base)  # (moved out of the watch: no event below it)
                if changed is not None:  # a new name of a hard-linked file here: its others are unknown
                    had, now = self.linked.pop(rel, set()), folder.linked.get(rel)
                    if now:
                        self.linked[rel] = now
                        self._relinked |= not now <= had
                if self.each_folder is not None:
                    self.each_folder(into, report)
            blind = folder.unreadable
            for rel, why in sorted(blind.items()):
                report.error(f"{rel or 'the synced folder'}: cannot read it ({why}); what it holds is neither "
                             "sent nor deleted until it can be read")
            if changed is None:
                gone = set(state.base_parents()) - walked  # folders gone (or not walked): their rows
                cache.forget_folders(cache.parents() - walked)
                self.linked = folder.linked
            else:
                gone = {key for v in vanished for key in state.base_parents_within(v)} - walked
                cache.forget_folders(gone)
                places = dict.fromkeys(vanished)
                self.linked = {rel: ino for rel, ino in self.linked.items() if not _within(rel, places)}
        self.walked = len(walked)  # folders listed (status and tests: O(changes) with a watcher)
        self.again = {p.rpartition("/")[0] for p in unsettled} | set(blind)
        self.blinded = set(blind) if changed is None else self.blinded | set(blind)
        self.ctx.check_folder()  # unmounted during the scan: what it missed is not deleted
        for key in gone:
            folder_changes({}, state.base_folder_key(key), into, me=self.ctx.me, in_scope=in_scope)
        return into.ordered(keep=lambda e: not (blind and _within(e.path, blind)))

    def _changed_folders(self, changed: set[str]) -> tuple[list[str], list[str]] | None:
        """(folders to walk, folders gone) from a watcher's changed folders: those the scan
        would not enter (filtered, escale's own) are dropped; a folder that is no longer
        one is gone, and its parent is walked instead. None if one cannot be looked at
        (the whole folder is scanned then: its rules for unreadable folders apply)."""
        flt, folder = self.ctx.filter, self.ctx.folder
        is_folder: dict[str, bool] = {"": True}

        def there(rel: str) -> bool:
            if rel not in is_folder:
                try:
                    st = folder.lstat(rel)
                except (LocalChanged, FileNotFoundError, NotADirectoryError):  # a link or a file on the way
                    st = None
                is_folder[rel] = st is not None and stat.S_ISDIR(st.st_mode)
            return is_folder[rel]

        tops: set[str] = set()
        vanished: set[str] = set()
        for rel in changed:
            parts = rel.split("/") if rel else []
            if parts and (is_state_name(parts[0]) or any(TMP_MARK in p for p in parts)
                          or not all(flt.may_descend("/".join(parts[:i + 1])) for i in range(len(parts)))):
                continue
            try:
                while not there(rel):  # gone: the nearest folder still there says what replaced it
                    vanished.add(rel)
                    rel = rel.rpartition("/")[0]
            except (EscaleError, OSError, ValueError) as exc:  # unreadable: the full scan's rules decide
                log.info("%s: %s: %s; scanning the whole folder", self.ctx.name, rel, exc)
                return None
            tops.add(rel)
        gone = dict.fromkeys(vanished)
        outer = [v for v in vanished if not _within(v.rpartition("/")[0], gone)]  # the rest is inside
        return sorted(tops, key=lambda t: (t.count("/") if t else -1, t)), sorted(outer)


def _lost_folders(found: dict[str, LocalFile], base: dict[str, Synced]) -> list[str]:
    """The folders a folder's base holds that its listing no longer shows as folders. A
    folder moved out of the synced folder gives one event, for itself only: when its name
    is reused at once (a new folder made, another tree moved in), only this listing tells
    that the old subfolders and everything in them are gone."""
    return [p for p, b in base.items() if b.kind == DIR and (p not in found or found[p].kind != DIR)]


def _within(path: str, places: dict[str, str]) -> bool:
    """Is ``path`` one of ``places`` or inside one ("" is the whole folder)?"""
    while True:
        if path in places:
            return True
        if not path:
            return False
        path = path.rpartition("/")[0]
