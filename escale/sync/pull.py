"""Pull: apply every pusher's new updates in causal order, then acknowledge them.

An update waits until the updates its publisher had applied (its ``deps``) are
applied here too. The relay is checked on the way: a replayed or rolled-back
history is refused, naming the object. A pusher whose needed updates were collected
is caught up from its snapshot (several such snapshots are merged). Each entry goes
to :mod:`escale.sync.apply`; contents this client could not get are asked for in a
request object.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import time
from typing import BinaryIO

from ..stream import copy_exactly
from ..errors import IntegrityError, RelayObjectMissing
from ..index import FILE, GONE
from ..plan import saw, stamp
from ..protocol import (BLOB, FORMAT_VERSION, INLINE, RelayView, Snapshot,
                        UpdateHeader, blob_name, request_name, snapshot_name, update_name)
from .acks import Acks
from .apply import Applier, LazyBlob
from .context import Repo
from .report import CycleReport

log = logging.getLogger(__name__)

#: a request names at most this many wanted files (the rest in later requests): it
#: stays a small object however many entries a snapshot brought
MAX_WANTS_PUBLISHED = 5000
#: entries of a pusher's pending updates read ahead (their headers held) to skip versions a
#: later one replaces: bounds a first sync's memory (pull._superseded)
LOOKAHEAD_ITEMS = 50_000


class Puller:
    """Brings other members' updates and snapshots into the folder."""

    def __init__(self, ctx: Repo, acks: Acks, apply: Applier):
        self.ctx, self.acks, self.apply = ctx, acks, apply
        self._spools: dict[tuple[str, int], tuple[UpdateHeader, bytes, BinaryIO]] = {}
        self._snapshots: list[Snapshot] = []
        #: whether the last pull wrote to the relay (its acknowledgement, its request): the
        #: push then lists the relay again, else it uses the pull's listing (one per cycle)
        self.wrote = False

    def pull(self, view: RelayView, report: CycleReport) -> CycleReport:
        """Apply every pusher's new updates in causal order, then acknowledge them.

        An update waits until the updates its publisher had applied (its ``deps``) are
        applied here too, so an entry never meets a base its publisher had not seen
        unless the two are truly concurrent. A pusher whose needed updates were
        collected is caught up from its snapshot; several such snapshots are merged.
        """
        self.apply.begin()
        self.wrote = False
        self._spools = {}
        self._snapshots = []
        try:
            return self._pull(view, report)
        finally:
            for _h, _d, spool in self._spools.values():
                spool.close()
            for snap in self._snapshots:
                snap.close()
            self._spools, self._snapshots = {}, []

    def _pull(self, view: RelayView, report: CycleReport) -> CycleReport:
        applied_before = self.ctx.state.applied()
        self.ctx.pos = {p: s for p, (s, _d) in applied_before.items()}
        queues: dict[str, list[int]] = {}
        resync: dict[str, object] = {}  # pusher -> snapshot info, or its loaded Snapshot
        for pusher in sorted(view.pushers() - {self.ctx.me}):
            have = self.ctx.pos.get(pusher, 0)
            try:
                seqs = self._check_history(pusher, view, have)
            except IntegrityError as exc:
                report.error(str(exc))
                continue
            queues[pusher] = [s for s in seqs if s > have]
            snap = view.snapshots.get(pusher)
            behind = bool(queues[pusher]) and queues[pusher][0] != have + 1
            if behind or (not queues[pusher] and snap is not None and self._snapshot_newer(snap, have)):
                if snap is None:
                    report.error(f"relay object {update_name(pusher, have + 1)}: missing, and its client has "
                                 "no snapshot to catch up from")
                    queues[pusher] = []
                else:
                    resync[pusher] = snap
        progress = True
        while progress:
            progress = False
            for pusher in sorted(queues):
                self.ctx.check_stop()
                try:
                    if pusher in resync:
                        snap = self._load_snapshot(pusher, resync)
                        if snap is None or not self._ready(snap.deps):
                            continue
                        self._apply_snapshots([snap], report)
                        del resync[pusher]
                        progress = True
                    progress |= self._drain(pusher, queues, report, causal=True)
                except IntegrityError as exc:
                    self._fail(pusher, queues, resync, exc, report)
        # what is left waits on itself (snapshots taken at nearly the same time) or on a
        # pusher we cannot follow: merge the snapshots, then apply in sequence order
        snaps = []
        for pusher in sorted(resync):
            try:
                snap = self._load_snapshot(pusher, resync)
            except IntegrityError as exc:
                self._fail(pusher, queues, resync, exc, report)
                continue
            if snap is not None:
                snaps.append(snap)
        if snaps:
            self._apply_snapshots(snaps, report)
        for pusher in sorted(queues):
            try:
                self._drain(pusher, queues, report, causal=False)
            except IntegrityError as exc:
                self._fail(pusher, queues, {}, exc, report)
        replaced = self.acks.ours_replaced(view)
        self.wrote |= self.acks.write_ack(force=replaced or self.ctx.state.applied() != applied_before,
                                          present=self.ctx.me in view.acks)
        self.acks.compare_acks(view)
        self.wrote |= self._publish_wants(view)
        self._report_failures(report)
        return report

    def _report_failures(self, report: CycleReport) -> None:
        """A file we could not write stays an error, every cycle, until it is written (or
        no longer wanted): a cycle that received nothing must not look like success."""
        for path, why in sorted(self.apply.failures.items()):
            if self.ctx.state.wanted(path) is None:
                self.ctx.state.resolve(path)
            elif path not in self.apply.failed_now:
                report.error(f"{path}: still not written here ({why}); will retry")

    def _check_history(self, pusher: str, view: RelayView, have: int) -> list[int]:
        """The pusher's update seqs on the relay, after checking the relay did not replay a
        collected update or roll back to an earlier state (both raise, naming the object).

        Two marks only ever go up: the *floor* (below it, every update of the pusher was
        seen collected) and what we applied. Everything applied must stay covered by an
        update or the snapshot, which a pusher writes before collecting."""
        seqs = sorted(view.updates.get(pusher, {}))
        if have and (not seqs or seqs[-1] < have):
            # the pusher may be between writing its snapshot and collecting: look again
            seqs = sorted(int(i.name.rsplit("/", 1)[1]) for i in self.ctx.relay.list(f"u/{pusher}/"))
            view.snapshots[pusher] = self.ctx.relay.stat(snapshot_name(pusher)) or view.snapshots.get(pusher)
        if have and (not seqs or seqs[-1] < have):
            info = view.snapshots.get(pusher)
            covered = self.snapshot_seq(info) if info is not None else 0
            if covered < have:
                latest = max(seqs[-1] if seqs else 0, covered)
                raise IntegrityError(snapshot_name(pusher) if info else update_name(pusher, have),
                                     f"the relay holds nothing of client {self.ctx.name_of(pusher)} as recent as "
                                     f"update {have}, already applied here (latest: {latest}): rolled back "
                                     "to an earlier state")
        floor = self.ctx.state.mark(f"floor:{pusher}")
        replayed = [s for s in seqs if s < floor]
        if replayed:  # named every cycle until its writer removes it; never a reason to stop following
            self.ctx.problem(IntegrityError(update_name(pusher, replayed[0]), "reappeared after it was collected: "
                                            "an old update replayed by the relay (or an older relay backup "
                                            "restored); ignored"))
            seqs = [s for s in seqs if s >= floor]
        # below the floor every update was seen collected; a listing that misses an update
        # in flight must not push the floor past what we have not applied yet
        self.ctx.state.raise_mark(f"floor:{pusher}", min(seqs[0], have + 1) if seqs else have + 1)
        return seqs

    def snapshot_seq(self, info) -> int:
        known = self.ctx.state.seen(info.name, info.size, info.mtime)
        if isinstance(known, dict):
            return known.get("seq", 0)
        cid = info.name.split("/")[1]
        snap = self._load_snapshot(cid, {cid: info}, keep_old=True)
        return snap.seq if snap else 0

    def _fail(self, pusher: str, queues: dict, resync: dict, exc: IntegrityError, report: CycleReport) -> None:
        """Stop following one pusher this cycle; everything else goes on."""
        report.error(str(exc))
        queues[pusher] = []
        resync.pop(pusher, None)

    def _ready(self, deps: dict[str, int]) -> bool:
        return all(q == self.ctx.me or self.ctx.pos.get(q, 0) >= s for q, s in deps.items())

    def _drain(self, pusher: str, queues: dict[str, list[int]], report: CycleReport, causal: bool) -> bool:
        """Apply the pusher's queued updates in order while their dependencies are met."""
        progress = False
        queue = queues[pusher]
        while queue and queue[0] <= self.ctx.pos.get(pusher, 0):
            queue.pop(0)  # covered by a snapshot
        later: dict[str, int] = {}
        horizon = 0  # the last update the look-ahead read
        while queue:
            self.ctx.check_stop()
            seq = queue[0]
            if seq >= horizon and len(queue) > 1:
                later, horizon = self._superseded(pusher, queue)
            if seq != self.ctx.pos.get(pusher, 0) + 1:
                raise IntegrityError(update_name(pusher, self.ctx.pos.get(pusher, 0) + 1),
                                     "missing: the sequence of its client has a gap")
            if not self._apply_update(pusher, seq, report, causal, later):
                break
            queue.pop(0)
            progress = True
        return progress

    def _snapshot_newer(self, info, have: int) -> bool:
        known = self.ctx.state.seen(info.name, info.size, info.mtime)
        return not isinstance(known, dict) or known.get("seq", 0) > have

    def _load_snapshot(self, pusher: str, resync: dict, keep_old: bool = False) -> Snapshot | None:
        """Read (once per cycle) a pusher's snapshot; None if it holds nothing new."""
        value = resync[pusher]
        if isinstance(value, Snapshot) or value is None:
            return value
        info = value
        try:  # the readers every client and escalectl check share (escale.protocol)
            if keep_old:  # only its seq is wanted: the signed header says it
                snap, _size = self.ctx.store.snapshot_header(info.name, pusher)
            else:  # the whole body, verified and spooled, then checked entry by entry
                snap = self.ctx.store.read_snapshot(info.name, pusher, self.ctx.state_dir, self.ctx.check_stop)
                self._snapshots.append(snap)
                for _ in snap.entries(info.name, self.ctx.check_stop):
                    pass
        except RelayObjectMissing:
            raise IntegrityError(info.name, "disappeared while being read") from None
        self.ctx.state.set_seen(info.name, info.size, info.mtime, {"seq": snap.seq})
        if snap.seq <= self.ctx.pos.get(pusher, 0) and not keep_old:
            snap = None
        resync[pusher] = snap
        return snap

    def _apply_snapshots(self, snaps: list[Snapshot], report: CycleReport) -> None:
        """Take snapshots as entries without content (wanted from their writers).

        Where several snapshots hold a path, an entry whose writer had seen another's
        version supersedes it; among the rest the sync rules' stamp picks one.
        """
        for snap in snaps:
            log.info("%s: catching up from %s's snapshot (%d entries)", self.ctx.name, self.ctx.name_of(snap.client),
                     snap.count)
        # the snapshots' entries are sorted by path: merge them as streams, one path at a time
        def stream(i: int, snap: Snapshot):
            for e in snap.entries(snapshot_name(snap.client), self.ctx.check_stop):
                yield e.path, i, e

        streams = [stream(i, snap) for i, snap in enumerate(snaps)]
        self.apply.moves = {}
        with self.ctx.state.transaction():
            for n, (path, group) in enumerate(itertools.groupby(heapq.merge(*streams), key=lambda t: t[0])):
                if n % 1024 == 0:
                    self.ctx.check_stop()
                cands = [(snaps[i], e) for _p, i, e in group]
                # a version whose author's update we applied (or a later one) is no news
                cands = [(s, e) for s, e in cands
                         if not (e.author == self.ctx.me or (e.seq and self.ctx.pos.get(e.author, 0) >= e.seq))]
                if not cands:
                    continue
                live = [(s, e) for s, e in cands if not any(
                    e2.version != e.version and saw(s2.client, s2.deps, e, s2.unseen) for s2, e2 in cands)] or cands
                snap, e = max(live, key=lambda c: stamp(c[1].mtime_ns, c[1].author, c[1].version))
                self.apply.apply_entry(snapshot_name(snap.client), e, snap.client, None, report,
                                  seen=lambda b, s=snap: saw(s.client, s.deps, b, s.unseen))
            for snap in snaps:
                self.ctx.state.set_applied(snap.client, snap.seq, snap.digest)
                self.ctx.pos[snap.client] = snap.seq
        self.ctx.folder.end_batch()

    def _spooled(self, pusher: str, seq: int) -> None:
        """Fetch, verify and spool update ``seq`` of ``pusher`` (once)."""
        name = update_name(pusher, seq)
        if (pusher, seq) in self._spools:
            return
        try:  # the reader every client and escalectl check share (escale.protocol)
            header, digest, spool = self.ctx.store.read_update(name, pusher, seq, self.ctx.state_dir,
                                                               self.ctx.check_stop)
        except RelayObjectMissing:
            raise IntegrityError(name, "disappeared while being read (collected meanwhile, or deleted "
                                       "by the relay)") from None
        self._spools[(pusher, seq)] = (header, digest, spool)

    def _superseded(self, pusher: str, queue: list[int]) -> tuple[dict[str, int], int]:
        """(path -> the last queued update of ``pusher`` that writes it, the last update
        looked at). A returning machine: a file's content that a later pending update of
        the same pusher replaces or deletes is history, never downloaded. Paths a later
        update renames from are left out: their content may be reused by the rename; so
        are supplies (a later update answering another client's request carries the same
        version, which this client applies only if it asked). An update that cannot be read
        ends the look-ahead (its error comes when its turn comes).

        The look-ahead reads at most LOOKAHEAD_ITEMS entries (at least two updates): their
        headers are held until applied, and a first sync of a million files must not hold
        them all. A version written again past that window is applied, then replaced when
        its successor comes: more work, the same result (the last write of a path within a
        window is never skipped, so a rename past it still finds its source)."""
        last: dict[str, int] = {}
        origins: dict[str, int] = {}
        held, upto = 0, 0
        for seq in queue:
            if upto and held >= LOOKAHEAD_ITEMS and upto > queue[0]:
                break
            try:
                self._spooled(pusher, seq)
            except IntegrityError:
                break
            upto = seq
            held += len(self._spools[(pusher, seq)][0].items)
            for item in self._spools[(pusher, seq)][0].items:
                if item.supply:  # content sent to those who asked for it: it replaces nothing
                    continue
                last[item.entry.path] = seq
                if item.entry.origin is not None:
                    origins[item.entry.origin] = seq
        for path in origins:
            last.pop(path, None)
        return last, upto

    def _apply_update(self, pusher: str, seq: int, report: CycleReport, causal: bool = True,
                      later: dict[str, int] | None = None) -> bool:
        """Apply one update; False (nothing done) if ``causal`` and its dependencies are not met."""
        name = update_name(pusher, seq)
        self._spooled(pusher, seq)
        h, digest, spool = self._spools[(pusher, seq)]
        spool.seek(0)
        if not self._ready(h.deps):
            if causal:
                return False  # kept spooled for when its dependencies are in
            log.warning("%s: applying %s before updates it depends on (they are not available)",
                        self.ctx.name, name)
        pos = self.ctx.state.applied().get(pusher)
        expected_prev = pos[1] if pos else ""
        if h.prev != expected_prev:
            raise IntegrityError(name, "does not follow the update applied before it (fork or replay)")
        body = _Body(spool)
        # rename sources this update deletes: their file can be moved, not copied
        self.apply.moves = {i.entry.path: i.entry.prev for i in h.items if i.entry.kind == GONE}
        seen = lambda b: saw(pusher, h.deps, b, h.unseen)  # noqa: E731
        with self.ctx.state.transaction(), self.ctx.folder.keeping():
            try:
                for item in h.items:
                    self.ctx.check_stop()
                    start = body.pos
                    inline = item.entry.size if item.data == INLINE else 0
                    if later and later.get(item.entry.path, 0) > seq and item.entry.kind == FILE:
                        # a later update of this pusher writes the path again: this version is
                        # history (the pusher saw it, so the later one applies as its successor)
                        if not body.skip_to(start + inline):
                            raise IntegrityError(name, "truncated: content shorter than announced")
                        continue
                    source = None
                    if item.data == INLINE:
                        source = body
                    elif item.data == BLOB:
                        source = LazyBlob(self.ctx, blob_name(pusher, seq, item.blob))
                    try:
                        self.apply.apply_entry(name, item.entry, pusher, source, report, supply=item.supply,
                                               seen=seen)
                    finally:
                        if isinstance(source, LazyBlob):
                            source.close()
                    if not body.skip_to(start + inline):
                        raise IntegrityError(name, "truncated: content shorter than announced")
                # small files are made durable in groups: all of them before the base that records them
                self.apply.flush()
            finally:
                self.apply.abandon()  # stopped or failed before the flush: their temporaries go
            self.ctx.state.set_applied(pusher, seq, digest.hex())
            self.ctx.pos[pusher] = seq
        self._spools.pop((pusher, seq))[2].close()
        self.ctx.folder.end_batch()
        return True

    def _publish_wants(self, view: RelayView) -> bool:
        """Write (or delete) our request for contents we lack; returns whether it did."""
        wants = self.ctx.state.wants_page(MAX_WANTS_PUBLISHED)  # the rest once these arrive
        key = repr(wants)
        if key == self.ctx.state.get("wants_published", "[]") and (bool(wants) == (self.ctx.me in view.requests)) \
                and not (wants and self.apply.reask):
            return False
        if wants:
            # the counter lets suppliers tell a replayed old request from a new one; it
            # follows the clock too, so a client whose state was reset does not go back
            n = max(self.ctx.state.mark("request_counter") + 1, int(time.time() * 1000))
            self.ctx.state.raise_mark("request_counter", n)
            self.ctx.store.put_json(request_name(self.ctx.me), {"v": FORMAT_VERSION, "n": n, "wants": [
                {"path": p, "hash": h, "supplier": s} for p, h, s in wants]})
        else:
            self.ctx.relay.delete(request_name(self.ctx.me))
        self.ctx.state.set("wants_published", key)
        return True


class _Body:
    """The update body after the header, read front to back, tracking the offset."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.pos += len(data)
        return data

    def skip_to(self, offset: int) -> bool:
        if offset > self.pos:
            self.pos += copy_exactly(self.stream, None, offset - self.pos)
        return self.pos >= offset
