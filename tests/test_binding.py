"""A relay under the attacker's control, binding attacks (issue 9, points 1, 2, 7, 8):
objects copied between repositories, a pusher's history forked, object sizes, and
replayed requests. Real CLI clients on file:// relays the tests tamper with by hand.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cluster import Cluster


def cid_of(client) -> str:
    import sqlite3
    db = sqlite3.connect(next(client.state.rglob("state.sqlite")))
    try:
        return db.execute("SELECT value FROM meta WHERE key = 'client_id'").fetchone()[0]
    finally:
        db.close()


def ctl(client, *args):
    return subprocess.run([sys.executable, "-m", "escale.cli.ctl", "-c", str(client.conf), *args],
                          capture_output=True, text=True, env=client.cluster.env, timeout=300)


def copy_object(src: Cluster, dst: Cluster, name: str) -> None:
    (dst.relay / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src.relay / name, dst.relay / name)


def repo_id(cl: Cluster) -> str:
    return json.loads((cl.relay / "escale.json").read_text())["id"]


# -- 1. cross-repository injection ---------------------------------------------------------
@pytest.mark.parametrize("secret", ["raw key file", "encryption off"])
def test_objects_copied_from_another_repository_are_refused(tmp_path, secret):
    """Two repositories share a raw key file (or are both plaintext): the relay copies a
    member card and an update from the first to the second. The second's client must
    refuse both, naming them, and write nothing."""
    if secret == "raw key file":
        key = tmp_path / "key"
        key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        key.chmod(0o600)
        extra = f"passphrase = {key}\n"
    else:
        extra = "encryption = off\n"
    one, two = Cluster(tmp_path / "one"), Cluster(tmp_path / "two")
    a = one.add("a", extra=extra)
    b = two.add("b", extra=extra)
    a.write("planted.txt", "from repository one")
    a.once()
    b.once()
    acid = cid_of(a)
    names = [n for n in one.relay_objects() if n.startswith((f"m/{acid}", f"u/{acid}/"))]
    assert f"m/{acid}" in names and f"u/{acid}/1" in names
    for name in names:
        copy_object(one, two, name)
    r = b.once(check=False)
    assert r.code == 1, r
    assert f"m/{acid}" in r.err, r  # the foreign card is refused by name
    assert "another repository" in r.err, r
    assert not b.path("planted.txt").exists()


def test_pinned_repository_id_refuses_another_repository(tmp_path):
    """A relay pre-seeds a header copied from another repository with the same
    passphrase: a client with 'repository id' pinned refuses it (exit 3), and refuses
    to create a new repository on an empty relay."""
    pw = tmp_path / "pw"
    pw.write_text("one passphrase for two repositories\n")
    pw.chmod(0o600)
    one, two = Cluster(tmp_path / "one"), Cluster(tmp_path / "two")
    a = one.add("a", extra=f"passphrase = {pw}\n")
    a.once()
    b1 = two.add("b1", extra=f"passphrase = {pw}\n")
    b1.once()
    wanted = repo_id(two)
    st = ctl(b1, "status")
    assert st.returncode == 0 and f"repository id {wanted}" in st.stdout, st
    assert "last signed activity 20" in st.stdout, st  # each member's latest signed time
    # the relay swaps in the other repository's header (same passphrase: the key check passes)
    shutil.rmtree(two.relay)
    copy_object(one, two, "escale.json")
    b2 = two.add("b2", extra=f"passphrase = {pw}\nrepository id = {wanted}\n")
    r = b2.once(check=False)
    assert r.code == 3, r
    assert f"holds repository {repo_id(one)}, not {wanted}" in r.err and "repository id" in r.err, r
    assert not [n for n in two.relay_objects() if n != "escale.json"]  # nothing written
    shutil.rmtree(two.relay)
    two.relay.mkdir()
    r = b2.once(check=False)
    assert r.code == 3 and "holds no repository" in r.err, r
    assert not (two.relay / "escale.json").exists()


def test_format_1_repository_is_refused_clearly(tmp_path):
    cl = Cluster(tmp_path)
    cl.relay.mkdir()
    (cl.relay / "escale.json").write_text(json.dumps({"format": 1, "hash": "sha256", "encryption": "off"}))
    a = cl.add("a", extra="encryption = off\n")
    a.write("f.txt", "x")
    r = a.once(check=False)
    assert r.code == 3, r
    assert "format 1" in r.err and "new, empty relay folder" in r.err, r
    assert sorted(cl.relay_objects()) == ["escale.json"]


# -- 2. forking a pusher's history --------------------------------------------------------
class _Keeper(threading.Thread):
    """The attacker: hard-links every temporary file written into ``folder`` while it
    is being written, so it keeps the finished bytes after the writer removes it."""

    def __init__(self, folder: Path, into: Path):
        super().__init__(daemon=True)
        self.folder, self.into, self.stop = folder, into, threading.Event()
        into.mkdir(parents=True, exist_ok=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                names = os.listdir(self.folder)
            except FileNotFoundError:
                continue
            for n in names:
                if n.startswith(".") and not (self.into / n).exists():
                    try:
                        os.link(self.folder / n, self.into / n)
                    except OSError:
                        pass


def test_relay_cannot_fork_a_pushers_history(tmp_path):
    """The relay blocks A's final rename of u/A/2 (a folder in the way), keeps A's
    finished temporary file, then removes the folder. A must republish the very same
    update (never a different one under seq 2), so B (served the kept copy) and C
    (served A's second write) apply the same content."""
    cl = Cluster(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("fork me not\n")
    pw.chmod(0o600)
    a, b, c = (cl.add(n, extra=f"passphrase = {pw}\n") for n in "abc")
    cl.round("b", "c")
    a.write("first.txt", "seq 1")
    cl.round("a", "b", "c")
    acid = cid_of(a)
    udir = cl.relay / "u" / acid
    (udir / "2").mkdir(parents=True)  # the final rename of u/A/2 will fail
    (udir / "2" / "x").write_text("in the way")
    for i in range(12):  # a large enough update that the attacker sees its temporary file
        a.write(f"batch/{i}.bin", os.urandom(3 << 20))
    a.write("doc.txt", "version one")
    keeper = _Keeper(udir, tmp_path / "kept")
    keeper.start()
    try:
        r = a.once(check=False)
    finally:
        keeper.stop.set()
        keeper.join()
    assert r.code == 2, r  # the relay failed the write
    kept = [p for p in (tmp_path / "kept").iterdir() if p.stat().st_size > (30 << 20)]
    assert kept, "the attacker did not catch A's temporary file"
    shutil.rmtree(udir / "2")
    a.write("doc.txt", "version two, changed after the failed write")
    a.once()
    assert (udir / "2").is_file()
    genuine = tmp_path / "genuine"
    shutil.copyfile(udir / "2", genuine)
    shutil.copyfile(kept[0], udir / "2")  # B is served the copy the relay kept
    b.once(check=False)
    shutil.copyfile(genuine, udir / "2")  # C is served A's second write
    c.once(check=False)
    assert b.path("doc.txt").exists() and c.path("doc.txt").exists()
    assert b.path("doc.txt").read_bytes() == c.path("doc.txt").read_bytes(), "A's history was forked"
    # and everyone converges on A's latest state
    cl.round("a", "b", "c", rounds=2)
    assert b.path("doc.txt").read_text() == c.path("doc.txt").read_text() == \
        "version two, changed after the failed write"


def test_fork_is_detected_by_the_pusher_and_the_pullers(tmp_path):
    """A's state is restored from a backup taken before its update 2 (or a relay
    served two versions): A publishes another update 2. A sees B's acknowledgement
    carry another digest — a fork, reported and not collected — and C, which applied
    the second version, reports that B applied another content under the same name."""
    cl = Cluster(tmp_path)
    a, b, c = (cl.add(n, extra="encryption = off\n") for n in "abc")
    cl.round("b", "c")
    a.write("first.txt", "seq 1")
    cl.round("a", "b", "c", "a")
    backup = tmp_path / "a-state-backup"
    shutil.copytree(a.state, backup)
    a.write("doc.txt", "version one")
    a.once()
    b.once()
    assert b.path("doc.txt").read_text() == "version one"
    shutil.rmtree(a.state)
    shutil.copytree(backup, a.state)  # A forgets it published update 2
    a.write("doc.txt", "version two")
    a.once()  # a different u/A/2 replaces the first
    r = c.once(check=False)
    assert c.path("doc.txt").read_text() == "version two"
    assert r.code == 1 and "fork" in r.err and f"u/{cid_of(a)}/2" in r.err, r
    r = a.once(check=False)
    assert r.code == 1 and "fork" in r.err and f"a/{cid_of(b)}" in r.err, r
    assert (cl.relay / "u" / cid_of(a) / "2").is_file()  # not collected


# -- 7. padding ----------------------------------------------------------------------------
def test_padding_is_on_by_default_and_hides_name_lengths(tmp_path):
    """With the default settings, a member card's size does not tell the length of
    its client's name, and an update's size is a Padmé size class, not the file's."""
    from escale.encryption import HEADER_LEN, TAG, padme

    pw = tmp_path / "pw"
    pw.write_text("pad me\n")
    pw.chmod(0o600)
    cl = Cluster(tmp_path)
    a = cl.add("a", extra=f"passphrase = {pw}\n")
    long = cl.add("a-much-longer-client-name-than-the-other", extra=f"passphrase = {pw}\n")
    a.write("f.bin", os.urandom(100_000))
    a.once()
    long.once()
    sizes = cl.relay_objects()
    assert sizes[f"m/{cid_of(a)}"] == sizes[f"m/{cid_of(long)}"]
    update = sizes[f"u/{cid_of(a)}/1"]
    plain = update - HEADER_LEN - TAG  # one chunk
    assert plain == padme(plain) and plain > 100_000


# -- 8. request replay ----------------------------------------------------------------------
def test_replayed_request_costs_nothing(tmp_path):
    """A late joiner asks A for a file's content (q/<late>); once it has it, the relay
    puts the old request back. A must not upload the content again, and says so."""
    cl = Cluster(tmp_path)
    a, c = cl.add("a", extra="encryption = off\n"), cl.add("c", extra="encryption = off\n")
    a.write("big.bin", os.urandom(1 << 20))
    cl.round("a", "c", "a", "c", "a")
    assert not [n for n in cl.relay_objects() if n.startswith("u/")]  # collected: snapshots only
    late = cl.add("late", extra="encryption = off\n")
    late.once()
    q = cl.relay / "q" / cid_of(late)
    assert q.is_file()
    old_request = tmp_path / "old-request"
    shutil.copyfile(q, old_request)
    for _ in range(3):
        a.once()
        c.once()
        late.once()
    assert late.path("big.bin").read_bytes() == a.path("big.bin").read_bytes()
    assert not q.exists()
    cl.round("a", "c", "late", "a")
    before = cl.relay_bytes()
    q.parent.mkdir(exist_ok=True)
    shutil.copyfile(old_request, q)  # the relay replays the old request
    r = a.once(check=False)
    assert not [n for n in cl.relay_objects() if n.startswith("u/")], "the content was uploaded again"
    assert cl.relay_bytes() <= before + os.path.getsize(q)
    assert r.code == 1 and f"q/{cid_of(late)}" in r.err and "replayed" in r.err, r
