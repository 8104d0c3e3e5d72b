"""The FTP/FTPS relay against real pyftpdlib servers on 127.0.0.1 (issue 15).

The contract itself is checked by tests/test_relay_contract.py (kinds ftp-pyftpdlib and
ftps-pyftpdlib) and the multi-client scenarios by tests/test_sync.py; here: what is
particular to FTP (TLS and its certificate, implicit TLS, servers without MLSD or that
will not rename onto an existing file) and the faults a server really produces (421, a
control connection dropped mid-transfer, lost answers), through the Python API and the
real CLI (tests/cluster.py).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os

import pytest

from cluster import Cluster, kill9, raw_key_file, wait_for
from escale.errors import AuthenticationError, ConfigError, ObjectExists, RelayError, TransientRelayError
from escale.relay import FTP, backend_for
from escale.relay.ftp import LOCK_MARK, OLD_MARK, TMP_MARK
from servers_ftp import PASSWORD, USER, FTPServer, ServerUnavailable

MiB = 1 << 20


def start(tmp_path, **kw) -> FTPServer:
    server = FTPServer(tmp_path / "ftp", **kw)
    try:
        server.start()
    except ServerUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    return server


@pytest.fixture
def own_server(request, tmp_path):
    """A server of this test's own (faults, options), stopped at the end."""
    servers = []

    def make(**kw) -> FTPServer:
        s = start(tmp_path / f"s{len(servers)}", **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def relay_on(server: FTPServer, **extra) -> FTP:
    address, _conf, kwargs = server.new()
    relay = FTP(address, **{**kwargs, **extra})
    relay.open()
    return relay


def on_disk(server: FTPServer, relay: FTP, name: str):
    """The server-side file of object ``name``, in the relay's layout."""
    from escale.relay.layout import FLAT, encode

    return server.folder(relay.address) / (encode(name) if relay.layout == FLAT else name)


def leftovers(server: FTPServer, relay: FTP) -> list[str]:
    """Temporaries, locks and set-aside objects on the server's disk."""
    folder = server.folder(relay.address)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.startswith((TMP_MARK, LOCK_MARK, OLD_MARK)))


class Pattern(io.RawIOBase):
    """``size`` pseudo-random bytes made on the fly: a non-seekable stream."""

    def __init__(self, size: int, seed: bytes = b"x"):
        self.left, self.pos = size, 0
        self.block = hashlib.sha256(seed).digest() * (1 << 15)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left, len(self.block) - self.pos)
        b[:n] = self.block[self.pos:self.pos + n]
        self.pos = (self.pos + n) % len(self.block)
        self.left -= n
        return n


# ------------------------------------------------------------------ addresses and options (no server)
def test_addresses_and_options() -> None:
    assert backend_for("ftp") is FTP and backend_for("ftps") is FTP
    r = FTP("ftps://alice:pw@ftp.example.org/escale/notes")
    assert (r.host, r.port, r.user, r.path, r.tls, r.implicit) == ("ftp.example.org", 21, "alice", "escale/notes",
                                                                   True, False)
    assert "pw" not in r.address and r.address == "ftps://alice@ftp.example.org/escale/notes"
    assert FTP("ftps://h:990/x").implicit and not FTP("ftps://h:990/x", tls_mode="explicit").implicit
    assert FTP("ftps://h/x", tls_mode="implicit").port == 990
    r = FTP("ftp://h/%2Fsrv/escale")
    assert r.absolute and r.path == "srv/escale" and not r.tls
    assert FTP("ftp://h/x", passive="no", timeout="5", max_retries="2").passive is False
    with pytest.raises(ConfigError, match="needs an ftps:// address"):
        FTP("ftp://h/x", tls_mode="implicit")
    with pytest.raises(ConfigError, match="'explicit'"):
        FTP("ftps://h/x", tls_mode="sometimes")
    with pytest.raises(ConfigError, match="bad port"):
        FTP("ftps://alice:pw@h:99999/x")


def test_options_through_the_configuration(tmp_path) -> None:
    from escale.config import parse_config_text

    text = ("[r]\nlocal path = /tmp/escale-t/l\nrelay address = ftps://alice@ftp.example.org/escale\n"
            "encryption = off\ntls mode = implicit\npassive = no\ntimeout = 7.5\nmax retries = 2\n")
    r = parse_config_text(text, "/tmp/escale-t/escale.conf").repositories["r"]
    relay = backend_for(r.relay_protocol)(r.relay_url, user=r.user, password=r.password, **r.options)
    assert (relay.implicit, relay.passive, relay.timeout, relay.retry.max_retries, relay.user) == \
        (True, False, 7.5, 2, "alice")
    with pytest.raises(ConfigError, match="tls mode"):
        parse_config_text(text.replace("tls mode = implicit", "tls mode = maybe"), "/tmp/escale-t/escale.conf")


# ------------------------------------------------------------------ TLS
def test_an_untrusted_certificate_is_refused_with_a_clear_message(relay_ftps_pyftpdlib, tmp_path) -> None:
    server = relay_ftps_pyftpdlib
    address, _conf, kwargs = server.new()
    relay = FTP(address, user=USER, password=PASSWORD)  # the system CAs: the test CA is not one of them
    with pytest.raises(RelayError, match=r"certificate cannot be trusted \(.*\); if it is the right server, "
                                         r"set 'verify ssl' to the CA bundle"):
        relay.open()
    # through the CLI: exit 2 (relay), the same message, and the password nowhere
    cluster = Cluster(tmp_path, address, f"user = {USER}\npassword = {PASSWORD}\n", kwargs, kind="ftps")
    r = cluster.add("a").once(check=False)
    assert r.code == 2 and "certificate cannot be trusted" in r.out + r.err
    assert PASSWORD not in r.out + r.err


def test_verified_tls_protects_control_and_data(relay_ftps_pyftpdlib) -> None:
    """The server refuses anything in clear (tls_control_required, tls_data_required):
    a put, a listing and a get through it went over TLS, with the certificate checked."""
    relay = relay_on(relay_ftps_pyftpdlib)
    try:
        relay.put("a/b", io.BytesIO(b"secret"))
        assert [i.name for i in relay.list()] == ["a/b"] and relay.get("a/b").read() == b"secret"
        conn = relay._borrow()
        assert conn.ftp.sock.version() is not None and conn.ftp._prot_p
        relay._give_back(conn)
    finally:
        relay.close()


def test_implicit_tls(own_server) -> None:
    server = own_server(implicit=True)
    relay = relay_on(server)
    try:
        assert relay.implicit
        relay.put("x/y", io.BytesIO(b"implicit"))
        assert relay.get("x/y").read() == b"implicit"
    finally:
        relay.close()


def test_wrong_password(relay_ftps_pyftpdlib) -> None:
    address, _conf, kwargs = relay_ftps_pyftpdlib.new()
    relay = FTP(address, **{**kwargs, "password": "wrong"})
    with pytest.raises(AuthenticationError, match="authentication failed for ftps://") as e:
        relay.open()
    assert "wrong" not in str(e.value)


def test_plain_ftp_is_warned_about(relay_ftp_pyftpdlib, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="escale.relay.ftp"):
        relay = relay_on(relay_ftp_pyftpdlib)
    relay.close()
    assert any("plain FTP" in r.getMessage() and "use ftps://" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ servers unlike pyftpdlib's defaults
def test_without_mlsd_listings_come_from_list(own_server) -> None:
    """vsftpd has no MLSD/MLST: LIST (Unix form), SIZE and MDTM serve instead."""
    server = own_server(mlsd=False)
    relay = relay_on(server)
    try:
        conn = relay._borrow()
        assert not conn.mlst
        relay._give_back(conn)
        names = ["with space/a b", "deep/a/b/c", "u/0123/1", "pct/100%"]
        for i, name in enumerate(names):
            relay.put(name, io.BytesIO(b"o" * (i + 1)))
        listed = {i.name: i.size for i in relay.list()}
        assert listed == {n: i + 1 for i, n in enumerate(names)}
        assert [i.name for i in relay.list("u/")] == ["u/0123/1"]
        info = relay.stat("deep/a/b/c")
        assert info.size == 2 and abs(info.mtime - next(i.mtime for i in relay.list() if i.name == info.name)) < 1
        relay.put("h", io.BytesIO(b"first"), create_only=True)
        with pytest.raises(ObjectExists):
            relay.put("h", io.BytesIO(b"second"), create_only=True)
        for name in names + ["h"]:
            relay.delete(name)
        assert list(relay.list()) == [] and leftovers(server, relay) == []
    finally:
        relay.close()


def test_a_server_that_will_not_rename_onto_an_existing_file(own_server, caplog) -> None:
    """IIS refuses RNTO onto an existing name: the old object is set aside first, the
    replace is then declared non-atomic (readers may find the name absent a moment)."""
    server = own_server(rename_overwrites=False)
    relay = relay_on(server)
    try:
        relay.put("s/obj", io.BytesIO(b"old"))
        assert relay.capabilities.atomic_replace
        with caplog.at_level(logging.WARNING, logger="escale.relay.ftp"):
            relay.put("s/obj", io.BytesIO(b"new content"))
        assert relay.get("s/obj").read() == b"new content"
        assert not relay.capabilities.atomic_replace
        assert any("refuses to rename onto an existing file" in r.getMessage() for r in caplog.records)
        assert [i.name for i in relay.list()] == ["s/obj"] and leftovers(server, relay) == []
        # create-if-absent on such a server still says "exists"
        with pytest.raises(ObjectExists):
            relay.put("s/obj", io.BytesIO(b"other"), create_only=True)
    finally:
        relay.close()


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_an_object_set_aside_by_a_crash_is_put_back(own_server, layout) -> None:
    """A crash between the two renames of a replace leaves the old object aside: the
    writer's next start (abort_incomplete) gives it its name back."""
    server = own_server(rename_overwrites=False)
    relay = relay_on(server, layout=layout)
    try:
        relay.put("u/me/1", io.BytesIO(b"published"))
        path = on_disk(server, relay, "u/me/1")
        path.rename(path.parent / f"{OLD_MARK}{path.name}.0123abcd")  # what the crash left
        (path.parent / f"{TMP_MARK}{path.name}.4567cdef").write_bytes(b"half")
        assert relay.stat("u/me/1") is None and list(relay.list()) == []
        assert relay.abort_incomplete("u/me/") == 1
        assert relay.get("u/me/1").read() == b"published" and leftovers(server, relay) == []
    finally:
        relay.close()


# ------------------------------------------------------------------ create-if-absent
def test_create_if_absent_races_between_relays(relay_ftps_pyftpdlib) -> None:
    """Four relays (four connections, as four clients) create one name: one wins."""
    from concurrent.futures import ThreadPoolExecutor

    address, _conf, kwargs = relay_ftps_pyftpdlib.new()
    relays = [FTP(address, **kwargs) for _ in range(4)]
    for r in relays:
        r.open()
    outcomes = []

    def create(i: int) -> None:
        try:
            relays[i].put("h/header", io.BytesIO(b"client %d" % i), create_only=True)
            outcomes.append(i)
        except ObjectExists:
            outcomes.append(None)

    try:
        for _ in range(3):
            outcomes.clear()
            relays[0].delete("h/header")
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(create, range(4)))
            winners = [o for o in outcomes if o is not None]
            assert len(winners) == 1 and relays[0].get("h/header").read() == b"client %d" % winners[0]
        assert relays[0].capabilities.atomic_create
    finally:
        for r in relays:
            r.close()


def test_a_stale_lock_is_broken(relay_ftp_pyftpdlib, monkeypatch) -> None:
    """A creator killed while holding the lock folder: once the lock is older than
    STALE_LOCK_SECONDS (server clock), the next creator removes it and proceeds."""
    import escale.relay.ftp as ftpmod

    relay = relay_on(relay_ftp_pyftpdlib)
    try:
        lock = relay_ftp_pyftpdlib.folder(relay.address) / f"{LOCK_MARK}header"
        lock.mkdir()
        old = lock.stat().st_mtime - 3600
        os.utime(lock, (old, old))
        monkeypatch.setattr(ftpmod, "LOCK_WAIT_SECONDS", 1.0)
        relay.put("header", io.BytesIO(b"mine"), create_only=True)
        assert relay.get("header").read() == b"mine" and not lock.exists()
        (lock.parent / f"{LOCK_MARK}other").mkdir()  # a live writer's fresh lock: waited for, then
        with pytest.raises(TransientRelayError, match="another writer holds"):  # the cycle gives up
            relay.put("other", io.BytesIO(b"x"), create_only=True)
        assert relay.stat("other") is None
    finally:
        relay.close()


# ------------------------------------------------------------------ faults from the server itself
def test_421_and_dropped_control_connections_are_retried(own_server, caplog) -> None:
    server = own_server(tls=True)
    relay = relay_on(server, max_retries=4)
    relay.retry.sleep = lambda seconds: None  # keep the test quick; the policy is tested elsewhere
    try:
        relay.put("f/a", io.BytesIO(b"a"))
        for cmd in ("MLSD", "STOR", "RNTO", "RETR", "DELE", "MLST"):
            server.fault(cmd, "421")
            server.fault(cmd, "drop")
        with caplog.at_level(logging.WARNING, logger="escale.relay.ftp"):
            relay.put("f/b", io.BytesIO(b"b"))
            assert sorted(i.name for i in relay.list()) == ["f/a", "f/b"]
            assert relay.get("f/b").read() == b"b" and relay.stat("f/a").size == 1
            relay.delete("f/a")
            relay.delete("f/b")
        assert list(relay.list()) == [] and server.faults_left() == 0
        assert any("421" in r.getMessage() for r in caplog.records)
        assert any("closed the connection" in r.getMessage() for r in caplog.records)
    finally:
        relay.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_quietly(own_server, caplog, monkeypatch) -> None:
    """Servers end idle sessions (pyftpdlib and vsftpd after 300 s; 1 s here): between
    two cycles of a daemon that is no failure, worth neither a retry nor a warning."""
    import time

    import escale.relay.ftp as ftpmod

    monkeypatch.setattr(ftpmod, "IDLE_CHECK_SECONDS", 0.5, raising=False)
    server = own_server(tls=True, idle_timeout=1)
    relay = relay_on(server)
    try:
        relay.put("i/a", io.BytesIO(b"a"))
        time.sleep(2.5)  # the server closes the idle session
        with caplog.at_level(logging.WARNING):
            assert [i.name for i in relay.list()] == ["i/a"]
            relay.put("i/b", io.BytesIO(b"b"))
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    finally:
        relay.close()


def test_control_connection_dropped_mid_upload(own_server) -> None:
    """The server drops both connections 100 KiB into a 3 MiB upload: a seekable source is
    sent again on a new connection; a non-seekable one larger than the replay buffer is
    not (the next cycle sends it), and leaves nothing behind."""
    server = own_server(tls=True)
    relay = relay_on(server, max_retries=3)
    relay.retry.sleep = lambda seconds: None  # keep the test quick; the policy is tested elsewhere
    try:
        data = os.urandom(3 * MiB)
        server.fault("STOR", "cut", bytes=100 * 1024)
        assert relay.put("big/seekable", io.BytesIO(data), size=len(data)) == len(data)
        assert relay.get("big/seekable").read() == data and server.faults_left() == 0
        size = 9 * MiB
        server.fault("STOR", "cut", bytes=100 * 1024)
        with pytest.raises(TransientRelayError, match="could not be sent again"):
            relay.put("big/stream", Pattern(size), size=size)
        assert relay.stat("big/stream") is None and [i.name for i in relay.list()] == ["big/seekable"]
        assert leftovers(server, relay) == []
    finally:
        relay.close()


def test_an_upload_the_server_truncated_is_sent_again(own_server) -> None:
    """A server that keeps less than it received and still answers 226 (pyftpdlib over TLS
    does it to rclone's uploads): the temporary's size is checked before the rename."""
    server = own_server(tls=True)
    relay = relay_on(server, max_retries=3)
    relay.retry.sleep = lambda seconds: None
    try:
        data = os.urandom(300_000)
        server.fault("STOR", "short", bytes=4096)
        relay.put("t/obj", io.BytesIO(data), size=len(data))
        assert server.faults_left() == 0
        assert relay.stat("t/obj").size == len(data) and relay.get("t/obj").read() == data
        server.fault("STOR", "short", bytes=1, times=10)  # every try: the put fails, nothing is named
        with pytest.raises(TransientRelayError, match="kept 299999 bytes of 300000"):
            relay.put("t/other", io.BytesIO(data), size=len(data))
        assert relay.stat("t/other") is None and leftovers(server, relay) == []
    finally:
        relay.close()


def test_download_resumes_with_rest_after_a_drop(own_server, caplog) -> None:
    server = own_server(tls=True)
    relay = relay_on(server, max_retries=3)
    relay.retry.sleep = lambda seconds: None  # keep the test quick; the policy is tested elsewhere
    try:
        data = os.urandom(5 * MiB + 3)
        relay.put("b/blob", io.BytesIO(data))
        server.fault("RETR", "cut", bytes=1 * MiB, times=2)
        with caplog.at_level(logging.WARNING, logger="escale.relay.ftp"):
            with relay.get("b/blob") as f:
                got = f.read()
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
        assert server.faults_left() == 0
        assert sum("resuming" in r.getMessage() for r in caplog.records) == 2
    finally:
        relay.close()


def test_a_download_is_not_spliced_across_a_rewrite(own_server) -> None:
    """The object is replaced while being read and the transfer breaks: resuming would
    mix two versions, so the read fails instead."""
    server = own_server()
    relay = relay_on(server, max_retries=3)
    relay.retry.sleep = lambda seconds: None  # keep the test quick; the policy is tested elsewhere
    try:
        relay.put("b/x", io.BytesIO(b"1" * (2 * MiB)))
        server.fault("RETR", "cut", bytes=512 * 1024)
        f = relay.get("b/x")
        first = f.read(256 * 1024)
        relay.put("b/x", io.BytesIO(b"2" * (2 * MiB + 1)))  # a new file: new size, time and id
        with pytest.raises(RelayError, match="changed while being read"):
            f.read()
        assert set(first) == {ord("1")}
    finally:
        relay.close()


def test_lost_answers_are_checked_not_repeated(own_server) -> None:
    """The server renames, creates the lock folder or deletes, then the connection drops
    before its answer: the retry must see that the work was done."""
    server = own_server()
    relay = relay_on(server, max_retries=3)
    relay.retry.sleep = lambda seconds: None  # keep the test quick; the policy is tested elsewhere
    try:
        server.fault("RNTO", "lost")
        relay.put("a/obj", io.BytesIO(b"mine"))
        assert relay.get("a/obj").read() == b"mine" and server.faults_left() == 0
        server.fault("RNTO", "lost")
        relay.put("h/header", io.BytesIO(b"header"), create_only=True)
        assert relay.get("h/header").read() == b"header"
        with pytest.raises(ObjectExists):
            relay.put("h/header", io.BytesIO(b"another"), create_only=True)
        server.fault("DELE", "lost")
        relay.delete("a/obj")
        assert relay.stat("a/obj") is None
        assert sorted(i.name for i in relay.list()) == ["h/header"] and leftovers(server, relay) == []
    finally:
        relay.close()


# ------------------------------------------------------------------ through the CLI
def encrypted_cluster(tmp_path, server: FTPServer) -> Cluster:
    address, conf, kwargs = server.new()
    secret = raw_key_file(tmp_path)  # encryption and padding, not the passphrase, are tested here
    return Cluster(tmp_path, address, conf + f"passphrase = {secret}\npadding = on\nmax retries = 6\n", kwargs,
                   kind="ftps")


def test_three_encrypted_clients_converge_through_server_faults(own_server, tmp_path) -> None:
    """Three clients, encrypted, through a server that answers 421, drops connections,
    cuts transfers and loses answers: every file reaches every client."""
    server = own_server(tls=True)
    cluster = encrypted_cluster(tmp_path, server)
    a, b, c = cluster.add("a"), cluster.add("b"), cluster.add("c")
    expected = {}
    for client, n in ((a, 10), (b, 6), (c, 4)):
        for i in range(n):
            data = os.urandom(1000 + 997 * i)
            rel = f"{client.name}/f{i}.bin"
            client.write(rel, data)
            expected[rel] = hashlib.sha256(data).hexdigest()
    big = os.urandom(3 * MiB + 5)
    a.write("big.bin", big)
    expected["big.bin"] = hashlib.sha256(big).hexdigest()
    faults = [("MLSD", "421", 0, 4), ("STOR", "cut", 3000, 4), ("RETR", "cut", 2500, 4), ("RNTO", "lost", 0, 3),
              ("MLST", "drop", 0, 3), ("DELE", "lost", 0, 2), ("MKD", "421", 0, 2)]
    for cmd, action, nbytes, times in faults:
        server.fault(cmd, action, bytes=nbytes, times=times)
    failed = 0
    for _ in range(8):
        for cl in (a, b, c):
            if cl.once(check=False).code != 0:
                failed += 1
        files = [{p: v[1] for p, v in cl.tree().items() if v[0] == "file"} for cl in (a, b, c)]
        if all(f == expected for f in files):
            break
    for cl in (a, b, c):
        files = {p: v[1] for p, v in cl.tree().items() if v[0] == "file"}
        assert files == expected, f"{cl.name}: missing {sorted(set(expected) - set(files))[:5]}"
    assert server.faults_left() <= 4, "most of the scripted faults must have struck"
    cluster.round()  # clean cycles: nothing half-written stays on the server
    folder = server.folder(cluster.relay_address)
    assert [p.name for p in folder.rglob("*") if p.name.startswith((TMP_MARK, LOCK_MARK, OLD_MARK))] == []
    print(f"cycles that failed: {failed}")


def test_killed_pusher_leaves_no_partial_object_and_the_next_run_cleans_up(relay_ftp_pyftpdlib, tmp_path) -> None:
    server = relay_ftp_pyftpdlib
    address, conf, kwargs = server.new()
    cluster = Cluster(tmp_path, address, conf, kwargs, kind="ftp")
    a, b = cluster.add("a"), cluster.add("b")
    b.once()
    data = os.urandom(150 * MiB)
    a.write("big.bin", data)
    folder = server.folder(address)

    def temporaries() -> list:
        return [p for p in folder.rglob(f"{TMP_MARK}*") if p.stat().st_size > 0]

    proc = a.start("--once")
    try:
        assert wait_for(temporaries, timeout=120, interval=0.02), "no upload in progress seen"
    finally:
        kill9(proc)
    tmps = temporaries()
    assert tmps
    relay = FTP(address, **kwargs)
    relay.open()
    try:
        listed = {i.name: i.size for i in relay.list()}
        # no object under the name being written, and no temporary listed
        for t in tmps:
            target = str(t.relative_to(folder).parent / t.name[len(TMP_MARK):].rsplit(".", 1)[0])
            assert target not in listed
        assert not any(TMP_MARK in n for n in listed)
    finally:
        relay.close()
    a.once()  # connects: removes its own interrupted uploads, then publishes again
    b.once()
    assert b.path("big.bin").read_bytes() == data
    assert [p.name for p in folder.rglob(f"{TMP_MARK}*")] == []


# ------------------------------------------------------------------ a hostile server's listings
HOSTILE_MLSD = ["type=file;size=5;modify=20260101000000; ../escape",
                "type=file;size=5;modify=20260101000000; a/../../b",
                "type=file;size=99999999999999999999;modify=20260101000000; /etc/passwd",
                "type=file;size=5;modify=20260101000000; back\\slash",
                "type=dir;modify=20260101000000; loop/..",
                "type=dir;modify=20260101000000; ./"]
HOSTILE_LIST = ["-rw-r--r--   1 u g 5 Jan 01  2026 ../escape",
                "-rw-r--r--   1 u g 5 Jan 01  2026 a/../../b",
                "-rw-r--r--   1 u g 5 Jan 01  2026 /etc/passwd",
                "drwxr-xr-x   1 u g 0 Jan 01  2026 loop/..",
                "drwxr-xr-x   1 u g 0 Jan 01  2026 ./"]


@pytest.mark.parametrize("mlsd", [True, False], ids=["MLSD", "LIST"])
def test_listing_entries_that_are_no_name_in_a_folder_are_ignored(own_server, mlsd, caplog) -> None:
    """A hostile server's listing lines with '/', '..' or absolute names never become object
    names (they would address things outside the relay folder), and a folder entry that
    points back up ('loop/..') is not walked into (it made the walk endless)."""
    import itertools

    server = own_server(mlsd=mlsd)
    relay = relay_on(server)
    try:
        relay.put("u/1", io.BytesIO(b"one"))
        relay.put("u/2", io.BytesIO(b"two"))
        folder = server.folder(relay.address)
        for f in (folder, folder / "u"):
            server.add_listing_lines(f, "MLSD" if mlsd else "LIST", HOSTILE_MLSD if mlsd else HOSTILE_LIST)
        with caplog.at_level(logging.WARNING, logger="escale.relay.ftp"):
            listed = [i.name for i in itertools.islice(relay.list(), 50)]
        assert sorted(listed) == ["u/1", "u/2"]
        assert [i.name for i in itertools.islice(relay.list("u/"), 50)] == ["u/1", "u/2"]
        assert "'../escape'" in caplog.text  # named, once per listing, not silently dropped
        relay.delete("u/1")
        relay.delete("u/2")
        assert list(itertools.islice(relay.list(), 50)) == []
    finally:
        relay.close()


@pytest.mark.parametrize("value", ["nan", "inf", "1e308"])
def test_a_timeout_that_is_no_usable_number_is_a_config_error(tmp_path, value) -> None:
    """'timeout = nan' (or inf, 1e308) was accepted, then every cycle died on an unexpected
    ValueError/OverflowError (exit 1, a traceback); now exit 3 naming the option."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "l").mkdir()
    conf = tmp_path / "c.conf"
    conf.write_text(f"[r]\nlocal path = {tmp_path / 'l'}\nrelay address = ftps://u@127.0.0.1:1/x\n"
                    f"encryption = off\ntimeout = {value}\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "escale", "-c", str(conf), "--once"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "'timeout'" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(ConfigError, match="timeout"):
        FTP("ftps://u@127.0.0.1:1/x", timeout=value)


def test_unverified_tls_is_warned_about(relay_ftps_pyftpdlib, caplog) -> None:
    """'verify ssl = no' on ftps:// turned certificate checks off without a word (WebDAV warns):
    anyone between client and server could read the password. Now a warning names it."""
    with caplog.at_level(logging.WARNING, logger="escale.relay.ftp"):
        relay = relay_on(relay_ftps_pyftpdlib, verify_ssl="no")
    try:
        relay.put("x", io.BytesIO(b"x"))
    finally:
        relay.close()
    assert sum("verify ssl = no" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_a_lost_answer_to_the_lock_folder_never_makes_two_creators(own_server, monkeypatch, layout) -> None:
    """Create-if-absent takes the lock folder ``.escale-lock-<name>`` with MKD. When MKD's
    answer is lost and the folder is there, it may be another writer's (made first: our MKD
    failed unheard). It was taken as ours, so two writers created the same name, the second
    replacing the first's object. Now it counts as another's lock: the create waits, and
    succeeds only once the lock goes (released, or stale)."""
    import time

    import escale.relay.ftp as ftp_module

    monkeypatch.setattr(ftp_module, "LOCK_WAIT_SECONDS", 0.5)
    server = own_server()
    relay = relay_on(server, max_retries=3, layout=layout)
    relay.retry.sleep = lambda seconds: None
    try:
        relay.put("h/seed", io.BytesIO(b"x"), create_only=True)  # h/ exists; MKD probed (it fails on a folder)
        path = on_disk(server, relay, "h/header")
        lock = path.parent / f"{LOCK_MARK}{path.name}"
        lock.mkdir()  # another writer is creating h/header right now
        server.fault("MKD", "mute", arg=LOCK_MARK)  # ours fails (it exists) and its answer is lost
        with pytest.raises(TransientRelayError, match="another writer holds"):
            relay.put("h/header", io.BytesIO(b"mine"), create_only=True)
        assert relay.stat("h/header") is None and server.faults_left() == 0
        lock.rmdir()  # the other writer is done (here: gave up)
        server.fault("MKD", "mute", arg=LOCK_MARK)  # now our MKD makes the lock, and its answer is lost
        with pytest.raises(TransientRelayError, match="another writer holds"):  # ours, but unknowable
            relay.put("h/header", io.BytesIO(b"mine"), create_only=True)
        monkeypatch.setattr(ftp_module, "STALE_LOCK_SECONDS", 0.0)  # here stale once a second old
        time.sleep(1.1)  # the server's clock: seconds
        relay.put("h/header", io.BytesIO(b"mine"), create_only=True)  # the next cycle: the stale lock goes
        assert relay.get("h/header").read() == b"mine"
        assert leftovers(server, relay) == []
    finally:
        relay.close()
