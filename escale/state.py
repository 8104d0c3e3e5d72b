"""A client's memory of a repository, in one SQLite file under its state folder.

Holds the base index (what was last synced, path by path), the chain position of
every pusher we pull from, our own published updates until they are collected,
the write-ahead record of an update being published, and requests for content.
Each cycle step commits in one transaction, so ``kill -9`` leaves either the old
or the new state, never a mix.
"""
from __future__ import annotations

import fcntl
import heapq
import json
import logging
import os
import secrets
import sqlite3
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from .errors import AlreadyRunning
from .index import Entry, Synced
from .names import db_key, from_db_key
from .private import private_dir, private_file

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS base (path TEXT PRIMARY KEY, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS applied (pusher TEXT PRIMARY KEY, seq INTEGER NOT NULL, digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS published (seq INTEGER PRIMARY KEY, digest TEXT NOT NULL,
    pullers TEXT NOT NULL, count INTEGER, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS wants (path TEXT PRIMARY KEY, entry TEXT NOT NULL, supplier TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (name TEXT PRIMARY KEY, size INTEGER, mtime REAL, value TEXT);
CREATE TABLE IF NOT EXISTS pins (client TEXT PRIMARY KEY, key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS held (path TEXT PRIMARY KEY, author TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS failures (path TEXT PRIMARY KEY, message TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Published:
    seq: int
    digest: str
    pullers: list[str]
    count: int | None
    size: int


class State:
    """The SQLite state of one repository on this machine."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        private_dir(self.directory)
        self.db = sqlite3.connect(private_file(self.directory / "state.sqlite"), isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode = wal")
        self.db.execute("PRAGMA synchronous = normal")
        self.db.executescript(SCHEMA)
        _index_base(self.db)
        self._depth = 0

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic step; nested calls join the outer transaction."""
        if self._depth == 0:
            self.db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self.db.execute("ROLLBACK")
            raise
        self._depth -= 1
        if self._depth == 0:
            self.db.execute("COMMIT")

    # -- meta ------------------------------------------------------------------------------
    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set(self, key: str, value: str) -> None:
        self.db.execute("REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def unset(self, key: str) -> None:
        self.db.execute("DELETE FROM meta WHERE key = ?", (key,))

    def client_id(self) -> str:
        """This client's random id on the relay (never the host name)."""
        cid = self.get("client_id")
        if cid is None:
            cid = secrets.token_hex(8)
            self.set("client_id", cid)
        return cid

    def signing_key(self) -> Ed25519PrivateKey:
        """This client's Ed25519 key: it signs everything we write to the relay."""
        raw = self.get("signing_key")
        if raw is None:
            key = Ed25519PrivateKey.generate()
            raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
            self.set("signing_key", raw)
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(raw))

    # -- pinned public keys of other clients (trust on first sight) -------------------------
    def pinned(self, client: str) -> bytes | None:
        row = self.db.execute("SELECT key FROM pins WHERE client = ?", (client,)).fetchone()
        return bytes.fromhex(row[0]) if row else None

    def pin(self, client: str, key: bytes) -> None:
        self.db.execute("INSERT OR IGNORE INTO pins VALUES (?, ?)", (client, key.hex()))

    # -- high-water marks that must never go down (rollback detection) ---------------------
    def mark(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM marks WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def raise_mark(self, name: str, value: int) -> None:
        self.db.execute("INSERT INTO marks VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                        "value = max(value, excluded.value)", (name, value))

    @property
    def own_seq(self) -> int:
        return int(self.get("own_seq", "0"))

    @property
    def own_digest(self) -> str:
        return self.get("own_digest", "")

    # -- base index (paths keyed by names.db_key: a path need not be UTF-8) --------------
    def base(self) -> dict[str, Entry]:
        entries = (_stored(e) for (e,) in self.db.execute("SELECT entry FROM base"))
        return {e.path: e for e in entries}

    def base_rows(self) -> Iterator[tuple[str, Entry]]:
        """The base one row at a time (memory does not grow with the base)."""
        for (e,) in self.db.execute("SELECT entry FROM base"):
            entry = _stored(e)
            yield entry.path, entry

    def base_snapshot_lines(self) -> Iterator[str]:
        """The base as a snapshot's lines (``Entry.to_json``) in path order (Python's string
        order), one row at a time: a snapshot of a million entries is written without
        holding them. SQLite orders the UTF-8 keys bytewise, which is code-point order; the
        few keys of non-UTF-8 paths (names.db_key's raw form) are sorted here and merged in.

        A row this version wrote is already that text (it begins with ``{"author":``, the
        first key sorted; older versions wrote ``{"path": …`` first) and is copied as it
        is: no entry is parsed and encoded again (about 10 µs each, most of the cycle that
        writes the snapshot of a large base)."""
        raw = sorted((_stored(e) for (e,) in self.db.execute(
            "SELECT entry FROM base WHERE path >= '/raw/' AND path < '/raw0'")), key=lambda e: e.path)
        rows = ((p, e if e.startswith('{"author":') else _stored(e).to_json()) for p, e in self.db.execute(
            "SELECT path, entry FROM base WHERE NOT (path >= '/raw/' AND path < '/raw0') ORDER BY path"))
        return (text for _p, text in heapq.merge(rows, ((e.path, e.to_json()) for e in raw), key=lambda r: r[0]))

    def base_paths_with(self, digest: str) -> list[str]:
        """Base files holding this content (rename sources), from a partial index on it."""
        return [from_db_key(p) for (p,) in
                self.db.execute("SELECT path FROM base WHERE kind = 'file' AND hash = ?", (digest,))]

    def base_holds(self, digest: str | None, upto: int) -> bool:
        """Does a base file row among the first ``upto`` (by rowid: rows written since have
        higher ones, see :meth:`base_last_row`) hold this content? One index range look-up,
        however many files share the content."""
        return self.db.execute("SELECT 1 FROM base WHERE kind = 'file' AND hash = ? AND rowid <= ? LIMIT 1",
                               (digest, upto)).fetchone() is not None

    def base_last_row(self) -> int:
        """The highest rowid of the base: a row written (REPLACE) after this is read has a
        higher one (SQLite gives a new row max(rowid) + 1 until 2**63 - 1 is used, then a
        random unused one, which :meth:`base_holds` then counts as older: the safe side)."""
        return self.db.execute("SELECT max(rowid) FROM base").fetchone()[0] or 0

    def base_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM base").fetchone()[0]

    def base_file_count(self) -> int:
        """How many synced files the base holds (the deletion guard's denominator)."""
        return self.db.execute("SELECT COUNT(*) FROM base WHERE kind = 'file'").fetchone()[0]

    def base_folder(self, folder: str) -> dict[str, Synced]:
        """The base rows of one folder's direct children ("" is the top), in one query:
        what the pusher compares a folder's listing with."""
        return self.base_folder_key(db_key(folder))

    def base_folder_key(self, key: str) -> dict[str, Synced]:
        rows = self.db.execute("SELECT path, kind, hash, mode FROM base WHERE parent = ?", (key,)).fetchall()
        make = Synced._make
        if any(p.startswith("/") for p, _k, _h, _m in rows):  # a name that is not UTF-8 (names.db_key)
            rows = [(from_db_key(p), k, h, m) for p, k, h, m in rows]
        return {row[0]: make(row) for row in rows}

    def base_parents(self) -> Iterator[str]:
        """The keys (names.db_key) of every folder the base holds a row in (from the index)."""
        return (p for (p,) in self.db.execute("SELECT DISTINCT parent FROM base"))

    def knows_folder(self, folder: str) -> bool:
        """Whether the base holds the folder or a row in it, deletions aside (two indexed
        lookups): a watcher-driven scan enters only folders it does not know (new ones), and
        a folder deleted earlier and made again is new."""
        key = db_key(folder)
        return (self.db.execute("SELECT 1 FROM base WHERE parent = ? AND kind != 'gone' LIMIT 1",
                                (key,)).fetchone() is not None
                or self.db.execute("SELECT 1 FROM base WHERE path = ? AND kind != 'gone'", (key,)).fetchone() is not None)

    def base_parents_within(self, folder: str) -> list[str]:
        """The keys of the folders at or under ``folder`` that the base holds rows in (a
        range of the parent index: the rows of a folder that vanished)."""
        if not folder:
            return list(self.base_parents())
        key = db_key(folder)
        found = [p for (p,) in self.db.execute("SELECT DISTINCT parent FROM base WHERE parent = ?", (key,))]
        if not key.startswith(_RAW_PREFIX):
            found += [p for (p,) in self.db.execute(
                "SELECT DISTINCT parent FROM base WHERE parent >= ? AND parent < ?", (key + "/", key + "0"))]
        inside = folder + "/"  # a name below that is not UTF-8 has a key of its own form
        found += [p for (p,) in self.db.execute(
            "SELECT DISTINCT parent FROM base WHERE parent >= '/raw/' AND parent < '/raw0'")
            if p != key and from_db_key(p).startswith(inside)]
        return found

    def base_entry(self, path: str) -> Entry | None:
        row = self.db.execute("SELECT entry FROM base WHERE path = ?", (db_key(path),)).fetchone()
        return _stored(row[0]) if row else None

    def remember(self, entry: Entry) -> None:
        self.db.execute("REPLACE INTO base (path, entry, parent, kind, hash, mode) VALUES (?, ?, ?, ?, ?, ?)",
                        (db_key(entry.path), entry.to_json(), db_key(entry.path.rpartition("/")[0]),
                         entry.kind, entry.hash, entry.mode))

    # -- pull positions --------------------------------------------------------------------
    def applied(self) -> dict[str, tuple[int, str]]:
        return {p: (s, d) for p, s, d in self.db.execute("SELECT pusher, seq, digest FROM applied")}

    def set_applied(self, pusher: str, seq: int, digest: str) -> None:
        self.db.execute("REPLACE INTO applied (pusher, seq, digest) VALUES (?, ?, ?)", (pusher, seq, digest))

    # -- own updates -----------------------------------------------------------------------
    def published(self) -> list[Published]:
        return [Published(s, d, json.loads(p), c, z) for s, d, p, c, z in
                self.db.execute("SELECT seq, digest, pullers, count, size FROM published ORDER BY seq")]

    def add_published(self, p: Published) -> None:
        self.db.execute("REPLACE INTO published VALUES (?, ?, ?, ?, ?)",
                        (p.seq, p.digest, json.dumps(p.pullers), p.count, p.size))
        self.set("own_seq", str(p.seq))
        self.set("own_digest", p.digest)

    def drop_published(self, seq: int) -> None:
        self.db.execute("DELETE FROM published WHERE seq = ?", (seq,))

    def outbox(self) -> list[int]:
        return [s for (s,) in self.db.execute("SELECT seq FROM outbox")]

    def set_outbox(self, seq: int, started: float) -> None:
        self.db.execute("REPLACE INTO outbox VALUES (?, ?)", (seq, started))

    def clear_outbox(self, seq: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    # -- requests for content we lack ------------------------------------------------------
    def wants(self) -> dict[str, tuple[Entry, str]]:
        wanted = ((Entry.from_dict(json.loads(e)), s) for e, s in self.db.execute("SELECT entry, supplier FROM wants"))
        return {e.path: (e, s) for e, s in wanted}

    def wanted(self, path: str) -> tuple[Entry, str] | None:
        row = self.db.execute("SELECT entry, supplier FROM wants WHERE path = ?", (db_key(path),)).fetchone()
        return (Entry.from_dict(json.loads(row[0])), row[1]) if row else None

    def want_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM wants").fetchone()[0]

    def any_wants(self) -> bool:
        """Whether any content is wanted: one EXISTS query, where a COUNT walks the table."""
        return self.db.execute("SELECT EXISTS (SELECT 1 FROM wants)").fetchone()[0] == 1

    def wants_page(self, limit: int) -> list[tuple[str, str, str]]:
        """(path, digest, supplier) of the first ``limit`` wanted paths, in path order."""
        rows = self.db.execute("SELECT entry, supplier FROM wants ORDER BY path LIMIT ?", (limit,))
        return [(e.path, e.hash, s) for e, s in ((Entry.from_dict(json.loads(e)), s) for e, s in rows)]

    def want(self, entry: Entry, supplier: str) -> None:
        self.db.execute("REPLACE INTO wants VALUES (?, ?, ?)",
                        (db_key(entry.path), json.dumps(entry.to_dict()), supplier))

    def unwant(self, path: str) -> None:
        self.db.execute("DELETE FROM wants WHERE path = ?", (db_key(path),))

    # -- versions seen but deliberately not applied (a w- flag, a symlink in the way) -------
    def hold(self, entry: Entry) -> None:
        self.db.execute("REPLACE INTO held VALUES (?, ?, ?)", (db_key(entry.path), entry.author, entry.seq))

    def release(self, path: str) -> None:
        self.db.execute("DELETE FROM held WHERE path = ?", (db_key(path),))

    def held(self) -> list[tuple[str, str, int]]:
        """(path, author, seq) of every version held back."""
        return [(from_db_key(p), a, s) for p, a, s in self.db.execute("SELECT path, author, seq FROM held")]

    def any_held(self) -> bool:
        """Whether any version is held back: one EXISTS query, never the rows."""
        return self.db.execute("SELECT EXISTS (SELECT 1 FROM held)").fetchone()[0] == 1

    # -- local files escale could not write or read: an error every cycle until resolved ---
    def fail(self, path: str, message: str) -> None:
        self.db.execute("REPLACE INTO failures VALUES (?, ?)", (db_key(path), message))

    def resolve(self, path: str) -> None:
        self.db.execute("DELETE FROM failures WHERE path = ?", (db_key(path),))

    def failures(self) -> dict[str, str]:
        return {from_db_key(p): m for p, m in self.db.execute("SELECT path, message FROM failures")}

    # -- cache of small relay objects, keyed by what the listing says of them -------------
    def seen(self, name: str, size: int, mtime: float):
        row = self.db.execute("SELECT size, mtime, value FROM seen WHERE name = ?", (name,)).fetchone()
        if row and row[0] == size and row[1] == mtime:
            return json.loads(row[2])
        return None

    def set_seen(self, name: str, size: int, mtime: float, value) -> None:
        self.db.execute("REPLACE INTO seen VALUES (?, ?, ?, ?)", (name, size, mtime, json.dumps(value)))


_RAW_PREFIX = db_key("\udcff")[:5]  # "/raw/": how a key of a name that is not UTF-8 starts

#: columns the pusher compares, beside the row's JSON (which stays the record)
_BASE_COLUMNS = (("parent", "TEXT"), ("kind", "TEXT"), ("hash", "TEXT"), ("mode", "INTEGER"))


def parent_key(key: str) -> str:
    """The db_key of the folder holding the path whose db_key is ``key``."""
    return db_key(from_db_key(key).rpartition("/")[0])


def _index_base(db: sqlite3.Connection) -> None:
    """Give the base its per-folder columns and index, filling rows that lack them.

    A state written before these columns (or by such a version since) has rows whose
    ``parent`` is NULL: they are filled from their JSON here, in place, at every open (the
    index makes finding none cheap), so an existing state keeps working."""
    have = {row[1] for row in db.execute("PRAGMA table_info(base)")}
    with _immediate(db):
        for name, kind in _BASE_COLUMNS:
            if name not in have:
                db.execute(f"ALTER TABLE base ADD COLUMN {name} {kind}")
        db.execute("CREATE INDEX IF NOT EXISTS base_parent ON base (parent)")
        db.execute("CREATE INDEX IF NOT EXISTS base_hash ON base (hash) WHERE kind = 'file'")
        done = 0
        while stale := db.execute("SELECT path, entry FROM base WHERE parent IS NULL LIMIT 20000").fetchall():
            rows = []
            for key, text in stale:  # in pages: a million rows are never held at once
                d = json.loads(text)
                rows.append((parent_key(key), d["kind"], d.get("hash"), d.get("mode", 0o644), key))
            db.executemany("UPDATE base SET parent = ?, kind = ?, hash = ?, mode = ? WHERE path = ?", rows)
            done += len(rows)
        if done:
            log.info("state: indexed %d base row(s) by folder (written by an older version)", done)


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _stored(text: str) -> Entry:
    """A base entry as this client stored it (``Entry.to_dict``, checked by ``Entry.from_dict``
    when it arrived): rebuilt without checking again, which was 45 % of an idle cycle's CPU."""
    d = json.loads(text)
    d["kind"] = sys.intern(d["kind"])  # a few distinct values, held once per base instead of per entry
    d["author"] = sys.intern(d.get("author", ""))
    try:
        return Entry(**d)
    except TypeError:  # a field this version does not know (a row from another version): the checked way
        return Entry.from_dict(d)


class InstanceLock:
    """Refuse a second escale process on the same repository state (flock, freed on any exit)."""

    def __init__(self, directory: Path, label: str, name: str = "lock", doing: str = "being synced"):
        self.path = Path(directory) / name
        self.label, self.doing = label, doing
        self.fd: int | None = None

    def acquire(self) -> None:
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # whatever the umask, or an older version, made it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.read(fd, 32).decode().strip()
            except OSError:
                pid = "?"
            os.close(fd)
            raise AlreadyRunning(f"repository {self.label} is already {self.doing} by another escale "
                                 f"process (pid {pid or '?'}; state in {self.path.parent})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
