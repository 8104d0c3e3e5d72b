"""A relay's objects to a tar archive and back (``escalectl backup`` / ``restore``).

What is saved is what the relay holds: the repository header, member cards, the
updates and large files still in transit, snapshots, acknowledgements and requests —
all as the relay stores them (encrypted and signed, never opened here, no key
needed). It is not a backup of anyone's files: the relay is a mailbox, and the
synced folders are the data. A relay backup brings a repository back after the
relay itself was lost (a wiped bucket, a dead server) without every client starting
over, and keeps a record of what was in transit.

Archive layout (a POSIX tar, plain or compressed by the name's extension)::

    objects/<relay object name>   each object's bytes, as stored on the relay
    escale-backup.json            manifest: name, size and SHA-256 of every object

The manifest comes last, so an archive is written in one pass, streaming. A relay
that changes during the backup (clients keep running) is listed again and what
changed is appended (a later copy of a name supersedes an earlier one; the manifest
names the one that counts), until a listing shows nothing new.

Memory does not depend on object sizes: each object goes from ``relay.get`` through
a spool file (tar needs a member's size before its bytes, and an object may be
rewritten between the listing and the read) into the archive stream; restore reads
the archive as a stream, twice: once to check every object against the manifest
before anything is written, once to upload.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import EscaleError, IntegrityError, RelayError, RelayObjectMissing
from .protocol import HEADER_NAME
from .relay.address import redact
from .relay.base import Relay, check_name
from .stream import BLOCK, HashingReader

log = logging.getLogger(__name__)

MANIFEST = "escale-backup.json"
OBJECTS = "objects/"
#: archive name endings and the tarfile compression they select
COMPRESSIONS = {".tar": "", ".tar.gz": "gz", ".tgz": "gz", ".tar.bz2": "bz2", ".tbz2": "bz2",
                ".tar.xz": "xz", ".txz": "xz"}
#: appended to an archive name without one of the endings above (as escale 0.7 did)
DEFAULT_SUFFIX = ".tar.bz2"
#: a relay still changing after this many listings is saved as of the last one
MAX_PASSES = 10
#: objects this small are spooled in memory, larger ones on disk
SPOOL_IN_MEMORY = 1 << 20
MANIFEST_VERSION = 1


class ArchiveError(EscaleError):
    """A backup archive cannot be used: missing, damaged, or not matching its manifest
    (exit code 1; the message names the archive and, where one is at fault, the object)."""


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    size: int
    sha256: str


@dataclass
class BackupReport:
    archive: Path
    objects: int = 0
    bytes: int = 0
    #: listings of the relay it took until one showed nothing new
    passes: int = 0
    #: True when the relay still changed at the last listing (MAX_PASSES reached)
    unsettled: bool = False


@dataclass
class RestoreReport:
    archive: Path
    objects: int = 0
    bytes: int = 0
    #: objects the relay already held with the same bytes (a restore resumed)
    present: int = 0
    replaced: list[str] = field(default_factory=list)


def archive_path(path: str | os.PathLike[str]) -> Path:
    """The archive's name: ``path`` if it ends in a known tar ending, else with
    ``.tar.bz2`` appended (as escale 0.7 did)."""
    p = Path(os.path.expanduser(os.fspath(path)))
    return p if _compression(p) is not None else p.with_name(p.name + DEFAULT_SUFFIX)


def _compression(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(COMPRESSIONS, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return COMPRESSIONS[suffix]
    return None


# ---------------------------------------------------------------------------------------
# backup
# ---------------------------------------------------------------------------------------
def backup(relay: Relay, archive: str | os.PathLike[str], *, stop: Callable[[], None] = lambda: None,
           max_passes: int = MAX_PASSES) -> BackupReport:
    """Save every object of ``relay`` (opened by the caller) into a new tar archive.

    The archive is written under a temporary name and renamed when complete, so an
    interrupted backup never leaves a file that looks like an archive. An existing
    archive is never overwritten. ``stop`` is called between objects (it raises to
    interrupt).
    """
    path = archive_path(archive)
    if path.exists() or path.is_symlink():
        raise ArchiveError(f"{path} already exists: give another name (a backup never overwrites a file)")
    if not path.parent.is_dir():
        raise ArchiveError(f"cannot write {path}: folder {path.parent} does not exist")
    mode = "w|" + (_compression(path) or "")
    report = BackupReport(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode=mode, format=tarfile.PAX_FORMAT) as tar:
            saved: dict[str, tuple[str, ManifestEntry]] = {}  # name -> (relay version, entry)
            for report.passes in range(1, max_passes + 1):
                listing = {info.name: info for info in relay.list()}
                gone = [name for name in saved if name not in listing]
                todo = [info for name, info in sorted(listing.items())
                        if name not in saved or saved[name][0] != info.version]
                for name in gone:  # collected during the backup: not part of the relay any more
                    del saved[name]
                if not todo:
                    break
                for info in todo:
                    stop()
                    check_name(info.name)
                    entry = _save_object(relay, info.name, tar, path.parent)
                    if entry is None:
                        saved.pop(info.name, None)
                        continue
                    saved[info.name] = (info.version, entry)
                    report.bytes += entry.size
            else:
                report.unsettled = True
                log.warning("relay %s still changed at the last of %d listings: the archive holds each object "
                            "as it was when read", redact(relay.address), max_passes)
            if not saved:
                raise ArchiveError(f"nothing to back up: the relay {redact(relay.address)} holds no object")
            if HEADER_NAME not in saved:
                log.warning("relay %s holds no repository header (%s): the archive is not a whole repository",
                            redact(relay.address), HEADER_NAME)
            entries = [e for _v, e in sorted(saved.values(), key=lambda ve: ve[1].name)]
            manifest = json.dumps({"escale backup": MANIFEST_VERSION, "relay": redact(relay.address),
                                   "time": time.time(),
                                   "objects": [[e.name, e.size, e.sha256] for e in entries]},
                                  separators=(",", ":")).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(manifest), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(manifest))
            report.objects = len(entries)
            report.bytes = sum(e.size for e in entries)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("backup of %s: %d objects, %d bytes in %s (%d listing(s))", redact(relay.address), report.objects,
             report.bytes, path, report.passes)
    return report


def _save_object(relay: Relay, name: str, tar: tarfile.TarFile, spool_dir: Path) -> ManifestEntry | None:
    """One object from the relay into the archive; None if it was deleted meanwhile."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=spool_dir) as spool:
        try:
            with relay.get(name) as src:
                hasher = HashingReader(src, "sha256")
                while data := hasher.read(BLOCK):
                    spool.write(data)
        except RelayObjectMissing:
            log.info("%s was deleted during the backup (collected): left out", name)
            return None
        size = spool.tell()
        spool.seek(0)
        info = tarfile.TarInfo(OBJECTS + name)
        info.size, info.mtime, info.mode = size, int(time.time()), 0o600
        tar.addfile(info, spool)
        return ManifestEntry(name, size, hasher.hexdigest())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# reading an archive
# ---------------------------------------------------------------------------------------
def _members(path: Path) -> Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]:
    """The archive's members in order, as a stream (constant memory); a damaged
    archive raises ArchiveError naming the last object read whole."""
    last = None
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for info in tar:
                yield info, (tar.extractfile(info) if info.isfile() else None)
                last = info.name
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        after = f" after {last.removeprefix(OBJECTS)}" if last else " at its start"
        raise ArchiveError(f"archive {path} is damaged{after}: {exc}") from None


def _object_name(path: Path, member: str) -> str:
    name = member.removeprefix(OBJECTS)
    try:
        return check_name(name)
    except IntegrityError:
        raise ArchiveError(f"archive {path} holds an unsafe object name {member!r}") from None


def _digest(stream: BinaryIO) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    while data := stream.read(BLOCK):
        h.update(data)
        size += len(data)
    return size, h.hexdigest()


def verify_archive(archive: str | os.PathLike[str]) -> list[ManifestEntry]:
    """Read the whole archive and check every object the manifest lists against it
    (size and SHA-256); returns the manifest. Raises ArchiveError naming the first
    object that is damaged or missing (all of them, in the message, up to ten)."""
    path = Path(os.path.expanduser(os.fspath(archive)))
    if not path.is_file():
        raise ArchiveError(f"no archive {path}")
    found: set[ManifestEntry] = set()
    manifest = None
    for info, stream in _members(path):
        if stream is None:
            continue
        if info.name == MANIFEST:
            manifest = stream.read(info.size)
        elif info.name.startswith(OBJECTS):
            name = _object_name(path, info.name)
            size, sha = _digest(stream)
            found.add(ManifestEntry(name, size, sha))
    if manifest is None:
        raise ArchiveError(f"archive {path} has no manifest ({MANIFEST}): not an escale backup, or cut short")
    entries = _parse_manifest(path, manifest)
    bad = [e for e in entries if e not in found]
    if bad:
        seen = {e.name for e in found}
        details = [f"{e.name} ({'damaged: its size or digest differs from the manifest' if e.name in seen else 'missing'})"
                   for e in bad[:10]]
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ArchiveError(f"archive {path} is damaged: object {'; '.join(details)}{more}")
    return entries


def _parse_manifest(path: Path, data: bytes) -> list[ManifestEntry]:
    try:
        doc = json.loads(data)
        if doc.get("escale backup") != MANIFEST_VERSION:
            raise ValueError(f"unknown manifest version {doc.get('escale backup')!r}")
        entries = [ManifestEntry(str(n), int(s), str(h)) for n, s, h in doc["objects"]]
        for e in entries:
            check_name(e.name)
    except (ValueError, TypeError, KeyError, AttributeError, IntegrityError) as exc:
        raise ArchiveError(f"archive {path}: manifest {MANIFEST} is damaged ({exc})") from None
    if len({e.name for e in entries}) != len(entries):
        raise ArchiveError(f"archive {path}: manifest {MANIFEST} names an object twice")
    return entries


# ---------------------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------------------
def restore(relay: Relay, archive: str | os.PathLike[str], *, force: bool = False,
            stop: Callable[[], None] = lambda: None) -> RestoreReport:
    """Put the objects of a backup archive back on ``relay`` (opened by the caller).

    The whole archive is checked against its manifest before anything is written. A
    relay that holds objects is refused unless ``force`` (objects of the archive then
    replace those of the same name; others are left). The repository header is written
    last, so clients find no repository until every other object is back, and every
    object is read back afterwards (listing size and SHA-256).
    """
    path = Path(os.path.expanduser(os.fspath(archive)))
    entries = verify_archive(path)
    wanted = {e.name: e for e in entries}
    existing = {info.name: info for info in relay.list()}
    if existing and not force:
        sample = ", ".join(sorted(existing)[:3])
        raise RelayError(f"relay {redact(relay.address)} is not empty ({len(existing)} object(s): {sample}…): "
                         "restore writes only to an empty relay; use --force to write over it")
    report = RestoreReport(path)
    header: ManifestEntry | None = wanted.get(HEADER_NAME)
    done: set[str] = set()
    for info, stream in _members(path):
        if stream is None or not info.name.startswith(OBJECTS):
            continue
        name = _object_name(path, info.name)
        entry = wanted.get(name)
        if entry is None or name in done or name == HEADER_NAME or info.size != entry.size:
            continue
        stop()
        if _restore_one(relay, path, entry, stream, existing, report):
            done.add(name)
    missing = [e.name for e in entries if e.name not in done and e.name != HEADER_NAME]
    if missing:  # the archive changed between the two readings
        raise ArchiveError(f"archive {path}: object {missing[0]} could not be read again (the archive changed "
                           "during the restore?)")
    _verify_relay(relay, path, [e for e in entries if e.name != HEADER_NAME])
    if header is not None:
        for info, stream in _members(path):
            if stream is not None and info.name == OBJECTS + HEADER_NAME and info.size == header.size:
                if _restore_one(relay, path, header, stream, existing, report):
                    break
        else:
            raise ArchiveError(f"archive {path}: object {HEADER_NAME} could not be read again")
        _verify_relay(relay, path, [header])
    log.info("restored %d objects (%d bytes) from %s to %s", report.objects, report.bytes, path,
             redact(relay.address))
    return report


def _restore_one(relay: Relay, path: Path, entry: ManifestEntry, stream: BinaryIO, existing: dict,
                 report: RestoreReport) -> bool:
    """One object back on the relay (or found there already with the same bytes)."""
    name = entry.name
    if name in existing and existing[name].size == entry.size and _relay_digest(relay, name) == entry.sha256:
        report.present += 1
        return True
    if not _put_checked(relay, path, entry, stream, replace=name in existing):
        return False
    report.objects += 1
    report.bytes += entry.size
    if name in existing:
        report.replaced.append(name)
    return True


def _put_checked(relay: Relay, path: Path, entry: ManifestEntry, stream: BinaryIO, *, replace: bool) -> bool:
    """Upload one object, hashing what is sent; False (nothing kept) if these bytes are
    not the manifest's (another copy of the name may follow in the archive)."""
    reader = HashingReader(stream, "sha256")
    relay.put(entry.name, reader, size=entry.size)
    if reader.count == entry.size and reader.hexdigest() == entry.sha256:
        return True
    if not replace:
        relay.delete(entry.name)
    return False


def _relay_digest(relay: Relay, name: str) -> str | None:
    try:
        with relay.get(name) as src:
            return _digest(src)[1]
    except RelayObjectMissing:
        return None


def _verify_relay(relay: Relay, path: Path, entries: list[ManifestEntry]) -> None:
    """After the upload: the listing shows every object at its size, and each reads back
    with its digest."""
    listed = {info.name: info.size for info in relay.list()}
    for e in entries:
        if listed.get(e.name) != e.size:
            raise RelayError(f"restore from {path}: relay object {e.name} is "
                             f"{'missing' if e.name not in listed else f'{listed[e.name]} bytes'} after the "
                             f"upload (expected {e.size} bytes)")
        if _relay_digest(relay, e.name) != e.sha256:
            raise RelayError(f"restore from {path}: relay object {e.name} reads back with another digest than "
                             "the archive's")
