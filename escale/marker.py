"""The folder marker, and the identity a synced folder carries.

A synced folder holds ``.escale/folder.json``, written on first use with a random
*folder id*. The marker is what tells escale "this is the folder I synced": a
renamed folder, or an unmounted disk whose mount point is an empty folder, has no
marker, and a client that has a synced base for that ``local path`` then refuses
to sync (:class:`~escale.errors.FolderUnavailable`) instead of publishing every
file as deleted.

The client's state (identity, signing key, base, per-file flags) lives under
``<state root>/<folder id>-<sha1(relay address)[:8]>``, so it follows the folder,
not the configuration file: moving the file or renaming the section keeps it. The
state records where the folder was (path, device and inode of the marker, machine
id). A marker whose state says it lives elsewhere is either the same folder moved
(adopted) or a copy of a folder still present at the recorded place, or a folder
whose state was copied from another machine: a copy gets a new folder id and joins
as a new member, so two folders never run as one client.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .confined import O_NEW, LinkInTree, Tree
from .errors import FolderUnavailable
from .folder import TMP_MARK
from .fsnames import STATE_DIR
from .private import private_dir

log = logging.getLogger(__name__)

META_DIR = STATE_DIR
MARKER_NAME = "folder.json"
#: the index from a configured (local path, relay) to the folder id last seen there
INDEX_DIR = "folders"
_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
_NOTE = "escale's folder marker: keep it with the folder (see docs/what-if.md)"


@dataclass(frozen=True)
class Marker:
    """A folder's marker as found on disk: its id, and the file's device and inode."""

    folder_id: str
    dev: int
    ino: int

    @property
    def place(self) -> str:
        return f"{self.dev}:{self.ino}"


def marker_path(root: Path) -> Path:
    return Path(root) / META_DIR / MARKER_NAME


def read_marker(root: Path) -> Marker | None:
    """The marker of the folder at ``root``, or None (no folder, no marker, unreadable,
    or reached only through a link inside the folder: never followed)."""
    try:
        with Tree(root).open_read(f"{META_DIR}/{MARKER_NAME}") as f:
            st = os.fstat(f.fileno())
            data = json.loads(f.read(4096) or b"{}")
    except (OSError, ValueError):
        return None
    folder_id = data.get("folder id") if isinstance(data, dict) else None
    if not isinstance(folder_id, str) or not folder_id or not folder_id.isalnum():
        return None
    return Marker(folder_id, st.st_dev, st.st_ino)


def marker_status(root: Path) -> os.stat_result | None:
    """The marker file's own status (one walk of two names, no link followed), or None."""
    try:
        return Tree(root).lstat(f"{META_DIR}/{MARKER_NAME}")
    except OSError:
        return None


def write_marker(root: Path, *, replace: bool = False) -> Marker:
    """Create the folder (first use) and its marker with a new folder id (OSError if not).

    Without ``replace`` an existing marker wins (two processes starting at once agree
    on one id); with it, a copied folder gets its own id. Inside the folder everything
    goes through descriptors that never follow a link (:mod:`escale.confined`): a
    ``.escale`` that is a link is refused (LinkInTree), not written through.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)  # the folder itself may be a link: the user chose it
    body = json.dumps({"folder id": secrets.token_hex(16), "note": _NOTE}, indent=1).encode()
    fd = Tree(root).open_dir([META_DIR], create=True, mode=0o700)
    try:
        tmp = f".{MARKER_NAME}.{secrets.token_hex(4)}{TMP_MARK}"
        with os.fdopen(os.open(tmp, O_NEW, 0o644, dir_fd=fd), "wb") as f:
            f.write(body + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            if replace:
                os.replace(tmp, MARKER_NAME, src_dir_fd=fd, dst_dir_fd=fd)
            else:
                try:
                    os.link(tmp, MARKER_NAME, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
                except OSError:  # no hard links here (exFAT, some network file systems)
                    try:
                        os.stat(MARKER_NAME, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        os.replace(tmp, MARKER_NAME, src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
    finally:
        os.close(fd)
    found = read_marker(root)
    if found is None:
        raise OSError(f"cannot read back {marker_path(root)}")
    return found


def machine_id() -> str:
    """This machine's stable id (systemd's machine-id), else its host name."""
    for p in _MACHINE_ID_FILES:
        try:
            text = Path(p).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return socket.gethostname()


def _sha(text: str, n: int) -> str:
    return hashlib.sha1(os.fsencode(text)).hexdigest()[:n]


@dataclass(frozen=True)
class FolderPlace:
    """Where a folder was last synced from, as the state recorded it."""

    folder_id: str
    place: str
    path: str
    machine: str


def recorded_place(state_dir: Path) -> tuple[bool, FolderPlace | None]:
    """(has a synced base, recorded folder place) of a state folder, read-only."""
    db = Path(state_dir) / "state.sqlite"
    if not db.exists():
        return False, None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            has_base = con.execute("SELECT 1 FROM base LIMIT 1").fetchone() is not None
            meta = dict(con.execute("SELECT key, value FROM meta WHERE key LIKE 'folder_%'"))
        finally:
            con.close()
    except sqlite3.Error:
        return True, None  # unreadable: assume the worst (it may hold a base)
    if "folder_id" not in meta:
        return has_base, None
    return has_base, FolderPlace(meta["folder_id"], meta.get("folder_place", ""), meta.get("folder_path", ""),
                                 meta.get("folder_machine", ""))


def record_place(state, root: Path, marker: Marker) -> None:
    """Remember in the (open, locked) State where this folder is now."""
    want = {"folder_id": marker.folder_id, "folder_place": marker.place,
            "folder_path": os.path.abspath(root), "folder_machine": machine_id()}
    if any(state.get(k) != v for k, v in want.items()):
        with state.transaction():
            for k, v in want.items():
                state.set(k, v)


@dataclass
class FolderIdentity:
    """Resolves a repository's state folder from its synced folder's marker.

    ``state_root`` is the base of every state folder (``cache dir``); with an explicit
    ``state_dir`` (library use) that folder is used whatever the marker says, but the
    same checks apply.
    """

    root: Path
    relay: str
    state_root: Path | None = None
    state_dir: Path | None = None
    repository: str = ""
    config_path: Path | None = None
    option: str = "local path"

    def _error(self, message: str) -> FolderUnavailable:
        return FolderUnavailable(self.root, message, path=self.config_path, section=self.repository or None,
                                 option=self.option)

    def state_dir_for(self, folder_id: str) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        assert self.state_root is not None
        return self.state_root / f"{folder_id}-{_sha(self.relay, 8)}"

    def _index(self) -> Path | None:
        if self.state_root is None:
            return None
        key = _sha(os.path.abspath(self.root) + "\n" + self.relay, 16)
        return self.state_root / INDEX_DIR / key

    def _known_state(self) -> Path | None:
        """The state folder this (local path, relay) pair used before, if any."""
        if self.state_dir is not None:
            return self.state_dir
        index = self._index()
        try:
            folder_id = index.read_text().strip() if index else ""
        except OSError:
            return None
        return self.state_dir_for(folder_id) if folder_id.isalnum() else None

    def remember(self, marker: Marker) -> None:
        """Record (local path, relay) → folder id, so a folder that later loses its
        marker is recognised as one this client synced."""
        index = self._index()
        if index is None:
            return
        try:
            if index.exists() and index.read_text().strip() == marker.folder_id:
                return
            private_dir(index.parent)
            tmp = index.with_name(index.name + f".{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(marker.folder_id + "\n")
            os.replace(tmp, index)
        except OSError as exc:
            log.warning("%s: cannot record the folder index %s: %s", self.repository, index, exc)

    def resolve(self) -> tuple[Path, Marker]:
        """(state folder, marker), creating the folder and its marker on first use.

        Raises FolderUnavailable when this client synced ``local path`` before and the
        folder or its marker is gone (renamed folder, unmounted disk).
        """
        marker = read_marker(self.root)
        if marker is None:
            known = self._known_state()
            if known is not None and recorded_place(known)[0]:
                raise self._error(self._missing_reason(known))
            marker = self._write()
            log.info("%s: marked %s as a synced folder (%s)", self.repository, self.root, marker_path(self.root))
            return self.state_dir_for(marker.folder_id), marker
        state_dir = self.state_dir_for(marker.folder_id)
        _has_base, place = recorded_place(state_dir)
        if place is None or place.place == marker.place and place.machine == machine_id():
            return state_dir, marker
        copy_of = self._original_of(place, marker)
        if copy_of is None:
            log.info("%s: %s moved or restored (was %s); keeping its identity", self.repository,
                     self.root, place.path)
            return state_dir, marker
        if self.state_dir is not None:
            raise self._error(f"is a copy of {copy_of} (same folder marker), whose state is {state_dir}; "
                              "give the copy its own state folder")
        marker = self._write(replace=True)
        log.warning("%s: %s is a copy of %s; it joins the repository as a new member (new folder id %s)",
                    self.repository, self.root, copy_of, marker.folder_id)
        return self.state_dir_for(marker.folder_id), marker

    def check(self, expected: Marker) -> Marker:
        """Per-cycle check (one stat): the folder still holds the marker it had at start;
        returns it (re-read if its file was replaced by one with the same id)."""
        try:
            st = marker_status(self.root)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (expected.dev, expected.ino):
            return expected
        found = read_marker(self.root) if st is not None else None
        if found is None or found.folder_id != expected.folder_id:
            what = "disappeared" if found is None else "was replaced by another synced folder"
            raise self._error(f"{what} while escale was running (disk unmounted? folder renamed?); nothing is "
                              "deleted, and this repository waits until the folder is back")
        return found

    def _write(self, replace: bool = False) -> Marker:
        try:
            return write_marker(self.root, replace=replace)
        except OSError as exc:
            why = str(exc) if isinstance(exc, LinkInTree) else exc.strerror or exc
            raise self._error(f"cannot be created or marked ({why})") from None

    def _original_of(self, place: FolderPlace, marker: Marker) -> str | None:
        """Where the folder this one was copied from is, or None if this is that folder."""
        if place.folder_id != marker.folder_id:
            return place.path or "another folder"
        if place.machine and place.machine != machine_id():
            return f"{place.path} on another machine"
        here = os.path.abspath(self.root)
        if place.path and place.path != here:
            there = read_marker(Path(place.path))
            if there is not None and there.folder_id == marker.folder_id:
                return place.path
        return None

    def _missing_reason(self, known: Path) -> str:
        what = "is missing" if not self.root.exists() else \
            "is not a folder" if not self.root.is_dir() else \
            f"has no escale marker ({META_DIR}/{MARKER_NAME})"
        return (f"{what}, but this client synced it before: was the folder renamed or moved, or is its disk "
                "not mounted? Nothing was changed and nothing is deleted anywhere. Mount the disk, or set "
                "'local path' to the folder's new place. To start over with an empty folder as a new member, "
                f"remove this client's state folder {known}")
