"""The rclone:// relay: one ``rclone serve webdav`` per relay, in front of real rclone remotes
(local, webdav on wsgidav, s3 on SeaweedFS; tests/servers_rclone.py). The conformance suite
(tests/test_relay_contract.py) covers the contract; this file covers the process and the
configuration: start, stop, restart after a crash, errors from rclone, and clients through
the real CLI.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from cluster import Cluster, kill9, raw_key_file, wait_for
from escale.errors import AuthenticationError, ConfigError, RelayError
from escale.relay import BACKENDS, Rclone, parse_address
from escale.relay.rclone import join_address

MiB = 1 << 20


def test_registered_with_its_own_address_form() -> None:
    assert BACKENDS["rclone"] is Rclone
    assert parse_address("rclone://dropbox:escale/x")[0] == "rclone"
    assert join_address("rclone://dropbox:escale", "sub/dir") == "rclone://dropbox:escale/sub/dir"
    assert join_address("rclone://dropbox:", "x") == "rclone://dropbox:x"
    for bad in ("rclone://dropbox", "rclone://:", "rclone://a/b:c"):
        with pytest.raises(ConfigError, match="rclone://REMOTE:path"):
            Rclone(bad)


def test_one_process_started_on_open_stopped_on_close(relay_rclone_local) -> None:
    addr, _conf, kwargs = relay_rclone_local.new()
    relay = Rclone(addr, **kwargs)
    relay.open()
    proc = relay.proc
    cmd = psutil.Process(proc.pid).cmdline()
    assert cmd[1:3] == ["serve", "webdav"] and "127.0.0.1:0" in cmd
    assert relay._password not in " ".join(cmd)  # the credentials are not on the command line
    for n in range(5):
        relay.put(f"a/{n}", io.BytesIO(b"x"))
    assert len(list(relay.list())) == 5 and relay.proc is proc  # the same process throughout
    relay.close()
    assert proc.poll() is not None


def test_rclone_killed_is_restarted(relay_rclone_local) -> None:
    addr, _conf, kwargs = relay_rclone_local.new()
    relay = Rclone(addr, **kwargs)
    relay.open()
    relay.put("a/x", io.BytesIO(b"before"))
    old = relay.proc
    old.send_signal(signal.SIGKILL)
    old.wait()
    relay.put("a/y", io.BytesIO(b"after"))  # rclone is started again under the call
    assert sorted(i.name for i in relay.list()) == ["a/x", "a/y"]
    assert relay.restarts == 1 and relay.proc is not old and relay.proc.poll() is None
    relay.close()


def test_rclone_restarted_on_another_port_keeps_the_relay_layout(relay_rclone_local) -> None:
    """rclone restarted on another port (its own was taken meanwhile: Rclone._revive) gets a
    new WebDAV connection, which knows the relay (its layout, found at open) without opening."""
    addr, _conf, kwargs = relay_rclone_local.new()
    relay = Rclone(addr, **kwargs)
    relay.open()
    relay.put("a/x", io.BytesIO(b"before"))
    relay._dav = relay._make_dav()  # what _revive does when the port changed
    relay.put("a/y", io.BytesIO(b"after"))
    assert relay._dav.layout == "nested" and sorted(i.name for i in relay.list()) == ["a/x", "a/y"]
    relay.close()


def test_unknown_remote_is_a_configuration_error(relay_rclone_local) -> None:
    relay = Rclone("rclone://nosuchremote:x", rclone_config=str(relay_rclone_local.config))
    with pytest.raises(ConfigError, match="rclone has no remote 'nosuchremote'.*rclone listremotes"):
        relay.open()
    relay.close()


def test_missing_rclone_binary(tmp_path) -> None:
    relay = Rclone("rclone://loc:x", rclone_binary=str(tmp_path / "no-rclone"))
    with pytest.raises(ConfigError, match="rclone binary"):
        relay.open()


def test_refused_credentials_of_the_remote(rclone_config, relay_webdav_wsgidav, tmp_path) -> None:
    """A webdav remote whose password is wrong: rclone's own error says why, mapped to auth."""
    conf = tmp_path / "bad.conf"
    obscured = subprocess.run(["rclone", "obscure", "wrong"], capture_output=True, text=True).stdout.strip()
    conf.write_text(f"[bad]\ntype = webdav\nurl = {relay_webdav_wsgidav.url}/dav/\nvendor = other\n"
                    f"user = alice\npass = {obscured}\n")
    relay = Rclone("rclone://bad:x", rclone_config=str(conf), max_retries=0)
    with pytest.raises(RelayError) as e:
        relay.open()
        relay.put("a", io.BytesIO(b"a"))
    relay.close()
    assert "rclone://bad:x" in str(e.value) and "127.0.0.1" not in str(e.value).split("(rclone:")[0]
    assert isinstance(e.value, AuthenticationError), e.value


# --------------------------------------------------------------------------- the real CLI
def test_three_encrypted_clients_converge_through_rclone(relay_rclone_s3, tmp_path) -> None:
    addr, conf, kwargs = relay_rclone_s3.new()
    secret = raw_key_file(tmp_path)  # encryption, not the passphrase, is tested here
    base, _, sub = addr.rpartition("/")
    cluster = Cluster(tmp_path, base, conf + f"relay directory = {sub}\npassphrase = {secret}\n", kwargs,
                      kind="rclone-s3")
    cluster.relay_address = addr  # what backend() opens to look
    a, b, c = cluster.add("a"), cluster.add("b"), cluster.add("c")
    expected = {}
    for client, n in ((a, 4), (b, 3), (c, 2)):
        for i in range(n):
            data = os.urandom(700 + 31 * i)
            rel = f"{client.name}/f{i}.bin"
            client.write(rel, data)
            expected[rel] = data
    big = os.urandom(6 * MiB + 1)
    c.write("big.bin", big)
    expected["big.bin"] = big
    cluster.round(rounds=3)
    for cl in (a, b, c):
        assert {rel: cl.path(rel).read_bytes() for rel in expected} == expected
    b.path("a/f0.bin").unlink()
    a.write("c/f1.bin", b"edited by a")
    cluster.round(rounds=3)
    trees = [cl.tree() for cl in (a, b, c)]
    assert trees[0] == trees[1] == trees[2]
    assert not c.path("a/f0.bin").exists() and c.path("c/f1.bin").read_bytes() == b"edited by a"
    assert cluster.relay_objects()


def rclone_children(client: subprocess.Popen) -> list[psutil.Process]:
    """The ``rclone serve webdav`` processes below one client process: only its own, not
    those of a test running beside it (pytest-xdist workers, another suite on the machine)."""
    out = []
    for p in psutil.Process(client.pid).children(recursive=True):
        try:
            cmdline = p.cmdline()
        except psutil.Error:  # ended in between
            continue
        if cmdline[1:3] == ["serve", "webdav"] and "--dir-cache-time" in cmdline:
            out.append(p)
    return out


def test_killed_client_leaves_no_rclone_and_no_temporary(relay_rclone_local, tmp_path) -> None:
    addr, conf, kwargs = relay_rclone_local.new()
    folder = Path(addr.split(":", 2)[2])
    cluster = Cluster(tmp_path, addr, conf, kwargs, kind="rclone-local")
    a, b = cluster.add("a"), cluster.add("b")
    b.once()
    data = os.urandom(40 * MiB)
    a.write("big.bin", data)
    proc = a.start("--once")
    try:
        assert wait_for(lambda: any(p.name.startswith(".escale-put-") for p in folder.rglob("*")), timeout=120,
                        interval=0.02), "no upload seen"
        ours = rclone_children(proc)
    finally:
        kill9(proc)
    assert ours, "the client's rclone was not seen"
    assert wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ours),
                    timeout=15), "rclone outlived the killed client"
    a.once()  # removes its own interrupted upload, then publishes again
    b.once()
    assert b.path("big.bin").read_bytes() == data
    assert not any(p.name.startswith(".escale-put-") for p in folder.rglob("*"))
