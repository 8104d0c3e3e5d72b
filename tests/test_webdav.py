"""The WebDAV relay against real servers on 127.0.0.1 (issue: WebDAV relay).

Backend tests run on both session servers (wsgidav and Apache mod_dav, fixture
``dav_server``); the CLI tests drive real ``python -m escale`` processes (tests/cluster.py).
Faults come from a real proxy in front of a real server (servers_webdav.FaultProxy).
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import tracemalloc
import uuid

import pytest
import requests

from cluster import Cluster, temp_files, update_objects
from escale.errors import (AuthenticationError, ConfigError, ObjectExists, QuotaExceeded, RelayError,
                           RelayObjectMissing, SourceError)
from escale.relay import backend_for
from escale.relay.webdav import PROBE_MARK, TMP_MARK, WebDAV
from servers_webdav import PASSWORD, USER, FaultProxy, ServerUnavailable, make_ca, make_server

CID = "0123456789abcdef"
MB = 1_000_000


def relay_on(server, **extra) -> WebDAV:
    address, _conf, kwargs = server.new()
    relay = WebDAV(address, **{**kwargs, **extra})
    relay.open()
    return relay


def start_or_skip(server):
    try:
        return server.start()
    except ServerUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


class Pattern(io.RawIOBase):
    """``size`` pseudo-random bytes made on the fly: a non-seekable stream of any size."""

    def __init__(self, size: int, seed: bytes = b"x"):
        self.left = size
        self.block = hashlib.sha256(seed).digest() * (1 << 15)  # 1 MiB
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left, len(self.block) - self.pos)
        if n <= 0:
            return 0
        b[:n] = self.block[self.pos:self.pos + n]
        self.pos = (self.pos + n) % len(self.block)
        self.left -= n
        return n


def digest_of(stream, block: int = 1 << 20) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    while data := stream.read(block):
        h.update(data)
        n += len(data)
    return n, h.hexdigest()


# ---------------------------------------------------------------------------------------
# addresses and options (no server)
# ---------------------------------------------------------------------------------------
def test_addresses_and_options(tmp_path):
    assert backend_for("https") is WebDAV and backend_for("webdav") is WebDAV and backend_for("http") is WebDAV
    r = WebDAV("webdav://u:pw@example.org/remote.php/dav/files/me/escale")
    assert r.base_url == "https://example.org/remote.php/dav/files/me/escale/"
    assert "pw" not in r.address and "pw" not in repr(r) and r.user == "u"
    assert WebDAV("http://h/a b/", port="8080").base_url == "http://h:8080/a%20b/"
    assert WebDAV("https://h:8443").base_url == "https://h:8443/"
    assert WebDAV("http://h/x", verify_ssl="no").verify is False
    assert WebDAV("http://h/x", verify_ssl="YES").verify is True
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert WebDAV("http://h/x", verify_ssl=str(ca)).verify == str(ca)
    for bad in ({"verify_ssl": "/nonexistent/ca.pem"}, {"max_retries": "many"}, {"keyfile": str(ca)},
                {"certfile": "/nonexistent.pem"}):
        with pytest.raises(ConfigError):
            WebDAV("https://h/x", **bad)
    assert WebDAV("http://h/x", max_retries="0").max_retries == 0


# ---------------------------------------------------------------------------------------
# the backend on both servers
# ---------------------------------------------------------------------------------------
def test_objects_with_the_escale_layout(dav_server):
    """The nested layout (relays made before 2026-12): a collection per '/', pruned when
    empty below the first level (the flat layout: test_relay_layout, the contract suite)."""
    relay = relay_on(dav_server, layout="nested")
    names = {"escale.json": b'{"format":1}', f"m/{CID}": b"card", f"a/{CID}": b"", f"u/{CID}/1": b"update 1",
             f"u/{CID}/2": os.urandom(70_000), f"b/{CID}/2/0": os.urandom(2 * MB), f"b/{CID}/2/1": b"",
             f"s/{CID}": b"snap"}
    for name, data in names.items():
        assert relay.put(name, io.BytesIO(data)) == len(data)
    listed = {i.name: i for i in relay.list()}
    assert {n: i.size for n, i in listed.items()} == {n: len(d) for n, d in names.items()}
    assert all(i.etag and i.mtime > 1e9 for i in listed.values())
    assert sorted(i.name for i in relay.list(f"b/{CID}/2/")) == [f"b/{CID}/2/0", f"b/{CID}/2/1"]
    assert [i.name for i in relay.list(f"u/{CID}/1")] == [f"u/{CID}/1"]
    assert [i.name for i in relay.list("a/")] == [f"a/{CID}"]
    assert list(relay.list("nothing/here/")) == []
    for name, data in names.items():
        with relay.get(name) as f:
            assert f.read() == data, name
        info = relay.stat(name)
        assert info is not None and info.size == len(data) and info.mtime == listed[name].mtime
    assert relay.stat("u/nope") is None and relay.stat("u") is None  # a collection is not an object
    with pytest.raises(RelayObjectMissing):
        relay.get(f"u/{CID}/9")
    # overwrite, delete (absent is fine), and the empty collections below the first level go away
    relay.put(f"u/{CID}/1", io.BytesIO(b"update one"))
    assert relay.get(f"u/{CID}/1").read() == b"update one"
    for name in (f"b/{CID}/2/0", f"b/{CID}/2/1", f"u/{CID}/1", f"u/{CID}/2", f"u/{CID}/7", "q/nothing"):
        relay.delete(name)
    assert sorted(i.name for i in relay.list()) == sorted(["escale.json", f"a/{CID}", f"m/{CID}", f"s/{CID}"])
    folder = dav_server.data / relay.base_path.strip("/")
    assert not (folder / "b" / CID).exists() and not (folder / "u" / CID).exists()
    assert (folder / "u").is_dir()  # first-level collections are shared: never pruned
    # a put into a pruned folder makes it again
    relay.put(f"b/{CID}/3/0", io.BytesIO(b"again"))
    assert [i.name for i in relay.list("b/")] == [f"b/{CID}/3/0"]
    relay.close()


def test_a_folder_name_with_spaces_and_accents(dav_server):
    address, _conf, kwargs = dav_server.new()
    relay = WebDAV(address + "/dossier partagé/été 2026", **kwargs)
    relay.open()  # makes the missing collections
    relay.put(f"u/{CID}/1", io.BytesIO(b"one"))
    relay.put("escale.json", io.BytesIO(b"{}"), create_only=True)
    assert sorted(i.name for i in relay.list()) == ["escale.json", f"u/{CID}/1"]
    assert relay.get(f"u/{CID}/1").read() == b"one" and relay.stat("escale.json").size == 2
    relay.delete(f"u/{CID}/1")
    assert [i.name for i in relay.list()] == ["escale.json"]
    assert (dav_server.data / address.split("/", 3)[3] / "dossier partagé" / "été 2026" / "escale.json").is_file()


def test_a_rewrite_changes_the_listed_version(dav_server):
    """Same size, same second: the listing must still tell a rewrite from the version
    before it (escale re-reads small objects only when (size, mtime) changes). wsgidav's
    ETag is inode-second-size: consecutive versions differ (the temporary is a new file),
    but a version two rewrites back in the same second may reuse an inode."""
    relay = relay_on(dav_server)
    before = None
    for i in range(4):
        relay.put(f"a/{CID}", io.BytesIO(b'{"acks":%d}' % i))
        (info,) = relay.list("a/")
        assert (info.size, info.mtime) != before
        assert relay.stat(f"a/{CID}").mtime == info.mtime
        before = (info.size, info.mtime)


def test_create_only_and_the_probe(dav_server):
    relay = relay_on(dav_server)
    assert relay.put("escale.json", io.BytesIO(b"first"), create_only=True) == 5
    assert relay._probed == {"move_overwrite_f": True, "if_none_match": True}
    with pytest.raises(ObjectExists):
        relay.put("escale.json", io.BytesIO(b"second"), create_only=True)
    assert relay.get("escale.json").read() == b"first"
    # the other strategies behave the same on these servers
    for mode in ("if-none-match", "check"):
        relay._create_mode = mode
        relay.put(f"m/{mode}", io.BytesIO(b"1"), create_only=True)
        with pytest.raises(ObjectExists):
            relay.put(f"m/{mode}", io.BytesIO(b"2"), create_only=True)
        assert relay.get(f"m/{mode}").read() == b"1"
    # neither the probe's nor the puts' temporaries are left or listed
    raw = requests.request("PROPFIND", relay.base_url, headers={"Depth": "1"}, auth=(USER, PASSWORD))
    assert PROBE_MARK not in raw.text and TMP_MARK not in raw.text
    # a second relay object probes once, on its first create_only put only
    other = relay_on(dav_server)
    other.put("x", io.BytesIO(b"x"))
    assert other._probed == {}


def test_concurrent_create_only_has_one_winner(dav_server):
    address, _conf, kwargs = dav_server.new()
    winners, errors = [], []

    def create(i):
        r = WebDAV(address, **kwargs)
        r.open()
        try:
            r.put("escale.json", io.BytesIO(b"client %d" % i), create_only=True)
            winners.append(i)
        except ObjectExists:
            pass
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(winners) == 1, (winners, errors)
    r = WebDAV(address, **kwargs)
    r.open()
    assert r.get("escale.json").read() == b"client %d" % winners[0]


def test_interrupted_put_leaves_nothing_under_the_name(dav_server):
    relay = relay_on(dav_server, layout="nested")  # flat: test_relay_layout

    class Failing(Pattern):
        def readinto(self, b):
            if self.left < 5 * MB:
                raise OSError("disk gone")
            return super().readinto(b)

    with pytest.raises(SourceError):  # the local read failed: the caller's file error, not the relay's
        relay.put(f"b/{CID}/1/0", Failing(20 * MB))
    assert relay.stat(f"b/{CID}/1/0") is None and list(relay.list()) == []
    # a writer killed mid-put leaves a temporary: listings hide it, its writer removes it
    for name in (f"u/{CID}/5", f"u/{'f' * 16}/5"):
        folder, _, base = name.rpartition("/")
        relay._mkcol(folder)
        tmp = f"{folder}/{TMP_MARK}{base}.{uuid.uuid4().hex}"
        r = requests.put(relay._url(tmp), data=b"partial", auth=(USER, PASSWORD))
        assert r.status_code in (201, 204)
    assert list(relay.list()) == []
    assert relay.raw_usage() == 14
    assert relay.abort_incomplete(f"u/{CID}/") == 1
    assert relay.raw_usage() == 7  # the other writer's temporary is not ours to remove


def test_streaming_300_mb_in_bounded_memory(dav_server):
    size = 300 * MB + 3
    relay = relay_on(dav_server)
    expected = digest_of(Pattern(size))
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        assert relay.put(f"b/{CID}/1/0", Pattern(size)) == size  # not seekable: chunked
        t_put = time.monotonic() - t0
        _cur, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        t0 = time.monotonic()
        with relay.get(f"b/{CID}/1/0") as f:
            got = digest_of(f)
        t_get = time.monotonic() - t0
        _cur, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n{dav_server.kind}: 300 MB put {t_put:.1f} s (peak {put_peak >> 20} MiB), "
          f"get {t_get:.1f} s (peak {get_peak >> 20} MiB)")
    assert got == expected
    assert relay.stat(f"b/{CID}/1/0").size == size
    assert put_peak < 24 << 20 and get_peak < 24 << 20, (put_peak, get_peak)


def test_usage_when_the_server_gives_it(dav_server, tmp_path):
    relay = relay_on(dav_server)
    u = relay.usage()
    if dav_server.kind == "wsgidav":  # reports the disk's RFC 4331 quota properties
        assert u.used is not None and u.available is not None and u.available > 0
    else:  # Apache mod_dav_fs does not
        assert u.used is None and u.available is None


def test_quota_properties_and_507(tmp_path):
    """A server with a 3 MB quota: RFC 4331 numbers, and 507 once full -> QuotaExceeded."""
    server = start_or_skip(make_server("wsgidav", tmp_path / "srv", quota=3 * MB))
    try:
        relay = relay_on(server)
        assert relay.usage().used == 0 and relay.usage().available == 3 * MB
        relay.put(f"b/{CID}/1/0", io.BytesIO(os.urandom(2 * MB)))
        assert relay.usage().used == 2 * MB and relay.usage().available == 1 * MB
        with pytest.raises(QuotaExceeded, match="507"):
            relay.put(f"b/{CID}/1/1", io.BytesIO(os.urandom(2 * MB)))
        assert [i.name for i in relay.list()] == [f"b/{CID}/1/0"] and relay.raw_usage() == 2 * MB
    finally:
        server.cleanup()


# ---------------------------------------------------------------------------------------
# errors and retries (through a real proxy that fails on purpose)
# ---------------------------------------------------------------------------------------
def proxied(server, proxy, **extra) -> WebDAV:
    address, _conf, kwargs = server.new()
    relay = WebDAV(address.replace(server.url, proxy.url), **{**kwargs, **extra})
    return relay


def test_retries_honour_retry_after_and_resume_downloads(relay_webdav_apache):
    plan = {}
    proxy = FaultProxy(relay_webdav_apache.url, script=lambda m, p, n: plan.pop(n, None)).start()
    try:
        relay = proxied(relay_webdav_apache, proxy, timeout="1", layout="nested")  # the plan counts its MKCOLs
        relay.open()
        data = os.urandom(3 * MB)
        n = proxy.requests
        # MKCOL: 503, reset, ok; PUT (a temporary): 500, stall, ok; MOVE: done but answer lost
        plan.update({n: "503", n + 1: "reset", n + 3: "500", n + 4: "stall", n + 6: "lost"})
        t0 = time.monotonic()
        relay.put(f"b/{CID}/1/0", io.BytesIO(data))  # seekable: replayed
        assert time.monotonic() - t0 >= 1.0  # Retry-After: 1 was honoured
        assert relay.get(f"b/{CID}/1/0").read() == data
        # a download cut in the middle resumes where it stopped
        n = proxy.requests
        plan.update({n: "cut"})
        assert relay.get(f"b/{CID}/1/0").read() == data
        assert proxy.counts == {"503": 1, "500": 1, "reset": 1, "stall": 1, "lost": 1, "cut": 1}
        # a non-seekable body larger than the replay buffer is not sent twice
        n = proxy.requests
        plan.update({n + 1: "500"})  # MKCOL passes, the PUT fails
        with pytest.raises(RelayError, match="could not be sent again"):
            relay.put(f"b/{CID}/2/0", Pattern(12 * MB))
        assert relay.stat(f"b/{CID}/2/0") is None
        # a server that silently drops a chunked body is caught before the object takes its name
        n = proxy.requests
        plan.update({n + 1: "empty"})  # MKCOL passes, the PUT arrives empty
        with pytest.raises(RelayError, match=f"kept 0 bytes of {12 * MB}"):
            relay.put(f"b/{CID}/3/0", Pattern(12 * MB))
        assert relay.stat(f"b/{CID}/3/0") is None and relay.raw_usage(f"b/{CID}/3/") == 0
        # 507 is "quota reached", not a crash; too many failures end in a RelayError
        n = proxy.requests
        plan.update({n: "507"})
        with pytest.raises(QuotaExceeded):
            relay.put(f"a/{CID}", io.BytesIO(b"ack"))
        relay.max_retries = 2
        n = proxy.requests
        plan.update({n: "500", n + 1: "500", n + 2: "500"})
        with pytest.raises(RelayError, match=r"after 3 attempt\(s\): HTTP 500"):
            relay.stat(f"a/{CID}")
    finally:
        proxy.stop()


def test_tls_with_a_private_ca(tmp_path):
    pki = make_ca(tmp_path / "pki")
    server = make_server("wsgidav", tmp_path / "srv", tls=(pki["cert"], pki["key"]))
    server.tls_ca = pki["ca"]
    start_or_skip(server)
    try:
        address, _conf, kwargs = server.new()
        assert address.startswith("https://")
        relay = WebDAV(address, **kwargs)  # verify ssl = the CA bundle path
        relay.open()
        relay.put("escale.json", io.BytesIO(b"tls"))
        assert relay.get("escale.json").read() == b"tls"
        kwargs.pop("verify_ssl")
        with pytest.raises(RelayError, match="certificate verify failed.*verify ssl"):
            WebDAV(address, **kwargs).open()
        insecure = WebDAV(address, verify_ssl="no", **kwargs)
        insecure.open()
        assert insecure.get("escale.json").read() == b"tls"
    finally:
        server.cleanup()


def test_client_certificate(tmp_path):
    pki = make_ca(tmp_path / "pki", client=True)
    server = make_server("apache", tmp_path / "srv", tls=(pki["cert"], pki["key"]), client_ca=pki["ca"])
    server.tls_ca = pki["ca"]
    server.probe_cert = (str(pki["client_cert"]), str(pki["client_key"]))
    start_or_skip(server)
    try:
        address, _conf, kwargs = server.new()
        relay = WebDAV(address, certfile=str(pki["client_cert"]), keyfile=str(pki["client_key"]), **kwargs)
        relay.open()
        relay.put(f"m/{CID}", io.BytesIO(b"card"))
        assert relay.get(f"m/{CID}").read() == b"card"
        with pytest.raises(RelayError):
            WebDAV(address, max_retries="0", **kwargs).open()
    finally:
        server.cleanup()


# ---------------------------------------------------------------------------------------
# the CLI: wrong password, server down, faults
# ---------------------------------------------------------------------------------------
def test_wrong_password_exits_2(relay_webdav_wsgidav, tmp_path):
    address, _conf, _kw = relay_webdav_wsgidav.new()
    cluster = Cluster(tmp_path, address, f"user = {USER}\npassword = not-the-password\n")
    a = cluster.add("a")
    a.write("f.txt", "kept")
    r = a.once(check=False)
    assert r.code == 2, r
    assert f"authentication failed for {address}" in r.err, r
    assert "not-the-password" not in r.out + r.err
    assert a.path("f.txt").read_text() == "kept"
    with pytest.raises(AuthenticationError, match=f"authentication failed for {address}"):
        WebDAV(address, user=USER, password="not-the-password").open()


def test_server_down_then_back(tmp_path):
    server = start_or_skip(make_server("apache", tmp_path / "srv"))
    try:
        address, conf, kwargs = server.new()
        cluster = Cluster(tmp_path, address, conf + "max retries = 1\n", kwargs)
        a, b = cluster.add("a"), cluster.add("b")
        a.write("one.txt", "one")
        cluster.round()
        assert b.path("one.txt").read_text() == "one"
        server.stop()
        a.write("two.txt", "two")
        a.write("one.txt", "one, edited")
        r = a.once(check=False)
        assert r.code == 2 and "relay failed" in r.err, r
        assert a.path("two.txt").read_text() == "two" and a.path("one.txt").read_text() == "one, edited"
        assert b.once(check=False).code == 2
        server.start()
        cluster.round()
        assert b.path("two.txt").read_text() == "two" and b.path("one.txt").read_text() == "one, edited"
        assert a.tree() == b.tree()
    finally:
        server.cleanup()


@pytest.mark.slow  # about a minute: every fault costs a timeout or a backoff
def test_three_clients_converge_through_a_faulty_proxy(relay_webdav_apache, tmp_path):
    # ~10 % of requests fail: 500, reset, answer lost after the work, cut body, stall (rarer: slow)
    faults = ("500", "reset", "lost", "cut") * 2 + ("stall",)
    proxy = FaultProxy(relay_webdav_apache.url, rate=0.1, faults=faults, stall=2.5, seed=7).start()
    try:
        address, conf, kwargs = relay_webdav_apache.new()
        cluster = Cluster(tmp_path, address.replace(relay_webdav_apache.url, proxy.url), conf, kwargs)
        cluster.env["ESCALE_WEBDAV_TIMEOUT"] = "1"
        clients = [cluster.add(n) for n in ("a", "b", "c")]
        expected: dict[str, bytes] = {}
        for i, c in enumerate(clients):
            for j in range(8):
                data = os.urandom(500 + 1000 * j)
                c.write(f"{c.name}/dir{j % 3}/f{j}.bin", data)
                expected[f"{c.name}/dir{j % 3}/f{j}.bin"] = data
        big = os.urandom(5 * MB)  # a blob of its own on the relay
        clients[0].write("big.bin", big)
        expected["big.bin"] = big

        def converged() -> bool:
            trees = [c.tree() for c in clients]
            return all(t == trees[0] for t in trees) and all(
                c.path(p).is_file() and c.path(p).read_bytes() == d for c in clients for p, d in expected.items())

        codes = []

        def rounds(n: int) -> int:
            for k in range(1, n + 1):
                for c in clients:
                    r = c.once(check=False, timeout=300)
                    assert r.code in (0, 1, 2), r
                    codes.append(r.code)
                if converged():
                    return k
            return 0

        assert rounds(12), f"not converged; proxy faults {proxy.counts}, exit codes {codes}"
        # edits, a deletion and a rename, still through the faults
        clients[1].write("a/dir0/f0.bin", b"edited by b")
        expected["a/dir0/f0.bin"] = b"edited by b"
        clients[2].path("b/dir1/f1.bin").unlink()
        del expected["b/dir1/f1.bin"]
        os.rename(clients[0].path("c/dir2/f2.bin"), clients[0].path("c/renamed.bin"))
        expected["c/renamed.bin"] = expected.pop("c/dir2/f2.bin")
        assert rounds(12), f"not converged after changes; proxy faults {proxy.counts}, exit codes {codes}"
        print(f"\nfaulty proxy: {proxy.requests} requests, faults {proxy.counts}, exit codes {codes}")
        assert sum(proxy.counts.values()) >= 10 and len(proxy.counts) >= 4, proxy.counts
        for c in clients:
            files = {k for k, v in c.tree().items() if v[0] == "file"}
            assert files == set(expected), c.name
            assert temp_files(c.folder) == []
        # and once the faults stop, the relay drains to its small objects
        proxy.rate = 0
        cluster.round(rounds=2)
        assert update_objects(cluster) == []
    finally:
        proxy.stop()


class DAVSampler:
    """Samples the bytes on the server (temporaries included) with PROPFIND every ~50 ms."""

    def __init__(self, relay: WebDAV, interval: float = 0.05):
        self.relay, self.interval = relay, interval
        self.max = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.relay.raw_usage()
            except RelayError:
                continue  # an object vanished between two PROPFINDs
            self.samples += 1
            self.max = max(self.max, n)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_quota_never_exceeded_with_slow_puller(relay_webdav_apache, tmp_path):
    """tests/test_quota.py's scenario on Apache WebDAV, sampled by PROPFIND."""
    quota = 5 * MB
    address, conf, kwargs = relay_webdav_apache.new()
    cluster = Cluster(tmp_path, address, conf, kwargs)
    a = cluster.add("A", extra="quota = 5MB\n")
    b = cluster.add("B")
    b.once()
    for i in range(12):
        a.write(f"one/f{i:02d}.bin", os.urandom(MB))
    for i in range(2):
        a.write(f"two/g{i}.bin", os.urandom(MB * 5 // 2))
    relay = cluster.backend()
    outs = []
    with DAVSampler(relay) as sampler:
        for rounds in range(1, 41):
            r = a.once(check=False)
            assert r.code == 0, r
            outs.append(r.out)
            if rounds % 2 == 0:
                b.once()
                if b.tree() == a.tree():
                    break
        time.sleep(0.1)
    print(f"\nwebdav quota: {rounds} rounds, {sampler.samples} samples, max {sampler.max} bytes (quota {quota})")
    assert sampler.samples > 20 and sampler.max > 2 * MB
    assert sampler.max <= quota, sampler.max
    assert b.tree() == a.tree()
    assert any("waiting for room" in o for o in outs)
    a.once()
    assert update_objects(cluster) == []
