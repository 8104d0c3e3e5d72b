"""Which relay object names are escale's, and whose (escale/protocol.py, docs/protocol.md's
"Relay layout"): a name of no listed kind is unknown and has no writer."""
from __future__ import annotations

from escale.protocol import RelayView, signer_of
from escale.relay.base import ObjectInfo

CID = "0123456789abcdef"


def test_every_listed_kind_has_its_writer_and_table() -> None:
    names = [f"{k}/{CID}" for k in "masqrn"] + [f"u/{CID}/1", f"b/{CID}/1/0", "escale.json"]
    view = RelayView.from_listing(ObjectInfo(n, 1) for n in names)
    assert [signer_of(n) for n in names[:-1]] == [CID] * 8 and signer_of("escale.json") is None
    tables = (view.members, view.acks, view.snapshots, view.requests, view.reservations, view.notices)
    assert [list(t) for t in tables] == [[CID]] * 6
    assert view.updates == {CID: {1: ObjectInfo(f"u/{CID}/1", 1)}} and list(view.blobs) == [(CID, 1)]
    assert view.header is not None and view.unknown == []


def test_a_name_of_no_listed_kind_is_unknown_and_has_no_writer() -> None:
    """``j/<cid>`` matched the name pattern though nothing ever wrote one (listed unknown,
    yet signed by ``<cid>``: a client following a migration carried it over as its own,
    sync/moves.py)."""
    names = [f"j/{CID}", f"x/{CID}", f"m/{CID}/1", f"u/{CID}/01", "m/0123"]
    view = RelayView.from_listing(ObjectInfo(n, 1) for n in names)
    assert view.unknown == names
    assert [signer_of(n) for n in names] == [None] * len(names)
