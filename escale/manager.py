"""The Manager: one repository's sync cycle — pull, then push, then collect.

A cycle lists the relay once, applies every pusher's new updates in sequence
order, acknowledges them in its own object, publishes local changes as new
updates (within the quota), and deletes its own updates once every required
puller has acknowledged them. All decisions come from :mod:`escale.plan`; the
folder changes go through :mod:`escale.folder`; relay objects through
:mod:`escale.protocol`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable

from .access import AccessController, safe_join
from .checksum import ChecksumCache, FileChangedError
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .encryption import Cipher, Plain, StreamCipher, key_check, load_secret, master_key, new_kdf
from .errors import (ConfigError, EscaleError, FolderUnavailable, IntegrityError, ObjectExists, QuotaExceeded,
                     RelayError, RelayObjectMissing, Terminated, UnsafePath, WrongPassphrase)
from .deletions import (CONFIRMED_KEY, DEFAULT_MAX_DELETE, HELD_KEY, DeleteLimit, DeletionGuard, dump_paths,
                        is_file_deletion, load_paths)
from .filters import Filter
from .folder import ContentMismatch, Folder, LocalChanged
from .fsnames import NameTwin
from .index import DIR, DIR_VERSION, FILE, GONE, MAX_INT, Entry, LocalFile
from .junk import Junk, drop_strangers
from .labels import MAX_LABEL, labels, printable
from .marker import FolderIdentity, Marker, record_place
from .names import db_key
from .outbox import Outbox
from .pacing import TimeQuotaController
from .repository_id import WrongRepository, check_pinned, is_id, new_id
from .plan import (Displace, Fetch, MakeDir, Plan, Remember, RemoveDir, SetMode, local_changes, reconcile,
                   saw, stamp)
from .protocol import (BLOB, FORMAT_VERSION, HEADER_NAME, INLINE, NONE, SNAPSHOT_MAGIC, UPDATE_MAGIC, Item,
                       ObjectStore, RelayView, Snapshot, UpdateHeader, signer_of, ack_name, blob_name, list_relay, member_name,
                       request_name, reservation_name, snapshot_name, update_name)
from .relay import Relay, Usage, backend_for, parse_address
from .relay.split import Splitting
from .state import InstanceLock, Published, State
from .stream import HashingReader, copy_exactly

log = logging.getLogger(__name__)

#: files at least this large travel as their own relay object, streamed
BLOB_THRESHOLD = 4 << 20
#: a reservation older than this is a crashed writer's leftover
RESERVATION_TTL = 6 * 3600
DEFAULT_MAXPAGESIZE = 200 * 10**6
#: a small object is cached (not re-read while unchanged) once its mtime is this old
SEEN_SETTLE_SECONDS = 2.0
#: room kept under the quota for each member's small objects (card, acks, requests)
SMALL_OBJECTS_ROOM = 16 << 10
#: an update header is cut below this (readers refuse one above protocol.MAX_HEADER)
MAX_UPDATE_HEADER = 16 << 20
#: a request names at most this many wanted files (the rest in later requests): it
#: stays a small object however many entries a snapshot brought
MAX_WANTS_PUBLISHED = 5000
#: a running client re-signs its acknowledgements at least this often (its activity time)
ACTIVITY_INTERVAL = 3600.0
#: relay bytes one base entry takes in a snapshot (an upper estimate)
SNAPSHOT_BYTES_PER_ENTRY = 320


@dataclass
class CycleReport:
    """What one cycle did; the CLI prints it and derives the exit code."""

    repository: str
    sent: int = 0
    received: int = 0
    deleted: int = 0
    conflicts: int = 0
    errors: list[str] = field(default_factory=list)
    relay_error: str | None = None
    waiting_for_room: bool = False
    #: (event, path) of each file this cycle moved, for the log (escale/journal.py)
    files: list[tuple[str, str]] = field(default_factory=list)

    @property
    def did_work(self) -> bool:
        return bool(self.sent or self.received or self.deleted or self.conflicts)

    def error(self, message: str) -> None:
        log.error("%s: %s", self.repository, message)
        self.errors.append(message)

    def summary(self) -> str:
        s = (f"{self.repository}: {self.sent} sent, {self.received} received, {self.deleted} deleted, "
             f"{self.conflicts} conflicts, {len(self.errors)} errors")
        if self.relay_error:
            s += f" (relay failed: {self.relay_error})"
        elif self.waiting_for_room:
            s += " (waiting for room on the relay)"
        return s


@dataclass(frozen=True)
class MemberStatus:
    name: str
    mode: str
    pending_updates: int
    is_me: bool
    #: the latest time this member signed (its acknowledgements' heartbeat, its newest
    #: update): one whose time stops advancing is offline, or hidden by the relay
    last_activity: float | None = None


@dataclass(frozen=True)
class RepositoryStatus:
    repository: str
    relay: str
    repository_id: str | None
    used_bytes: int
    quota: int | None
    members: list[MemberStatus]
    wanted_files: int
    held_deletes: int = 0
    #: the storage's own account of space (Relay.usage(): Drive's about.get, WebDAV's quota props)
    storage: Usage | None = None


class Manager:
    """Sync one local folder with one relay (escale 0.7's constructor, still accepted).

    ``Manager(LocalMount, repository='/path/to/folder', address='file:///relay').run()``
    """

    def __init__(self, relay, repository=None, address=None, directory=None, encryption=None,
                 timestamp=True, refresh=True, clientname=None, filetype=(), include=None, exclude=None,
                 tq_controller=None, count=None, checksum=True, checksum_cache=None, includedirectory=None,
                 excludedirectory=None, waitonerror=(), verbosity=1, *, mode=None, quota=None,
                 maxpagesize=None, state_dir=None, trash_retention_days=30.0, name=None, push_only=False,
                 pull_only=False, passphrase=None, padding=True, strict_permissions=True, config_path=None,
                 identity: FolderIdentity | None = None, max_delete: DeleteLimit | str | None = None,
                 repository_id=None, **relay_args):
        if isinstance(repository, AccessController):
            self.repository, self._access_args = repository, None
        else:
            if repository is None:
                raise ConfigError("no local folder given (repository=...)", option="local path")
            self._access_args = dict(repository=name or str(repository), path=repository, mode=mode,
                                     push_only=push_only, pull_only=pull_only)
            self.repository = AccessController(persistent=None, **self._access_args)
        self.name = name or getattr(self.repository, "repository", None) or str(self.repository.path)
        self._flags: dict[str, tuple] = {}
        self.mode = self.repository.mode
        self.relay = self._make_relay(relay, address, directory, relay_args)
        # the state folder follows the synced folder's marker (escale.marker), found at open
        self._where = identity or FolderIdentity(
            Path(self.repository.path), self.relay.address, _default_state_root() if not state_dir else None,
            Path(state_dir) if state_dir else None, repository=self.name, config_path=config_path)
        self.state_dir: Path | None = Path(state_dir) if state_dir else None
        self._marker: Marker | None = None
        self._deletions_held = False
        self.deletions = DeletionGuard(max_delete if isinstance(max_delete, DeleteLimit)
                                       else DeleteLimit.parse(max_delete or DEFAULT_MAX_DELETE))
        # encryption: a Cipher object (0.7 style), or a name with a passphrase; the key is
        # derived at connect time, with the KDF parameters from the repository header
        if isinstance(encryption, Cipher):
            self.cipher, self._enc_name = encryption, encryption.name
        else:
            self.cipher = Plain()
            self._enc_name = encryption or ("aes256gcm" if passphrase else "off")
        if self._enc_name != "off" and not isinstance(encryption, Cipher) and not passphrase:
            raise ConfigError(f"encryption = {self._enc_name} needs a passphrase", section=name,
                              option="passphrase")
        self._passphrase, self._padding, self._strict = passphrase, padding, strict_permissions
        self._config_path = config_path
        self._secret = None
        self._pinned_id = repository_id  # the 'repository id' option, if set
        self.repository_id: str | None = None  # from the header, once read
        self.clientname = clientname or _default_client_name(self.name)
        self.algorithm = "sha256" if checksum in (True, None) else str(checksum)
        self.filter = Filter(include or [], exclude or [], list(filetype or []), includedirectory or [],
                             excludedirectory or [])
        self.count = count
        self.maxpagesize = maxpagesize or DEFAULT_MAXPAGESIZE
        self.tq = tq_controller or TimeQuotaController(refresh=refresh, quota=quota)
        if quota is not None and tq_controller is not None:
            self.tq.quota = quota
        self.trash_retention_days = trash_retention_days
        self.verbosity = verbosity
        self._checksum_cache_opt = checksum_cache
        self.state: State | None = None
        self.cache: ChecksumCache | None = None
        self.folder: Folder | None = None
        self.store = ObjectStore(self.relay, self.cipher)
        self._problems: list[str] = []  # integrity errors met outside a cycle's report
        self._pos: dict[str, int] = {}  # pull positions during a cycle
        self._scanned: dict[str, LocalFile] = {}  # the last push scan
        self._lock: InstanceLock | None = None
        self._outbox: Outbox | None = None  # in the state folder, once it is found
        self._names: dict[str, str] = {}
        self._junk = Junk()  # objects of no member, this cycle
        self._bad: dict[str, tuple[int, float]] = {}  # unreadable cards (in memory only)
        self._cards: dict[str, dict] = {}
        self._failures: dict[str, str] = {}  # files we could not write (path -> why), kept in the state
        self._failed_now: set[str] = set()
        self.stop = threading.Event()
        self.wake = threading.Event()  # set by the folder watcher: something changed here
        self.progress = False  # show tqdm bars for long transfers (the CLI, in a terminal)
        self.observers: list[Callable[[CycleReport], None]] = []  # told of each finished cycle
        self.meter = None  # told of each large transfer (escale.status.StatusPublisher)
        self.me = ""

    @classmethod
    def from_config(cls, cfg) -> "Manager":
        """Build from a :class:`escale.config.RepositoryConfig`."""
        backend = backend_for(cfg.relay_protocol)
        if backend is None:
            raise ConfigError(f"no relay backend for '{cfg.relay_protocol}'", path=cfg.config_path,
                              section=cfg.name, option="relay address")
        return cls(backend, repository=str(cfg.local_path), address=cfg.relay_url, name=cfg.name,
                   mode=cfg.mode, encryption=cfg.encryption, passphrase=cfg.passphrase, padding=cfg.padding,
                   strict_permissions=cfg.strict_permissions, config_path=cfg.config_path,
                   repository_id=cfg.repository_id,
                   refresh=cfg.refresh, clientname=cfg.client_name, filetype=cfg.filetype,
                   include=cfg.include, exclude=cfg.exclude, count=cfg.puller_count, checksum=cfg.checksum,
                   checksum_cache=cfg.checksum_cache, includedirectory=cfg.include_directory,
                   excludedirectory=cfg.exclude_directory, quota=cfg.quota, maxpagesize=cfg.maxpagesize,
                   identity=cfg.identity(), max_delete=cfg.max_delete, trash_retention_days=cfg.trash_retention_days,
                   verbosity=cfg.verbosity, user=cfg.user, password=cfg.password, **cfg.options)

    @staticmethod
    def _make_relay(relay, address, directory, relay_args) -> Relay:
        # every relay is seen through the splitting layer (objects over 'max object size')
        limit = relay_args.pop("max_object_size", None)
        if isinstance(relay, Relay):
            return Splitting.around(relay, limit)
        if address is None and directory is None:
            raise ConfigError("no relay address given", option="relay address")
        addr = address or ""
        if directory:
            addr = addr.rstrip("/") + "/" + str(directory).lstrip("/") if addr else str(directory)
        proto, host, _port, path = parse_address(addr)
        if proto == "file" and not addr.startswith("file://"):
            addr = "file://" + os.path.join(host, path) if path else "file://" + host
        return Splitting(relay(addr, **relay_args), limit)

    # -- life cycle ------------------------------------------------------------------------
    def _find_state(self) -> None:
        """Our state folder, from the synced folder's marker (created on first use);
        refuses a folder this client synced that is now missing or unmarked."""
        self.state_dir, self._marker = self._where.resolve()
        self._outbox = Outbox(self.state_dir)
        self.relay.use_state_dir(self.state_dir, self.name)  # e.g. where a Drive token lives

    def open(self) -> None:
        self._find_state()
        self._lock = InstanceLock(self.state_dir, self.name)
        self._lock.acquire()
        try:
            self.state = State(self.state_dir)
            self._outbox.tighten()
            record_place(self.state, self.repository.path, self._marker)
            self._deletions_held = self.state.get(HELD_KEY) is not None
            self._where.remember(self._marker)
            if self._access_args is not None:  # the per-file r/w table lives with the state
                self.repository.close()
                self.repository = AccessController(persistent=self.state_dir / "access.db", **self._access_args)
            self._identity()
            opt = self._checksum_cache_opt
            cache_path = None
            if opt in (True, None):
                cache_path = self.state_dir / "checksums.sqlite"
            elif opt:
                cache_path = Path(opt)
            self.cache = ChecksumCache(cache_path, self.algorithm)
            root = Path(self.repository.path)
            self.folder = Folder(root, self.algorithm, self.cache.digest_stream)
            self.folder.remove_temporaries()
            if self._enc_name == "off":
                log.warning("%s: encryption is off: the relay sees file names and contents", self.name)
        except BaseException:
            self.close()
            raise

    def _identity(self) -> None:
        """Our client id and signing key (pinned like anyone's), and the secret to open
        an encrypted repository with."""
        self.me = self.state.client_id()
        signer = self.state.signing_key()
        self.state.pin(self.me, signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        self.store = ObjectStore(self.relay, self.cipher, signer, self.state.pinned)
        if self._enc_name != "off" and not isinstance(self.cipher, StreamCipher) and self._secret is None:
            self._secret = load_secret(self._passphrase, repository=self.name, strict=self._strict,
                                       config_path=self._config_path)

    def connect(self) -> None:
        """Reach the relay: repository header, our member card, unfinished publications."""
        self.relay.open()
        self._ensure_header()
        if self.relay.stat(member_name(self.me)) is not None:
            self._ensure_card()  # kept up to date; a new card waits for the cycle's name check
        self._recover_outbox()
        self.relay.delete(reservation_name(self.me))
        # interrupted uploads of our own objects (we are their only writer)
        removed = sum(self.relay.abort_incomplete(prefix) for prefix in (
            f"u/{self.me}/", f"b/{self.me}/", ack_name(self.me), snapshot_name(self.me), member_name(self.me),
            request_name(self.me), reservation_name(self.me)))
        if removed:
            log.info("%s: removed %d interrupted upload(s) from the relay", self.name, removed)

    def close(self) -> None:
        owned = self._access_args is not None
        for closer in (getattr(self.cache, "close", None), getattr(self.state, "close", None),
                       self.relay.close, self.repository.close if owned else None):
            if closer:
                try:
                    closer()
                except Exception:  # closing must not hide the real error
                    log.debug("error while closing", exc_info=True)
        self.cache = self.state = None
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "Manager":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, once: bool = False) -> CycleReport:
        """Cycle until stopped (``self.stop``), or once; returns the last cycle's report."""
        opened = self.state is None
        if opened:
            self.open()
        connected = False
        watcher = None
        if not once:
            from .watch import FolderWatcher

            watcher = FolderWatcher(self.folder.root, self.wake)
            watcher.start()
        try:
            while True:
                report = CycleReport(self.name)
                try:
                    if not connected:
                        self.connect()
                        connected = True
                    self.cycle(report)
                except RelayError as exc:
                    report.relay_error = str(exc)
                    log.error("%s: relay failed: %s%s", self.name, exc, "" if once else "; retrying next cycle")
                    connected = False
                except FolderUnavailable as exc:  # a disk unmounted under a running daemon: wait for it
                    if once:
                        raise
                    report.error(str(exc))
                except (ConfigError, Terminated):
                    raise
                except IntegrityError as exc:  # e.g. an altered repository header
                    report.error(str(exc))
                    connected = False
                except QuotaExceeded as exc:  # the storage is full (e.g. WebDAV 507) on any write
                    log.warning("%s: the relay is full (%s); waiting for pullers to free room", self.name, exc)
                    report.waiting_for_room = True
                except Exception as exc:  # a bug or a surprise: keep the daemon alive, retry
                    log.exception("%s: unexpected error%s", self.name, "" if once else "; retrying next cycle")
                    report.error(f"unexpected error: {exc!r}")
                    connected = False  # reconnecting also finishes or rolls back a publication
                for observer in self.observers:  # the daemon's log, status file, 'on error' (escale/journal.py…)
                    observer(report)
                if once or self.stop.is_set():
                    return report
                self.wake.clear()  # events from our own writes during the cycle
                if not self.tq.wait(report.did_work, self.stop, self.wake):
                    return report
        finally:
            if watcher is not None:
                watcher.stop()
            if opened:
                self.close()

    @contextlib.contextmanager
    def _inspecting(self):
        """Read-only access for escalectl, safe while a daemon runs on the same state:
        our identity and pins, the relay, the key (from an existing header only)."""
        own_state = self.state is None
        if own_state:
            self._find_state()
            self.state = State(self.state_dir)
            self._identity()
        try:
            self.relay.open()
            if self.relay.stat(HEADER_NAME) is None:
                raise RelayError(f"no escale repository on {self.relay.address} yet")
            self._ensure_header()
            yield list_relay(self.relay)
        finally:
            self.relay.close()
            if own_state:
                self.state.close()
                self.state = None

    def forget(self, client_name: str) -> list[str]:
        """Remove the member card of a client that will not come back, so pushers stop
        waiting for its acknowledgements. If it does come back it re-registers and
        catches up from snapshots. Returns the ids removed."""
        with self._inspecting() as view:
            self._read_cards(view, repair=False)
            removed = [cid for cid, card in self._cards.items() if card["name"] == client_name and cid != self.me]
            for cid in removed:  # its card, acks, requests, and the updates nobody will collect
                names = [i.name for i in self.relay.list() if signer_of(i.name) == cid and i.name != member_name(cid)]
                for name in sorted(names, key=lambda n: not n.startswith("u/")):
                    self.relay.delete(name)
                self.relay.delete(member_name(cid))
            return removed

    def status(self) -> "RepositoryStatus":
        """What the relay and our state say, without syncing (safe while a daemon runs)."""
        with self._inspecting() as view:
            self._read_cards(view, repair=False)
            members = [MemberStatus(self._names.get(cid, "?") if cid in self._cards else "?",
                                    printable(str(self._cards.get(cid, {}).get("mode", "?")), 16),
                                    len(view.updates.get(cid, {})), cid == self.me, self._last_activity(view, cid))
                       for cid in sorted(view.members)]
            try:
                storage = self.relay.usage()
            except EscaleError as exc:  # the space report is optional: status still answers
                log.info("%s: the relay does not tell its space: %s", self.name, exc)
                storage = None
            return RepositoryStatus(self.name, self.relay.address, self.repository_id, view.used, self.tq.quota,
                                    members, self.state.want_count(), len(self.held_deletions()), storage)

    def _last_activity(self, view: RelayView, cid: str) -> float | None:
        """The latest signed time of a member: its acknowledgements (rewritten at least
        every ACTIVITY_INTERVAL while it runs) and its newest update."""
        times = []
        info = view.acks.get(cid)
        ack = self._read_small(info.name, info) if info is not None else None
        if isinstance(ack, dict) and isinstance(ack.get("time"), (int, float)):
            times.append(float(ack["time"]))
        seqs = view.updates.get(cid, {})
        if seqs:
            name = update_name(cid, max(seqs))
            try:
                header, _digest, stream = self.store.open_framed(name, UPDATE_MAGIC)
                stream.close()
                times.append(float(header.get("time", 0)))
            except (IntegrityError, RelayObjectMissing, TypeError, ValueError) as exc:
                log.info("%s: cannot read %s for its time: %s", self.name, name, exc)
        return max(times) if times else None

    # -- the cycle -------------------------------------------------------------------------
    def cycle(self, report: CycleReport | None = None) -> CycleReport:
        report = report or CycleReport(self.name)
        self._check_folder()
        view = list_relay(self.relay)
        self._problems = []
        self._junk = Junk()
        self._read_cards(view, repair=False)
        drop_strangers(view, self._known, self._junk)
        if self.me not in view.members:  # joining (refused under a taken name), or removed by hand
            self._refuse_name_clash()
            self._ensure_card()
        self._load_flags()
        if self.repository.may_pull():
            self.download(view, report)
        else:
            self._write_ack(present=self.me in view.acks)  # a heartbeat only
        if self.repository.may_push():
            if self.repository.may_pull():
                view = list_relay(self.relay)
                drop_strangers(view, self._known, self._junk)
            self.upload(view, report)
        self.folder.purge_trash(self.trash_retention_days)
        for problem in self._problems:
            report.errors.append(problem)
        junk = self._junk.summary()
        if junk:
            report.error(junk)
        return report

    def _known(self, cid: str) -> bool:
        """A writer we follow: a valid member card, or a key pinned from one earlier."""
        return cid == self.me or cid in self._cards or self.state.pinned(cid) is not None

    def _check_folder(self) -> None:
        """The synced folder still carries its marker (one stat): an unmounted disk or a
        renamed folder must not look like a folder whose files were all deleted."""
        if self._marker is not None:
            self._marker = self._where.check(self._marker)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Terminated(f"{self.name}: stopped")

    # -- repository header and member cards --------------------------------------------------
    def _ensure_header(self) -> None:
        """Create or read the repository header; with encryption, derive the key and check
        it against the header's key-check value before anything else is read or written."""
        encrypted = self._enc_name != "off"
        master = None
        if self.relay.stat(HEADER_NAME) is None:
            if self.state.get("repository_header") is not None:
                raise RelayError(f"no repository header ({HEADER_NAME}) on {self.relay.address}, but this client "
                                 "synced with it before: the relay looks unmounted or replaced. escale does not "
                                 "create the repository again; mount or restore the relay (to start a new "
                                 f"repository on purpose, remove this client's state folder {self.state_dir})")
            if self._pinned_id is not None:
                raise WrongRepository(f"the relay {self.relay.address} holds no repository, but 'repository id' "
                                      f"pins {self._pinned_id}: refusing to create a new one there (remove the "
                                      "option to start a new repository)", path=self._config_path,
                                      section=self.name, option="repository id")
            header = {"format": FORMAT_VERSION, "id": new_id(), "hash": self.algorithm,
                      "encryption": self._enc_name}
            if encrypted and self._secret is not None:
                header["kdf"] = new_kdf(self._secret)
                master = master_key(self._secret, header["kdf"])
                header["check"] = key_check(master, header)
            try:
                self.store.put_header(header)
                log.info("%s: created repository on %s", self.name, self.relay.address)
                self._pin_header(header)
                self._use_key(master)
                return
            except ObjectExists:
                pass  # another client created it first: use theirs
        found = self.store.get_header()
        if isinstance(found, dict) and found.get("format") == 1:
            raise WrongRepository(f"the repository on {self.relay.address} has format 1 (escale before repository "
                                  "ids): its objects are not bound to one repository, and this version refuses "
                                  "them. Let every client finish syncing with the old version, then point all "
                                  "clients at a new, empty relay folder (docs/format.md, 'Format 1')",
                                  path=self._config_path, section=self.name, option="relay address")
        if not isinstance(found, dict) or found.get("format") != FORMAT_VERSION:
            raise IntegrityError(HEADER_NAME, f"unsupported repository format {found!r:.80}")
        if not is_id(found.get("id")):
            raise IntegrityError(HEADER_NAME, f"no valid repository id ({found.get('id')!r:.40})")
        check_pinned(found["id"], self._pinned_id, repository=self.name, address=self.relay.address,
                     config_path=self._config_path)
        if not isinstance(found.get("hash"), str) or found["hash"] not in hashlib.algorithms_available \
                or found["hash"].startswith("shake"):
            raise IntegrityError(HEADER_NAME, f"unusable checksum algorithm {found.get('hash')!r:.40}")
        theirs = found.get("encryption")
        if (theirs != "off") != encrypted:
            raise ConfigError(f"the repository on {self.relay.address} uses encryption '{theirs}', this "
                              f"section says '{self._enc_name}'", path=self._config_path, section=self.name,
                              option="encryption")
        if encrypted and self._secret is not None:
            try:
                master = master_key(self._secret, found.get("kdf") or {})
            except (ValueError, KeyError, TypeError) as exc:
                raise WrongPassphrase(f"cannot open repository {self.name}: {exc}", path=self._config_path,
                                      section=self.name, option="passphrase") from None
            if not hmac.compare_digest(key_check(master, found), str(found.get("check", ""))):
                raise WrongPassphrase(f"wrong passphrase for repository {self.name} (or its header on the "
                                      "relay was altered)", path=self._config_path, section=self.name,
                                      option="passphrase")
        self._pin_header(found)
        self._use_key(master)
        algo = found.get("hash")
        if algo != self.algorithm:
            log.warning("%s: the repository uses checksum '%s'; using it instead of '%s'",
                        self.name, algo, self.algorithm)
            self.algorithm = algo
            if self.cache is not None:
                self.cache.algorithm = algo
                self.folder.algorithm = algo

    def _pin_header(self, header: dict) -> None:
        """Remember the header as first seen; a later change is an attack (or a relay
        swapped under us) and is refused before anything else happens. Its repository
        id is bound into every signature (and key) from here on."""
        self.repository_id = header["id"]
        self.store.repository = header["id"]
        canonical = json.dumps(header, sort_keys=True)
        pinned = self.state.get("repository_header")
        if pinned is None:
            self.state.set("repository_header", canonical)
        elif pinned != canonical:
            raise IntegrityError(HEADER_NAME, "differs from the header this client first saw (relay altered "
                                              "or replaced); refusing to sync. If the repository was re-created "
                                              f"on purpose, remove this client's state folder {self.state_dir}")

    def _use_key(self, master: bytes | None) -> None:
        if master is not None:
            self.cipher = StreamCipher(master, self._enc_name, self._padding, repository=self.repository_id)
            self.store.cipher = self.cipher

    def _card(self) -> dict:
        key = self.state.pinned(self.me)
        return {"v": FORMAT_VERSION, "name": self.clientname, "mode": self.mode, "key": key.hex(),
                "pulls": self.repository.may_pull(), "pushes": self.repository.may_push()}

    def _ensure_card(self) -> None:
        name = member_name(self.me)
        card = self._card()
        info = self.relay.stat(name)
        if info is not None and self.state.get("card") == repr(card):
            return
        self.store.put_json(name, card)
        self.state.set("card", repr(card))

    def _read_cards(self, view: RelayView, repair: bool = True) -> None:
        """Member cards, each signed with the key it carries; a client's key is pinned the
        first time its card is seen, and a card with another key is refused."""
        self._cards = {}
        for cid, info in view.members.items():
            self._check_stop()
            card = self._read_small(info.name, info, self_signed="key", junk=True)
            if not (isinstance(card, dict) and isinstance(card.get("name"), str)):
                continue
            key = bytes.fromhex(card["key"])
            pinned = self.state.pinned(cid)
            if pinned is None:
                self.state.pin(cid, key)
            elif pinned != key:
                self._problem(IntegrityError(info.name, f"member card of '{printable(card['name'], MAX_LABEL)}' now "
                                                        "carries another "
                                                        "signing key: refused (someone posing as that client?)"))
                self.state.set_seen(info.name, -1, -1, None)  # read it again next time
                continue
            self._cards[cid] = card
        self._names.update(labels({cid: card["name"] for cid, card in self._cards.items()}))
        self._bad = {n: v for n, v in self._bad.items() if signer_of(n) in view.members}
        if repair and self.me not in view.members:  # e.g. removed by hand: put it back
            self._ensure_card()

    def _refuse_name_clash(self) -> None:
        """Two members with one client name would be told apart by nobody (forget, status,
        conflict names): refused before our card is written."""
        others = sorted(cid for cid, card in self._cards.items() if cid != self.me and card["name"] == self.clientname)
        if others:
            raise ConfigError(f"another member of the repository on {self.relay.address} already uses client name "
                              f"'{self.clientname}' (member {others[0][:8]}; this client is {self.me[:8]}). If it "
                              "is this folder's former identity (state folder removed, folder copied or restored "
                              f"elsewhere), remove it with 'escalectl forget {self.clientname}'; otherwise give "
                              "this section a different 'client name'", path=self._config_path, section=self.name,
                              option="client name")

    def _problem(self, exc: Exception) -> None:
        log.error("%s: %s", self.name, exc)
        self._problems.append(str(exc))

    def _read_small(self, name: str, info, self_signed: str | None = None, junk: bool = False) -> object:
        """A small signed object, re-read only when the listing says it changed.

        ``junk``: a bad one is set aside for the cycle's one-line summary (and, in this
        process, not read again while unchanged) instead of an error line each."""
        cached = self.state.seen(name, info.size, info.mtime)
        if cached is not None:
            return cached
        if junk and self._bad.get(name) == (info.size, info.mtime):
            self._junk.add(name)
            return None
        try:
            value = self.store.get_json(name, self_signed=self_signed)
        except RelayObjectMissing:
            return None
        except IntegrityError as exc:
            if junk:
                self._junk.add(name, str(exc))
                self._bad[name] = (info.size, info.mtime)
            else:
                self._problem(exc)
            return None
        # servers with one-second mtimes could hide a rewrite in the same second: cache
        # only what has been stable for a while
        if time.time() - info.mtime > SEEN_SETTLE_SECONDS:
            self.state.set_seen(name, info.size, info.mtime, value)
        return value

    def name_of(self, cid: str) -> str:
        return self._names.get(cid) or cid[:8]

    # -- scope: filters and access rules ---------------------------------------------------------
    def _load_flags(self) -> None:
        """The per-file r/w flags (usually a handful), read once per cycle: escalectl
        changes take effect at the next cycle without a table lookup per file."""
        self._flags = {p: (r, w) for p, r, w in self.repository.attributes.items()}

    def _scope_push(self, path: str, kind: str) -> bool:
        ok = self.filter.accepts_dir(path) if kind == DIR else self.filter.accepts_file(path)
        return ok and self.repository.may_push() and self._flags.get(path, (None, None))[0] is not False

    def _scope_pull(self, e: Entry) -> bool:
        parent = e.path.rpartition("/")[0]
        if parent and not self.filter.may_descend(parent):
            return False
        is_dir = e.kind == DIR or (e.kind == GONE and e.prev == DIR_VERSION)
        kind_ok = self.filter.accepts_dir(e.path) if is_dir else self.filter.accepts_file(e.path)
        return kind_ok and self.repository.may_pull() and self._flags.get(e.path, (None, None))[1] is not False

    # =========================================================================================
    # Pull
    # =========================================================================================
    def download(self, view: RelayView | None = None, report: CycleReport | None = None) -> CycleReport:
        """Apply every pusher's new updates in causal order (0.7 name), then acknowledge them.

        An update waits until the updates its publisher had applied (its ``deps``) are
        applied here too, so an entry never meets a base its publisher had not seen
        unless the two are truly concurrent. A pusher whose needed updates were
        collected is caught up from its snapshot; several such snapshots are merged.
        """
        report = report or CycleReport(self.name)
        view = view or list_relay(self.relay)
        # base and wants are read row by row from the state (never loaded whole): memory
        # stays flat however many entries a snapshot brings
        self._by_hash: dict[str, list[str]] | None = None
        self._moves: dict[str, str | None] = {}
        self._spools: dict[tuple[str, int], tuple[UpdateHeader, bytes, BinaryIO]] = {}
        self._snapshots: list[Snapshot] = []
        self._failures = self.state.failures()  # files we could not write, cycles ago
        self._failed_now: set[str] = set()
        self._reask = False
        try:
            return self._download(view, report)
        finally:
            for _h, _d, spool in self._spools.values():
                spool.close()
            for snap in self._snapshots:
                snap.close()
            self._spools, self._snapshots = {}, []

    def _download(self, view: RelayView, report: CycleReport) -> CycleReport:
        applied_before = self.state.applied()
        self._pos = {p: s for p, (s, _d) in applied_before.items()}
        queues: dict[str, list[int]] = {}
        resync: dict[str, object] = {}  # pusher -> snapshot info, or its loaded Snapshot
        for pusher in sorted(view.pushers() - {self.me}):
            have = self._pos.get(pusher, 0)
            try:
                seqs = self._check_history(pusher, view, have)
            except IntegrityError as exc:
                report.error(str(exc))
                continue
            queues[pusher] = [s for s in seqs if s > have]
            snap = view.snapshots.get(pusher)
            behind = bool(queues[pusher]) and queues[pusher][0] != have + 1
            if behind or (not queues[pusher] and snap is not None and self._snapshot_newer(snap, have)):
                if snap is None:
                    report.error(f"relay object {update_name(pusher, have + 1)}: missing, and its client has "
                                 "no snapshot to catch up from")
                    queues[pusher] = []
                else:
                    resync[pusher] = snap
        progress = True
        while progress:
            progress = False
            for pusher in sorted(queues):
                self._check_stop()
                try:
                    if pusher in resync:
                        snap = self._load_snapshot(pusher, resync)
                        if snap is None or not self._ready(snap.deps):
                            continue
                        self._apply_snapshots([snap], report)
                        del resync[pusher]
                        progress = True
                    progress |= self._drain(pusher, queues, report, causal=True)
                except IntegrityError as exc:
                    self._fail(pusher, queues, resync, exc, report)
        # what is left waits on itself (snapshots taken at nearly the same time) or on a
        # pusher we cannot follow: merge the snapshots, then apply in sequence order
        snaps = []
        for pusher in sorted(resync):
            try:
                snap = self._load_snapshot(pusher, resync)
            except IntegrityError as exc:
                self._fail(pusher, queues, resync, exc, report)
                continue
            if snap is not None:
                snaps.append(snap)
        if snaps:
            self._apply_snapshots(snaps, report)
        for pusher in sorted(queues):
            try:
                self._drain(pusher, queues, report, causal=False)
            except IntegrityError as exc:
                self._fail(pusher, queues, {}, exc, report)
        self._write_ack(force=self.state.applied() != applied_before)
        self._compare_acks(view)
        self._publish_wants(view)
        self._report_failures(report)
        return report

    def _report_failures(self, report: CycleReport) -> None:
        """A file we could not write stays an error, every cycle, until it is written (or
        no longer wanted): a cycle that received nothing must not look like success."""
        for path, why in sorted(self._failures.items()):
            if self.state.wanted(path) is None:
                self.state.resolve(path)
            elif path not in self._failed_now:
                report.error(f"{path}: still not written here ({why}); will retry")

    def _write_ack(self, force: bool = False, present: bool | None = None) -> None:
        """Our acknowledgements, with a signed time: rewritten when they change, and at
        least every ACTIVITY_INTERVAL as a heartbeat others see in ``escalectl status``."""
        last = float(self.state.get("ack_time", "0"))
        if not force and time.time() - last < ACTIVITY_INTERVAL and (
                present if present is not None else self.relay.stat(ack_name(self.me)) is not None):
            return
        now = time.time()
        acks = {p: [s, d] for p, (s, d) in self.state.applied().items()}
        self.store.put_json(ack_name(self.me), {"v": FORMAT_VERSION, "acks": acks, "time": now})
        self.state.set("ack_time", str(now))

    def _check_history(self, pusher: str, view: RelayView, have: int) -> list[int]:
        """The pusher's update seqs on the relay, after checking the relay did not replay a
        collected update or roll back to an earlier state (both raise, naming the object).

        Two marks only ever go up: the *floor* (below it, every update of the pusher was
        seen collected) and what we applied. Everything applied must stay covered by an
        update or the snapshot, which a pusher writes before collecting."""
        seqs = sorted(view.updates.get(pusher, {}))
        if have and (not seqs or seqs[-1] < have):
            # the pusher may be between writing its snapshot and collecting: look again
            seqs = sorted(int(i.name.rsplit("/", 1)[1]) for i in self.relay.list(f"u/{pusher}/"))
            view.snapshots[pusher] = self.relay.stat(snapshot_name(pusher)) or view.snapshots.get(pusher)
        if have and (not seqs or seqs[-1] < have):
            info = view.snapshots.get(pusher)
            covered = self._snapshot_seq(info) if info is not None else 0
            if covered < have:
                latest = max(seqs[-1] if seqs else 0, covered)
                raise IntegrityError(snapshot_name(pusher) if info else update_name(pusher, have),
                                     f"the relay holds nothing of client {self.name_of(pusher)} as recent as "
                                     f"update {have}, already applied here (latest: {latest}): rolled back "
                                     "to an earlier state")
        floor = self.state.mark(f"floor:{pusher}")
        replayed = [s for s in seqs if s < floor]
        if replayed:
            raise IntegrityError(update_name(pusher, replayed[0]), "reappeared after it was collected: "
                                 "an old update replayed by the relay; ignored")
        # below the floor every update was seen collected; a listing that misses an update
        # in flight must not push the floor past what we have not applied yet
        self.state.raise_mark(f"floor:{pusher}", min(seqs[0], have + 1) if seqs else have + 1)
        return seqs

    def _snapshot_seq(self, info) -> int:
        known = self.state.seen(info.name, info.size, info.mtime)
        if isinstance(known, dict):
            return known.get("seq", 0)
        cid = info.name.split("/")[1]
        snap = self._load_snapshot(cid, {cid: info}, keep_old=True)
        return snap.seq if snap else 0

    def _fail(self, pusher: str, queues: dict, resync: dict, exc: IntegrityError, report: CycleReport) -> None:
        """Stop following one pusher this cycle; everything else goes on."""
        report.error(str(exc))
        queues[pusher] = []
        resync.pop(pusher, None)
        self._by_hash = None

    def _ready(self, deps: dict[str, int]) -> bool:
        return all(q == self.me or self._pos.get(q, 0) >= s for q, s in deps.items())

    def _drain(self, pusher: str, queues: dict[str, list[int]], report: CycleReport, causal: bool) -> bool:
        """Apply the pusher's queued updates in order while their dependencies are met."""
        progress = False
        queue = queues[pusher]
        while queue and queue[0] <= self._pos.get(pusher, 0):
            queue.pop(0)  # covered by a snapshot
        while queue:
            self._check_stop()
            seq = queue[0]
            if seq != self._pos.get(pusher, 0) + 1:
                raise IntegrityError(update_name(pusher, self._pos.get(pusher, 0) + 1),
                                     "missing: the sequence of its client has a gap")
            if not self._apply_update(pusher, seq, report, causal):
                break
            queue.pop(0)
            progress = True
        return progress

    def _snapshot_newer(self, info, have: int) -> bool:
        known = self.state.seen(info.name, info.size, info.mtime)
        return not isinstance(known, dict) or known.get("seq", 0) > have

    def _load_snapshot(self, pusher: str, resync: dict, keep_old: bool = False) -> Snapshot | None:
        """Read (once per cycle) a pusher's snapshot; None if it holds nothing new."""
        value = resync[pusher]
        if isinstance(value, Snapshot) or value is None:
            return value
        info = value
        parsed: list[Snapshot] = []

        def body(header: dict) -> tuple[int, str]:
            parsed.append(Snapshot.parse(info.name, header, pusher))
            return parsed[0].size, parsed[0].sha256

        try:
            if keep_old:  # only its seq is wanted: the signed header says it
                header, _digest, stream = self.store.open_framed(info.name, SNAPSHOT_MAGIC)
                stream.close()
                body(header)
            else:  # the whole body, verified and spooled, then checked entry by entry
                _h, _d, spool = self.store.fetch_framed(info.name, SNAPSHOT_MAGIC, body, self.state_dir,
                                                        self._check_stop)
                parsed[0].body = spool
                self._snapshots.append(parsed[0])
                for _ in parsed[0].entries(info.name, self._check_stop):
                    pass
        except RelayObjectMissing:
            raise IntegrityError(info.name, "disappeared while being read") from None
        snap = parsed[0]
        self.state.set_seen(info.name, info.size, info.mtime, {"seq": snap.seq})
        if snap.seq <= self._pos.get(pusher, 0) and not keep_old:
            snap = None
        resync[pusher] = snap
        return snap

    def _apply_snapshots(self, snaps: list[Snapshot], report: CycleReport) -> None:
        """Take snapshots as entries without content (wanted from their writers).

        Where several snapshots hold a path, an entry whose writer had seen another's
        version supersedes it; among the rest the sync rules' stamp picks one.
        """
        for snap in snaps:
            log.info("%s: catching up from %s's snapshot (%d entries)", self.name, self.name_of(snap.client),
                     snap.count)
        # the snapshots' entries are sorted by path: merge them as streams, one path at a time
        def stream(i: int, snap: Snapshot):
            for e in snap.entries(snapshot_name(snap.client), self._check_stop):
                yield e.path, i, e

        streams = [stream(i, snap) for i, snap in enumerate(snaps)]
        self._moves = {}
        with self.state.transaction():
            for n, (path, group) in enumerate(itertools.groupby(heapq.merge(*streams), key=lambda t: t[0])):
                if n % 1024 == 0:
                    self._check_stop()
                cands = [(snaps[i], e) for _p, i, e in group]
                # a version whose author's update we applied (or a later one) is no news
                cands = [(s, e) for s, e in cands
                         if not (e.author == self.me or (e.seq and self._pos.get(e.author, 0) >= e.seq))]
                if not cands:
                    continue
                live = [(s, e) for s, e in cands if not any(
                    e2.version != e.version and saw(s2.client, s2.deps, e, s2.unseen) for s2, e2 in cands)] or cands
                snap, e = max(live, key=lambda c: stamp(c[1].mtime_ns, c[1].author, c[1].version))
                self._apply_entry(snapshot_name(snap.client), e, snap.client, None, report,
                                  seen=lambda b, s=snap: saw(s.client, s.deps, b, s.unseen))
            for snap in snaps:
                self.state.set_applied(snap.client, snap.seq, snap.digest)
                self._pos[snap.client] = snap.seq
        self.folder.end_batch()

    def _local(self, path: str) -> LocalFile | None:
        try:
            return self.folder.stat_one(path)
        except (FileChangedError, OSError) as exc:
            raise LocalChanged(f"cannot read {path}: {exc}") from exc

    def _apply_update(self, pusher: str, seq: int, report: CycleReport, causal: bool = True) -> bool:
        """Apply one update; False (nothing done) if ``causal`` and its dependencies are not met."""
        name = update_name(pusher, seq)
        if (pusher, seq) not in self._spools:  # verify the whole object before anything from it is used
            parsed: list[UpdateHeader] = []

            def body_size(header: dict) -> tuple[int, None]:
                parsed.append(UpdateHeader.parse(name, header, pusher, seq))
                return sum(i.entry.size for i in parsed[0].items if i.data == INLINE), None

            try:
                _header, digest, spool = self.store.fetch_framed(name, UPDATE_MAGIC, body_size, self.state_dir,
                                                                 self._check_stop)
            except RelayObjectMissing:
                raise IntegrityError(name, "disappeared while being read (collected meanwhile, or deleted "
                                           "by the relay)") from None
            self._spools[(pusher, seq)] = (parsed[0], digest, spool)
        h, digest, spool = self._spools[(pusher, seq)]
        spool.seek(0)
        if not self._ready(h.deps):
            if causal:
                return False  # kept spooled for when its dependencies are in
            log.warning("%s: applying %s before updates it depends on (they are not available)",
                        self.name, name)
        pos = self.state.applied().get(pusher)
        expected_prev = pos[1] if pos else ""
        if h.prev != expected_prev:
            raise IntegrityError(name, "does not follow the update applied before it (fork or replay)")
        body = _Body(spool)
        # rename sources this update deletes: their file can be moved, not copied
        self._moves = {i.entry.path: i.entry.prev for i in h.items if i.entry.kind == GONE}
        seen = lambda b: saw(pusher, h.deps, b, h.unseen)  # noqa: E731
        with self.state.transaction():
            for item in h.items:
                self._check_stop()
                start = body.pos
                inline = item.entry.size if item.data == INLINE else 0
                source = None
                if item.data == INLINE:
                    source = body
                elif item.data == BLOB:
                    source = _LazyBlob(self, blob_name(pusher, seq, item.blob))
                try:
                    self._apply_entry(name, item.entry, pusher, source, report, supply=item.supply, seen=seen)
                finally:
                    if isinstance(source, _LazyBlob):
                        source.close()
                if not body.skip_to(start + inline):
                    raise IntegrityError(name, "truncated: content shorter than announced")
            self.state.set_applied(pusher, seq, digest.hex())
            self._pos[pusher] = seq
        self._spools.pop((pusher, seq))[2].close()
        self.folder.end_batch()
        return True

    def _apply_entry(self, objname: str, e: Entry, pusher: str, source, report: CycleReport, *,
                     supply: bool = False, seen=lambda b: False) -> None:
        """Reconcile one incoming entry and carry out the plan (errors are per file)."""
        try:
            safe_join(self.folder.root, e.path)
            if e.origin is not None:
                safe_join(self.folder.root, e.origin)
        except UnsafePath as exc:
            source = f" (rename source {_shown(exc.object)})" if exc.object != e.path else ""
            report.error(f"relay object {objname}: refused unsafe path {_shown(e.path)}{source}: {exc.reason}")
            return
        wanted = self.state.wanted(e.path)
        if supply and (wanted is None or wanted[0].hash != e.hash):
            return  # content someone else asked for
        if not self._scope_pull(e):
            if self.repository.may_pull() and self._flags.get(e.path, (None, None))[1] is False:
                self.state.hold(e)  # w-: not applied, and our deps must not claim we saw it
            return
        try:
            local = self._local(e.path)
            if local is not None and local.kind not in (FILE, DIR):
                log.info("%s: %s: left alone: a symbolic link or special file is there", self.name, e.path)
                self.state.hold(e)
                return
            plan = reconcile(e, self.state.base_entry(e.path), local, me=self.me, mode=self.mode, name_of=self.name_of,
                             seen=seen)
            if plan.needs_content:
                if source is None:
                    source, copy_from = None, self._local_source(e)
                    if copy_from is None:
                        self._want(e, pusher)
                        return
                else:
                    copy_from = None
            else:
                copy_from = None
            move = copy_from is not None and copy_from == e.origin and self._moves.get(e.origin) == e.hash
            self._execute(plan, e, local, source, copy_from, report, move=move)
            if wanted is not None:
                self.state.unwant(e.path)
        except NameTwin as exc:  # the file system takes it for another file here: never overwrite that
            report.error(f"relay object {objname}: {e.path}: {exc}")
            self.state.hold(e)
            if self._failures.pop(e.path, None) is not None:
                self.state.resolve(e.path)
        except OSError as exc:  # escale may not write here (permissions, read-only, full disk)
            self._could_not_write(e, pusher, exc.strerror or str(exc), report)
        except (LocalChanged, ContentMismatch) as exc:
            if isinstance(exc.__cause__, OSError):  # a local file we cannot read
                self._could_not_write(e, pusher, str(exc), report)
                return
            report.error(f"{e.path}: {exc}; will retry")
            self._want(e, pusher)
        except IntegrityError as exc:  # its own object (a blob) is damaged: ask for it again
            report.error(f"{exc}; {e.path} not written, asked again")
            self._want(e, pusher)
        except RelayObjectMissing as exc:  # its blob is gone: ask for the content again
            report.error(f"{exc}; {e.path} not written, asked again")
            self._want(e, pusher)

    def _could_not_write(self, e: Entry, supplier: str, why: str, report: CycleReport) -> None:
        report.error(f"{e.path}: cannot write it here ({why}); will retry")
        self._want(e, supplier)
        self.state.fail(e.path, why)
        self._failures[e.path] = why
        self._failed_now.add(e.path)

    def _want(self, e: Entry, supplier: str) -> None:
        self.state.want(e, supplier)
        self._reask = True  # (again): a new request, with a new counter

    def _local_source(self, e: Entry) -> str | None:
        """A local file holding exactly e's content (renames travel without content)."""
        if self._by_hash is None:
            self._by_hash = {}
            for p, b in self.state.base_rows():
                if b.kind == FILE:
                    self._by_hash.setdefault(b.hash, []).append(p)
        candidates = [e.origin] if e.origin else []
        candidates += [p for p in self._by_hash.get(e.hash, ()) if p != e.path]
        for p in candidates:
            try:
                lf = self._local(p)
            except LocalChanged:
                continue
            if lf is not None and lf.kind == FILE and lf.hash == e.hash:
                return p
        return None

    def _execute(self, plan: Plan, e: Entry, local: LocalFile | None, source, copy_from: str | None,
                 report: CycleReport, move: bool = False) -> None:
        expect = local
        for step in plan.steps:
            if isinstance(step, Displace):
                target = step.target
                if target is not None and step.spare is not None and self._local(target) is not None:
                    target = step.spare  # never over another file
                self.folder.displace(step.path, target, expect)
                if step.target is None:
                    report.deleted += e.kind == GONE
                    if e.kind == GONE:
                        report.files.append(("deleted here", step.path))
                else:
                    report.conflicts += 1
                    report.files.append(("conflict copy", target))
                expect = None
            elif isinstance(step, Fetch):
                target, target_expect = step.target, expect
                if step.target != e.path:
                    report.conflicts += 1
                    target, target_expect = self._copy_target(step), None
                    if target is None:
                        continue  # that conflict copy is already here
                if copy_from is not None and move and target == e.path:
                    self.folder.move(copy_from, self._local(copy_from), target, e, target_expect)
                elif copy_from is not None:
                    self.folder.fetch(target, e, None, target_expect, copy_from=copy_from)
                else:
                    whole = isinstance(source, _LazyBlob)
                    stream = _Stoppable(source.open() if whole else source, self._check_stop)
                    with self._bar(stream, e.size, f"recv {e.path}") as shown:
                        self.folder.fetch(target, e, shown, target_expect, whole=whole)
                self._cache_written(target, e)
                report.received += 1
                report.files.append(("received", target))
            elif isinstance(step, MakeDir):
                self.folder.make_dir(step.path, step.mode)
            elif isinstance(step, SetMode):
                self.folder.set_mode(step.path, step.mode)
            elif isinstance(step, RemoveDir):
                if self.folder.remove_dir(step.path):
                    report.deleted += 1
            elif isinstance(step, Remember):
                self.state.release(step.entry.path)
                if self._by_hash is not None and step.entry.kind == FILE:
                    self._by_hash.setdefault(step.entry.hash, []).append(step.entry.path)
                self.state.remember(step.entry)
        if plan.note and plan.note != "up to date":
            log.info("%s: %s: %s", self.name, e.path, plan.note)
        log.debug("%s: %s: %s", self.name, e.path, ", ".join(type(s).__name__ for s in plan.steps) or "nothing to do")

    def _copy_target(self, step: Fetch) -> str | None:
        """Where a conflict copy goes: its name, or its spare name if another file holds
        that (a copy never replaces a file the plan did not decide to supersede); None if
        the copy is already there."""
        for name in (step.target, step.spare):
            if name is None:
                continue
            there = self._local(name)
            if there is None:
                return name
            if there.kind == FILE and there.hash == step.entry.hash:
                return None
        raise LocalChanged(f"other files hold the names of its conflict copy ({step.target}, {step.spare}); "
                           "that version is not written")

    def _cache_written(self, relpath: str, e: Entry) -> None:
        st = self.folder.lstat(relpath)
        if st is None:
            return
        self.cache.store(relpath, st.st_size, min(st.st_mtime_ns, MAX_INT), st.st_ino, e.hash)

    def _publish_wants(self, view: RelayView) -> None:
        wants = self.state.wants_page(MAX_WANTS_PUBLISHED)  # the rest once these arrive
        key = repr(wants)
        if key == self.state.get("wants_published", "[]") and (bool(wants) == (self.me in view.requests)) \
                and not (wants and self._reask):
            return
        if wants:
            # the counter lets suppliers tell a replayed old request from a new one; it
            # follows the clock too, so a client whose state was reset does not go back
            n = max(self.state.mark("request_counter") + 1, int(time.time() * 1000))
            self.state.raise_mark("request_counter", n)
            self.store.put_json(request_name(self.me), {"v": FORMAT_VERSION, "n": n, "wants": [
                {"path": p, "hash": h, "supplier": s} for p, h, s in wants]})
        else:
            self.relay.delete(request_name(self.me))
        self.state.set("wants_published", key)

    # =========================================================================================
    # Push
    # =========================================================================================
    def upload(self, view: RelayView | None = None, report: CycleReport | None = None) -> CycleReport:
        """Publish local changes and requested contents (0.7 name), then collect acked updates."""
        report = report or CycleReport(self.name)
        view = view or list_relay(self.relay)
        self._collect(view)
        def descend(path: str) -> bool:  # a walk of millions of folders still stops on SIGTERM
            self._check_stop()
            return self.filter.may_descend(path)

        scan = self.folder.scan(self.filter.accepts_file, self.filter.accepts_dir, descend)
        self._scanned = scan  # what is sent is opened again as the very file the scan saw
        unsettled: set[str] = set()  # there but unreadable or changing: neither sent nor deleted
        blind = self.folder.unreadable  # what the scan could not even list
        for rel, why in sorted(blind.items()):
            report.error(f"{rel or 'the synced folder'}: cannot read it ({why}); what it holds is neither sent "
                         "nor deleted until it can be read")
        for lf in list(scan.values()):
            self._check_stop()
            try:
                self.folder.fill_hash(lf)
            except (FileChangedError, FileNotFoundError) as exc:
                log.info("%s: %s is changing; will send it once it settles (%s)", self.name, lf.path, exc)
                unsettled.add(lf.path)
            except OSError as exc:  # stays an error every cycle until it can be read
                report.error(f"{lf.path}: cannot read it ({exc.strerror or exc}); not sent until it can be read")
                unsettled.add(lf.path)
        self.cache.prune(scan.keys())
        self._check_folder()  # unmounted during the scan: what it missed is not deleted
        base = self.state.base()
        changes = local_changes(scan, base, me=self.me,
                                in_scope=lambda p, k: p not in unsettled and not (blind and _within(p, blind))
                                and self._scope_push(p, k))
        changes = self._guard_deletions(changes, base, report)
        supplies = self._supplies(view, scan, base)
        items = [self._item(e) for e in changes] + supplies
        if not items:
            return report
        for batch in self._batches(items, report):
            self._check_stop()
            if not self._publish(batch, report):
                report.waiting_for_room = True
                break
        return report

    def _guard_deletions(self, changes: list[Entry], base: dict[str, Entry], report: CycleReport) -> list[Entry]:
        """Hold back a scan's deletions beyond ``max delete`` until the user confirms them
        (escalectl confirm-deletes); everything else is published."""
        gone = {e.path for e in changes if e.kind == GONE}
        if not gone and not self._deletions_held:
            return changes
        confirmed = set(load_paths(self.state.get(CONFIRMED_KEY)))
        synced = sum(1 for b in base.values() if b.kind == FILE)
        kept, held = self.deletions.screen(changes, synced, confirmed & gone)
        with self.state.transaction():
            if confirmed and not confirmed <= gone:  # published, or the files came back
                self.state.set(CONFIRMED_KEY, dump_paths(list(confirmed & gone)))
            if held:
                text = dump_paths([e.path for e in held], synced=synced, limit=str(self.deletions.limit))
                if self.state.get(HELD_KEY) != text:
                    self.state.set(HELD_KEY, text)
            elif self._deletions_held:
                self.state.unset(HELD_KEY)
        self._deletions_held = bool(held)
        if held:
            files = sum(1 for e in held if is_file_deletion(e))
            report.error(f"{files} local deletion(s) held back: this scan would delete {files} of the {synced} "
                         f"synced files, more than 'max delete' = {self.deletions.limit} allows (an unmounted "
                         f"disk or a mistake?). They are not published; everything else syncs. If you meant "
                         f"it: escalectl confirm-deletes -r {self.name}; otherwise restore the files")
        return kept

    def held_deletions(self) -> list[str]:
        """Paths whose deletion is held back (read from the state; safe while a daemon runs)."""
        return load_paths(self.state.get(HELD_KEY)) if self.state is not None else []

    def _item(self, e: Entry, supply: bool = False) -> Item:
        if e.kind != FILE or (e.origin is not None and not supply):
            return Item(e, NONE, supply=supply)
        return Item(e, BLOB if e.size >= BLOB_THRESHOLD else INLINE, supply=supply)

    def _supplies(self, view: RelayView, scan: dict[str, LocalFile], base: dict[str, Entry]) -> list[Item]:
        """Contents other clients asked us for (late joiners, renames they could not apply)."""
        items: list[Item] = []
        seen: dict[str, Item] = {}
        for cid, info in view.requests.items():
            self._check_stop()
            if cid == self.me:
                continue
            req = self._read_small(info.name, info)
            if not isinstance(req, dict) or not isinstance(req.get("wants"), list):
                continue
            n = req.get("n")
            if not isinstance(n, int) or isinstance(n, bool) or self._replayed_request(info, n):
                continue
            acked = self._acked_seq(view, cid)
            for w in req["wants"]:
                if not isinstance(w, dict) or w.get("supplier") != self.me:
                    continue
                path, digest = w.get("path"), w.get("hash")
                lf = scan.get(path) if isinstance(path, str) else None
                if lf is None or lf.kind != FILE or lf.hash != digest:
                    continue
                sent = self.state.get(f"supplied:{cid}:{db_key(path)}:{digest}")
                if sent is not None and acked < int(sent):
                    continue  # already on its way
                if self.state.mark(f"answered:{cid}:{db_key(path)}:{digest}") >= n:
                    continue  # this request was answered: only a newer one asks again
                b = base.get(path)
                e = b if b is not None and b.kind == FILE and b.hash == digest else \
                    Entry(path, FILE, digest, lf.size, lf.mtime_ns, lf.mode, None, self.me)
                if path in seen:
                    seen[path].requesters.append((cid, n))
                    continue
                seen[path] = self._item(e, supply=True)
                seen[path].requesters.append((cid, n))
                items.append(seen[path])
        return items

    def _replayed_request(self, info, n: int) -> bool:
        """A request whose counter is below the newest seen from its client — or equal
        to it in another object (its client never rewrites a counter) — is an old one
        the relay replays: reported, and it costs nothing."""
        cid = info.name.split("/")[1]
        last = self.state.get(f"request:{cid}")
        if last is not None:
            seen_n, size, mtime = json.loads(last)
            if n < seen_n or (n == seen_n and (size, mtime) != (info.size, info.mtime)):
                self._problem(IntegrityError(info.name, f"an old request (counter {n}, newest seen {seen_n}) "
                                                        "replayed by the relay; ignored"))
                return True
            if n == seen_n:
                return False
        self.state.set(f"request:{cid}", json.dumps([n, info.size, info.mtime]))
        return False

    def _ack_entry(self, view: RelayView, cid: str, pusher: str) -> tuple[int, str] | None:
        """(seq, digest) of ``pusher``'s update that ``cid`` says it applied last."""
        info = view.acks.get(cid)
        ack = self._read_small(info.name, info) if info else None
        try:
            seq, digest = ack["acks"][pusher]
            return int(seq), str(digest)
        except (TypeError, KeyError, ValueError):
            return None

    def _compare_acks(self, view: RelayView) -> None:
        """Report every member that applied another content than we did under one
        (pusher, seq): the relay forked that pusher's history between us."""
        mine = self.state.applied()
        for cid in sorted(view.acks):
            if cid == self.me:
                continue
            for pusher, (seq, digest) in mine.items():
                theirs = self._ack_entry(view, cid, pusher)
                if pusher != cid and theirs is not None and theirs[0] == seq and theirs[1] != digest:
                    self._problem(IntegrityError(update_name(pusher, seq), f"{self.name_of(cid)} applied another "
                                                 f"content under this name than this client did (digest "
                                                 f"{theirs[1][:12]}…, ours {digest[:12]}…): a fork of "
                                                 f"{self.name_of(pusher)}'s history"))

    def _acked_seq(self, view: RelayView, cid: str) -> int:
        info = view.acks.get(cid)
        ack = self._read_small(info.name, info) if info else None
        try:
            return int(ack["acks"][self.me][0])
        except (TypeError, KeyError, ValueError, IndexError):
            return 0

    def _batches(self, items: list[Item], report: CycleReport):
        """Cut updates of at most ``maxpagesize`` content bytes — and, with a quota, of at
        most the room left — contentless items first. Each batch is sized just before it
        is published, so room freed meanwhile is used."""
        free = [i for i in items if i.data == NONE]
        heavy = [i for i in items if i.data != NONE]
        quota = self.tq.quota
        if quota is not None:
            most = quota - self._headroom(len(items)) - self._frame_size(1)
            for item in list(heavy):
                if self.cipher.size_on_relay(item.entry.size) > most:
                    report.error(f"{item.entry.path} ({item.entry.size} bytes) is larger than the relay quota "
                                 f"allows ({max(0, most)} of {quota} bytes usable for one file); it cannot be sent")
                    heavy.remove(item)
        while free or heavy:
            limit = self.maxpagesize
            if quota is not None:
                limit = min(limit, self._room(len(items)))
            # the header stays far below what readers accept (protocol.MAX_HEADER)
            n, head = 0, 0
            while n < len(free) and (n == 0 or head + _head_bytes(free[n]) <= MAX_UPDATE_HEADER):
                head += _head_bytes(free[n])
                n += 1
            batch, size = free[:n], 0
            free = free[n:]
            while heavy and not free:
                cost = self.cipher.size_on_relay(heavy[0].entry.size)
                if batch and size + cost + self._frame_size(len(batch) + 1) > limit:
                    break
                if batch and head + _head_bytes(heavy[0]) > MAX_UPDATE_HEADER:
                    break
                if not batch and quota is not None and cost + self._frame_size(1) > limit:
                    break  # not even one file fits now: wait for room
                head += _head_bytes(heavy[0])
                batch.append(heavy.pop(0))
                size += cost
            if not batch:
                report.waiting_for_room = True
                return
            yield batch

    def _frame_size(self, n_items: int) -> int:
        """Upper estimate of an update's own bytes beside the contents."""
        return 4096 + 600 * n_items

    def _room(self, new_entries: int) -> int:
        """Bytes an update may take now without the relay going over the quota."""
        view = list_relay(self.relay)
        used = view.used + self._others_reserved(view)
        if self.me not in view.reservations:
            used += self.store.json_size({"bytes": 10**12, "time": time.time()})
        return self.tq.quota - used - self._headroom(new_entries)

    def _horizon(self) -> tuple[dict[str, int], dict[str, tuple[str, int]]]:
        """Our pull positions as we publish them, and the versions we received but did not
        apply (wanted but not yet written, or held back by a w- flag or a symlink).

        The positions are whole, so receivers apply our update only after everything we
        had applied (causal order); the versions not applied are named path by path, so
        no change of ours claims to have seen — and so silently supersedes — one of them.
        (Capping the positions instead, as before, let a receiver apply our update before
        updates we had applied, and meet their versions as conflicts.)"""
        deps = {p: s for p, (s, _d) in self.state.applied().items()}
        unseen: dict[str, tuple[str, int]] = {}
        held = [(e.path, e.author, e.seq) for e, _s in self.state.wants().values()] + self.state.held()
        for path, author, seq in held:
            if seq and author != self.me and (path not in unseen or unseen[path][1] < seq):
                unseen[path] = (author, seq)
        return deps, unseen

    def _pullers(self) -> list[str]:
        return sorted(c for c, card in self._cards.items() if c != self.me and card.get("pulls"))

    def _publish(self, items: list[Item], report: CycleReport) -> bool:
        """Write one update (blobs first, then the update object); False if no room."""
        try:
            return self._publish_batch(items, report)
        except QuotaExceeded as exc:  # the storage itself is full (e.g. WebDAV 507)
            log.info("%s: %s; waiting for room", self.name, exc)
            seq = self.state.own_seq + 1
            if self._outbox.head(seq) is not None:
                return False  # the update itself was being written: its seq is spent, retried as is
            for info in list(self.relay.list(f"b/{self.me}/{seq}/")):
                self.relay.delete(info.name)
            self.relay.abort_incomplete(f"b/{self.me}/{seq}/")
            self.relay.abort_incomplete(update_name(self.me, seq))
            with self.state.transaction():
                self.state.clear_outbox(seq)
            return False

    def _publish_batch(self, items: list[Item], report: CycleReport) -> bool:
        if self.state.outbox():  # an update whose write failed: finish it before any other
            self._recover_outbox()
        seq = self.state.own_seq + 1
        estimate = sum(self.cipher.size_on_relay(i.entry.size) for i in items if i.data != NONE)
        estimate += self.cipher.size_on_relay(self._frame_size(len(items)))
        if not self._reserve(estimate + self._headroom(len(items))):
            log.info("%s: relay quota reached; waiting for pullers to free room", self.name)
            return False
        try:
            with self.state.transaction():
                self.state.set_outbox(seq, time.time())
            kept: list[Item] = []
            blob_no = 0
            with self._outbox.new_body(seq) as spool:
                for item in items:
                    if item.data == NONE:
                        kept.append(item)
                        continue
                    path = self._scanned.get(item.entry.path)
                    try:
                        if path is None or path.kind != FILE:
                            raise FileNotFoundError(errno.ENOENT, "not found by the scan", item.entry.path)
                        if item.data == BLOB:
                            item.blob = blob_no
                            ok = self._put_blob(blob_name(self.me, seq, blob_no), path, item.entry)
                            blob_no += 1
                        else:
                            ok = self._spool(spool, path, item.entry)
                    except FileNotFoundError:
                        ok = False  # gone since the scan: the next scan says so
                    except OSError as exc:
                        report.error(f"{item.entry.path}: cannot read it ({exc.strerror or exc}); not sent, "
                                     "will retry")
                        ok = False
                    if ok:
                        kept.append(item)
                    elif item.data == INLINE:
                        spool.truncate(sum(i.entry.size for i in kept if i.data == INLINE))
                        spool.seek(0, os.SEEK_END)
                if not kept:
                    with self.state.transaction():
                        self.state.clear_outbox(seq)
                    self._outbox.discard(seq)
                    return True
                kept = [i if i.supply else Item(replace(i.entry, seq=seq), i.data, i.blob, i.supply) for i in kept]
                deps, unseen = self._horizon()
                header = UpdateHeader(self.me, seq, self.state.own_digest, time.time(), self._pullers(),
                                      self.count, kept, deps, unseen)
                head = ObjectStore.encode_header(UPDATE_MAGIC, header.to_dict())
                body_size = spool.seek(0, os.SEEK_END)
                self._outbox.seal(seq, head, spool)  # from here on, seq is spent (escale/outbox.py)
                spool.seek(0)
                written = self.store.put_framed(update_name(self.me, seq), head, [spool], body_size)
            size = written + sum(self.cipher.size_on_relay(i.entry.size) for i in kept if i.data == BLOB)
            self._published(seq, head, header, size, kept)
            report.sent += sum(1 for i in kept if i.entry.kind == FILE and not i.supply)
            report.deleted += sum(1 for i in kept if i.entry.kind == GONE)
            report.files += [("sent" if i.entry.kind == FILE else "sent deletion", i.entry.path) for i in kept
                             if not i.supply and i.entry.kind in (FILE, GONE)]
            log.debug("%s: published update %d (%d entries, %d bytes)", self.name, seq, len(kept), size)
            return True
        finally:
            if self.tq.quota is not None:
                self.relay.delete(reservation_name(self.me))

    def _spool(self, spool: BinaryIO, path: LocalFile, e: Entry) -> bool:
        with self.folder.open_read(path) as f:
            reader = HashingReader(f, self.algorithm)
            n = copy_exactly(reader, spool, e.size)
            extra = f.read(1)
        if n != e.size or extra or reader.hexdigest() != e.hash:
            log.info("%s: %s changed while being sent; will send it next cycle", self.name, e.path)
            return False
        return True

    def _bar(self, stream: BinaryIO, total: int, desc: str):
        """A tqdm progress bar around a long transfer's stream (only in a terminal)."""
        if self.meter is not None and total >= BLOB_THRESHOLD:  # the daemon's status.json (escale/status.py)
            stream = self.meter.track(stream, total, desc)
        if not self.progress or total < BLOB_THRESHOLD:
            return contextlib.nullcontext(stream)
        from tqdm import tqdm

        return tqdm.wrapattr(stream, "read", total=total, desc=desc[-40:], unit="B", unit_scale=True,
                             unit_divisor=1024, leave=False)

    def _put_blob(self, name: str, path: LocalFile, e: Entry) -> bool:
        with self.folder.open_read(path) as f, self._bar(_Stoppable(f, self._check_stop), e.size, f"send {e.path}") as shown:
            reader = HashingReader(shown, self.algorithm)
            self.relay.put(name, self.cipher.encrypt(name, reader, e.size), size=self.cipher.size_on_relay(e.size))
        if reader.count != e.size or reader.hexdigest() != e.hash:
            self.relay.delete(name)
            log.info("%s: %s changed while being sent; will send it next cycle", self.name, e.path)
            return False
        return True

    def _headroom(self, new_entries: int) -> int:
        """Room the quota must keep beyond an update: the snapshot we will rewrite before
        collecting it (old and new copies coexist for a moment) and every member's small
        objects, so the relay stays under the quota at every instant."""
        if self.tq.quota is None:
            return 0
        entries = self.state.base_count() + new_entries
        snapshot = self.cipher.size_on_relay(1024 + SNAPSHOT_BYTES_PER_ENTRY * entries)
        return snapshot + SMALL_OBJECTS_ROOM * max(1, len(self._cards))

    def _reserve(self, size: int) -> bool:
        """Claim room under the quota without a lock.

        Write our reservation, then list: whoever lists after both reservations exist
        sees both, so two pushers can never both take the last room.
        """
        quota = self.tq.quota
        if quota is None:
            return True
        for attempt in (0, 1):
            view = list_relay(self.relay)
            mine = view.reservations.get(self.me)
            used = view.used + self._others_reserved(view)
            claim = self.store.json_size({"bytes": size, "time": time.time()})
            if mine is None:
                used += claim
            if used + size > quota:
                if mine is not None:
                    self.relay.delete(reservation_name(self.me))
                return False
            if attempt == 0:
                self.store.put_json(reservation_name(self.me), {"bytes": size, "time": time.time()})
        return True

    def _others_reserved(self, view: RelayView) -> int:
        total = 0
        for cid, info in view.reservations.items():
            if cid == self.me:
                continue
            r = self._read_small(info.name, info)
            try:
                if time.time() - float(r["time"]) < RESERVATION_TTL:
                    total += int(r["bytes"])
            except (TypeError, KeyError, ValueError):
                continue
        return total

    def _published(self, seq: int, head: bytes, header: UpdateHeader, size: int, items: list[Item]) -> None:
        """Record update ``seq`` as on the relay (and drop its local copy)."""
        digest = hashlib.sha256(head).hexdigest()
        with self.state.transaction():
            for item in items:
                if not item.supply:
                    self.state.remember(item.entry)
                for cid, n in item.requesters:  # answered: not again until that client acks it,
                    self.state.set(f"supplied:{cid}:{db_key(item.entry.path)}:{item.entry.hash}", str(seq))
                    self.state.raise_mark(f"answered:{cid}:{db_key(item.entry.path)}:{item.entry.hash}", n)  # nor asks anew
            self.state.add_published(Published(seq, digest, header.pullers, header.count, size))
            self.state.clear_outbox(seq)
        self._outbox.discard(seq)

    def _recover_outbox(self) -> None:
        """Finish an update whose write failed or was interrupted — with exactly the bytes
        sealed before it left (never another update under its seq: a relay that kept
        the first attempt would otherwise fork our history) — or roll back one that never
        left."""
        for seq in sorted(self.state.outbox()):
            name = update_name(self.me, seq)
            head = self._outbox.head(seq)
            if seq > self.state.own_seq and head is not None:
                h = UpdateHeader.parse(name, json.loads(head[len(UPDATE_MAGIC) + 4:]), self.me, seq)
                with self._outbox.body(seq) as body:
                    body_size = body.seek(0, os.SEEK_END)
                    body.seek(0)
                    written = self.store.put_framed(name, head, [body], body_size)
                size = written + sum(i.size for i in self.relay.list(f"b/{self.me}/{seq}/"))
                self._published(seq, head, h, size, h.items)
                log.info("%s: completed update %d interrupted by a crash or a failed write (sent again as "
                         "sealed)", self.name, seq)
            else:
                for info in list(self.relay.list(f"b/{self.me}/{seq}/")):
                    self.relay.delete(info.name)
                with self.state.transaction():
                    self.state.clear_outbox(seq)
                self._outbox.discard(seq)
                log.info("%s: rolled back update %d interrupted before it was sent", self.name, seq)

    # -- collection of acknowledged updates ---------------------------------------------------
    def _collect(self, view: RelayView) -> int:
        """Delete our updates every required puller acknowledged (snapshot first)."""
        written = int(self.state.get("snapshot_seq", "0"))
        if written:
            info = view.snapshots.get(self.me)
            if info is None or self._snapshot_seq(info) < written:
                self._problem(IntegrityError(snapshot_name(self.me), "missing or older than the one written "
                                             "(removed or rolled back by the relay); writing it again"))
                self._write_snapshot()
        published = self.state.published()
        if not published:
            return 0
        acks: dict[str, int] = {}
        ours = {p.seq: p.digest for p in published}
        for cid in view.acks:
            if cid != self.me:
                acked, mark = self._acked_seq(view, cid), self.state.mark(f"ack:{cid}")
                theirs = self._ack_entry(view, cid, self.me)
                if theirs is not None and theirs[0] in ours and theirs[1] != ours[theirs[0]]:
                    self._problem(IntegrityError(ack_name(cid), f"{self.name_of(cid)} applied our update "
                                                 f"{theirs[0]} with another content (digest {theirs[1][:12]}…, "
                                                 f"ours {ours[theirs[0]][:12]}…): a fork of this client's history "
                                                 "(a relay serving a version we never finished, or our state "
                                                 "restored from a backup); not collected"))
                    acks[cid] = theirs[0] - 1
                    continue
                if acked < mark:
                    self._problem(IntegrityError(ack_name(cid), f"went back from seq {mark} to {acked}: an old "
                                                                "acknowledgement replayed by the relay"))
                acks[cid] = max(acked, mark)
                self.state.raise_mark(f"ack:{cid}", acked)
        mine = view.updates.get(self.me, {})
        vanished = [p for p in published if p.seq not in mine]
        if vanished:
            self._problem(IntegrityError(update_name(self.me, vanished[0].seq), "removed from the relay by "
                                         "someone else before every puller had it; writing a fresh snapshot"))
            self._write_snapshot()
            with self.state.transaction():
                for p in vanished:
                    self.state.drop_published(p.seq)
            published = [p for p in published if p.seq in mine]
        members = set(view.members)
        done = []
        for p in published:
            acked_by = {c for c, s in acks.items() if s >= p.seq}
            if p.count:
                ok = len(acked_by) >= p.count
            else:
                required = {c for c in p.pullers if c in members}
                ok = required <= acked_by and len(acked_by) >= 1
            if ok:
                done.append(p)
        if not done:
            return 0
        if max(p.seq for p in done) > int(self.state.get("snapshot_seq", "0")):
            self._write_snapshot()
        for p in done:  # the update first: a reader never finds an update without its blobs
            self.relay.delete(update_name(self.me, p.seq))
            for info in view.blobs.get((self.me, p.seq), []):
                self.relay.delete(info.name)
            with self.state.transaction():
                self.state.drop_published(p.seq)
        log.info("%s: collected %d acknowledged update(s)", self.name, len(done))
        return len(done)

    def _write_snapshot(self) -> None:
        seq = self.state.own_seq
        deps, unseen = self._horizon()
        base = self.state.base()
        with tempfile.TemporaryFile(dir=self.state_dir, prefix="snapshot-") as body:
            count, size, sha256 = Snapshot.encode_entries((base[p] for p in sorted(base)), body)
            del base
            snap = Snapshot(self.me, seq, self.state.own_digest, deps, count, size, sha256, unseen)
            head = ObjectStore.encode_header(SNAPSHOT_MAGIC, snap.to_dict())
            body.seek(0)
            self.store.put_framed(snapshot_name(self.me), head, [body], size)
        info = self.relay.stat(snapshot_name(self.me))
        with self.state.transaction():
            self.state.set("snapshot_seq", str(seq))
            if info is not None:  # so we never download our own snapshot to learn its seq
                self.state.set_seen(info.name, info.size, info.mtime, {"seq": seq})


class _Body:
    """The update body after the header, read front to back, tracking the offset."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.pos += len(data)
        return data

    def skip_to(self, offset: int) -> bool:
        if offset > self.pos:
            self.pos += copy_exactly(self.stream, None, offset - self.pos)
        return self.pos >= offset


class _Stoppable:
    """A stream whose every read first checks for SIGTERM: a long transfer stops within
    one block (the writer's temporary file is removed by its own clean-up)."""

    def __init__(self, stream: BinaryIO, check: Callable[[], None]):
        self.stream, self.check = stream, check

    def read(self, n: int = -1) -> bytes:
        self.check()
        return self.stream.read(n)

    def close(self) -> None:
        self.stream.close()


class _LazyBlob:
    """A blob object opened only if the plan needs its content."""

    def __init__(self, manager: Manager, name: str):
        self.manager, self.name, self.stream = manager, name, None

    def open(self) -> BinaryIO:
        raw = self.manager.relay.get(self.name)
        self.stream = self.manager.cipher.decrypt(self.name, raw)
        return self.stream

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


def _within(path: str, places: dict[str, str]) -> bool:
    """Is ``path`` one of ``places`` or inside one ("" is the whole folder)?"""
    while True:
        if path in places:
            return True
        if not path:
            return False
        path = path.rpartition("/")[0]


def _head_bytes(item: Item) -> int:
    """An item's bytes in an update header (with room for the seq filled in later)."""
    return len(json.dumps(item.to_dict(), separators=(",", ":"))) + 32


def _shown(path: object) -> str:
    """A relay-supplied path for a message: quoted, at most 200 characters."""
    return repr(path) if not isinstance(path, str) or len(path) <= 200 else f"{path[:200]!r}…"


def _default_client_name(section: str) -> str:
    import socket

    host = socket.gethostname()
    return section if host in ("", "localhost") else host


def _default_state_root() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_path("escale"))


# 0.7 had IndexManager for index-based relays; this protocol is always indexed.
IndexManager = Manager
