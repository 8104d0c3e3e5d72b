"""A persistent cache of file digests, so unchanged files are not re-read every scan.

An entry is trusted only while the file's size, mtime (ns) and inode are all unchanged
and it was made with the same algorithm. escale 0.7 keyed on mtime alone (seconds), so a
same-second rewrite or a file swapped in by rename kept a stale checksum; it also never
forgot deleted files and reopened its dbm for every lookup. Here one SQLite file holds
everything, :meth:`ChecksumCache.prune` forgets files that are gone, and
:meth:`ChecksumCache.batch` puts a scan's many writes in one transaction.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .names import db_key, from_db_key
from .private import private_file

log = logging.getLogger(__name__)

__all__ = ["ChecksumCache", "FileChangedError", "hash_stream", "hash_bytes", "BLOCK_SIZE"]

#: read size when hashing: large enough to amortise calls, small enough to stream.
BLOCK_SIZE = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checksums (
    path TEXT PRIMARY KEY,
    size INTEGER,
    mtime_ns INTEGER,
    inode INTEGER,
    algorithm TEXT,
    digest TEXT
)
"""
#: the folder of each row (names.db_key of the parent path), so a scan reads a folder's rows
#: in one query; added after 0.8's first release, filled in place for older caches
_PARENT = "CREATE INDEX IF NOT EXISTS checksums_parent ON checksums (parent)"


def _parent(key: str) -> str:
    """The db_key of the folder of the path whose db_key is ``key``."""
    return db_key(from_db_key(key).rpartition("/")[0])


class FileChangedError(OSError):
    """The file kept changing while we hashed it; try again at the next scan."""


def _new_hash(algorithm: str) -> "hashlib._Hash":
    try:
        return hashlib.new(algorithm)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"unknown hash algorithm {algorithm!r}") from exc


def hash_stream(stream: BinaryIO, algorithm: str = "sha256") -> str:
    """The hex digest of everything left in ``stream``, read in 1 MiB blocks."""
    h = _new_hash(algorithm)
    buffer = bytearray(BLOCK_SIZE)
    view = memoryview(buffer)
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        while True:
            n = readinto(buffer)
            if not n:
                break
            h.update(view[:n])
    else:
        while block := stream.read(BLOCK_SIZE):
            h.update(block)
    return h.hexdigest()


def hash_bytes(data: bytes | bytearray | memoryview, algorithm: str = "sha256") -> str:
    """The hex digest of ``data``."""
    h = _new_hash(algorithm)
    h.update(data)
    return h.hexdigest()


#: SQLite integers are signed 64-bit; a file dated after 2262 has a larger mtime_ns
_MAX_INT = 2 ** 63 - 1


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, min(st.st_mtime_ns, _MAX_INT), st.st_ino


class ChecksumCache:
    """Digests of local files keyed by relative path, valid while (size, mtime_ns, inode) hold.

    ``path``: the SQLite file (created with its folder if missing), or None to keep the
    cache in memory. A file that is not a SQLite database is moved aside to ``*.corrupt``
    and a fresh cache started: losing a cache only costs re-hashing.
    The object may be shared between threads.
    """

    #: files modified this recently (ns) are hashed but not cached: a write in the same
    #: timestamp tick as our read would leave size and mtime unchanged (the "racy
    #: clean" problem git also guards against).
    racy_window_ns = 2_000_000_000

    def __init__(self, path: str | os.PathLike[str] | None, algorithm: str = "sha256"):
        _new_hash(algorithm)  # fail early on a bad name
        self.path = None if path is None else Path(path)
        self.algorithm = algorithm
        self._lock = threading.RLock()
        self._depth = 0
        self._cx: sqlite3.Connection | None = None
        try:
            self._cx = self._connect()
        except sqlite3.DatabaseError as exc:
            if self.path is None:
                raise
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.warning("checksum cache %s is unreadable (%s); moved to %s, starting afresh",
                        self.path, exc, aside)
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._cx = self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self.path is None:
            target = ":memory:"
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target = str(private_file(self.path))
        cx = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        try:
            if self.path is not None:
                with contextlib.suppress(sqlite3.OperationalError):
                    cx.execute("PRAGMA journal_mode = wal")
                cx.execute("PRAGMA synchronous = NORMAL")  # a cache may lose its last writes
            cx.execute(_SCHEMA)
            if "parent" not in {row[1] for row in cx.execute("PRAGMA table_info(checksums)")}:
                cx.execute("ALTER TABLE checksums ADD COLUMN parent TEXT")
            cx.execute(_PARENT)
            # rows of an older cache (or written by an older version since): give them a folder
            cx.execute("BEGIN")
            while stale := cx.execute("SELECT path FROM checksums WHERE parent IS NULL LIMIT 20000").fetchall():
                cx.executemany("UPDATE checksums SET parent = ? WHERE path = ?",
                               [(_parent(p), p) for (p,) in stale])
            cx.execute("COMMIT")
        except BaseException:
            cx.close()
            raise
        return cx

    def _db(self) -> sqlite3.Connection:
        if self._cx is None:
            raise ValueError("checksum cache is closed")
        return self._cx

    # -- entries
    def lookup(self, relpath: str, size: int, mtime_ns: int, inode: int) -> str | None:
        """The cached digest if size, mtime_ns, inode and algorithm all match, else None."""
        with self._lock:
            row = self._db().execute(
                "SELECT digest FROM checksums WHERE path = ? AND size = ? AND mtime_ns = ? "
                "AND inode = ? AND algorithm = ?",
                (db_key(relpath), size, mtime_ns, inode, self.algorithm)).fetchone()
        return None if row is None else row[0]

    def folder(self, folder: str) -> dict[str, tuple[int, int, int, str]]:
        """Every entry of one folder's files ("" is the top), in one query: relative path →
        (size, mtime_ns, inode, digest), for this algorithm only."""
        with self._lock:
            rows = self._db().execute(
                "SELECT path, size, mtime_ns, inode, digest FROM checksums WHERE parent = ? AND algorithm = ?",
                (db_key(folder), self.algorithm)).fetchall()
        return {from_db_key(p) if p.startswith("/") else p: (z, m, i, d) for p, z, m, i, d in rows}

    def parents(self) -> set[str]:
        """The folders (names.db_key form) the cache holds entries in."""
        with self._lock:
            return {p for (p,) in self._db().execute("SELECT DISTINCT parent FROM checksums")}

    def forget_all(self, relpaths: Iterable[str]) -> None:
        """Drop the entries of ``relpaths`` (files a scan no longer found)."""
        with self._lock, self.batch():
            self._db().executemany("DELETE FROM checksums WHERE path = ?", [(db_key(p),) for p in relpaths])

    def forget_folders(self, keys: Iterable[str]) -> None:
        """Drop the entries of every file in the folders named by ``keys`` (db_key form)."""
        with self._lock, self.batch():
            self._db().executemany("DELETE FROM checksums WHERE parent = ?", [(k,) for k in keys])

    def store(self, relpath: str, size: int, mtime_ns: int, inode: int, digest: str) -> None:
        """Record the digest of ``relpath`` for this (size, mtime_ns, inode)."""
        with self._lock:
            self._db().execute(
                "INSERT OR REPLACE INTO checksums (path, size, mtime_ns, inode, algorithm, digest, parent)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (db_key(relpath), size, mtime_ns, inode, self.algorithm, digest,
                 db_key(relpath.rpartition("/")[0])))

    def forget(self, relpath: str) -> None:
        """Drop the entry of ``relpath`` (no error if absent)."""
        with self._lock:
            self._db().execute("DELETE FROM checksums WHERE path = ?", (db_key(relpath),))

    def prune(self, keep: Iterable[str]) -> int:
        """Forget every path not in ``keep`` (the files that still exist); return how many."""
        keep_set = {db_key(p) for p in keep}
        with self._lock, self.batch():
            db = self._db()
            gone = [(p,) for (p,) in db.execute("SELECT path FROM checksums")
                    if p not in keep_set]
            db.executemany("DELETE FROM checksums WHERE path = ?", gone)
        if gone:
            log.debug("checksum cache: forgot %d deleted file(s)", len(gone))
        return len(gone)

    def __len__(self) -> int:
        with self._lock:
            return self._db().execute("SELECT COUNT(*) FROM checksums").fetchone()[0]

    @contextlib.contextmanager
    def batch(self) -> Iterator[ChecksumCache]:
        """Group many stores into one transaction (nestable).

        Commits on exit, even when the block raised: every entry stored is correct on
        its own, so keeping them saves re-hashing.
        """
        with self._lock:
            if self._depth == 0:
                self._db().execute("BEGIN")
            self._depth += 1
        try:
            yield self
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._cx is not None:
                    try:
                        self._cx.execute("COMMIT")
                    except sqlite3.Error:
                        log.exception("checksum cache: commit failed; rolling back")
                        with contextlib.suppress(sqlite3.Error):
                            self._cx.execute("ROLLBACK")

    # -- hashing
    def digest_stream(self, stream: BinaryIO, relpath: str, st: os.stat_result) -> str:
        """The digest of an open file whose status is ``st`` (taken from the open file).

        The caller opened the very file it means (the synced folder checks device, inode,
        size and mtime against its scan, and never opens through a link), so nothing here
        reopens by name. If the file changes while it is read, FileChangedError: the next
        scan sees the new version.
        """
        cached = self.lookup(relpath, *_signature(st))
        if cached is not None:
            return cached
        before = _signature(os.fstat(stream.fileno()))
        digest = hash_stream(stream, self.algorithm)
        after = _signature(os.fstat(stream.fileno()))
        if not before == after == _signature(st):
            raise FileChangedError(errno.EAGAIN, "file changed while it was being hashed", relpath)
        if abs(time.time_ns() - after[1]) >= self.racy_window_ns:
            self.store(relpath, *after, digest)
        return digest

    def digest_file(self, abs_path: str | os.PathLike[str], relpath: str,
                    st: os.stat_result) -> str:
        """The digest of the file, from the cache when ``st`` still describes it.

        Otherwise the file is streamed through ``hashlib`` and the result cached. If the
        file's size, mtime or inode changed while it was read (or since ``st``), it is
        read once more from a fresh stat; if it changes again, FileChangedError.
        The digest returned always describes the file as it was when last read.
        A symbolic link at ``abs_path`` is never followed (OSError ELOOP).
        """
        cached = self.lookup(relpath, *_signature(st))
        if cached is not None:
            return cached
        expected = _signature(st)
        for attempt in (1, 2):
            fd = os.open(abs_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            with os.fdopen(fd, "rb") as stream:
                before = _signature(os.fstat(stream.fileno()))
                digest = hash_stream(stream, self.algorithm)
                after = _signature(os.fstat(stream.fileno()))
            try:
                now = _signature(os.lstat(abs_path))  # replaced by a rename meanwhile?
            except FileNotFoundError:
                now = None
            if before == after == now == expected:
                if abs(time.time_ns() - after[1]) >= self.racy_window_ns:
                    self.store(relpath, *after, digest)
                return digest
            log.debug("%s changed while hashing (attempt %d)", relpath, attempt)
            expected = now  # None if deleted: the next open() raises FileNotFoundError
        raise FileChangedError(errno.EAGAIN, "file changed while it was being hashed",
                               str(abs_path))

    # -- lifetime
    def close(self) -> None:
        """Commit and close (idempotent)."""
        with self._lock:
            cx, self._cx = self._cx, None
        if cx is not None:
            if cx.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    cx.execute("COMMIT")
            cx.close()

    def __enter__(self) -> ChecksumCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ChecksumCache({str(self.path) if self.path else None!r}, {self.algorithm!r})"
