"""The SFTP relay against a real SFTP server on 127.0.0.1 (issue 15).

The server is asyncssh's, run as a process of its own (tests/servers_sftp.py); ssh-agent,
ssh-keyscan and ssh-keygen are OpenSSH's client tools where they are installed. The
conformance suite (tests/test_relay_contract.py) covers the contract itself; this file
covers what is SFTP's own: host keys, keys from the agent, SSH configuration aliases,
connections that drop, and crashes through the real CLI.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cluster import Cluster, kill9, raw_key_file, wait_for
from escale.errors import AuthenticationError, RelayError, TransientRelayError
from escale.relay import BACKENDS, SFTP
from escale.relay.sftp import TMP_MARK
from servers_sftp import USER, start_server

MiB = 1 << 20


def host_fingerprint(server) -> str:
    blob = base64.b64decode((server.keys["host"].parent / "host_ed25519.pub").read_text().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def opened(server, address: str | None = None, **kw) -> SFTP:
    addr, _conf, kwargs = server.new()
    relay = SFTP(address or addr, **{**kwargs, **kw})
    relay.open()
    return relay


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TMP_MARK)]


@pytest.fixture
def server(tmp_path):
    """A private server, for tests that stop and restart it."""
    pytest.importorskip("asyncssh")
    s = start_server(tmp_path / "srv")
    yield s
    s.stop()


def test_registered_and_paramiko_imported_only_when_used() -> None:
    assert BACKENDS["sftp"] is SFTP
    code = ("import sys, escale.relay, escale.config; from escale.relay import SFTP; "
            "SFTP('sftp://h/x'); print('paramiko' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- host keys
def test_unknown_host_key_is_refused_with_how_to_accept_it(relay_sftp, tmp_path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    addr, _conf, kwargs = relay_sftp.new()
    relay = SFTP(addr, **{**kwargs, "known_hosts": str(known)})
    with pytest.raises(AuthenticationError) as e:
        relay.open()
    msg = str(e.value)
    assert "host key of [127.0.0.1]:%d is unknown" % relay_sftp.port in msg
    assert host_fingerprint(relay_sftp) in msg
    assert f"ssh-keyscan -p {relay_sftp.port} -t ssh-ed25519 127.0.0.1 >> {known}" in msg
    assert known.read_text() == ""  # never accepted silently, never written
    if shutil.which("ssh-keyscan") is None:
        pytest.skip("ssh-keyscan is not installed: the advice itself is not run")
    # following the advice works
    scan = subprocess.run(["ssh-keyscan", "-p", str(relay_sftp.port), "-t", "ssh-ed25519", "127.0.0.1"],
                          capture_output=True, text=True, timeout=30)
    known.write_text(scan.stdout)
    relay.open()
    relay.put("x", io.BytesIO(b"x"))
    assert [i.name for i in relay.list()] == ["x"]
    relay.close()


def test_changed_host_key_is_refused(relay_sftp, tmp_path) -> None:
    import asyncssh

    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{relay_sftp.port} {other[0]} {other[1]}\n")
    addr, _conf, kwargs = relay_sftp.new()
    relay = SFTP(addr, **{**kwargs, "known_hosts": str(known)})
    with pytest.raises(AuthenticationError) as e:
        relay.open()
    msg = str(e.value)
    assert "CHANGED" in msg and host_fingerprint(relay_sftp) in msg
    assert f"ssh-keygen -R '[127.0.0.1]:{relay_sftp.port}' -f {known}" in msg
    assert known.read_text().count("\n") == 1  # left as it was


def test_hashed_known_hosts_entry_is_accepted(relay_sftp, tmp_path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    known = tmp_path / "known_hosts"
    known.write_text(relay_sftp.known_hosts.read_text())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    assert known.read_text().startswith("|1|")
    relay = opened(relay_sftp, known_hosts=str(known))
    relay.put("h", io.BytesIO(b"hashed"))
    assert relay.stat("h").size == 6
    relay.close()


def test_unknown_host_key_through_the_cli_exits_2_with_the_advice(relay_sftp, tmp_path) -> None:
    known = tmp_path / "empty_known_hosts"
    known.write_text("")
    addr, _conf, _kw = relay_sftp.new()
    cluster = Cluster(tmp_path, addr, f"key file = {relay_sftp.keys['client']}\nknown hosts = {known}\n")
    a = cluster.add("a")
    r = a.once(check=False)
    assert r.code == 2, r
    assert "is unknown" in r.err and "ssh-keyscan" in r.err and host_fingerprint(relay_sftp) in r.err


# --------------------------------------------------------------------------- authentication
def test_key_from_ssh_agent(relay_sftp, tmp_path, monkeypatch) -> None:
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("ssh-agent is not installed")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))  # no ~/.ssh/id_* to fall back on
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        assert wait_for(sock.exists, timeout=10)
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock))
        addr, _conf, kwargs = relay_sftp.new()
        monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
        relay = SFTP(addr, known_hosts=kwargs["known_hosts"])
        with pytest.raises(AuthenticationError, match="authentication failed for sftp://escale@127.0.0.1"):
            relay.open()  # no agent, no key: refused
        subprocess.run(["ssh-add", str(relay_sftp.keys["client"])], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        relay.open()
        relay.put("from-agent", io.BytesIO(b"agent"))
        assert [i.name for i in relay.list()] == ["from-agent"]
        relay.close()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)


def test_ssh_config_host_alias(relay_sftp, tmp_path, monkeypatch) -> None:
    """``sftp://alias/path`` takes HostName, Port, User, IdentityFile and UserKnownHostsFile
    from the SSH configuration: ``ssh config`` or ~/.ssh/config."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    text = (f"Host myrelay\n  HostName 127.0.0.1\n  Port {relay_sftp.port}\n  User {USER}\n"
            f"  IdentityFile {relay_sftp.keys['client']}\n  UserKnownHostsFile {relay_sftp.known_hosts}\n")
    (home / ".ssh" / "config").write_text(text)
    folder = f"relay-{uuid.uuid4().hex[:8]}"
    relay = SFTP(f"sftp://myrelay/{folder}")
    relay.open()
    relay.put("a/x", io.BytesIO(b"alias"))
    relay.close()
    assert (relay_sftp.data / folder / "a%2Fx").read_bytes() == b"alias"  # a new relay: flat
    other = tmp_path / "ssh_config"
    other.write_text(text.replace("myrelay", "elsewhere"))
    relay = SFTP(f"sftp://elsewhere/~/{folder}", ssh_config=str(other))  # ~/: in the login folder
    relay.open()
    assert [i.name for i in relay.list()] == ["a/x"]
    relay.close()


# --------------------------------------------------------------------------- dropped connections
def test_dropped_connection_is_reopened(server) -> None:
    relay = opened(server)
    relay.put("a/x", io.BytesIO(b"before"))
    server.stop()
    server.start()  # same port, same keys: every connection the relay had is gone
    assert [i.name for i in relay.list()] == ["a/x"]
    relay.put("a/y", io.BytesIO(b"after"))
    with relay.get("a/y") as f:
        assert f.read() == b"after"
    relay.close()


def test_server_down_is_a_transient_error(server) -> None:
    relay = opened(server, max_retries=1)
    server.stop()
    with pytest.raises(TransientRelayError, match="connection refused"):
        list(relay.list())
    server.start()
    assert list(relay.list()) == []
    relay.close()


class Restarting(io.RawIOBase):
    """A non-seekable source of ``size`` bytes that restarts the server once, after ``at`` bytes."""

    def __init__(self, server, size: int, at: int, seekable: bool = False):
        self.server, self.left, self.at, self.sent, self.done = server, size, at, 0, False
        self.data = os.urandom(size)
        self._seekable = seekable

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def tell(self) -> int:
        return self.sent

    def seek(self, pos: int, whence: int = 0) -> int:
        self.sent = pos if whence == 0 else len(self.data) if whence == 2 else self.sent + pos
        return self.sent

    def readinto(self, b) -> int:
        if self.sent >= self.at and not self.done:
            self.done = True
            self.server.stop()
            self.server.start()
        n = min(len(b), len(self.data) - self.sent, 256 * 1024)
        b[:n] = self.data[self.sent:self.sent + n]
        self.sent += n
        return n


def test_upload_broken_by_a_dropped_connection_is_sent_again(server) -> None:
    relay = opened(server)
    src = Restarting(server, 12 * MiB, 6 * MiB, seekable=True)
    relay.put("b/big", src, size=12 * MiB)
    assert src.done
    with relay.get("b/big") as f:
        assert f.read() == src.data
    assert temporaries(server.data) == []
    relay.close()


def test_unreplayable_upload_fails_transient_and_leaves_nothing(server) -> None:
    """A non-seekable body over 8 MiB (the encrypted stream) cannot be sent twice in one
    call: the put fails as transient (the next cycle sends it) and removes its temporary."""
    relay = opened(server)
    src = Restarting(server, 12 * MiB, 9 * MiB)
    with pytest.raises(TransientRelayError):
        relay.put("b/big", src, size=12 * MiB)
    assert relay.stat("b/big") is None and temporaries(server.data) == []
    relay.close()


def test_download_resumes_after_a_dropped_connection(server) -> None:
    relay = opened(server)
    data = os.urandom(10 * MiB + 5)
    relay.put("b/blob", io.BytesIO(data))
    with relay.get("b/blob") as f:
        head = f.read(MiB)
        server.stop()
        server.start()
        rest = f.read()
        assert f.raw.resumes == 1
    assert head + rest == data
    relay.close()


def test_server_without_posix_rename_is_refused(tmp_path) -> None:
    pytest.importorskip("asyncssh")
    s = start_server(tmp_path / "srv", flags=("--no-posix-rename",))
    try:
        addr, _c, kwargs = s.new()
        with pytest.raises(RelayError, match="posix-rename@openssh.com"):
            SFTP(addr, **kwargs).open()
    finally:
        s.stop()


# --------------------------------------------------------------------------- the real CLI
def test_three_encrypted_clients_converge(relay_sftp, tmp_path) -> None:
    addr, conf, kwargs = relay_sftp.new()
    secret = raw_key_file(tmp_path)  # encryption, not the passphrase, is tested here
    cluster = Cluster(tmp_path, addr, conf + f"passphrase = {secret}\n", kwargs, kind="sftp")
    a, b, c = cluster.add("a"), cluster.add("b"), cluster.add("c")
    expected = {}
    for client, n in ((a, 6), (b, 4), (c, 3)):
        for i in range(n):
            data = os.urandom(500 + 97 * i)
            rel = f"{client.name}/f{i}.bin"
            client.write(rel, data)
            expected[rel] = data
    big = os.urandom(9 * MiB + 3)
    b.write("big.bin", big)
    expected["big.bin"] = big
    cluster.round(rounds=3)
    for cl in (a, b, c):
        assert {rel: cl.path(rel).read_bytes() for rel in expected} == expected
    a.path("b/f0.bin").unlink()
    c.write("a/f1.bin", b"changed by c")
    cluster.round(rounds=3)
    trees = [cl.tree() for cl in (a, b, c)]
    assert trees[0] == trees[1] == trees[2]
    assert not b.path("b/f0.bin").exists() and a.path("a/f1.bin").read_bytes() == b"changed by c"
    objects = cluster.relay_objects()
    assert objects and all(b"f1.bin" not in name.encode() for name in objects)  # names are encrypted


def test_killed_pusher_leaves_no_temporary_behind(relay_sftp, tmp_path) -> None:
    addr, conf, kwargs = relay_sftp.new()
    folder = relay_sftp.data / addr.rsplit("/", 1)[1]
    cluster = Cluster(tmp_path, addr, conf, kwargs, kind="sftp")
    a, b = cluster.add("a"), cluster.add("b")
    b.once()
    data = os.urandom(60 * MiB)
    a.write("big.bin", data)
    proc = a.start("--once")
    try:
        assert wait_for(lambda: temporaries(folder), timeout=120, interval=0.02), "no upload seen"
    finally:
        kill9(proc)
    assert temporaries(folder)
    a.once()  # connects: removes its own interrupted upload, then publishes again
    b.once()
    assert b.path("big.bin").read_bytes() == data
    assert temporaries(folder) == []


def test_listing_names_that_are_no_entry_of_a_folder_are_ignored(tmp_path, caplog) -> None:
    """A hostile SFTP server whose listings name '../escape', 'a/../../b', '/etc/passwd' or a
    backslash: none becomes an object name (they were listed as objects, addressing things
    outside the relay folder); each is named in a warning."""
    import logging

    pytest.importorskip("asyncssh")
    s = start_server(tmp_path / "srv", flags=("--hostile-names",))
    try:
        relay = opened(s)
        try:
            relay.put("u/1", io.BytesIO(b"one"))
            relay.put("u/2", io.BytesIO(b"two"))
            with caplog.at_level(logging.WARNING, logger="escale.relay.sftp"):
                assert sorted(i.name for i in relay.list()) == ["u/1", "u/2"]
                assert [i.name for i in relay.list("u/")] == ["u/1", "u/2"]
            assert "'../escape'" in caplog.text
        finally:
            relay.close()
    finally:
        s.stop()


@pytest.mark.parametrize("value", ["nan", "inf", "1e308"])
def test_a_timeout_that_is_no_usable_number_is_a_config_error(value) -> None:
    """A non-finite or absurd timeout was taken and failed later in the socket layer."""
    from escale.errors import ConfigError

    with pytest.raises(ConfigError, match="timeout"):
        SFTP("sftp://u@127.0.0.1:1/x", timeout=value)
