"""The first sync of many files in bounded memory (issue 16): a large scan publishes as it
goes (sync/push.py ``_stream``), a puller reads a bounded number of entries ahead
(sync/pull.py ``_superseded``), a cycle's report keeps a bounded number of names.

The bounds are module constants of tens of thousands; these tests run the real CLI with
them set small (``LAUNCH``), so a few hundred files cross them."""
from __future__ import annotations

import json
import re
import struct
import subprocess
import sys

from cluster import Client, kill9, wait_for

#: ``python -m escale`` with the three bounds set from its first three arguments
LAUNCH = ("import runpy, sys\n"
          "import escale.sync.pull as pull, escale.sync.push as push, escale.sync.report as report\n"
          "push.STREAM_AT, pull.LOOKAHEAD_ITEMS, report.KEPT_FILES = (int(sys.argv.pop(1)) for _ in range(3))\n"
          "runpy.run_module('escale', run_name='__main__', alter_sys=True)\n")


def small(c: Client, stream: int = 40, lookahead: int = 50_000, kept: int = 1000, *args: str) -> list[str]:
    return [sys.executable, "-c", LAUNCH, str(stream), str(lookahead), str(kept), "-c", str(c.conf), "--once",
            *args]


def run(c: Client, **bounds) -> subprocess.CompletedProcess:
    p = subprocess.run(small(c, **bounds), capture_output=True, text=True, env=c.cluster.env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def fill(c: Client, n: int, per_folder: int = 50, prefix: str = "d") -> None:
    for i in range(n):
        c.write(f"{prefix}{i // per_folder}/f{i:04d}.txt", f"file {prefix} {i}\n")


def updates(c: Client) -> list[dict]:
    """The headers of the update objects on the file:// relay (encryption off)."""
    from escale.protocol import UPDATE_MAGIC

    out = []
    for p in sorted((p for p in (c.cluster.relay / "u").glob("*/*") if p.name.isdigit()),
                    key=lambda p: (p.parent.name, int(p.name))):
        data = p.read_bytes()
        assert data.startswith(UPDATE_MAGIC)
        (length,) = struct.unpack(">I", data[len(UPDATE_MAGIC):len(UPDATE_MAGIC) + 4])
        out.append(json.loads(data[len(UPDATE_MAGIC) + 4:len(UPDATE_MAGIC) + 4 + length]))
    return out


def test_a_large_scan_publishes_as_it_goes(cluster):
    """300 new files, publishing every 40: the scan sends updates before its walk ends
    (before: one update at the end, every file held until then), and B gets everything."""
    a, b = cluster.add("a"), cluster.add("b")
    fill(a, 300)
    out = run(a).stdout
    assert "300 sent" in out, out
    heads = updates(a)
    assert len(heads) >= 300 // 40, [len(h["items"]) for h in heads]
    assert sum(1 for h in heads for i in h["items"] if i["e"]["kind"] == "file") == 300
    b.once()
    assert b.tree() == a.tree()


def test_a_rename_in_a_large_scan_still_travels_without_content(cluster):
    """A new file whose content a synced file holds waits for the end of the walk (the
    synced file may turn out deleted): a move found in a streaming scan is still a rename."""
    a, b = cluster.add("a"), cluster.add("b")
    a.write("z/old.txt", "moved, never sent twice\n" * 400)
    cluster.round(rounds=2)
    seen = len(updates(a))
    fill(a, 200)
    a.path("z/old.txt").rename(a.path("d0/new.txt"))
    run(a)
    items = [i for h in updates(a)[seen:] for i in h["items"]]
    new = [i for i in items if i["e"]["path"] == "d0/new.txt"]
    assert len(new) == 1 and new[0]["e"].get("origin") == "z/old.txt" and new[0]["d"] == "none", new
    assert len(updates(a)) - seen >= 200 // 40
    b.once()
    assert b.tree() == a.tree()
    assert not b.path("z/old.txt").exists()


def test_kill9_during_a_streaming_push_then_converges(cluster):
    """kill -9 after a streaming push published some updates: those are remembered (the
    next run does not send them again) and everything converges."""
    a, b = cluster.add("a"), cluster.add("b")
    fill(a, 400)
    before = a.tree()
    proc = subprocess.Popen(small(a, stream=20), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cluster.env)
    try:
        assert wait_for(lambda: len(list((cluster.relay / "u").glob("*/[0-9]*"))) >= 3 if (cluster.relay / "u").exists()
                        else False, timeout=120)
    finally:
        kill9(proc)
    out = run(a).stdout
    sent = int(out.split(" sent")[0].rsplit(" ", 1)[-1])
    assert 0 < sent < 400, out  # what was published before the kill is not sent again
    b.once()
    a.once()
    assert a.tree() == before
    assert b.tree() == before


def test_a_returning_machine_reads_ahead_a_bounded_window(cluster):
    """B, away while A published five updates, reads them with a look-ahead of one entry
    (two updates at a time): versions rewritten past the window are applied then replaced,
    a rename past the window still finds its source, and B ends where A is."""
    a, b = cluster.add("a"), cluster.add("b")
    a.write("keep.txt", "first\n")
    cluster.round(rounds=2)
    for n in range(4):
        a.write("f.txt", f"version {n}\n" * (n + 1))
        if n == 0:
            a.write("g.txt", "renamed later\n" * 300)
        a.once()
    a.path("g.txt").rename(a.path("h.txt"))
    a.once()
    run(b, lookahead=1)
    assert b.path("f.txt").read_text() == "version 3\n" * 4
    assert b.path("h.txt").read_text() == "renamed later\n" * 300
    assert not b.path("g.txt").exists()
    assert b.tree() == a.tree()


def test_a_report_keeps_a_bounded_number_of_names(cluster):
    """Past KEPT_FILES names a report only counts; the cycle's log line still counts every
    file, and each is still named at DEBUG (-v)."""
    a, b = cluster.add("a"), cluster.add("b")
    fill(a, 30, per_folder=10)
    run(a)
    p = subprocess.run(small(b, 40, 50_000, 5, "-v"), capture_output=True, text=True, env=cluster.env)
    assert p.returncode == 0, p.stderr
    log = p.stdout + p.stderr
    assert re.search(r"\b30 received \(", log), log  # the cycle's line: counts, then the first names
    named = {line.rsplit(" received ", 1)[1] for line in log.splitlines() if " received d" in line}
    assert named == {f"d{i // 10}/f{i:04d}.txt" for i in range(30)}, log


def test_a_snapshot_copies_the_stored_rows_and_reads_the_same(tmp_path):
    """The snapshot writer copies rows stored as ``Entry.to_json`` and re-encodes rows of
    older versions (``json.dumps(to_dict())``): the body is byte for byte the one encoding
    every entry gives, in path order, with non-UTF-8 names merged in."""
    import io

    from escale.index import DIR, FILE, GONE, Entry
    from escale.names import db_key
    from escale.protocol import Snapshot
    from escale.state import State

    st = State(tmp_path / "state")
    entries = [Entry("b/x.txt", FILE, "ab" * 32, 5, 7, 0o644, None, "c1", None, 3),
               Entry("a", DIR, None, 0, 1, 0o755, None, "c2", None, 1),
               Entry("b/é.txt", FILE, "cd" * 32, 9, 8, 0o600, "ef" * 32, "c1", "b/x.txt", 4),
               Entry("z", GONE, None, 0, 2, 0, "/", "c1", None, 5),
               Entry("raw-\udcff.txt", FILE, "01" * 32, 1, 1, 0o644, None, "c1", None, 6)]
    old = Entry("m/old.txt", FILE, "99" * 32, 2, 3, 0o644, None, "c3", None, 2)
    with st.transaction():
        for e in entries:
            st.remember(e)
        st.remember(old)
        st.db.execute("UPDATE base SET entry = ? WHERE path = ?", (json.dumps(old.to_dict()), db_key(old.path)))
    rows = dict(st.db.execute("SELECT path, entry FROM base"))
    assert rows[db_key(entries[0].path)].startswith('{"author":')  # stored as the snapshot's text
    assert rows[db_key(old.path)].startswith('{"path": ')  # as an older version stored it
    got, want = io.BytesIO(), io.BytesIO()
    assert Snapshot.encode_lines(st.base_snapshot_lines(), got) == \
        Snapshot.encode_entries(sorted(entries + [old], key=lambda e: e.path), want)
    assert got.getvalue() == want.getvalue()
    st.close()
