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

Other clients read the notice at the start of a cycle (:func:`follow_notice`). One
whose own configuration reaches the new address (same credentials, or the address
holds them) checks that it holds the same repository header it pinned, carries over
its own objects still on the old relay (it is their only writer), records the move
(configuration, state alias) and syncs on there. One that cannot stops syncing that
repository with a message saying what to change (exit 2), every cycle, until its
configuration reaches the new relay.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import ConfigError, EscaleError, IntegrityError, QuotaExceeded, RelayError, RelayObjectMissing
from .protocol import HEADER_NAME, Notice, RelayView, notice_name, parse_notice, signer_of
from .relay import backend_for, parse_address, redact
from .relay.address import split_network_address
from .relay.base import ObjectInfo, Relay
from .stream import BLOCK, HashingReader

log = logging.getLogger(__name__)

#: a source still changing after this many listings is migrated as of the last one
MAX_PASSES = 50
SPOOL_IN_MEMORY = 1 << 20


class RelayMoved(RelayError):
    """The repository moved to another relay this client cannot reach with its
    configuration (exit code 2); the message says what to change."""


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
# destination
# ---------------------------------------------------------------------------------------
@dataclass
class Destination:
    """Where to move: the section as it will read afterwards, and the option lines to
    write into this client's configuration for it."""

    config: object  # RepositoryConfig
    options: dict[str, str]


def destination_for(cfg, destination: str, config) -> Destination:
    """DESTINATION as ``escalectl migrate`` takes it: another section's name, a
    configuration file (its section of the same name, or its only one), or a relay
    address (reached with this section's credentials)."""
    other = None
    if destination in config.repositories and destination != cfg.name:
        other = config.repositories[destination]
    elif "://" not in destination and Path(os.path.expanduser(destination)).is_file():
        from .config import load_config

        theirs = load_config(os.path.expanduser(destination))
        other = theirs.repositories.get(cfg.name)
        if other is None and len(theirs.repositories) == 1:
            other = next(iter(theirs.repositories.values()))
        if other is None:
            raise ConfigError(f"no section [{cfg.name}] (and more than one section) in {destination}",
                              path=destination)
    if other is not None:
        dest = replace(cfg, relay_url=other.relay_url, relay_protocol=other.relay_protocol, user=other.user,
                       password=other.password, options=dict(other.options), quota=other.quota)
        options = {"relay address": other.relay_url}
        if other.user != cfg.user and other.user is not None:
            options["user"] = other.user
        if other.password != cfg.password and other.password is not None:
            options["password"] = other.password
        backend = backend_for(other.relay_protocol)
        names = {o.field: o.name for o in getattr(backend, "options", ())}
        for key, value in other.options.items():
            if cfg.options.get(key) != value and key in names and isinstance(value, str):
                options[names[key]] = value
        return Destination(dest, options)
    proto = parse_address(destination)[0]
    if backend_for(proto) is None:
        raise ConfigError(f"'{destination}' is no section of {config.path}, no configuration file and no relay "
                          f"address escale knows (schemes: file, http(s), webdav(s), s3…)", path=config.path)
    if proto == "file" and not destination.startswith("file://"):
        destination = "file://" + os.path.abspath(os.path.expanduser(destination))
    section = _section_at(cfg.config_path, cfg.name, destination) if cfg.config_path else None
    return Destination(section or replace(cfg, relay_url=destination, relay_protocol=proto),
                       {"relay address": destination})


def _section_at(path, name: str, address: str):
    """Section ``name`` of the configuration file as it would read with ``relay address =
    address``: parsed from a private copy of the file (in its folder, for relative
    paths), so that the options it holds for that kind of relay apply. None if it
    cannot be read."""
    from .config import load_config, set_option

    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".escale-move")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(Path(path).read_bytes())
        set_option(tmp, name, "relay address", address)
        section = load_config(tmp).repositories.get(name)
    except (EscaleError, OSError) as exc:
        log.warning("%s: cannot read %s with the relay address %s: %s", name, path, public_address(address), exc)
        return None
    finally:
        os.unlink(tmp)
    return replace(section, config_path=Path(path)) if section is not None else None


def open_relay(cfg) -> Relay:
    """A section's relay, built as the daemon builds it."""
    from .manager import Manager

    return Manager.from_config(cfg).relay


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
def migrate(manager, dest: Destination, *, dry_run: bool = False, stop: Callable[[], None] = lambda: None,
            max_passes: int = MAX_PASSES) -> MigrationReport:
    """Move the repository of ``manager`` (a Manager from this client's section, not
    running) to the relay of ``dest``; see the module doc. Idempotent: run it again
    after an interruption."""
    target = dest.config.relay_url
    report = MigrationReport(manager.relay.address, public_address(target), dry_run=dry_run)
    dst = open_relay(dest.config)
    if public_address(target).rstrip("/") == public_address(manager.relay.address).rstrip("/"):
        raise ConfigError(f"the repository is already on {public_address(target)}")
    with manager.relay as src:
        if src.stat(HEADER_NAME) is None and any(True for _ in src.list("n/")):
            raise RelayError(f"the repository already moved away from {public_address(src.address)} (a notice is "
                             "there): run 'escale --once' to follow it (this client's configuration and state "
                             "then name the new relay)")
    with manager._inspecting():
        src = manager.relay
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
                _check_room(src, dst, journal, dest.config.quota, target)
                if dst.stat(HEADER_NAME) is None:  # no client uses it yet: we are its only writer
                    dst.abort_incomplete("")
                with tempfile.TemporaryDirectory(prefix="escale-migrate-", dir=manager.state_dir) as spool:
                    if _noticed(manager, target) and dst.stat(HEADER_NAME) is not None:
                        log.info("%s: the notice is already written (an interrupted migration): clearing the "
                                 "old relay", manager.name)  # followers may write on the new relay: no copy
                    else:
                        _converge(src, dst, journal, report, spool, stop, max_passes)
                    if dst.stat(HEADER_NAME) is None or _read_all(dst, HEADER_NAME) != header:
                        dst.put(HEADER_NAME, _bytes(header), size=len(header))
                        verify_copy(dst, HEADER_NAME, len(header), hashlib.sha256(header).hexdigest())
                    notice = Notice(public_address(target), time.time(), manager.repository_id)
                    manager.store.put_json(notice_name(manager.me), notice.to_dict())
                    log.info("%s: notice %s written on %s: moved to %s", manager.name, notice_name(manager.me),
                             redact(src.address), notice.relay)
                    # no copy after the notice: a client that read it may already write on the
                    # new relay (and moves its own late objects there itself)
                    report.removed_from_source = _clear_source(src, journal, manager.me)
            finally:
                journal.close()
        finally:
            dst.close()
    record_move(manager, dest)
    report.config_rewritten = manager._config_path is not None
    journal_path.unlink(missing_ok=True)
    return report


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
              stop: Callable[[], None], max_passes: int) -> None:
    """Copy until a listing of the source shows nothing new (objects written, rewritten
    or collected by the clients that keep running)."""
    for _ in range(max_passes):
        report.passes += 1
        listing = _source_listing(src)
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


# ---------------------------------------------------------------------------------------
# after a move: this client's configuration and state
# ---------------------------------------------------------------------------------------
def record_move(manager, dest: Destination) -> None:
    """Make this client's configuration name the new relay (edited in place, comments
    kept) and give its state folder an alias under the new address, so the next start
    finds the same identity, keys and synced base."""
    alias_state(manager, dest.config)
    path = manager._config_path
    if path is None:
        return
    from .config import set_option

    for option, value in dest.options.items():
        set_option(path, manager.name, option, value)
    log.info("%s: %s now names the relay %s", manager.name, path, public_address(dest.config.relay_url))


def alias_state(manager, new_cfg) -> None:
    """The state folder is found from the folder marker *and* the relay address: link
    the new address's name to this client's state folder."""
    marker = manager._marker
    if marker is None or manager.state_dir is None:
        from .marker import read_marker

        marker = read_marker(Path(manager.repository.path))
        if marker is None:
            return
    where = replace(manager._where, relay=new_cfg.relay_url)
    new_dir = where.state_dir_for(marker.folder_id)
    real = Path(os.path.realpath(manager.state_dir))
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


def key_from_pinned_header(manager) -> bool:
    """Open the repository with the header this client pinned, when the relay no longer
    holds one (a migration removed it, leaving a notice): True if that was done."""
    pinned = manager.state.get("repository_header")
    if pinned is None:
        return False
    from .encryption import master_key

    header = json.loads(pinned)
    master = None
    if header.get("encryption", "off") != "off" and manager._secret is not None:
        master = master_key(manager._secret, header.get("kdf") or {})
    manager._pin_header(header)
    manager._use_key(master)
    return True


def notice_instead_of_header(manager) -> bool:
    """At connect: the relay has no header but a move notice (the repository moved):
    follow it. True if this client switched relay (the caller connects again)."""
    if manager.relay.stat(HEADER_NAME) is not None:
        return False
    from .protocol import list_relay

    view = list_relay(manager.relay)
    if not view.notices or not key_from_pinned_header(manager):
        return False
    return follow_notice(manager, view)


# ---------------------------------------------------------------------------------------
# the reading side: a client meets a notice
# ---------------------------------------------------------------------------------------
def newest_notice(manager, view: RelayView) -> tuple[str, Notice] | None:
    """The newest valid notice on the relay: signed by a member whose key this client
    pinned (a forged or copied notice is reported and ignored), for this repository."""
    best = None
    for cid, info in sorted(view.notices.items()):
        if manager.state.pinned(cid) is None:
            manager._problem(IntegrityError(info.name, "a relay-move notice of a client this client never met "
                                                       "(no pinned key): ignored"))
            continue
        try:
            notice = parse_notice(info.name, manager.store.get_json(info.name), manager.repository_id)
        except IntegrityError as exc:
            manager._problem(exc)
            continue
        except RelayObjectMissing:
            continue
        if best is None or notice.time > best[1].time:
            best = (info.name, notice)
    return best


def follow_notice(manager, view: RelayView) -> bool:
    """If the relay carries a move notice: switch to the new relay when this client's
    configuration reaches it (True; the caller reconnects), else raise RelayMoved."""
    found = newest_notice(manager, view)
    if found is None:
        return False
    name, notice = found
    if public_address(notice.relay).rstrip("/") == public_address(manager.relay.address).rstrip("/"):
        return False
    new_cfg, options = _section_for(manager, notice.relay)
    writer = manager.name_of(signer_of(name) or "")
    try:
        if new_cfg is None or backend_for(new_cfg.relay_protocol) is None:
            raise RelayError(f"no relay backend for {notice.relay}")
        target = open_relay(new_cfg)
        target.open()
        try:
            header = json.loads(_read_all(target, HEADER_NAME))
        except RelayObjectMissing:
            raise RelayError(f"no repository header on {notice.relay} yet") from None
        if json.dumps(header, sort_keys=True) != manager.state.get("repository_header"):
            raise RelayError(f"{notice.relay} holds another repository header than the one this client pinned")
    except (EscaleError, OSError, ValueError) as exc:
        if new_cfg is not None:
            try:
                alias_state(manager, new_cfg)  # so that the edited configuration keeps this identity
            except (OSError, EscaleError) as err:
                log.warning("%s: %s", manager.name, err)
        where = f"in {manager._config_path} " if manager._config_path else ""
        raise RelayMoved(f"{manager.name}: the repository moved to {notice.relay} (notice {name}, signed by "
                         f"{writer}, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(notice.time))}), and this "
                         f"client cannot use it with its configuration ({exc}). Set 'relay address = "
                         f"{notice.relay}' {where}in section [{manager.name}], with the credentials of that relay "
                         "(user, password or the backend's options); syncing resumes once it can be "
                         "reached") from None
    carried = carry_over(manager, manager.relay, target)
    old = manager.relay
    manager.relay = target
    manager.store.relay = target
    try:
        old.close()
    except Exception:  # closing must not stop the switch
        log.debug("closing the old relay", exc_info=True)
    if new_cfg is not None:
        record_move(manager, Destination(new_cfg, options))
    log.warning("%s: the repository moved to %s (notice %s, signed by %s): switched%s", manager.name,
                notice.relay, name, writer, f", {carried} object(s) of this client carried over" if carried else "")
    return True


def _section_for(manager, address: str):
    """(section, option lines to write) that would reach ``address``, from this client's
    configuration file as it is now (re-read, so an edited file counts without a
    restart): its own section with that relay address — its credentials, and backend
    options it holds for the new kind of relay — else another section of the file whose
    relay is that address (its credentials are then copied over)."""
    path = manager._config_path
    if path is None:
        return None, {}
    from .config import load_config

    try:
        config = load_config(path)
    except EscaleError as exc:
        log.warning("%s: cannot read %s again: %s", manager.name, path, exc)
        return None, {}
    for other in config.repositories.values():
        if other.name != manager.name and \
                public_address(other.relay_url).rstrip("/") == public_address(address).rstrip("/"):
            mine = config.repositories.get(manager.name)
            if mine is not None:
                dest = destination_for(mine, other.name, config)
                return dest.config, dest.options
    section = _section_at(path, manager.name, address)
    return section, {"relay address": address}


def carry_over(manager, old: Relay, new: Relay) -> int:
    """This client's own objects still on the old relay (written after the migrating
    client's last pass) go to the new one — it is their only writer, so nothing of
    another client is touched — and its updates collected meanwhile leave the new one."""
    me = manager.me
    mine_old = {i.name: i for i in old.list() if signer_of(i.name) == me and not i.name.startswith("n/")}
    mine_new = {i.name: i for i in new.list() if signer_of(i.name) == me}
    moved = 0
    for name in sorted(mine_old, key=lambda n: n.startswith("u/")):  # blobs before their update
        try:
            copy_object(old, new, name, manager.state_dir)
        except RelayObjectMissing:
            continue
        old.delete(name)
        moved += 1
    pending = {p.seq for p in manager.state.published()}
    for name in mine_new:
        if name in mine_old:
            continue
        parts = name.split("/")
        if parts[0] in ("u", "b") and int(parts[2]) not in pending and int(parts[2]) <= manager.state.own_seq:
            new.delete(name)  # collected after the copy: it must not reappear
    return moved
