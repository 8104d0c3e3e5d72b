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
                                         env=self.env(), start_new_session=True)
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

        try:
            r = requests.request("PROPFIND", self.url + "/", headers={"Depth": "0"}, timeout=1, verify=False)
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

    def __init__(self, base: Path, **kw):
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
                "</Directory>"]
        if self.tls:
            conf += ["SSLEngine on", f"SSLCertificateFile {self.tls[0]}", f"SSLCertificateKeyFile {self.tls[1]}",
                     f"SSLSessionCache shmcb:{self.base}/run/ssl_scache(512000)"]
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


def make_server(kind: str, base: Path, **kw) -> DAVServer:
    return {"wsgidav": WsgiDAV, "apache": Apache}[kind](base, **kw)


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


@pytest.fixture(params=["wsgidav", "apache"])
def dav_server(request) -> DAVServer:
    """Each of the session's WebDAV servers in turn."""
    return request.getfixturevalue(f"relay_webdav_{request.param}")
