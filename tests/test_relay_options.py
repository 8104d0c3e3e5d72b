"""Relay addresses and options, read the same way by the configuration and every backend
(issue 10): the user and IPv6 literals in an address, bad ports, '#' in a path, passwords
kept out of messages, one 'verify ssl' parser, Nextcloud's quota and dates, the mounted
folder's listing errors, and the layering rule that relay backends never import config.
"""
from __future__ import annotations

import ast
import datetime
import io
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from escale.config import parse_config_text
from escale.errors import ConfigError, RelayError
from escale.relay import S3, LocalMount, WebDAV

ROOT = Path(__file__).resolve().parent.parent


def config(address: str, extra: str = "", tmp: Path = Path("/tmp")) -> object:
    text = f"[repo]\nlocal path = {tmp}/escale-local-x\nrelay address = {address}\nencryption = off\n{extra}"
    (repo,) = parse_config_text(text).repositories.values()
    return repo


# ------------------------------------------------------------------ addresses
def test_user_in_the_address_is_kept() -> None:
    r = config("https://alice@dav.example.org/remote.php/dav/files/alice/escale")
    assert r.user == "alice"
    assert r.relay_url == "https://alice@dav.example.org/remote.php/dav/files/alice/escale"
    relay = WebDAV(r.relay_url, user=r.user, password="pw")
    assert relay.user == "alice" and relay._auth == ("alice", "pw")


def test_password_in_the_address_is_used_and_never_shown() -> None:
    r = config("https://alice:Secr3t@dav.example.org/dav")
    assert (r.user, r.password) == ("alice", "Secr3t") and "Secr3t" not in r.relay_url
    for bad in ("https://alice:Secr3t@host:80x/dav", "https://alice:Secr3t@host:99999/dav",
                "ftp://alice:Secr3t@host/dav"):
        with pytest.raises(ConfigError) as e:
            WebDAV(bad)
        assert "Secr3t" not in str(e.value) and "alice" in str(e.value)


def test_ipv6_literal_address() -> None:
    r = config("https://[::1]:8080/dav")
    assert r.relay_url == "https://[::1]:8080/dav"
    relay = WebDAV(r.relay_url)
    assert relay.base_url == "https://[::1]:8080/dav/" and relay.port == 8080


@pytest.mark.parametrize("address", ["https://host:80x/dav", "https://host:0/dav", "https://host:70000/dav"])
def test_bad_port_is_a_config_error_exit_3(address: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        config(address)
    assert e.value.exit_code == 3 and "port" in str(e.value) and "relay address" in str(e.value)
    conf = tmp_path / "escale.conf"
    conf.write_text(f"[repo]\nlocal path = {tmp_path}/local\nrelay address = {address}\nencryption = off\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "escale", "-c", str(conf), "--once"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert run.returncode == 3, run.stderr
    assert "Traceback" not in run.stderr and "port" in run.stderr


def test_hash_and_question_mark_in_the_path_are_folder_names(request, tmp_path) -> None:
    r = config("https://host/dav/a#b?c")
    assert r.relay_url == "https://host/dav/a#b?c"
    relay = WebDAV(r.relay_url)
    assert relay.base_path == "/dav/a#b?c/" and relay.base_url == "https://host/dav/a%23b%3Fc/"
    server = request.getfixturevalue("relay_webdav_apache")
    address, _conf, kwargs = server.new()
    relay = WebDAV(address + "-#1 50%", **kwargs)
    relay.open()
    relay.put("u/x", io.BytesIO(b"here"))
    assert [i.name for i in relay.list()] == ["u/x"]
    assert (server.data / "dav" / (address.rsplit("/", 1)[1] + "-#1 50%") / "u%2Fx").read_bytes() == b"here"  # flat


# ------------------------------------------------------------------ verify ssl: one parser
@pytest.mark.parametrize("backend", ["webdav", "s3"])
def test_verify_ssl_is_strict_and_the_same_for_every_backend(backend: str, tmp_path: Path) -> None:
    def make(value):
        if backend == "webdav":
            return WebDAV("https://host/dav", verify_ssl=value).verify
        return S3("s3://bucket/x", endpoint="https://host:8333", verify_ssl=value).verify

    assert make("no") is False and make("Yes") is True and make("off") is False
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert make(str(bundle)) == str(bundle)
    for typo in ("flase", "ture", str(tmp_path / "missing.pem")):
        with pytest.raises(ConfigError, match="verify ssl"):
            make(typo)


def test_verify_ssl_typo_is_refused_when_the_configuration_is_read() -> None:
    with pytest.raises(ConfigError, match="verify ssl"):
        config("https://host/dav", "verify ssl = flase\n")
    assert config("https://host/dav", "verify ssl = off\n").options["verify_ssl"] is False


# ------------------------------------------------------------------ a Nextcloud-like server
NEXTCLOUD_DATE = "Mon, 30 Nov 2026 12:00:00 -0000"  # how some PHP servers write a UTC date


class _Nextcloud(BaseHTTPRequestHandler):
    """Answers PROPFIND as Nextcloud does for an unlimited quota (-3) with a '-0000' date."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_PROPFIND(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        base = "/remote.php/dav/files/alice/escale/"
        folder = ("<d:response><d:href>%s</d:href><d:propstat><d:prop><d:resourcetype><d:collection/>"
                  "</d:resourcetype><d:quota-available-bytes>-3</d:quota-available-bytes>"
                  "<d:quota-used-bytes>1234</d:quota-used-bytes></d:prop><d:status>HTTP/1.1 200 OK</d:status>"
                  "</d:propstat></d:response>") % base
        x = ("<d:response><d:href>%sx</d:href><d:propstat><d:prop><d:resourcetype/>"
             "<d:getcontentlength>5</d:getcontentlength><d:getlastmodified>%s</d:getlastmodified>"
             "</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>") % (base, NEXTCLOUD_DATE)
        if self.path.endswith("/x"):
            inner = x
        elif "quota" in self.path or self.headers.get("Depth") == "0":
            inner = folder
        else:  # the folder's Depth 1 (open): the folder and x, a file of a flat relay
            inner = folder + x
        body = ('<?xml version="1.0"?><d:multistatus xmlns:d="DAV:">' + inner + "</d:multistatus>").encode()
        self.send_response(207)
        self.send_header("Content-Type", "application/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def nextcloud():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Nextcloud)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/remote.php/dav/files/alice/escale"
    server.shutdown()
    server.server_close()


def test_nextcloud_unlimited_quota_is_unknown_not_available_bytes(nextcloud) -> None:
    relay = WebDAV(nextcloud, user="alice", password="pw", layout="nested")  # the fake takes no PUT (guards)
    relay.open()
    usage = relay.usage()
    assert usage.available is None and usage.used == 1234


def test_minus_0000_dates_are_utc(nextcloud, monkeypatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # a local time far from UTC shows the mistake
    time.tzset()
    try:
        relay = WebDAV(nextcloud, user="alice", password="pw", layout="nested")
        relay.open()
        info = relay.stat("x")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    utc = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc).timestamp()
    assert info is not None and int(info.mtime) == int(utc)


# ------------------------------------------------------------------ mounted folder
def _list_in_child(root: Path) -> str:
    """List the relay in a forked child, as nobody when we are root (root reads anything)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                text = repr(sorted(i.name for i in LocalMount(f"file://{root}").list()))
            except RelayError as exc:
                text = f"RelayError {exc}"
            os.write(write_end, text.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_mounted_folder_listing_surfaces_io_errors(tmp_path: Path) -> None:
    """os.walk skips a folder it cannot read: the listing would be silently short, and
    the protocol would believe objects gone. It must fail instead."""
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"escale-walk-{os.getpid()}"
    root.mkdir(mode=0o755)
    try:
        relay = LocalMount(f"file://{root}")
        relay.open()
        relay.put("u/a/1", io.BytesIO(b"1"))
        relay.put("u/b/1", io.BytesIO(b"1"))
        (root / "u" / "b").chmod(0)
        outcome = _list_in_child(root)
        assert outcome.startswith("RelayError") and "u/b" in outcome and "ermission denied" in outcome, outcome
    finally:
        (root / "u" / "b").chmod(0o755)
        subprocess.run(["rm", "-rf", str(root)], check=True)


def test_mounted_folder_without_hard_links_declares_its_create_mode(tmp_path: Path) -> None:
    relay = LocalMount(f"file://{tmp_path}/r", hard_links=False)
    relay.open()
    relay.put("h", io.BytesIO(b"x"), create_only=True)
    assert relay.create_mode == "noreplace" and relay.capabilities.atomic_create
    assert not list((tmp_path / "r").glob(".escale-put-*"))
    with_links = LocalMount(f"file://{tmp_path}/r2")
    with_links.open()
    with_links.put("h", io.BytesIO(b"x"), create_only=True)
    assert with_links.create_mode == "link"


# ------------------------------------------------------------------ layering
def test_relay_backends_never_import_config() -> None:
    """config imports the relay package (to know the backends); a backend importing config
    back, even lazily inside a function, is the cycle issue 10 removed."""
    offenders = []
    for path in sorted((ROOT / "escale" / "relay").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = ("." * node.level) + (node.module or "")
                if module in ("..config", "escale.config") or (module == ".." and any(
                        a.name == "config" for a in node.names)):
                    offenders.append(f"{path.name}:{node.lineno}")
            elif isinstance(node, ast.Import) and any(a.name == "escale.config" for a in node.names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
