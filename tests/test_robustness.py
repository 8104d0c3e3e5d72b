"""Acceptance tests: crashes, hostile relay content, signals, exit codes, library use.

Everything runs real ``python -m escale`` processes against a real ``file://`` relay
(see cluster.py); nothing is mocked.
"""
from __future__ import annotations

import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from cluster import RELAY_TMP, Client, Cluster, kill9, temp_files, tree, update_objects, wait_for

SMALL = 200_000
BIG = 40_000_000


# --------------------------------------------------------------------------- helpers

def populate(client: Client, n_small: int = 40) -> None:
    """~40 files of 200 KB in a few folders, one 40 MB file, two empty folders."""
    for i in range(n_small):
        client.write(f"d{i % 4}/sub{i % 3}/f{i:02d}.bin", os.urandom(SMALL))
    client.write("big.bin", os.urandom(BIG))
    (client.folder / "empty1").mkdir()
    (client.folder / "nested" / "empty2").mkdir(parents=True)


def relay_temps(cluster: Cluster, under: tuple[str, ...] = ()) -> list[Path]:
    """Temporary (unfinished) relay objects, optionally only under the given top folders."""
    found = [Path(d) / f for d, _, fs in os.walk(cluster.relay) for f in fs if f.startswith(RELAY_TMP)]
    return [p for p in found if not under or p.relative_to(cluster.relay).parts[0] in under]


def uploading(cluster: Cluster) -> bool:
    """A blob or an update is being written to the relay right now."""
    return bool(relay_temps(cluster, ("b", "u")))


def local_temps(folder: Path) -> list[str]:
    return temp_files(folder)


def state_db(client: Client) -> Path:
    found = list(client.state.rglob("state.sqlite"))
    assert len(found) == 1, found
    return found[0]


def meta(client: Client) -> dict[str, str]:
    db = sqlite3.connect(state_db(client))
    try:
        return dict(db.execute("SELECT key, value FROM meta"))
    finally:
        db.close()


def applied(client: Client) -> dict[str, tuple[int, str]]:
    db = sqlite3.connect(state_db(client))
    try:
        return {p: (s, d) for p, s, d in db.execute("SELECT pusher, seq, digest FROM applied")}
    finally:
        db.close()


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=60)
    return out, err


def kill_when(proc: subprocess.Popen, predicate, timeout: float = 15) -> bool:
    """SIGKILL ``proc`` as soon as ``predicate()`` holds; True if it was still running then."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if predicate():
            break
        time.sleep(0.002)
    alive = proc.poll() is None
    kill9(proc)
    finish(proc)
    return alive


def kill_after(proc: subprocess.Popen, delay: float) -> bool:
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        pass
    alive = proc.poll() is None
    kill9(proc)
    finish(proc)
    return alive


def converge(cluster: Cluster, *names: str, rounds: int = 3) -> None:
    for _ in range(rounds):
        for n in names:
            cluster.clients[n].once()


# --------------------------------------------------------------------------- 1. kill -9 of a pusher

def test_kill9_pusher_then_converges(cluster):
    a = cluster.add("A")
    b = cluster.add("B")
    b.once()                       # B is a known puller from A's first update on
    populate(a)
    before = a.tree()
    assert len([v for v in before.values() if v[0] == "file"]) == 41

    kills: list[str] = []
    mid_put = 0
    # Kills landing at chosen moments (mid blob upload, mid update upload) and at fixed delays.
    schedule = [("relay-temp", None), ("delay", 0.05), ("relay-temp", None), ("delay", 0.25),
                ("update-object", None), ("delay", 0.4), ("delay", 0.7), ("delay", 1.0), ("delay", 1.5)]
    for kind, delay in schedule:
        proc = a.start("--once")
        if kind == "relay-temp":
            killed = kill_when(proc, lambda: uploading(cluster) or bool(update_objects(cluster)))
            # only a kill while a blob/update was being written counts as "mid put"
            mid_put += killed and uploading(cluster)
        elif kind == "update-object":
            killed = kill_when(proc, lambda: any(n.startswith("u/") for n in update_objects(cluster)))
        else:
            killed = kill_after(proc, delay)
        kills.append(f"{kind}:{delay}:{'killed' if killed else 'finished'}")
        assert a.tree() == before, f"A's folder changed after {kills[-1]}"
    print("kills:", kills)
    assert mid_put >= 1, f"no kill landed during a relay upload: {kills}"

    # Normal runs from here: A and B alternate until converged, then A collects.
    converge(cluster, "A", "B", rounds=3)
    a.once()

    assert a.tree() == before, "A's own files were modified"
    assert b.tree() == a.tree()
    assert local_temps(a.folder) == []
    assert local_temps(b.folder) == []
    # a killed writer's interrupted uploads are removed by its next run
    assert relay_temps(cluster) == [], [p.relative_to(cluster.relay).as_posix() for p in relay_temps(cluster)]
    assert update_objects(cluster) == [], cluster.relay_objects()
    # a further round is idle: nothing re-sent, nothing re-published
    r = a.once()
    assert "0 sent" in r.out, r
    assert update_objects(cluster) == []


def test_kill9_pusher_between_upload_and_commit(cluster):
    """Kill A after its update object is on the relay but before its state recorded it.

    To land the kill in that window deterministically, the test holds a write lock on A's
    real state database while A uploads: A finishes the upload, then blocks on its commit,
    and is killed there. The next run must adopt the update (not publish it twice)."""
    a = cluster.add("A")
    b = cluster.add("B")
    b.once()
    a.write("first.txt", "first")
    a.once()                                   # creates A's state and its client id
    landed = False
    for attempt in range(3):                   # retried only if A outran the test
        cid, seq = meta(a)["client_id"], int(meta(a)["own_seq"])
        a.write(f"late{attempt}.bin", os.urandom(BIG // 2))
        a.write(f"late{attempt}.txt", "late")
        target = cluster.relay / "u" / cid / str(seq + 1)
        proc = a.start("--once")
        db = sqlite3.connect(state_db(a), isolation_level=None, timeout=10)
        try:
            assert wait_for(lambda: proc.poll() is not None or uploading(cluster), timeout=20,
                            interval=0.002)
            if proc.poll() is not None:
                finish(proc)
                continue
            db.execute("BEGIN IMMEDIATE")      # A's next commit now waits (up to 5 s)
            assert wait_for(lambda: target.exists(), timeout=4, interval=0.002), "update never appeared"
            if proc.poll() is not None:
                finish(proc)
                db.execute("ROLLBACK")
                continue
            kill9(proc)
            finish(proc)
            assert db.execute("SELECT value FROM meta WHERE key='own_seq'").fetchone()[0] == str(seq)
            db.execute("ROLLBACK")
            landed = True
            break
        finally:
            if proc.poll() is None:
                kill9(proc)
            db.close()
    assert landed, "could not stop A between its upload and its commit in 3 attempts"
    before = a.tree()

    r = a.once()
    assert f"completed update {seq + 1} interrupted by a crash" in r.err, r
    assert "0 sent" in r.out, r                # adopted, not published a second time
    assert f"u/{cid}/{seq + 1}" in update_objects(cluster)
    assert not (cluster.relay / "u" / cid / str(seq + 2)).exists()
    b.once()
    a.once()
    assert a.tree() == before == b.tree()
    assert update_objects(cluster) == [] and relay_temps(cluster) == []
    assert local_temps(a.folder) == [] and local_temps(b.folder) == []


def test_killed_pusher_leaves_no_partial_object(cluster):
    """After a pusher killed mid-upload runs again, none of its partial objects remain."""
    a = cluster.add("A")
    b = cluster.add("B")
    b.once()
    a.write("big.bin", os.urandom(BIG))
    a.write("small.txt", "small")
    proc = a.start("--once")
    assert kill_when(proc, lambda: uploading(cluster)), "A finished before it could be killed"
    partial = relay_temps(cluster, ("b", "u"))
    assert partial, "the kill did not leave an interrupted upload"
    a.once()                                   # recovery: the interrupted update is rolled back, redone
    b.once()
    a.once()
    assert b.tree() == a.tree()
    assert relay_temps(cluster) == [], [(p.relative_to(cluster.relay).as_posix(), p.stat().st_size)
                                        for p in relay_temps(cluster)]
    assert update_objects(cluster) == []


# --------------------------------------------------------------------------- 2. kill -9 of a puller

def test_kill9_puller_then_converges(cluster):
    a = cluster.add("A")
    b = cluster.add("B")
    b.once()
    populate(a)
    before = a.tree()
    a.once()
    assert any(n.startswith("u/") for n in update_objects(cluster))

    kills: list[str] = []
    mid_download = 0
    schedule = [("local-temp", None), ("delay", 0.05), ("local-temp", None), ("delay", 0.2),
                ("delay", 0.3), ("delay", 0.5), ("delay", 1.0), ("delay", 1.5)]
    for kind, delay in schedule:
        proc = b.start("--once")
        if kind == "local-temp":
            killed = kill_when(proc, lambda: bool(local_temps(b.folder)))
            mid_download += killed and bool(local_temps(b.folder))
        else:
            killed = kill_after(proc, delay)
        kills.append(f"{kind}:{delay}:{'killed' if killed else 'finished'}")
        # nothing partial under a real name: every file B has is one of A's, byte for byte
        for rel, v in b.tree().items():
            if ".escale-tmp-" in rel:
                continue                       # a killed run's temporary: removed by the next run
            assert rel in before, f"unexpected {rel} in B after {kills[-1]}"
            if v[0] == "file":
                assert v[1] == before[rel][1], f"{rel} partially written after {kills[-1]}"
    print("kills:", kills)
    assert mid_download >= 1, f"no kill landed during a download: {kills}"

    converge(cluster, "B", "A", rounds=2)

    assert a.tree() == before
    assert b.tree() == before
    assert local_temps(b.folder) == []
    assert local_temps(a.folder) == []
    assert update_objects(cluster) == [], cluster.relay_objects()


# --------------------------------------------------------------------------- 3. forged relay content

def _forge(cluster: Cluster, cid: str, seq: int, prev: str, files: list[tuple[str, bytes]],
           renames: list[tuple[str, str, bytes]] = ()) -> str:
    """Write update ``u/<cid>/<seq>`` by hand: ``files`` travel inline; ``renames`` are
    (path, origin, content) entries without content, to be copied from ``origin``."""
    from escale.encryption import Plain
    from escale.index import FILE, Entry
    from escale.protocol import INLINE, NONE, UPDATE_MAGIC, Item, ObjectStore, UpdateHeader, update_name
    from escale.relay import LocalMount

    from escale.state import State

    relay = LocalMount(f"file://{cluster.relay}")
    relay.open()
    # the forger holds A's signing key: a compromised or malicious member, the worst case
    # for the path checks (without the key the signature check refuses the object first)
    owner = next(c for c in cluster.clients.values() if meta(c)["client_id"] == cid)
    state = State(state_db(owner).parent)
    import json
    repo_id = json.loads((cluster.relay / "escale.json").read_text())["id"]
    store = ObjectStore(relay, Plain(), state.signing_key(), repository=repo_id)
    state.close()
    now = time.time_ns()
    items = [Item(Entry(path, FILE, hashlib.sha256(data).hexdigest(), len(data), now, 0o644, None, cid), INLINE)
             for path, data in files]
    items += [Item(Entry(path, FILE, hashlib.sha256(data).hexdigest(), len(data), now, 0o644, None, cid,
                         origin=origin), NONE) for path, origin, data in renames]
    header = UpdateHeader(cid, seq, prev, time.time(), [], None, items)
    head = ObjectStore.encode_header(UPDATE_MAGIC, header.to_dict())
    name = update_name(cid, seq)
    body = b"".join(d for _, d in files)
    store.put_framed(name, head, [io.BytesIO(body)], len(body))
    return name


def test_forged_relay_paths_are_refused(cluster, tmp_path):
    a = cluster.add("A")
    b = cluster.add("B")
    b.once()
    a.write("first.txt", "hello")
    a.once()
    b.once()
    a.once()                                   # collects update 1: the forger must extend the chain
    assert b.path("first.txt").read_text() == "hello"

    ma = meta(a)
    cid, seq, digest = ma["client_id"], int(ma["own_seq"]), ma["own_digest"]
    assert applied(b)[cid] == (seq, digest), "B's chain position differs from A's own record"

    outside = Path("/tmp") / f"escale-forge-{uuid.uuid4().hex}"
    outside.mkdir()
    try:
        secret = cluster.base / "secret.txt"     # outside B's folder: must never be read into it
        secret.write_bytes(b"outside secret")
        before_parent = sorted(os.listdir(cluster.base))
        name = _forge(cluster, cid, seq + 1, digest, [
            ("../evil.txt", b"evil 1"),
            (f"{outside}/abs.txt", b"evil 2"),
            ("a/../../evil2.txt", b"evil 3"),
            (".escale/x", b"evil 4"),
            (".Escale/y", b"evil 5"),
            ("ok.txt", b"legit content"),
        ], renames=[("stolen.txt", "../secret.txt", b"outside secret")])
        r = b.once(check=False)
        assert r.code == 1, r
        assert name in r.err, r
        for bad in ("../evil.txt", f"{outside}/abs.txt", "a/../../evil2.txt", ".escale/x", ".Escale/y",
                    "stolen.txt"):
            assert f"refused unsafe path {bad!r}" in r.err, (bad, r.err)
        assert b.path("ok.txt").read_bytes() == b"legit content"
        assert not b.path("stolen.txt").exists()
        assert secret.read_bytes() == b"outside secret"
        # nothing landed outside B's folder, nor in its state folder
        assert sorted(os.listdir(cluster.base)) == before_parent
        assert not (cluster.base / "evil.txt").exists() and not (cluster.base / "evil2.txt").exists()
        assert not (tmp_path.parent / "evil.txt").exists() and not (tmp_path.parent / "evil2.txt").exists()
        assert os.listdir(outside) == []
        assert not (b.folder / ".escale" / "x").exists()
        assert not (b.folder / "a").exists()

        # a symlink inside B's folder pointing outside: an entry through it is refused
        escape = tmp_path / "outside-dir"
        escape.mkdir()
        (escape / "target.txt").write_text("outside file")
        os.symlink(escape, b.folder / "link")
        os.symlink(escape / "target.txt", b.folder / "filelink")
        _, digest2 = applied(b)[cid]
        name2 = _forge(cluster, cid, seq + 2, digest2, [("link/x.txt", b"through the link"),
                                                           ("link/deeper/y.txt", b"through the link"),
                                                           ("filelink", b"over the file link"),
                                                           ("ok2.txt", b"second legit")])
        r = b.once(check=False)
        assert r.code == 1, r
        assert name2 in r.err and "'link/x.txt'" in r.err and "'link/deeper/y.txt'" in r.err, r
        assert sorted(os.listdir(escape)) == ["target.txt"]
        assert (escape / "target.txt").read_text() == "outside file"
        assert b.path("ok2.txt").read_bytes() == b"second legit"
        assert local_temps(b.folder) == []
    finally:
        for p in sorted(outside.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        outside.rmdir()


# --------------------------------------------------------------------------- 4. signals, single instance

def _started(cluster: Cluster, client: Client, proc: subprocess.Popen) -> None:
    """Wait until a loop-mode client has done at least one full cycle (its ack is on the relay)."""
    def ready():
        assert proc.poll() is None, finish(proc)
        return any(n.startswith("a/") for n in cluster.relay_objects())
    assert wait_for(ready, timeout=20)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_daemon_stops_on_sigterm_with_exit_0(cluster, sig):
    """A daemon asked to stop exits 0 (systemd counts anything else as a failure)."""
    a = cluster.add("A")
    a.write("x.txt", "x")
    proc = a.start()
    try:
        _started(cluster, a, proc)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            kill9(proc)
    assert proc.returncode == 0, (proc.returncode, out, err)
    assert took < 5, took
    assert signal.Signals(sig).name in err


def test_sigterm_during_once_cycle_exit_5(cluster):
    """SIGTERM while a --once run is publishing a large file: exit 5, nothing broken."""
    a = cluster.add("A")
    b = cluster.add("B")
    b.once()
    populate(a, n_small=4)
    before = a.tree()
    proc = a.start("--once")
    assert wait_for(lambda: proc.poll() is not None or uploading(cluster), timeout=20, interval=0.002)
    assert proc.poll() is None, ("A finished before its upload was seen", finish(proc))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 5, (proc.returncode, out, err)
    assert "SIGTERM" in err
    assert local_temps(a.folder) == []
    converge(cluster, "A", "B", rounds=2)
    a.once()
    assert a.tree() == before == b.tree()
    assert update_objects(cluster) == []


def test_second_instance_refused(cluster):
    a = cluster.add("A")
    a.write("x.txt", "x")
    proc = a.start()
    try:
        _started(cluster, a, proc)
        r = a.once(check=False, timeout=30)
        assert r.code == 4, r
        assert "already being synced" in r.err, r
        assert str(proc.pid) in r.err, r       # the message names the running process
        assert proc.poll() is None             # the first instance is unaffected
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                kill9(proc)
    assert proc.returncode == 0
    # once the first instance is gone, the lock is free again
    a.once()


# --------------------------------------------------------------------------- 5. relay unreachable

def test_relay_unreachable_exit_2(cluster):
    from escale.config import set_option

    a = cluster.add("A")
    a.write("keep/me.txt", "precious")
    a.write("other.bin", os.urandom(5000))
    blocker = cluster.base / "not-a-folder"
    blocker.write_text("I am a regular file")
    set_option(a.conf, "repo", "relay address", f"file://{blocker}/relay")
    before = a.tree()

    r = a.once(check=False)
    assert r.code == 2, r
    assert "relay" in (r.err + r.out).lower()
    assert a.tree() == before
    assert blocker.read_text() == "I am a regular file"
    assert local_temps(a.folder) == []

    set_option(a.conf, "repo", "relay address", f"file://{cluster.relay}")
    r = a.once()
    assert "2 sent" in r.out, r
    assert a.tree() == before
    assert any(n.startswith("u/") for n in update_objects(cluster))


# --------------------------------------------------------------------------- 6. configuration error

def test_config_error_exit_3(cluster):
    a = cluster.add("A")
    text = a.conf.read_text()
    assert "local path = " in text
    a.conf.write_text(text.replace("local path = ", "lcoal path = "))
    r = a.once(check=False)
    assert r.code == 3, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    line = lines[0]
    assert str(a.conf) in line and "[repo]" in line and "lcoal path" in line, line
    assert "did you mean 'local path'" in line, line
    assert r.out == ""
    assert not cluster.relay.exists()          # nothing was started


# --------------------------------------------------------------------------- 7. library API

def test_library_manager_run(cluster, tmp_path):
    from escale.errors import Terminated
    from escale.manager import Manager
    from escale.relay import LocalMount

    a = cluster.add("A")
    lib_folder = tmp_path / "lib-folder"
    m = Manager(LocalMount, repository=str(lib_folder), address=f"file://{cluster.relay}",
                state_dir=str(tmp_path / "lib-state"), refresh=1, name="lib", encryption="off")
    errors: list[BaseException] = []

    def work():
        try:
            m.run()
        except Terminated:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        assert wait_for(lambda: (cluster.relay / "escale.json").exists(), timeout=20), errors
        a.write("from-cli/hello.txt", "hello library")
        a.once()
        assert wait_for(lambda: (lib_folder / "from-cli" / "hello.txt").exists(), timeout=20), errors
        assert (lib_folder / "from-cli" / "hello.txt").read_text() == "hello library"
    finally:
        m.stop.set()
        t.join(5)
    assert not t.is_alive(), "Manager.run() did not return within 5 s of stop"
    assert errors == []
    assert tree(lib_folder) == a.tree()

    # address + directory: objects go under <address path>/<directory>
    absrelay = tmp_path / "abs"
    absrelay.mkdir()  # a file:// relay folder is created only inside an existing folder
    folder2 = tmp_path / "lib-folder2"
    folder2.mkdir()
    (folder2 / "f.txt").write_text("sub relay")
    m2 = Manager(LocalMount, repository=str(folder2), address=f"file://{absrelay}", directory="sub",
                 state_dir=str(tmp_path / "lib-state2"), refresh=1, name="lib2", encryption="off")
    report = m2.run(once=True)
    assert report.sent == 1 and not report.errors and report.relay_error is None, report
    assert os.listdir(absrelay) == ["sub"]
    names = [p.relative_to(absrelay / "sub").as_posix() for p in (absrelay / "sub").rglob("*") if p.is_file()]
    assert "escale.json" in names and any(n.startswith("u/") for n in names), names
