"""The synced folder: scanning it and changing it safely.

Every write goes to a hidden temporary file beside its target, is checked against
the expected digest, and is renamed into place only if the target is still what
the scan saw — so a local edit made during a download is never overwritten, and a
crash never leaves a partial file under a real name. A file that must go away is
moved to the trash (``<folder>/.escale/trash/<UTC time>/<path>``), never unlinked.
Nothing is ever written outside the folder: every relay-supplied path passes
:func:`escale.access.safe_join`, and every read, write, rename and delete goes through
:class:`escale.confined.Tree` — descriptors opened component by component without following
a link — so a folder or file swapped for a symbolic link meanwhile cannot redirect it.
Names the file system takes for one (letter case, Unicode normalisation) are refused by
name, never overwritten (:mod:`escale.fsnames`).

Length: the one place that changes the user's folder (scan, verified writes, grouped
durability, trash); its safety rules depend on each other (a write's temporary, its
fsync, the rename only if the target is unchanged, the trash copy), and are read together.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from .access import check_relpath
from .checksum import FileChangedError
from .confined import O_NEW, LinkInTree, Tree, same_file
from .errors import EscaleError
from .fsnames import FsRules, NameTwin, is_state_name
from .index import DIR, FILE, MAX_INT, Entry, LocalFile
from .stream import BLOCK

log = logging.getLogger(__name__)

META_DIR = ".escale"
TMP_MARK = ".escale-tmp-"
TRASH = "trash"


class LocalChanged(EscaleError):
    """The target changed locally while we were fetching; nothing was overwritten."""


class ContentMismatch(EscaleError):
    """Fetched bytes do not match the digest or size the update announced."""


@dataclass
class PendingWrite:
    """A verified temporary waiting for its ``fsync`` and rename (:meth:`Folder.finish_writes`)."""

    target: str
    tmp: str
    fd: int  # a descriptor of the temporary, kept open for the grouped fsync
    expect: LocalFile | None
    stat: os.stat_result
    #: the folder the temporary was made in, to remove it whatever happens to the path
    #: meanwhile (the rename walks the path again: only the cleanup uses this)
    dir_fd: int = -1

    def discard(self, remove: bool = True) -> None:
        """Remove the temporary (if still there; ``remove=False``: it was renamed into place)
        and release the descriptors."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        if self.dir_fd >= 0:
            if remove:
                with contextlib.suppress(OSError):
                    os.unlink(self.tmp, dir_fd=self.dir_fd)
            with contextlib.suppress(OSError):
                os.close(self.dir_fd)
            self.dir_fd = -1


#: threads that fsync deferred writes at once (the disk, not the CPU, is what they wait for)
FSYNC_THREADS = 8
#: a download this large has its writeback started every WRITEBACK_STEP bytes (see
#: :func:`_start_writeback`), so the ``fsync`` before its rename has little left to do
WRITEBACK_STEP = 8 << 20
_pool: ThreadPoolExecutor | None = None


def _fsync_pool() -> ThreadPoolExecutor:
    """The threads that fsync deferred writes (made on first use, kept for the process)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="fsync")
    return _pool


def _fsync_write(p: PendingWrite) -> BaseException | None:
    """fsync one deferred write's temporary and close that descriptor; the error, if any."""
    try:
        os.fsync(p.fd)
        return None
    except OSError as exc:
        return exc
    finally:
        os.close(p.fd)
        p.fd = -1

def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``[offset, offset + length)`` of a file being
    downloaded to disk now, without waiting for it.

    Why: otherwise a 1 GiB download sits in the page cache until the ``fsync`` before its
    rename, which then writes all of it while nothing else happens (~0.45 s per GiB here);
    started as the bytes arrive, the disk works while the network does. Linux's
    ``POSIX_FADV_DONTNEED`` starts the writeback of a range's dirty pages (and drops only
    pages that are clean already). Only a hint: durability still comes from the ``fsync``
    (unchanged), and where the call is missing or fails nothing else changes."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    try:
        advise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError as exc:  # a file system that refuses the hint
        log.debug("no writeback hint: %s", exc)



class Folder:
    def __init__(self, root: Path, algorithm: str, digest: Callable[[BinaryIO, str, os.stat_result], str],
                 rules: FsRules | None = None, known: Callable[[str, int, int, int], str | None] | None = None):
        self.root = Path(root)
        self.algorithm = algorithm
        #: digest of an open file whose status is given (the checksum cache's digest_stream)
        self._digest = digest
        #: the digest cached for (path, size, mtime_ns, inode), or None (the checksum cache's lookup)
        self._known = known
        self.tree = Tree(self.root)
        self.trash_root = self.root / META_DIR / TRASH
        self._trash_batch: str | None = None
        #: what the last scan could not read (relative path, "" for the folder itself →
        #: reason): whatever lies there is unknown this cycle, not deleted
        self.unreadable: dict[str, str] = {}
        #: the last scan's folders holding accepted files with more than one name (hard
        #: links) → their inodes: an edit through another name reaches no watch of the folder
        self.linked: dict[str, set[int]] = {}
        self._listings: dict[tuple[int, int], tuple[int, dict[str, list[str]]]] = {}
        self.rules = FsRules()
        self.set_rules(rules)

    def set_rules(self, rules: FsRules | None) -> None:
        """How this file system compares names (None: probe it in .escale/)."""
        if rules is None:
            try:
                fd = self.tree.open_dir([META_DIR], create=True, mode=0o700)
            except OSError as exc:
                log.warning("cannot probe how %s compares names (%s); assuming exact names", self.root, exc)
                rules = FsRules()
            else:
                try:
                    rules = FsRules.probe(fd)
                finally:
                    os.close(fd)
        self.rules = rules
        self.tree.check = None if rules.exact else self._check_spelling

    def _check_spelling(self, fd: int, name: str, relpath: str) -> None:
        """Refuse ``name`` if the folder holds it under another spelling (a twin)."""
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        cached = self._listings.get(ident)
        if cached is None or cached[0] != st.st_mtime_ns:
            names: dict[str, list[str]] = {}
            for n in os.listdir(fd):
                names.setdefault(self.rules.key(n), []).append(n)
            cached = self._listings[ident] = (st.st_mtime_ns, names)
        spelled = cached[1].get(self.rules.key(name))
        if spelled and not any(self.rules.same_name(name, n) for n in spelled):
            head = relpath.rpartition("/")[0]
            raise NameTwin(relpath, f"{head}/{spelled[0]}" if head else spelled[0])

    def keeping(self) -> contextlib.AbstractContextManager[None]:
        """Keep folder descriptors through the block (checked before each reuse; see
        :meth:`escale.confined.Tree.keeping`): for applying one update's many files."""
        return self.tree.keeping()

    @contextlib.contextmanager
    def _at(self, relpath: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """The folder descriptor and last name of ``relpath``, reached without following links."""
        try:
            with self.tree.parent(relpath, create=create) as at:
                yield at
        except LinkInTree as exc:
            raise LocalChanged(f"cannot use {relpath}: {exc}") from None
        except NotADirectoryError:
            raise LocalChanged(f"cannot use {relpath}: a file is in the way") from None

    # -- scanning --------------------------------------------------------------------------
    def scan(self, accept_file: Callable[[str], bool], accept_dir: Callable[[str], bool],
             descend: Callable[[str], bool] | None = None) -> dict[str, LocalFile]:
        """Stat every file and folder (no hashing): :meth:`scan_folders` gathered whole."""
        found: dict[str, LocalFile] = {}
        for _rel, listing in self.scan_folders(accept_file, accept_dir, descend):
            found.update(listing)
        return found

    def scan_folders(self, accept_file: Callable[[str], bool] | None, accept_dir: Callable[[str], bool],
                     descend: Callable[[str], bool] | None = None,
                     tops: Iterable[str] = ("",)) -> Iterator[tuple[str, dict[str, LocalFile]]]:
        """Stat every file and folder (no hashing), one folder at a time: ``(folder, its
        accepted children)``, "" first; dot-files included, .escale/ never. Only one folder's
        listing is held at once, so memory does not grow with the folder's size.

        ``descend`` says whether to walk into a folder (only exclusions stop a walk, so
        ``include directory = src/lib*`` still reaches ``src/library``); ``accept_dir``
        whether the folder itself is synced; ``accept_file`` None takes every file. Folders
        are entered by descriptor, never through a link. What could not be read is in
        :attr:`unreadable` (complete once the walk ends), files with other names (hard links)
        in :attr:`linked`. ``tops``: the folders to walk from (a watcher-driven scan walks
        only the folders that changed; ``descend`` then says which of their subfolders are new).
        """
        descend = descend or accept_dir
        self.unreadable, self.linked = {}, {}

        def unreadable(rel: str, exc: OSError) -> None:
            self.unreadable[rel] = exc.strerror or str(exc)

        walks = (self.tree.walk(top.split("/") if top else (), on_error=unreadable) for top in tops)
        for rel, _fd, entries in itertools.chain.from_iterable(walks):
            found: dict[str, LocalFile] = {}
            for d in list(entries):
                relpath, st = d.path, d.st
                # (a folder whose name holds the mark is never entered: no path here has it above)
                if TMP_MARK in relpath or (not rel and is_state_name(relpath)):
                    if not rel and relpath != META_DIR and TMP_MARK not in relpath:
                        log.warning("skipping %s: the name reaches escale's own %s/ folder on some file "
                                    "systems", relpath, META_DIR)
                    entries.remove(d)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if accept_dir(relpath):
                        found[relpath] = LocalFile(relpath, DIR, 0, min(st.st_mtime_ns, MAX_INT), st.st_ino,
                                                   stat.S_IMODE(st.st_mode) & 0o777, dev=st.st_dev)
                    if not descend(relpath):
                        entries.remove(d)
                elif stat.S_ISREG(st.st_mode):
                    if accept_file is None or accept_file(relpath):
                        found[relpath] = LocalFile(relpath, FILE, st.st_size, min(st.st_mtime_ns, MAX_INT),
                                                   st.st_ino, stat.S_IMODE(st.st_mode) & 0o777, dev=st.st_dev)
                        if st.st_nlink > 1:
                            self.linked.setdefault(rel, set()).add(st.st_ino)
                else:
                    log.debug("skipping %s: not a regular file or folder (symlinks are not synced)", relpath)
            yield rel, found

    def open_read(self, lf: LocalFile) -> BinaryIO:
        """Open the very file the scan saw as ``lf`` (same device, inode, size, mtime),
        never through a link; FileChangedError if something else is there now."""
        try:
            with self.tree.parent(lf.path) as (fd, name):
                f = self.tree.open_file(fd, name, lf.path)
        except LinkInTree as exc:
            raise FileChangedError(errno.ELOOP, str(exc), lf.path) from None
        try:
            st = os.fstat(f.fileno())
            if not same_file(st, lf.dev, lf.inode, lf.size, lf.mtime_ns):
                raise FileChangedError(errno.EAGAIN, "not the file the scan saw (replaced or changed)", lf.path)
        except BaseException:
            f.close()
            raise
        return f

    def fill_hash(self, lf: LocalFile) -> LocalFile:
        """Give ``lf`` its digest: the cached one when the scan's (size, mtime, inode) match
        it — no open, so an idle scan of 100,000 files costs no file opens — else by reading
        the very file the scan saw."""
        if lf.kind == FILE and lf.hash is None:
            if self._known is not None:
                lf.hash = self._known(lf.path, lf.size, lf.mtime_ns, lf.inode)
                if lf.hash is not None:
                    return lf
            with self.open_read(lf) as f:
                lf.hash = self._digest(f, lf.path, os.fstat(f.fileno()))
        return lf

    def lstat(self, relpath: str) -> os.stat_result | None:
        """The path's own status (a link is not followed), or None when absent."""
        with self._at(relpath) as (fd, name):
            try:
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return None

    def stat_one(self, relpath: str) -> LocalFile | None:
        """Current state of one path (with digest), or None."""
        check_relpath(self.root, relpath)
        try:
            st = self.lstat(relpath)  # LocalChanged if a folder above it is a link or a file
        except FileNotFoundError:
            return None
        if st is None:
            return None
        if stat.S_ISDIR(st.st_mode):
            return LocalFile(relpath, DIR, 0, min(st.st_mtime_ns, MAX_INT), st.st_ino, stat.S_IMODE(st.st_mode) & 0o777,
                             dev=st.st_dev)
        if stat.S_ISREG(st.st_mode):
            return self.fill_hash(LocalFile(relpath, FILE, st.st_size, min(st.st_mtime_ns, MAX_INT), st.st_ino,
                                            stat.S_IMODE(st.st_mode) & 0o777, dev=st.st_dev))
        return LocalFile(relpath, "other")

    def remove_temporaries(self) -> int:
        """Delete temporary files a killed run left beside their targets (they are ours by name)."""
        n = 0
        for rel, fd, entries in self.tree.walk():
            for d in list(entries):
                name = d.path.rpartition("/")[2]
                if not rel and name == META_DIR:
                    entries.remove(d)
                elif stat.S_ISREG(d.st.st_mode) and (name.startswith(TMP_MARK) or
                                                      (name.startswith(".") and TMP_MARK in name)):
                    try:
                        os.unlink(name, dir_fd=fd)
                        n += 1
                    except OSError:
                        pass
        if n:
            log.info("removed %d temporary file(s) left by an interrupted run", n)
        return n

    # -- writing ---------------------------------------------------------------------------
    @staticmethod
    def _unchanged_at(fd: int, name: str, expect: LocalFile | None) -> bool:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return expect is None
        if expect is None:
            return False
        if expect.kind == DIR:
            return stat.S_ISDIR(st.st_mode)
        return stat.S_ISREG(st.st_mode) and expect.same_stat(st)

    def _unchanged(self, relpath: str, expect: LocalFile | None) -> bool:
        with self._at(relpath) as (fd, name):
            return self._unchanged_at(fd, name, expect)

    def fetch(self, target: str, entry: Entry, source: BinaryIO | None, expect: LocalFile | None,
              copy_from: str | None = None, whole: bool = False,
              defer: bool = False) -> os.stat_result | PendingWrite:
        """Write entry's content at target from ``source`` (exactly entry.size bytes read) or
        a local file ``copy_from``; verify, then rename into place if target is still ``expect``.
        Returns the written file's status.

        ``whole``: the source is the file's own object, which must end right there (reading
        its end also authenticates an encrypted object's final chunk).

        ``defer``: stop before the ``fsync``: the verified temporary is returned as a
        :class:`PendingWrite` that :meth:`finish_writes` makes durable (together with others)
        and renames into place — many small files then share the file system's journal
        commits instead of paying one synchronous ``fsync`` each, in series.
        """
        check_relpath(self.root, target)
        with self._at(target, create=True) as (fd, name):
            tmp = f"{TMP_MARK}{os.urandom(16).hex()}"
            h = hashlib.new(self.algorithm)
            size = 0
            kept = False
            try:
                with os.fdopen(os.open(tmp, O_NEW, 0o600, dir_fd=fd), "wb") as out:
                    src = source if copy_from is None else self._open_local(copy_from)
                    try:
                        left = entry.size
                        flushed = 0  # bytes whose writeback has been started
                        while left > 0:
                            data = src.read(min(BLOCK, left))
                            if not data:
                                break
                            h.update(data)
                            out.write(data)
                            size += len(data)
                            left -= len(data)
                            if size - flushed >= WRITEBACK_STEP and not defer:
                                out.flush()
                                _start_writeback(out.fileno(), flushed, size - flushed)
                                flushed = size
                        if whole and src.read(1):
                            raise ContentMismatch(f"content of {target} is longer than announced")
                    finally:
                        if copy_from is not None:
                            src.close()
                    out.flush()
                    if size != entry.size or h.hexdigest() != entry.hash:
                        raise ContentMismatch(f"content of {target} does not match its announced digest/size")
                    os.fchmod(out.fileno(), entry.mode & 0o777)
                    if not defer:
                        os.fsync(out.fileno())
                    os.utime(out.fileno(), ns=(entry.mtime_ns, entry.mtime_ns))
                    written = os.fstat(out.fileno())
                    if defer:
                        pending = PendingWrite(target, tmp, os.dup(out.fileno()), expect, written, os.dup(fd))
                        kept = True
                        return pending
                if not self._unchanged_at(fd, name, expect):
                    raise LocalChanged(f"{target} changed here during the download; kept the local version")
                if expect is not None and expect.kind == FILE:
                    self._keep_in_trash(target, fd, name)
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                return written
            finally:
                if not kept:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=fd)

    @staticmethod
    def start_writes(pending: list[PendingWrite]) -> list[Future]:
        """Begin the ``fsync`` of deferred writes in background threads (``fsync`` releases
        the GIL; the file system folds concurrent ones into shared journal commits), so the
        caller can write the next group meanwhile; :meth:`finish_writes` waits for them."""
        return [_fsync_pool().submit(_fsync_write, p) for p in pending]

    def finish_writes(self, pending: list[PendingWrite],
                      started: list[Future] | None = None) -> list[BaseException | None]:
        """Make deferred writes durable and put them in place; one outcome per write (None:
        done, else why not — the temporary is then gone and the target untouched).
        ``started``: their fsyncs, from :meth:`start_writes` (else they are started here).

        Order, for power-cut safety: every temporary's ``fsync`` has returned *before* any
        of them is renamed to its real name, so no real name ever points at data that is
        not on disk; then each folder that got a name is ``fsync``ed, so the renames are
        durable before the caller commits the base that records them.
        """
        if not pending:
            return []
        if started is None:
            started = self.start_writes(pending)
        outcomes: list[BaseException | None] = [f.result() for f in started]
        folders: dict[str, str] = {}  # parent path -> one target in it (to reach it again)
        for i, p in enumerate(pending):
            placed = False
            try:
                with self._at(p.target, create=True) as (fd, name):
                    try:
                        if outcomes[i] is not None:
                            continue
                        if not self._unchanged_at(fd, name, p.expect):
                            raise LocalChanged(f"{p.target} changed here during the download; "
                                               "kept the local version")
                        if p.expect is not None and p.expect.kind == FILE:
                            self._keep_in_trash(p.target, fd, name)
                        os.replace(p.tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                        placed = True
                        folders.setdefault(p.target.rpartition("/")[0], p.target)
                    finally:
                        if not placed:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(p.tmp, dir_fd=fd)
            except (OSError, EscaleError) as exc:
                outcomes[i] = exc
            finally:  # a folder swapped meanwhile: its temporary is still removed
                p.discard(remove=not placed)
        for target in folders.values():
            try:
                with self._at(target) as (fd, _name):
                    os.fsync(fd)
            except (OSError, EscaleError) as exc:  # the files are in place; only the rename's durability is unsure
                log.warning("could not flush the folder of %s: %s", target, exc)
        return outcomes

    @staticmethod
    def abandon_writes(pending: list[PendingWrite], started: list[Future] | None = None) -> None:
        """Drop deferred writes (the pull stopped): close and remove their temporaries
        (after their fsyncs, if begun, returned: the thread closes the descriptor)."""
        for f in started or ():
            f.result()
        for p in pending:
            p.discard()

    def _open_local(self, relpath: str) -> BinaryIO:
        check_relpath(self.root, relpath)
        try:
            return self.tree.open_read(relpath)
        except LinkInTree as exc:
            raise LocalChanged(f"cannot read {relpath}: {exc}") from None

    def move(self, source: str, source_expect: LocalFile | None, target: str, entry: Entry,
             expect: LocalFile | None) -> os.stat_result:
        """Complete a rename: move the local file ``source`` (whose digest is entry's) to ``target``;
        returns its status."""
        check_relpath(self.root, source)
        check_relpath(self.root, target)
        if source_expect is None or source_expect.hash != entry.hash:
            raise LocalChanged(f"{source} changed here; cannot complete its rename to {target}")
        with self._at(source) as (sfd, sname), self._at(target, create=True) as (tfd, tname):
            if not self._unchanged_at(sfd, sname, source_expect):
                raise LocalChanged(f"{source} changed here; cannot complete its rename to {target}")
            if not self._unchanged_at(tfd, tname, expect):
                raise LocalChanged(f"{target} changed here during the sync; kept the local version")
            with self.tree.open_file(sfd, sname, source) as f:
                if not source_expect.same_stat(os.fstat(f.fileno())):
                    raise LocalChanged(f"{source} changed here; cannot complete its rename to {target}")
                os.fchmod(f.fileno(), entry.mode & 0o777)
                os.utime(f.fileno(), ns=(entry.mtime_ns, entry.mtime_ns))
                written = os.fstat(f.fileno())
            os.replace(sname, tname, src_dir_fd=sfd, dst_dir_fd=tfd)
            return written

    def make_parents(self, relpath: str) -> None:
        """Create the folders above a path (already checked by safe_join)."""
        with self._at(relpath, create=True):
            pass

    def make_dir(self, relpath: str, mode: int) -> None:
        check_relpath(self.root, relpath)
        with self._at(relpath, create=True) as (fd, name):
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise LocalChanged(f"cannot create folder {relpath}: a file is in the way") from None
            self.tree.chmod(fd, name, (mode & 0o777) | 0o700, relpath)

    def set_mode(self, relpath: str, mode: int) -> None:
        check_relpath(self.root, relpath)
        with self._at(relpath) as (fd, name):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise LocalChanged(f"{relpath} is not a regular file or folder; its mode is left alone")
            self.tree.chmod(fd, name, (mode & 0o777) | (0o700 if stat.S_ISDIR(st.st_mode) else 0), relpath)

    def remove_dir(self, relpath: str) -> bool:
        """Remove a synced folder only if empty (its files were handled one by one)."""
        check_relpath(self.root, relpath)
        try:
            with self._at(relpath) as (fd, name):
                os.rmdir(name, dir_fd=fd)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                log.info("kept folder %s: it still holds files", relpath)
                return False
            raise

    def displace(self, relpath: str, target: str | None, expect: LocalFile | None) -> None:
        """Move a local file to a conflict name (target) or into the trash (target None)."""
        check_relpath(self.root, relpath)
        with self._at(relpath) as (fd, name):
            if not self._unchanged_at(fd, name, expect):
                raise LocalChanged(f"{relpath} changed here while syncing; kept it")
            if target is None:
                with self._trash_dir(relpath) as (tfd, tname):
                    os.replace(name, tname, src_dir_fd=fd, dst_dir_fd=tfd)
                    shown = f"{META_DIR}/{TRASH}/{self._trash_batch}/{relpath}"
            else:
                check_relpath(self.root, target)
                with self._at(target, create=True) as (tfd, tname):
                    if _exists_at(tfd, tname):
                        tname = f"{tname}.{uuid.uuid4().hex[:6]}"
                    os.replace(name, tname, src_dir_fd=fd, dst_dir_fd=tfd)
                    shown = f"{target.rpartition('/')[0]}/{tname}".lstrip("/")
        log.info("moved %s to %s", relpath, shown)

    def _keep_in_trash(self, relpath: str, fd: int, name: str) -> None:
        """A copy of a file about to be replaced (a hard link: no data is copied)."""
        with self._trash_dir(relpath) as (tfd, tname):
            try:
                os.link(name, tname, src_dir_fd=fd, dst_dir_fd=tfd, follow_symlinks=False)
            except OSError:  # no hard links here (another filesystem type): copy
                with self.tree.open_file(fd, name, relpath) as src, \
                        os.fdopen(os.open(tname, O_NEW, 0o600, dir_fd=tfd), "wb") as out:
                    shutil.copyfileobj(src, out, BLOCK)
                    st = os.fstat(src.fileno())
                    os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
                    out.flush()
                    os.utime(out.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))

    # -- trash -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _trash_dir(self, relpath: str) -> Iterator[tuple[int, str]]:
        """The folder descriptor and name where ``relpath`` goes in this batch's trash."""
        if self._trash_batch is None:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            self._trash_batch = f"{stamp}-{uuid.uuid4().hex[:4]}"
        parts = [META_DIR, TRASH, self._trash_batch, *relpath.split("/")]
        fd = self.tree.open_dir(parts[:-1], create=True, mode=0o700)
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def end_batch(self) -> None:
        self._trash_batch = None

    def purge_trash(self, retention_days: float) -> int:
        """Delete trash batches older than the retention time (never through a link)."""
        try:
            fd = self.tree.open_dir([META_DIR, TRASH])
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("cannot purge trash %s: %s", self.trash_root, exc)
            return 0
        limit = time.time() - retention_days * 86400
        n = 0
        try:
            for batch in os.listdir(fd):
                try:
                    st = os.stat(batch, dir_fd=fd, follow_symlinks=False)
                    if st.st_mtime < limit:
                        if stat.S_ISDIR(st.st_mode):
                            shutil.rmtree(batch, dir_fd=fd)
                        else:
                            os.unlink(batch, dir_fd=fd)
                        n += 1
                except OSError as exc:
                    log.warning("cannot purge trash %s/%s: %s", self.trash_root, batch, exc)
        finally:
            os.close(fd)
        return n


def _exists_at(fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
