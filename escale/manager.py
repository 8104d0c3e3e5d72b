"""The Manager: one repository's sync cycle — pull, then push, then collect.

A façade over the parts in :mod:`escale.sync` (docs/architecture.md): it opens the
state and the relay, builds the shared :class:`~escale.sync.context.Repo` and the
parts around it, and runs cycles. A cycle lists the relay once, applies every
pusher's new updates in causal order (:mod:`escale.sync.pull`, which hands each entry
to :mod:`escale.sync.apply`), acknowledges them, collects our acknowledged updates
(:mod:`escale.sync.collect`) and publishes local changes as new updates within the
quota (:mod:`escale.sync.push`, :mod:`escale.sync.quota`). The library API is kept:
``Manager(LocalMount, repository=..., address=...).run()``, ``Manager.from_config``,
``cycle``, ``download``, ``upload``, ``status``, ``forget``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .access import AccessController
from .checksum import ChecksumCache
from .deletions import DEFAULT_MAX_DELETE, HELD_KEY, DeleteLimit, DeletionGuard
from .encryption import Cipher, Plain, StreamCipher, load_secret
from .errors import ConfigError, FolderUnavailable, IntegrityError, QuotaExceeded, RelayError, Terminated
from .filters import Filter
from .folder import Folder
from .junk import Junk, drop_strangers
from .marker import FolderIdentity, record_place
from .outbox import Outbox
from .pacing import TimeQuotaController
from .protocol import ObjectStore, RelayView, ack_name, list_relay, member_name, request_name, \
    reservation_name, snapshot_name
from .relay import Relay, backend_for, parse_address
from .relay.split import Splitting
from .state import InstanceLock, State
from .watch import DEFAULT_FULL_SCAN, FolderWatcher
from .sync.acks import Acks
from .sync.apply import Applier
from .sync.collect import Collector
from .sync.context import BLOB_THRESHOLD, Repo  # noqa: F401 (BLOB_THRESHOLD: kept importable from here)
from .sync.report import CycleReport
from .sync.membership import Membership, MemberStatus, RepositoryStatus  # noqa: F401 (MemberStatus: kept importable)
from .sync.moves import Moves
from .sync.pull import Puller
from .sync.interrupted import ended_cleanly, sweep_due, sweep_needed, swept
from .sync.push import Pusher
from .sync.quota import Quota

log = logging.getLogger(__name__)

DEFAULT_MAXPAGESIZE = 200 * 10**6
CONNECT_VIEW_SECONDS = 10.0  #: the first cycle takes connect's listing if this recent and nothing was written


class _Shared:
    """An attribute of the Manager that lives in its :class:`Repo` (read and written
    there, so the parts see what the library user sets)."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, manager, owner=None):
        if manager is None:
            return self
        return getattr(manager.ctx, self.name)

    def __set__(self, manager, value) -> None:
        setattr(manager.ctx, self.name, value)


class Manager:
    """Sync one local folder with one relay (escale 0.7's constructor, still accepted).

    ``Manager(LocalMount, repository='/path/to/folder', address='file:///relay',
    passphrase='/path/to/passphrase').run()``; without a passphrase, ``encryption='off'``
    must say that plaintext is meant (0.7's plaintext default is refused).
    """

    # the repository's shared context, as attributes (escale 0.7 and the CLI use some)
    name = _Shared()
    relay = _Shared()
    repository = _Shared()
    filter = _Shared()
    tq = _Shared()
    cipher = _Shared()
    store = _Shared()
    clientname = _Shared()
    mode = _Shared()
    algorithm = _Shared()
    count = _Shared()
    maxpagesize = _Shared()
    stop = _Shared()
    progress = _Shared()
    meter = _Shared()
    state = _Shared()
    state_dir = _Shared()
    folder = _Shared()
    cache = _Shared()
    me = _Shared()
    repository_id = _Shared()

    def __init__(self, relay, repository=None, address=None, directory=None, encryption=None,
                 timestamp=True, refresh=True, clientname=None, filetype=(), include=None, exclude=None,
                 tq_controller=None, count=None, checksum=True, checksum_cache=None, includedirectory=None,
                 excludedirectory=None, waitonerror=(), verbosity=1, *, mode=None, quota=None,
                 maxpagesize=None, state_dir=None, trash_retention_days=30.0, name=None, push_only=False,
                 pull_only=False, passphrase=None, padding=True, strict_permissions=True, config_path=None,
                 identity: FolderIdentity | None = None, max_delete: DeleteLimit | str | None = None,
                 repository_id=None, full_scan=None, **relay_args):
        if isinstance(repository, AccessController):
            access, self._access_args = repository, None
        else:
            if repository is None:
                raise ConfigError("no local folder given (repository=...)", option="local path")
            self._access_args = dict(repository=name or str(repository), path=repository, mode=mode,
                                     push_only=push_only, pull_only=pull_only)
            access = AccessController(persistent=None, **self._access_args)
        name = name or getattr(access, "repository", None) or str(access.path)
        relay = self._make_relay(relay, address, directory, relay_args)
        # the state folder follows the synced folder's marker (escale.marker), found at open
        where = identity or FolderIdentity(
            Path(access.path), relay.address, _default_state_root() if not state_dir else None,
            Path(state_dir) if state_dir else None, repository=name, config_path=config_path)
        # encryption: a Cipher object (0.7 style), or a name with a passphrase; the key is
        # derived at connect time, with the KDF parameters from the repository header
        if isinstance(encryption, Cipher):
            cipher, enc_name = encryption, encryption.name
        else:
            cipher = Plain()
            enc_name = encryption or ("aes256gcm" if passphrase else None)
        if enc_name is None:  # secure by default, as a configuration file: plaintext is asked for
            raise ConfigError("no passphrase: give passphrase= (a file, or the text), or encryption='off' to "
                              "sync in plaintext (the relay then sees file names and contents)", section=name,
                              option="passphrase")
        if enc_name != "off" and not isinstance(encryption, Cipher) and not passphrase:
            raise ConfigError(f"encryption = {enc_name} needs a passphrase", section=name,
                              option="passphrase")
        tq = tq_controller or TimeQuotaController(refresh=refresh, quota=quota)
        if quota is not None and tq_controller is not None:
            tq.quota = quota
        self.ctx = Repo(
            name=name, relay=relay, repository=access, where=where,
            filter=Filter(include or [], exclude or [], list(filetype or []), includedirectory or [],
                          excludedirectory or []),
            tq=tq, cipher=cipher, clientname=clientname or _default_client_name(name), mode=access.mode,
            algorithm="sha256" if checksum in (True, None) else str(checksum), enc_name=enc_name, count=count,
            maxpagesize=maxpagesize or DEFAULT_MAXPAGESIZE, passphrase=passphrase, padding=padding,
            strict=strict_permissions, config_path=config_path, pinned_id=repository_id,
            state_dir=Path(state_dir) if state_dir else None)
        self.trash_retention_days = trash_retention_days
        self.verbosity = verbosity
        self._checksum_cache_opt = checksum_cache
        self._lock: InstanceLock | None = None
        self._connect_view: tuple[RelayView, float] | None = None  # connect's listing, for the first cycle
        self.wake = threading.Event()  # set by the folder watcher: something changed here
        self.full_scan = DEFAULT_FULL_SCAN if full_scan is None else full_scan
        self.observers: list[Callable[[CycleReport], None]] = []  # told of each finished cycle
        # the parts of a cycle, each over the shared context
        self.members = Membership(self.ctx)
        self.acks = Acks(self.ctx)
        self.applier = Applier(self.ctx)
        self.puller = Puller(self.ctx, self.acks, self.applier)
        self.collector = Collector(self.ctx, self.acks, self.puller)
        self.quota = Quota(self.ctx)
        self.moves = Moves(self.ctx, self.members)
        self.pusher = Pusher(self.ctx, self.members, self.acks, self.quota, DeletionGuard(
            max_delete if isinstance(max_delete, DeleteLimit) else DeleteLimit.parse(max_delete or DEFAULT_MAX_DELETE)))

    @property
    def deletions(self) -> DeletionGuard:
        return self.pusher.deletions

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
                   refresh=cfg.refresh, full_scan=cfg.full_scan, clientname=cfg.client_name, filetype=cfg.filetype,
                   include=cfg.include, exclude=cfg.exclude, count=cfg.puller_count, checksum=cfg.checksum,
                   checksum_cache=cfg.checksum_cache, includedirectory=cfg.include_directory,
                   excludedirectory=cfg.exclude_directory, quota=cfg.quota, maxpagesize=cfg.maxpagesize,
                   identity=cfg.identity(), max_delete=cfg.max_delete, trash_retention_days=cfg.trash_retention_days,
                   verbosity=cfg.verbosity, user=cfg.user, password=cfg.password, **cfg.options)._with_section(cfg)

    def _with_section(self, cfg) -> "Manager":
        self.ctx.section = cfg  # a relay move reads the file again and records itself in it (sync/moves.py)
        return self

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
        self.ctx.state_dir, self.ctx.marker = self.ctx.where.resolve()
        self.ctx.outbox = Outbox(self.ctx.state_dir)
        self.ctx.relay.use_state_dir(self.ctx.state_dir, self.ctx.name)  # e.g. where a Drive token lives

    def open(self) -> None:
        ctx = self.ctx
        self._find_state()
        self._lock = InstanceLock(ctx.state_dir, ctx.name)
        self._lock.acquire()
        try:
            ctx.state = State(ctx.state_dir)
            ctx.outbox.tighten()
            record_place(ctx.state, ctx.repository.path, ctx.marker)
            self.pusher.deletions_held = ctx.state.get(HELD_KEY) is not None
            ctx.where.remember(ctx.marker)
            if self._access_args is not None:  # the per-file r/w table lives with the state
                ctx.repository.close()
                ctx.repository = AccessController(persistent=ctx.state_dir / "access.db", **self._access_args)
            self._identity()
            opt = self._checksum_cache_opt
            cache_path = None
            if opt in (True, None):
                cache_path = ctx.state_dir / "checksums.sqlite"
            elif opt:
                cache_path = Path(opt)
            ctx.cache = ChecksumCache(cache_path, ctx.algorithm)
            root = Path(ctx.repository.path)
            ctx.folder = Folder(root, ctx.algorithm, ctx.cache.digest_stream, known=ctx.cache.lookup)
            if sweep_needed(ctx.state):  # only a killed run leaves temporaries: no second walk otherwise
                ctx.folder.remove_temporaries()
            if ctx.enc_name == "off":
                log.warning("%s: encryption is off: the relay sees file names and contents", ctx.name)
        except BaseException:
            self.close()
            raise

    def _identity(self) -> None:
        """Our client id and signing key (pinned like anyone's), and the secret to open
        an encrypted repository with."""
        ctx = self.ctx
        ctx.me = ctx.state.client_id()
        signer = ctx.state.signing_key()
        ctx.state.pin(ctx.me, signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        ctx.store = ObjectStore(ctx.relay, ctx.cipher, signer, ctx.state.pinned)
        if ctx.enc_name != "off" and not isinstance(ctx.cipher, StreamCipher) and ctx.secret is None:
            ctx.secret = load_secret(ctx.passphrase, repository=ctx.name, strict=ctx.strict,
                                     config_path=ctx.config_path)

    def connect(self) -> None:
        """Reach the relay: header, our card, unfinished publications; one listing tells what is
        there (no request each), and the first cycle uses it when connecting wrote nothing."""
        ctx = self.ctx
        self._connect_view = None
        ctx.relay.open()
        view = list_relay(ctx.relay)
        if self.moves.instead_of_header(view):  # the repository moved: on to the new relay
            ctx.relay.open()
            view = list_relay(ctx.relay)
        wrote = self.members.ensure_header(view) or bool(ctx.state.outbox())
        if ctx.me in view.members:  # kept up to date; a new card waits for the cycle's name check
            wrote = self.members.ensure_card(present=True) or wrote
        self.pusher.recover_outbox()
        if ctx.me in view.reservations:  # a publication's reservation left by a crash
            wrote = ctx.relay.delete(reservation_name(ctx.me)) or True
        # our interrupted uploads (ours alone), after an unclean end or daily: 7 listings on S3
        if sweep_due(ctx.state):
            me = ctx.me
            removed = sum(ctx.relay.abort_incomplete(prefix) for prefix in (f"u/{me}/", f"b/{me}/", ack_name(me),
                          snapshot_name(me), member_name(me), request_name(me), reservation_name(me)))
            swept(ctx.state)
            wrote = wrote or removed > 0
            if removed:
                log.info("%s: removed %d interrupted upload(s) from the relay", ctx.name, removed)
        if not wrote:
            self._connect_view = (view, time.monotonic())

    def _listing(self) -> RelayView:
        """A fresh listing, or connect's (unwritten-after, at most CONNECT_VIEW_SECONDS old)."""
        kept, self._connect_view = self._connect_view, None
        if kept is not None and time.monotonic() - kept[1] <= CONNECT_VIEW_SECONDS:
            return kept[0]
        return list_relay(self.ctx.relay)

    def close(self) -> None:
        ctx = self.ctx
        owned = self._access_args is not None
        if ctx.state is not None:
            with contextlib.suppress(Exception):
                ended_cleanly(ctx.state)
        for closer in (getattr(ctx.cache, "close", None), getattr(ctx.state, "close", None),
                       ctx.relay.close, ctx.repository.close if owned else None):
            if closer:
                try:
                    closer()
                except Exception:  # closing must not hide the real error
                    log.debug("error while closing", exc_info=True)
        ctx.cache = ctx.state = None
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
        watcher = None if once else FolderWatcher(self.folder.root, self.wake, full_scan=self.full_scan)
        if watcher is not None and watcher.start():  # it tells each cycle's scan which folders changed
            self.pusher.scanner.watcher = watcher
        try:
            last_relay_error: str | None = None
            while True:
                report = CycleReport(self.ctx.name)
                try:
                    if not connected:
                        self.connect()
                        connected = True
                    self.cycle(report)
                except RelayError as exc:
                    report.relay_error = str(exc)
                    # the same failure again (an outage): said once, then at DEBUG (status and 'on error' tell it)
                    level = logging.DEBUG if report.relay_error == last_relay_error else logging.ERROR
                    log.log(level, "%s: relay failed: %s%s", self.ctx.name, exc, "" if once else "; retrying next cycle")
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
                    log.warning("%s: the relay is full (%s); waiting for pullers to free room", self.ctx.name, exc)
                    report.waiting_for_room = True
                except Exception as exc:  # a bug or a surprise: keep the daemon alive, retry
                    log.exception("%s: unexpected error%s", self.ctx.name, "" if once else "; retrying next cycle")
                    report.error(f"unexpected error: {exc!r}")
                    connected = False  # reconnecting also finishes or rolls back a publication
                if report.relay_error is None or report.relay_error != last_relay_error:
                    if last_relay_error is not None and report.relay_error is None:
                        log.info("%s: the relay answers again", self.ctx.name)
                    last_relay_error = report.relay_error
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
                self.pusher.scanner.watcher = None
            if opened:
                self.close()

    @contextlib.contextmanager
    def inspecting(self):
        """Read-only access for escalectl, safe while a daemon runs on the same state:
        our identity and pins, the relay, the key (from an existing header only)."""
        ctx = self.ctx
        own_state = ctx.state is None
        if own_state:
            self._find_state()
            ctx.state = State(ctx.state_dir)
            self._identity()
        try:
            ctx.relay.open()
            view = list_relay(ctx.relay)
            if view.header is None:
                raise RelayError(f"no escale repository on {ctx.relay.address} yet")
            self.members.ensure_header(view)
            yield view
        finally:
            ctx.relay.close()
            if own_state:
                ctx.state.close()
                ctx.state = None

    def forget(self, client_name: str) -> list[str]:
        """Remove the member card of a client that will not come back, so pushers stop
        waiting for its acknowledgements. If it does come back it re-registers and
        catches up from snapshots. Returns the ids removed."""
        with self.inspecting() as view:
            return self.members.forget(view, client_name)

    def status(self) -> RepositoryStatus:
        """What the relay and our state say, without syncing (safe while a daemon runs)."""
        with self.inspecting() as view:
            return self.members.status(view, len(self.held_deletions()), self.acks.to_take)

    def held_deletions(self) -> list[str]:
        """Paths whose deletion is held back (read from the state; safe while a daemon runs)."""
        return self.pusher.held_deletions()

    def name_of(self, cid: str) -> str:
        return self.ctx.name_of(cid)

    def check_stop(self) -> None:
        """Raise Terminated once ``stop`` is set (escale/check.py polls it during long reads)."""
        self.ctx.check_stop()

    # -- the cycle -------------------------------------------------------------------------
    def cycle(self, report: CycleReport | None = None) -> CycleReport:
        ctx = self.ctx
        report = report or CycleReport(ctx.name)
        ctx.check_folder()
        view = self._listing()
        ctx.problems = []
        ctx.junk = Junk()
        if view.notices and self.moves.follow(view):  # the repository moved (escalectl migrate)
            self.connect()
            view = list_relay(ctx.relay)
        self.members.read_cards(view, repair=False)
        drop_strangers(view, ctx.known, ctx.junk)
        joining = ctx.me not in view.members
        if joining:  # joining (refused under a taken name), or removed by hand
            self.members.refuse_name_clash()
            self.members.ensure_card(present=False)
        ctx.load_flags()
        pulled = False
        if ctx.repository.may_pull():
            applied = ctx.state.applied()
            self.download(view, report)
            pulled = report.did_work or bool(report.errors) or ctx.state.applied() != applied
        else:
            self.acks.write_ack(present=ctx.me in view.acks)  # a heartbeat only
        if ctx.repository.may_push():
            if pulled or joining or self.puller.wrote:  # else the pull's listing is still ours (idle: one)
                view = list_relay(ctx.relay)
                if set(view.members) - set(ctx.cards):  # a member joined since the first listing
                    self.members.read_cards(view, repair=False)
                drop_strangers(view, ctx.known, ctx.junk)
            self.upload(view, report)
        ctx.folder.purge_trash(self.trash_retention_days)
        for problem in ctx.problems:
            report.errors.append(problem)
        junk = ctx.junk.summary()
        if junk:
            report.error(junk)
        return report

    def download(self, view: RelayView | None = None, report: CycleReport | None = None) -> CycleReport:
        """Apply every pusher's new updates in causal order (0.7 name), then acknowledge them."""
        self._connect_view = None  # what it writes makes connect's listing old
        report = report or CycleReport(self.ctx.name)
        return self.puller.pull(view or list_relay(self.ctx.relay), report)

    def upload(self, view: RelayView | None = None, report: CycleReport | None = None) -> CycleReport:
        """Collect acked updates, then publish local changes and requested contents (0.7 name)."""
        self._connect_view = None
        report = report or CycleReport(self.ctx.name)
        view = view or list_relay(self.ctx.relay)
        self.collector.collect(view)
        return self.pusher.push(view, report)


def _default_client_name(section: str) -> str:
    import socket

    host = socket.gethostname()
    return section if host in ("", "localhost") else host


def _default_state_root() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_path("escale"))


# 0.7 had IndexManager for index-based relays; this protocol is always indexed.
IndexManager = Manager
