"""The S3 relay against real S3 servers on 127.0.0.1 (issue 5).

SeaweedFS and moto run as real server processes (tests/servers_s3.py); rclone serve s3
stands in for the servers that ignore conditional writes; a fault-injecting proxy sits in
front of SeaweedFS for the retry tests. Nothing is mocked.
"""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
import uuid

import pytest

from cluster import Cluster, kill9, wait_for
from peak import peak_rss
from escale.errors import AuthenticationError, ObjectExists, RelayError, RelayObjectMissing, SourceError
from escale.relay import backend_for
from escale.relay.s3 import DEFAULT_PART_SIZE, MIN_PART_SIZE, PROBE_MARK, S3
from servers_s3 import FaultProxy

MiB = 1 << 20


def make_relay(server, address: str | None = None, **kw) -> S3:
    addr, _conf, kwargs = server.new()
    relay = S3(address or addr, **{**kwargs, **kw})
    return relay


@pytest.fixture
def relay(s3_server):
    r = make_relay(s3_server)
    r.open()
    yield r
    r.close()


def incomplete_uploads(server, prefix: str) -> list[dict]:
    r = server.client().list_multipart_uploads(Bucket=server.bucket, Prefix=prefix)
    return r.get("Uploads", [])


class FailingStream(io.RawIOBase):
    """Gives ``good`` bytes, then fails like a disk error."""

    def __init__(self, good: int):
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.left <= 0:
            raise OSError(5, "Input/output error")
        n = min(len(b), self.left)
        b[:n] = b"z" * n
        self.left -= n
        return n


# --------------------------------------------------------------------------- the interface


def test_registered_for_s3_addresses() -> None:
    assert backend_for("s3") is S3 and backend_for("S3") is S3


def test_put_get_stat_delete(relay) -> None:
    assert relay.put("u/c1/1", io.BytesIO(b"hello")) == 5
    assert relay.get("u/c1/1").read() == b"hello"
    info = relay.stat("u/c1/1")
    assert info.name == "u/c1/1" and info.size == 5 and info.etag and abs(info.mtime - time.time()) < 120
    assert relay.stat("u/c1/2") is None
    with pytest.raises(RelayObjectMissing, match="relay object u/c1/2 is missing"):
        relay.get("u/c1/2")
    name = "files/unicodé 日本/a b+c=d.txt"
    relay.put(name, io.BytesIO(b"x" * 100))
    assert relay.get(name).read() == b"x" * 100
    relay.put("u/c1/1", io.BytesIO(b""))  # overwrite, empty
    assert relay.stat("u/c1/1").size == 0 and relay.get("u/c1/1").read() == b""
    assert {i.name: i.size for i in relay.list()} == {"u/c1/1": 0, name: 100}
    relay.delete("u/c1/1")
    relay.delete("u/c1/1")  # missing: fine
    assert [i.name for i in relay.list()] == [name]


def test_stat_and_list_agree_and_see_same_size_rewrites(relay) -> None:
    relay.put("a/ack", io.BytesIO(b'{"pos": 1}'))
    first = relay.stat("a/ack")
    assert [first] == list(relay.list("a/"))
    relay.put("a/ack", io.BytesIO(b'{"pos": 2}'))  # same size, same second
    second = relay.stat("a/ack")
    assert second.size == first.size and second.mtime != first.mtime and [second] == list(relay.list("a/"))


def test_reads_stream_in_blocks(relay) -> None:
    data = os.urandom(3 * MiB + 5)
    relay.put("b/x", io.BytesIO(data))
    with relay.get("b/x") as f:
        got = []
        while block := f.read(64 * 1024):
            got.append(block)
        assert b"".join(got) == data
    buf = io.BufferedReader(relay.get("b/x"))  # a real raw stream
    assert buf.read() == data


def test_list_is_relative_to_the_prefix_and_filtered(s3_server) -> None:
    relay = make_relay(s3_server)
    relay.open()
    sibling = S3(relay.address + "-sibling", **s3_server.kwargs())
    sibling.open()
    sibling.put("u/x", io.BytesIO(b"not ours"))
    for name in ("u/a/1", "u/a/2", "u/b/1", "m/a"):
        relay.put(name, io.BytesIO(name.encode()))
    raw = s3_server.client()
    raw.put_object(Bucket=s3_server.bucket, Key=relay.prefix + "folder-marker/", Body=b"")
    raw.put_object(Bucket=s3_server.bucket, Key=relay.prefix + PROBE_MARK + "left", Body=b"")
    raw.put_object(Bucket=s3_server.bucket, Key=relay.prefix + "bad\\\\name", Body=b"")  # not a relay name
    names = sorted(i.name for i in relay.list())
    # the backslash key is skipped; SeaweedFS stores it as bad/name (a valid name) instead
    assert [n for n in names if n != "bad/name"] == ["m/a", "u/a/1", "u/a/2", "u/b/1"]
    assert sorted(i.name for i in relay.list("u/a/")) == ["u/a/1", "u/a/2"]
    assert sorted(i.name for i in relay.list("u/")) == ["u/a/1", "u/a/2", "u/b/1"]
    assert [i.name for i in sibling.list()] == ["u/x"]
    with pytest.raises(Exception, match="invalid relay object name"):
        relay.put("../escape", io.BytesIO(b""))


def test_list_paginates_past_1000_keys(relay_s3_seaweedfs) -> None:
    from concurrent.futures import ThreadPoolExecutor

    server = relay_s3_seaweedfs
    relay = make_relay(server)
    relay.open()
    raw = server.client()
    names = [f"u/c/{i:05d}" for i in range(1234)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: raw.put_object(Bucket=server.bucket, Key=relay.prefix + n, Body=b"k"), names))
    calls = []
    relay.client.meta.events.register("after-call.s3.ListObjectsV2", lambda **kw: calls.append(1))
    listed = [i.name for i in relay.list()]
    assert sorted(listed) == names and len(calls) == 2  # two pages of at most 1000
    assert len(list(relay.list("u/c/011"))) == 100


# --------------------------------------------------------------------------- create-if-absent


def test_create_only_is_atomic_where_the_server_supports_it(relay) -> None:
    assert relay.put("header", io.BytesIO(b"first"), create_only=True) == 5
    assert relay._conditional is True  # both SeaweedFS and moto honour If-None-Match
    with pytest.raises(ObjectExists):
        relay.put("header", io.BytesIO(b"second"), create_only=True)
    assert relay.get("header").read() == b"first"
    assert not [i for i in relay.list() if PROBE_MARK in i.name]
    raw = relay.client.list_objects_v2(Bucket=relay.bucket, Prefix=relay.prefix)
    assert [o["Key"] for o in raw.get("Contents", [])] == [relay.prefix + "header"]  # probe removed


def test_create_only_multipart(relay) -> None:
    relay.part_size = MIN_PART_SIZE
    data = os.urandom(MIN_PART_SIZE + 100)
    assert relay.put("big-header", io.BytesIO(data), create_only=True) == len(data)
    with pytest.raises(ObjectExists):
        relay.put("big-header", io.BytesIO(os.urandom(MIN_PART_SIZE + 1)), create_only=True)
    assert relay.get("big-header").read() == data
    assert incomplete_uploads_of(relay) == []


def incomplete_uploads_of(relay: S3) -> list[dict]:
    return relay.client.list_multipart_uploads(Bucket=relay.bucket, Prefix=relay.prefix).get("Uploads", [])


def test_create_only_falls_back_where_the_server_ignores_it(s3_rclone, caplog) -> None:
    relay = make_relay(s3_rclone)
    relay.open()
    relay.put("header", io.BytesIO(b"first"), create_only=True)
    assert relay._conditional is False  # rclone serve s3 silently overwrites
    assert "ignores conditional writes" in caplog.text
    with pytest.raises(ObjectExists):
        relay.put("header", io.BytesIO(b"second"), create_only=True)
    assert relay.get("header").read() == b"first"
    # another relay object (another client) probes on its own, and also refuses
    other = S3(relay.address, **s3_rclone.kwargs())
    with pytest.raises(ObjectExists):
        other.put("header", io.BytesIO(b"third"), create_only=True)
    assert relay.get("header").read() == b"first"
    assert [i.name for i in relay.list()] == ["header"]


def test_no_interrupted_upload_is_found_where_the_server_never_had_one(s3_rclone) -> None:
    """rclone serve s3 answers ListMultipartUploads with NoSuchUpload while its bucket has never
    had a multipart upload: that is "none to abort", not a relay failure (a fresh client's
    start-up failed on it: bench/run.py's s3-rclone bench)."""
    relay = make_relay(s3_rclone)
    relay.open()
    relay.put("u/me/1", io.BytesIO(b"x"))
    assert relay.abort_incomplete("u/me/") == 0
    assert relay.abort_incomplete("") == 0
    assert relay.get("u/me/1").read() == b"x"


# --------------------------------------------------------------------------- multipart


def test_large_object_goes_up_in_parts(s3_server) -> None:
    relay = make_relay(s3_server, part_size=MIN_PART_SIZE)
    relay.open()
    data = os.urandom(2 * MIN_PART_SIZE + 12345)
    calls = []
    relay.client.meta.events.register("after-call.s3.UploadPart", lambda **kw: calls.append(1))
    assert relay.put("b/big", io.BytesIO(data)) == len(data)
    assert len(calls) == 3
    info = relay.stat("b/big")
    assert info.size == len(data) and info.etag.endswith("-3")
    assert hashlib.sha256(relay.get("b/big").read()).digest() == hashlib.sha256(data).digest()
    # exactly one part's worth, and a trickling stream, still come out whole
    relay.put("b/exact", io.BytesIO(data[:MIN_PART_SIZE]))
    assert relay.get("b/exact").read() == data[:MIN_PART_SIZE]

    class Trickle(io.RawIOBase):
        def __init__(self):
            self.src = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            chunk = self.src.read(min(len(b), 70_000))
            b[:len(chunk)] = chunk
            return len(chunk)

    relay.put("b/trickle", Trickle())
    assert relay.get("b/trickle").read() == data
    assert incomplete_uploads_of(relay) == []


def test_failed_multipart_upload_is_aborted(s3_server) -> None:
    relay = make_relay(s3_server, part_size=MIN_PART_SIZE)
    relay.open()
    # the local data failed, not the relay: a file error (exit 1), never "relay failed"
    with pytest.raises(SourceError, match="relay object b/broken"):
        relay.put("b/broken", FailingStream(2 * MIN_PART_SIZE + 10))
    assert relay.stat("b/broken") is None
    assert incomplete_uploads_of(relay) == []


def test_abort_incomplete_removes_only_uploads_under_the_prefix(s3_server) -> None:
    relay = make_relay(s3_server)
    relay.open()
    raw = s3_server.client()
    started = {}
    for name in ("u/me/7", "b/me/7/0", "u/other/3"):
        key = relay.prefix + name
        up = raw.create_multipart_upload(Bucket=s3_server.bucket, Key=key)["UploadId"]
        raw.upload_part(Bucket=s3_server.bucket, Key=key, UploadId=up, PartNumber=1, Body=b"p" * 1024)
        started[name] = up
    assert relay.abort_incomplete("u/me/") == 1
    assert relay.abort_incomplete("b/me/") == 1
    assert relay.abort_incomplete("u/me/") == 0
    left = incomplete_uploads(s3_server, relay.prefix)
    assert [u["Key"] for u in left] == [relay.prefix + "u/other/3"]
    with pytest.raises(Exception):  # really aborted: the upload cannot be completed any more
        s3_server.client(attempts=1).complete_multipart_upload(Bucket=s3_server.bucket, Key=relay.prefix + "u/me/7",
                                      UploadId=started["u/me/7"], MultipartUpload={"Parts": [
                                          {"PartNumber": 1, "ETag": '"x"'}]})
    assert relay.abort_incomplete("") == 1
    assert list(relay.list()) == []


def test_usage_is_unknown(relay) -> None:
    u = relay.usage()
    assert u.used is None and u.available is None


# --------------------------------------------------------------------------- errors


def test_missing_bucket_and_create_bucket(s3_server) -> None:
    bucket = f"escale-missing-{uuid.uuid4().hex[:8]}"
    relay = make_relay(s3_server, address=f"s3://{bucket}/p")
    with pytest.raises(RelayError) as info:
        relay.open()
    assert f"bucket '{bucket}' does not exist on {s3_server.endpoint}" in str(info.value)
    assert "'create bucket = yes'" in str(info.value)
    relay = make_relay(s3_server, address=f"s3://{bucket}/p", create_bucket="yes")
    relay.open()
    relay.put("x", io.BytesIO(b"1"))
    relay.open()  # again: the bucket is there now
    assert [i.name for i in relay.list()] == ["x"]


def test_missing_bucket_through_the_cli(relay_s3_seaweedfs, tmp_path) -> None:
    server = relay_s3_seaweedfs
    bucket = f"escale-cli-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(tmp_path, f"s3://{bucket}/repo", server.conf())
    a = cluster.add("a")
    r = a.once(check=False)
    assert r.code == 2 and "create bucket = yes" in r.out + r.err, r
    cluster.relay_conf = server.conf(extra="create bucket = yes\n")
    b = cluster.add("b")
    b.write("hello.txt", "hi")
    b.once()
    assert server.client().head_bucket(Bucket=bucket)


def test_wrong_credentials_exit_2(relay_s3_seaweedfs, tmp_path) -> None:
    server = relay_s3_seaweedfs
    address, _conf, _kw = server.new()
    for conf in (f"endpoint = {server.endpoint}\naccess key = {server.access_key}\nsecret key = wrong-secret-x\n",
                 f"endpoint = {server.endpoint}\naccess key = AKIDNOBODY\nsecret key = wrong-secret-x\n"):
        cluster = Cluster(tmp_path / uuid.uuid4().hex[:6], address, conf)
        a = cluster.add("a")
        a.write("f.txt", "data")
        r = a.once("-v", check=False)
        assert r.code == 2, r
        assert f"authentication failed for {address}" in r.out + r.err
        assert "wrong-secret-x" not in r.out + r.err  # never logged
    with pytest.raises(AuthenticationError, match=f"authentication failed for {address}"):
        S3(address, endpoint=server.endpoint, user=server.access_key, password="nope").open()


def test_unreachable_endpoint_is_a_relay_error() -> None:
    from servers_s3 import free_port

    relay = S3("s3://escale-test/x", endpoint=f"http://127.0.0.1:{free_port()}", user="a", password="b",
               max_retries=0)
    with pytest.raises(RelayError, match="cannot reach http://127.0.0.1"):
        relay.open()


# --------------------------------------------------------------------------- faults


def test_retries_and_resumes_through_a_faulty_proxy(relay_s3_seaweedfs) -> None:
    server = relay_s3_seaweedfs
    proxy = FaultProxy(server.endpoint, rate=0.25, seed=7)
    try:
        relay = make_relay(server, endpoint=proxy.endpoint, part_size=MIN_PART_SIZE)
        relay.open()
        big = os.urandom(2 * MIN_PART_SIZE + 1)
        for i in range(8):
            relay.put(f"o/{i}", io.BytesIO(b"%d" % i * 1000))
        relay.put("o/big", io.BytesIO(big))
        for i in range(8):
            assert relay.get(f"o/{i}").read() == b"%d" % i * 1000
        assert relay.get("o/big").read() == big
        assert len(list(relay.list("o/"))) == 9
        faults = {k: proxy.counts[k] for k in FaultProxy.KINDS if proxy.counts[k]}
        assert sum(faults.values()) >= 5 and len(faults) >= 3, proxy.counts
    finally:
        proxy.stop()
    assert incomplete_uploads(server, relay.prefix + "o/big") == []


def test_download_resumes_where_the_connection_broke(relay_s3_seaweedfs) -> None:
    server = relay_s3_seaweedfs
    relay = make_relay(server)
    relay.open()
    data = os.urandom(300_000)
    relay.put("b/blob", io.BytesIO(data))
    proxy = FaultProxy(server.endpoint, rate=0.3, seed=5, kinds=("cut_body",))
    try:
        reader = make_relay(server, address=relay.address, endpoint=proxy.endpoint)
        resumed = 0
        for _ in range(15):
            with reader.get("b/blob") as f:
                assert f.read() == data
                resumed += f.resumes
        assert resumed and proxy.counts["cut_body"] == resumed, proxy.counts
    finally:
        proxy.stop()


@pytest.mark.slow  # ~20 s: every fault costs a back-off; the quick check is the test above
def test_three_clients_converge_through_faults(relay_s3_seaweedfs, tmp_path) -> None:
    """~10 % of requests fail (503 SlowDown, 500, resets, cut bodies): nothing is lost."""
    server = relay_s3_seaweedfs
    proxy = FaultProxy(server.endpoint, rate=0.1, seed=11)
    try:
        address, _conf, _kw = server.new()
        cluster = Cluster(tmp_path, address, server.conf(endpoint=proxy.endpoint, extra="part size = 5MiB\n"),
                          server.kwargs(), kind="s3-faulty")
        a, b, c = cluster.add("a"), cluster.add("b"), cluster.add("c")
        expected = {}
        for client, n in ((a, 12), (b, 8), (c, 5)):
            for i in range(n):
                data = os.urandom(1000 + 37 * i)
                rel = f"{client.name}/f{i}.bin"
                client.write(rel, data)
                expected[rel] = hashlib.sha256(data).hexdigest()
        big = os.urandom(7 * MiB + 7)  # a multipart upload and download through the faults
        a.write("big.bin", big)
        expected["big.bin"] = hashlib.sha256(big).hexdigest()
        failed = 0
        for _ in range(8):
            for cl in (a, b, c):
                if cl.once(check=False).code != 0:
                    failed += 1
            trees = [cl.tree() for cl in (a, b, c)]
            if trees[0] == trees[1] == trees[2] and len(trees[0]) == len(expected) + 3:
                break
        for cl in (a, b, c):
            t = cl.tree()
            files = {p: v[1] for p, v in t.items() if v[0] == "file"}
            assert files == expected, f"{cl.name}: missing {sorted(set(expected) - set(files))[:5]}"
        assert proxy.counts["requests"] > 100 and sum(proxy.counts[k] for k in FaultProxy.KINDS) >= 8, proxy.counts
        print(f"faults injected: {dict(proxy.counts)}; cycles that failed: {failed}")
    finally:
        proxy.stop()
    # one clean cycle each (no faults): interrupted uploads are gone, updates collected
    cluster.relay_conf = server.conf(extra="part size = 5MiB\n")
    for cl in (a, b, c):
        cl.conf.write_text(cl.conf.read_text().replace(proxy.endpoint, server.endpoint))
    cluster.round()  # each client connects once more: it aborts its own interrupted uploads
    assert incomplete_uploads(server, address.split("/", 3)[3] + "/") == []


# --------------------------------------------------------------------------- crash and memory


def test_killed_pusher_leaves_no_multipart_upload_behind(relay_s3_seaweedfs, tmp_path) -> None:
    server = relay_s3_seaweedfs
    address, conf, kwargs = server.new()
    prefix = address.split("/", 3)[3] + "/"
    cluster = Cluster(tmp_path, address, conf + "part size = 5MiB\n", kwargs)
    a, b = cluster.add("a"), cluster.add("b")
    b.once()
    data = os.urandom(80 * MiB)
    a.write("big.bin", data)
    proc = a.start("--once")
    try:
        assert wait_for(lambda: incomplete_uploads(server, prefix), timeout=120, interval=0.02), \
            "no multipart upload seen"
    finally:
        kill9(proc)
    assert incomplete_uploads(server, prefix)
    a.once()  # connects: aborts its own interrupted uploads, then publishes again
    b.once()
    assert b.path("big.bin").read_bytes() == data
    assert incomplete_uploads(server, prefix) == []


def test_killed_parallel_download_leaves_no_partial_file(relay_s3_seaweedfs, tmp_path) -> None:
    """kill -9 of a puller while it reads a large blob with parallel ranged GETs: nothing
    under the file's name (only the temporary, removed by the next run), then the file
    arrives whole."""
    server = relay_s3_seaweedfs
    address, conf, kwargs = server.new()
    cluster = Cluster(tmp_path, address, conf + "passphrase = text:kill nine\n", kwargs)
    a, b = cluster.add("a"), cluster.add("b")
    b.once()
    data = os.urandom(64 * MiB)
    a.write("big.bin", data)
    a.once()
    proc = b.start("--once")
    try:
        seen = wait_for(lambda: any(".escale-tmp-" in p.name and p.stat().st_size > 0
                                    for p in b.folder.iterdir()), timeout=120, interval=0.005)
    finally:
        kill9(proc)
        proc.communicate(timeout=60)
    assert seen, "no temporary seen: the download ended before the kill"
    assert not b.path("big.bin").exists()
    b.once()
    assert b.path("big.bin").read_bytes() == data
    assert not [p for p in b.folder.iterdir() if ".escale-tmp-" in p.name]


@pytest.mark.slow
def test_one_gigabyte_file_multipart_with_bounded_memory(relay_s3_seaweedfs, tmp_path) -> None:
    server = relay_s3_seaweedfs
    address, conf, kwargs = server.new()
    cluster = Cluster(tmp_path, address, conf, kwargs)
    a, b = cluster.add("a"), cluster.add("b")
    b.once()  # b is a member, so the update waits for it
    size = 1000 * 1000 * 1000
    h = hashlib.sha256()
    block = os.urandom(MiB)
    with open(a.path("huge.bin"), "wb") as f:
        left = size
        while left:
            chunk = block[: min(left, MiB)]
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            block = block[1:] + block[:1]  # not one repeated block

    def run(client) -> int:
        """Peak RSS of one ``escale --once``, measured by a small launcher process: wait4()
        from pytest itself would report pytest's own peak too (Linux carries the parent's
        high-water mark over fork and exec)."""
        code, peak, err = peak_rss(client.cmd("--once", "-q"), cluster.env)
        assert code == 0, err[-2000:]
        return peak

    relay = cluster.backend()
    push_rss = run(a)
    big = [i for i in relay.list() if i.size > 100 * MiB]
    assert big and all(i.etag.endswith(f"-{-(-i.size // DEFAULT_PART_SIZE)}") for i in big), big  # multipart
    assert push_rss < 200 * MiB, f"push peak RSS {push_rss / MiB:.0f} MiB"
    pull_rss = run(b)
    assert pull_rss < 200 * MiB, f"pull peak RSS {pull_rss / MiB:.0f} MiB"
    g = hashlib.sha256()
    with open(b.path("huge.bin"), "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            g.update(chunk)
    assert g.digest() == h.digest()
    print(f"1 GB: push peak RSS {push_rss / MiB:.0f} MiB, pull peak RSS {pull_rss / MiB:.0f} MiB")
