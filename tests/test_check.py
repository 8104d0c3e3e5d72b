"""escalectl check through the real CLI: each kind of damage is found and named."""
import os

import pytest

from cluster import Cluster, raw_key_file
from test_backup import ctl


@pytest.fixture
def repo(tmp_path):
    """Three members, two updates of one pusher in transit (inline files over several
    AEAD chunks, and a large file as its own object), acknowledgements, a snapshot."""
    secret = raw_key_file(tmp_path)  # encrypted; the passphrase path has its own tests
    cluster = Cluster(tmp_path, relay_conf=f"passphrase = {secret}\n")
    a, b, c = cluster.add("a"), cluster.add("b", extra="puller count = 1\n"), cluster.add("c")
    cluster.round()  # c does not run again: a's updates wait for it
    a.write("inline.bin", os.urandom(700 << 10))
    a.write("big.bin", os.urandom((4 << 20) + 4096))
    a.once()
    a.write("second.txt", "two")
    a.once()
    b.once()
    b.write("from-b.txt", "b")
    b.once()
    a.once()  # acknowledges b's update: b collects it after writing its snapshot
    b.once()
    objects = cluster.relay_objects()
    pusher = next(n.split("/")[1] for n in objects if n.startswith("b/"))
    return cluster, a, pusher


def check(client, *args):
    code, out, err = ctl(client, "check", *args)
    assert "Traceback" not in err, err
    return code, out, err


def test_a_healthy_repository_passes(repo):
    cluster, a, pusher = repo
    objects = cluster.relay_objects()
    assert f"u/{pusher}/1" in objects and f"u/{pusher}/2" in objects and any(n.startswith("s/") for n in objects)
    for args in ((), ("--read-data",)):
        code, out, err = check(a, *args)
        assert code == 0 and out.strip().endswith("no problem found"), (out, err)
        assert f"checked {len(objects)} object(s)" in out


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_named(repo):
    cluster, a, pusher = repo
    update = cluster.relay / "u" / pusher / "1"
    flip(update, update.stat().st_size - 1000)  # in the last AEAD chunk: only reading it all tells
    blob = cluster.relay / "b" / pusher / "1" / "0"
    flip(blob, 3 << 20)  # a middle chunk
    code, out, _ = check(a, "--read-data")
    assert code == 1, out
    assert f"repo: relay object u/{pusher}/1: authentication failed at chunk" in out, out
    assert f"repo: relay object b/{pusher}/1/0: authentication failed at chunk" in out, out
    assert "2 problem(s)" in out
    code, out, _ = check(a)  # headers and sizes are intact: only reading every byte finds it
    assert code == 0, out


def test_a_missing_blob_is_named(repo):
    cluster, a, pusher = repo
    (cluster.relay / "b" / pusher / "1" / "0").unlink()
    code, out, _ = check(a)
    assert code == 1 and f"relay object b/{pusher}/1/0: missing: its update names it" in out, out


def test_a_truncated_update_is_named_without_reading_it(repo):
    cluster, a, pusher = repo
    update = cluster.relay / "u" / pusher / "1"  # several AEAD chunks: the first one (the header) is intact
    data = update.read_bytes()
    update.write_bytes(data[:-7])
    code, out, _ = check(a)
    assert code == 1, out
    assert f"relay object u/{pusher}/1: {len(data) - 7} bytes on the relay, its signed header makes it " \
           f"{len(data)} bytes (truncated)" in out, out


def test_a_gap_in_a_chain_and_a_stranger_are_named(repo):
    cluster, a, pusher = repo
    (cluster.relay / "u" / pusher / "1").unlink()
    (cluster.relay / "q").mkdir(exist_ok=True)
    (cluster.relay / "q" / "00000000000000ff").write_bytes(b"junk")
    (cluster.relay / "stray.txt").write_bytes(b"x")
    code, out, _ = check(a)
    assert code == 1, out
    assert f"relay object u/{pusher}/1: missing: a gap in client {pusher}'s updates" in out, out
    assert "relay object q/00000000000000ff: written by client 00000000000000ff, which has no member card" in out
    assert "relay object stray.txt: not an escale object name" in out
