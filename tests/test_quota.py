"""Acceptance tests for ``quota``: the relay never holds more than the quota, at any instant.

Real ``python -m escale`` processes and a real ``file://`` relay (see cluster.py).
"""
from __future__ import annotations

import os
import threading
import time

from cluster import Cluster, temp_files, update_objects

QUOTA = 5_000_000
MB = 1_000_000


class RelaySampler:
    """Samples the relay's total size (every file, temporaries included) every ~2 ms."""

    def __init__(self, cluster: Cluster, interval: float = 0.002):
        self.cluster, self.interval = cluster, interval
        self.max = 0
        self.samples = 0
        self.peak_listing: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            n = self.cluster.relay_bytes()
            self.samples += 1
            if n > self.max:
                self.max = n
                if n > QUOTA:
                    try:
                        self.peak_listing = self.cluster.relay_objects()
                    except OSError:
                        pass
            time.sleep(self.interval)

    def __enter__(self) -> "RelaySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_quota_never_exceeded_with_slow_puller(cluster):
    a = cluster.add("A", extra=f"quota = 5MB\n")
    b = cluster.add("B")
    b.once()                                   # B is a member (and a puller) from the start
    for i in range(30):
        a.write(f"one/f{i:02d}.bin", os.urandom(MB))
    for i in range(4):
        a.write(f"two/g{i}.bin", os.urandom(MB * 5 // 2))
    files = {k: v for k, v in a.tree().items() if v[0] == "file"}
    assert sum(os.path.getsize(a.path(k)) for k in files) == 40 * MB

    a_out: list[str] = []
    rounds = 0
    t0 = time.monotonic()
    with RelaySampler(cluster) as sampler:
        for rounds in range(1, 61):
            r = a.once(check=False)
            assert r.code == 0, r
            a_out.append(r.out)
            if rounds % 2 == 0:
                b.once()
                if b.tree() == a.tree():
                    break
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    print(f"\nquota test: {rounds} rounds in {elapsed:.1f} s, {sampler.samples} samples, "
          f"max relay size {sampler.max} bytes (quota {QUOTA})")

    assert sampler.samples > 100
    assert sampler.max > 2 * MB, "the relay never held much: nothing was measured"
    assert sampler.max <= QUOTA, f"relay reached {sampler.max} bytes > {QUOTA}: {sampler.peak_listing}"
    assert b.tree() == a.tree(), f"not converged after {rounds} rounds"
    assert any("waiting for room" in out for out in a_out), "A never waited for room: the quota did not bite"
    assert temp_files(a.folder) == [] and temp_files(b.folder) == []
    # and everything drains once B has caught up
    a.once()
    assert update_objects(cluster) == [], cluster.relay_objects()


def test_file_larger_than_quota_is_an_error(cluster):
    a = cluster.add("A", extra="quota = 5MB\n")
    b = cluster.add("B")
    b.once()
    a.write("huge.bin", os.urandom(6 * MB))
    a.write("small/one.txt", "one")
    a.write("small/two.bin", os.urandom(300_000))

    r = a.once(check=False)
    assert r.code == 1, r
    assert "huge.bin" in r.err and "larger than the relay quota" in r.err, r
    assert not any("huge" in n for n in cluster.relay_objects())
    assert cluster.relay_bytes() <= QUOTA

    b.once()
    assert b.path("small/one.txt").read_text() == "one"
    assert b.path("small/two.bin").read_bytes() == a.path("small/two.bin").read_bytes()
    assert not b.path("huge.bin").exists()

    # still reported (not silently dropped) on the next cycle, and nothing else is re-sent
    r = a.once(check=False)
    assert r.code == 1 and "huge.bin" in r.err, r
    assert "0 sent" in r.out, r
    b.once()
    a.once(check=False)
    assert update_objects(cluster) == [], cluster.relay_objects()


def test_file_just_under_quota_is_sent_or_reported(cluster):
    """A file that fits the quota but not with escale's own objects beside it must be reported
    (or sent), and must not hold back the other files."""
    a = cluster.add("A", extra="quota = 5MB\n")
    b = cluster.add("B")
    b.once()
    a.write("near.bin", os.urandom(QUOTA - 1000))
    a.write("small.txt", "small")
    errs = []
    for _ in range(3):
        r = a.once(check=False)
        assert r.code in (0, 1), r
        errs.append(r.err)
        b.once()
    assert b.path("small.txt").read_text() == "small"
    assert b.path("near.bin").exists() or any("near.bin" in e for e in errs), errs
