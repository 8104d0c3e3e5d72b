"""Count the relay requests of escale's start-up and of an idle cycle (issue 16).

Counting happens in one process, on real relays (see :func:`counting` for what one request
is on each backend). Used by tests/test_idle_requests.py and bench/bench_idle.py.
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


#: how requests are counted, by relay kind (anything else: HTTP requests through ``requests``)
COUNTERS = {"file": "file", "s3-moto": "s3", "s3-seaweedfs": "s3", "ftp-pyftpdlib": "ftp", "ftps-pyftpdlib": "ftp",
            "sftp": "sftp", "gdrive": "gdrive"}
#: FTP commands that set up a connection or a data transfer rather than ask for something
FTP_SETUP = {"USER", "PASS", "AUTH", "PBSZ", "PROT", "FEAT", "OPTS", "TYPE", "PWD", "CWD", "EPSV", "PASV",
             "NOOP", "QUIT"}


class Counts(collections.Counter):
    """Requests by kind (an HTTP method, an S3 operation, an FTP command, an SFTP request);
    ``depths`` counts PROPFINDs by their Depth header."""

    def __init__(self) -> None:
        super().__init__()
        self.depths: collections.Counter = collections.Counter()


def _patch(patched: list, owner, name: str, count) -> None:
    orig = getattr(owner, name)

    def wrapper(self, *a, **kw):
        count(*a, **kw)
        return orig(self, *a, **kw)

    patched.append((owner, name, orig))
    setattr(owner, name, wrapper)


@contextlib.contextmanager
def counting(kind: str):
    """Count requests while the block runs: yields a Counts filled as they happen.

    file://: calls of the backend's methods (each one listing, read, write or delete on the
    mounted folder); S3: botocore operations (one HTTP request each: botocore's own retries
    are off); FTP: commands sent on the control connections (a listing is ``EPSV`` + ``MLSD``:
    :data:`FTP_SETUP` are counted apart, as ``setup``); SFTP: SFTP protocol requests
    (``readdir`` pages, ``stat``, ``open``, ``read``…); Drive: HTTP requests through httplib2,
    by method and the API path's first part; the rest (WebDAV, rclone): HTTP requests by method."""
    counts = Counts()
    patched: list = []
    mode = COUNTERS.get(kind, "http")
    if mode == "file":
        from escale.relay.localmount import LocalMount

        for name in METHODS:
            _patch(patched, LocalMount, name, lambda *a, _n=name, **kw: counts.update([_n]))
    elif mode == "s3":
        import botocore.endpoint

        _patch(patched, botocore.endpoint.Endpoint, "make_request",
               lambda operation_model, *a, **kw: counts.update([operation_model.name]))
    elif mode == "ftp":
        import ftplib

        def ftp(line, *a, **kw):
            verb = line.split(" ", 1)[0].upper()
            counts.update(["setup" if verb in FTP_SETUP else verb])

        _patch(patched, ftplib.FTP, "putcmd", ftp)
    elif mode == "sftp":
        import paramiko.sftp
        import paramiko.sftp_client

        _patch(patched, paramiko.sftp_client.SFTPClient, "_async_request",
               lambda fileobj, t, *a, **kw: counts.update([paramiko.sftp.CMD_NAMES.get(t, str(t))]))
    elif mode == "gdrive":
        import httplib2
        from urllib.parse import urlsplit

        def http(uri, method="GET", *a, **kw):
            path = urlsplit(uri).path
            part = path.split("/drive/v3/", 1)[1].split("/", 1)[0] if "/drive/v3/" in path else path.rsplit("/", 1)[-1]
            counts.update([f"{method} {part}"])

        _patch(patched, httplib2.Http, "request", http)
    else:
        import requests

        def http(method, *a, headers=None, **kw):
            counts.update([method])
            if method == "PROPFIND":
                counts.depths.update([(headers or {}).get("Depth", "?")])

        _patch(patched, requests.Session, "request", http)
    try:
        yield counts
    finally:
        for owner, name, orig in reversed(patched):
            setattr(owner, name, orig)


def _conf(work: Path, name: str, address: str, extra: str) -> Path:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    c = work / f"{name}.conf"
    c.write_text(f"cache dir = {work}/state-{name}\n[r]\nlocal path = {folder}\nrelay address = {address}\n"
                 f"client name = {name}\nencryption = off\nrefresh = 1\n{extra}")
    c.chmod(0o600)
    return c


def count_idle(work: Path, kind: str, files: int = 20, server=None, more: str = "") -> tuple[Counts, Counts]:
    """(requests of start-up plus the first cycle, requests of an idle cycle after that) of a
    client ``a`` sharing a repository with a client ``b``, ``files`` files synced.

    ``server``: one of the tests' servers (``new() -> (address, config lines, keywords)``);
    for the WebDAV kinds (wsgidav, apache, rclone) one is started when none is given. ``more``:
    configuration lines added to both clients' sections (``layout = nested``)."""
    work.mkdir(parents=True, exist_ok=True)
    own = None
    if kind == "file":
        address, extra = f"file://{work}/relay", ""
    else:
        if server is None:
            from servers_webdav import make_server

            own = server = make_server(kind, work / "server")
            server.start()
        address, extra, _kwargs = server.new()
    try:
        confs = {n: _conf(work, n, address, extra + more) for n in ("a", "b")}
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
        return start, idle
    finally:
        if own is not None:
            own.cleanup()
