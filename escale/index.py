"""The entry record: one path's state as pushers publish it and clients remember it.

An entry's *version* is what the change rules compare: the content digest for a
file, ``"/"`` for a folder, ``None`` for "absent" (deleted or never seen). ``prev``
is the version an entry replaces, so a receiver can tell a continuation of what
it has from a concurrent change.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from .names import is_canonical

FILE, DIR, GONE = "file", "dir", "gone"
KINDS = (FILE, DIR, GONE)
DIR_VERSION = "/"
#: the largest number an entry may hold (SQLite's and the kernel's 64-bit signed limit)
MAX_INT = 2 ** 63 - 1
_HEX = re.compile(r"^[0-9a-f]{16,128}$")


@dataclass(frozen=True, slots=True)  # slots: a base of a million entries, half the memory
class Entry:
    path: str
    kind: str
    hash: str | None = None
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0o644
    prev: str | None = None
    author: str = ""
    #: for a rename: a path whose content (same hash) receivers may reuse
    origin: str | None = None
    #: the author's update that published this version (0: not published yet)
    seq: int = 0

    @property
    def version(self) -> str | None:
        return version_of(self.kind, self.hash)

    def to_dict(self) -> dict[str, Any]:
        d = {"path": self.path, "kind": self.kind, "size": self.size, "mtime_ns": self.mtime_ns,
             "mode": self.mode, "author": self.author, "seq": self.seq}
        for k in ("hash", "prev", "origin"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d

    def to_json(self) -> str:
        """The one text of this entry: keys sorted, no spaces. A snapshot's lines are these
        (protocol.Snapshot) and the state stores them so (state.State.remember), so a
        snapshot of a million entries copies the stored text instead of parsing and
        encoding every entry again."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Entry":
        """Build an entry from untrusted relay data, checking every field's type."""
        if not isinstance(d, dict):
            raise ValueError("entry is not an object")
        try:
            e = cls(path=d["path"], kind=d["kind"], hash=d.get("hash"), size=d.get("size", 0),
                    mtime_ns=d.get("mtime_ns", 0), mode=d.get("mode", 0o644), prev=d.get("prev"),
                    author=d.get("author", ""), origin=d.get("origin"), seq=d.get("seq", 0))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"entry lacks a field: {exc}") from exc
        if not isinstance(e.path, str) or e.kind not in KINDS:
            raise ValueError(f"bad entry kind or path: {e.kind!r}")
        if not is_canonical(e.path):  # see escale.names: one text per byte name
            raise ValueError(f"path {e.path!r} is no file name's text form")
        if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_INT
                   for x in (e.size, e.mtime_ns, e.mode, e.seq)):
            raise ValueError(f"bad number in entry for {e.path!r}")
        if e.kind == FILE and not (isinstance(e.hash, str) and _HEX.match(e.hash)):
            raise ValueError(f"bad digest in entry for {e.path!r}")
        if e.kind != FILE and e.hash is not None:
            raise ValueError(f"non-file entry with a digest for {e.path!r}")
        if e.prev is not None and not (isinstance(e.prev, str) and (e.prev == DIR_VERSION or _HEX.match(e.prev))):
            raise ValueError(f"bad previous version in entry for {e.path!r}")
        if not isinstance(e.author, str) or (e.origin is not None and not (isinstance(e.origin, str)
                                                                            and is_canonical(e.origin))):
            raise ValueError(f"bad author or origin in entry for {e.path!r}")
        return replace(e, mode=e.mode & 0o777)


def version_of(kind: str | None, digest: str | None) -> str | None:
    if kind == FILE:
        return digest
    if kind == DIR:
        return DIR_VERSION
    return None


class Synced(NamedTuple):
    """What the pusher compares of a base row: kind, version and mode (the whole
    :class:`Entry` is rebuilt only for a path that changed). A tuple: built straight from
    a SQLite row, one per synced path in the folder being compared."""

    path: str
    kind: str
    hash: str | None
    mode: int

    @property
    def version(self) -> str | None:
        return version_of(self.kind, self.hash)


@dataclass(slots=True)  # a scan holds one per local file
class LocalFile:
    """What the scan saw of one local path (digest filled in lazily)."""

    path: str
    kind: str  # FILE or DIR
    size: int = 0
    mtime_ns: int = 0
    inode: int = 0
    mode: int = 0o644
    hash: str | None = field(default=None, compare=False)
    #: the device the scan found it on (with the inode: the very file, for opening it again)
    dev: int = field(default=0, compare=False)

    @property
    def version(self) -> str | None:
        return version_of(self.kind, self.hash)

    def same_stat(self, st) -> bool:
        return (st.st_size, min(st.st_mtime_ns, MAX_INT), st.st_ino) == (self.size, self.mtime_ns, self.inode)
