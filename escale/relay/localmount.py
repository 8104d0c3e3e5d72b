"""A folder on a mounted filesystem (``file:///abs/path``) used as the relay.

Writes go to a hidden temporary file in the target's folder and are renamed
into place, so a reader never sees a half-written object.

Create-if-absent gives the complete temporary its final name only if that name is
free, by the first of these the file system supports (found at the first such put):

1. ``link(tmp, name)``: fails atomically when the name is taken (POSIX file systems);
2. ``renameat2(tmp, name, RENAME_NOREPLACE)`` (Linux): the same guarantee on file
   systems without hard links that implement it (vfat and exFAT on Linux 6.x…);
3. a claim: ``open(name, O_CREAT|O_EXCL)`` (atomic on local file systems, SMB and NFSv3+),
   then ``rename(tmp, name)`` over the empty file we own. The name is taken atomically,
   but between the two steps a reader may see an empty object, and a crash between them
   leaves one: this mode is declared ``atomic_create=False`` and logged once.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import ObjectExists, RelayError, RelayObjectMissing, SourceError
from .base import Capabilities, ObjectInfo, Relay, Usage, check_name

log = logging.getLogger(__name__)

TMP_MARK = ".escale-put-"
#: temporary files older than this are leftovers of a killed writer
STALE_TMP_SECONDS = 6 * 3600
COPY_BUFFER = 1 << 20
#: no escale object is deeper than b/<cid>/<seq>/<n>; a folder nested deeper than this
#: is not ours, and walking it without bound would exhaust the stack or the time
MAX_RELAY_DEPTH = 16


def _walk(top: str | os.PathLike, onerror=None) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` without recursion and with a depth bound (3.11's walk recurses: a
    folder a thousand levels deep is a RecursionError). Too deep is a RelayError."""
    stack = [(os.fspath(top), 0)]
    while stack:
        dirpath, depth = stack.pop()
        try:
            entries = list(os.scandir(dirpath))
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            continue
        dirs = sorted(e.name for e in entries if e.is_dir())  # as os.walk: symlinks listed, not entered
        files = [e.name for e in entries if not e.is_dir()]
        into = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        if into and depth >= MAX_RELAY_DEPTH:
            raise RelayError(f"relay folder {os.path.join(dirpath, into[0])} is nested deeper than "
                             f"{MAX_RELAY_DEPTH} levels: not an escale object; remove it")
        yield dirpath, dirs, files
        stack.extend((os.path.join(dirpath, d), depth + 1) for d in reversed(dirs) if d in into)


#: errors of link()/renameat2() that mean "this file system cannot", not "the name is taken"
_UNSUPPORTED = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK, errno.EINVAL,
                errno.EXDEV, errno.EACCES}
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def _rename_noreplace(src: Path, dst: Path) -> None:
    """``renameat2(src, dst, RENAME_NOREPLACE)``; OSError(ENOSYS) where libc lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        raise OSError(errno.ENOSYS, "renameat2 is not available") from None
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(dst))


def _read_source(stream: BinaryIO, name: str) -> bytes:
    try:
        return stream.read(COPY_BUFFER)
    except OSError as exc:  # the local data, not the relay, failed: a file error
        raise SourceError(f"cannot read the data to send as relay object {name}: {exc.strerror or exc}") from exc


class LocalMount(Relay):
    schemes = ("file",)

    def __init__(self, address: str, *, hard_links: bool | None = None, **_ignored):
        """``hard_links=False`` declares a file system without them (found by trying when None)."""
        super().__init__(address)
        path = address[len("file://"):] if address.startswith("file://") else address
        self.root = Path(os.path.expanduser(path))
        #: how create-if-absent is done here: "link", "noreplace" or "claim" (see the module doc)
        self.create_mode: str | None = None if hard_links is not False else "noreplace"

    def open(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RelayError(f"cannot use relay folder {self.root}: {exc.strerror}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise RelayError(f"relay folder {self.root} is not writable")
        self._remove_stale_temporaries()

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*check_name(name).split("/"))

    def _remove_stale_temporaries(self) -> None:
        now = time.time()
        for dirpath, _dirs, files in _walk(self.root):
            for f in files:
                if f.startswith(TMP_MARK):
                    p = os.path.join(dirpath, f)
                    try:
                        if now - os.stat(p).st_mtime > STALE_TMP_SECONDS:
                            os.unlink(p)
                    except OSError:
                        pass

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            raise RelayError(f"relay folder {self.root} is missing")
        base = str(self.root)

        def fail(exc: OSError) -> None:  # os.walk would skip an unreadable folder silently
            if isinstance(exc, FileNotFoundError) and exc.filename != base:
                return  # removed while we listed (a pruned empty folder)
            raise RelayError(f"cannot list relay folder {exc.filename or self.root}: {exc.strerror or exc}") \
                from exc

        for dirpath, dirs, files in _walk(base, onerror=fail):
            dirs.sort()
            rel = os.path.relpath(dirpath, base)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for f in sorted(files):
                if f.startswith(TMP_MARK):
                    continue
                name = rel + f
                if not name.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, f))
                except FileNotFoundError:
                    continue  # deleted while we listed
                except OSError as exc:
                    raise RelayError(f"cannot read relay object {name}: {exc.strerror or exc}") from exc
                yield ObjectInfo(name, st.st_size, st.st_mtime)

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            st = self._path(name).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(name, st.st_size, st.st_mtime)

    def get(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError as exc:
            raise RelayObjectMissing(f"relay object {name} is missing") from exc
        except OSError as exc:
            raise RelayError(f"cannot read relay object {name}: {exc}") from exc

    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False, size: int | None = None) -> int:
        target = self._path(name)
        # the target's name is in the temporary's, so its writer can find it after a crash
        tmp = target.parent / f"{TMP_MARK}{target.name}.{uuid.uuid4().hex}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as out:
                n = 0
                while chunk := _read_source(stream, name):
                    out.write(chunk)
                    n += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if create_only:
                self._create(tmp, target, name)
            else:
                os.replace(tmp, target)
            return n
        except SourceError:
            raise
        except OSError as exc:
            raise RelayError(f"cannot write relay object {name}: {exc}") from exc
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _create(self, tmp: Path, target: Path, name: str) -> None:
        """Give the complete ``tmp`` the name ``target`` only if that name is free."""
        try:
            if self.create_mode in (None, "link"):
                try:
                    os.link(tmp, target)
                    self.create_mode = "link"
                    return
                except FileExistsError:
                    raise
                except OSError as exc:
                    if exc.errno not in _UNSUPPORTED:
                        raise
                    log.info("%s: no hard links here (%s); trying rename without replace", self.root, exc.strerror)
            if self.create_mode in (None, "link", "noreplace"):
                try:
                    _rename_noreplace(tmp, target)
                    self.create_mode = "noreplace"
                    return
                except FileExistsError:
                    raise
                except OSError as exc:
                    if exc.errno not in _UNSUPPORTED:
                        raise
                    log.warning("%s: neither hard links nor rename-without-replace work here; creating an "
                                "object only if absent claims its name first (a reader may see it empty "
                                "for a moment)", self.root)
            self.create_mode = "claim"
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.replace(tmp, target)
        except FileExistsError as exc:
            raise ObjectExists(f"relay object {name} already exists") from exc

    @property
    def capabilities(self) -> Capabilities:
        """Create-if-absent is atomic unless only the claim mode works (known after the first one)."""
        return Capabilities(atomic_create=self.create_mode != "claim")

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise RelayError(f"cannot delete relay object {name}: {exc}") from exc
        # prune now-empty folders up to the root, so the relay does not fill with them
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def abort_incomplete(self, prefix: str) -> int:
        folder, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        if folder:
            check_name(folder)
        removed = 0
        for dirpath, _dirs, files in _walk(start):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for f in files:
                if not f.startswith(TMP_MARK):
                    continue
                target = rel + f[len(TMP_MARK):].rsplit(".", 1)[0]
                if target.startswith(prefix):
                    try:
                        os.unlink(os.path.join(dirpath, f))
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed

    def usage(self) -> Usage:
        try:
            du = shutil.disk_usage(self.root)
        except OSError:
            return Usage()
        return Usage(used=None, available=du.free)
