"""A dbm whose file is a SQLite database, readable by CPython 3.13's ``dbm.sqlite3``.

Why: escale 0.7 stored its tables with whatever ``dbm`` backend the platform had, and
each backend named its files differently, so a table written by one tool was silently
not found by another. SQLite gives one file, one format, everywhere. Python 3.13 ships
``dbm.sqlite3``; on 3.11/3.12 we provide :class:`SQLiteDBM`, which uses the very same
schema (table ``Dict``, blob keys and values, WAL journal) so a table written by either
can be opened by the other.

Keys and values may be ``bytes`` or ``str`` (stored as UTF-8); reads return ``bytes``.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, Union

log = logging.getLogger(__name__)

__all__ = ["open", "error", "SQLiteDBM"]

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

# The schema and statements are the on-disk contract shared with dbm.sqlite3:
# changing any of them breaks cross-version compatibility.
_CREATE = "CREATE TABLE IF NOT EXISTS Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)"
_COUNT = "SELECT COUNT(key) FROM Dict"
_GET = "SELECT value FROM Dict WHERE key = CAST(? AS BLOB)"
_PUT = "REPLACE INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB))"
_DEL = "DELETE FROM Dict WHERE key = CAST(? AS BLOB)"
_KEYS = "SELECT key FROM Dict"
_ITEMS = "SELECT key, value FROM Dict"

_URI_MODES = {"r": "ro", "w": "rw", "c": "rwc", "n": "rwc"}


if sys.version_info >= (3, 13):  # pragma: no cover - exercised only on 3.13+
    import dbm.sqlite3 as _stdlib

    error = _stdlib.error
else:

    class error(OSError):  # noqa: N801 - same name as the dbm modules' exception
        """Raised for SQLite failures and use after close, like ``dbm.sqlite3.error``."""


def _as_blob(obj: Any) -> Any:
    """Encode ``str`` ourselves so the bytes do not depend on the database's text encoding."""
    if isinstance(obj, str):
        return obj.encode("utf-8")
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    return obj  # bytes as is; numbers go through CAST exactly as in dbm.sqlite3


def _uri(path: Path, flag: str) -> str:
    """A ``file:`` URI (so we can pass ``mode=``) with '?' and '#' in the name escaped."""
    uri = path.absolute().as_uri()  # percent-encodes '?', '#' and '%'
    while "//" in uri:  # file:///abs and a//b both become single slashes
        uri = uri.replace("//", "/")
    return f"{uri}?mode={_URI_MODES[flag]}"


class SQLiteDBM(MutableMapping):
    """Fallback for ``dbm.sqlite3`` on Python < 3.13, same file format.

    One connection per object. The connection is shared between threads
    (``check_same_thread=False``) and every statement runs under a lock, so the
    object may be used from several threads at once.
    """

    def __init__(self, path: PathLike, flag: str = "r", mode: int = 0o666):
        if flag not in _URI_MODES:
            raise ValueError(f"Flag must be one of 'r', 'w', 'c', or 'n', not {flag!r}")
        self._lock = threading.RLock()
        self._cx: sqlite3.Connection | None = None
        self.path = Path(os.fsdecode(path))
        if flag == "n":
            # Also drop a stale WAL so it cannot be replayed into the fresh file.
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        if flag in ("c", "n"):
            self.path.touch(mode=mode, exist_ok=True)
        try:
            self._cx = sqlite3.connect(_uri(self.path, flag), uri=True, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise error(f"{self.path}: {exc}") from exc
        try:
            self._cx.execute("PRAGMA journal_mode = wal")
        except sqlite3.OperationalError:
            pass  # an optimisation only (e.g. read-only media)
        if flag in ("c", "n"):
            self._execute(_CREATE)

    def _execute(self, sql: str, params: tuple = (), fetch: str | None = None) -> Any:
        """Run one statement under the lock; map SQLite errors to :class:`error`."""
        with self._lock:
            if self._cx is None:
                raise error("DBM object has already been closed")
            try:
                cursor = self._cx.execute(sql, params)
                try:
                    if fetch == "one":
                        return cursor.fetchone()
                    if fetch == "all":
                        return cursor.fetchall()
                    return cursor.rowcount
                finally:
                    cursor.close()
            except sqlite3.Error as exc:
                raise error(str(exc)) from exc

    def __len__(self) -> int:
        return self._execute(_COUNT, fetch="one")[0]

    def __getitem__(self, key: bytes | str) -> bytes:
        row = self._execute(_GET, (_as_blob(key),), fetch="one")
        if row is None:
            raise KeyError(key)
        return row[0]

    def __setitem__(self, key: bytes | str, value: bytes | str) -> None:
        self._execute(_PUT, (_as_blob(key), _as_blob(value)))

    def __delitem__(self, key: bytes | str) -> None:
        if not self._execute(_DEL, (_as_blob(key),)):
            raise KeyError(key)

    def __iter__(self) -> Iterator[bytes]:
        # A snapshot: callers may modify the table while iterating, and no lock
        # is held between yields.
        return iter([row[0] for row in self._execute(_KEYS, fetch="all")])

    def keys(self) -> list[bytes]:  # type: ignore[override]
        """All keys, as a list (what dbm.sqlite3 returns too)."""
        return list(self)

    def items(self) -> list[tuple[bytes, bytes]]:  # type: ignore[override]
        """All pairs in one query rather than one query per key."""
        return [(k, v) for k, v in self._execute(_ITEMS, fetch="all")]

    def close(self) -> None:
        """Close the connection; further use raises :class:`error`. Idempotent."""
        with self._lock:
            if self._cx is not None:
                self._cx.close()
                self._cx = None

    def __enter__(self) -> SQLiteDBM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._cx is None else "open"
        return f"<{type(self).__name__} {str(self.path)!r} {state}>"


def open(filename: PathLike, flag: str = "r", mode: int = 0o666, *,  # noqa: A001
         threadsafe: bool = False) -> MutableMapping:
    """Open a SQLite dbm file.

    ``flag``: 'r' read-only existing file (default), 'w' read-write existing file,
    'c' read-write, created if missing, 'n' always a new empty table.
    ``mode`` is the Unix permission of a file we create.
    Python >= 3.13 gets the stdlib ``dbm.sqlite3`` object, older versions a
    :class:`SQLiteDBM`; both read and write the same files. The stdlib object may
    only be used by the thread that opened it, so ``threadsafe=True`` always
    returns a :class:`SQLiteDBM` (usable from any thread, on any version).
    """
    if sys.version_info >= (3, 13) and not threadsafe:  # pragma: no cover
        return _stdlib.open(filename, flag, mode)
    return SQLiteDBM(filename, flag, mode)
