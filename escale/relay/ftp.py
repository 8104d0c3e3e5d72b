"""An FTP or FTPS account used as the relay (``ftps://[user@]host[:port]/path``, ``ftp://…``).

Which library, and why
----------------------
:mod:`ftplib` (standard library) speaks the protocol: it is complete for what the relay
needs (AUTH TLS / PROT P, passive mode, REST, MLSD, raw commands) and is what Python
ships; no FTP client on PyPI adds anything the relay uses (pyftpdlib is a server, used by
the tests). ftplib and ssl are imported when a relay of this kind is first connected.

Addresses and TLS
-----------------
- ``ftps://host/path`` is **explicit** TLS (``AUTH TLS`` on the ordinary port, 21):
  the control and every data connection are encrypted (``PROT P``) and the server's
  certificate is verified against the system's CAs, or ``verify ssl = /path/ca.pem``.
  ``tls mode = implicit`` (the default on port 990) speaks TLS from the first byte, as
  old servers on port 990 do (curl and lftp call that ``ftps://``).
- ``ftp://host/path`` is plain FTP: the password and the (already encrypted, when a
  passphrase is set) objects travel in clear. A warning says so at connection.
- The path is relative to the login folder (as in RFC 1738 and curl); ``/%2F`` at its
  start makes it absolute (``ftps://host/%2Fsrv/escale``). The folder is created if
  missing. ``user``/``password`` options or ``user@`` in the address give the login;
  the password is never logged or shown.
- Data connections reuse the control connection's TLS session, which vsftpd requires by
  default (``require_ssl_reuse``).

How the relay contract is met
-----------------------------
- **Connections.** One control connection is reused for every call (a small pool: a
  second one is opened only while the first is busy, e.g. a download still being read
  while another call runs, or calls from several threads); each transfer has its own
  passive data connection. A control connection that drops, times out or answers 421
  is closed and the call is retried on a new one (``max retries``, exponential
  back-off with jitter: :mod:`escale.relay.retry`). A connection idle for a while is
  checked with ``NOOP`` before reuse, as servers end idle sessions.
- **Layout.** A relay this backend creates is flat (every object one file of the relay
  folder, its ``/`` written ``%2F``), so a listing is one ``EPSV`` + ``MLSD``; a relay
  made before (nested: a folder per ``/``) stays so. The root listing at :meth:`open` says
  which; :mod:`escale.relay.layout` has the rules and the guard files that keep older
  clients out of a flat relay.
- **Listings** use ``MLSD`` (RFC 3659: exact size, UTC modification time, a unique id)
  where the server has it, else ``LIST`` parsed in its Unix form; in that mode the
  listing gives times to the minute, so ``MDTM`` is asked for every object listed with
  a time in the last day. ``stat`` uses ``MLST``, or ``SIZE`` and ``MDTM``.
  :attr:`ObjectInfo.etag` is ``size-modify-unique`` when the server gives a unique id (a
  rewritten object is a new file: a new id), so a same-size rewrite within one second
  is still seen.
- **Puts are atomic.** Data goes to a hidden temporary ``.escale-put-<name>.<random>``
  in the target's folder; its size on the server is checked (a server may keep less than
  it was sent and still answer 226), then ``RNFR``/``RNTO`` gives it its name. A server that
  refuses to rename onto an existing file (IIS does) gets the old object renamed aside
  first (``.escale-old-…``), then the new one renamed into place, then the old one
  removed: readers may then find the name absent for a moment, so
  :attr:`Capabilities.atomic_replace` is declared false from the first time it
  happens (and a warning is logged). A crash between the two renames leaves the old
  object aside; :meth:`abort_incomplete` puts it back.
- **Create-if-absent.** FTP has no conditional store. ``MKD`` of an existing folder
  fails atomically on every server backed by a file system, so the name is claimed with
  a lock folder ``.escale-lock-<name>``: the one writer whose ``MKD`` succeeds checks
  the name is free, renames its temporary into place and removes the lock. A lock older
  than two minutes (by the server's clock: the age is measured against the time the
  server gave the writer's own temporary) is a crashed writer's and is broken. A lost
  answer to the lock's ``MKD`` counts as another writer's lock (ours may have failed,
  unheard, against theirs): the create waits for it to go, never risks two creators. The
  first create probes that ``MKD`` of an existing folder does fail; where it does not,
  create-if-absent is a check then a rename (``atomic_create`` false, with a warning).
- **Downloads** (``RETR``) are read as they arrive; a transfer that breaks is resumed
  with ``REST`` at the byte reached, after checking (``MLST``/``SIZE``+``MDTM``) that the
  object is the one being read.
- **Folders** (nested relays) are created as needed (``MKD``, parents first) and, after a delete,
  removed while empty, below the first level only (where escale has one writer):
  ``RMD`` itself refuses a folder that holds anything.
- **Errors.** 530 is an AuthenticationError, 452/552 QuotaExceeded, 421, other 4xx,
  resets and timeouts are retried then TransientRelayError, any other 5xx a
  RelayError naming the object. An untrusted or mismatched certificate is refused with
  a message saying how to trust it.

Length: one backend's whole contract over one wire protocol (control and data
connections, TLS, listings of several dialects, atomic replace, locks, resume, retries);
splitting it would scatter one protocol across files.
"""
from __future__ import annotations

import calendar
import hashlib
import io
import logging
import os
import posixpath
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, TypeVar
from urllib.parse import unquote

from ..errors import (AuthenticationError, ConfigError, EscaleError, ObjectExists, PermanentRelayError, QuotaExceeded,
                      RelayError, RelayObjectMissing, SourceError, TransientRelayError)
from ..values import parse_bool, parse_verify_ssl
from .address import redact, split_network_address
from .body import PutBody
from . import layout as layouts
from .layout import FLAT, GUARDS, LAYOUT
from .base import (PROBE_MARK, STALE_TMP_SECONDS, TMP_MARK, Capabilities, ObjectInfo, Relay,
                   RelayOption, check_name)
from . import retry
from .options import MAX_RETRIES, TLS
from .split import MAX_OBJECT_SIZE

log = logging.getLogger(__name__)

LOCK_MARK = ".escale-lock-"
OLD_MARK = ".escale-old-"
_HIDDEN = (TMP_MARK, LOCK_MARK, OLD_MARK, PROBE_MARK)
#: a create-if-absent lock older than this (server clock) is a crashed writer's
STALE_LOCK_SECONDS = 120.0
#: how long a create waits for another writer's lock to go before it checks again
LOCK_WAIT_SECONDS = 10.0
BLOCK = 1 << 20
DEFAULT_TIMEOUT = 60.0
#: idle control connections kept open for reuse
MAX_IDLE = 4
#: a connection idle longer than this is checked with NOOP before it is reused
IDLE_CHECK_SECONDS = 15.0
#: LIST mode: objects listed with a time this recent get their exact time from MDTM
LIST_RECENT_SECONDS = 25 * 3600

T = TypeVar("T")


def _parse_tls_mode(text: str) -> str:
    t = text.strip().lower()
    if t not in ("explicit", "implicit"):
        raise ValueError("expected 'explicit' (AUTH TLS, port 21) or 'implicit' (TLS from the start, port 990)")
    return t


#: a longer timeout is a typo (sockets refuse one beyond time_t)
MAX_TIMEOUT = 86400.0


def _parse_timeout(text: str) -> float:
    try:
        t = float(str(text).strip())
    except ValueError:
        raise ValueError(f"'{text}' is not a number of seconds") from None
    if not 0 < t <= MAX_TIMEOUT:  # also NaN and inf, which failed later in the socket layer
        raise ValueError(f"must be a number of seconds above 0 and at most {MAX_TIMEOUT:.0f}")
    return t


def _mlsd_time(text: str | None) -> float:
    """An RFC 3659 time (``YYYYMMDDHHMMSS[.sss]``, UTC) as a POSIX time; 0 when unreadable."""
    if not text:
        return 0.0
    m = re.fullmatch(r"\s*(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\.\d+)?\s*", text)
    if not m:
        return 0.0
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    try:
        t = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    except (ValueError, OverflowError):
        return 0.0
    return t + (float(m.group(7)) if m.group(7) else 0.0)


def _stamp(mtime: float, unique: str | None) -> float:
    """The server's time plus a fraction of a second derived from the file's unique id, so
    that a rewrite (a new file: a new id) changes the stamp even within one second."""
    if not unique:
        return mtime
    frac = int.from_bytes(hashlib.sha1(unique.encode()).digest()[:4], "big") / 2**32
    return float(int(mtime)) + round(frac * 0.999, 6)


_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                       "nov", "dec"), start=1)}
_LIST_RE = re.compile(r"^([\-dlbcps])[\w\-+.@]{9,10}\s+\d+\s+\S+\s+(?:\S+\s+)?(\d+)\s+"
                      r"([A-Za-z]{3})\s+(\d{1,2})\s+(\d{1,2}:\d\d|\d{4})\s(.*)$")


def _parse_list_line(line: str, now: float) -> tuple[str, str, int, float] | None:
    """(kind, name, size, time) of one Unix-style LIST line ('-' file, 'd' folder…)."""
    m = _LIST_RE.match(line)
    if not m:
        return None
    kind, size, mon, day, when, name = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return None
    if ":" in when:
        hh, mm = (int(x) for x in when.split(":"))
        year = time.gmtime(now).tm_year
        t = calendar.timegm((year, month, int(day), hh, mm, 0, 0, 0, 0))
        if t > now + 86400:  # "Dec 31 23:59" seen in January: last year
            t = calendar.timegm((year - 1, month, int(day), hh, mm, 0, 0, 0, 0))
    else:
        t = calendar.timegm((int(when), month, int(day), 0, 0, 0, 0, 0, 0))
    if kind == "l":
        name = name.split(" -> ", 1)[0]
    return kind, name, int(size), float(t)


@dataclass
class _Entry:
    name: str
    kind: str  # "file", "dir" or something else
    size: int = 0
    mtime: float = 0.0
    unique: str | None = None
    exact: bool = True  # the time is to the second (MLSD/MDTM), not LIST's minute

    def info(self, rel: str) -> ObjectInfo:
        etag = f"{self.size}-{self.mtime!r}-{self.unique}" if self.unique else None
        return ObjectInfo(rel, self.size, _stamp(self.mtime, self.unique), etag)


class _Conn:
    """One logged-in control connection and what its server offers."""

    def __init__(self, ftp, features: set[str]):
        self.ftp = ftp
        self.features = features
        self.mlst = "MLST" in features
        self.size = "SIZE" in features
        self.mdtm = "MDTM" in features
        self.rest = "REST STREAM" in features or "REST" in features
        #: a data command was refused: some servers (pyftpdlib over TLS) then send a stray
        #: "226" for the data connection already opened, so later replies would be read
        #: out of step. Such a connection is closed instead of reused.
        self.tainted = False
        self.idle_since = time.monotonic()

    def alive(self) -> bool:
        """Whether the server still answers on this connection (a NOOP)."""
        try:
            return self.ftp.voidcmd("NOOP").startswith("2")
        except Exception:  # noqa: BLE001 - any failure means: do not reuse it
            return False

    def transfer(self, cmd: str, rest: int | None = None):
        """The data socket of ``cmd`` (RETR, STOR, MLSD, LIST)."""
        try:
            data, _ = self.ftp.ntransfercmd(cmd, rest)
        except BaseException:
            self.tainted = True
            raise
        return data

    def close(self) -> None:
        try:
            self.ftp.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not hide the real error
            pass


@dataclass
class _Refused:
    """A listing the server refused (the folder is missing, or cannot be read)."""

    reason: str


class _Transient(Exception):
    """A failure of the connection (dropped, timed out, 421, other 4xx): retried."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class FTP(Relay):
    """A folder on an FTP or FTPS server (see the module documentation)."""

    schemes = ("ftp", "ftps")
    options = (
        *TLS, MAX_RETRIES, MAX_OBJECT_SIZE,
        RelayOption("tls_mode", ("tls mode", "ftps mode"), _parse_tls_mode,
                    doc="ftps:// only: 'explicit' (AUTH TLS on the ordinary port, the default) or 'implicit' "
                        "(TLS from the first byte, the default on port 990)"),
        RelayOption("passive", ("passive", "passive mode"), parse_bool,
                    doc="FTP data connections in passive mode (yes, the default); 'no' makes the server "
                        "connect back to the client, which rarely works through NAT"),
        RelayOption("timeout", ("timeout", "ftp timeout"), _parse_timeout,
                    doc="seconds an FTP server may take to answer before the call is retried (default 60)"),
        LAYOUT,
    )

    def __init__(self, address: str, user: str | None = None, password: str | None = None, *,
                 tls_mode: str | None = None, passive=None, verify_ssl=None, certfile: str | None = None,
                 keyfile: str | None = None, max_retries=None, timeout=None, port=None, layout=None, **options):
        try:
            net = split_network_address(address)
        except ConfigError as exc:
            raise ConfigError(f"{exc.detail}; an FTP address is ftps://[user@]host[:port]/path",
                              option="relay address") from None
        if net.scheme not in self.schemes:
            raise ConfigError(f"'{redact(address.strip())}' is not an FTP address (ftps://host[:port]/path)",
                              option="relay address")
        self.tls = net.scheme == "ftps"
        try:
            self.port = net.port or (int(port) if port not in (None, "") else None)
        except (TypeError, ValueError):
            raise ConfigError(f"bad port {port!r}", option="port") from None
        try:
            mode = _parse_tls_mode(tls_mode) if tls_mode not in (None, "") else None
        except ValueError as exc:
            raise ConfigError(str(exc), option="tls mode") from None
        if mode is not None and not self.tls:
            raise ConfigError(f"'tls mode = {mode}' needs an ftps:// address", option="tls mode")
        self.implicit = self.tls and (mode == "implicit" or (mode is None and self.port == 990))
        if self.port is None:
            self.port = 990 if self.implicit else 21
        self.host = net.host
        self.user = user if user is not None else net.user
        self._password = password if password is not None else net.password
        raw = net.path
        self.absolute = raw.lower().startswith("/%2f")
        self.path = unquote(raw[4:] if self.absolute else raw).strip("/")
        shown = f"{net.scheme}://{net.netloc(net.port)}" + ("/" + raw.strip("/") if raw.strip("/") else "")
        super().__init__(shown)
        self.passive = self._option(passive, parse_bool, "passive", True)
        try:
            self.verify = parse_verify_ssl(verify_ssl) if verify_ssl not in (None, "") else True
        except ValueError as exc:
            raise ConfigError(str(exc), option="verify ssl") from None
        if keyfile and not certfile:
            raise ConfigError("'keyfile' needs 'certfile' (the client certificate)", option="keyfile")
        self.certfile = os.path.expanduser(certfile) if certfile else None
        self.keyfile = os.path.expanduser(keyfile) if keyfile else None
        for opt, f in (("certfile", self.certfile), ("keyfile", self.keyfile)):
            if f and not os.path.isfile(f):
                raise ConfigError(f"{opt} {f} does not exist", option=opt)
        self.retry = retry.RetryPolicy.from_option(max_retries)
        self.timeout = self._option(timeout, _parse_timeout, "timeout", DEFAULT_TIMEOUT)
        for k in options:
            if k not in ("ssl_version", "verbosity"):
                log.debug("%s: option %s is not used by the FTP relay", self.address, k)
        self.base = ""  # absolute folder on the server, found at connection
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._known: set[str] = set()  # folders known to exist (relative; "" = the base)
        self._create_atomic: bool | None = None  # MKD of an existing folder fails?
        self._replace_atomic = True
        self._warned_plain = False
        #: the layout a new relay gets; an existing relay's own is found at open (escale/relay/layout.py)
        self.new_layout = self._option(layout, layouts.parse_layout, "layout", FLAT)
        self.layout: str | None = None

    @staticmethod
    def _option(value, parse: Callable[[str], T], option: str, default: T) -> T:
        if value is None or value == "":
            return default
        if not isinstance(value, str):
            return value
        try:
            return parse(value)
        except ValueError as exc:
            raise ConfigError(str(exc), option=option) from None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(atomic_create=self._create_atomic is not False, atomic_replace=self._replace_atomic)

    # -- connections -----------------------------------------------------------------------
    def _context(self):
        import ssl

        if self.verify is False:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif isinstance(self.verify, str):
            if os.path.isdir(self.verify):
                ctx = ssl.create_default_context(capath=self.verify)
            else:
                ctx = ssl.create_default_context(cafile=self.verify)
        else:
            ctx = ssl.create_default_context()
        if self.certfile:
            try:
                ctx.load_cert_chain(self.certfile, self.keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the client certificate {self.certfile}: {exc}",
                                  option="certfile") from None
        return ctx

    def _connect(self) -> _Conn:
        import ftplib
        import ssl

        where = f"{self.host}:{self.port}"
        if self.tls:
            if self.verify is False and not self._warned_plain:
                self._warned_plain = True
                log.warning("%s: TLS certificate verification is off ('verify ssl = no'): anyone on the way "
                            "can pose as the server and read the password", self.address)
            ftp = _implicit_class()(context=self._context(), timeout=self.timeout) if self.implicit \
                else _explicit_class()(context=self._context(), timeout=self.timeout)
        else:
            ftp = ftplib.FTP(timeout=self.timeout)
            if not self._warned_plain:
                self._warned_plain = True
                log.warning("%s: plain FTP: the password and the objects travel unencrypted; use ftps:// "
                            "where the server offers TLS", self.address)
        ftp.encoding = "utf-8"
        try:
            ftp.connect(self.host, self.port)
            if self.tls and not self.implicit:
                try:
                    ftp.auth()
                except ftplib.error_perm as exc:
                    raise PermanentRelayError(f"{self.address}: the server refused TLS (AUTH TLS: "
                                              f"{_reply(exc)}); check that it offers FTPS, or set "
                                              "'tls mode = implicit' for a server that speaks TLS "
                                              "from the start (port 990)") from None
            try:
                ftp.login(self.user or "anonymous", self._password or "")
            except ftplib.error_perm as exc:
                if _code(exc) in ("530", "532", "331", "332"):
                    raise AuthenticationError(f"authentication failed for {self.address} ({_reply(exc)})") \
                        from None
                raise
            if self.tls:
                ftp.prot_p()
            ftp.set_pasv(self.passive)
            features = _features(ftp)
            if "MLST" in features:  # the facts listings use ("unique" is not on by default)
                try:
                    ftp.sendcmd("OPTS MLST type;size;modify;unique;")
                except ftplib.all_errors:
                    pass
            if "UTF8" in features:
                try:
                    ftp.sendcmd("OPTS UTF8 ON")
                except ftplib.all_errors:
                    pass
            ftp.voidcmd("TYPE I")
        except ssl.SSLCertVerificationError as exc:
            ftp.close()
            reason = exc.verify_message or str(exc)
            raise RelayError(f"TLS connection to {self.address} refused: the server's certificate cannot be "
                             f"trusted ({reason}); if it is the right server, set 'verify ssl' to the CA "
                             "bundle (PEM) that signed its certificate") from None
        except ssl.SSLError as exc:
            ftp.close()
            if self.implicit or "WRONG_VERSION_NUMBER" not in str(exc):
                raise _Transient(f"TLS error with {where}: {exc}") from None
            raise PermanentRelayError(f"TLS connection to {self.address} failed ({exc.reason}); is this an "
                                      "explicit FTPS port? ('tls mode')") from None
        except (AuthenticationError, PermanentRelayError):
            ftp.close()
            raise
        except ftplib.error_temp as exc:
            ftp.close()
            raise _Transient(f"{where} answered {_reply(exc)}") from None
        except ftplib.error_perm as exc:
            ftp.close()
            raise PermanentRelayError(f"{self.address}: the server refused the connection setup "
                                      f"({_reply(exc)})") from None
        except (OSError, EOFError, ftplib.Error) as exc:
            ftp.close()
            raise _Transient(f"cannot connect to {where}: {_describe(exc)}") from None
        return _Conn(ftp, features)

    def _borrow(self) -> _Conn:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            if time.monotonic() - conn.idle_since < IDLE_CHECK_SECONDS or conn.alive():
                return conn
            # servers close idle sessions (pyftpdlib, vsftpd: after 300 s); that is no
            # failure worth a retry and a warning: open a new one
            log.debug("%s: an idle connection was closed by the server; reconnecting", self.address)
            conn.close()

    def _give_back(self, conn: _Conn) -> None:
        if conn.tainted:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _run(self, what: str, fn: Callable[[_Conn], T], *, done: Callable[[], bool] | None = None,
             replayable: Callable[[], bool] | None = None, keep: bool = False):
        """``fn(conn)`` on a control connection, retried on a new one after a transient
        failure, under the shared policy (:mod:`escale.relay.retry`).

        ``done()``, for a call that is not idempotent, is asked before a retry whether the
        failed try did act (its answer lost); then the call is not sent again and None is
        returned. ``keep``: the connection stays with the caller (a transfer still
        running): returns ``(result, connection)``.
        """
        import ftplib

        where = f"{what} on {self.address}"

        def once(_attempt: int):
            conn = None
            try:
                conn = self._borrow()
                result = fn(conn)
            except _Transient as exc:
                reason = exc.reason
            except ftplib.error_temp as exc:
                if _code(exc) == "452":
                    self._drop(conn)
                    raise QuotaExceeded(f"relay {self.address} is full ({_reply(exc)}) while writing {what}") \
                        from None
                reason = _reply(exc)
            except ftplib.error_perm as exc:
                self._give_back(conn)
                raise self._perm_error(exc, what) from None
            except (OSError, EOFError, ftplib.error_reply, ftplib.error_proto) as exc:
                if isinstance(exc, SourceError):
                    self._drop(conn)
                    raise
                reason = _describe(exc)
            except EscaleError:
                if conn is not None:
                    self._give_back(conn)  # the connection is still good
                raise
            except BaseException:
                self._drop(conn)
                raise
            else:
                if keep:
                    return result, conn
                self._give_back(conn)
                return result
            self._drop(conn)
            raise retry.transient(f"{where}: {reason}", reason=reason)

        def landed() -> bool:
            try:
                return done()
            except RelayError:
                return False

        result = retry.call(once, policy=self.retry, what=where, landed=landed if done else None,
                            replayable=replayable)
        return None if result is retry.LANDED else result

    def _drop(self, conn: _Conn | None) -> None:
        if conn is not None:
            conn.close()

    def _perm_error(self, exc, what: str) -> RelayError:
        code = _code(exc)
        if code in ("530", "532"):
            return AuthenticationError(f"authentication failed for {self.address} ({_reply(exc)} on {what})")
        if code == "552":
            return QuotaExceeded(f"relay {self.address} is full ({_reply(exc)}) while writing {what}")
        return PermanentRelayError(f"{what} on {self.address} failed: {_reply(exc)}")

    # -- paths -----------------------------------------------------------------------------
    def _abs(self, rel: str) -> str:
        if "\r" in rel or "\n" in rel:
            raise PermanentRelayError(f"relay object {rel!r}: FTP cannot carry a line break in a name")
        return posixpath.join(self.base, rel) if rel else self.base

    def open(self) -> None:
        def setup(conn: _Conn) -> str:
            home = conn.ftp.pwd() if not self.absolute else "/"
            base = posixpath.normpath(posixpath.join(home or "/", self.path)) if self.path else (home or "/")
            return base

        self.base = self._run("connecting", setup)
        # the root listing says which layout the relay has (escale/relay/layout.py) and
        # whether it exists (a missing folder is created: a new relay)
        self._known.add("")
        entries = self._run("listing /", lambda c: self._entries(c, ""))
        if isinstance(entries, _Refused) and self._is_folder(""):
            raise RelayError(f"listing / on {self.address} failed: {entries.reason}")
        if not isinstance(entries, list):
            self._forget("")
            self._mkdirs("")
            entries = []
        self.layout = self._find_layout(entries)

    def _find_layout(self, entries: list[_Entry]) -> str:
        folders = {e.name for e in entries if e.kind == "dir" and not e.name.startswith(_HIDDEN)}
        files = {e.name for e in entries if e.kind == "file" and not e.name.startswith(_HIDDEN)}
        found = layouts.detect(self.address, folders, files)
        if found is not None:
            return found
        if self.new_layout == FLAT:
            for g in sorted(GUARDS - files):  # empty files where a nested client would make folders
                self._run(f"STOR {g}", lambda c, g=g: self._store_empty(c, g))
            log.info("%s: a new relay: flat layout (one listing request per cycle)", self.address)
        return self.new_layout

    def _store_empty(self, conn: _Conn, rel: str) -> None:
        data = conn.transfer("STOR " + self._abs(rel))
        _finish(data)
        conn.ftp.voidresp()

    def _rel(self, name: str) -> str:
        """The path of object ``name`` under the relay folder, in this relay's layout."""
        return layouts.object_path(self.address, self.layout, name)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            try:
                conn.ftp.quit()
            except Exception:  # noqa: BLE001 - the server may already be gone
                conn.close()

    def _mkdirs(self, folder: str) -> None:
        """Make sure ``folder`` (relative; '' = the base) exists, creating parents."""
        if folder in self._known:
            return
        import ftplib

        def make(conn: _Conn) -> None:
            path = self._abs(folder)
            missing = []
            p = path
            while p not in ("/", ""):
                try:
                    conn.ftp.sendcmd("MKD " + p)
                    break
                except ftplib.error_perm:
                    if _is_dir(conn, p):
                        break
                    missing.append(p)
                    p = posixpath.dirname(p)
            for p in reversed(missing):
                try:
                    conn.ftp.sendcmd("MKD " + p)
                except ftplib.error_perm as exc:
                    if not _is_dir(conn, p):
                        raise RelayError(f"cannot create folder {p} on {self.address}: {_reply(exc)}") from None

        self._run(f"MKD {folder or '/'}", make)
        while True:
            self._known.add(folder)
            if not folder:
                break
            folder = posixpath.dirname(folder)

    def _forget(self, folder: str) -> None:
        self._known = {k for k in self._known if k != folder and not k.startswith(folder + "/")}

    # -- reading ---------------------------------------------------------------------------
    def _entries(self, conn: _Conn, folder: str) -> list[_Entry] | _Refused:
        """The entries of one folder, None when it does not exist, or _Refused when the
        server would not list it."""
        import ftplib

        path = self._abs(folder)
        if folder not in self._known and not _is_dir(conn, path):
            return None  # asked first: a refused listing costs the connection (see _Conn)
        if conn.mlst:
            try:
                lines = self._lines(conn, "MLSD " + path, folder)
            except ftplib.error_perm as exc:
                return _Refused(_reply(exc))
            out = []
            for line in lines:
                facts_text, _, name = line.partition(" ")
                facts = {}
                for fact in facts_text.rstrip(";").split(";"):
                    k, _, v = fact.partition("=")
                    facts[k.lower()] = v
                kind = facts.get("type", "").lower()
                if kind in ("cdir", "pdir") or name in (".", ".."):
                    continue
                try:
                    size = int(facts.get("size", "0") or 0)
                except ValueError:
                    size = 0
                out.append(_Entry(name, kind, size, _mlsd_time(facts.get("modify")), facts.get("unique")))
            return out
        try:
            lines = self._lines(conn, "LIST " + path, folder)
        except ftplib.error_perm as exc:
            return _Refused(_reply(exc))
        now = time.time()
        out = []
        for line in lines:
            parsed = _parse_list_line(line, now)
            if parsed is None:
                if line.strip() and not line.lower().startswith("total"):
                    raise RelayError(f"LIST {folder or '/'} on {self.address}: cannot read the line {line!r} "
                                     "(not a Unix-style listing, and the server has no MLSD)")
                continue
            kind, name, size, t = parsed
            if name in (".", ".."):
                continue
            e = _Entry(name, {"-": "file", "d": "dir"}.get(kind, kind), size, t, None, exact=False)
            if e.kind == "file" and conn.mdtm and now - t < LIST_RECENT_SECONDS:
                e.mtime, e.exact = _mdtm(conn, posixpath.join(path, name)) or t, True
            out.append(e)
        return out

    def _lines(self, conn: _Conn, cmd: str, folder: str) -> list[str]:
        """The lines of a listing, read in binary mode (ftplib's retrlines would switch the
        connection to ASCII mode, which would change the bytes of later transfers)."""
        data = conn.transfer(cmd)
        chunks = []
        try:
            while block := data.recv(BLOCK):
                chunks.append(block)
        except BaseException:
            _close_quietly(data)
            raise
        _finish(data)
        conn.ftp.voidresp()
        out = []
        for raw in b"".join(chunks).split(b"\n"):
            raw = raw.rstrip(b"\r")
            if not raw:
                continue
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                log.warning("%s: a name in folder %s is not UTF-8 (%r); skipped", self.address, folder or "/", raw)
        return out

    def _walk(self, folder: str, prefix: str = "", hidden: bool = False,
              flat: bool = False) -> Iterator[tuple[str, _Entry]]:
        """(path, entry) of the files under ``folder``, recursively; ``flat``: the relay
        folder's own files only (a flat relay: a nested layout's folder there is an error)."""
        stack = [folder]
        first = True
        while stack:
            col = stack.pop()
            entries = self._run(f"listing {col or '/'}", lambda c, col=col: self._entries(c, col))
            if isinstance(entries, _Refused):
                # 550, or 501 (pyftpdlib): no such folder, unless it is one (asked on
                # another connection: this one may be out of step)
                if self._is_folder(col):
                    raise RelayError(f"listing {col or '/'} on {self.address} failed: {entries.reason}")
                log.debug("%s: no folder %s (%s)", self.address, col or "/", entries.reason)
                entries = None
            if entries is None:
                self._forget(col)  # gone (pruned by its writer): asked first next time
                if first and col == "":
                    raise RelayError(f"relay folder {self.address} is missing")
                first = False
                continue
            first = False
            files, subs = [], []
            for e in entries:
                if not _one_name(e.name):  # '../x', 'a/b', '/etc/passwd', 'x/..': no entry of this folder
                    log.warning("%s: folder %s lists %r, which is no name in a folder; ignored",
                                self.address, col or "/", e.name)
                    continue
                rel = (col + "/" if col else "") + e.name
                if e.kind == "dir":
                    if e.name.startswith(LOCK_MARK):
                        if hidden:
                            files.append((rel, e))
                        continue
                    if flat:
                        if e.name in GUARDS:
                            raise layouts.mixed(self.address, e.name)
                        continue
                    if (rel + "/").startswith(prefix) or prefix.startswith(rel + "/"):
                        subs.append(rel)
                    continue
                if e.kind != "file":
                    continue
                if e.name.startswith(_HIDDEN):
                    if e.name.startswith(TMP_MARK) and e.exact and e.mtime \
                            and time.time() - e.mtime > STALE_TMP_SECONDS:
                        self._delete_quietly(rel)  # a killed writer's
                        continue
                    if not hidden:
                        continue
                    files.append((rel, e))
                    continue
                if rel.startswith(prefix):
                    files.append((rel, e))
            self._known.add(col)
            files.sort()
            yield from files
            stack.extend(sorted(subs, reverse=True))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if self.layout == FLAT:  # one listing: the relay folder's files are every object
            found = []
            for rel, e in self._walk("", flat=True):
                name = layouts.decode(rel)
                if name is not None and name.startswith(prefix):
                    found.append(e.info(name))
            found.sort(key=lambda i: i.name)
            yield from found
            return
        folder = prefix.rpartition("/")[0]
        if folder:
            check_name(folder)
        for rel, e in self._walk(folder, prefix):
            yield e.info(rel)

    def _stat_entry(self, conn: _Conn, rel: str) -> _Entry | None:
        import ftplib

        path = self._abs(rel)
        if conn.mlst:
            try:
                resp = conn.ftp.sendcmd("MLST " + path)
            except ftplib.error_perm as exc:
                if _code(exc) in ("550", "450", "553"):
                    return None
                raise
            for line in resp.splitlines()[1:]:
                if line.startswith(" "):
                    facts_text, _, _name = line[1:].partition(" ")
                    facts = {}
                    for fact in facts_text.rstrip(";").split(";"):
                        k, _, v = fact.partition("=")
                        facts[k.lower()] = v
                    try:
                        size = int(facts.get("size", "0") or 0)
                    except ValueError:
                        size = 0
                    return _Entry(posixpath.basename(rel), facts.get("type", "").lower(), size,
                                  _mlsd_time(facts.get("modify")), facts.get("unique"))
            raise RelayError(f"MLST {rel} on {self.address}: unreadable answer {resp!r}")
        try:
            size = conn.ftp.size(path)
        except ftplib.error_perm as exc:
            if _code(exc) in ("550", "450", "553"):
                return None
            raise
        if size is None:
            return None
        return _Entry(posixpath.basename(rel), "file", int(size), (_mdtm(conn, path) if conn.mdtm else 0.0) or 0.0)

    def stat(self, name: str) -> ObjectInfo | None:
        e = self._stat_file(self._rel(name))
        return None if e is None else e.info(name)

    def _stat_file(self, rel: str) -> _Entry | None:
        """The entry of the file at ``rel`` (a path in this relay's layout), None if absent."""
        e = self._run(f"stat {rel}", lambda c: self._stat_entry(c, rel))
        return None if e is None or e.kind != "file" else e

    def get(self, name: str) -> BinaryIO:
        return io.BufferedReader(_Download(self, self._rel(name)), BLOCK)

    # -- writing ---------------------------------------------------------------------------
    def _store(self, rel: str, body: PutBody) -> None:
        """Send ``body`` to ``rel`` (a temporary), retrying while the data can be sent again."""
        import ftplib

        folder = posixpath.dirname(rel)
        remade: list[bool] = []

        def send(conn: _Conn) -> None:
            if folder not in self._known:
                self._mkdirs_on(conn, folder)
            try:
                data = conn.transfer("STOR " + self._abs(rel))
            except ftplib.error_perm as exc:
                if _code(exc) != "550" or not folder or remade:
                    raise
                # the folder may have gone (pruned, removed by hand): make it again, once
                remade.append(True)
                self._forget(folder)
                raise _Transient(f"STOR {rel}: {_reply(exc)}") from None
            try:
                for block in body.blocks():
                    data.sendall(block)
            except BaseException:
                _close_quietly(data)
                raise
            _finish(data)
            conn.ftp.voidresp()
            # a server may keep less than it was sent and still answer 226 (pyftpdlib over
            # TLS truncates uploads whose data connection is closed abruptly, as rclone's
            # are): the temporary's size is checked before it takes the name
            kept = self._stat_entry(conn, rel)
            if kept is None or kept.size != body.count:
                raise _Transient(f"STOR {rel}: the server kept "
                                 f"{'nothing' if kept is None else f'{kept.size} bytes'} of {body.count} sent")

        try:
            self._run(f"STOR {rel}", send, replayable=lambda: body.replayable)
        except SourceError:
            self._delete_quietly(rel)
            raise

    def _mkdirs_on(self, conn: _Conn, folder: str) -> None:
        import ftplib

        parts = [p for p in folder.split("/") if p]
        for i in range(1, len(parts) + 1):
            p = self._abs("/".join(parts[:i]))
            try:
                conn.ftp.sendcmd("MKD " + p)
            except ftplib.error_perm:
                if not _is_dir(conn, p):
                    raise
        self._known.add(folder)

    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False, size: int | None = None) -> int:
        rel = self._rel(name)
        folder, _, base = rel.rpartition("/")
        body = PutBody(stream, size, name)
        self._mkdirs(folder)
        tmp = (folder + "/" if folder else "") + f"{TMP_MARK}{base}.{uuid.uuid4().hex}"
        moved = False
        try:
            self._store(tmp, body)
            if create_only:
                self._create(rel, tmp, body)
            else:
                self._replace(tmp, rel)
            moved = True
        finally:
            if not moved:
                self._delete_quietly(tmp)
        return body.count

    def _rename(self, conn: _Conn, src: str, dst: str) -> None:
        conn.ftp.sendcmd("RNFR " + self._abs(src))
        conn.ftp.sendcmd("RNTO " + self._abs(dst))

    def _moved(self, tmp: str, name: str) -> Callable[[], bool]:
        def done() -> bool:  # the temporary is ours alone: gone, with the name there, means moved
            return self._stat_file(tmp) is None and self._stat_file(name) is not None
        return done

    def _replace(self, tmp: str, name: str) -> None:
        import ftplib

        def move(conn: _Conn) -> None:
            try:
                self._rename(conn, tmp, name)
            except ftplib.error_perm as exc:
                if self._stat_entry(conn, name) is None or self._stat_entry(conn, tmp) is None:
                    raise
                self._replace_aside(conn, tmp, name, exc)

        self._run(f"rename to {name}", move, done=self._moved(tmp, name))

    def _replace_aside(self, conn: _Conn, tmp: str, name: str, exc) -> None:
        """The server will not rename onto an existing name: move the old object aside first."""
        if self._replace_atomic:
            self._replace_atomic = False
            log.warning("%s: the server refuses to rename onto an existing file (%s); replacing an object "
                        "now removes the old one first, so readers may find it missing for a moment",
                        self.address, _reply(exc))
        folder, _, base = name.rpartition("/")
        old = (folder + "/" if folder else "") + f"{OLD_MARK}{base}.{uuid.uuid4().hex}"
        self._rename(conn, name, old)
        self._rename(conn, tmp, name)
        try:
            conn.ftp.sendcmd("DELE " + self._abs(old))
        except Exception as e:  # noqa: BLE001 - a leftover is hidden and removed by abort_incomplete
            log.debug("%s: could not remove %s: %s", self.address, old, e)

    def _create(self, name: str, tmp: str, body: PutBody) -> None:
        """Give ``tmp`` the name ``name`` only if no other object has it (see the module doc)."""
        if self._create_atomic is None:
            self._create_atomic = self._probe()
        if not self._create_atomic:
            if self._stat_file(name) is not None:
                if self._holds(name, body):
                    return
                raise ObjectExists(f"relay object {name} already exists")
            self._replace(tmp, name)
            return
        folder, _, base = name.rpartition("/")
        lock = (folder + "/" if folder else "") + f"{LOCK_MARK}{base}"
        self._take_lock(lock, name, tmp, body)
        try:
            if self._stat_file(name) is not None:
                if self._holds(name, body):  # an earlier try whose answer was lost
                    return
                raise ObjectExists(f"relay object {name} already exists")
            self._replace(tmp, name)
        finally:
            self._release_lock(lock)

    def _take_lock(self, lock: str, name: str, tmp: str, body: PutBody) -> None:
        import ftplib

        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            def mkd(conn: _Conn) -> bool:
                try:
                    conn.ftp.sendcmd("MKD " + self._abs(lock))
                    return True
                except ftplib.error_perm as exc:
                    if _code(exc) != "550" and not _is_dir(conn, self._abs(lock)):
                        raise
                    return False

            # A lost answer to MKD leaves the lock there, but not necessarily ours: another
            # writer's MKD may have made it first (ours then failed, unheard). Taking it as ours
            # would let two writers create the same name, so the resend's "exists" counts as
            # someone else's lock: a lost answer costs a wait until the lock is stale, never a
            # second writer.
            if self._run(f"MKD {lock}", mkd):
                return
            if self._stat_file(name) is not None:
                if self._holds(name, body):
                    return
                raise ObjectExists(f"relay object {name} already exists")
            age = self._lock_age(lock, tmp)
            if age is not None and age > STALE_LOCK_SECONDS:
                log.warning("%s: removing the lock %s left by a writer that stopped %.0f s ago", self.address,
                            lock, age)
                self._release_lock(lock)
                continue
            if time.monotonic() > deadline:
                raise TransientRelayError(f"creating {name} on {self.address}: another writer holds {lock}; "
                                          "the next cycle tries again")
            time.sleep(0.2 + random.uniform(0, 0.3))

    def _lock_age(self, lock: str, tmp: str) -> float | None:
        """Seconds between the lock's time and our temporary's, both by the server's clock."""
        def ages(conn: _Conn) -> float | None:
            a, b = self._stat_entry(conn, lock), self._stat_entry(conn, tmp)
            if a is None or b is None or not a.mtime or not b.mtime:
                return None
            return b.mtime - a.mtime
        return self._run(f"stat {lock}", ages)

    def _is_folder(self, rel: str) -> bool:
        return self._run(f"stat {rel}", lambda c: _is_dir(c, self._abs(rel)))

    def _release_lock(self, lock: str) -> None:
        import ftplib

        def rmd(conn: _Conn) -> None:
            try:
                conn.ftp.sendcmd("RMD " + self._abs(lock))
            except ftplib.error_perm as exc:
                if _is_dir(conn, self._abs(lock)):
                    log.warning("%s: cannot remove the lock %s: %s", self.address, lock, _reply(exc))
        self._run(f"RMD {lock}", rmd)

    def _probe(self) -> bool:
        """Whether MKD of an existing folder fails here (what create-if-absent relies on)."""
        import ftplib

        p = f"{PROBE_MARK}{uuid.uuid4().hex}"

        def probe(conn: _Conn) -> bool:
            path = self._abs(p)
            conn.ftp.sendcmd("MKD " + path)
            try:
                conn.ftp.sendcmd("MKD " + path)
                refused = False
            except ftplib.error_perm:
                refused = True
            try:
                conn.ftp.sendcmd("RMD " + path)
            except ftplib.error_perm:
                pass
            return refused

        ok = self._run("probing MKD", probe)
        if not ok:
            log.warning("%s: the server accepts MKD of an existing folder; creating an object only if absent "
                        "is not atomic there", self.address)
        return ok

    def _holds(self, name: str, body: PutBody) -> bool:
        """Whether ``name`` holds exactly the bytes of ``body`` (the outcome check of a
        create whose answer was lost)."""
        want = body.digest()
        if want is None:
            return False
        h = hashlib.sha256()
        try:
            with io.BufferedReader(_Download(self, name), BLOCK) as f:
                while block := f.read(BLOCK):
                    h.update(block)
        except RelayObjectMissing:
            return False
        return h.hexdigest() == want

    # -- deleting --------------------------------------------------------------------------
    def _delete_quietly(self, rel: str) -> None:
        try:
            self._run(f"DELE {rel}", lambda c: _dele(c, self._abs(rel)))
        except RelayError as exc:
            log.debug("%s: could not remove %s: %s", self.address, rel, exc)

    def delete(self, name: str) -> None:
        rel = self._rel(name)
        self._run(f"DELE {name}", lambda c: _dele(c, self._abs(rel)))
        self._prune(rel.rpartition("/")[0])

    def _prune(self, folder: str) -> None:
        """Remove ``folder`` and its parents while empty, stopping above the first level.
        RMD itself refuses a folder that holds anything."""
        import ftplib

        def rmd(conn: _Conn, f: str) -> bool:
            try:
                conn.ftp.sendcmd("RMD " + self._abs(f))
                return True
            except ftplib.error_perm:
                return False

        while "/" in folder:
            if not self._run(f"RMD {folder}", lambda c, f=folder: rmd(c, f)):
                return
            self._forget(folder)
            folder = folder.rpartition("/")[0]

    def abort_incomplete(self, prefix: str) -> int:
        flat = self.layout == FLAT
        folder = "" if flat else prefix.rpartition("/")[0]
        if folder:
            check_name(folder)
        removed = 0
        for rel, e in list(self._walk(folder, "" if flat else prefix, hidden=True, flat=flat)):
            d, _, base = rel.rpartition("/")
            for mark in (TMP_MARK, OLD_MARK, LOCK_MARK):
                if base.startswith(mark):
                    break
            else:
                continue
            target = (d + "/" if d else "") + (base[len(mark):].rsplit(".", 1)[0] if mark != LOCK_MARK
                                                else base[len(mark):])
            name = layouts.decode(target) if flat else target
            if name is None or not name.startswith(prefix):
                continue
            if mark == OLD_MARK and self._stat_file(target) is None:
                # a crash between the two renames of a replace: put the old object back
                self._run(f"rename to {target}", lambda c, s=rel, t=target: self._rename(c, s, t))
                continue
            if mark == LOCK_MARK:
                self._release_lock(rel)
            else:
                self._delete_quietly(rel)
            removed += 1
        return removed


# -- ftplib plumbing ---------------------------------------------------------------------------
def _one_name(name: str) -> bool:
    """Whether a listed name is one entry of its folder (a hostile server's listing may
    give '..', 'a/b' or an absolute path, which would address things outside the relay)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name


def _code(exc) -> str:
    text = str(exc.args[0]) if getattr(exc, "args", None) else str(exc)
    return text[:3]


def _reply(exc) -> str:
    text = str(exc.args[0]) if getattr(exc, "args", None) else str(exc)
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return text if len(text) < 200 else text[:200] + "…"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the server closed the connection"
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "timeout":
        return "no answer in time (timeout)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "…"


def _features(ftp) -> set[str]:
    """The FEAT answer's feature names (upper case; 'MLST', 'SIZE', 'REST STREAM'…)."""
    import ftplib

    try:
        resp = ftp.sendcmd("FEAT")
    except ftplib.all_errors:
        return set()
    out = set()
    for line in resp.splitlines()[1:]:
        if line.startswith(" "):
            word = line.strip().split(" ")[0].upper()
            out.add(word)
            if word == "REST":
                out.add("REST " + line.strip().split(" ", 1)[-1].upper())
    return out


def _is_dir(conn: _Conn, path: str) -> bool:
    """Whether ``path`` is a folder on the server (MLST, else a CWD there and back)."""
    import ftplib

    if conn.mlst:
        try:
            resp = conn.ftp.sendcmd("MLST " + path)
        except ftplib.error_perm:
            return False
        return bool(re.search(r"(?i)\btype=(dir|cdir|pdir);", resp))
    try:
        here = conn.ftp.pwd()
        conn.ftp.cwd(path)
    except ftplib.error_perm:
        return False
    conn.ftp.cwd(here)
    return True


def _mdtm(conn: _Conn, path: str) -> float:
    import ftplib

    try:
        resp = conn.ftp.sendcmd("MDTM " + path)
    except ftplib.error_perm:
        return 0.0
    return _mlsd_time(resp[4:].strip()) if resp[:3] == "213" else 0.0


def _dele(conn: _Conn, path: str) -> None:
    import ftplib

    try:
        conn.ftp.sendcmd("DELE " + path)
    except ftplib.error_perm as exc:
        if _code(exc) == "550" and conn.mlst:
            try:
                conn.ftp.sendcmd("MLST " + path)
            except ftplib.error_perm:
                return  # absent: fine
            raise
        if _code(exc) == "550":
            try:
                conn.ftp.size(path)
            except ftplib.error_perm:
                return
        raise


def _finish(data) -> None:
    """End a data connection cleanly (a TLS close_notify first, as servers expect)."""
    import ssl

    if isinstance(data, ssl.SSLSocket):
        try:
            data = data.unwrap()
        except (OSError, ValueError):
            pass
    data.close()


def _close_quietly(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass


_CLASSES: dict[str, type] = {}


def _explicit_class():
    """ftplib.FTP_TLS whose data connections reuse the control connection's TLS session
    (vsftpd refuses data connections without it, ``require_ssl_reuse``)."""
    if "explicit" not in _CLASSES:
        import ftplib

        class _FTPS(ftplib.FTP_TLS):
            def ntransfercmd(self, cmd, rest=None):
                conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
                if self._prot_p:
                    session = getattr(self.sock, "session", None)
                    try:
                        conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
                    except BaseException:
                        conn.close()
                        raise
                return conn, size

        _CLASSES["explicit"] = _FTPS
    return _CLASSES["explicit"]


def _implicit_class():
    """FTPS that speaks TLS from the first byte (port 990)."""
    if "implicit" not in _CLASSES:
        import socket

        base = _explicit_class()

        class _ImplicitFTPS(base):
            def connect(self, host="", port=0, timeout=-999, source_address=None):
                if host:
                    self.host = host
                if port > 0:
                    self.port = port
                if timeout != -999:
                    self.timeout = timeout
                sock = socket.create_connection((self.host, self.port), self.timeout)
                try:
                    self.sock = self.context.wrap_socket(sock, server_hostname=self.host)
                except BaseException:
                    sock.close()
                    raise
                self.af = self.sock.family
                self.file = self.sock.makefile("r", encoding=self.encoding)
                self.welcome = self.getresp()
                return self.welcome

        _CLASSES["implicit"] = _ImplicitFTPS
    return _CLASSES["implicit"]


class _Download(io.RawIOBase):
    """The bytes of one object, read from a RETR data connection as they arrive; a broken
    transfer is resumed with REST on a new connection, after checking that the object has
    not changed."""

    def __init__(self, relay: FTP, name: str):
        self.relay, self.name = relay, name
        self.offset = 0
        self.resumes = 0
        self.conn: _Conn | None = None
        self.data = None
        self.entry: _Entry | None = None
        self._open(first=True)

    def readable(self) -> bool:
        return True

    def _open(self, first: bool) -> None:
        import ftplib

        relay, name = self.relay, self.name

        def start(conn: _Conn):
            e = relay._stat_entry(conn, name)
            if e is None or e.kind != "file":
                return None
            if not first and self.entry is not None and (e.size, e.mtime, e.unique) != \
                    (self.entry.size, self.entry.mtime, self.entry.unique):
                raise RelayError(f"relay object {name} changed while being read")
            if not first and self.offset and not conn.rest:
                raise RelayError(f"reading relay object {name} broke at byte {self.offset} and the server "
                                 "cannot resume (no REST)")
            try:
                data = conn.transfer("RETR " + relay._abs(name), self.offset or None)
            except ftplib.error_perm as exc:
                if _code(exc) == "550":
                    return None
                raise
            return e, data

        # the connection stays with this download until it ends
        got, conn = relay._run(f"RETR {name}", start, keep=True)
        if got is None:
            relay._give_back(conn)
            raise RelayObjectMissing(f"relay object {name} is missing" +
                                     ("" if first else " (deleted while being read)"))
        self.entry, self.data = got
        self.conn = conn

    def readinto(self, b) -> int:
        if self.data is None:
            return 0
        while True:
            try:
                n = self.data.recv_into(b)
            except OSError as exc:
                self._resume(_describe(exc))
                continue
            if n == 0:
                if self.offset < self.entry.size:
                    self._resume("the data connection closed early")
                    continue
                self._done()
                return 0
            self.offset += n
            return n

    def _done(self) -> None:
        import ftplib

        data, conn = self.data, self.conn
        self.data = None
        try:
            _finish(data)
            conn.ftp.voidresp()
        except (ftplib.Error, OSError, EOFError) as exc:
            log.debug("%s: end of RETR %s: %s", self.relay.address, self.name, exc)
            conn.close()
            self.conn = None
            return
        self.conn = None
        self.relay._give_back(conn)

    def _resume(self, reason: str) -> None:
        _close_quietly(self.data)
        self.data = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        policy = self.relay.retry
        if self.resumes >= policy.max_retries:
            raise TransientRelayError(f"reading relay object {self.name} from {self.relay.address} failed: {reason}")
        delay = policy.delay(self.resumes)
        self.resumes += 1
        log.warning("%s: reading %s broke at byte %d (%s); resuming in %.1f s", self.relay.address, self.name,
                    self.offset, reason, delay)
        policy.sleep(delay)
        self._open(first=False)

    def close(self) -> None:
        if not self.closed:
            if self.data is not None:  # closed before the end: the control connection is mid-transfer
                _close_quietly(self.data)
                self.data = None
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
        super().close()
