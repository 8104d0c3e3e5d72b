"""Ordinary mistakes (docs/what-if.md): a renamed or unmounted folder, a mass deletion,
a moved config, a copied folder, a duplicate client name, an unmounted relay. Each
scenario runs the real CLI; none may lose data on any machine."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from cluster import Cluster


def ctl(client, *args, conf=None):
    p = subprocess.run([sys.executable, "-m", "escale.cli.ctl", "-c", str(conf or client.conf), *args],
                       capture_output=True, text=True, env=client.cluster.env)
    return p.returncode, p.stdout, p.stderr


def members(cluster: Cluster) -> list[str]:
    return sorted(n for n in cluster.relay_objects() if n.startswith("m/"))


def files(client) -> set[str]:
    return {p for p, v in client.tree().items() if v[0] == "file"}


def set_conf(client, old: str, new: str) -> None:
    text = client.conf.read_text()
    assert old in text
    client.conf.write_text(text.replace(old, new))


# -- point 1: the folder marker ------------------------------------------------------------------
def test_renamed_or_unmounted_folder_refuses_to_sync_and_deletes_nothing(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    for i in range(5):
        a.write(f"doc{i}.txt", f"content {i}")
    cluster.round(rounds=2)
    assert (a.folder / ".escale" / "folder.json").is_file()
    moved = a.folder.with_name("a-renamed")
    a.folder.rename(moved)
    r = a.once(check=False)
    assert r.code == 3 and "'local path'" in r.err and "is missing" in r.err, r
    assert not a.folder.exists()  # not recreated empty
    a.folder.mkdir()  # an empty mount point: exists, but without the marker
    r = a.once(check=False)
    assert r.code == 3 and "no escale marker" in r.err and "'local path'" in r.err, r
    b.once()
    assert files(b) == {f"doc{i}.txt" for i in range(5)}
    # pointing 'local path' to the folder's new place resumes as the same member
    a.folder.rmdir()
    set_conf(a, f"local path = {a.folder}\n", f"local path = {moved}\n")
    n = len(members(cluster))
    (moved / "new.txt").write_text("after the rename")
    a.once()
    b.once()
    assert files(b) == {f"doc{i}.txt" for i in range(5)} | {"new.txt"}
    assert len(members(cluster)) == n


def test_first_use_creates_the_folder_and_its_marker(cluster):
    a = cluster.add("a")
    a.folder.rmdir()
    a.once()
    marker = json.loads((a.folder / ".escale" / "folder.json").read_text())
    assert len(marker["folder id"]) == 32


def test_marker_is_never_written_through_a_link(cluster, tmp_path):
    """A `.escale` that is a symbolic link (planted by another local user) is refused, not
    followed: the marker is never written outside the synced folder."""
    a = cluster.add("a")
    outside = tmp_path / "outside"
    outside.mkdir()
    (a.folder / ".escale").symlink_to(outside)
    r = a.once(check=False)
    assert r.code == 3 and "'local path'" in r.err and "symbolic link" in r.err, r
    assert list(outside.iterdir()) == []


def test_folder_vanishing_under_a_running_daemon_deletes_nothing(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    for i in range(3):
        a.write(f"f{i}.txt", str(i))
    cluster.round(rounds=2)
    proc = a.start()
    try:
        time.sleep(3)  # a few idle cycles
        a.folder.rename(a.folder.with_name("a-unmounted"))
        time.sleep(4)  # several cycles without the folder
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert "disappeared while escale was running" in err, err
    assert not a.folder.exists()
    b.once()
    assert files(b) == {"f0.txt", "f1.txt", "f2.txt"}


# -- point 2: the mass-deletion guard --------------------------------------------------------------
def test_mass_deletion_is_held_back_until_confirmed(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    for i in range(120):
        a.write(f"d/f{i:03}.txt", f"file {i}")
    cluster.round(rounds=2)
    for i in range(100):
        a.path(f"d/f{i:03}.txt").unlink()
    a.write("d/f119.txt", "edited")
    a.write("new.txt", "new")
    for _ in range(2):  # every cycle says so
        r = a.once(check=False)
        assert r.code == 1 and "100 local deletion(s) held back" in r.err and "confirm-deletes" in r.err, r
    b.once()
    assert len(files(b)) == 121 and b.path("d/f119.txt").read_text() == "edited"  # the rest synced
    code, out, _ = ctl(a, "status")
    assert code == 0 and "100 local deletion(s) held back" in out, out
    code, out, _ = ctl(a, "confirm-deletes", "--dry-run")
    assert code == 0 and "100 deletion(s) held back" in out and "d/f000.txt" in out, out
    a.once(check=False)
    b.once()
    assert len(files(b)) == 121  # a dry run confirms nothing
    code, out, _ = ctl(a, "confirm-deletes", "-r", "repo")
    assert code == 0 and "confirmed" in out, out
    assert "100 deleted" in a.once().out
    b.once()
    assert files(b) == {"d/f100.txt", "d/f101.txt", "new.txt"} | {f"d/f{i}.txt" for i in range(102, 120)}
    assert len(list((b.folder / ".escale" / "trash").rglob("f0*.txt"))) == 100  # kept in b's trash
    assert ctl(a, "confirm-deletes")[1].strip() == "repo: nothing held back"


def test_max_delete_option(cluster):
    a, b = cluster.add("a", extra="max delete = 5\n"), cluster.add("b", extra="max delete = off\n")
    for i in range(80):
        a.write(f"f{i}.txt", str(i))
    cluster.round(rounds=2)
    for i in range(6):  # a count: more than 5 files is held back, however few that is
        a.path(f"f{i}.txt").unlink()
    assert a.once(check=False).code == 1
    for i in range(6, 80):  # off: b deletes everything at once
        b.path(f"f{i}.txt").unlink()
    b.once()
    a.once(check=False)
    assert files(a) == set()  # b's deletions applied here, a's own still held
    code, out, _ = ctl(a, "confirm-deletes")
    assert "6 deletion(s) held back" in out
    a.once()
    b.once()
    assert files(b) == set()


# -- point 10: identity follows the folder -------------------------------------------------------
def test_moving_the_config_keeps_identity_and_access_flags(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    a.write("private.txt", "never leaves a")
    a.write("shared.txt", "v1")
    assert ctl(a, "access", "private.txt", "r-")[0] == 0
    cluster.round(rounds=2)
    assert not b.path("private.txt").exists()
    n = len(members(cluster))
    moved = cluster.base / "elsewhere" / "renamed.conf"
    moved.parent.mkdir()
    a.conf.rename(moved)
    a.conf = moved
    a.write("private.txt", "still never leaves a")
    a.write("shared.txt", "v2")
    cluster.round("a", "b", rounds=2)
    assert not b.path("private.txt").exists()
    assert b.path("shared.txt").read_text() == "v2"
    assert len(members(cluster)) == n  # no second member for the same folder
    assert not [p for p in files(a) | files(b) if "conflict" in p]


def test_a_second_member_with_the_same_client_name_is_refused(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    a.write("f.txt", "x")
    cluster.round(rounds=2)
    n = members(cluster)
    twin = cluster.add("twin")
    set_conf(twin, "client name = twin\n", "client name = a\n")
    r = twin.once(check=False)
    assert r.code == 3 and "'client name'" in r.err and "already uses client name 'a'" in r.err, r
    assert members(cluster) == n  # it did not join
    a.write("g.txt", "y")
    a.once()
    b.once()
    assert b.path("g.txt").exists()


def test_copied_folder_does_not_run_as_the_same_identity(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    a.write("f.txt", "original")
    cluster.round(rounds=2)
    copy = cluster.base / "a-copy"
    shutil.copytree(a.folder, copy)
    (copy / "f.txt").write_text("edited in the copy")
    conf2 = cluster.base / "a-copy.conf"
    conf2.write_text(a.conf.read_text().replace(f"local path = {a.folder}\n", f"local path = {copy}\n"))
    env = cluster.env
    run = lambda conf: subprocess.run([sys.executable, "-m", "escale", "-c", str(conf), "--once"],  # noqa: E731
                                      capture_output=True, text=True, env=env)
    r = run(conf2)  # same client name as the original: refused, and not as a's identity
    assert r.returncode == 3 and "already uses client name 'a'" in r.stderr, r.stderr
    copy_id = json.loads((copy / ".escale" / "folder.json").read_text())["folder id"]
    a_id = json.loads((a.folder / ".escale" / "folder.json").read_text())["folder id"]
    assert copy_id != a_id
    conf2.write_text(conf2.read_text().replace("client name = a\n", "client name = a-copy\n"))
    assert run(conf2).returncode == 0
    a.once()
    b.once()
    assert len(members(cluster)) == 3
    kept = {p.read_text() for p in b.folder.glob("f*.txt")}
    assert kept == {"original", "edited in the copy"}  # both versions kept, a conflict copy


def test_forget_never_removes_the_member_running_it(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    a.write("f.txt", "x")
    cluster.round(rounds=2)
    old = members(cluster)
    shutil.rmtree(a.state)  # the state is lost: the folder comes back as a new member
    r = a.once(check=False)
    assert r.code == 3 and "escalectl forget a" in r.err, r
    code, out, err = ctl(a, "forget", "a")
    assert code == 0 and "forgot 1 member(s) named a" in out, (out, err)
    a.once()
    code, out, err = ctl(a, "forget", "a")
    assert "forgot 0 member(s)" in out, (out, err)
    code, out, _ = ctl(a, "status")
    assert any(line.split()[:1] == ["a"] and "(this client)" in line for line in out.splitlines()), out
    assert len(members(cluster)) == len(old)


def test_state_copied_to_another_machine_gets_a_new_identity(tmp_path, monkeypatch):
    from escale import marker
    from escale.state import State

    root = tmp_path / "folder"
    where = marker.FolderIdentity(root, "file:///relay", tmp_path / "states", repository="r")
    state_dir, m = where.resolve()
    st = State(state_dir)
    marker.record_place(st, root, m)
    st.close()
    assert where.resolve() == (state_dir, m)  # same machine, same folder: same identity
    monkeypatch.setattr(marker, "machine_id", lambda: "another-machine")
    state_dir2, m2 = where.resolve()
    assert state_dir2 != state_dir and m2.folder_id != m.folder_id


# -- point 11: an unmounted relay ------------------------------------------------------------------
def test_unmounted_relay_is_not_created_again(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    a.write("f.txt", "x")
    cluster.round(rounds=2)
    cluster.relay.rename(cluster.base / "relay-unmounted")
    cluster.relay.mkdir()  # the empty mount point
    r = a.once(check=False)
    assert r.code == 2 and "unmounted or replaced" in r.err, r
    assert not (cluster.relay / "escale.json").exists()
    assert b.once(check=False).code == 2


def test_file_relay_is_created_only_under_an_existing_folder(tmp_path):
    cl = Cluster(tmp_path, relay_address=f"file://{tmp_path}/mnt/usb/escale")
    a = cl.add("a")
    a.write("f.txt", "x")
    r = a.once(check=False)
    assert r.code == 2 and "parent folder" in r.err and "mounted" in r.err, r
    assert not (tmp_path / "mnt").exists()
    (tmp_path / "mnt" / "usb").mkdir(parents=True)
    a.once()
    assert (tmp_path / "mnt" / "usb" / "escale" / "escale.json").exists()
    assert os.listdir(tmp_path / "mnt" / "usb") == ["escale"]
