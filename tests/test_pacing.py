"""TimeQuotaController pacing and the daemon's early wake-up on local changes."""
import threading
import time

import pytest

from cluster import wait_for
from escale.pacing import RAMP_CYCLES, TimeQuotaController


def test_interval_ramps_from_half_refresh_to_refresh_and_resets_on_work():
    tq = TimeQuotaController(refresh=10)
    assert tq.interval == 5
    seen = []
    for _ in range(RAMP_CYCLES + 3):
        tq.record(False)
        seen.append(tq.interval)
    assert seen == sorted(seen) and seen[-1] == 10 and seen[0] > 5
    tq.record(True)
    assert tq.interval == 5
    assert TimeQuotaController(refresh=True).refresh == 30


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
