"""Collect: delete our updates once every required puller acknowledged them.

Before an update goes, our snapshot (the whole base, signed) is rewritten to cover
it, so a late or new puller catches up from the snapshot. The acknowledgements are
checked on the way: one that goes back (replayed) or names another content under our
seq (a forked history) is reported, and a fork is not collected. A snapshot or an
update removed by someone else is noticed and a fresh snapshot written.
"""
from __future__ import annotations

import logging
import tempfile

from ..errors import IntegrityError
from ..protocol import SNAPSHOT_MAGIC, ObjectStore, RelayView, Snapshot, ack_name, snapshot_name, update_name
from .acks import Acks
from .context import Repo
from .pull import Puller

log = logging.getLogger(__name__)


class Collector:
    """Acknowledged updates out, snapshots in."""

    def __init__(self, ctx: Repo, acks: Acks, pull: Puller):
        self.ctx, self.acks, self.pull = ctx, acks, pull

    def collect(self, view: RelayView) -> int:
        """Delete our updates every required puller acknowledged (snapshot first)."""
        written = int(self.ctx.state.get("snapshot_seq", "0"))
        if written:
            info = view.snapshots.get(self.ctx.me)
            if info is None or self.pull.snapshot_seq(info) < written:
                self.ctx.problem(IntegrityError(snapshot_name(self.ctx.me), "missing or older than the one written "
                                             "(removed or rolled back by the relay); writing it again"))
                self.write_snapshot()
        self._remove_returned(view)
        published = self.ctx.state.published()
        if not published:
            return 0
        acks: dict[str, int] = {}
        ours = {p.seq: p.digest for p in published}
        for cid in view.acks:
            if cid != self.ctx.me:
                acked, mark = self.acks.acked_seq(view, cid), self.ctx.state.mark(f"ack:{cid}")
                theirs = self.acks.ack_entry(view, cid, self.ctx.me)
                if theirs is not None and theirs[0] in ours and theirs[1] != ours[theirs[0]]:
                    self.ctx.problem(IntegrityError(ack_name(cid), f"{self.ctx.name_of(cid)} applied our update "
                                                 f"{theirs[0]} with another content (digest {theirs[1][:12]}…, "
                                                 f"ours {ours[theirs[0]][:12]}…): a fork of this client's history "
                                                 "(a relay serving a version we never finished, or our state "
                                                 "restored from a backup); not collected"))
                    acks[cid] = theirs[0] - 1
                    continue
                if acked < mark:
                    self.ctx.problem(IntegrityError(ack_name(cid), f"went back from seq {mark} to {acked}: an old "
                                                                "acknowledgement replayed by the relay"))
                acks[cid] = max(acked, mark)
                self.ctx.state.raise_mark(f"ack:{cid}", acked)
        mine = view.updates.get(self.ctx.me, {})
        vanished = [p for p in published if p.seq not in mine]
        if vanished:
            self.ctx.problem(IntegrityError(update_name(self.ctx.me, vanished[0].seq), "removed from the relay by "
                                         "someone else before every puller had it; writing a fresh snapshot"))
            self.write_snapshot()
            with self.ctx.state.transaction():
                for p in vanished:
                    self.ctx.state.drop_published(p.seq)
            published = [p for p in published if p.seq in mine]
        members = set(view.members)
        done = []
        for p in published:
            acked_by = {c for c, s in acks.items() if s >= p.seq}
            if p.count:
                ok = len(acked_by) >= p.count
            else:
                required = {c for c in p.pullers if c in members}
                ok = required <= acked_by and len(acked_by) >= 1
            if ok:
                done.append(p)
        if not done:
            return 0
        if max(p.seq for p in done) > int(self.ctx.state.get("snapshot_seq", "0")):
            self.write_snapshot()
        for p in done:  # the update first: a reader never finds an update without its blobs
            self.ctx.relay.delete(update_name(self.ctx.me, p.seq))
            for info in view.blobs.get((self.ctx.me, p.seq), []):
                self.ctx.relay.delete(info.name)
            with self.ctx.state.transaction():
                self.ctx.state.drop_published(p.seq)
        log.info("%s: collected %d acknowledged update(s)", self.ctx.name, len(done))
        return len(done)

    def _remove_returned(self, view: RelayView) -> None:
        """Our updates that came back after we collected them (a relay restored from an
        older backup, or replayed by it) are deleted again: their pullers have them (our
        snapshot covers them) and they would be reported as replayed on every cycle."""
        snapshot_seq = int(self.ctx.state.get("snapshot_seq", "0"))
        ours = {p.seq for p in self.ctx.state.published()}
        returned = sorted(s for s in view.updates.get(self.ctx.me, {}) if s <= snapshot_seq and s not in ours)
        for seq in returned:
            self.ctx.relay.delete(update_name(self.ctx.me, seq))
            for info in view.blobs.get((self.ctx.me, seq), []):
                self.ctx.relay.delete(info.name)
            view.updates[self.ctx.me].pop(seq, None)
        if returned:
            log.warning("%s: removed %d update(s) of ours collected earlier that were back on the relay "
                        "(an older relay backup restored?)", self.ctx.name, len(returned))

    def write_snapshot(self) -> None:
        seq = self.ctx.state.own_seq
        deps, unseen = self.ctx.horizon()
        with tempfile.TemporaryFile(dir=self.ctx.state_dir, prefix="snapshot-") as body:
            # streamed in path order: a base of a million entries is never held whole
            count, size, sha256 = Snapshot.encode_lines(self.ctx.state.base_snapshot_lines(), body)
            snap = Snapshot(self.ctx.me, seq, self.ctx.state.own_digest, deps, count, size, sha256, unseen)
            head = ObjectStore.encode_header(SNAPSHOT_MAGIC, snap.to_dict())
            body.seek(0)
            self.ctx.store.put_framed(snapshot_name(self.ctx.me), head, [body], size)
        info = self.ctx.relay.stat(snapshot_name(self.ctx.me))
        with self.ctx.state.transaction():
            self.ctx.state.set("snapshot_seq", str(seq))
            if info is not None:  # so we never download our own snapshot to learn its seq
                self.ctx.state.set_seen(info.name, info.size, info.mtime, {"seq": seq})
