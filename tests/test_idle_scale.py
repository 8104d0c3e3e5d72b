"""Idle cost at scale (issue 16): an idle cycle reads the base and the checksum cache one
folder at a time (one query per folder each, none per file, never the whole base), and a
state written by the previous version (no per-folder columns) keeps working."""
from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

from cluster import tree


def _own_seq(state: Path) -> int:
    cx = sqlite3.connect(next(state.rglob("state.sqlite")))
    try:
        row = cx.execute("SELECT value FROM meta WHERE key = 'own_seq'").fetchone()
        return int(row[0]) if row else 0
    finally:
        cx.close()


def _fill(folder: Path, folders: int, per_folder: int) -> None:
    for d in range(folders):
        for i in range(per_folder):
            p = folder / f"d{d}" / f"f{i}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"{d}/{i}\n")
    old = time.time() - 60  # older than the checksum cache's racy window: cached digests count
    for p in folder.rglob("*"):
        os.utime(p, (old, old))


def test_idle_cycle_queries_the_state_per_folder_not_per_file(cluster):
    folders, per_folder = 4, 60
    a, b = cluster.add("a"), cluster.add("b")
    _fill(a.folder, folders, per_folder)
    for c in (a, b, a, b):
        c.once()
    from escale.config import load_config
    from escale.manager import Manager

    m = Manager.from_config(load_config(a.conf).repositories["repo"])
    seen: list[str] = []
    try:
        m.open()
        m.connect()
        m.cycle()
        m.ctx.state.db.set_trace_callback(seen.append)
        m.ctx.cache._db().set_trace_callback(seen.append)
        report = m.cycle()
    finally:
        m.close()
    assert report.sent == 0 and report.deleted == 0
    base = [q for q in seen if " base" in q and q.lstrip().upper().startswith("SELECT")]
    sums = [q for q in seen if "checksums" in q]
    walked = folders + 1  # the d<n> folders and the top
    assert base and sums
    # one query per folder (and a couple for the folders the walk did not reach), no point
    # query per file: 240 files would be 240 queries
    assert len(base) <= walked + 3, base
    assert len(sums) <= walked + 3, sums
    # the whole base is never read: every base query names a folder (or asks for a count)
    assert all("WHERE" in q or "DISTINCT parent" in q or "COUNT" in q for q in base), base


def _downgrade(state: Path) -> None:
    """Make a state look written by the previous version: base rows without the per-folder
    columns and index, a checksum cache without its parent column."""
    cx = sqlite3.connect(next(state.rglob("state.sqlite")))
    cx.executescript("""
        BEGIN;
        CREATE TABLE old_base (path TEXT PRIMARY KEY, entry TEXT NOT NULL);
        INSERT INTO old_base SELECT path, entry FROM base;
        DROP TABLE base;
        ALTER TABLE old_base RENAME TO base;
        COMMIT;""")
    cx.close()
    cx = sqlite3.connect(next(state.rglob("checksums.sqlite")))
    cx.executescript("""
        BEGIN;
        CREATE TABLE old (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER,
                          algorithm TEXT, digest TEXT);
        INSERT INTO old SELECT path, size, mtime_ns, inode, algorithm, digest FROM checksums;
        DROP TABLE checksums;
        ALTER TABLE old RENAME TO checksums;
        COMMIT;""")
    cx.close()


def test_a_state_of_the_previous_version_keeps_working(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    _fill(a.folder, 3, 10)
    for c in (a, b, a, b):
        c.once()
    _downgrade(a.state)
    seq = _own_seq(a.state)
    a.once()  # idle: the old rows are indexed in place, nothing looks changed
    assert _own_seq(a.state) == seq
    cx = sqlite3.connect(next(a.state.rglob("state.sqlite")))
    try:
        assert cx.execute("SELECT COUNT(*) FROM base WHERE parent IS NULL").fetchone()[0] == 0
        assert cx.execute("SELECT COUNT(*) FROM base WHERE parent = 'd1'").fetchone()[0] == 10
    finally:
        cx.close()
    # and changes are still found: an edit, a folder deleted whole (its rows are found by
    # their folder, which the walk no longer reaches)
    a.write("d0/f1.txt", "edited")
    shutil.rmtree(a.path("d2"))
    a.once()
    b.once()
    assert tree(b.folder) == tree(a.folder)
    assert not b.path("d2").exists() and b.path("d0/f1.txt").read_text() == "edited"
