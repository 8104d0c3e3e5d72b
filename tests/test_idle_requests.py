"""Requests per idle cycle (issue 16): counted, never timed. An idle cycle makes no request per
synced file, reads and writes nothing, and lists the relay once (the push lists again only
when the pull wrote to the relay); the counts do not depend on the number of files."""
from __future__ import annotations

import pytest

from idle_requests import count_idle


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
