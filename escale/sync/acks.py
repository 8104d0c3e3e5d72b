"""Acknowledgements: each puller's signed record of the last update it applied from
each pusher (with its digest), rewritten when it changes and at least every
ACTIVITY_INTERVAL as a heartbeat. Pullers write them; pushers read them to collect,
and to answer requests; everyone compares them to detect a forked history.
"""
from __future__ import annotations

import time

from ..errors import IntegrityError
from ..protocol import FORMAT_VERSION, RelayView, ack_name, parse_acks, update_name
from .context import Repo
from .membership import ACTIVITY_INTERVAL


class Acks:
    """Write ours, read theirs."""

    def __init__(self, ctx: Repo):
        self.ctx = ctx

    def write_ack(self, force: bool = False, present: bool | None = None) -> bool:
        """Our acknowledgements, with a signed time: rewritten when they change, and at
        least every ACTIVITY_INTERVAL as a heartbeat others see in ``escalectl status``.
        Returns whether they were written."""
        last = float(self.ctx.state.get("ack_time", "0"))
        if not force and time.time() - last < ACTIVITY_INTERVAL and (
                present if present is not None else self.ctx.relay.stat(ack_name(self.ctx.me)) is not None):
            return False
        now = time.time()
        acks = {p: [s, d] for p, (s, d) in self.ctx.state.applied().items()}
        self.ctx.store.put_json(ack_name(self.ctx.me), {"v": FORMAT_VERSION, "acks": acks, "time": now})
        self.ctx.state.set("ack_time", str(now))
        self.ctx.state.set("ack_written", "1")
        return True

    def ours_replaced(self, view: RelayView) -> bool:
        """Our acknowledgements changed on the relay though we did not write them (a relay
        restored from an older backup): pushers would read old positions until the next
        heartbeat. Compares listings only (a stat may spell a version differently)."""
        info = view.acks.get(self.ctx.me)
        listed = info.version if info is not None else ""
        before, wrote = self.ctx.state.get("ack_listed"), self.ctx.state.get("ack_written") == "1"
        if before != listed or wrote:
            self.ctx.state.set("ack_listed", listed)
            self.ctx.state.set("ack_written", "0")
        return bool(before) and bool(listed) and listed != before and not wrote

    def positions(self, view: RelayView, cid: str) -> dict[str, tuple[int, str]]:
        """What ``cid``'s acknowledgements say it applied last of each pusher (nothing if
        they are missing or malformed: the parser escalectl check uses reports why)."""
        info = view.acks.get(cid)
        ack = self.ctx.read_small(info.name, info) if info else None
        if ack is None:
            return {}
        try:
            return parse_acks(info.name, ack)
        except IntegrityError:
            return {}

    def ack_entry(self, view: RelayView, cid: str, pusher: str) -> tuple[int, str] | None:
        """(seq, digest) of ``pusher``'s update that ``cid`` says it applied last."""
        return self.positions(view, cid).get(pusher)

    def to_take(self, view: RelayView, cid: str) -> int:
        """Updates of the other members on the relay that ``cid`` has not acknowledged
        (what it still has to pull; escalectl status)."""
        waiting = 0
        for pusher, seqs in view.updates.items():
            if pusher == cid:
                continue
            have = self.ack_entry(view, cid, pusher)
            waiting += sum(1 for s in seqs if s > (have[0] if have else 0))
        return waiting

    def acked_seq(self, view: RelayView, cid: str) -> int:
        return self.positions(view, cid).get(self.ctx.me, (0, ""))[0]

    def compare_acks(self, view: RelayView) -> None:
        """Report every member that applied another content than we did under one
        (pusher, seq): the relay forked that pusher's history between us."""
        mine = self.ctx.state.applied()
        for cid in sorted(view.acks):
            if cid == self.ctx.me:
                continue
            for pusher, (seq, digest) in mine.items():
                theirs = self.ack_entry(view, cid, pusher)
                if pusher != cid and theirs is not None and theirs[0] == seq and theirs[1] != digest:
                    self.ctx.problem(IntegrityError(update_name(pusher, seq), f"{self.ctx.name_of(cid)} applied another "
                                                 f"content under this name than this client did (digest "
                                                 f"{theirs[1][:12]}…, ours {digest[:12]}…): a fork of "
                                                 f"{self.ctx.name_of(pusher)}'s history"))
