"""Start-up cost: the derived key is kept between runs (light imports: tests/test_architecture.py).

Memory is asserted (scrypt's working memory is 128 MiB whatever the machine), never time.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess

from peak import peak_rss
from cluster import Cluster


def peak_rss_mib(cmd: list[str], env: dict) -> tuple[int, str]:
    """(peak RSS in MiB of the command alone, its stderr): see tests/peak.py."""
    code, peak, err = peak_rss(cmd, env)
    assert code == 0, err
    return peak >> 20, err


def test_second_run_of_an_encrypted_repository_keeps_the_derived_key(tmp_path):
    cl = Cluster(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("correct horse")
    pw.chmod(0o600)
    a = cl.add("a", extra=f"passphrase = {pw}\n")
    b = cl.add("b", extra=f"passphrase = {pw}\n")
    a.write("f.txt", "one")
    first, _ = peak_rss_mib(a.cmd("--once"), cl.env)  # creates the repository: scrypt runs
    assert first > 128  # scrypt N=2^17, r=8 needs 128 MiB: the measure sees the derivation
    b.once()  # b derives the key from the existing header, once
    assert b.path("f.txt").read_text() == "one"
    a.write("g.txt", "two")
    again, _ = peak_rss_mib(a.cmd("--once"), cl.env)
    assert again < 100, f"{again} MiB: the key was derived again"
    again_b, _ = peak_rss_mib(b.cmd("--once"), cl.env)
    assert again_b < 100 and b.path("g.txt").read_text() == "two"
    # the kept key lives in the private state only
    (db,) = a.state.glob("*/state.sqlite")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600 and stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM meta WHERE key = 'derived_key'").fetchone()[0] == 1


def test_a_changed_passphrase_is_still_refused_with_a_kept_key(tmp_path):
    cl = Cluster(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("correct horse")
    pw.chmod(0o600)
    a = cl.add("a", extra=f"passphrase = {pw}\n")
    a.write("f.txt", "one")
    a.once()
    pw.write_text("battery staple")  # the key kept for the old passphrase must not be used
    r = a.once(check=False)
    assert r.code == 3 and "wrong passphrase" in r.err, r
    pw.write_text("correct horse")
    a.write("g.txt", "two")
    a.once()
    rss, _ = peak_rss_mib(a.cmd("--once"), cl.env)
    assert rss < 100
