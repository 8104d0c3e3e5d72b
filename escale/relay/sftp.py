"""A folder on an SSH server used as the relay (``sftp://[user@]host[:port]/path``).

Which library, and why
----------------------
**paramiko** is the client. escale's relay contract is blocking (``put`` reads a file
object, ``get`` returns one, every call runs on the cycle's thread), and paramiko speaks
that directly: blocking calls, file objects with pipelined writes and windowed
``readv`` reads, an ``ssh-agent`` client, OpenSSH key files (ed25519, ECDSA, RSA,
encrypted or not), a ``~/.ssh/config`` parser (:class:`paramiko.SSHConfig`) and a
``known_hosts`` reader that understands hashed entries. asyncssh would need an event
loop in a thread and a bridge for every call and every stream; it is used by the tests
instead, for the SFTP *server* (tests/servers_sftp.py), which paramiko does not ship.
paramiko is imported only when an sftp relay is opened.

Addresses
---------
``sftp://host/abs/path`` is the absolute folder ``/abs/path`` on the server (as curl and
file managers read such URLs); ``sftp://host/~/path`` is ``path`` in the login folder;
``sftp://host`` is the login folder itself. ``host`` may be a ``Host`` alias of the SSH
configuration (``~/.ssh/config`` or ``ssh config``): its ``HostName``, ``Port``,
``User``, ``IdentityFile``, ``UserKnownHostsFile`` and ``ProxyCommand`` apply, as with
``ssh alias``. A user or port written in the address wins over the configuration.

Authentication and host keys
----------------------------
Keys from ``ssh-agent`` (``SSH_AUTH_SOCK``), the ``key file`` option or the
configuration's ``IdentityFile`` (else ``~/.ssh/id_*``) are tried, then ``password``
when one is given. The server's host key must already be in a ``known_hosts`` file
(``known hosts`` option, else the configuration's ``UserKnownHostsFile``, else
``~/.ssh/known_hosts``, plus ``/etc/ssh/ssh_known_hosts``): an unknown key is refused
with its fingerprint and the command that accepts it (``ssh-keyscan``, or ``ssh`` once),
a changed key is refused as a possible man-in-the-middle with the command that removes
the old one. Nothing is ever added to a known_hosts file by escale, and
``StrictHostKeyChecking no`` in the SSH configuration is not honoured.

How the relay contract is met
-----------------------------
- **Atomic puts.** Every put writes a temporary ``<folder>/.escale-put-<name>.<random>``
  (opened with ``CREATE|EXCL``: never someone else's file) and renames it over the final
  name with ``posix-rename@openssh.com`` (an atomic ``rename(2)`` on the server). A
  server without that extension is refused at :meth:`open` (plain SFTP rename cannot
  replace), found by renaming a name that does not exist (one request). Listings hide temporaries; those older than 6 hours are removed, and the
  writer's :meth:`abort_incomplete` removes its own after a crash.
- **Create-if-absent** links the complete temporary to the final name with
  ``hardlink@openssh.com`` (``link(2)``, which fails atomically when the name is taken:
  OpenSSH, asyncssh). Where the server lacks it (or its file system has no hard
  links), the final name is claimed with an ``O_EXCL`` open, then the temporary is
  renamed over the claim: one writer wins, but a reader may see an empty object for a
  moment; :attr:`capabilities` then says ``atomic_create=False`` (logged once).
- **Layout.** A relay this backend creates is flat (every object one file of the relay
  folder, its ``/`` written ``%2F``); a relay made before (nested: a folder per ``/``)
  stays so. One ``lstat`` of ``m`` at :meth:`open` says which (a guard file in a flat
  relay, a folder in a nested one); :mod:`escale.relay.layout` has the rules.
- **Listings** read the relay folder (flat) or every folder under the prefix (nested)
  with ``readdir``, one round trip per batch; an error reading a folder raises instead
  of giving a shorter list; a symbolic link inside the relay is an error naming it
  (escale writes none). A flat relay's listing is reused while a ``stat`` of the relay
  folder gives the same (mtime, size): one request per idle cycle (see
  :meth:`SFTP._root_entries` for when it is not trusted).
- **Folders** (nested relays) are created as needed and removed after a delete only when empty
  (``rmdir`` refuses a folder that holds anything), below the first level.
- **Versions**: SFTP version 3 (what OpenSSH speaks) gives modification times in whole
  seconds; ``ObjectInfo.version`` is size and mtime. escale's state cache waits until an
  object is a few seconds old before trusting it by (size, mtime), so a same-size
  rewrite within one second is still read.
- **Errors and retries.** A connection that cannot be made, drops, times out or is reset
  is retried ``max retries`` times (default 5) by the shared policy
  (:mod:`escale.relay.retry`: exponential back-off with jitter), on a new connection; an upload is sent again from its start when its source can be read again
  (a file, or a body of at most 8 MiB, kept in memory), otherwise the put fails and the
  next cycle sends it. A download that breaks resumes at its offset, provided the
  object's size and mtime did not change. Refused credentials are an
  AuthenticationError; "no such file" is RelayObjectMissing; anything else the server
  refuses is a PermanentRelayError naming the object.

Length: one backend's whole contract over one protocol (SSH connection and host
keys, listings, atomic replace, create-if-absent, resume, retries); splitting it would
scatter one protocol across files.
"""
from __future__ import annotations

import errno
import getpass
import hashlib
import io
import logging
import os
import posixpath
import socket
import stat as statmod
import threading
import time
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from ..errors import (AuthenticationError, ConfigError, ObjectExists, PermanentRelayError, RelayError,
                      RelayObjectMissing, SourceError, TransientRelayError)
from .address import redact, split_network_address
from .base import (PROBE_MARK, STALE_TMP_SECONDS, TMP_MARK, Capabilities, ObjectInfo, Relay,
                   RelayOption, Usage, check_name)
from . import retry as retries
from .body import PutBody
from . import layout as layouts
from .layout import FLAT, GUARDS, LAYOUT
from .options import KEYFILE, MAX_RETRIES, parse_path_text
from .split import MAX_OBJECT_SIZE

log = logging.getLogger(__name__)

BLOCK = 1 << 20
#: bytes asked for at once when reading (paramiko splits them into 32 KiB requests in flight)
READ_WINDOW = 4 << 20
DEFAULT_TIMEOUT = 30.0
#: no escale object is deeper than b/<cid>/<seq>/<n>
MAX_RELAY_DEPTH = 16
#: a flat relay's listing is reused while the relay folder's (mtime, size) is unchanged, once
#: that mtime was this many seconds old when the listing began (SFTP gives whole seconds: a
#: change within the listing's own second would not change it)
LISTING_SETTLE_SECONDS = 2.0
#: ... and never for longer than this (a server clock behind ours, a file system that does not
#: update a folder's mtime: a change is then seen this late at worst)
LISTING_MAX_AGE = 60.0


def _seconds(text: str) -> float:
    v = float(text.strip())
    if not 0 < v <= 86400:  # also NaN and inf, which failed later in the socket layer
        raise ValueError("a timeout is a number of seconds above 0 and at most 86400")
    return v


@dataclass
class _RootListing:
    """A flat relay's listing and the relay folder's (mtime, size) seen just before it."""

    mtime: object
    size: object
    entries: list
    taken: float  # time.monotonic()

    def same(self, st) -> bool:
        return st.st_mtime is not None and (st.st_mtime, st.st_size) == (self.mtime, self.size)


class _ConnectionLost(Exception):
    """The SSH connection broke during a call (internal: triggers a reconnect and a retry)."""


class SFTP(Relay):
    """A folder on an SSH server, through one SSH connection (one SFTP channel per thread)."""

    schemes = ("sftp",)
    options = (
        KEYFILE,  # shared with the TLS backends' client key: same spellings
        RelayOption("key_passphrase", ("key passphrase",), None, secret=True,
                    doc="sftp: the passphrase of an encrypted 'key file' (else 'password' is tried)"),
        RelayOption("known_hosts", ("known hosts", "known hosts file"), parse_path_text,
                    doc="sftp: the known_hosts file holding the server's host key (default ~/.ssh/known_hosts "
                        "and /etc/ssh/ssh_known_hosts)", path=True),
        RelayOption("ssh_config", ("ssh config", "ssh config file"), parse_path_text,
                    doc="sftp: the SSH configuration read for host aliases (default ~/.ssh/config)", path=True),
        MAX_RETRIES,
        MAX_OBJECT_SIZE,
        LAYOUT,
    )

    def __init__(self, address: str, user: str | None = None, password: str | None = None,
                 port: str | int | None = None, keyfile: str | None = None, key_passphrase: str | None = None,
                 known_hosts: str | None = None, ssh_config: str | None = None,
                 max_retries: str | int | None = None, timeout: str | float | None = None,
                 layout: str | None = None, **_ignored):
        try:
            net = split_network_address(address)
        except ConfigError as exc:
            raise ConfigError(f"{exc.detail}; an SFTP address is sftp://[user@]host[:port]/path",
                              option="relay address") from None
        if net.scheme not in self.schemes:
            raise ConfigError(f"'{redact(address.strip())}' is not an SFTP address (sftp://host/path)",
                              option="relay address")
        self.retry = retries.RetryPolicy.from_option(max_retries)  # ConfigError naming 'max retries'
        try:
            self._port = net.port or (int(port) if port not in (None, "") else None)
        except (TypeError, ValueError):
            raise ConfigError(f"bad port {port!r}", option="port") from None
        try:
            self.timeout = DEFAULT_TIMEOUT if timeout in (None, "") else _seconds(str(timeout))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad timeout: {exc}", option="timeout") from None
        self.alias = net.host
        self._user = user or net.user
        self._password = password if password is not None else net.password
        self._keyfile = os.path.expanduser(str(keyfile)) if keyfile else None
        if self._keyfile and not os.path.isfile(self._keyfile):
            raise ConfigError(f"SSH key file {self._keyfile} does not exist", option="key file")
        self._key_passphrase = key_passphrase
        self._known_hosts = os.path.expanduser(str(known_hosts)) if known_hosts else None
        self._ssh_config = os.path.expanduser(str(ssh_config)) if ssh_config else None
        for path, option in ((self._known_hosts, "known hosts"), (self._ssh_config, "ssh config")):
            if path and not os.path.isfile(path):
                raise ConfigError(f"{path} does not exist", option=option)
        raw = net.path
        path = "/".join(p for p in raw.split("/") if p)
        from urllib.parse import unquote

        path = unquote(path)
        if path == "~" or path.startswith("~/"):
            self.root = path[2:]  # relative to the login folder
        else:
            self.root = "/" + path if path else ""
        if any(p in (".", "..") for p in self.root.split("/") if p):
            raise ConfigError(f"relay address '{redact(address)}': '.' and '..' are not allowed in the path",
                              option="relay address")
        shown = f"sftp://{net.netloc(self._port)}" + ("/" + net.path.strip("/") if net.path.strip("/") else "")
        super().__init__(shown)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._client = None  # paramiko.SSHClient
        self._generation = 0
        self._dirs: set[str] = set()
        self._hardlink: bool | None = None  # hardlink@openssh.com works here (None: not tried yet)
        self._claimed = False
        #: the layout a new relay gets; an existing relay's own is found from its root listing
        self.new_layout = layouts.new_layout(layout)
        self._layout: str | None = None
        #: the relay folder's last listing (flat layout), and what may still be reused of it
        self._root: _RootListing | None = None
        self._writes = 0  # puts, deletes and removals made: a listing taken across one is not kept

    # -- connection --------------------------------------------------------------------
    def _settings(self) -> dict:
        """Host, port, user, keys and known_hosts files after the SSH configuration."""
        import paramiko

        cfg_path = self._ssh_config or os.path.expanduser("~/.ssh/config")
        found: dict = {}
        if os.path.isfile(cfg_path):
            try:
                found = paramiko.SSHConfig.from_path(cfg_path).lookup(self.alias)
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise ConfigError(f"cannot read the SSH configuration {cfg_path}: {exc}",
                                  option="ssh config") from exc
        if "proxyjump" in found:
            raise ConfigError(f"{cfg_path}: ProxyJump for {self.alias} is not supported by escale; write "
                              "'ProxyCommand ssh -W %h:%p <jump host>' instead", option="ssh config")
        host = found.get("hostname", self.alias)
        port = self._port or int(found.get("port", 22))
        user = self._user or found.get("user") or getpass.getuser()
        keys = [self._keyfile] if self._keyfile else [
            os.path.expanduser(k) for k in found.get("identityfile", []) if os.path.isfile(os.path.expanduser(k))]
        if self._known_hosts:
            known = [self._known_hosts]
        elif "userknownhostsfile" in found:
            known = [os.path.expanduser(k) for k in found["userknownhostsfile"].split()]
        else:
            known = [os.path.expanduser("~/.ssh/known_hosts")]
        known.append("/etc/ssh/ssh_known_hosts")
        return {"host": host, "port": port, "user": user, "keys": keys, "known": known,
                "proxy": found.get("proxycommand"), "agent": found.get("identitiesonly", "no") != "yes"
                or not keys, "config": cfg_path}

    def _connect(self):
        """A new SSHClient, the host key checked and the user authenticated (raises RelayError)."""
        import paramiko

        for name in ("paramiko", "paramiko.transport"):  # its INFO lines say "Connected" on every connect
            lg = logging.getLogger(name)
            if lg.level == logging.NOTSET:
                lg.setLevel(logging.WARNING)
        s = self._settings()
        host, port = s["host"], s["port"]
        client = paramiko.SSHClient()
        loaded = []
        for f in s["known"]:
            if os.path.isfile(f):
                try:
                    client.load_system_host_keys(f)
                    loaded.append(f)
                except (OSError, paramiko.SSHException) as exc:
                    raise RelayError(f"cannot read known_hosts file {f}: {exc}") from exc
        client.set_missing_host_key_policy(_RefuseUnknown(self, host, port, s["known"][0], loaded))
        sock = paramiko.ProxyCommand(s["proxy"]) if s["proxy"] else None
        try:
            client.connect(host, port=port, username=s["user"], password=self._password,
                           key_filename=s["keys"] or None, passphrase=self._key_passphrase,
                           allow_agent=s["agent"], look_for_keys=not s["keys"], timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout, sock=sock)
        except _HostKeyRefused as exc:
            client.close()
            raise AuthenticationError(str(exc)) from None
        except paramiko.BadHostKeyException as exc:
            client.close()
            name = _known_name(host, port)
            raise AuthenticationError(
                f"{self.address}: the host key of {name} CHANGED ({_fingerprint(exc.key)}, known as "
                f"{_fingerprint(exc.expected_key)}): someone may be intercepting the connection, or the "
                f"server was reinstalled. escale refuses to connect. If you know the server's key changed, "
                f"remove the old one with \"ssh-keygen -R '{name}'"
                f"{'' if s['known'][0] == os.path.expanduser('~/.ssh/known_hosts') else ' -f ' + s['known'][0]}\""
                f" and accept the new one (see the message for an unknown key)") from None
        except (paramiko.AuthenticationException, paramiko.SSHException) as exc:
            client.close()
            if not isinstance(exc, paramiko.AuthenticationException) and \
                    "no authentication methods" not in str(exc).lower():
                raise TransientRelayError(f"cannot connect to {self.address} ({host} port {port}): "
                                          f"{_describe(exc)}") from exc
            tried = (["ssh-agent"] if s["agent"] and os.environ.get("SSH_AUTH_SOCK") else []) + \
                (s["keys"] or ["~/.ssh/id_*"]) + (["a password"] if self._password else [])
            raise AuthenticationError(f"authentication failed for {self.address} as {s['user']} "
                                      f"(tried {', '.join(tried) or 'nothing: no agent, key or password'}): "
                                      f"{exc}") from None
        except paramiko.PasswordRequiredException as exc:  # pragma: no cover - a subclass of the above
            client.close()
            raise AuthenticationError(f"{self.address}: the key file is encrypted; set 'key passphrase'") from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            client.close()
            if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.EACCES) and exc.filename:
                raise RelayError(f"{self.address}: cannot read {exc.filename}: {exc.strerror}") from exc
            raise TransientRelayError(f"cannot connect to {self.address} ({host} port {port}): "
                                      f"{_describe(exc)}") from exc
        transport = client.get_transport()
        transport.set_keepalive(30)
        return client

    def _sftp(self):
        """This thread's SFTP channel on the current connection (connecting if needed)."""
        with self._lock:
            if self._client is None or not self._client.get_transport() \
                    or not self._client.get_transport().is_active():
                self._drop()
                self._client = self._connect()
                self._generation += 1
            gen, client = self._generation, self._client
        cur = getattr(self._local, "sftp", None)
        if cur is not None and self._local.generation == gen:
            return cur
        try:
            sftp = client.open_sftp()
        except Exception as exc:  # noqa: BLE001 - paramiko raises several kinds here
            raise TransientRelayError(f"{self.address}: cannot open an SFTP session: {_describe(exc)}") from exc
        sftp.get_channel().settimeout(self.timeout)
        self._local.sftp, self._local.generation = sftp, gen
        return sftp

    def _drop(self, gen: int | None = None) -> None:
        """Close the connection (of generation ``gen``, if it is still the current one)."""
        with self._lock:
            if self._client is not None and (gen is None or gen == self._generation):
                try:
                    self._client.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
                self._client = None
                self._dirs.clear()

    def open(self) -> None:
        def check(sftp) -> str | None:
            root = self._abs("")
            try:  # one request says the folder exists and, mostly, its layout (escale/relay/layout.py)
                guard = sftp.lstat(self._abs("m"))
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
            else:
                self._posix_rename_works(sftp)
                return layouts.FLAT if statmod.S_ISREG(guard.st_mode or 0) else \
                    layouts.NESTED if statmod.S_ISDIR(guard.st_mode or 0) else None
            try:
                st = sftp.stat(root)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                parent = posixpath.dirname(root.rstrip("/")) or "."
                try:
                    if not statmod.S_ISDIR(sftp.stat(parent).st_mode):
                        raise FileNotFoundError(errno.ENOENT, "not a folder")
                except FileNotFoundError:
                    raise RelayError(f"cannot use relay folder {self.address}: its parent folder "
                                     f"{parent} does not exist on the server; escale creates a relay folder "
                                     "only inside an existing folder") from None
                sftp.mkdir(root)
                st = sftp.stat(root)
            if not statmod.S_ISDIR(st.st_mode):
                raise RelayError(f"relay folder {self.address} is not a folder on the server")
            self._posix_rename_works(sftp)
            return None

        self._layout = self._call("open", check) or self._find_layout()

    def _posix_rename_works(self, sftp) -> None:
        """Refuse a server without posix-rename@openssh.com: plain SFTP rename cannot replace.
        One request: renaming a name that does not exist is "no such file" where the
        extension is served, "unsupported" where it is not."""
        p = self._abs(f"{PROBE_MARK}{uuid.uuid4().hex}")
        try:
            sftp.posix_rename(p, p + ".2")
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES):
                return
            raise PermanentRelayError(f"{self.address}: the server does not support posix-rename@openssh.com "
                                      f"({exc}); escale needs it to replace objects atomically "
                                      "(OpenSSH has it since 4.9)") from exc
        for q in (p, p + ".2"):  # it did rename something: a probe of ours, never another's name
            try:
                sftp.remove(q)
            except OSError:
                pass

    def _find_layout(self) -> str:
        """The layout of a relay without ``m`` (new, or holding the header only), from its root
        listing (escale/relay/layout.py); a new relay takes ``layout`` (flat by default)
        and, flat, gets its guard files."""
        entries = self._root_entries(fresh=True)
        folders = {a.filename for a in entries if statmod.S_ISDIR(a.st_mode or 0)}
        files = {a.filename for a in entries if statmod.S_ISREG(a.st_mode or 0)
                 and not a.filename.startswith((TMP_MARK, PROBE_MARK))}
        found = layouts.detect(self.address, folders, files)
        if found is None:
            found = self.new_layout
            if found == FLAT:
                def guard(sftp, g: str) -> None:
                    sftp.open(self._abs(g), "wb").close()

                for g in sorted(GUARDS - files):  # empty files where a nested client would make folders
                    self._call(f"writing {g}", lambda sftp, g=g: guard(sftp, g))
                self._wrote()
                log.info("%s: a new relay: flat layout (one listing per cycle)", self.address)
        return found

    def _rel(self, name: str) -> str:
        """The path of object ``name`` under the relay folder, in this relay's layout."""
        return layouts.object_path(self.address, self._layout, name)

    @property
    def layout(self) -> str | None:
        return self._layout

    def _wrote(self) -> None:
        """Something was written or removed: the relay folder's listing is not reused."""
        with self._lock:
            self._writes += 1
            self._root = None

    def _root_entries(self, fresh: bool = False) -> list:
        """The relay folder's entries (attributes). A flat relay's listing is reused while
        the folder's (mtime, size) is unchanged: one ``stat`` instead of ``opendir``,
        ``readdir``… ``close`` (every put, rename and delete in it changes its mtime). It
        is reused only when it began at least LISTING_SETTLE_SECONDS after that mtime (by
        our clock: SFTP times are whole seconds), and for LISTING_MAX_AGE at most. A server
        clock behind ours can hide a change for that long at worst; one ahead of ours only
        makes every call list."""
        with self._lock:
            writes, kept = self._writes, self._root
        root = self._abs("")
        asked = time.time()
        st = self._call("stat /", lambda sftp: sftp.stat(root))
        if not fresh and kept is not None and kept.same(st) and time.monotonic() - kept.taken < LISTING_MAX_AGE:
            return kept.entries

        def read(sftp):
            try:
                return sftp.listdir_attr(root)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise RelayError(f"relay folder {self.address} is missing") from None
                raise

        entries = self._call("listing /", read)
        settled = st.st_mtime is not None and asked - float(st.st_mtime) >= LISTING_SETTLE_SECONDS
        with self._lock:
            if settled and self._writes == writes:
                self._root = _RootListing(st.st_mtime, st.st_size, entries, time.monotonic())
        return entries

    def close(self) -> None:
        self._drop()
        self._local = threading.local()

    # -- calls and errors ----------------------------------------------------------------
    def _abs(self, name: str) -> str:
        if not name:
            return self.root or "."
        return f"{self.root}/{name}" if self.root else name

    @property
    def max_retries(self) -> int:
        return self.retry.max_retries

    def _call(self, what: str, fn, *, retry: bool = True):
        """``fn(sftp)``, on a new connection and again (the shared retry policy,
        :mod:`escale.relay.retry`) when the connection could not be made, dropped or timed out."""
        def once(_attempt: int):
            sftp = self._sftp()  # TransientRelayError when it cannot connect: the server may be back soon
            gen = self._local.generation
            try:
                return fn(sftp)
            except (RelayError, SourceError):
                raise
            except Exception as exc:  # noqa: BLE001 - sorted out below
                if not self._lost(exc, gen):
                    raise self._error(what, exc) from exc
                self._drop(gen)
                reason = f"the connection broke ({_describe(exc)})"
                raise retries.transient(f"{what} on {self.address} failed: {reason}", reason=reason) from exc

        policy = self.retry if retry else retries.RetryPolicy(max_retries=0)
        return retries.call(once, policy=policy, what=f"{what} on {self.address}")

    def _lost(self, exc: BaseException, gen: int) -> bool:
        """Whether ``exc`` is the connection failing (not the server refusing a request)."""
        import paramiko

        if isinstance(exc, (_ConnectionLost, EOFError, socket.timeout, TimeoutError, ConnectionError,
                            paramiko.SSHException)):
            return True
        with self._lock:
            client = self._client if gen == self._generation else None
        t = client.get_transport() if client is not None else None
        return t is None or not t.is_active()

    def _error(self, what: str, exc: BaseException) -> RelayError:
        if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
            return RelayObjectMissing(f"{what}: relay object is missing on {self.address}")
        if isinstance(exc, OSError) and exc.errno == errno.EACCES:
            return PermanentRelayError(f"{what} on {self.address}: permission denied by the server")
        text = str(exc.args[0]) if isinstance(exc, OSError) and exc.args and exc.strerror is None \
            else (getattr(exc, "strerror", None) or str(exc))
        return PermanentRelayError(f"{what} on {self.address} failed: {text or type(exc).__name__}")

    # -- listing -------------------------------------------------------------------------
    def _walk(self, folder: str, temporaries: bool = False) -> Iterator[tuple[str, object]]:
        """(path, attributes) of every file under ``folder`` (relative), recursively; in a
        flat relay, the relay folder's own files (its listing reused while unchanged)."""
        flat = self._layout == FLAT
        todo = [folder]
        while todo:
            rel = todo.pop()
            depth = rel.count("/") + 1 if rel else 0

            def read(sftp, rel=rel):
                try:
                    return sftp.listdir_attr(self._abs(rel))
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        return None  # not made yet, or pruned while we listed
                    raise

            entries = self._root_entries() if flat else self._call(f"listing {rel or '/'}", read)
            if entries is None:
                continue
            for a in entries:
                n = a.filename
                if n in (".", ".."):
                    continue
                if not n or "/" in n or "\\" in n or "\0" in n:  # a hostile server's '../x', '/etc/passwd'
                    log.warning("%s: folder %s lists %r, which is no name in a folder; ignored",
                                self.address, rel or "/", n)
                    continue
                full = f"{rel}/{n}" if rel else n
                mode = a.st_mode or 0
                if statmod.S_ISLNK(mode):
                    raise PermanentRelayError(f"relay folder {self.address}: {full} is a symbolic link; escale "
                                              "never follows links inside a relay (someone changed the relay "
                                              "folder)")
                if statmod.S_ISDIR(mode) and flat:
                    if n in GUARDS:
                        raise layouts.mixed(self.address, n)
                    continue
                if statmod.S_ISDIR(mode):
                    if depth >= MAX_RELAY_DEPTH:
                        raise PermanentRelayError(f"relay folder {self.address}: {full} is nested deeper than "
                                                  f"{MAX_RELAY_DEPTH} levels: not an escale object; remove it")
                    todo.append(full)
                elif statmod.S_ISREG(mode):
                    if not flat and not rel and (n in GUARDS or "%2F" in n):
                        raise layouts.mixed(self.address, n, nested=True)
                    hidden = n.startswith(TMP_MARK) or n.startswith(PROBE_MARK)
                    if hidden and not temporaries and a.st_mtime \
                            and time.time() - a.st_mtime > STALE_TMP_SECONDS:
                        self._remove_quietly(full)  # a killed writer's, found by any listing
                        continue
                    if hidden == temporaries or (temporaries and n.startswith(PROBE_MARK)):
                        yield full, a

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if self._layout == FLAT:
            found = []
            for rel, a in self._walk(""):
                name = layouts.decode(rel)
                if name is not None and name.startswith(prefix):
                    found.append(ObjectInfo(name, a.st_size or 0, float(a.st_mtime or 0)))
            found.sort(key=lambda i: i.name)
            yield from found
            return
        folder = prefix.rpartition("/")[0]
        if folder:
            check_name(folder)
        found = [ObjectInfo(name, a.st_size or 0, float(a.st_mtime or 0))
                 for name, a in self._walk(folder) if name.startswith(prefix)]
        found.sort(key=lambda i: i.name)
        yield from found

    def stat(self, name: str) -> ObjectInfo | None:
        path = self._abs(self._rel(name))

        def one(sftp):
            try:
                return sftp.lstat(path)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return None
                raise

        a = self._call(f"stat {name}", one)
        if a is None or not statmod.S_ISREG(a.st_mode or 0):
            if a is not None and statmod.S_ISLNK(a.st_mode or 0):
                raise PermanentRelayError(f"relay object {name} on {self.address} is a symbolic link")
            return None
        return ObjectInfo(name, a.st_size or 0, float(a.st_mtime or 0))

    # -- reading -------------------------------------------------------------------------
    def get(self, name: str) -> BinaryIO:
        path = self._abs(self._rel(name))

        def opening(sftp):
            f = sftp.open(path, "rb")
            a = f.stat()
            return f, a

        try:
            f, a = self._call(f"reading {name}", opening)
        except RelayObjectMissing:
            raise RelayObjectMissing(f"relay object {name} is missing") from None
        return io.BufferedReader(_Download(self, name, path, f, a), BLOCK)

    # -- writing -------------------------------------------------------------------------
    def _mkdirs(self, folder: str) -> None:
        """Make ``folder`` (relative) and its missing parents, remembering what exists."""
        if not folder or folder in self._dirs:
            return

        def make(sftp):
            parts = folder.split("/")
            for i in range(1, len(parts) + 1):
                rel = "/".join(parts[:i])
                if rel in self._dirs:
                    continue
                p = self._abs(rel)
                try:
                    sftp.mkdir(p)
                except OSError:
                    try:  # already there (made by another client)?
                        st = sftp.lstat(p)
                    except OSError:
                        raise PermanentRelayError(f"cannot create folder {rel} on {self.address}") from None
                    if not statmod.S_ISDIR(st.st_mode or 0):
                        raise PermanentRelayError(f"{rel} on {self.address} is not a folder") from None
                self._dirs.add(rel)

        self._call(f"creating folder {folder}", make)

    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False, size: int | None = None) -> int:
        rel = self._rel(name)
        folder, _, base = rel.rpartition("/")
        body = PutBody(stream, size, name)

        def attempt(_n: int) -> int:
            tmp = (folder + "/" if folder else "") + f"{TMP_MARK}{base}.{uuid.uuid4().hex}"
            try:
                self._mkdirs(folder)
                n, digest = self._call(f"writing {name}", lambda sftp: self._upload(sftp, tmp, body, folder),
                                       retry=False)
                if create_only:
                    self._create(tmp, rel, digest)
                else:
                    self._replace(tmp, rel)
                return n
            except BaseException:
                self._remove_quietly(tmp)
                raise
            finally:
                self._wrote()

        # sent again from its start after a dropped connection, when the data can be read again
        return retries.call(attempt, policy=self.retry, what=f"writing {name} on {self.address}",
                            replayable=lambda: body.replayable)

    def _upload(self, sftp, tmp: str, body: PutBody, folder: str) -> tuple[int, str]:
        path = self._abs(tmp)
        try:
            f = sftp.open(path, "wbx")
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            self._dirs.discard(folder)  # the folder went away (pruned by another client): make it again
            self._mkdirs(folder)
            f = sftp.open(path, "wbx")
        h = hashlib.sha256()
        n = 0
        with f:
            f.set_pipelined(True)
            for block in body.blocks():
                f.write(block)
                h.update(block)
                n += len(block)
        return n, h.hexdigest()

    def _replace(self, tmp: str, name: str) -> None:
        src, dst = self._abs(tmp), self._abs(name)
        tries = [0]

        def rename(sftp):
            tries[0] += 1
            try:
                sftp.posix_rename(src, dst)
            except OSError:
                # a rename whose answer was lost: the temporary (ours alone) is gone and the
                # object is there, so it was done
                if tries[0] > 1 and _missing(sftp, src) and not _missing(sftp, dst):
                    return
                raise

        self._call(f"renaming {tmp} to {name}", rename)

    def _create(self, tmp: str, name: str, digest: str) -> None:
        """Give the complete ``tmp`` the name ``name`` only if that name is free."""
        src, dst = self._abs(tmp), self._abs(name)
        tries = [0]

        def link(sftp) -> bool:
            tries[0] += 1
            try:
                sftp._request(_cmd_extended(), "hardlink@openssh.com", src, dst)
                return True
            except OSError as exc:
                if _missing(sftp, dst):
                    log.info("%s: hardlink@openssh.com does not work here (%s); claiming names first",
                             self.address, exc)
                    return False
                if tries[0] > 1 and self._holds(sftp, dst, digest):
                    return True  # our own link, whose answer was lost
                raise ObjectExists(f"relay object {name} already exists") from None

        if self._hardlink is not False:
            if self._call(f"linking {tmp} to {name}", link):
                self._hardlink = True
                self._remove_quietly(tmp)
                return
            self._hardlink = False
        if not self._claimed:
            self._claimed = True
            log.warning("%s: the server cannot make hard links; creating an object only if absent claims its "
                        "name first (a reader may see it empty for a moment)", self.address)

        def claim(sftp) -> None:
            tries[0] += 1
            try:
                sftp.open(dst, "wbx").close()
            except OSError:
                if _missing(sftp, dst):
                    raise
                raise ObjectExists(f"relay object {name} already exists") from None

        tries[0] = 0
        self._call(f"claiming {name}", claim)
        self._replace(tmp, name)

    def _holds(self, sftp, path: str, digest: str) -> bool:
        h = hashlib.sha256()
        try:
            with sftp.open(path, "rb") as f:
                while block := f.read(BLOCK):
                    h.update(block)
        except OSError:
            return False
        return h.hexdigest() == digest

    def _remove_quietly(self, rel: str) -> None:
        self._wrote()
        try:
            self._call(f"removing {rel}", lambda sftp: sftp.remove(self._abs(rel)), retry=False)
        except (RelayError, OSError) as exc:
            log.debug("%s: could not remove %s: %s", self.address, rel, exc)

    # -- deleting ------------------------------------------------------------------------
    def delete(self, name: str) -> None:
        rel = self._rel(name)
        path = self._abs(rel)

        def remove(sftp):
            try:
                st = sftp.lstat(path)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return
                raise
            if statmod.S_ISDIR(st.st_mode or 0):
                raise PermanentRelayError(f"relay object {name} on {self.address} is a folder")
            try:
                sftp.remove(path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise

        try:
            self._call(f"deleting {name}", remove)
        finally:
            self._wrote()
        self._prune(rel.rpartition("/")[0])

    def _prune(self, folder: str) -> None:
        """Remove ``folder`` and its parents while empty, below the first level (``rmdir``
        refuses a folder that holds anything, so nothing is ever removed with it)."""
        while "/" in folder:
            def rmdir(sftp, folder=folder) -> bool:
                try:
                    sftp.rmdir(self._abs(folder))
                    return True
                except OSError:
                    return False  # not empty (or gone): stop

            self._dirs.discard(folder)
            if not self._call(f"removing folder {folder}", rmdir):
                return
            folder = folder.rpartition("/")[0]

    def abort_incomplete(self, prefix: str) -> int:
        flat = self._layout == FLAT
        folder = "" if flat else prefix.rpartition("/")[0]
        if folder:
            check_name(folder)
        removed = 0
        for rel, _a in list(self._walk(folder, temporaries=True)):
            d, _, base = rel.rpartition("/")
            if not base.startswith(TMP_MARK):
                continue
            target = (d + "/" if d else "") + base[len(TMP_MARK):].rsplit(".", 1)[0]
            name = layouts.decode(target) if flat else target
            if name is not None and name.startswith(prefix):
                self._remove_quietly(rel)
                removed += 1
        return removed

    def usage(self) -> Usage:
        return Usage()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(atomic_create=self._hardlink is not False)


# ---------------------------------------------------------------------------------------
def _cmd_extended() -> int:
    from paramiko.sftp import CMD_EXTENDED

    return CMD_EXTENDED


def _missing(sftp, path: str) -> bool:
    try:
        sftp.lstat(path)
        return False
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return True
        raise


def _known_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _fingerprint(key) -> str:
    import base64

    if key is None:
        return "?"
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def _describe(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)  # paramiko's NoValidConnectionsError: one error per address
    if isinstance(errors, dict) and errors:
        return _describe(next(iter(errors.values())))
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no answer in time (timeout)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "…"


class _HostKeyRefused(Exception):
    pass


class _RefuseUnknown:
    """paramiko's missing-host-key policy: refuse, saying how to accept the key after checking it."""

    def __init__(self, relay: SFTP, host: str, port: int, known: str, loaded: list[str]):
        self.relay, self.host, self.port, self.known, self.loaded = relay, host, port, known, loaded

    def missing_host_key(self, client, hostname, key) -> None:
        name = _known_name(self.host, self.port)
        default = self.known == os.path.expanduser("~/.ssh/known_hosts")
        where = "~/.ssh/known_hosts" if default else self.known
        port = "" if self.port == 22 else f"-p {self.port} "
        raise _HostKeyRefused(
            f"{self.relay.address}: the host key of {name} is unknown ({_fingerprint(key)}; not in "
            f"{', '.join(self.loaded) or 'any known_hosts file'}). escale never accepts a host key by itself. "
            "Check this fingerprint with the server's administrator, then accept it: "
            f"\"ssh-keyscan {port}-t {key.get_name()} {self.host} >> {where}\" "
            f"(or connect once with \"ssh {port}{self.host}\" and answer yes)"
            + ("" if default else ", or set 'known hosts' to a file that holds it"))


class _Download(io.RawIOBase):
    """An object's bytes, read a window at a time (many requests in flight); resumes at its
    offset on a new connection when the old one broke, if the object did not change."""

    def __init__(self, relay: SFTP, name: str, path: str, f, attrs):
        self.relay, self.name, self.path, self.f = relay, name, path, f
        self.size, self.mtime = attrs.st_size or 0, attrs.st_mtime
        self.offset = 0
        self.buf = b""
        self.resumes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if not self.buf:
            if self.offset >= self.size:
                return 0
            self.buf = self._window()
            if not self.buf:
                return 0
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        self.offset += n
        return n

    def _window(self) -> bytes:
        want = min(READ_WINDOW, self.size - self.offset)
        chunk = 32768
        spans = [(self.offset + i, min(chunk, want - i)) for i in range(0, want, chunk)]
        while True:
            try:
                data = b"".join(self.f.readv(spans))
                if len(data) != want:
                    raise RelayError(f"relay object {self.name} on {self.relay.address} is shorter than "
                                     "when it was opened (rewritten while being read)")
                return data
            except RelayError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken connection, or the server's refusal
                gen = getattr(self.relay._local, "generation", -1)
                if not self.relay._lost(exc, gen) or self.resumes >= self.relay.max_retries:
                    if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
                        raise RelayObjectMissing(f"relay object {self.name} is missing "
                                                 "(deleted while being read)") from exc
                    raise RelayError(f"reading relay object {self.name} from {self.relay.address} failed: "
                                     f"{_describe(exc)}") from exc
                self.relay._drop(gen)
                delay = self.relay.retry.delay(self.resumes)
                self.resumes += 1
                log.warning("%s: reading %s broke at byte %d (%s); resuming in %.1f s", self.relay.address,
                            self.name, self.offset, _describe(exc), delay)
                self.relay.retry.sleep(delay)
                self._reopen()

    def _reopen(self) -> None:
        def opening(sftp):
            f = sftp.open(self.path, "rb")
            return f, f.stat()

        try:
            f, a = self.relay._call(f"reading {self.name}", opening)
        except RelayObjectMissing:
            raise RelayObjectMissing(f"relay object {self.name} is missing (deleted while being read)") from None
        if (a.st_size or 0) != self.size or a.st_mtime != self.mtime:
            f.close()
            raise RelayError(f"relay object {self.name} changed while being read")
        self.f = f

    def close(self) -> None:
        if not self.closed:
            try:
                self.f.close()
            except Exception:  # noqa: BLE001 - closing on a broken connection
                pass
        super().close()
