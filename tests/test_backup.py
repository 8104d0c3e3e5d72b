"""escalectl backup / restore through the real CLI, on a real relay folder."""
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from cluster import Cluster


def ctl(client, *args):
    p = subprocess.run([sys.executable, "-m", "escale.cli.ctl", "-c", str(client.conf), *args],
                       capture_output=True, text=True, env=client.cluster.env)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def secret_cluster(tmp_path):
    secret = tmp_path / "passphrase"
    secret.write_text("backup test passphrase\n")
    secret.chmod(0o600)
    return Cluster(tmp_path, relay_conf=f"passphrase = {secret}\n")


def wipe(cluster):
    for child in cluster.relay.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def test_backup_wipe_restore_clients_continue(secret_cluster, tmp_path):
    cluster = secret_cluster
    a, b, c = cluster.add("a"), cluster.add("b"), cluster.add("c")
    cluster.round()  # three members
    a.write("small.txt", "hello")
    a.write("big.bin", os.urandom(5 << 20))  # a blob object, in transit
    a.once()
    b.once()  # b has it; c has not pulled yet: the update stays on the relay
    before = cluster.relay_objects()
    assert any(n.startswith("b/") for n in before) and any(n.startswith("u/") for n in before)

    code, out, err = ctl(a, "backup", str(tmp_path / "relay-backup"))
    assert code == 0, (out, err)
    archive = tmp_path / "relay-backup.tar.bz2"  # no tar ending: .tar.bz2 appended, as 0.7 did
    assert archive.is_file() and f"saved {len(before)} object(s)" in out
    with open(archive, "rb") as f:
        assert f.read(3) == b"BZh"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[-1] == "escale-backup.json"
    assert sorted(n.removeprefix("objects/") for n in names[:-1]) == sorted(before)

    wipe(cluster)
    r = c.once(check=False)  # the relay looks unmounted: refused, nothing created
    assert r.code == 2 and "looks unmounted or replaced" in r.err, r
    assert cluster.relay_objects() == {}

    code, out, err = ctl(b, "restore", str(archive))
    assert code == 0, (out, err)
    assert f"restored {len(before)} object(s)" in out
    assert cluster.relay_objects() == before

    # everyone carries on where they were, without an error
    c.once()
    assert c.path("big.bin").read_bytes() == a.path("big.bin").read_bytes()
    assert c.path("small.txt").read_text() == "hello"
    b.write("from-b.txt", "after the restore")
    cluster.round(rounds=2)
    assert a.path("from-b.txt").read_text() == c.path("from-b.txt").read_text() == "after the restore"
    assert a.tree() == b.tree() == c.tree()


@pytest.mark.parametrize("ending, magic", [(".tar", None), (".tar.gz", b"\x1f\x8b"), (".tar.xz", b"\xfd7zXZ"),
                                           (".tar.bz2", b"BZh")])
def test_archive_compression_follows_the_name(cluster, tmp_path, ending, magic):
    a = cluster.add("a")
    a.write("f.txt", "x")
    a.once()
    archive = tmp_path / f"b{ending}"
    code, out, err = ctl(a, "backup", str(archive))
    assert code == 0, err
    head = archive.read_bytes()[:6]
    if magic is None:
        assert archive.read_bytes()[257:262] == b"ustar"
    else:
        assert head.startswith(magic)
    # an existing archive is never overwritten
    code, _, err = ctl(a, "backup", str(archive))
    assert code == 1 and "already exists" in err
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_damaged_archive_refused_by_name_before_anything_is_written(cluster, tmp_path):
    a = cluster.add("a")
    a.write("f.txt", "some content")
    a.once()
    archive = tmp_path / "b.tar"
    assert ctl(a, "backup", str(archive))[0] == 0
    with tarfile.open(archive) as tar:
        victim = next(m for m in tar.getmembers() if m.name.startswith("objects/u/"))
    data = bytearray(archive.read_bytes())
    data[victim.offset_data + victim.size // 2] ^= 0x01
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    wipe(cluster)

    code, out, err = ctl(a, "restore", str(damaged))
    name = victim.name.removeprefix("objects/")
    assert code == 1 and f"object {name} (damaged" in err, (code, out, err)
    assert cluster.relay_objects() == {}  # checked whole before the first write

    # cut short: the manifest (last) is missing
    short = tmp_path / "short.tar"
    short.write_bytes(archive.read_bytes()[:victim.offset_data + 512])
    code, _, err = ctl(a, "restore", str(short))
    assert code == 1 and "damaged" in err or "no manifest" in err, err
    assert cluster.relay_objects() == {}

    # the intact archive restores
    code, out, err = ctl(a, "restore", str(archive))
    assert code == 0, err
    a.once()


def test_restore_refuses_a_relay_that_is_not_empty(cluster, tmp_path):
    a = cluster.add("a")
    a.write("f.txt", "x")
    a.once()
    archive = tmp_path / "b.tar.gz"
    assert ctl(a, "backup", str(archive))[0] == 0
    before = cluster.relay_objects()
    code, _, err = ctl(a, "restore", str(archive))
    assert code == 2 and "not empty" in err and "--force" in err
    code, out, err = ctl(a, "restore", "--force", str(archive))
    assert code == 0 and f"{len(before)} already there" in out, (out, err)
    assert cluster.relay_objects() == before
    a.once()


def test_restoring_an_older_backup_loses_nothing_and_clients_carry_on(secret_cluster, tmp_path):
    """A relay backup taken before clients synced further, restored: the pusher's updates
    that come back after they were collected are named once, removed by their writer, and
    never stop a puller from taking the pusher's newer updates (a puller used to stop
    following that pusher for good); old acknowledgements are rewritten by their owners."""
    cluster = secret_cluster
    a, b = cluster.add("a"), cluster.add("b")
    cluster.round()
    a.write("one.txt", "first")
    a.once()
    code, out, err = ctl(a, "backup", str(tmp_path / "old.tar"))
    assert code == 0, (out, err)
    cluster.round(rounds=2)  # b applies update 1, a collects it
    a.write("two.txt", "second")
    cluster.round(rounds=2)
    assert b.path("two.txt").read_text() == "second"

    code, out, err = ctl(a, "restore", "--force", str(tmp_path / "old.tar"))
    assert code == 0, (out, err)
    a.write("three.txt", "third")
    for _ in range(3):  # the returned update is named (exit 1) until its writer removes it
        for c in (a, b):
            c.once(check=False)
    a.write("four.txt", "fourth")
    cluster.round(rounds=2)  # clean again: every cycle ends 0
    assert b.path("four.txt").read_text() == "fourth" and b.path("three.txt").read_text() == "third"
    assert a.tree() == b.tree()
    r = b.once()
    assert "reappeared" not in r.err, r
