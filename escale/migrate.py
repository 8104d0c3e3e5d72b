"""Move a repository to another relay (``escalectl migrate``), and follow such a move.

The migrating client copies every object **as it is** (ciphertext and signatures
untouched: nothing is decrypted or re-encrypted), each through a spool file and
checked on the destination (listed size, and the SHA-256 of its bytes read back).
Other clients keep running: the source is listed again and what appeared, changed or
was collected meanwhile is carried over, until a listing shows nothing new. Then:

1. the repository header is copied last (a client whose configuration already names
   the destination finds no repository there until every other object is in place);
2. a **notice** ``n/<cid>`` goes on the old relay: encrypted and signed like every
   object, naming the new address without credentials (docs/format.md);
3. the copied objects that have not changed since are deleted from the old relay,
   which keeps the notice (objects written after the last listing are carried over by
   their writers, each of its own, when they read the notice: the migrating client
   never writes on the new relay after the notice, where followers already write);
4. this client's configuration gets the new ``relay address`` (rewritten in place,
   comments kept) and its state folder an alias for it (the state follows the folder
   *and* the relay address: escale.marker).

Each copied object is recorded in a journal in the state folder, so an interrupted
migration resumes where it stopped (``kill -9`` included): an object is journalled
only once it was verified on the destination.

Two members migrating at once: each stops as soon as it sees another's notice on the
old relay (before copying, after each listing, between copies, before and after writing
its own), removing nothing; docs/protocol.md says what is left of that race.

Other clients read the notice at the start of a cycle (:mod:`escale.sync.moves`). One
whose own configuration reaches the new address (same credentials, or the address
holds them) checks that it holds the same repository header it pinned, carries over
its own objects still on the old relay (it is their only writer), records the move
(configuration, state alias) and syncs on there. One that cannot stops syncing that
repository with a message saying what to change (exit 2), every cycle, until its
configuration reaches the new relay.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from .errors import ConfigError, IntegrityError, QuotaExceeded, RelayError, RelayObjectMissing
from .protocol import HEADER_NAME, Notice, notice_name, parse_notice, signer_of
from .relay import redact
from .relay.address import split_network_address
from .relay.base import ObjectInfo, Relay
from .state import InstanceLock
from .stream import BLOCK, HashingReader

log = logging.getLogger(__name__)

#: a source still changing after this many listings is migrated as of the last one
MAX_PASSES = 50
SPOOL_IN_MEMORY = 1 << 20


@dataclass
class MigrationReport:
    source: str
    destination: str
    copied: int = 0
    bytes: int = 0
    #: objects found already copied (a resumed migration)
    present: int = 0
    #: objects collected on the source during the copy, removed from the destination
    dropped: int = 0
    passes: int = 0
    removed_from_source: int = 0
    dry_run: bool = False
    #: (names, bytes) a dry run would copy
    would_copy: list[str] = field(default_factory=list)
    config_rewritten: bool = False


def public_address(address: str) -> str:
    """The address without any ``user:password@``: what a notice may name."""
    if "://" not in address or address.startswith("file://"):
        return address
    a = split_network_address(address)
    scheme = address.split("://", 1)[0]
    host = f"[{a.host}]" if ":" in a.host else a.host
    port = f":{a.port}" if a.port else ""
    return f"{scheme}://{host}{port}{a.path}"


# ---------------------------------------------------------------------------------------
# the journal of a migration (resume after an interruption)
# ---------------------------------------------------------------------------------------
class Journal:
    """name -> (source version, size, sha256) of each object verified on the
    destination; one JSON line per event, fsynced, so a kill loses at most the object
    in progress (copied again)."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, tuple[str, int, str]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if rec.get("gone"):
                    self.done.pop(rec["name"], None)
                else:
                    self.done[rec["name"]] = (rec["version"], rec["size"], rec["sha256"])
        self._f = None

    def _write(self, rec: dict) -> None:
        if self._f is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._f = os.fdopen(fd, "a")
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def record(self, name: str, version: str, size: int, sha256: str) -> None:
        self.done[name] = (version, size, sha256)
        self._write({"name": name, "version": version, "size": size, "sha256": sha256})

    def forget(self, name: str) -> None:
        self.done.pop(name, None)
        self._write({"name": name, "gone": True})

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


# ---------------------------------------------------------------------------------------
# copying one object
# ---------------------------------------------------------------------------------------
def copy_object(src: Relay, dst: Relay, name: str, spool_dir: str | os.PathLike | None = None) -> tuple[int, str]:
    """Copy one object as it is and check it on the destination: (size, sha256).

    Raises RelayObjectMissing if it vanished from the source, IntegrityError (naming
    it) if the destination does not give back the same bytes."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=spool_dir) as spool:
        with src.get(name) as stream:
            reader = HashingReader(stream, "sha256")
            while data := reader.read(BLOCK):
                spool.write(data)
        size, digest = spool.tell(), reader.hexdigest()
        spool.seek(0)
        dst.put(name, spool, size=size)
    verify_copy(dst, name, size, digest)
    return size, digest


def verify_copy(dst: Relay, name: str, size: int, digest: str) -> None:
    info = dst.stat(name)
    if info is None or info.size != size:
        raise IntegrityError(name, f"copy on {redact(dst.address)} has "
                                   f"{'no object' if info is None else f'{info.size} bytes'}, expected {size}")
    h = hashlib.sha256()
    with dst.get(name) as stream:
        while data := stream.read(BLOCK):
            h.update(data)
    if h.hexdigest() != digest:
        raise IntegrityError(name, f"copy on {redact(dst.address)} reads back with another digest")


def _read_all(relay: Relay, name: str) -> bytes:
    with relay.get(name) as s:
        return s.read()


# ---------------------------------------------------------------------------------------
# escalectl migrate
# ---------------------------------------------------------------------------------------
def migrate(manager, dst: Relay, *, quota: int | None = None, dry_run: bool = False,
            stop: Callable[[], None] = lambda: None, max_passes: int = MAX_PASSES) -> MigrationReport:
    """Move the repository of ``manager`` (a Manager of this client's section, not
    running) to the relay ``dst`` (not opened; ``quota``: the destination's 'disk
    quota'); see the module doc. Idempotent: run it again after an interruption. The
    caller then records the move (:func:`escale.config.relocate.record_move`)."""
    target = dst.address
    report = MigrationReport(manager.relay.address, public_address(target), dry_run=dry_run)
    if public_address(target).rstrip("/") == public_address(manager.relay.address).rstrip("/"):
        raise ConfigError(f"the repository is already on {public_address(target)}")
    with manager.relay as src:
        if src.stat(HEADER_NAME) is None and any(True for _ in src.list("n/")):
            raise RelayError(f"the repository already moved away from {public_address(src.address)} (a notice is "
                             "there): run 'escale --once' to follow it (this client's configuration and state "
                             "then name the new relay)")
    with manager.inspecting(), _migrating(manager):
        src = manager.relay
        _refuse_if_moved_meanwhile(manager, target, "before copying")
        header = _read_all(src, HEADER_NAME)
        dst.open()
        try:
            journal_path = Path(manager.state_dir) / f"migrate-{hashlib.sha256(public_address(target).encode()).hexdigest()[:12]}.jsonl"
            journal = Journal(journal_path)
            try:
                _check_destination(dst, header, journal, target)
                if dry_run:
                    _plan(src, dst, journal, report)
                    return report
                _check_room(src, dst, journal, quota, target)
                if dst.stat(HEADER_NAME) is None:  # no client uses it yet: we are its only writer
                    dst.abort_incomplete("")
                with tempfile.TemporaryDirectory(prefix="escale-migrate-", dir=manager.state_dir) as spool:
                    if _noticed(manager, target) and dst.stat(HEADER_NAME) is not None:
                        log.info("%s: the notice is already written (an interrupted migration): clearing the "
                                 "old relay", manager.name)  # followers may write on the new relay: no copy
                    else:
                        _converge(src, dst, journal, report, spool, stop, max_passes,
                                  watch=_Rival(manager, target))
                    if dst.stat(HEADER_NAME) is None or _read_all(dst, HEADER_NAME) != header:
                        dst.put(HEADER_NAME, _bytes(header), size=len(header))
                        verify_copy(dst, HEADER_NAME, len(header), hashlib.sha256(header).hexdigest())
                    _refuse_if_moved_meanwhile(manager, target, "before writing its notice")
                    notice = Notice(public_address(target), time.time(), manager.repository_id)
                    manager.store.put_json(notice_name(manager.me), notice.to_dict())
                    log.info("%s: notice %s written on %s: moved to %s", manager.name, notice_name(manager.me),
                             redact(src.address), notice.relay)
                    _yield_to_a_rival(manager, target)
                    # no copy after the notice: a client that read it may already write on the
                    # new relay (and moves its own late objects there itself)
                    report.removed_from_source = _clear_source(src, journal, manager.me)
            finally:
                journal.close()
        finally:
            dst.close()
    journal_path.unlink(missing_ok=True)
    return report


@contextlib.contextmanager
def _migrating(manager):
    """One migration of a repository at a time on this machine: two would share one journal
    and each write a notice (exit 4, AlreadyRunning, for the second). Across machines:
    :class:`_Rival` and :func:`_yield_to_a_rival`."""
    lock = InstanceLock(Path(manager.state_dir), manager.name, name="migrate.lock", doing="being migrated")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------
# two machines migrating one repository at once
# ---------------------------------------------------------------------------------------
class MovedMeanwhile(RelayError):
    """Another member moved the repository while this migration ran (its notice is on the
    old relay): this one stops without clearing anything or rewriting the configuration;
    the client follows the notices at its next cycle, as every other client does."""


def newest_notice(ctx, names: Iterable[str], report: Callable[[IntegrityError], None]) -> tuple[str, Notice] | None:
    """The notice every client follows among ``names`` (``n/<cid>`` objects): the newest
    one signed by a member whose key ``ctx`` (a Repo) pinned, for this repository. Any
    other is handed to ``report`` and ignored (docs/protocol.md, "Following a notice")."""
    best = None
    for name in sorted(names):
        if ctx.state.pinned(signer_of(name) or "") is None:
            report(IntegrityError(name, "a relay-move notice of a client this client never met (no pinned key): "
                                        "ignored"))
            continue
        try:
            notice = parse_notice(name, ctx.store.get_json(name), ctx.repository_id)
        except IntegrityError as exc:
            report(exc)
            continue
        except RelayObjectMissing:
            continue
        if best is None or notice.time > best[1].time:
            best = (name, notice)
    return best


def _rival_notice(manager) -> tuple[str, Notice] | None:
    """The notice another member wrote on the old relay that clients would follow, if any
    (one listing of ``n/``); one they would ignore is no rival (logged)."""
    mine = notice_name(manager.me)
    return newest_notice(manager.ctx, (i.name for i in manager.relay.list("n/") if i.name != mine),
                         lambda exc: log.warning("%s: %s", manager.name, exc))


def _meanwhile(manager, target: str, found: tuple[str, Notice], when: str) -> MovedMeanwhile:
    name, notice = found
    same = public_address(notice.relay).rstrip("/") == public_address(target).rstrip("/")
    copy = (f"the repository now lives on {notice.relay}, the relay this migration was copying to: nothing of it "
            "was removed" if same else f"the partial copy on {public_address(target)} is used by no client: "
            "delete it by hand")
    return MovedMeanwhile(f"another member moved this repository to {notice.relay} while this migration ran "
                          f"(its notice {name}); this migration stopped {when}: nothing was removed from "
                          f"{public_address(manager.relay.address)} and this client's configuration is unchanged; "
                          f"{copy}. Run 'escale --once': this client then follows the move as every other does")


def _refuse_if_moved_meanwhile(manager, target: str, when: str) -> None:
    found = _rival_notice(manager)
    if found is not None:
        raise _meanwhile(manager, target, found, when)


@dataclass
class _Rival:
    """Looks for another member's notice during the copy: at each pass (before anything
    "collected meanwhile" is deleted from the destination: an old relay being cleared by
    another migration looks just like that) and at most every ``every`` seconds between
    copies (after another notice, its followers may write on the destination)."""

    manager: object
    target: str
    every: float = 1.0
    last: float = 0.0

    def check(self, when: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            _refuse_if_moved_meanwhile(self.manager, self.target, when)


def _yield_to_a_rival(manager, target: str) -> None:
    """After writing our notice: if another member's is there too, the two migrations
    raced past each other's last check. Whichever of us saw no other notice clears the
    old relay and moves; so the one that sees one rewrites its own notice to name the
    other's relay — every notice then names the same relay, whichever is newest — and
    stops, leaving the old relay as it is (see docs/protocol.md)."""
    found = _rival_notice(manager)
    if found is None:
        return
    _name, rival = found
    manager.store.put_json(notice_name(manager.me),
                           Notice(rival.relay, time.time(), manager.repository_id).to_dict())
    log.warning("%s: another member's notice %s names %s: this client's notice now names it too",
                manager.name, found[0], rival.relay)
    raise _meanwhile(manager, target, found, "after writing its notice, which now names that relay too")


def alias_state(ctx, new_address: str) -> None:
    """The state folder is found from the folder marker *and* the relay address
    (escale.marker): link the new address's name to this client's state folder, so the
    next start under the new address keeps the same identity, keys and synced base."""
    from .marker import read_marker

    marker = ctx.marker or read_marker(Path(ctx.repository.path))
    if marker is None or ctx.state_dir is None:
        return
    where = replace(ctx.where, relay=new_address)
    new_dir = where.state_dir_for(marker.folder_id)
    real = Path(os.path.realpath(ctx.state_dir))
    if Path(os.path.realpath(new_dir)) == real:
        return
    if os.path.lexists(new_dir):
        raise ConfigError(f"cannot record the move: {new_dir} already exists (a state folder for the new relay "
                          f"address); remove it so that this client keeps its identity ({real})")
    try:
        os.symlink(real, new_dir)
    except FileExistsError:  # made at the same moment (this client's daemon and escalectl)
        if Path(os.path.realpath(new_dir)) != real:
            raise
    where.remember(marker)


def _noticed(manager, target: str) -> bool:
    """Our notice naming ``target`` is on the old relay already."""
    name = notice_name(manager.me)
    if manager.relay.stat(name) is None:
        return False
    try:
        notice = parse_notice(name, manager.store.get_json(name), manager.repository_id)
    except (IntegrityError, RelayObjectMissing):
        return False
    return public_address(notice.relay).rstrip("/") == public_address(target).rstrip("/")


def _bytes(data: bytes) -> BinaryIO:
    return io.BytesIO(data)


def _check_destination(dst: Relay, header: bytes, journal: Journal, target: str) -> None:
    names = [i.name for i in dst.list()]
    if not names:
        return
    if HEADER_NAME in names:
        if _read_all(dst, HEADER_NAME) != header:
            raise RelayError(f"{public_address(target)} holds another repository (its {HEADER_NAME} differs): "
                             "migrate only to an empty relay, or to the one a migration was already copying to")
        return
    if not journal.done:
        raise RelayError(f"{public_address(target)} is not empty ({len(names)} object(s), e.g. {sorted(names)[0]}) "
                         "and holds no repository: migrate only to an empty relay")


def _source_listing(src: Relay) -> dict[str, ObjectInfo]:
    """What moves: every object but the header (copied last) and notices (they stay)."""
    return {i.name: i for i in src.list() if i.name != HEADER_NAME and not i.name.startswith("n/")}


def _plan(src: Relay, dst: Relay, journal: Journal, report: MigrationReport) -> None:
    there = {i.name: i for i in dst.list()}
    for name, info in sorted(_source_listing(src).items()):
        if _done(journal, there, info):
            report.present += 1
        else:
            report.would_copy.append(name)
            report.bytes += info.size
    if HEADER_NAME not in there:
        report.would_copy.append(HEADER_NAME)


def _done(journal: Journal, there: dict[str, ObjectInfo], info: ObjectInfo) -> bool:
    rec = journal.done.get(info.name)
    return rec is not None and rec[0] == info.version and rec[1] == info.size \
        and info.name in there and there[info.name].size == info.size


def _check_room(src: Relay, dst: Relay, journal: Journal, quota: int | None, target: str) -> None:
    """The destination must take everything: its 'disk quota' (when the destination is
    a section with one) and the free space the backend reports."""
    needed = sum(i.size for n, i in _source_listing(src).items() if n not in journal.done)
    total = sum(i.size for i in src.list())
    if quota is not None and total > quota:
        raise QuotaExceeded(f"the repository takes {total} bytes, more than the 'disk quota' of {quota} bytes of "
                            f"{public_address(target)}: not migrated")
    available = dst.usage().available
    if available is not None and needed > available:
        raise QuotaExceeded(f"{public_address(target)} has {available} bytes free, the repository needs {needed}: "
                            "not migrated")


def _converge(src: Relay, dst: Relay, journal: Journal, report: MigrationReport, spool: str,
              stop: Callable[[], None], max_passes: int, watch: _Rival) -> None:
    """Copy until a listing of the source shows nothing new (objects written, rewritten
    or collected by the clients that keep running). Stops (MovedMeanwhile) as soon as
    another member's notice is seen."""
    for _ in range(max_passes):
        report.passes += 1
        listing = _source_listing(src)
        watch.check("while copying", force=True)  # after the listing: nothing it lacks was cleared by another
        there = {i.name: i for i in dst.list()}
        todo = [i for n, i in sorted(listing.items()) if not _done(journal, there, i)]
        gone = [n for n in journal.done if n not in listing]
        for name in gone:  # collected on the source meanwhile: not part of the repository any more
            stop()
            dst.delete(name)
            journal.forget(name)
            report.dropped += 1
        for info in todo:
            stop()
            watch.check("while copying")
            try:
                size, digest = copy_object(src, dst, info.name, spool)
            except RelayObjectMissing:
                continue  # collected meanwhile: the next listing says so
            journal.record(info.name, info.version, size, digest)
            report.copied += 1
            report.bytes += size
        if not todo and not gone:
            return
    log.warning("the source relay still changed at the last of %d listings; what changed later is carried over "
                "by its writers when they read the notice", max_passes)


def _clear_source(src: Relay, journal: Journal, me: str) -> int:
    """Delete from the old relay what was copied and has not changed since (the rest is
    carried over by its writers); the header last; notices stay."""
    listing = {i.name: i for i in src.list()}
    removed = 0
    for name, (version, _size, _sha) in sorted(journal.done.items(), key=lambda kv: not kv[0].startswith("u/")):
        info = listing.get(name)
        if info is not None and info.version == version:
            src.delete(name)
            removed += 1
    if HEADER_NAME in listing:
        src.delete(HEADER_NAME)
        removed += 1
    return removed


