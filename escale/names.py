"""File names as the file system has them (bytes) and as escale carries them (text).

On Linux a file name is any bytes but ``/`` and NUL, and old archives hold names in
Latin-1 or other encodings that are not UTF-8. Python reads every byte that is not
part of valid UTF-8 as a lone surrogate U+DC80+byte ("surrogateescape", PEP 383), so
a name read from disk is always a ``str`` that turns back into the exact bytes. escale
keeps that text form everywhere:

- on the wire, JSON writes such a character as ``\\udcXX`` (every object is JSON
  with ``ensure_ascii``), and a receiver recreates the same bytes;
- in SQLite, which stores text as strict UTF-8, a path that is not UTF-8 is keyed by
  :func:`db_key`, a form no real path can take (it starts with ``/``).

A relay path is accepted only in its one canonical form (:func:`is_canonical`): two
different texts never name the same file.
"""
from __future__ import annotations

FS_ERRORS = "surrogateescape"
#: how a key of a path that is not UTF-8 starts: never the start of a relative path
_RAW_KEY = "/raw/"


def to_bytes(path: str) -> bytes:
    """The bytes the file system knows the name by (raises UnicodeEncodeError if none)."""
    return path.encode("utf-8", FS_ERRORS)


def byte_length(text: str) -> int:
    return len(to_bytes(text))


def is_canonical(path: str) -> bool:
    """True if ``path`` is exactly how Python reads some byte name back from disk.

    Refuses surrogates that stand for no byte (``\\ud800``), and escaped bytes that
    together spell valid UTF-8 (``\\udcc3\\udca9`` would alias ``é``)."""
    if path.isascii():  # the common case, without encoding
        return True
    try:
        return to_bytes(path).decode("utf-8", FS_ERRORS) == path
    except UnicodeError:
        return False


def is_utf8(path: str) -> bool:
    if path.isascii():
        return True
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def db_key(path: str) -> str:
    """The SQLite text key of a path: the path itself when it is UTF-8, else its bytes
    in hex after ``/raw/`` (a relative path never starts with ``/``)."""
    return path if is_utf8(path) else _RAW_KEY + to_bytes(path).hex()


def from_db_key(key: str) -> str:
    if key.startswith(_RAW_KEY):
        return bytes.fromhex(key[len(_RAW_KEY):]).decode("utf-8", FS_ERRORS)
    return key


def shown(path: str) -> str:
    """A path as printed for a person: a byte that is not UTF-8 appears as ``\\xNN``."""
    return to_bytes(path).decode("utf-8", "backslashreplace")
