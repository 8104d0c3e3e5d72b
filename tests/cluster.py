"""A few escale clients on one machine, driven through the real CLI.

Each client has its own config file, synced folder and state folder; they share
one ``file://`` relay. Nothing is mocked: every step runs ``python -m escale``.
"""
from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from escale.relay.localmount import TMP_MARK as RELAY_TMP

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"


class Client:
    def __init__(self, cluster: "Cluster", name: str, mode: str = "shared", extra: str = "",
                 refresh: float = 1):
        self.cluster, self.name, self.mode = cluster, name, mode
        self.folder = cluster.base / name
        self.state = cluster.base / f"state-{name}"
        self.conf = cluster.base / f"{name}.conf"
        self.folder.mkdir(parents=True, exist_ok=True)
        # plaintext must be asked for in the section itself; a test that gives a passphrase
        # (or its own 'encryption') is encrypted
        own = cluster.relay_conf + extra
        plain = "" if "passphrase" in own or "encryption" in own else "encryption = off\n"
        self.conf.write_text(
            f"# test client {name}\n"
            f"cache dir = {self.state}\n\n"
            f"[repo]\n"
            f"local path = {self.folder}\n"
            f"relay address = {cluster.relay_address}\n{cluster.relay_conf}"
            f"client name = {name}\n"
            f"mode = {mode}\n"
            f"refresh = {refresh}\n{plain}{extra}")
        self.conf.chmod(0o600)  # it may hold a relay password

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "escale", "-c", str(self.conf), *args]

    def once(self, *args: str, check: bool = True, timeout: float = 600) -> Result:
        p = subprocess.run(self.cmd("--once", *args), capture_output=True, text=True, timeout=timeout,
                           env=self.cluster.env)
        r = Result(p.returncode, p.stdout, p.stderr)
        if check:
            assert r.code == 0, f"{self.name}: {r}"
        return r

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.cluster.env)

    def path(self, rel: str) -> Path:
        return self.folder / rel

    def write(self, rel: str, data: bytes | str, mtime: float | None = None) -> Path:
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        if mtime is not None:
            os.utime(p, (mtime, mtime))
        return p

    def tree(self) -> dict[str, tuple]:
        return tree(self.folder)


class Cluster:
    """Clients sharing one relay: a folder by default, or any backend's address.

    ``relay_conf`` holds extra config lines for every client (credentials…);
    ``relay_kwargs`` are the backend constructor's keywords, for inspecting the relay.
    """

    def __init__(self, base: Path, relay_address: str | None = None, relay_conf: str = "",
                 relay_kwargs: dict | None = None, kind: str = "file"):
        self.base = base
        self.kind = kind
        self.relay = base / "relay"
        self.relay_address = relay_address or f"file://{self.relay}"
        self.relay_conf = relay_conf
        self.relay_kwargs = relay_kwargs or {}
        self.clients: dict[str, Client] = {}
        self.env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def add(self, name: str, mode: str = "shared", extra: str = "", refresh: float = 1) -> Client:
        c = Client(self, name, mode, extra, refresh)
        self.clients[name] = c
        return c

    def round(self, *names: str, rounds: int = 1) -> None:
        """Each named client (default: all) runs one --once cycle, in order, ``rounds`` times."""
        for _ in range(rounds):
            for n in names or list(self.clients):
                self.clients[n].once()

    def backend(self):
        """A backend instance on the cluster's relay, to look at it from outside."""
        from escale.relay import backend_for, parse_address

        proto = parse_address(self.relay_address)[0]
        relay = backend_for(proto)(self.relay_address, **self.relay_kwargs)
        relay.open()
        return relay

    def relay_objects(self) -> dict[str, int]:
        if not self.relay_address.startswith("file://"):
            relay = self.backend()
            try:
                return {info.name: info.size for info in relay.list()}
            finally:
                relay.close()
        out = {}
        for dirpath, _dirs, files in os.walk(self.relay):
            for f in files:
                p = Path(dirpath) / f
                out[p.relative_to(self.relay).as_posix()] = p.stat().st_size
        return out

    def relay_bytes(self) -> int:
        if not self.relay_address.startswith("file://"):
            return sum(self.relay_objects().values())
        total = 0
        for dirpath, _dirs, files in os.walk(self.relay):
            for f in files:
                try:
                    total += os.stat(os.path.join(dirpath, f)).st_size
                except FileNotFoundError:
                    pass
        return total


def raw_key_file(folder: Path) -> Path:
    """A raw key file (base64 of 32 random bytes, mode 0600) in ``folder``, for ``passphrase =``.

    Scenarios that test encryption, not the passphrase, use it: with a passphrase each new
    client pays one scrypt (about 0.4 s and 128 MiB); the passphrase path has its own tests
    (test_startup, test_config_mistakes, test_encryption)."""
    secret = folder / "raw.key"
    secret.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    secret.chmod(0o600)
    return secret


def tree(folder: Path) -> dict[str, tuple]:
    """relative path → ('file', sha256, mode, mtime_s) or ('dir', mode); .escale/ left out."""
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        rel = Path(dirpath).relative_to(folder).as_posix()
        if rel == ".":
            dirs[:] = [d for d in dirs if d != ".escale"]
        for d in dirs:
            p = Path(dirpath) / d
            out[p.relative_to(folder).as_posix()] = ("dir", p.stat().st_mode & 0o777)
        for f in files:
            p = Path(dirpath) / f
            st = p.stat()
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            out[p.relative_to(folder).as_posix()] = ("file", h.hexdigest(), st.st_mode & 0o777,
                                                     int(st.st_mtime))
    return out


def temp_files(folder: Path) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
            if ".escale-tmp-" in f or f.startswith(RELAY_TMP)]


def update_objects(cluster: Cluster) -> list[str]:
    return [n for n in cluster.relay_objects() if n.startswith(("u/", "b/"))]


def kill9(proc: subprocess.Popen) -> None:
    try:
        proc.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_for(predicate, timeout: float = 60, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
