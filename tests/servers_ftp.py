"""Real FTP and FTPS servers on 127.0.0.1 for the test session: pyftpdlib (PyPI), run as a
process of its own with a user ``alice`` whose home is a temporary folder.

The session fixtures ``relay_ftp_pyftpdlib`` (plain FTP) and ``relay_ftps_pyftpdlib``
(explicit TLS, control and data, with a certificate from a test CA made here with
``cryptography``) return a server whose ``new()`` gives ``(address, config lines, backend
keywords)`` for a fresh, empty folder on it. Tests that need a server of their own (faults,
no MLSD, a server that will not rename onto an existing file, implicit TLS) build one with
:class:`FTPServer`.

Faults are real: the server process reads ``faults.json`` in its folder before each
command (see :meth:`FTPServer.fault`) and answers ``421`` and closes, or drops the control
and data connections after some bytes of a transfer.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from servers_webdav import ServerUnavailable, _die_with_parent, free_port, make_ca

USER = "alice"
PASSWORD = "ftp-s3cr3t"

SERVER_SCRIPT = r'''
import json, os, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, DTPHandler
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.servers import FTPServer

cfg = json.load(open(sys.argv[1]))
FAULTS = os.path.join(cfg["base"], "faults.json")
EXTRA = os.path.join(cfg["base"], "extra_lines.json")


class HostileFS(AbstractedFS):
    """Listings with the lines of ``extra_lines.json`` added ({folder: {"MLSD"|"LIST": [line]}}):
    what a hostile or broken server may answer."""

    def _extra(self, path, cmd):
        try:
            with open(EXTRA) as f:
                extra = json.load(f)
        except (OSError, ValueError):
            return []
        lines = extra.get(os.path.realpath(path), {}).get(cmd, [])
        return [(line + "\r\n").encode("utf-8", "surrogateescape") for line in lines]

    def format_mlsx(self, basedir, listing, *args, **kw):
        yield from super().format_mlsx(basedir, listing, *args, **kw)
        yield from self._extra(basedir, "MLSD")

    def format_list(self, basedir, listing, *args, **kw):
        yield from super().format_list(basedir, listing, *args, **kw)
        yield from self._extra(basedir, "LIST")


def take_fault(cmd, arg=""):
    """The first fault scripted for ``cmd`` (consumed), or None; a fault with ``arg`` set
    applies only to commands whose argument contains it."""
    try:
        with open(FAULTS) as f:
            faults = json.load(f)
    except (OSError, ValueError):
        return None
    for i, fault in enumerate(faults):
        if fault["cmd"] == cmd and fault.get("times", 1) > 0 and fault.get("arg", "") in (arg or ""):
            fault["times"] = fault.get("times", 1) - 1
            with open(FAULTS + ".tmp", "w") as f:
                json.dump(faults, f)
            os.replace(FAULTS + ".tmp", FAULTS)
            return fault
    return None


def make_dtp(base):
    class CutDTP(base):
        """Drops the control and data connections after ``cut`` bytes of a transfer."""

        def _check_cut(self):
            cut = getattr(self.cmd_channel, "cut_after", None)
            if cut is not None and self.tot_bytes_sent + self.tot_bytes_received >= cut:
                self.cmd_channel.cut_after = None
                ch = self.cmd_channel
                self.close()
                ch.close()
                return True
            return False

        def send(self, data):
            cut = getattr(self.cmd_channel, "cut_after", None)
            if cut is not None:
                data = data[: max(1, cut - self.tot_bytes_sent)]
            n = super().send(data)
            self._check_cut()
            return n

        def handle_read(self):
            super().handle_read()
            self._check_cut()

        handle_read_event = handle_read

    return CutDTP


def make_handler(base_handler, base_dtp):
    class Handler(base_handler):
        dtp_handler = make_dtp(base_dtp)
        use_sendfile = False
        cut_after = None

        def pre_process_command(self, line, cmd, arg):
            fault = take_fault(cmd, arg)
            if fault is not None:
                if fault["action"] == "421":
                    self.respond("421 Service not available, closing control connection.")
                    self.close_when_done()
                    return
                if fault["action"] == "drop":
                    self.close()
                    return
                if fault["action"] == "cut":
                    self.cut_after = fault.get("bytes", 1)
                if fault["action"] == "short":  # store less than was sent, and say 226
                    self.short_by = fault.get("bytes", 1)
                if fault["action"] == "mute":  # do it, answer nothing (success or refusal), close
                    self.respond = lambda *a, **k: None
                    super().pre_process_command(line, cmd, arg)
                    self.close()
                    return
                if fault["action"] == "lost":  # do it, then close before the answer leaves
                    super().pre_process_command(line, cmd, arg)
                    self.close()
                    return
            return super().pre_process_command(line, cmd, arg)

        short_by = None

        def on_file_received(self, file):
            if self.short_by:
                size = os.path.getsize(file)
                os.truncate(file, max(0, size - self.short_by))
                self.short_by = None
            return super().on_file_received(file)

        def ftp_RNTO(self, path):
            if not cfg["rename_overwrites"] and self._rnfr and os.path.exists(path):
                self._rnfr = None
                self.respond("550 Cannot create a file when that file already exists.")
                return
            return super().ftp_RNTO(path)

        def handle(self):
            if cfg["implicit"]:  # TLS from the first byte, as servers on port 990 speak
                self.secure_connection(self.ssl_context)
            return super().handle()

    if not cfg["mlsd"]:  # a server without RFC 3659 listings (vsftpd)
        Handler.proto_cmds = {k: v for k, v in base_handler.proto_cmds.items() if k not in ("MLSD", "MLST")}
    return Handler


auth = DummyAuthorizer()
auth.add_user(cfg["user"], cfg["password"], cfg["home"], perm="elradfmwMT")
if cfg["tls"]:
    from pyftpdlib.handlers import TLS_FTPHandler, TLS_DTPHandler
    Handler = make_handler(TLS_FTPHandler, TLS_DTPHandler)
    Handler.certfile = cfg["certfile"]
    Handler.keyfile = cfg["keyfile"]
    Handler.tls_control_required = True
    Handler.tls_data_required = True
else:
    Handler = make_handler(FTPHandler, DTPHandler)
Handler.authorizer = auth
Handler.abstracted_fs = HostileFS
Handler.timeout = cfg["idle_timeout"]  # idle sessions are closed after this many seconds
Handler.banner = "escale test FTP server ready."
Handler.permit_foreign_addresses = False
server = FTPServer(("127.0.0.1", cfg["port"]), Handler)
server.max_cons = 256
server.serve_forever(timeout=0.5, blocking=True)
'''


class FTPServer:
    """One pyftpdlib process serving ``<base>/data`` as the home of ``alice``."""

    def __init__(self, base: Path, *, tls: bool = False, implicit: bool = False, mlsd: bool = True,
                 rename_overwrites: bool = True, idle_timeout: float = 300, port: int | None = None):
        self.base = Path(base)
        self.home = self.base / "data"
        self.home.mkdir(parents=True, exist_ok=True)
        self.tls, self.implicit, self.mlsd, self.rename_overwrites = tls or implicit, implicit, mlsd, rename_overwrites
        self.idle_timeout = idle_timeout
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.base / "server.log"
        self.ca: Path | None = None
        self._certs: dict[str, Path] = {}

    @property
    def scheme(self) -> str:
        return "ftps" if self.tls else "ftp"

    def start(self, timeout: float = 20) -> "FTPServer":
        try:
            import pyftpdlib  # noqa: F401
            if self.tls:
                import OpenSSL  # noqa: F401
        except ImportError as exc:
            raise ServerUnavailable(f"pyftpdlib is not installed ({exc}); pip install pyftpdlib pyopenssl") \
                from None
        if self.tls and not self._certs:
            self._certs = make_ca(self.base / "tls")
            self.ca = self._certs["ca"]
        script = self.base / "ftpserver.py"
        script.write_text(SERVER_SCRIPT)
        cfg = {"base": str(self.base), "home": str(self.home), "port": self.port, "user": USER,
               "password": PASSWORD, "tls": self.tls, "implicit": self.implicit, "mlsd": self.mlsd,
               "rename_overwrites": self.rename_overwrites, "idle_timeout": self.idle_timeout,
               "certfile": str(self._certs.get("cert", "")), "keyfile": str(self._certs.get("key", ""))}
        (self.base / "ftpserver.json").write_text(json.dumps(cfg))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(script), str(self.base / "ftpserver.json")],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise ServerUnavailable(f"pyftpdlib exited with {self.proc.returncode}: "
                                        f"{self.log.read_text(errors='replace')[-1500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise ServerUnavailable(f"pyftpdlib did not answer within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    cleanup = stop

    def new(self, user: str = USER, password: str = PASSWORD) -> tuple[str, str, dict]:
        """A fresh folder: (relay address, config lines, backend keywords)."""
        address = f"{self.scheme}://127.0.0.1:{self.port}/relays/{uuid.uuid4().hex[:12]}"
        conf = f"user = {user}\npassword = {password}\n"
        kwargs: dict = {"user": user, "password": password}
        if self.tls:
            conf += f"verify ssl = {self.ca}\n"
            kwargs["verify_ssl"] = str(self.ca)
        if self.implicit:
            conf += "tls mode = implicit\n"
            kwargs["tls_mode"] = "implicit"
        return address, conf, kwargs

    def folder(self, address: str) -> Path:
        """The server-side folder of a relay address given by :meth:`new`."""
        return self.home / address.split("/", 3)[3]

    def fault(self, cmd: str, action: str, *, bytes: int = 0, times: int = 1, arg: str = "") -> None:
        """Script a fault: the next ``times`` ``cmd`` commands get ``action``: ``421`` (answer
        421 and close), ``drop`` (close the control connection without answering), ``lost``
        (do it, then close before the answer leaves: a lost answer), ``mute`` (do it, send no
        answer at all, not even a refusal, and close), ``cut`` (run the
        command, then drop both connections after ``bytes`` bytes of data) or ``short``
        (a STOR keeps ``bytes`` bytes less than it received, and answers 226)."""
        path = self.base / "faults.json"
        try:
            faults = json.loads(path.read_text())
        except (OSError, ValueError):
            faults = []
        faults.append({"cmd": cmd, "action": action, "bytes": bytes, "times": times, "arg": arg})
        path.write_text(json.dumps(faults))

    def add_listing_lines(self, folder: Path, cmd: str, lines: list[str]) -> None:
        """Make the server add ``lines`` to its ``cmd`` (MLSD or LIST) listings of ``folder``
        (a folder on its disk), as a hostile or broken server would."""
        path = self.base / "extra_lines.json"
        try:
            extra = json.loads(path.read_text())
        except (OSError, ValueError):
            extra = {}
        extra.setdefault(os.path.realpath(folder), {}).setdefault(cmd, []).extend(lines)
        path.write_text(json.dumps(extra))

    def faults_left(self) -> int:
        try:
            return sum(f.get("times", 1) for f in json.loads((self.base / "faults.json").read_text()))
        except (OSError, ValueError):
            return 0


def _session_server(tmp_path_factory, **kw) -> FTPServer:
    server = FTPServer(tmp_path_factory.mktemp("ftp"), **kw)
    try:
        server.start()
    except ServerUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"FTP server unavailable: {exc}")
    return server


@pytest.fixture(scope="session")
def relay_ftp_pyftpdlib(tmp_path_factory):
    server = _session_server(tmp_path_factory)
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def relay_ftps_pyftpdlib(tmp_path_factory):
    server = _session_server(tmp_path_factory, tls=True)
    yield server
    server.cleanup()
