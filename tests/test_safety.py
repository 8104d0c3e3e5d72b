"""Regressions for data-loss and liveness defects found in review (each reproduced first)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from cluster import update_objects


def test_unreadable_or_changing_file_is_not_published_as_deleted(cluster, monkeypatch):
    """A file that cannot be hashed this cycle is neither sent nor reported deleted."""
    from escale.checksum import FileChangedError
    from escale.folder import Folder
    from escale.manager import Manager
    from escale.relay import LocalMount

    a, b = cluster.add("a"), cluster.add("b")
    a.write("busy.log", "v1")
    cluster.round(rounds=2)
    real = Folder.fill_hash

    def flaky(self, lf):
        if lf.path == "busy.log":
            raise FileChangedError("busy.log is being written")
        return real(self, lf)

    monkeypatch.setattr(Folder, "fill_hash", flaky)
    a.write("busy.log", "v2 being appended")
    m = Manager(LocalMount, repository=str(a.folder), address=cluster.relay_address, name="repo",
                clientname="a", state_dir=next(a.state.rglob("state.sqlite")).parent, encryption="off")
    report = m.run(once=True)
    assert report.deleted == 0 and not report.errors
    b.once()
    assert b.path("busy.log").read_text() == "v1"  # not moved to B's trash
    assert not list((b.folder / ".escale").rglob("busy.log"))


def test_replaced_file_keeps_a_copy_in_the_trash(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    a.write("doc.txt", "precious v1")
    cluster.round(rounds=2)
    a.write("doc.txt", "")  # truncated by mistake
    cluster.round(rounds=2)
    assert b.path("doc.txt").read_text() == ""
    assert [p.read_text() for p in (b.folder / ".escale" / "trash").rglob("doc.txt")] == ["precious v1"]


def test_a_held_back_version_is_not_silently_superseded(cluster):
    """B refuses A's v2 (w- flag) and edits its own v1: A's v2 must survive somewhere."""
    a, b = cluster.add("a"), cluster.add("b")
    a.write("f.txt", "v1")
    cluster.round(rounds=2)
    subprocess.run([sys.executable, "-m", "escale.cli.ctl", "-c", str(b.conf), "access", "f.txt", "w-"],
                   check=True, env=cluster.env, capture_output=True)
    a.write("f.txt", "v2 by a")
    cluster.round(rounds=1)
    assert b.path("f.txt").read_text() == "v1"
    b.write("f.txt", "v1 edited by b")
    cluster.round(rounds=3)
    contents = {p.read_text() for p in a.folder.glob("f*.txt")} | \
        {p.read_text() for p in (a.folder / ".escale").rglob("f*.txt")}
    assert "v2 by a" in contents, contents


def test_a_missing_blob_does_not_stall_the_puller(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    b.once()
    a.write("big.bin", os.urandom(5 << 20))
    a.write("small.txt", "s")
    a.once()
    for blob in [n for n in cluster.relay_objects() if n.startswith("b/")]:
        (cluster.relay / blob).unlink()
    b.write("mine.txt", "from b")
    r = b.once(check=False)
    assert r.code == 1 and "big.bin" in r.err, r
    assert b.path("small.txt").exists()
    assert "1 sent" in r.out  # B's own push still happened
    for _ in range(3):
        a.once(check=False)
        b.once(check=False)
    assert b.path("big.bin").read_bytes() == a.path("big.bin").read_bytes()
    assert a.path("mine.txt").read_text() == "from b"
    a.once()
    assert update_objects(cluster) == []


def test_file_dated_after_2262(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    p = a.write("future.txt", "from the future")
    os.utime(p, ns=(2 ** 63 + 10**18, 2 ** 63 + 10**18))  # year ~2300
    cluster.round(rounds=2)
    assert b.path("future.txt").read_text() == "from the future"
    cluster.round(rounds=1)  # and every later cycle still works


def test_altered_repository_header_is_refused(tmp_path):
    from cluster import Cluster

    cl = Cluster(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("secret")
    pw.chmod(0o600)
    a = cl.add("a", extra=f"passphrase = {pw}\n")
    a.write("f.txt", "x")
    a.once()
    header_path = cl.relay / "escale.json"
    header = json.loads(header_path.read_text())
    header_path.write_text(json.dumps(dict(header, hash="md5")))  # make everyone re-hash and re-send
    r = a.once(check=False)
    assert r.code == 3 and "altered" in r.err, r
    # an unencrypted relay has no key to check the header with: the pinned copy catches it
    plain = Cluster(tmp_path / "plain")
    p = plain.add("p")
    p.once()
    hp = plain.relay / "escale.json"
    hp.write_text(json.dumps(dict(json.loads(hp.read_text()), hash="sha512")))
    r = p.once(check=False)
    assert r.code == 1 and "escale.json" in r.err and "differs from the header" in r.err, r


def test_forget_removes_every_object_of_the_forgotten_client(cluster):
    a, dead = cluster.add("a"), cluster.add("dead")
    dead.write("d.txt", "x")
    cluster.round(rounds=1)
    dead_ids = {n.split("/")[1] for n in cluster.relay_objects() if n.startswith("m/")}
    r = subprocess.run([sys.executable, "-m", "escale.cli.ctl", "-c", str(a.conf), "forget", "dead"],
                       env=cluster.env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    left = [n for n in cluster.relay_objects() if n.count("/") and n.split("/")[1] in dead_ids
            and n.startswith(("u/", "b/", "s/", "a/", "q/", "r/"))]
    mine = [n for n in cluster.relay_objects() if n.startswith("m/")]
    assert len(mine) == 1 and not [n for n in left if n.split("/")[1] != mine[0].split("/")[1]]
    assert a.once().code == 0
