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

Whoever can change the relay folder could put symbolic links in it (``a/`` or
``u/<id>/`` pointing into a client's home); every operation therefore goes through
descriptors opened without following links (:mod:`escale.confined`), and a link found
anywhere inside the relay is a RelayError naming it. The relay folder itself may be a
link: the user chose it.

Network mounts (NFS, SMB, sshfs) fail in ways that pass: a stale handle after the server
restarted, a timeout, a reset. Those errors (ESTALE, ETIMEDOUT, EAGAIN, ECONNRESET…) are
transient and every operation is retried by the shared wrapper (:mod:`escale.relay.retry`,
``max retries``, default 5): a listing from its start, a read or delete as a whole, a put
at its last step (the temporary is complete and stays until the name is given). Giving
the name is not idempotent on a network mount: a ``link()`` or rename whose answer was
lost, retried, finds the name taken; it is ours when the name is the temporary's inode
(``link``), or when the temporary (a random name only that put uses) is gone (rename),
and then it is not "exists".
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import stat
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

from ..confined import O_NEW, Found, LinkInTree, Tree
from ..errors import ObjectExists, RelayError, RelayObjectMissing, SourceError
from . import retry
from .base import STALE_TMP_SECONDS, TMP_MARK, Capabilities, ObjectInfo, Relay, Usage, check_name
from .options import MAX_RETRIES
from .split import MAX_OBJECT_SIZE

log = logging.getLogger(__name__)

COPY_BUFFER = 1 << 20
#: no escale object is deeper than b/<cid>/<seq>/<n>; a folder nested deeper than this
#: is not ours, and walking it without bound would exhaust the stack or the time
MAX_RELAY_DEPTH = 16


#: errors of link()/renameat2() that mean "this file system cannot", not "the name is taken"
_UNSUPPORTED = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK, errno.EINVAL,
                errno.EXDEV, errno.EACCES}
_RENAME_NOREPLACE = 1
#: errors of a network mount that may pass by themselves (retried, then a RelayError)
TRANSIENT_ERRNOS = frozenset(e for e in (getattr(errno, n, None) for n in (
    "ESTALE", "ETIMEDOUT", "EAGAIN", "ECONNRESET", "ECONNABORTED", "ENETRESET", "ENETUNREACH", "EHOSTUNREACH",
    "EHOSTDOWN")) if e is not None)


def _rename_noreplace(fd: int, src: str, dst: str) -> None:
    """``renameat2(fd, src, fd, dst, RENAME_NOREPLACE)``; OSError(ENOSYS) where libc lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        raise OSError(errno.ENOSYS, "renameat2 is not available") from None
    if fn(fd, os.fsencode(src), fd, os.fsencode(dst), _RENAME_NOREPLACE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), dst)


def _read_source(stream: BinaryIO, name: str) -> bytes:
    try:
        return stream.read(COPY_BUFFER)
    except OSError as exc:  # the local data, not the relay, failed: a file error
        raise SourceError(f"cannot read the data to send as relay object {name}: {exc.strerror or exc}") from exc


def _retried(what: str, relay: "LocalMount", fn, *, landed=None, recheck: tuple = ()):
    """``fn()`` under the shared retry policy: an OSError whose errno may pass (a network
    mount's) is retried; any other exception is raised as it is."""
    def once(_attempt: int):
        try:
            return fn()
        except OSError as exc:
            if exc.errno not in TRANSIENT_ERRNOS or isinstance(exc, SourceError):
                raise
            reason = f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno, exc.errno)})"
            raise retry.transient(f"{what} in relay folder {relay.root}: {reason}", reason=reason) from exc

    return retry.call(once, policy=relay.retry, what=f"{what} in relay folder {relay.root}", landed=landed,
                      recheck=recheck)


class LocalMount(Relay):
    schemes = ("file",)
    options = (MAX_RETRIES, MAX_OBJECT_SIZE)

    def __init__(self, address: str, *, hard_links: bool | None = None, max_retries=None, **_ignored):
        """``hard_links=False`` declares a file system without them (found by trying when None)."""
        super().__init__(address)
        self.retry = retry.RetryPolicy.from_option(max_retries)
        path = address[len("file://"):] if address.startswith("file://") else address
        self.root = Path(os.path.expanduser(path))
        self._tree = Tree(self.root)
        #: how create-if-absent is done here: "link", "noreplace" or "claim" (see the module doc)
        self.create_mode: str | None = None if hard_links is not False else "noreplace"

    def open(self) -> None:
        if not self.root.parent.is_dir():  # an unmounted disk: never build a relay in its place
            raise RelayError(f"cannot use relay folder {self.root}: its parent folder {self.root.parent} does "
                             "not exist (is the disk mounted?); escale creates a relay folder only inside an "
                             "existing folder")
        try:
            self.root.mkdir(exist_ok=True)
        except OSError as exc:
            raise RelayError(f"cannot use relay folder {self.root}: {exc.strerror}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise RelayError(f"relay folder {self.root} is not writable")
        self._remove_stale_temporaries()

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*check_name(name).split("/"))

    @contextlib.contextmanager
    def _at(self, name: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """The descriptor of the folder holding object ``name``, and its last name — reached
        without following any link inside the relay (:mod:`escale.confined`)."""
        check_name(name)
        try:
            with self._tree.parent(name, create=create, mode=0o777) as at:
                yield at
        except LinkInTree as exc:
            raise self._link_error(exc) from None

    def _link_error(self, exc: LinkInTree) -> RelayError:
        return RelayError(f"relay folder {self.root}: {exc.relpath} {exc.what}; escale never follows "
                          "links inside a relay (someone changed the relay folder)")

    def _walk(self, top: str = "") -> Iterator[tuple[str, int, list[Found]]]:
        """Every folder of the relay under ``top``; a link anywhere is a RelayError naming it,
        an unreadable folder a RelayError too (never skipped silently)."""
        def fail(rel: str, exc: OSError) -> None:
            if isinstance(exc, LinkInTree):
                raise self._link_error(exc)
            if isinstance(exc, FileNotFoundError):
                return  # removed while we listed (a pruned empty folder), or nothing there yet
            if exc.errno in TRANSIENT_ERRNOS:
                raise exc  # retried by list()
            raise RelayError(f"cannot list relay folder {self.root}/{rel}: {exc.strerror or exc}") from exc

        for rel, fd, entries in self._tree.walk(top.split("/") if top else (), on_error=fail):
            depth = rel.count("/") + 1 if rel else 0
            for e in entries:
                if stat.S_ISLNK(e.st.st_mode):
                    raise self._link_error(LinkInTree(e.path, "is a symbolic link"))
                if stat.S_ISDIR(e.st.st_mode) and depth >= MAX_RELAY_DEPTH:
                    raise RelayError(f"relay folder {self.root}/{e.path} is nested deeper than "
                                     f"{MAX_RELAY_DEPTH} levels: not an escale object; remove it")
            yield rel, fd, entries

    def _remove_stale_temporaries(self) -> None:
        now = time.time()
        for _rel, fd, entries in self._walk():
            for e in entries:
                name = e.path.rpartition("/")[2]
                if name.startswith(TMP_MARK) and stat.S_ISREG(e.st.st_mode) and now - e.st.st_mtime > STALE_TMP_SECONDS:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=fd)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            raise RelayError(f"relay folder {self.root} is missing")

        def walk() -> list[ObjectInfo]:
            found = []
            for _rel, _fd, entries in self._walk():
                for e in entries:
                    name = e.path.rpartition("/")[2]
                    if stat.S_ISREG(e.st.st_mode) and not name.startswith(TMP_MARK) and e.path.startswith(prefix):
                        found.append(ObjectInfo(e.path, e.st.st_size, e.st.st_mtime))
            return found

        found = _retried("listing", self, walk)  # a listing is read whole, or again from its start
        found.sort(key=lambda i: i.name)
        yield from found

    def _stat_once(self, name: str) -> os.stat_result:
        with self._at(name) as (fd, last):
            return os.stat(last, dir_fd=fd, follow_symlinks=False)

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            st = _retried(f"stat of {name}", self, lambda: self._stat_once(name))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RelayError(f"cannot read relay object {name}: {exc}") from exc
        if stat.S_ISLNK(st.st_mode):
            raise self._link_error(LinkInTree(name, "is a symbolic link"))
        return ObjectInfo(name, st.st_size, st.st_mtime)

    def _open_once(self, name: str) -> BinaryIO:
        with self._at(name) as (fd, last):
            return self._tree.open_file(fd, last, name)

    def get(self, name: str) -> BinaryIO:
        try:
            return _retried(f"reading {name}", self, lambda: self._open_once(name))
        except LinkInTree as exc:
            raise self._link_error(exc) from None
        except FileNotFoundError as exc:
            raise RelayObjectMissing(f"relay object {name} is missing") from exc
        except OSError as exc:
            raise RelayError(f"cannot read relay object {name}: {exc}") from exc

    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False, size: int | None = None) -> int:
        try:
            with self._at(name, create=True) as (fd, last):
                # the target's name is in the temporary's, so its writer can find it after a crash
                tmp = f"{TMP_MARK}{last}.{uuid.uuid4().hex}"
                try:
                    with os.fdopen(os.open(tmp, O_NEW, 0o644, dir_fd=fd), "wb") as out:
                        n = 0
                        while chunk := _read_source(stream, name):
                            out.write(chunk)
                            n += len(chunk)
                        out.flush()
                        os.fsync(out.fileno())
                    if create_only:
                        self._create_retried(fd, tmp, last, name)
                    else:
                        _retried(f"writing {name}", self,
                                 lambda: os.replace(tmp, last, src_dir_fd=fd, dst_dir_fd=fd),
                                 landed=lambda: self._ours(fd, tmp, None, last))
                    return n
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=fd)
        except SourceError:
            raise
        except OSError as exc:
            raise RelayError(f"cannot write relay object {name}: {exc}") from exc

    @staticmethod
    def _ours(fd: int, tmp: str, tmp_ino: int | None, last: str) -> bool:
        """Whether ``last`` became our object though the call's answer was lost: it is the
        temporary's inode (a link), or the temporary — a random name only this put uses —
        is gone while ``last`` exists (a rename)."""
        try:
            st = os.stat(last, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return False
        if tmp_ino is not None and st.st_ino == tmp_ino:
            return True
        try:
            os.stat(tmp, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return False

    def _create_retried(self, fd: int, tmp: str, last: str, name: str) -> None:
        """:meth:`_create` under the retry policy: a retried create that finds the name taken
        by our own temporary (its first answer lost) succeeded."""
        try:
            ino = os.stat(tmp, dir_fd=fd, follow_symlinks=False).st_ino
        except OSError:
            ino = None
        _retried(f"creating {name}", self, lambda: self._create(fd, tmp, last, name),
                 landed=lambda: self._ours(fd, tmp, ino, last), recheck=(ObjectExists,))

    def _create(self, fd: int, tmp: str, last: str, name: str) -> None:
        """Give the complete ``tmp`` the name ``last`` (both in folder ``fd``) only if that name is free."""
        try:
            if self.create_mode in (None, "link"):
                try:
                    os.link(tmp, last, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
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
                    _rename_noreplace(fd, tmp, last)
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
            os.close(os.open(last, O_NEW, 0o600, dir_fd=fd))
            _retried(f"creating {name}", self, lambda: os.replace(tmp, last, src_dir_fd=fd, dst_dir_fd=fd))
        except FileExistsError as exc:
            raise ObjectExists(f"relay object {name} already exists") from exc

    @property
    def capabilities(self) -> Capabilities:
        """Create-if-absent is atomic unless only the claim mode works (known after the first one)."""
        return Capabilities(atomic_create=self.create_mode != "claim")

    def delete(self, name: str) -> None:
        parts = check_name(name).split("/")
        def unlink() -> None:
            with self._at(name) as (fd, last):
                st = os.stat(last, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise self._link_error(LinkInTree(name, "is a symbolic link"))
                os.unlink(last, dir_fd=fd)

        try:
            _retried(f"deleting {name}", self, unlink)  # a lost answer, retried: absent is fine
        except FileNotFoundError:
            return
        except OSError as exc:
            raise RelayError(f"cannot delete relay object {name}: {exc}") from exc
        # prune now-empty folders up to the root, so the relay does not fill with them
        for depth in range(len(parts) - 1, 0, -1):
            try:
                with self._tree.parent("/".join(parts[:depth])) as (fd, last):
                    os.rmdir(last, dir_fd=fd)  # never removes a link: rmdir refuses one
            except OSError:
                break

    def abort_incomplete(self, prefix: str) -> int:
        folder, _, _ = prefix.rpartition("/")
        if folder:
            check_name(folder)
        removed = 0
        for rel, fd, entries in self._walk(folder):
            for e in entries:
                f = e.path.rpartition("/")[2]
                if not f.startswith(TMP_MARK) or not stat.S_ISREG(e.st.st_mode):
                    continue
                target = (f"{rel}/" if rel else "") + f[len(TMP_MARK):].rsplit(".", 1)[0]
                if target.startswith(prefix):
                    try:
                        os.unlink(f, dir_fd=fd)
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
