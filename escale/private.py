"""Local state readable by its owner only: folders 0700, files 0600, whatever the umask.

A repository's state holds its signing key, every synced path and hash, and decrypted
small relay objects, so other users of the machine must not read it. Folders and files
are chmod-ed explicitly after creation (the umask cannot widen or narrow them), and
state left more open by an older version is tightened when it is next opened.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
#: files SQLite keeps beside a database; it gives new ones the database's own mode
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create the folder, and any missing parent, for this user only; tighten it if it exists."""
    path = Path(path)
    missing = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for d in (path, *missing):  # mkdir gives missing parents the umask's mode, not ours
        _restrict(d, DIR_MODE, created=d in missing)
    return path


def private_file(path: str | os.PathLike[str], create: bool = True) -> Path:
    """Make the file (created empty if missing and ``create``) and its SQLite side files 0600.

    Creating it before SQLite does means the database, and the WAL and shared-memory
    files SQLite later creates with the database's mode, are never readable by others.
    """
    path = Path(path)
    if create:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    for p in (path, *(Path(f"{path}{suffix}") for suffix in SQLITE_SIDE_FILES)):
        if p.exists():
            _restrict(p, FILE_MODE)
    return path


def _restrict(p: Path, mode: int, created: bool = False) -> None:
    current = p.stat().st_mode & 0o7777
    if current == mode:
        return
    try:
        os.chmod(p, mode)
    except OSError as exc:  # not ours (a shared folder): say so, the sync itself can go on
        log.warning("cannot make %s private to this user (mode %o): %s", p, current, exc.strerror or exc)
        return
    if current & 0o077 and not created:
        log.info("%s was open to other users (mode %o); now %o", p, current, mode)
