"""Reconcile, without I/O: (incoming entry, remembered base, local state) → steps.

This module decides; :mod:`escale.sync.apply` carries the steps out. Keeping the two
apart (as Unison does) lets every rule be tested without a disk or a relay.

Rules, for an incoming entry E replacing version E.prev, our base B (what we last
synced at that path) and the local file L:

1. L already equals E → remember E, nothing to write.
2. E supersedes our base — E.prev is B, or E's publisher had already seen B when it
   published E (its pull positions cover B's author and seq) — and L is unchanged
   since B → apply E. Pullers apply updates in causal order, so a base E's publisher
   had not seen is truly concurrent with E.
3. Otherwise there is a concurrent change:
   - a deletion never removes a version the deleter did not see (local wins);
   - an edit beats a deletion (a deleted local file comes back);
   - two edits: the version with the larger stamp (mtime, author id, digest) stays
     at the path and the other is kept as ``<stem>.conflict-<client>-<UTC time><ext>``;
     every client computes the same stamps, so every client picks the same winner.
   Modes refine this: ``conservative`` never overwrites a local file changed here
   since the last sync; ``download`` never pushes, so a local edit that meets an
   incoming version goes to the trash and the incoming version wins.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from .conflict import conflict_name, spare_name
from .index import DIR, FILE, GONE, Entry, LocalFile, Synced

SHARED, UPLOAD, DOWNLOAD, CONSERVATIVE = "shared", "upload", "download", "conservative"


# -- steps ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fetch:
    """Write E's content at ``target`` (E.path, or a conflict name).

    A conflict copy never replaces another file: if ``target`` holds one, the copy goes
    to ``spare`` (see :mod:`escale.conflict`)."""

    target: str
    entry: Entry
    spare: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MakeDir:
    path: str
    mode: int


@dataclass(frozen=True)
class SetMode:
    path: str
    mode: int


@dataclass(frozen=True)
class Displace:
    """Move the local file at ``path`` aside: to ``target`` (conflict copy) or the trash."""

    path: str
    target: str | None  # None = trash
    spare: str | None = field(default=None, compare=False)  # if target holds another file


@dataclass(frozen=True)
class RemoveDir:
    path: str


@dataclass(frozen=True)
class Remember:
    """Record ``entry`` as the synced base of its path."""

    entry: Entry


@dataclass
class Plan:
    path: str
    steps: list = field(default_factory=list)
    note: str = ""

    @property
    def needs_content(self) -> bool:
        return any(isinstance(s, Fetch) for s in self.steps)


def saw(publisher: str, deps: dict[str, int], b: Entry,
        unseen: Mapping[str, tuple[str, int]] | None = None) -> bool:
    """Had ``publisher``, whose pull positions were ``deps``, seen version ``b``?

    ``unseen``: the versions the publisher had received but not applied (path →
    (author, seq)); it had not seen those, nor that author's earlier versions of the path."""
    if b.author == publisher:
        return True
    held = unseen.get(b.path) if unseen else None
    if held is not None and held[0] == b.author and b.seq <= held[1]:
        return False
    return b.seq > 0 and deps.get(b.author, 0) >= b.seq


def _copy_of(e: Entry, name_of: Callable[[str], str]) -> Fetch:
    """Write incoming E beside the path, as a conflict copy."""
    client = name_of(e.author)
    return Fetch(conflict_name(e.path, client, e.mtime_ns), e, spare_name(e.path, client, e.mtime_ns, e.hash))


def _aside(local: LocalFile, author: str, mtime_ns: int) -> Displace:
    """Move the local file aside, as a conflict copy."""
    return Displace(local.path, conflict_name(local.path, author, mtime_ns),
                    spare_name(local.path, author, mtime_ns, local.hash))


def stamp(mtime_ns: int, author: str, version: str | None) -> tuple:
    return (mtime_ns, author, version or "")


def reconcile(e: Entry, base: Entry | None, local: LocalFile | None, *, me: str, mode: str = SHARED,
              name_of: Callable[[str], str] = lambda cid: cid,
              seen: Callable[[Entry], bool] = lambda b: False) -> Plan:
    """Decide what an incoming entry does to one path. ``local.hash`` must be filled.

    ``seen(b)`` tells whether E's publisher had seen version ``b`` when it published E.
    """
    plan = Plan(e.path)
    steps = plan.steps
    ev, pv = e.version, e.prev
    lv = local.version if local else None
    bv = base.version if base else None
    if base is None and local is not None and lv == pv:
        bv = lv  # we never synced it, but we hold exactly the version E replaces

    # 1. already there
    if lv == ev:
        if local is not None and e.kind in (FILE, DIR) and local.mode != e.mode:
            steps.append(SetMode(e.path, e.mode))
        steps.append(Remember(e))
        plan.note = "up to date"
        return plan

    modified = lv != bv
    if _replaced_by_base(e, base, pv, bv, seen):
        plan.note = "older than the version here (which replaced it)"
        return plan
    supersedes = pv == bv or (base is not None and seen(base))

    if e.kind == GONE:
        if supersedes and not modified:
            steps.append(RemoveDir(e.path) if local.kind == DIR else Displace(e.path, None))
            steps.append(Remember(e))
            plan.note = "deleted"
        elif supersedes:
            steps.append(Remember(e))  # our unpublished edit re-creates it later
            plan.note = "deletion ignored: changed here"
        else:
            plan.note = "deletion ignored: concurrent version"
        return plan

    # E is a file or a folder
    if local is None:
        _apply(steps, e)
        plan.note = "created" if base is None or base.kind == GONE else "restored (edit beats deletion)"
        return plan
    if supersedes and not modified:
        _apply(steps, e, displace_first=local.kind != e.kind)
        plan.note = "updated"
        return plan

    # a concurrent change meets E
    if modified:
        l_author, l_mtime = me, local.mtime_ns
    else:
        l_author, l_mtime = (base.author, base.mtime_ns) if base else (me, local.mtime_ns)

    if e.kind == DIR or local.kind == DIR:
        if local.kind == DIR:  # keep the folder; an incoming file lands beside it
            steps.append(_copy_of(e, name_of))
        else:
            steps.append(_aside(local, name_of(l_author), l_mtime))
            _apply(steps, e)
        plan.note = "file/folder conflict"
        return plan

    if mode == DOWNLOAD and modified:
        steps.append(Displace(e.path, None))
        _apply(steps, e)
        plan.note = "local edit moved to trash (download mode)"
        return plan

    e_wins = stamp(e.mtime_ns, e.author, ev) > stamp(l_mtime, l_author, lv)
    if mode == CONSERVATIVE and modified:
        e_wins = False
    if e_wins:
        steps.append(_aside(local, name_of(l_author), l_mtime))
        _apply(steps, e)
        plan.note = "conflict: incoming version wins"
    else:
        steps.append(_copy_of(e, name_of))
        if modified:
            steps.append(Remember(e))  # our edit is published next as E's successor
        plan.note = "conflict: local version wins"
    return plan


def _replaced_by_base(e: Entry, base: Entry | None, pv: str | None, bv: str | None,
                      seen: Callable[[Entry], bool]) -> bool:
    """Is E the very version our base replaced, arriving late?

    Updates of different pushers may be applied out of their causal order (a snapshot
    merge, a backlog drained while a dependency's content is awaited): Bob deletes the
    file Alice created, and we apply Bob's deletion before Alice's creation. Alice's
    entry then looks like a creation over a tombstone (``prev`` absent, as the
    tombstone's version), and applying it would bring back a file every other client
    deleted. The base replaced E's version, and E's publisher had not seen the base:
    E is history. A re-creation after the deletion is told apart because its publisher
    had seen the tombstone (``seen``), or wrote it (a re-creation always follows the
    re-creator's own deletion, which becomes our base first).
    """
    if base is None or e.version is None or base.prev != e.version or base.author == e.author:
        return False
    if pv == bv and base.kind != GONE:
        return False  # E continues our base (a revert to the content it replaced)
    return not seen(base)


def _apply(steps: list, e: Entry, displace_first: bool = False) -> None:
    if displace_first:
        steps.append(Displace(e.path, None))
    if e.kind == DIR:
        steps.append(MakeDir(e.path, e.mode))
    else:
        steps.append(Fetch(e.path, e))
    steps.append(Remember(e))


# -- the pusher's side ------------------------------------------------------------------------
class Changes:
    """Local changes gathered folder by folder (:func:`folder_changes`), put in publishing
    order by :meth:`ordered`. Only what differs from the base is ever held."""

    __slots__ = ("dirs", "files", "gone_files", "gone_dirs")

    def __init__(self) -> None:
        self.dirs: list[Entry] = []
        self.files: list[Entry] = []
        self.gone_files: list[Entry] = []
        self.gone_dirs: list[Entry] = []

    def ordered(self, keep: Callable[[Entry], bool] = lambda e: True) -> list[Entry]:
        """Folders (shallow first), files, file deletions, folder deletions (deep first), so a
        receiver can apply an update front to back; a new file whose content a deleted path
        held becomes a rename (it travels without content). ``keep`` drops entries last."""
        dirs = [e for e in self.dirs if keep(e)]
        files = [e for e in self.files if keep(e)]
        gone_files = [e for e in self.gone_files if keep(e)]
        gone_dirs = [e for e in self.gone_dirs if keep(e)]
        dirs.sort(key=lambda e: (e.path.count("/"), e.path))
        files.sort(key=lambda e: (-e.mtime_ns, e.path))  # fresh changes before backlog
        gone_files.sort(key=lambda e: e.path)
        gone_dirs.sort(key=lambda e: (-e.path.count("/"), e.path))
        by_hash: dict[str, list[Entry]] = {}
        for g in reversed(gone_files):  # each new file takes the first deleted path (in path order)
            by_hash.setdefault(g.prev, []).append(g)
        for i, f in enumerate(files):
            if f.prev is None and by_hash.get(f.hash):
                src = by_hash[f.hash].pop()
                files[i] = Entry(f.path, f.kind, f.hash, f.size, f.mtime_ns, f.mode, f.prev, f.author, src.path)
        return dirs + files + gone_files + gone_dirs


def folder_changes(found: Mapping[str, LocalFile], base: Mapping[str, Synced | Entry], into: Changes, *,
                   me: str, in_scope: Callable[[str, str], bool] = lambda p, k: True) -> list[LocalFile]:
    """Compare one folder's listing (``found``: path → what the scan saw, digests filled)
    with that folder's base rows (path → what was synced; ``Synced`` or ``Entry``) and add
    the differences to ``into``. A base path not found is a deletion. Returns the local
    files that changed (the pusher opens exactly those again to send them).

    ``in_scope(path, kind)`` says whether a path is ours to publish (filters, access
    rules); a base path out of scope is never reported deleted."""
    changed: list[LocalFile] = []
    for path, lf in found.items():
        b = base.get(path)
        if b is not None and b.hash == lf.hash and b.kind == lf.kind and b.mode == lf.mode:
            continue  # the common case, decided without building versions
        bv = b.version if b is not None else None
        if lf.version == bv and (b is None or b.mode == lf.mode):
            continue
        if not in_scope(path, lf.kind):
            continue
        e = Entry(path, lf.kind, lf.hash if lf.kind == FILE else None, lf.size if lf.kind == FILE else 0,
                  lf.mtime_ns, lf.mode, bv, me)
        (into.dirs if lf.kind == DIR else into.files).append(e)
        changed.append(lf)
    for path, b in base.items():
        if b.kind == GONE or path in found or not in_scope(path, b.kind):
            continue
        e = Entry(path, GONE, None, 0, time.time_ns(), 0, b.version, me)
        (into.gone_dirs if b.kind == DIR else into.gone_files).append(e)
    return changed


def local_changes(scan: Mapping[str, LocalFile], base: Mapping[str, Synced | Entry], *, me: str,
                  in_scope: Callable[[str, str], bool] = lambda p, k: True) -> list[Entry]:
    """Entries that publish what changed here since the base (the whole folder at once:
    :func:`folder_changes` for each folder, then :meth:`Changes.ordered`).

    ``in_scope(path, kind)`` says whether a path is ours to publish (filters, access
    rules); a base path out of scope is never reported deleted.
    Order: folders (shallow first), files, file deletions, folder deletions (deep first),
    so a receiver can apply an update front to back.
    """
    found: dict[str, dict[str, LocalFile]] = {}
    synced: dict[str, dict[str, Synced | Entry]] = {}
    for path, lf in scan.items():
        found.setdefault(path.rpartition("/")[0], {})[path] = lf
    for path, b in base.items():
        synced.setdefault(path.rpartition("/")[0], {})[path] = b
    into = Changes()
    for folder in found.keys() | synced.keys():
        folder_changes(found.get(folder, {}), synced.get(folder, {}), into, me=me, in_scope=in_scope)
    return into.ordered()
