"""Requests per idle cycle (issue 16): counted, never timed. An idle cycle makes no request per
synced file, reads and writes nothing, and lists the relay once (the push lists again only
when the pull wrote to the relay); the counts do not depend on the number of files."""
from __future__ import annotations

import pytest

from idle_requests import count_idle, counting


def test_idle_cycle_on_a_file_relay_lists_and_reads_nothing_per_file(tmp_path):
    _start_few, idle_few = count_idle(tmp_path / "few", "file", files=3)
    _start_many, idle_many = count_idle(tmp_path / "many", "file", files=60)
    assert idle_few == idle_many  # nothing per file
    assert sum(idle_many.values()) <= 2  # one listing (a second only when the pull wrote), no stat
    assert not {k: v for k, v in idle_many.items() if k in ("get", "put", "delete", "abort_incomplete")}


@pytest.mark.parametrize("kind", ["wsgidav"])
def test_idle_cycle_on_webdav_sends_only_listings_and_none_per_file(tmp_path, kind, relay_webdav_wsgidav):
    _start_few, idle_few = count_idle(tmp_path / "few", kind, files=3, server=relay_webdav_wsgidav)
    _start_many, idle_many = count_idle(tmp_path / "many", kind, files=60, server=relay_webdav_wsgidav)
    assert idle_few == idle_many  # nothing per file
    assert set(idle_many) <= {"PROPFIND"}, idle_many


def _start_up_sweeps(conf) -> int:
    """abort_incomplete calls of one start-up (open + connect), counted in this process."""
    from escale.config import load_config
    from escale.manager import Manager

    m = Manager.from_config(load_config(conf).repositories["repo"])
    try:
        with counting("file") as counts:
            m.open()
            m.connect()
    finally:
        m.close()
    return counts.get("abort_incomplete", 0)


def test_start_up_looks_for_interrupted_uploads_only_after_an_unclean_end(tmp_path):
    import signal
    import time

    from cluster import Cluster

    cl = Cluster(tmp_path)
    a = cl.add("a")
    a.write("f.txt", "x")
    a.once()
    a.once()
    assert _start_up_sweeps(a.conf) == 0  # the last run ended cleanly, and one swept today
    daemon = a.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until it is past its start-up
            time.sleep(0.5)
            if _ended_cleanly_unset(a):
                break
        time.sleep(1)
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.communicate(timeout=30)
    assert _start_up_sweeps(a.conf) == 7  # killed: every prefix of ours is looked at
    assert _start_up_sweeps(a.conf) == 0


def _ended_cleanly_unset(client) -> bool:
    import sqlite3

    (db,) = client.state.glob("*/state.sqlite")
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM meta WHERE key = 'ended_cleanly'").fetchone()[0] == 0
