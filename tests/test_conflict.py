"""Conflicts: copies are never overwritten, long names fit, failures stay visible, any
name's bytes travel (issue 8, points 3, 4, 5 and 12). Every scenario runs the real CLI."""
from __future__ import annotations

import os
import shutil
import sqlite3
import time

import pytest

from cluster import tree, update_objects


def client_id(client) -> str:
    db = sqlite3.connect(next(client.state.rglob("state.sqlite")))
    try:
        return db.execute("SELECT value FROM meta WHERE key = 'client_id'").fetchone()[0]
    finally:
        db.close()


def test_an_edited_conflict_copy_is_not_overwritten_by_a_lagging_client(cluster):
    """Issue 8.3: B and C edit p.txt concurrently, B keeps C's version as a conflict copy
    and edits it; B also still waits for content C renamed. A, lagging, must apply C's
    update before B's (B had seen it) and never put C's version back over B's edit."""
    a, x, y = cluster.add("a"), cluster.add("x"), cluster.add("y")
    old = time.time() - 1000
    a.write("p.txt", "original p", mtime=old)
    a.write("r.txt", "original r", mtime=old)
    cluster.round(rounds=2)
    # the client drained first by A (smaller id) plays B: the order that lost the edit
    b, c = sorted((x, y), key=client_id)
    c.write("p.txt", "C's p", mtime=old + 100)
    os.rename(c.path("r.txt"), c.path("r2.txt"))
    c.once()
    b.write("p.txt", "B's p", mtime=old + 200)  # the later edit: B's version stays at p.txt
    b.write("r.txt", "B's r")                   # so B cannot rebuild C's r2.txt from it: a want
    b.once()
    copies = sorted(p.name for p in b.folder.glob("p.conflict-*.txt"))
    assert len(copies) == 1 and b.path(copies[0]).read_text() == "C's p", copies
    assert not b.path("r2.txt").exists()
    b.write(copies[0], "C's p, edited on B")
    b.once()
    a.once()
    assert a.path(copies[0]).read_text() == "C's p, edited on B"
    assert a.path("p.txt").read_text() == "B's p"
    for _ in range(3):
        cluster.round("a", b.name, c.name)
    for client in (a, b, c):
        assert client.path(copies[0]).read_text() == "C's p, edited on B", client.name
        assert client.path("p.txt").read_text() == "B's p"
        assert sorted(p.name for p in client.folder.glob("p.conflict-*")) == copies
    assert tree(a.folder) == tree(b.folder) == tree(c.folder)
    assert a.path("r2.txt").read_text() == "original r" and a.path("r.txt").read_text() == "B's r"
    assert update_objects(cluster) == []


def test_a_conflict_copy_never_replaces_a_different_file(cluster):
    """Issue 8.3 (the symptom): whatever the order, a conflict copy is written beside a
    file that already holds its name, never over it."""
    a, b = cluster.add("a"), cluster.add("b")
    old = time.time() - 1000
    a.write("p.txt", "original", mtime=old)
    cluster.round(rounds=2)
    a.write("p.txt", "a's edit", mtime=old + 100)
    a.once()
    b.write("p.txt", "b's edit", mtime=old + 200)  # b's version wins; a's becomes a copy
    taken = f"p.conflict-a-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(old + 100))}.txt"
    b.write(taken, "b's own file that happens to have that name")
    r = b.once()
    assert b.path(taken).read_text() == "b's own file that happens to have that name", r
    copies = {p.name: p.read_text() for p in b.folder.glob("p.conflict-a-*")}
    assert sorted(copies.values()) == ["a's edit", "b's own file that happens to have that name"], copies
    assert not list((b.folder / ".escale").rglob("p.conflict-*"))  # nothing pushed aside either
    cluster.round(rounds=3)
    assert tree(a.folder) == tree(b.folder)
    assert a.path(taken).read_text() == "b's own file that happens to have that name"


# -- point 4: conflict copies of long names ------------------------------------------------
def names_in(folder) -> list[bytes]:
    return sorted(n for n in os.listdir(os.fsencode(folder)) if n != b".escale")


def test_conflict_name_fits_name_max_and_keeps_the_extension():
    from escale.plan import conflict_name

    t = 1_700_000_000 * 10**9
    long_stem = "é" * 120  # 240 bytes
    copy = conflict_name(f"dir/{long_stem}.tar.gz", "a-rather-long-client-name", t)
    head, _, name = copy.rpartition("/")
    assert head == "dir" and len(name.encode()) <= 255 and name.endswith(".gz")
    assert "conflict-a-rather-long-client-name-20231114-221320" in name
    name.encode("utf-8")  # cut on a character boundary: still valid UTF-8
    other = conflict_name(f"dir/{long_stem}x.tar.gz", "a-rather-long-client-name", t)
    assert other != copy and len(other.rpartition("/")[2].encode()) <= 255  # still unique
    assert conflict_name(f"dir/{long_stem}.tar.gz", "a-rather-long-client-name", t) == copy  # stable
    # a conflict of a conflict copy, and a name that is not UTF-8 (bytes escaped by Python)
    again = conflict_name(copy, "other", t)
    assert again != copy and len(again.rpartition("/")[2].encode()) <= 255
    raw = conflict_name("\udce9" * 250, "b", t)
    assert len(raw.encode("utf-8", "surrogateescape")) <= 255
    # short names keep the plain shape
    assert conflict_name("dir/report.txt", "bob", t) == "dir/report.conflict-bob-20231114-221320.txt"


def test_conflicts_on_long_names_end_on_every_client(cluster):
    """Issue 8.4: a ~224-byte name, and a conflict of the conflict copy of a ~193-byte
    name: both versions end on every client, nothing is resent forever."""
    a, b = cluster.add("laptop-x1"), cluster.add("workstation")
    old = time.time() - 1000
    long224 = "é" * 110 + ".txt"           # 224 bytes
    long193 = "n" * 189 + ".txt"           # 193 bytes
    a.write(long224, "v0", mtime=old)
    a.write(long193, "v0", mtime=old)
    cluster.round(rounds=2)
    a.write(long224, "a's", mtime=old + 100)
    a.write(long193, "a's", mtime=old + 100)
    a.once()
    b.write(long224, "b's", mtime=old + 200)
    b.write(long193, "b's", mtime=old + 200)
    cluster.round(rounds=2)
    assert tree(a.folder) == tree(b.folder)
    copy193 = [n for n in os.listdir(a.folder) if n.startswith("n" * 189 + ".conflict-")]
    assert len(copy193) == 1, copy193
    # now the conflict copy itself is edited on both sides
    a.write(copy193[0], "a's copy edit", mtime=old + 300)
    a.once()
    b.write(copy193[0], "b's copy edit", mtime=old + 400)
    for _ in range(3):
        ra, rb = a.once(check=False), b.once(check=False)
        assert ra.code == 0 and rb.code == 0, (ra, rb)
    names = names_in(a.folder)
    assert names == names_in(b.folder) and tree(a.folder) == tree(b.folder)
    assert all(len(n) <= 255 and n.endswith(b".txt") for n in names)
    contents = sorted(a.path(os.fsdecode(n)).read_text() for n in names)
    assert contents == ["a's", "a's copy edit", "b's", "b's", "b's copy edit"], contents
    assert update_objects(cluster) == []
    for n in names:
        n.decode("utf-8")  # every name still valid UTF-8


# -- point 5: files escale cannot write or read stay errors -------------------------------
def bound_by_permissions(client) -> None:
    """Run this client as an ordinary user would: root ignores file permissions, so (as
    root) its processes run without the capabilities that allow it."""
    if os.geteuid() != 0:
        return
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make permissions bite")
    plain = client.cmd
    client.cmd = lambda *args: ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *plain(*args)]


def test_a_file_that_cannot_be_written_stays_an_error_until_written(cluster):
    """Issue 8.5: the synced folder is read-only on b: every cycle says which file could
    not be written (exit 1), and the file arrives once the folder is writable again."""
    a, b = cluster.add("a"), cluster.add("b")
    bound_by_permissions(b)
    a.write("f.txt", "v1")
    a.write("sub/g.txt", "v1")
    cluster.round(rounds=2)
    os.chmod(b.folder, 0o555)
    try:
        a.write("f.txt", "v2, not writable on b")
        a.write("sub/other.txt", "this one arrives")
        a.once()
        for _ in range(3):  # every cycle, not only those that receive it again
            for _ in range(2):
                r = b.once(check=False)
                assert r.code == 1 and "f.txt" in r.err, r
            a.once()
        assert b.path("f.txt").read_text() == "v1"
        assert b.path("sub/other.txt").read_text() == "this one arrives"
    finally:
        os.chmod(b.folder, 0o755)
    for _ in range(3):
        b.once(check=False)
        a.once()
    assert b.path("f.txt").read_text() == "v2, not writable on b"
    assert b.once().code == 0 and a.once().code == 0
    assert tree(a.folder) == tree(b.folder)


def test_an_unreadable_file_or_folder_stays_an_error_and_is_not_deleted(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    bound_by_permissions(a)
    a.write("secret.txt", "cannot be read")
    a.write("sub/kept.txt", "synced before")
    a.write("fine.txt", "fine")
    os.chmod(a.path("secret.txt"), 0)
    try:
        for _ in range(2):
            r = a.once(check=False)
            assert r.code == 1 and "secret.txt" in r.err, r
        b.once()
        assert b.path("fine.txt").exists() and b.path("sub/kept.txt").exists()
        assert not b.path("secret.txt").exists()
        os.chmod(a.path("sub"), 0)  # a folder that cannot be listed: its files are not "deleted"
        for _ in range(2):
            r = a.once(check=False)
            assert r.code == 1 and "sub" in r.err and "secret.txt" in r.err, r
            b.once()
        assert b.path("sub/kept.txt").read_text() == "synced before"
    finally:
        os.chmod(a.path("secret.txt"), 0o644)
        os.chmod(a.path("sub"), 0o755)
    a.once()
    b.once()
    assert b.path("secret.txt").read_text() == "cannot be read"
    assert tree(a.folder) == tree(b.folder)


# -- point 12: names that are not UTF-8 ------------------------------------------------------
def test_names_that_are_not_utf8_sync_byte_exact(tmp_path):
    from cluster import Cluster

    cl = Cluster(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("secret")
    pw.chmod(0o600)
    a, b = cl.add("a", extra=f"passphrase = {pw}\n"), cl.add("b", extra=f"passphrase = {pw}\n")
    root_a, root_b = os.fsencode(a.folder), os.fsencode(b.folder)
    log = tmp_path / "b.log"  # names reach the log file too, bytes escaped
    b.conf.write_text(f"log file = {log}\n" + b.conf.read_text())
    latin = b"caf\xe9.txt"            # Latin-1, as old archives hold
    os.makedirs(root_a + b"/dossier-\xff")
    with open(root_a + b"/" + latin, "wb") as f:
        f.write(b"latin-1 name")
    with open(root_a + b"/dossier-\xff/n\xe4me.bin", "wb") as f:
        f.write(b"inside a folder with a raw byte")
    a.write("ok.txt", "every other file syncs too")
    r = a.once()
    assert "Traceback" not in r.err, r
    r = b.once()
    assert "Traceback" not in r.err, r
    assert names_in(b.folder) == sorted([latin, b"dossier-\xff", b"ok.txt"])
    assert os.listdir(root_b + b"/dossier-\xff") == [b"n\xe4me.bin"]
    with open(root_b + b"/" + latin, "rb") as f:
        assert f.read() == b"latin-1 name"
    # an edit on either side, a concurrent edit (conflict copy), a rename and a deletion
    old = time.time() - 1000
    for root, text, t in ((root_a, b"a's edit", old + 100), (root_b, b"b's edit", old + 200)):
        with open(root + b"/" + latin, "wb") as f:
            f.write(text)
        os.utime(root + b"/" + latin, (t, t))
    for client in (a, b):
        assert "Traceback" not in client.once().err
    os.rename(root_a + b"/dossier-\xff/n\xe4me.bin", root_a + b"/dossier-\xff/n\xe4me-\xfe.bin")
    os.unlink(root_a + b"/ok.txt")
    for _ in range(2):
        for client in (a, b):
            r = client.once()
            assert "Traceback" not in r.err and "Logging error" not in r.err, r
    assert tree(a.folder) == tree(b.folder)
    names = names_in(b.folder)
    assert names == names_in(a.folder)
    copies = [n for n in names if n.startswith(b"caf\xe9.conflict-a-")]
    assert len(copies) == 1 and copies[0].endswith(b".txt"), names
    assert b"ok.txt" not in names
    assert os.listdir(root_b + b"/dossier-\xff") == [b"n\xe4me-\xfe.bin"]
    assert update_objects(cl) == []
    assert "caf\\udce9.txt: conflict" in log.read_text(), log.read_text()[-2000:]


def test_a_relay_path_that_no_file_name_can_have_is_refused():
    from escale.index import Entry

    good = Entry.from_dict({"path": "caf\udce9.txt", "kind": "dir"})
    assert good.path == "caf\udce9.txt"
    for bad in ("\ud800x", "\udcc3\udca9"):  # not a byte escape; bytes that spell 'é' (an alias)
        with pytest.raises(ValueError):
            Entry.from_dict({"path": bad, "kind": "dir"})
