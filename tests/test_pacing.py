"""TimeQuotaController pacing and the daemon's early wake-up on local changes."""
import threading
import time

import pytest

from cluster import wait_for
from escale.pacing import ACTIVE_HOLD, FAST_INTERVAL, TimeQuotaController


def test_interval_is_fast_while_active_then_backs_off_to_refresh():
    now = [1000.0]
    tq = TimeQuotaController(refresh=30, clock=lambda: now[0])
    assert tq.interval == FAST_INTERVAL
    tq.record(True)
    seen = []
    while now[0] < 1000 + ACTIVE_HOLD + 200:  # cycles paced as the controller says
        now[0] += tq.interval
        tq.record(False)
        seen.append(tq.interval)
    fast = [i for i in seen if i == FAST_INTERVAL]
    assert len(fast) >= ACTIVE_HOLD / FAST_INTERVAL - 1  # about one cycle a second for ACTIVE_HOLD
    slow = seen[len(fast):]
    assert slow == sorted(slow) and slow[-1] == 30 and slow[0] == 2 * FAST_INTERVAL  # then doubling up to refresh
    tq.record(True)
    assert tq.interval == FAST_INTERVAL  # activity: fast again
    assert TimeQuotaController(refresh=True).refresh == 30
    assert TimeQuotaController(refresh=0.5).interval == 0.5  # never slower than refresh


def test_idle_request_rate_is_bounded_by_refresh():
    """After ACTIVE_HOLD, an idle daemon makes at most one cycle per refresh (plus the
    few of the back-off): the idle rate docs/performance.md gives."""
    now = [0.0]
    tq = TimeQuotaController(refresh=30, clock=lambda: now[0])
    cycles = 0
    while now[0] < 3600:
        now[0] += tq.interval
        tq.record(False)
        cycles += 1
    assert cycles <= 3600 / 30 + 5


def test_bad_refresh_refused():
    with pytest.raises(ValueError):
        TimeQuotaController(refresh=0)


def test_wait_stops_and_wakes_early():
    tq = TimeQuotaController(refresh=60)
    stop, wake = threading.Event(), threading.Event()
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    assert tq.wait(False, stop) is False
    assert time.monotonic() - t0 < 5
    stop.clear()
    threading.Timer(0.2, wake.set).start()
    t0 = time.monotonic()
    assert tq.wait(False, stop, wake, settle=0.1) is True
    assert time.monotonic() - t0 < 5 and not wake.is_set()


def test_room():
    assert TimeQuotaController(quota=100).room(30) == 70
    assert TimeQuotaController(quota=100).room(300) == 0
    assert TimeQuotaController().room(300) is None


def test_daemon_publishes_a_local_change_without_waiting_for_refresh(cluster):
    a = cluster.add("a", refresh=600)
    proc = a.start()
    try:
        assert wait_for(lambda: any(n.startswith("a/") for n in cluster.relay_objects()), timeout=30), \
            "first cycle never finished"
        a.write("new.txt", "fresh")
        # refresh = 600 s: only the watcher can make this happen within a minute
        assert wait_for(lambda: any(n.startswith("u/") for n in cluster.relay_objects()), timeout=60)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
