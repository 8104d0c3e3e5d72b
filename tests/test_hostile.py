"""Hostile input from the relay, as in issue 9 (points 3, 6, 9, 10, 11): one bad object
never stops the group, junk costs one line, names cannot reach a terminal or a file
name raw. Real clients on a ``file://`` relay the attacker controls; with
``encryption = off`` (the relay can then write valid-looking objects itself) or with a
member's own key (the worst case: a hostile member)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

from cluster import Cluster
from test_robustness import _forge, meta, state_db


def state_rows(client) -> dict[str, int]:
    db = sqlite3.connect(state_db(client))
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        db.close()


def repository_id(cluster: Cluster) -> str:
    """The id in the relay's header: a forger signs for this repository."""
    return json.loads((cluster.relay / "escale.json").read_text())["id"]


def two(cluster: Cluster):
    """A and B, members of a plaintext repository; A published one file, B has not pulled."""
    a, b = cluster.add("A"), cluster.add("B")
    b.once()
    a.write("from-a.txt", "A's file")
    a.once()
    return a, b, meta(a)["client_id"]


def small_object(body: bytes) -> bytes:
    """A small-object envelope (what ``ObjectStore.put_json`` writes), with a zero signature."""
    return b"ESCJ\x01" + struct.pack(">I", len(body)) + body + bytes(64)


# ------------------------------------------------------------------ 3. one object stops the group

def test_deeply_nested_json_is_named_and_skipped(cluster):
    """Nested JSON in a forged card and a forged request: each is named, the rest syncs
    (before: RecursionError, 'unexpected error', and nothing synced for anyone)."""
    a, b, cid = two(cluster)
    deep = b"[" * 100_000 + b"]" * 100_000
    fake = "0123456789abcdef"
    (cluster.relay / "m" / fake).write_bytes(small_object(deep))
    (cluster.relay / "q").mkdir(exist_ok=True)
    (cluster.relay / "q" / cid).write_bytes(small_object(deep))  # A's id: the signature is checked first
    r = b.once(check=False)
    assert r.code == 1, r
    assert "unexpected error" not in r.err and "RecursionError" not in r.err, r
    assert f"m/{fake}" in r.err and f"q/{cid}" in r.err and "bad signature" in r.err, r
    assert b.path("from-a.txt").read_text() == "A's file"


def test_too_deep_or_too_long_paths_refused_rest_syncs(cluster):
    """A member's update with a path 1,100 folders deep, a name over NAME_MAX and a path
    over PATH_MAX: each refused by name, the rest of the update applies, the next cycle
    is clean (before: RecursionError in every cycle of every client)."""
    a, b, cid = two(cluster)
    b.once()
    a.once()  # collected: the forger must extend the chain
    ma = meta(a)
    deep = "d/" * 1100 + "f.txt"
    long_name = "n" * 256 + ".txt"
    long_path = "/".join(["p" * 200] * 21)
    name = _forge(cluster, cid, int(ma["own_seq"]) + 1, ma["own_digest"],
                  [(deep, b"deep"), (long_name, b"long"), (long_path, b"long path"), ("ok.txt", b"fine")])
    r = b.once(check=False)
    assert r.code == 1, r
    assert "unexpected error" not in r.err and "RecursionError" not in r.err, r
    assert name in r.err and "1101 folders deep" in r.err and "a name of 260 bytes" in r.err, r
    assert "path of 4220 bytes" in r.err, r
    assert b.path("ok.txt").read_bytes() == b"fine" and not b.path("d").exists()
    assert b.once().code == 0  # refused once, not a failure in every cycle


def test_deeply_nested_relay_folder_is_a_relay_error(cluster):
    a = cluster.add("A")
    a.once()
    p = cluster.relay / "u"
    p.mkdir(exist_ok=True)
    chain = []
    for _ in range(1200):  # deeper than the interpreter's recursion limit
        p = p / "x"
        os.mkdir(p)
        chain.append(p)
    try:
        r = a.once(check=False)
        assert r.code == 2, r
        assert "nested deeper than" in r.err and str(cluster.relay / "u" / "x") in r.err, r
        assert "unexpected error" not in r.err and "RecursionError" not in r.err, r
    finally:  # shutil.rmtree (pytest's clean-up of old runs) recurses too
        for folder in reversed(chain):
            os.rmdir(folder)


# ------------------------------------------------------------------ 9. relay spam

def test_relay_spam_costs_one_line_and_no_state(cluster):
    """20,000 one-byte objects under made-up ids: one summary line with the count and a
    few names; no state row for any of them; the genuine update still applies."""
    a, b, cid = two(cluster)
    b.once()
    rows_before = state_rows(b)
    kinds = ["m", "a", "q", "s", "u"]
    for i in range(20_000):
        fake = f"{i:016x}"
        kind = kinds[i % len(kinds)]
        p = cluster.relay / kind / fake if kind != "u" else cluster.relay / "u" / fake / "1"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    a.write("later.txt", "after the spam")
    assert a.once(check=False).code == 1  # A sees the spam too, and still publishes
    r = b.once(check=False)
    assert r.code == 1, r
    assert b.path("later.txt").read_text() == "after the spam"
    lines = [line for line in r.err.splitlines() if "ERROR" in line]
    assert len(lines) <= 3, lines[:10]
    assert "ignored 20000 relay object(s)" in r.err and "m/0000000000000000" in r.err, r.err[-2000:]
    after = state_rows(b)
    for table in ("marks", "pins", "applied", "wants", "held"):
        assert after.get(table, 0) <= rows_before.get(table, 0) + 2, (table, rows_before, after)
    # 'seen' caches the genuine members' settled small objects (cards, acknowledgements
    # with their activity time, requests): none of the made-up ids may be there
    db = sqlite3.connect(state_db(b))
    try:
        seen = [n for (n,) in db.execute("SELECT name FROM seen")]
    finally:
        db.close()
    fakes = {f"{i:016x}" for i in range(20_000)}
    assert not [n for n in seen if any(part in fakes for part in n.split("/"))], seen
    assert len(seen) <= 6, seen
    r2 = b.once(check=False)  # the next cycle too
    assert len([line for line in r2.err.splitlines() if "ERROR" in line]) <= 3
    assert state_rows(b)["marks"] <= rows_before["marks"] + 2


# ------------------------------------------------------------------ 11. names

def _mint_member(cluster: Cluster, name: str):
    """With encryption off the relay can mint a member: a card signed by its own key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from escale.encryption import Plain
    from escale.protocol import ObjectStore
    from escale.relay import LocalMount

    relay = LocalMount(f"file://{cluster.relay}")
    relay.open()
    key = Ed25519PrivateKey.generate()
    store = ObjectStore(relay, Plain(), key, repository=repository_id(cluster))
    cid = os.urandom(8).hex()
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    store.put_json(f"m/{cid}", {"v": 1, "name": name, "mode": "shared\x1b[2J", "key": pub,
                                "pulls": True, "pushes": True})
    return store, cid


def test_hostile_member_names(cluster):
    """A minted member claims B's name with escape sequences, another a name with '/../':
    status and logs never print a control character raw, the two 'B's are told apart, and
    a conflict copy named after the hostile member lands inside the folder, once."""
    from escale.index import FILE, Entry
    from escale.protocol import INLINE, UPDATE_MAGIC, Item, ObjectStore, UpdateHeader, update_name

    a, b, cid = two(cluster)
    b.once()
    b.write("doc.txt", "B's edit")
    store1, evil1 = _mint_member(cluster, "B")
    store2, evil2 = _mint_member(cluster, "x/../../..\x1b]0;pwned\x07\x1b[31m")
    data = b"hostile version"
    old = time.time_ns() - 10**12  # older: B's version wins, the hostile one becomes the copy
    item = Item(Entry("doc.txt", FILE, hashlib.sha256(data).hexdigest(), len(data), old, 0o644, None, evil2), INLINE)
    head = ObjectStore.encode_header(UPDATE_MAGIC, UpdateHeader(evil2, 1, "", time.time(), [], None, [item]).to_dict())
    store2.put_framed(update_name(evil2, 1), head, [io.BytesIO(data)], len(data))
    r = b.once(check=False)
    assert "\x1b" not in r.err and "\x07" not in r.err, r
    copies = [p for p in os.listdir(b.folder) if p.startswith("doc.conflict-")]
    assert len(copies) == 1, (os.listdir(b.folder), r)
    assert b.path(copies[0]).read_bytes() == data and "/" not in copies[0] and "\x1b" not in copies[0]
    assert b.path("doc.txt").read_text() == "B's edit"
    assert not list(cluster.base.glob("*.conflict-*")) and not list(cluster.base.parent.glob("*.conflict-*"))
    r = b.once(check=False)
    assert "conflict" not in r.err or r.code == 0, r  # the copy is not retried every cycle
    st = subprocess.run([sys.executable, "-m", "escale.cli.ctl", "-c", str(b.conf), "status"],
                        capture_output=True, text=True, env=cluster.env)
    assert st.returncode == 0, st
    assert "\x1b" not in st.stdout and "\x07" not in st.stdout, st.stdout
    assert f"B#{evil1[:8]}" in st.stdout and "\\x1b" in st.stdout, st.stdout
    assert "\n  B " not in st.stdout, st.stdout  # two members named B: both told apart


# ------------------------------------------------------------------ 6. plaintext mode: sizes

MEASURE = """
import sys
from escale.cli.daemon import main
code = main(sys.argv[1:])
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
# VmHWM: this process's own peak (getrusage would include pytest's, carried over fork and exec)
hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(f"MEASURED wchar={io['wchar']} maxrss_kb={hwm}",
      file=sys.stderr)
sys.exit(code)
"""


def measured(client, *args: str, timeout: float = 600):
    """Run one --once cycle; (result, bytes written by the process, peak RSS in MiB)."""
    from cluster import Result

    p = subprocess.run([sys.executable, "-c", MEASURE, "-c", str(client.conf), "--once", *args],
                       capture_output=True, text=True, timeout=timeout, env=client.cluster.env)
    line = next(x for x in p.stderr.splitlines() if x.startswith("MEASURED "))
    fields = dict(f.split("=") for f in line.split()[1:])
    return Result(p.returncode, p.stdout, p.stderr), int(fields["wchar"]), int(fields["maxrss_kb"]) // 1024


def sparse(path: Path, head: bytes, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)


def test_forged_objects_cost_no_disk_or_memory(cluster):
    """With encryption off the relay writes objects in the clear. A 2 GiB sparse fake
    update, a fake snapshot whose unsigned header length says 1 GiB, and a signed (by a
    member the relay minted) update declaring 5 body bytes followed by 2 GiB: none is
    spooled or held in memory beyond what a signed header declares (before: 2 GiB of
    disk per fake update, the header read whole into memory)."""
    from escale.protocol import UPDATE_MAGIC, ObjectStore, UpdateHeader, update_name

    a, b, cid = two(cluster)
    c, d = cluster.add("C"), cluster.add("D")
    cluster.round("C", "D", "B", "A")
    nxt = int(meta(a)["own_seq"]) + 1
    sparse(cluster.relay / "u" / cid / str(nxt), b"ESCU\x01" + struct.pack(">I", 100) + b"{" * 100, 2 << 30)
    c_id = meta(c)["client_id"]
    sparse(cluster.relay / "s" / c_id, b"ESCS\x02" + struct.pack(">I", 1 << 30), (1 << 30) + 200)
    store, evil = _mint_member(cluster, "minted")
    head = ObjectStore.encode_header(UPDATE_MAGIC, UpdateHeader(evil, 1, "", time.time(), [], None, []).to_dict())
    store.put_framed(update_name(evil, 1), head, [io.BytesIO(b"12345")], 5)
    with open(cluster.relay / "u" / evil / "1", "r+b") as f:
        f.truncate(2 << 30)  # a signed header, then far more than it declares
    d.write("still.txt", "the rest syncs")
    d.once(check=False)
    r, written, rss = measured(b)
    assert r.code == 1, r
    assert f"u/{cid}/{nxt}" in r.err and "bad signature" in r.err, r
    assert f"s/{c_id}" in r.err and "header of 1073741824 bytes" in r.err, r
    assert f"u/{evil}/1" in r.err and "longer than the 0 body bytes" in r.err, r
    assert b.path("still.txt").read_text() == "the rest syncs"
    assert written < 50 << 20, written
    assert rss < 200, rss


# ------------------------------------------------------------------ 10. snapshot bomb

def forge_snapshot(cluster: Cluster, owner, n: int, seq: int = 5) -> None:
    """``s/<owner>`` holding n file entries, signed with the owner's key (a member)."""
    import tempfile

    from escale.encryption import Plain
    from escale.index import FILE, Entry
    from escale.protocol import SNAPSHOT_MAGIC, ObjectStore, Snapshot, snapshot_name
    from escale.relay import LocalMount
    from escale.state import State

    relay = LocalMount(f"file://{cluster.relay}")
    relay.open()
    state = State(state_db(owner).parent)
    cid = meta(owner)["client_id"]
    store = ObjectStore(relay, Plain(), state.signing_key(), repository=repository_id(cluster))
    state.close()
    digest = hashlib.sha256(b"x").hexdigest()
    entries = (Entry(f"d{i // 1000:04d}/f{i:07d}", FILE, digest, 1, 10**18, 0o644, None, cid, seq=1)
               for i in range(n))
    with tempfile.TemporaryFile() as body:
        count, size, sha = Snapshot.encode_entries(entries, body)
        head = ObjectStore.encode_header(SNAPSHOT_MAGIC, Snapshot(cid, seq, "0" * 64, {}, count, size, sha).to_dict())
        body.seek(0)
        store.put_framed(snapshot_name(cid), head, [body], size)


def bomb(tmp_path: Path, n: int):
    cl = Cluster(tmp_path / f"n{n}")
    a, b = cl.add("A", mode="upload"), cl.add("B", mode="download")
    a.once()
    b.once()
    forge_snapshot(cl, a, n)
    return cl, b


def test_snapshot_applied_in_bounded_memory(tmp_path):
    """A snapshot ten times larger costs (almost) no more memory to apply."""
    peaks, requests = {}, {}
    for n in (10_000, 100_000):
        cl, b = bomb(tmp_path, n)
        r, _written, peaks[n] = measured(b)
        assert r.code == 0, r
        db = sqlite3.connect(state_db(b))
        assert db.execute("SELECT COUNT(*) FROM wants").fetchone()[0] == n
        db.close()
        requests[n] = max(p.stat().st_size for p in cl.relay.joinpath("q").iterdir())
    assert peaks[100_000] < peaks[10_000] + 25, peaks
    assert requests[100_000] < 2 << 20, requests  # the request stays a small object


def test_sigterm_while_applying_a_large_snapshot(tmp_path):
    import signal
    import threading

    cl, b = bomb(tmp_path, 150_000)
    proc = b.start()
    seen = threading.Event()
    lines: list[str] = []

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "catching up from" in line:
                seen.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        assert seen.wait(120), "".join(lines)
        time.sleep(0.5)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, "".join(lines)  # a daemon asked to stop: exit 0
    assert took < 2, took
