"""Conflict copies: the name under which the losing version of a concurrent change is kept.

``<stem>.conflict-<client>-<UTC yyyymmdd-hhmmss><ext>`` (client and time of the losing
version). Names are built here only, so every client derives the same name from the
same version, and every name fits one path component: NAME_MAX, 255 bytes on Linux,
macOS and the usual file systems. A longer name keeps its extension and the conflict
tag, and as much of the stem as fits — cut on a character boundary, never inside a
UTF-8 sequence — followed by ``~`` and a short hash of the whole name, so two long
names that begin alike still get two different copies.

If that name is already taken by another file, the copy goes to a *spare* name, the
same with ``-<first 8 hex digits of the content digest>`` after the time.
"""
from __future__ import annotations

import hashlib
import os
import time

from .names import byte_length, to_bytes

#: the longest file name, in bytes, on every file system escale writes to
NAME_MAX = 255
#: an "extension" longer than this is part of the stem (it is no file type)
MAX_EXT = 32
#: bytes of the client name used in a conflict name
MAX_LABEL = 64
HASH_CHARS = 8


def conflict_name(path: str, client: str, mtime_ns: int, variant: str = "") -> str:
    """The conflict copy of ``path`` for the version ``client`` made at ``mtime_ns``."""
    head, _, base = path.rpartition("/")
    stem, ext = split_extension(base)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(mtime_ns / 1e9))
    tag = f".conflict-{_label(client)}-{stamp}" + (f"-{variant}" if variant else "")
    name = fit(stem, tag + ext)
    return f"{head}/{name}" if head else name


def spare_name(path: str, client: str, mtime_ns: int, digest: str | None) -> str:
    """Where the copy goes if its name holds another file: the content tells them apart."""
    return conflict_name(path, client, mtime_ns, (digest or "dir")[:HASH_CHARS])


def split_extension(name: str) -> tuple[str, str]:
    stem, ext = os.path.splitext(name)
    if byte_length(ext) > MAX_EXT:
        return name, ""
    return stem, ext


def fit(stem: str, tail: str) -> str:
    """``stem + tail``, with the stem shortened (and marked with a hash of the whole
    name) if the name would not fit in NAME_MAX bytes."""
    name = stem + tail
    if byte_length(name) <= NAME_MAX:
        return name
    mark = "~" + hashlib.sha256(to_bytes(name)).hexdigest()[:HASH_CHARS]
    return _cut(stem, NAME_MAX - byte_length(tail) - len(mark)) + mark + tail


def _label(client: str) -> str:
    """The client name as it appears in a conflict name (bounded in length)."""
    return _cut(client, MAX_LABEL)


def _cut(text: str, room: int) -> str:
    """The longest prefix of ``text`` that takes at most ``room`` bytes, whole characters only."""
    used = 0
    for i, ch in enumerate(text):
        used += byte_length(ch)
        if used > room:
            return text[:i]
    return text
