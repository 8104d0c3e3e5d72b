"""Count the relay requests of escale's start-up and of an idle cycle (issue 16).

Counting happens in one process, on real relays: for file://, calls to the backend's
methods (each is one listing, read, write or delete on the mounted folder); for WebDAV,
the HTTP requests ``requests`` sends, by method. Used by tests/test_idle_requests.py and
bench/bench_idle.py.
"""
from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("list", "stat", "get", "put", "delete", "abort_incomplete", "usage")


@contextlib.contextmanager
def counting(kind: str):
    """Count requests while the block runs: yields a Counter filled as they happen."""
    counts: collections.Counter = collections.Counter()
    patched = []
    if kind == "file":
        from escale.relay.localmount import LocalMount as cls

        for name in METHODS:
            orig = getattr(cls, name)

            def wrapper(self, *a, _orig=orig, _name=name, **kw):
                counts[_name] += 1
                return _orig(self, *a, **kw)

            patched.append((cls, name, orig))
            setattr(cls, name, wrapper)
    else:
        import requests

        orig = requests.Session.request

        def request(self, method, *a, **kw):
            counts[method] += 1
            return orig(self, method, *a, **kw)

        patched.append((requests.Session, "request", orig))
        requests.Session.request = request
    try:
        yield counts
    finally:
        for owner, name, orig in patched:
            setattr(owner, name, orig)


def _conf(work: Path, name: str, address: str, extra: str) -> Path:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    c = work / f"{name}.conf"
    c.write_text(f"cache dir = {work}/state-{name}\n[r]\nlocal path = {folder}\nrelay address = {address}\n"
                 f"client name = {name}\nencryption = off\nrefresh = 1\n{extra}")
    c.chmod(0o600)
    return c


def count_idle(work: Path, kind: str, files: int = 20, server=None) -> tuple[dict, dict]:
    """(requests of start-up plus the first cycle, requests of an idle cycle after that) of a
    client ``a`` sharing a repository with a client ``b``, ``files`` files synced."""
    work.mkdir(parents=True, exist_ok=True)
    own = None
    if kind == "file":
        address, extra = f"file://{work}/relay", ""
    else:
        if server is None:
            from servers_webdav import make_server

            own = server = make_server(kind, work / "server")
            server.start()
        from servers_webdav import PASSWORD, USER

        address = f"{server.url}/dav/{work.name}-{os.getpid()}"
        extra = f"user = {USER}\npassword = {PASSWORD}\n"
    try:
        confs = {n: _conf(work, n, address, extra) for n in ("a", "b")}
        for i in range(files):
            p = work / "a" / f"d{i % 5}" / f"f{i}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"file {i}\n")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for n in ("a", "b", "a", "b"):  # a pushes, b pulls and acknowledges, a collects
            subprocess.run([sys.executable, "-m", "escale", "-q", "--once", "-c", str(confs[n])], env=env,
                           check=True, capture_output=True)
        from escale.config import load_config
        from escale.manager import Manager
        from escale.sync.context import SEEN_SETTLE_SECONDS

        m = Manager.from_config(load_config(confs["a"]).repositories["r"])
        try:
            with counting(kind) as start:
                m.open()
                m.connect()
                m.cycle()
            # small objects written less than SEEN_SETTLE_SECONDS ago are read again each cycle
            # (a one-second mtime could hide a rewrite): wait, then one cycle caches them
            time.sleep(SEEN_SETTLE_SECONDS + 0.5)
            m.cycle()
            with counting(kind) as idle:
                m.cycle()
        finally:
            m.close()
        return dict(start), dict(idle)
    finally:
        if own is not None:
            own.cleanup()
