"""Local access rules: the sync mode, per-file r/w flags, and the path gate.

Three concerns live here because they answer the same question — "may this file go up,
may that file come down, and where exactly?":

* :class:`AccessAttributes` — the per-file table of explicit ``r``/``w`` flags that
  ``escalectl access`` edits (``r`` = may be uploaded, ``w`` = may be written locally).
* :class:`AccessController` — one synced folder: its mode (shared, upload, download,
  conservative), its flags, and the listing of local files.
* :func:`safe_join` — the single gate every relay-supplied path goes through before it
  touches the disk. escale 0.7 joined relay names to the local root unchecked; anyone able
  to write to the relay could then write outside the folder.

Names follow escale 0.7 (``getReadability``, ``writable``, ``listFiles``…) so that code
written against 0.7 keeps working.

Length: the three share one table and one folder listing; apart they would pass the
same state around (a split is due once the mode and the path gate grow).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from escale import sqlitedbm
from escale.confined import Tree
from escale.errors import ConfigError, UnsafePath
from escale.fsnames import is_state_name
from escale.private import FILE_MODE, private_file

log = logging.getLogger(__name__)

__all__ = [
    "SHARED", "UPLOAD", "DOWNLOAD", "CONSERVATIVE", "MODES",
    "AccessAttributes", "AccessController", "Accessor",
    "parse_modifiers", "normalize_mode", "safe_join",
    "STATE_DIR", "TEMP_MARKER",
]

SHARED, UPLOAD, DOWNLOAD, CONSERVATIVE = "shared", "upload", "download", "conservative"
MODES = (SHARED, UPLOAD, DOWNLOAD, CONSERVATIVE)

#: escale's own folder at the top of every synced folder; never listed, never written.
STATE_DIR = ".escale"
#: substring of the temporary files escale writes before renaming them into place.
TEMP_MARKER = ".escale-tmp-"

_FLAG_TO_BYTE = {True: b"+", False: b"-", None: b" "}
_BYTE_TO_FLAG = {ord("+"): True, ord("-"): False, ord(" "): None}
_DRIVE = re.compile(r"^[A-Za-z]:")


# --------------------------------------------------------------------------- paths

#: limits on a relay-supplied path (bytes, UTF-8): Linux's PATH_MAX and NAME_MAX, and a
#: depth far beyond real trees but well within what the folder code can walk
PATH_MAX, NAME_MAX, MAX_DEPTH = 4096, 255, 256


def check_path_limits(relpath: str) -> None:
    """Refuse a path too long, too deep or with a too-long name (UnsafePath)."""
    try:  # the bytes the file system will see (a name that is not UTF-8 travels escaped)
        size = len(relpath.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        raise UnsafePath(relpath, "path holds a character no file name can") from None
    if size >= PATH_MAX:
        raise UnsafePath(relpath, f"path of {size} bytes (the limit is {PATH_MAX - 1})")
    depth = relpath.count("/") + 1
    if depth > MAX_DEPTH:
        raise UnsafePath(relpath, f"path {depth} folders deep (the limit is {MAX_DEPTH})")
    longest = max(len(p.encode("utf-8", "surrogateescape")) for p in relpath.split("/"))
    if longest > NAME_MAX:
        raise UnsafePath(relpath, f"a name of {longest} bytes (the limit is {NAME_MAX})")


def safe_join(root: str | os.PathLike[str], relpath: str) -> Path:
    """``root/relpath``, after checking it with :func:`check_relpath`."""
    check_relpath(root, relpath)
    return Path(f"{os.fspath(root)}/{relpath}")


def check_relpath(root: str | os.PathLike[str], relpath: str) -> None:
    """Check that ``relpath`` cannot land outside ``root`` (no path object is made: the
    folder calls it for every file it touches).

    Every path read from the relay must come through here. Rejected, with
    :class:`~escale.errors.UnsafePath`: non-strings, empty paths, absolute paths,
    Windows drive letters, backslashes, NUL, empty / ``.`` / ``..`` components, a
    first component that some file system takes for ``.escale`` (escale's own state:
    any letter case, NFC/NFD, trailing dots or spaces, ``ESCALE~1``… see
    :func:`escale.fsnames.is_state_name`), and any existing parent folder inside
    ``root`` that is a symlink (it could point anywhere). ``root`` itself may be a
    symlink: the user chose it. This check alone is racy (a folder may become a link
    right after it); the folder's writes never follow links (:mod:`escale.confined`).
    """
    if not isinstance(relpath, str):
        raise UnsafePath(repr(relpath), "path is not a string")
    parts = _spelling(relpath)  # remembered: a pulled file is checked by the applier, then each folder step
    base = os.fspath(root)
    current = base
    for i, part in enumerate(parts[:-1]):
        current = f"{current}/{part}"
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break  # nothing deeper can exist either
        except NotADirectoryError:
            break  # a file where a folder should be: writing will fail, harmlessly
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(relpath, f"folder {'/'.join(parts[:i + 1])!r} is a symbolic link")


@functools.lru_cache(maxsize=4096)
def _spelling(relpath: str) -> tuple[str, ...]:
    """The checks of :func:`check_relpath` that depend on the string alone; its parts.

    Remembered for the last 4096 paths that passed, in one table for the whole process
    rather than one per folder or client: the answer is a function of the string alone
    (no root, no file system, no configuration), so every folder and thread may share
    it, and :func:`check_relpath` is called where no instance is at hand (the applier,
    each folder operation). A refused path raises and is not remembered: it is refused
    again each time. The symbolic-link check, which depends on the folder, is never
    remembered. At most 4096 entries of at most PATH_MAX bytes: 16 MiB for a hostile
    relay's longest names, a few hundred KiB for real ones. ``functools.lru_cache`` is
    thread-safe and keeps the most recent paths where a hand-written set was emptied
    whole when full."""
    if not relpath:
        raise UnsafePath(relpath, "empty path")
    if "\x00" in relpath:
        raise UnsafePath(relpath, "path contains a NUL character")
    if "\\" in relpath:
        raise UnsafePath(relpath, "path contains a backslash")
    if relpath.startswith("/"):
        raise UnsafePath(relpath, "absolute path")
    if _DRIVE.match(relpath):
        raise UnsafePath(relpath, "path starts with a drive letter")
    check_path_limits(relpath)
    parts = relpath.split("/")
    for part in parts:
        if not part:
            raise UnsafePath(relpath, "path has an empty component")
        if part in (".", ".."):
            raise UnsafePath(relpath, f"path has a {part!r} component")
    if is_state_name(parts[0]):
        raise UnsafePath(relpath, f"path is inside escale's own {STATE_DIR}/ folder (on a file system that "
                                  "ignores letter case, Unicode normalisation or trailing dots)")
    return tuple(parts)


# --------------------------------------------------------------------------- modifiers

def parse_modifiers(args: list[str] | tuple[str, ...] | str) -> dict[str, bool | None]:
    """Parse ``escalectl access`` modifiers into ``{'r': …, 'w': …}``.

    The arguments are concatenated (whitespace ignored) and read as a sequence of a
    letter ``r`` or ``w`` followed by ``+`` (allow), ``-`` (forbid) or ``?`` (unset).
    A letter with no sign — at the end or directly followed by another letter — means
    ``+``; so ``rw-`` is ``r+ w-`` and ``rw`` is ``r+ w+``. (escale 0.7 crashed on
    ``rw-``.) Giving one letter two different values is an error.

    Returns only the letters given; raises ValueError with the offending text.
    """
    text = "".join(args if not isinstance(args, str) else [args])
    text = "".join(text.split())
    result: dict[str, bool | None] = {}
    i = 0
    while i < len(text):
        letter = text[i]
        if letter not in "rw":
            raise ValueError(f"invalid access modifier {text!r} at position {i + 1}: expected "
                             f"'r' or 'w', found {letter!r} (examples: r-, w+, r?w-)")
        i += 1
        sign = text[i] if i < len(text) and text[i] in "+-?" else "+"
        if i < len(text) and text[i] in "+-?":
            i += 1
        value = {"+": True, "-": False, "?": None}[sign]
        if letter in result and result[letter] is not value:
            raise ValueError(f"invalid access modifier {text!r}: {letter!r} is given "
                             "conflicting values")
        result[letter] = value
    return result


def _flag_str(value: bool | None) -> str:
    return {True: "+", False: "-", None: "?"}[value]


# --------------------------------------------------------------------------- attributes

def _key(resource: str | os.PathLike[str]) -> str:
    """The table key: a relative POSIX path (``a//b`` and ``./a`` normalised)."""
    text = os.fspath(resource)
    key = PurePosixPath(text).as_posix()
    if not text or key == "." or key.startswith("/"):
        raise ValueError(f"access flags need a relative path, not {text!r}")
    return key


class AccessAttributes:
    """The per-file r/w flag table.

    Stored in a SQLite dbm (see :mod:`escale.sqlitedbm`) at ``location``, or in memory
    when ``location`` is None. Key: the relative POSIX path in UTF-8. Value: two bytes,
    r then w, each ``+`` (allowed), ``-`` (forbidden) or a space (unset). An entry whose
    two flags are unset is deleted, so the table only holds explicit choices.
    """

    def __init__(self, location: str | os.PathLike[str] | None = None, dbm_mode: str = "c"):
        self.location: Path | None = None if location is None else Path(location)
        self._lock = threading.RLock()
        self._db: MutableMapping | None
        if self.location is None:
            self._db = {}
        else:
            if dbm_mode in ("c", "n"):
                self.location.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlitedbm.open(self.location, dbm_mode, FILE_MODE, threadsafe=True)
            if dbm_mode != "r":
                private_file(self.location, create=False)

    # -- raw access
    def _table(self) -> MutableMapping:
        if self._db is None:
            raise ValueError("access attributes are closed")
        return self._db

    def _get(self, resource: str | os.PathLike[str]) -> tuple[bool | None, bool | None]:
        key = _key(resource)
        raw = self._table().get(key.encode("utf-8", "surrogateescape"))  # see escale.names
        if raw is None:
            return None, None
        return self._decode(key, raw)

    @staticmethod
    def _decode(key: str, raw: bytes) -> tuple[bool | None, bool | None]:
        raw = bytes(raw)
        if len(raw) != 2 or raw[0] not in _BYTE_TO_FLAG or raw[1] not in _BYTE_TO_FLAG:
            log.warning("ignoring malformed access flags %r for %s", raw, key)
            return None, None
        return _BYTE_TO_FLAG[raw[0]], _BYTE_TO_FLAG[raw[1]]

    def _set(self, resource: str | os.PathLike[str], *, r: object = ..., w: object = ...) -> None:
        key = _key(resource)
        with self._lock:  # read-modify-write of one entry
            old_r, old_w = self._get(key)
            new_r = old_r if r is ... else r
            new_w = old_w if w is ... else w
            for name, value in (("r", new_r), ("w", new_w)):
                if value not in (True, False, None):
                    raise TypeError(f"{name} flag must be True, False or None, not {value!r}")
            table, bkey = self._table(), key.encode("utf-8", "surrogateescape")
            if new_r is None and new_w is None:
                table.pop(bkey, None)
            else:
                table[bkey] = _FLAG_TO_BYTE[new_r] + _FLAG_TO_BYTE[new_w]  # type: ignore[index]
        log.debug("access flags of %s: r%s w%s", key, _flag_str(new_r), _flag_str(new_w))  # type: ignore[arg-type]

    # -- 0.7 API
    def getReadability(self, resource: str | os.PathLike[str]) -> bool | None:
        """True/False when set explicitly, None when unset."""
        return self._get(resource)[0]

    def getWritability(self, resource: str | os.PathLike[str]) -> bool | None:
        """True/False when set explicitly, None when unset."""
        return self._get(resource)[1]

    def setReadability(self, resource: str | os.PathLike[str], r: bool | None) -> None:
        self._set(resource, r=r)

    def setWritability(self, resource: str | os.PathLike[str], w: bool | None) -> None:
        self._set(resource, w=w)

    def setReadable(self, resource: str | os.PathLike[str]) -> None:
        self._set(resource, r=True)

    def setNotReadable(self, resource: str | os.PathLike[str]) -> None:
        self._set(resource, r=False)

    def setWritable(self, resource: str | os.PathLike[str]) -> None:
        self._set(resource, w=True)

    def setNotWritable(self, resource: str | os.PathLike[str]) -> None:
        self._set(resource, w=False)

    def unsetReadability(self, resource: str | os.PathLike[str]) -> None:
        self._set(resource, r=None)

    def unsetWritability(self, resource: str | os.PathLike[str]) -> None:
        self._set(resource, w=None)

    def isReadable(self, resource: str | os.PathLike[str],
                   make_explicit: bool | None = None) -> bool:
        """May the file be uploaded? Unset counts as allowed; only ``r-`` blocks.

        With ``make_explicit`` (True/False), an unset flag is first stored as that value.
        """
        with self._lock:
            r = self.getReadability(resource)
            if r is None and make_explicit is not None:
                self.setReadability(resource, make_explicit)
                r = make_explicit
        return r is not False

    def isWritable(self, resource: str | os.PathLike[str],
                   make_explicit: bool | None = None) -> bool:
        """May the file be written locally? Unset counts as allowed; only ``w-`` blocks.

        With ``make_explicit`` (True/False), an unset flag is first stored as that value.
        """
        with self._lock:
            w = self.getWritability(resource)
            if w is None and make_explicit is not None:
                self.setWritability(resource, make_explicit)
                w = make_explicit
        return w is not False

    def table(self, resource: str | os.PathLike[str]) -> str:
        """The flags as ``escalectl access`` prints them, e.g. ``r+w?``."""
        r, w = self._get(resource)
        return f"r{_flag_str(r)}w{_flag_str(w)}"

    def items(self) -> Iterator[tuple[str, bool | None, bool | None]]:
        """Every explicit entry as ``(relative path, r, w)``."""
        for bkey, raw in list(self._table().items()):
            key = bytes(bkey).decode("utf-8", "surrogateescape")
            r, w = self._decode(key, raw)
            yield key, r, w

    def close(self) -> None:
        """Close the table (idempotent)."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None and hasattr(db, "close"):
            db.close()

    def __enter__(self) -> AccessAttributes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AccessAttributes({str(self.location) if self.location else None!r})"


# --------------------------------------------------------------------------- controller

def normalize_mode(mode: str | None, push_only: bool = False, pull_only: bool = False) -> str:
    """The canonical mode name for a config value and the push/pull-only switches.

    Accepts the 0.7 spellings: ``upload``, ``download``, anything starting with ``shar``,
    ``conservative``/``protective``/``preservative`` (0.7 documented the last one but
    rejected it). Raises ConfigError otherwise.
    """
    if push_only and pull_only:
        raise ConfigError("'push only' and 'pull only' cannot both be set", option="mode")
    implied = UPLOAD if push_only else DOWNLOAD if pull_only else None
    if mode is None or not str(mode).strip():
        return implied or SHARED
    text = str(mode).strip().lower()
    if text.startswith("shar"):
        canonical = SHARED
    elif text in ("upload", "download"):
        canonical = text
    elif text in ("conservative", "protective", "preservative"):
        canonical = CONSERVATIVE
    else:
        raise ConfigError(f"unknown mode {mode!r}; expected shared, upload, download or "
                          "conservative", option="mode")
    if implied is not None and canonical != implied:
        raise ConfigError(f"mode {canonical!r} contradicts "
                          f"'{'push only' if push_only else 'pull only'}'", option="mode")
    return canonical


@dataclass(frozen=True)
class Accessor:
    """A handle on one local file that only exposes what the controller allows (0.7 API)."""

    exists: Callable[[], bool]
    delete: Callable[[], None]


class AccessController:
    """Who may do what in one synced folder.

    ``mode``: ``shared`` (default; push and pull), ``upload`` (push only: local files
    are never written), ``download`` (pull only: nothing is pushed), ``conservative``
    (push and pull, but never overwrite a local file changed here since it was last
    synced: the incoming version is kept beside it as a conflict copy; that rule lives in
    :func:`escale.plan.reconcile`, which knows the synced base). ``push_only``/``pull_only`` mean upload/download.

    ``persistent`` is the flag table's file (None: flags kept in memory). The table is
    always opened and created when missing, so flags set by ``escalectl`` are never
    silently ignored (they were in 0.7). ``create`` and ``unsafe`` are accepted for 0.7
    compatibility; ``unsafe`` does not disable :func:`safe_join`.
    """

    def __init__(self, repository: str, path: str | os.PathLike[str],
                 persistent: str | os.PathLike[str] | None = None, push_only: bool = False,
                 pull_only: bool = False, mode: str | None = None, create: bool = False,
                 unsafe: bool = False, verbosity: int = 1, **ignored: object):
        if ignored:
            log.debug("AccessController(%s): ignoring %s", repository, sorted(ignored))
        self._repository = repository
        self._path = Path(path).expanduser().absolute()
        self._mode = normalize_mode(mode, push_only, pull_only)
        self._persistent = None if persistent is None else Path(persistent)
        self.create = create
        self.unsafe = unsafe
        self.verbosity = verbosity
        self._attributes = AccessAttributes(self._persistent, "c")

    # -- properties
    @property
    def repository(self) -> str:
        return self._repository

    @property
    def path(self) -> Path:
        return self._path

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def persistent(self) -> Path | None:
        return self._persistent

    @property
    def attributes(self) -> AccessAttributes:
        return self._attributes

    # -- mode
    def may_push(self) -> bool:
        return self._mode != DOWNLOAD

    def may_pull(self) -> bool:
        return self._mode != UPLOAD

    # -- decisions
    def absolute(self, relpath: str) -> Path:
        """The local path of a relay-supplied name (raises UnsafePath)."""
        return safe_join(self._path, relpath)

    def isReadable(self, relpath: str) -> bool:
        """May this local file be uploaded?"""
        return self.may_push() and self._attributes.isReadable(relpath)

    def isWritable(self, relpath: str) -> bool:
        """May this file be written locally? Raises UnsafePath for an unsafe name."""
        target = self.absolute(relpath)
        if not self.may_pull():
            return False
        w = self._attributes.getWritability(relpath)
        if w is False:
            return False
        if os.path.islink(target):
            return False  # symlinks are not synced; never replace the user's link
        return True

    def readable(self, files: list[str], unsafe: bool = False) -> list[str]:
        """The files among ``files`` that may be uploaded (none in download mode)."""
        if not self.may_push():
            return []
        return [f for f in files if self._attributes.isReadable(f)]

    def writable(self, filename: str, absolute: bool = True) -> Path | str | None:
        """Where a relay file may be written locally, or None if it may not.

        Always checks ``filename`` with :func:`safe_join` first, whatever the mode, so
        an unsafe relay name raises UnsafePath rather than being quietly skipped.
        Returns a Path when ``absolute``, else the relative POSIX path.
        """
        target = self.absolute(filename)
        if not self.isWritable(filename):
            if self.verbosity > 1:
                log.debug("%s: %s is not writable in %s mode", self._repository, filename,
                          self._mode)
            return None
        return target if absolute else filename

    # -- flags
    def getReadability(self, filename: str) -> bool | None:
        return self._attributes.getReadability(filename)

    def setReadability(self, filename: str, r: bool | None) -> None:
        self._attributes.setReadability(filename, r)

    def getWritability(self, filename: str) -> bool | None:
        return self._attributes.getWritability(filename)

    def setWritability(self, filename: str, w: bool | None) -> None:
        self._attributes.setWritability(filename, w)

    # -- 0.7 compatibility
    @contextlib.contextmanager
    def confirmPull(self, filename: str) -> Iterator[None]:
        """Kept for 0.7 API compatibility; does nothing (flags are never changed implicitly)."""
        yield

    @contextlib.contextmanager
    def confirmPush(self, filename: str) -> Iterator[None]:
        """Kept for 0.7 API compatibility; does nothing (flags are never changed implicitly)."""
        yield

    def accessor(self, filename: str) -> Accessor:
        """A handle on one file: ``exists()`` and ``delete()`` (refused unless writable)."""
        target = self.absolute(filename)

        def delete() -> None:
            if not self.isWritable(filename):
                raise PermissionError(f"{filename}: not writable in {self._mode} mode "
                                      f"(flags {self._attributes.table(filename)})")
            try:  # by descriptor: a folder swapped for a link meanwhile cannot redirect it
                with Tree(self._path).parent(filename) as (fd, name):
                    os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass

        return Accessor(exists=lambda: os.path.lexists(target), delete=delete)

    def listFiles(self, path: str | None = None, basename: Callable[[str], bool] | None = None,
                  dirname: Callable[[str], bool] | None = None,
                  absolute: bool = False) -> list[str]:
        """Every regular file under the folder (or under ``path``), sorted.

        Unlike 0.7, dot-files are included. Left out: the top-level ``.escale`` (any
        letter case, as :func:`safe_join` refuses it), names containing ``.escale-tmp-``
        (escale's partial downloads), symlinks (not followed, not listed), other special
        files, and names that are not valid UTF-8 (they could not be named on the relay;
        a warning says so).

        ``basename(name)`` selects files by base name; ``dirname(reldir)`` is called with
        each sub-folder's relative POSIX path before it is entered, and False prunes it.
        Paths are relative POSIX strings, or absolute strings when ``absolute``.
        """
        start = "" if path in (None, "", ".") else PurePosixPath(path).as_posix()
        top = self.absolute(start) if start else self._path
        found: list[str] = []
        self._walk(top, start, basename, dirname, found)
        found.sort()
        if absolute:
            return [str(self._path.joinpath(*rel.split("/"))) for rel in found]
        return found

    def _walk(self, folder: Path, rel: str, basename: Callable[[str], bool] | None,
              dirname: Callable[[str], bool] | None, found: list[str]) -> None:
        try:
            with os.scandir(folder) as entries:
                listing = list(entries)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("%s: cannot list %s: %s", self._repository, folder, exc)
            return
        for entry in listing:
            name = entry.name
            child = f"{rel}/{name}" if rel else name
            if not rel and is_state_name(name):
                continue
            if TEMP_MARKER in name:
                continue
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                log.warning("%s: skipping %r: the name is not valid UTF-8", self._repository,
                            os.path.join(folder, name))
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if dirname is None or dirname(child):
                        self._walk(Path(entry.path), child, basename, dirname, found)
                elif entry.is_file(follow_symlinks=False):
                    if basename is None or basename(name):
                        found.append(child)
            except OSError as exc:
                log.warning("%s: cannot stat %s: %s", self._repository, entry.path, exc)

    def close(self) -> None:
        """Close the flag table."""
        self._attributes.close()

    def __enter__(self) -> AccessController:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"AccessController({self._repository!r}, {str(self._path)!r}, "
                f"mode={self._mode!r})")
