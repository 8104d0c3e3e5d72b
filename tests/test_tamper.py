"""A malicious relay, attack by attack: each is detected before anything touches the
local folder, named in the log, counted as an error (exit 1), and the rest still syncs.

Three encrypted clients on a file:// relay: A and C push, B is the victim. Every test
changes A's objects on the relay by hand between A's push and B's pull, then checks
B got nothing of A's tampered object and still got C's files.
"""
from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from cluster import Cluster, tree

CHUNK = (1 << 18) + 16  # ciphertext bytes of one full chunk (256 KiB + tag)
HEADER = 31


@pytest.fixture
def secure(tmp_path):
    """A cluster whose clients share a passphrase file (chmod 600)."""
    cl = Cluster(tmp_path)
    pw = tmp_path / "passphrase"
    pw.write_text("correct horse battery staple\n")
    pw.chmod(0o600)
    cl.passphrase = pw
    return cl


def add(cl, name, mode="shared", extra=""):
    return cl.add(name, mode, extra=f"passphrase = {cl.passphrase}\n{extra}")


def objects(cl, prefix):
    return sorted((n for n in cl.relay_objects() if n.startswith(prefix)), key=lambda n: [
        int(p) if p.isdigit() else p for p in n.split("/")])


def cid_of(cl, client) -> str:
    import sqlite3
    db = sqlite3.connect(next(client.state.rglob("state.sqlite")))
    try:
        return db.execute("SELECT value FROM meta WHERE key = 'client_id'").fetchone()[0]
    finally:
        db.close()


def setup_three(cl, a_files=None):
    """A and C publish; B has registered but not pulled yet. Returns (a, b, c, A's update)."""
    a, b, c = add(cl, "a"), add(cl, "b"), add(cl, "c")
    cl.round("b", "c")  # everyone is a member before anything is published
    for rel, data in (a_files or {"a-secret.txt": b"alpha secret", "big/a-bundle.bin": os.urandom(600_000)}).items():
        a.write(rel, data)
    c.write("from-c.txt", "C's file")
    a.once()
    c.once()
    ua = objects(cl, f"u/{cid_of(cl, a)}/")
    assert len(ua) == 1
    return a, b, c, cl.relay / ua[0]


def assert_rejected(cl, b, obj_name: str, a_paths, words=()):
    r = b.once(check=False)
    assert r.code == 1, r
    assert obj_name in r.err, r
    for w in words:
        assert w in r.err, r
    for rel in a_paths:
        assert not b.path(rel).exists(), f"{rel} was written from a tampered object"
    assert b.path("from-c.txt").read_text() == "C's file"  # the rest still syncs
    assert not [p for p in tree(b.folder) if ".escale-tmp-" in p]
    return r


def rel_name(cl, path: Path) -> str:
    return path.relative_to(cl.relay).as_posix()


def test_modified_byte(secure):
    a, b, c, ua = setup_three(secure)
    data = bytearray(ua.read_bytes())
    data[len(data) // 2] ^= 0x01
    ua.write_bytes(bytes(data))
    assert_rejected(secure, b, rel_name(secure, ua), ["a-secret.txt", "big/a-bundle.bin"], ["authentication failed"])


@pytest.mark.parametrize("where", ["mid-chunk", "chunk boundary", "header"])
def test_truncated(secure, where):
    a, b, c, ua = setup_three(secure)
    data = ua.read_bytes()
    assert len(data) > 2 * CHUNK, "the update must span several chunks"
    cut = {"mid-chunk": len(data) - 1000, "chunk boundary": HEADER + 2 * CHUNK, "header": 20}[where]
    ua.write_bytes(data[:cut])
    assert_rejected(secure, b, rel_name(secure, ua), ["a-secret.txt", "big/a-bundle.bin"])


def test_reordered_chunks(secure):
    a, b, c, ua = setup_three(secure)
    data = ua.read_bytes()
    head, c1, c2, rest = data[:HEADER], data[HEADER:HEADER + CHUNK], data[HEADER + CHUNK:HEADER + 2 * CHUNK], \
        data[HEADER + 2 * CHUNK:]
    ua.write_bytes(head + c2 + c1 + rest)
    assert_rejected(secure, b, rel_name(secure, ua), ["a-secret.txt", "big/a-bundle.bin"], ["authentication failed"])


def test_two_objects_swapped(secure):
    a, b, c, ua1 = setup_three(secure)
    a.write("second.txt", "second update")
    a.once()
    ua2 = secure.relay / objects(secure, f"u/{cid_of(secure, a)}/")[1]
    d1, d2 = ua1.read_bytes(), ua2.read_bytes()
    ua1.write_bytes(d2)
    ua2.write_bytes(d1)
    assert_rejected(secure, b, rel_name(secure, ua1), ["a-secret.txt", "second.txt"], ["authentication failed"])


def test_blob_swapped_with_another_blob(secure):
    big1, big2 = os.urandom(5 << 20), os.urandom(5 << 20)  # blobs: their own objects
    a, b, c, ua = setup_three(secure, {"one.bin": big1, "small.txt": b"small"})
    a.write("two.bin", big2)
    a.once()
    cid = cid_of(secure, a)
    b1, b2 = secure.relay / f"b/{cid}/1/0", secure.relay / f"b/{cid}/2/0"
    d1, d2 = b1.read_bytes(), b2.read_bytes()
    b1.write_bytes(d2)
    b2.write_bytes(d1)
    r = b.once(check=False)
    assert r.code == 1 and f"b/{cid}/1/0" in r.err and f"b/{cid}/2/0" in r.err, r
    assert not b.path("one.bin").exists() and not b.path("two.bin").exists()
    assert b.path("small.txt").read_text() == "small"  # the rest of the update applies
    assert b.path("from-c.txt").exists()
    # the damaged contents are asked for again and arrive once the relay stops lying
    b1.write_bytes(d1)
    b2.write_bytes(d2)
    for _ in range(3):
        a.once()
        b.once(check=False)
    assert b.path("one.bin").read_bytes() == big1 and b.path("two.bin").read_bytes() == big2


def test_object_moved_to_another_name(secure):
    a, b, c, ua = setup_three(secure)
    cid = cid_of(secure, a)
    shutil.copy(ua, secure.relay / f"u/{cid}/2")  # the same bytes offered as the next update
    r = b.once(check=False)
    assert r.code == 1 and f"u/{cid}/2" in r.err and "authentication failed" in r.err, r
    assert b.path("a-secret.txt").read_bytes() == b"alpha secret"  # the genuine update 1 applied
    assert b.path("from-c.txt").exists()


def test_old_update_replayed_after_newer_applied(secure):
    a, b, c, ua = setup_three(secure)
    old = ua.read_bytes()
    secure.round("b", "c", "a", "b")  # everyone acked; A collected update 1; B saw it gone
    assert not ua.exists()
    a.path("a-secret.txt").unlink()
    a.once()
    b.once()
    assert not b.path("a-secret.txt").exists()
    ua.parent.mkdir(parents=True, exist_ok=True)
    ua.write_bytes(old)  # the relay serves update 1 again, to bring the file back
    r = b.once(check=False)
    assert r.code == 1 and rel_name(secure, ua) in r.err and "replayed" in r.err, r
    assert not b.path("a-secret.txt").exists()


def test_whole_relay_rolled_back(secure, tmp_path):
    a, b, c, ua = setup_three(secure)
    secure.round("b")
    copy = tmp_path / "relay-copy"
    shutil.copytree(secure.relay, copy)  # the relay as it was
    a.write("later.txt", "newer state")
    a.path("a-secret.txt").unlink()
    secure.round("a", "b", "c", "a", "b", "c", "a")
    assert b.path("later.txt").exists() and not b.path("a-secret.txt").exists()
    shutil.rmtree(secure.relay)
    shutil.copytree(copy, secure.relay)  # roll the whole relay back
    r = b.once(check=False)
    assert r.code == 1 and "rolled back" in r.err, r
    assert b.path("later.txt").exists() and not b.path("a-secret.txt").exists()


def test_injected_objects_without_the_key(secure):
    a, b, c, ua = setup_three(secure)
    fake = "0123456789abcdef"
    (secure.relay / "m" / fake).write_bytes(os.urandom(300))
    (secure.relay / "u" / fake).mkdir(parents=True)
    (secure.relay / "u" / fake / "1").write_bytes(os.urandom(5000))
    r = b.once(check=False)
    assert r.code == 1 and f"m/{fake}" in r.err and f"u/{fake}/1" in r.err, r
    assert b.path("a-secret.txt").exists() and b.path("from-c.txt").exists()  # genuine updates apply
    assert sorted(p for p in b.tree() if not p.startswith("big")) == ["a-secret.txt", "from-c.txt"]


def test_a_member_cannot_publish_as_another(secure):
    """M holds the passphrase but not A's signing key: neither a forged update signed by M
    nor a replaced member card for A is accepted."""
    from escale.encryption import Secret, StreamCipher, master_key
    from escale.index import FILE, Entry
    from escale.protocol import INLINE, UPDATE_MAGIC, Item, ObjectStore, UpdateHeader, update_name
    from escale.relay import LocalMount
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    import hashlib
    import io
    import json
    import time

    a, b, c, ua = setup_three(secure)
    secure.round("b")
    header = json.loads((secure.relay / "escale.json").read_text())
    master = master_key(Secret(passphrase=b"correct horse battery staple"), header["kdf"])
    relay = LocalMount(f"file://{secure.relay}")
    relay.open()
    mallory = Ed25519PrivateKey.generate()
    store = ObjectStore(relay, StreamCipher(master, repository=header["id"]), mallory, repository=header["id"])
    cid = cid_of(secure, a)
    data = b"mallory was here"
    item = Item(Entry("planted.txt", FILE, hashlib.sha256(data).hexdigest(), len(data), time.time_ns(), 0o644,
                      None, cid, seq=2), INLINE)
    import sqlite3
    db = sqlite3.connect(next(b.state.rglob("state.sqlite")))
    prev = db.execute("SELECT digest FROM applied WHERE pusher = ?", (cid,)).fetchone()[0]
    db.close()
    head = ObjectStore.encode_header(UPDATE_MAGIC, UpdateHeader(cid, 2, prev, time.time(), [], None, [item]).to_dict())
    store.put_framed(update_name(cid, 2), head, [io.BytesIO(data)], len(data))
    r = b.once(check=False)
    assert r.code == 1 and f"u/{cid}/2" in r.err and "bad signature" in r.err, r
    assert not b.path("planted.txt").exists()
    # a new member card for A carrying Mallory's key: refused, A's key stays pinned
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    key = mallory.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    store.put_json(f"m/{cid}", {"v": 1, "name": "a", "mode": "shared", "key": key, "pulls": True, "pushes": True})
    r = b.once(check=False)
    assert r.code == 1 and f"m/{cid}" in r.err and "another signing key" in r.err, r
    assert not b.path("planted.txt").exists()


def test_relay_reveals_no_names_contents_or_client_names(secure):
    a, b = add(secure, "laptop-alice"), add(secure, "desktop-bob")
    b.once()  # a member, so the update waits for it
    names = ["Quarterly Report 2026.xlsx", "projects/zanzibar/plan.md", "unicodé/日本語.txt", ".ssh-notes"]
    marker = b"DISTINCTIVE-CONTENT-7f3a9c"
    for i, n in enumerate(names):
        a.write(n, marker + str(i).encode() * 100)
    a.write("big/archive.bin", marker + os.urandom(5 << 20) + marker)
    needles = [marker, b"laptop-alice", b"desktop-bob", b"zanzibar", b"Quarterly", "日本語".encode(),
               b"plan.md", b"archive", b"ssh-notes"]

    def grep_relay():
        blob = b"".join(p.read_bytes() for p in secure.relay.rglob("*") if p.is_file())
        names_on_relay = " ".join(p.relative_to(secure.relay).as_posix() for p in secure.relay.rglob("*"))
        for needle in needles:
            assert needle not in blob, needle
            assert needle.decode() not in names_on_relay, needle
        return len(blob)

    a.once()
    assert grep_relay() > 5 << 20  # in transit: the relay holds the data, encrypted
    b.once()
    a.once()  # collected: member cards, acks and snapshots remain
    grep_relay()
    assert b.tree() == a.tree()


def test_wrong_passphrase_exit_3_relay_untouched(secure, tmp_path):
    a = add(secure, "a")
    a.write("f.txt", "x")
    a.once()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in secure.relay.rglob("*") if p.is_file()}
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase")
    wrong.chmod(0o600)
    m = secure.add("mallory", extra=f"passphrase = {wrong}\n")
    m.write("g.txt", "y")
    r = m.once(check=False)
    assert r.code == 3 and "wrong passphrase for repository repo" in r.err, r
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in secure.relay.rglob("*") if p.is_file()}
    assert after == before


def test_raw_key_file_and_chacha(tmp_path):
    cl = Cluster(tmp_path)
    key = tmp_path / "key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key.chmod(0o600)
    a = cl.add("a", extra=f"passphrase = {key}\nencryption = chacha20poly1305\npadding = on\n")
    b = cl.add("b", extra=f"passphrase = {key}\n")  # aes256gcm: reads chacha objects too
    a.write("x.txt", "hello")
    cl.round("a", "b", "a")
    b.write("y.txt", "back")
    cl.round("b", "a")
    assert a.tree() == b.tree() and a.path("y.txt").read_text() == "back"
    header = (tmp_path / "relay" / "escale.json").read_text()
    assert '"raw"' in header and "scrypt" not in header


def test_passphrase_file_permissions(tmp_path):
    cl = Cluster(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("open to all")
    pw.chmod(0o644)
    # refused by default (secure by default), a warning only when the section says so
    s = cl.add("s", extra=f"passphrase = {pw}\n")
    r = s.once(check=False)
    assert r.code == 3 and "can be read by other users" in r.err, r
    a = cl.add("a", extra=f"passphrase = {pw}\nstrict permissions = no\n")
    r = a.once()
    assert "can be read by other users" in r.err


def test_encryption_off_warns(cluster):
    a = cluster.add("a")
    r = a.once()
    assert "encryption is off" in r.err
