"""Objects over a relay's ``max object size``: parts plus a manifest (escale/relay/split.py).

The conformance suite (tests/test_relay_contract.py) also runs over the splitting layer
(kinds ``split-*``); here: the layout, damaged parts, create-if-absent, replace, delete,
a writer killed between parts, the option, and three clients syncing through it.
"""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cluster import ROOT, Cluster, kill9, raw_key_file, tree, wait_for
from escale.errors import IntegrityError, ObjectExists, RelayObjectMissing
from escale.relay import LocalMount
from escale.relay.split import MAGIC, Manifest, Splitting, manifest_size, parse_part_name
from test_relay_contract import make_relay

KiB, MiB = 1 << 10, 1 << 20
KINDS = ["file", "webdav-wsgidav"]


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


def split_relay(request, kind, tmp_path, limit: int = 64 * KiB) -> tuple[Splitting, object]:
    inner = make_relay(request, kind, tmp_path)
    return Splitting(inner, limit), inner


def raw(inner) -> dict[str, int]:
    return {i.name: i.size for i in inner.list()}


def read(relay, name: str) -> bytes:
    with relay.get(name) as f:
        return f.read()


def test_large_object_is_stored_as_parts_and_a_manifest(request, kind, tmp_path) -> None:
    relay, inner = split_relay(request, kind, tmp_path)
    data = os.urandom(MiB + 7)
    assert relay.put("b/C/1/0", io.BytesIO(data), size=len(data)) == len(data)
    stored = raw(inner)
    parts = sorted((n for n in stored if parse_part_name(n)), key=lambda n: parse_part_name(n).k)
    assert len(parts) == 17 and all(parse_part_name(p).n == 17 for p in parts)
    assert [stored[p] for p in parts] == [64 * KiB] * 16 + [7]
    assert stored["b/C/1/0"] == manifest_size(17)  # the manifest: 64 + 40 × 17 bytes
    # what the protocol sees: one object of the logical size, in listings and stat alike
    assert [(i.name, i.size) for i in relay.list()] == [("b/C/1/0", len(data))]
    assert relay.stat("b/C/1/0").size == len(data)
    assert read(relay, "b/C/1/0") == data
    # the manifest holds only sizes and digests of the stored bytes (ciphertext when encrypted)
    m = Manifest.decode("b/C/1/0", read(inner, "b/C/1/0"))
    assert m.total == len(data) and m.digest == hashlib.sha256(data).digest()
    assert [s for s, _ in m.parts] == [64 * KiB] * 16 + [7]
    assert m.parts[3][1] == hashlib.sha256(data[3 * 64 * KiB:4 * 64 * KiB]).digest()
    # small objects pass through untouched
    relay.put("a/C", io.BytesIO(b"ack"))
    assert read(inner, "a/C") == b"ack" and relay.stat("a/C").size == 3


@pytest.mark.parametrize("damage", ["altered", "truncated", "longer", "missing"])
def test_a_damaged_part_is_refused_by_name(request, kind, tmp_path, damage) -> None:
    relay, inner = split_relay(request, kind, tmp_path)
    data = os.urandom(200 * KiB)
    relay.put("b/C/1/0", io.BytesIO(data), size=len(data))
    part = next(n for n in raw(inner) if parse_part_name(n) and parse_part_name(n).k == 2)
    good = read(inner, part)
    if damage == "missing":
        inner.delete(part)
    else:
        bad = {"altered": good[:100] + bytes([good[100] ^ 1]) + good[101:], "truncated": good[:-1],
               "longer": good + b"x"}[damage]
        inner.put(part, io.BytesIO(bad))
    expected = RelayObjectMissing if damage == "missing" else IntegrityError
    with pytest.raises(expected, match=f"relay object b/C/1/0.*part 2 of 4 \\({part}\\)"):
        read(relay, "b/C/1/0")


def test_create_only_split_object(request, kind, tmp_path) -> None:
    relay, inner = split_relay(request, kind, tmp_path)
    first, second = os.urandom(150 * KiB), os.urandom(150 * KiB)
    relay.put("h/x", io.BytesIO(first), create_only=True, size=len(first))
    with pytest.raises(ObjectExists):
        relay.put("h/x", io.BytesIO(second), create_only=True, size=len(second))
    assert read(relay, "h/x") == first
    # the loser's parts are gone (it checked before sending any, here)
    uploads = {parse_part_name(n).uid for n in raw(inner) if parse_part_name(n)}
    assert len(uploads) == 1


def test_create_only_loser_of_a_race_removes_its_parts(request, kind, tmp_path) -> None:
    """Two writers pass the check at once: the manifest's create-if-absent picks one; the
    other removes the parts it sent."""
    a, inner = split_relay(request, kind, tmp_path)
    b = Splitting(inner, 64 * KiB)
    data_a, data_b = os.urandom(130 * KiB), os.urandom(130 * KiB)
    real_stat = inner.stat
    b_stat_seen = []

    class LateChecker:
        """b's view: the name is still free when it checks (a's manifest not yet written)."""

        def __getattr__(self, attr):
            return getattr(inner, attr)

        def stat(self, name):
            b_stat_seen.append(name)
            return None if name == "h/x" else real_stat(name)

    b.inner = LateChecker()
    a.put("h/x", io.BytesIO(data_a), create_only=True, size=len(data_a))
    with pytest.raises(ObjectExists):
        b.put("h/x", io.BytesIO(data_b), create_only=True, size=len(data_b))
    assert b_stat_seen and read(a, "h/x") == data_a
    assert len({parse_part_name(n).uid for n in raw(inner) if parse_part_name(n)}) == 1


def test_replace_and_delete_leave_no_parts(request, kind, tmp_path) -> None:
    relay, inner = split_relay(request, kind, tmp_path)
    v1, v2 = os.urandom(300 * KiB), os.urandom(100 * KiB)
    relay.put("s/C", io.BytesIO(v1), size=len(v1))
    list(relay.list())
    relay.put("s/C", io.BytesIO(v2), size=len(v2))
    assert read(relay, "s/C") == v2
    assert len([n for n in raw(inner) if parse_part_name(n)]) == 2  # v1's five parts removed
    relay.put("s/C", io.BytesIO(b"small now"))
    assert raw(inner) == {"s/C": 9}
    relay.put("s/C", io.BytesIO(v1), size=len(v1))
    # a client that never listed it deletes it: the manifest tells the parts
    Splitting(inner, 64 * KiB).delete("s/C")
    assert raw(inner) == {} and list(relay.list()) == []


def test_a_plain_object_that_looks_like_a_manifest(request, kind, tmp_path) -> None:
    """A plaintext relay may hold a user's file that begins with the manifest's magic:
    it is stored as a one-part split object, never mistaken for a manifest."""
    relay, inner = split_relay(request, kind, tmp_path, limit=None)
    data = MAGIC + b"\x00" * 24 + b"not a manifest"
    relay.put("b/C/1/0", io.BytesIO(data))
    assert read(relay, "b/C/1/0") == data and relay.stat("b/C/1/0").size == len(data)
    assert [i.size for i in relay.list()] == [len(data)]
    relay.delete("b/C/1/0")
    assert raw(inner) == {}


WRITER = """
import io, sys, time
sys.path.insert(0, {root!r})
from escale.relay import LocalMount
from escale.relay.split import Splitting

class Slow(io.RawIOBase):
    def __init__(self, size):
        self.left = size
    def readable(self):
        return True
    def readinto(self, b):
        n = min(len(b), self.left, 16384)
        if n:
            time.sleep(0.01)
        b[:n] = b"z" * n
        self.left -= n
        return n

relay = Splitting(LocalMount({address!r}), 64 * 1024)
relay.open()
relay.put("b/ME/7/0", Slow(2 << 20), size=2 << 20)
"""


def test_writer_killed_between_parts_leaves_nothing_visible_and_is_cleaned_up(tmp_path) -> None:
    address = f"file://{tmp_path}/relay"
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), address=address)])
    folder = tmp_path / "relay" / "b" / "ME" / "7"
    try:
        assert wait_for(lambda: folder.is_dir() and len([p for p in folder.iterdir()
                                                          if parse_part_name(p.name)]) >= 3, timeout=60)
    finally:
        kill9(proc)
    inner = LocalMount(address)
    relay = Splitting(inner, 64 * KiB)
    relay.open()
    assert any(parse_part_name(p.name) for p in folder.iterdir())
    assert list(relay.list()) == [] and relay.stat("b/ME/7/0") is None
    removed = relay.abort_incomplete("b/ME/")  # what the writer does at its next start
    assert removed >= 3
    assert raw(inner) == {}
    assert not folder.exists() or not [p for p in folder.iterdir() if not p.name.startswith(".escale-put-")]


def test_abort_incomplete_keeps_a_complete_object_and_removes_a_crashed_replace(tmp_path) -> None:
    inner = LocalMount(f"file://{tmp_path}/relay")
    relay = Splitting(inner, 64 * KiB)
    relay.open()
    data = os.urandom(200 * KiB)
    relay.put("u/ME/1", io.BytesIO(data), size=len(data))
    # a crashed replace: parts of another upload, no manifest for them
    for k in (1, 2):
        inner.put(f"u/ME/1.~part.0badf00d.{k}.4", io.BytesIO(b"x" * 10))
    assert [(i.name, i.size) for i in relay.list()] == [("u/ME/1", len(data))]
    assert relay.abort_incomplete("u/ME/") == 2
    assert read(relay, "u/ME/1") == data
    assert len(raw(inner)) == 1 + 4


def test_max_object_size_option(tmp_path) -> None:
    from escale.config import parse_config_text
    from escale.errors import ConfigError
    from escale.manager import Manager

    def section(value: str) -> str:
        return (f"[repo]\nlocal path = {tmp_path}/local\nrelay address = file://{tmp_path}/relay\n"
                f"encryption = off\nmax object size = {value}\n")

    (repo,) = parse_config_text(section("100MB"), str(tmp_path / "escale.conf")).repositories.values()
    assert repo.options["max_object_size"] == 100 * 10**6
    relay = Manager.from_config(repo).relay
    assert isinstance(relay, Splitting) and relay.limit == 100 * 10**6
    (repo,) = parse_config_text(section("off"), str(tmp_path / "escale.conf")).repositories.values()
    assert Manager.from_config(repo).relay.limit is None
    with pytest.raises(ConfigError, match="max object size.*at least 1MiB"):
        parse_config_text(section("100KiB"), str(tmp_path / "escale.conf"))


@pytest.mark.parametrize("relay_kind", ["file", "webdav-wsgidav"])
def test_three_clients_sync_a_file_larger_than_the_relay_takes(request, tmp_path, relay_kind) -> None:
    """max object size = 1MiB, a 5 MiB file (encrypted): it goes up in parts, the two
    others get it whole; edits and deletion converge; nothing but parts and manifests."""
    # a raw key: encryption is tested here, not the passphrase (each client would pay a scrypt)
    words = f"max object size = 1MiB\npassphrase = {raw_key_file(tmp_path)}\n"
    if relay_kind == "file":
        cluster = Cluster(tmp_path, relay_conf=words)
    else:
        server = request.getfixturevalue("relay_webdav_wsgidav")
        address, conf, kwargs = server.new()
        cluster = Cluster(tmp_path, address, conf + words, kwargs, kind=relay_kind)
    a, b, c = cluster.add("a"), cluster.add("b"), cluster.add("c")
    big = os.urandom(5 * MiB)
    a.write("big.bin", big)
    a.write("small.txt", "small")
    cluster.round("a", "b", "c")
    for client in (b, c):
        assert client.path("big.bin").read_bytes() == big
    # on the relay: nothing over the limit, and parts are there
    inner = cluster.backend()
    try:
        stored = {i.name: i.size for i in inner.list()}
    finally:
        inner.close()
    assert max(stored.values()) <= MiB
    assert any(parse_part_name(n) for n in stored)
    # an edit from another client, then a deletion, converge too
    edited = os.urandom(3 * MiB)
    c.write("big.bin", edited)
    cluster.round("c", "a", "b")
    assert a.path("big.bin").read_bytes() == edited == b.path("big.bin").read_bytes()
    b.path("big.bin").unlink()
    cluster.round("b", "a", "c", rounds=2)
    assert tree(a.folder) == tree(b.folder) == tree(c.folder)
    assert not a.path("big.bin").exists()


def test_apache_body_limit_is_overcome_by_max_object_size(tmp_path) -> None:
    """Apache with LimitRequestBody 1 MiB (as 2.4.54+ has 1 GiB by default) refuses a 3 MiB
    encrypted blob with 413: the cycle fails naming 'max object size' (before: a bare HTTP 413
    every cycle, no way out); with max object size = 1MiB three clients converge."""
    from servers_webdav import ServerUnavailable, make_server

    server = make_server("apache", tmp_path / "apache", limit_body=MiB)
    try:
        server.start()
    except ServerUnavailable as exc:
        pytest.skip(f"Apache unavailable: {exc}")
    try:
        address, conf, kwargs = server.new()
        words = f"passphrase = {raw_key_file(tmp_path)}\n"
        cluster = Cluster(tmp_path / "c", address, conf + words, kwargs, kind="webdav-apache")
        a = cluster.add("a")
        big = os.urandom(3 * MiB)
        a.write("big.bin", big)
        r = a.once(check=False)
        assert r.code == 2 and "413" in r.err and "max object size" in r.err, r
        cluster = Cluster(tmp_path / "c", address, conf + words + "max object size = 1MiB\n", kwargs,
                          kind="webdav-apache")
        a, b, c = cluster.add("a"), cluster.add("b"), cluster.add("c")
        cluster.round("a", "b", "c")
        assert b.path("big.bin").read_bytes() == big == c.path("big.bin").read_bytes()
    finally:
        server.cleanup()


def test_every_backend_declares_max_object_size() -> None:
    """The option is the same for every backend (the layer above them handles it): a new
    backend that forgets it would make 'max object size' an 'other backend's option' there."""
    from escale.relay import BACKENDS
    from escale.relay.split import MAX_OBJECT_SIZE

    missing = sorted({cls.__name__ for cls in BACKENDS.values() if MAX_OBJECT_SIZE not in cls.options})
    assert missing == []


def test_a_forged_manifest_beside_a_part_does_not_stop_the_listing(tmp_path) -> None:
    """Another member (or the relay) stores a manifest lookalike whose part sizes do not add
    up, or that claims more parts than a manifest may list, beside a part name: the listing
    goes on (it raised IntegrityError: every client's every cycle stopped) and reading that
    object is refused by name."""
    import struct

    inner = LocalMount(f"file://{tmp_path}/relay")
    relay = Splitting(inner, 64 * KiB)
    relay.open()
    relay.put("a", io.BytesIO(b"genuine"))
    bad_sum = struct.pack("<16sQ32s4sI", MAGIC, 999, b"\0" * 32, b"\xde\xad\xbe\xef", 2) + \
        struct.pack("<Q32s", 1, b"\0" * 32) * 2
    too_many = struct.pack("<16sQ32s4sI", MAGIC, 0, b"\0" * 32, b"\xde\xad\xbe\xef", 10 ** 7) + \
        struct.pack("<Q32s", 0, b"\0" * 32) * 3
    for name, body in (("u/X/1", bad_sum), ("u/X/2", too_many)):
        inner.put(name, io.BytesIO(body))
        inner.put(f"{name}.~part.deadbeef.1.1", io.BytesIO(b"x"))
    listed = {i.name: i.size for i in relay.list()}
    assert listed == {"a": 7, "u/X/1": len(bad_sum), "u/X/2": len(too_many)}
    assert read(relay, "a") == b"genuine"
    for name in ("u/X/1", "u/X/2"):
        with pytest.raises(IntegrityError, match=name):
            read(relay, name)


def test_deleting_an_unlisted_object_with_a_forged_manifest_costs_one_listing(tmp_path) -> None:
    """A client deleting an object it never listed takes its parts from the manifest. A
    manifest (written by the relay or a hostile member) claiming 100,000 parts made it send
    100,000 DELETEs; now the stored parts are found by one listing of the object's folder."""
    import struct

    class Counting(LocalMount):
        deletes = 0

        def delete(self, name: str) -> None:
            Counting.deletes += 1
            super().delete(name)

    inner = Counting(f"file://{tmp_path}/relay")
    inner.open()
    n = 100_000
    forged = struct.pack("<16sQ32s4sI", MAGIC, n, b"\0" * 32, b"\xde\xad\xbe\xef", n) + \
        struct.pack("<Q32s", 1, b"\0" * 32) * n
    inner.put("u/X/1", io.BytesIO(forged))
    inner.put("u/X/1.~part.deadbeef.1.100000", io.BytesIO(b"x"))
    inner.put("u/X/1.~part.cafecafe.1.2", io.BytesIO(b"y"))  # another upload's part: not this manifest's
    inner.put("u/X/10", io.BytesIO(b"other object"))
    Counting.deletes = 0
    Splitting(inner, 64 * KiB).delete("u/X/1")
    assert Counting.deletes == 2  # the manifest and the one part of its upload that exists
    assert raw(inner) == {"u/X/1.~part.cafecafe.1.2": 1, "u/X/10": 12}
