"""Quota: keep the relay under its size limit at every instant, without a lock.

A pusher claims room by writing a reservation, then listing: whoever lists after
both reservations exist sees both, so two pushers never both take the last room.
Room is what the quota leaves after what the relay holds, the others' live
reservations, and the *headroom* — the snapshot rewritten before collection and
every member's small objects.
"""
from __future__ import annotations

import time

from ..protocol import RelayView, list_relay, reservation_name
from .context import Repo

#: a reservation older than this is a crashed writer's leftover
RESERVATION_TTL = 6 * 3600
#: room kept under the quota for each member's small objects (card, acks, requests)
SMALL_OBJECTS_ROOM = 16 << 10
#: relay bytes one base entry takes in a snapshot (an upper estimate)
SNAPSHOT_BYTES_PER_ENTRY = 320


class Quota:
    """Reservations, room and headroom under ``quota`` (no-ops without one)."""

    def __init__(self, ctx: Repo):
        self.ctx = ctx

    def headroom(self, new_entries: int) -> int:
        """Room the quota must keep beyond an update: the snapshot we will rewrite before
        collecting it (old and new copies coexist for a moment) and every member's small
        objects, so the relay stays under the quota at every instant."""
        if self.ctx.tq.quota is None:
            return 0
        entries = self.ctx.state.base_count() + new_entries
        snapshot = self.ctx.cipher.size_on_relay(1024 + SNAPSHOT_BYTES_PER_ENTRY * entries)
        return snapshot + SMALL_OBJECTS_ROOM * max(1, len(self.ctx.cards))

    def reserve(self, size: int) -> bool:
        """Claim room under the quota without a lock.

        Write our reservation, then list: whoever lists after both reservations exist
        sees both, so two pushers can never both take the last room.
        """
        quota = self.ctx.tq.quota
        if quota is None:
            return True
        for attempt in (0, 1):
            view = list_relay(self.ctx.relay)
            mine = view.reservations.get(self.ctx.me)
            used = view.used + self._others_reserved(view)
            claim = self.ctx.store.json_size({"bytes": size, "time": time.time()})
            if mine is None:
                used += claim
            if used + size > quota:
                if mine is not None:
                    self.ctx.relay.delete(reservation_name(self.ctx.me))
                return False
            if attempt == 0:
                self.ctx.store.put_json(reservation_name(self.ctx.me), {"bytes": size, "time": time.time()})
        return True

    def _others_reserved(self, view: RelayView) -> int:
        total = 0
        for cid, info in view.reservations.items():
            if cid == self.ctx.me:
                continue
            r = self.ctx.read_small(info.name, info)
            try:
                if time.time() - float(r["time"]) < RESERVATION_TTL:
                    total += int(r["bytes"])
            except (TypeError, KeyError, ValueError):
                continue
        return total

    def room(self, new_entries: int) -> int:
        """Bytes an update may take now without the relay going over the quota."""
        view = list_relay(self.ctx.relay)
        used = view.used + self._others_reserved(view)
        if self.ctx.me not in view.reservations:
            used += self.ctx.store.json_size({"bytes": 10**12, "time": time.time()})
        return self.ctx.tq.quota - used - self.headroom(new_entries)

    def frame_size(self, n_items: int) -> int:
        """Upper estimate of an update's own bytes beside the contents."""
        return 4096 + 600 * n_items
