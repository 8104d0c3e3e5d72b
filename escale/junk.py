"""Relay objects that belong to no member: counted, named in one line, never remembered.

Anyone who can write to the relay can drop thousands of objects named like escale's
(``m/<id>``, ``u/<id>/<seq>``…) under made-up client ids. Followed one by one they
would cost an error line each per cycle, and a row each in every client's state
(pull marks, floors). So a cycle first keeps only the objects of ids with a valid
member card (or a key pinned from one), and reports the rest as one summary line
with a count and a few names. Nothing about them is written to the state.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .protocol import RelayView

#: names shown in the summary line
SHOWN = 5


@dataclass
class Junk:
    """What a cycle set aside: object names, and the first reason seen."""

    names: dict[str, None] = field(default_factory=dict)  # ordered set
    reason: str = ""

    def add(self, name: str, reason: str = "") -> None:
        self.names[name] = None
        self.reason = self.reason or reason

    def summary(self) -> str | None:
        if not self.names:
            return None
        shown = ", ".join(sorted(self.names)[:SHOWN])
        more = f" and {len(self.names) - SHOWN} more" if len(self.names) > SHOWN else ""
        why = f" (first: {self.reason})" if self.reason else ""
        return (f"ignored {len(self.names)} relay object(s) not written by a member of this repository "
                f"(no valid member card: forged, damaged or left over): {shown}{more}{why}")


def drop_strangers(view: RelayView, known: Callable[[str], bool], junk: Junk) -> None:
    """Remove from ``view`` every object whose writer id is not ``known``; record them."""
    for table in (view.members, view.acks, view.snapshots, view.requests, view.reservations):
        for cid in [c for c in table if not known(c)]:
            junk.add(table.pop(cid).name, "no member card")
    for cid in [c for c in view.updates if not known(c)]:
        for info in view.updates.pop(cid).values():
            junk.add(info.name, "no member card")
    for key in [k for k in view.blobs if not known(k[0])]:
        for info in view.blobs.pop(key):
            junk.add(info.name, "no member card")
