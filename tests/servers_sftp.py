"""A real SFTP server on 127.0.0.1 for the test session: asyncssh's SFTP server (PyPI
``asyncssh``, in the ``test`` extra), run as a process of its own, chrooted into a
temporary folder.

OpenSSH's ``sshd`` is not installed in the test container (and needs root or a system
user); asyncssh serves the same SFTP version 3 with the OpenSSH extensions escale uses
(``posix-rename@openssh.com``, ``hardlink@openssh.com``). The server's host key and the
client's key are generated for each session: the host key goes into a temporary
known_hosts file, the client's public key into the server's authorized keys. Any user
name is accepted with that key.

``relay_sftp`` (session) gives an :class:`SFTPServer` whose ``new()`` returns
``(address, config lines, backend keywords)`` for a fresh relay folder on it. Tests that
stop, restart or reconfigure a server build their own with :func:`start_server`.

Run as a script, this module *is* the server:
``python servers_sftp.py ROOT PORT HOST_KEY AUTHORIZED_KEYS [--no-hardlink] [--no-posix-rename]``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from servers_webdav import _die_with_parent, free_port

USER = "escale"


def make_keys(folder: Path) -> dict[str, Path]:
    """A host key, a client key (OpenSSH format) and its authorized_keys line, in ``folder``."""
    import asyncssh

    folder.mkdir(parents=True, exist_ok=True)
    host = asyncssh.generate_private_key("ssh-ed25519")
    client = asyncssh.generate_private_key("ssh-ed25519")
    out = {"host": folder / "host_ed25519", "client": folder / "client_ed25519",
           "authorized": folder / "authorized_keys"}
    host.write_private_key(str(out["host"]))
    client.write_private_key(str(out["client"]))
    os.chmod(out["client"], 0o600)
    out["authorized"].write_bytes(client.export_public_key())
    (folder / "host_ed25519.pub").write_bytes(host.export_public_key())
    return out


def known_hosts_line(keys: dict[str, Path], port: int) -> str:
    pub = (keys["host"].parent / "host_ed25519.pub").read_text().split()
    return f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n"


class SFTPServer:
    """One asyncssh SFTP server process serving ``<base>/data`` as its root."""

    def __init__(self, base: Path, keys: dict[str, Path] | None = None, port: int | None = None,
                 flags: tuple[str, ...] = ()):
        self.base = Path(base)
        self.data = self.base / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.keys = keys or make_keys(self.base / "keys")
        self.port = port or free_port()
        self.flags = flags
        self.known_hosts = self.base / "known_hosts"
        self.known_hosts.write_text(known_hosts_line(self.keys, self.port))
        self.proc: subprocess.Popen | None = None
        self.log = self.base / "server.log"

    def start(self, timeout: float = 20) -> "SFTPServer":
        cmd = [sys.executable, __file__, str(self.data), str(self.port), str(self.keys["host"]),
               str(self.keys["authorized"]), *self.flags]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SFTP server exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-1500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"SFTP server did not answer within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kwargs(self, **extra) -> dict:
        return {"keyfile": str(self.keys["client"]), "known_hosts": str(self.known_hosts), **extra}

    def conf(self) -> str:
        return f"key file = {self.keys['client']}\nknown hosts = {self.known_hosts}\n"

    def new(self) -> tuple[str, str, dict]:
        """A fresh relay folder: (relay address, config lines, backend keywords)."""
        address = f"sftp://{USER}@127.0.0.1:{self.port}/relay-{uuid.uuid4().hex[:12]}"
        return address, self.conf(), self.kwargs()


def start_server(base: Path, **kw) -> SFTPServer:
    return SFTPServer(base, **kw).start()


@pytest.fixture(scope="session")
def relay_sftp(tmp_path_factory):
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("asyncssh is not installed (pip install asyncssh)")
    server = start_server(tmp_path_factory.mktemp("sftp"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sftp_nolinks(tmp_path_factory):
    """A server without hardlink@openssh.com (as on a file system without hard links)."""
    pytest.importorskip("asyncssh")
    server = start_server(tmp_path_factory.mktemp("sftp-nolinks"), flags=("--no-hardlink",))
    yield server
    server.stop()


# ----------------------------------------------------------------------------- the server
def _serve(root: str, port: int, host_key: str, authorized: str, flags: list[str]) -> None:
    import asyncio

    import asyncssh

    class Chroot(asyncssh.SFTPServer):
        def __init__(self, chan):
            super().__init__(chan, chroot=root.encode())

        if "--no-hardlink" in flags:
            def link(self, oldpath, newpath):
                raise asyncssh.SFTPOpUnsupported("hardlink not supported")

        if "--no-posix-rename" in flags:
            def posix_rename(self, oldpath, newpath):
                raise asyncssh.SFTPOpUnsupported("posix-rename not supported")

        if "--hostile-names" in flags:  # listings also name things outside the folder
            async def scandir(self, path):
                async for entry in super().scandir(path):
                    yield entry
                attrs = asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_REGULAR, size=5,
                                           permissions=0o100644, mtime=1, atime=1)
                for name in (b"../escape", b"a/../../b", b"/etc/passwd", b"back\\slash"):
                    yield asyncssh.SFTPName(name, attrs=attrs)

    async def main() -> None:
        await asyncssh.listen("127.0.0.1", port, server_host_keys=[host_key], authorized_client_keys=authorized,
                              sftp_factory=Chroot, allow_scp=False, agent_forwarding=False,
                              x11_forwarding=False, allow_pty=False)
        await asyncio.Event().wait()

    asyncio.run(main())


if __name__ == "__main__":
    _root, _port, _host_key, _authorized, *_flags = sys.argv[1:]
    _serve(_root, int(_port), _host_key, _authorized, _flags)
