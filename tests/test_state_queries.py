"""The state's yes/no questions asked at every pull (escale/state.py): whether anything is
held back or wanted, answered by one EXISTS query rather than by loading or counting rows."""
from __future__ import annotations

from escale.index import FILE, Entry
from escale.state import State


def test_any_held_and_any_wants_follow_the_tables(tmp_path) -> None:
    state = State(tmp_path / "state")
    try:
        assert not state.any_held() and not state.any_wants()
        entries = [Entry(f"d/f{i}", FILE, f"{i:064x}", i, 0, 0o644, None, "A" * 16, seq=i + 1) for i in range(3)]
        for e in entries:
            state.hold(e)
        assert state.any_held() and not state.any_wants()
        state.want(entries[0], "B" * 16)
        assert state.any_wants() and state.want_count() == 1
        for e in entries[:2]:
            state.release(e.path)
        assert state.any_held() and len(state.held()) == 1
        state.release(entries[2].path)
        state.unwant(entries[0].path)
        assert not state.any_held() and not state.any_wants()
    finally:
        state.close()
