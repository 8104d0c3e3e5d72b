"""File operations confined to one folder tree: no symbolic link inside it is ever followed.

Checking a path with ``lstat`` and then using it by name leaves a window in which a local
user can swap a folder (or the file itself) for a symbolic link, and the write, rename,
delete or read then lands wherever the link points. Here every operation opens the tree's
root, then each folder below it with ``O_NOFOLLOW | O_DIRECTORY``, and acts on the last
name relative to that folder's descriptor (``openat``, ``renameat``, ``unlinkat``…), again
without following a link. A component swapped for a link makes the operation fail with
:class:`LinkInTree`; it can never redirect it outside the tree.

Used by the synced folder (:mod:`escale.folder`) and by the ``file://`` relay
(:mod:`escale.relay.localmount`). The root itself may be a link: the user chose it.
Needs ``dir_fd`` support (Linux, macOS, the BSDs).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

log = logging.getLogger(__name__)

__all__ = ["Tree", "LinkInTree", "Found", "O_DIR", "O_READ", "same_file"]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: a folder below the root: never through a link
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
#: a file to read: never through a link, and never blocking on a FIFO swapped in
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
#: a new file (temporary): fails if anything, link included, has that name
O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
_BLOCKED = {errno.ELOOP, errno.ENOTDIR, errno.EMLINK, errno.EFTYPE} if hasattr(errno, "EFTYPE") \
    else {errno.ELOOP, errno.ENOTDIR, errno.EMLINK}


class LinkInTree(OSError):
    """A component inside the tree is a symbolic link (or not a folder where one is needed)."""

    def __init__(self, relpath: str, what: str):
        super().__init__(errno.ELOOP, what, relpath)
        self.relpath, self.what = relpath, what

    def __str__(self) -> str:
        return f"{self.relpath} {self.what}; nothing is done through it"


def same_file(st: os.stat_result, dev: int, ino: int, size: int, mtime_ns: int) -> bool:
    """Is ``st`` the very file (device, inode) a scan saw, still with that size and mtime?"""
    return (st.st_dev, st.st_ino, st.st_size, min(st.st_mtime_ns, 2 ** 63 - 1)) == (dev, ino, size, mtime_ns)


@dataclass(frozen=True)
class Found:
    """One entry of a confined walk: its relative path and its own (not followed) status."""

    path: str
    st: os.stat_result


class Tree:
    """One folder tree, reached only through descriptors (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], check=None):
        self.root = os.fspath(root)
        #: called as ``check(dir_fd, name, relpath)`` before each name below the root is used
        #: (the synced folder checks how the name is spelled on disk: :mod:`escale.fsnames`)
        self.check = check
        #: inside :meth:`keeping`: folder components -> (descriptor, (device, inode))
        self._kept: dict[tuple[str, ...], tuple[int, tuple[int, int]]] | None = None
        self._retired: list[int] = []  # kept descriptors found stale: closed when keeping ends

    def __repr__(self) -> str:
        return f"Tree({self.root!r})"

    # -- folders ---------------------------------------------------------------------------
    def open_root(self) -> int:
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)

    def open_dir(self, parts: Sequence[str], create: bool = False, mode: int = 0o777) -> int:
        """A descriptor of the folder ``root/parts…``, each component opened without following
        a link (created with ``mode`` when ``create``). The caller closes it."""
        fd = self.open_root()
        try:
            for i, part in enumerate(parts):
                nfd = self._step(fd, part, parts[:i + 1], create, mode)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _step(self, fd: int, part: str, done: Sequence[str], create: bool, mode: int) -> int:
        if self.check is not None:
            self.check(fd, part, "/".join(done))
        for attempt in (0, 1):
            try:
                return os.open(part, O_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create or attempt:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, mode, dir_fd=fd)
            except OSError as exc:
                if exc.errno in _BLOCKED:
                    raise self.blocked(fd, part, "/".join(done)) from None
                raise
        raise AssertionError("unreachable")

    @staticmethod
    def blocked(fd: int, name: str, relpath: str) -> LinkInTree:
        """The error for ``name`` in folder ``fd`` that an open refused to go through."""
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            return LinkInTree(relpath, "is a symbolic link")
        if st is not None and stat.S_ISDIR(st.st_mode):
            return LinkInTree(relpath, "changed while it was opened")
        return LinkInTree(relpath, "is not a folder")

    @contextlib.contextmanager
    def parent(self, relpath: str, create: bool = False, mode: int = 0o777) -> Iterator[tuple[int, str]]:
        """``(descriptor of the folder holding relpath, its last name)``; closed on exit
        (inside :meth:`keeping`, kept for the next path in the same folder)."""
        parts = relpath.split("/")
        if self._kept is not None:
            fd = self._kept_dir(parts[:-1], create, mode)
            if fd is not None:
                if self.check is not None:
                    self.check(fd, parts[-1], relpath)
                yield fd, parts[-1]
                return
        fd = self.open_dir(parts[:-1], create, mode)
        try:
            if self.check is not None:
                self.check(fd, parts[-1], relpath)
            yield fd, parts[-1]
        finally:
            os.close(fd)

    # -- kept folder descriptors -----------------------------------------------------------
    @contextlib.contextmanager
    def keeping(self) -> Iterator[None]:
        """Within the block, :meth:`parent` keeps the descriptors of the folders it opens and
        reuses one only after checking, from the root down, that every component still is
        that very folder (device and inode of the name, links not followed, against the
        kept descriptor). A pull writing 5,000 files into a few folders then makes a few
        ``stat`` calls per file instead of opening and closing each folder of its path three
        times. Why it is as safe as opening: a component renamed away, replaced, removed or
        swapped for a link no longer has the kept inode under its name, so the descriptor is
        dropped and the path opened again (failing as before on a link); an inode number
        cannot be reused while it is held open; what remains is the moment between the
        check and the use, the same as between an open and its use."""
        if self._kept is not None:
            yield
            return
        self._kept = {}
        try:
            yield
        finally:
            kept, self._kept = self._kept, None
            for fd in [fd for fd, _ident in kept.values()] + self._retired:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._retired = []

    #: descriptors kept (and retired) at most; beyond it, folders are opened as without keeping
    KEEP_MAX = 128

    def _kept_dir(self, parts: Sequence[str], create: bool, mode: int) -> int | None:
        """The kept descriptor of ``root/parts`` (opened and kept if needed); None when too
        many are held (the caller opens and closes one as usual)."""
        kept = self._kept
        assert kept is not None
        key = tuple(parts)
        depth = self._valid_depth(key)
        if depth == len(key) + 1:
            return kept[key][0]
        if len(kept) + len(self._retired) + len(key) + 1 > self.KEEP_MAX:
            return None
        for i in range(depth, len(key) + 1):  # drop what is stale below the valid part
            stale = kept.pop(key[:i], None)
            if stale is not None:
                self._retired.append(stale[0])
        if depth == 0:
            fd = self.open_root()
            self._keep((), fd)
        else:
            fd = kept[key[:depth - 1]][0]
        for i in range(max(depth - 1, 0), len(key)):
            fd = self._step(fd, key[i], key[:i + 1], create, mode)
            self._keep(key[:i + 1], fd)
        return fd

    def _keep(self, key: tuple[str, ...], fd: int) -> None:
        st = os.fstat(fd)
        old = self._kept.pop(key, None)  # type: ignore[union-attr]
        if old is not None:
            self._retired.append(old[0])
        self._kept[key] = (fd, (st.st_dev, st.st_ino))  # type: ignore[index]

    def _valid_depth(self, key: tuple[str, ...]) -> int:
        """How many leading folders of ``key`` (the root counting as one) are kept and still
        the very folders at their names; ``len(key) + 1`` when all are."""
        kept = self._kept
        assert kept is not None
        root = kept.get(())
        if root is None:
            return 0
        try:
            st = os.stat(self.root)  # the root may be a link: the user chose it (as open_root)
        except OSError:
            return 0
        if (st.st_dev, st.st_ino) != root[1]:
            return 0
        fd = root[0]
        for i, part in enumerate(key):
            entry = kept.get(key[:i + 1])
            if entry is None:
                return i + 1
            if self.check is not None:
                self.check(fd, part, "/".join(key[:i + 1]))
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except OSError:
                return i + 1
            if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != entry[1]:
                return i + 1
            fd = entry[0]
        return len(key) + 1

    # -- single names ----------------------------------------------------------------------
    def lstat(self, relpath: str) -> os.stat_result | None:
        """The entry's own status (a link is not followed), or None when it or a parent is
        missing. Raises LinkInTree if a parent is a link."""
        try:
            with self.parent(relpath) as (fd, name):
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    @staticmethod
    def open_file(fd: int, name: str, relpath: str) -> BinaryIO:
        """Open regular file ``name`` of folder ``fd`` for reading, never through a link."""
        try:
            ffd = os.open(name, O_READ, dir_fd=fd)
        except OSError as exc:
            if exc.errno in _BLOCKED:
                raise LinkInTree(relpath, "is a symbolic link") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(ffd).st_mode):
                raise LinkInTree(relpath, "is not a regular file")
            os.set_blocking(ffd, True)
            return os.fdopen(ffd, "rb")
        except BaseException:
            os.close(ffd)
            raise

    def open_read(self, relpath: str) -> BinaryIO:
        """Open ``root/relpath`` (a regular file) for reading without following any link."""
        with self.parent(relpath) as (fd, name):
            return self.open_file(fd, name, relpath)

    @staticmethod
    def chmod(fd: int, name: str, mode: int, relpath: str) -> None:
        """Change the mode of ``name`` in folder ``fd``; a link there is refused, not followed."""
        try:
            ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC, dir_fd=fd)
        except PermissionError:  # unreadable: change it by name, still without following
            try:
                os.chmod(name, mode, dir_fd=fd, follow_symlinks=False)
            except (NotImplementedError, ValueError) as exc:
                raise LinkInTree(relpath, "is a symbolic link") from exc
            return
        except OSError as exc:
            if exc.errno in _BLOCKED:
                raise LinkInTree(relpath, "is a symbolic link") from None
            raise
        try:
            os.fchmod(ffd, mode)
        finally:
            os.close(ffd)

    # -- walking ---------------------------------------------------------------------------
    def walk(self, top: Sequence[str] = (), on_error=None) -> Iterator[tuple[str, int, list[Found]]]:
        """Every folder under ``root/top`` (top first): ``(relative path, descriptor, entries)``.

        The descriptor is valid only until the next item. Folders the consumer removes from
        ``entries`` are not entered. Links are listed as entries, never entered; a folder swapped for anything else after it was listed is skipped (reported
        through ``on_error(relpath, exc)``). At most one descriptor per level is open.
        """
        start = "/".join(top)
        pending: list[tuple[str, tuple[int, int] | None]] = [(start, None)]
        while pending:
            rel, ident = pending.pop()
            try:
                fd = self.open_dir(rel.split("/") if rel else [])
            except OSError as exc:
                if on_error is not None:
                    on_error(rel, exc)
                continue
            try:
                st = os.fstat(fd)
                if ident is not None and (st.st_dev, st.st_ino) != ident:
                    if on_error is not None:
                        on_error(rel, LinkInTree(rel, "changed while the folder was read"))
                    continue
                entries: list[Found] = []
                with os.scandir(fd) as it:
                    for d in it:
                        try:
                            est = d.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        entries.append(Found(f"{rel}/{d.name}" if rel else d.name, est))
                yield rel, fd, entries
                for e in reversed(entries):  # what the consumer left in the list
                    if stat.S_ISDIR(e.st.st_mode):
                        pending.append((e.path, (e.st.st_dev, e.st.st_ino)))
            except OSError as exc:
                if on_error is not None:
                    on_error(rel, exc)
            finally:
                os.close(fd)

