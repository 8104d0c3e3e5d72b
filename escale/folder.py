"""The synced folder: scanning it and changing it safely.

Every write goes to a hidden temporary file beside its target, is checked against
the expected digest, and is renamed into place only if the target is still what
the scan saw — so a local edit made during a download is never overwritten, and a
crash never leaves a partial file under a real name. A file that must go away is
moved to the trash (``<folder>/.escale/trash/<UTC time>/<path>``), never unlinked.
Nothing is ever written outside the folder: every relay-supplied path passes
:func:`escale.access.safe_join`.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import stat
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from .access import safe_join
from .errors import EscaleError
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


class Folder:
    def __init__(self, root: Path, algorithm: str, digest: Callable[[Path, str, os.stat_result], str]):
        self.root = Path(root)
        self.algorithm = algorithm
        self._digest = digest
        self.trash_root = self.root / META_DIR / TRASH
        self._trash_batch: Path | None = None
        #: what the last scan could not read (relative path, "" for the folder itself →
        #: reason): whatever lies there is unknown this cycle, not deleted
        self.unreadable: dict[str, str] = {}

    # -- scanning --------------------------------------------------------------------------
    def scan(self, accept_file: Callable[[str], bool], accept_dir: Callable[[str], bool],
             descend: Callable[[str], bool] | None = None) -> dict[str, LocalFile]:
        """Stat every file and folder (no hashing); dot-files included, .escale/ never.

        ``descend`` says whether to walk into a folder (only exclusions stop a walk, so
        ``include directory = src/lib*`` still reaches ``src/library``); ``accept_dir``
        whether the folder itself is synced.
        """
        descend = descend or accept_dir
        found: dict[str, LocalFile] = {}
        self.unreadable = {}
        stack = [("", str(self.root))]
        while stack:
            rel, abspath = stack.pop()
            try:
                it = os.scandir(abspath)
            except OSError as exc:
                self.unreadable[rel] = exc.strerror or str(exc)
                continue
            with it:
                for d in it:
                    name = d.name
                    relpath = f"{rel}/{name}" if rel else name
                    if (not rel and name == META_DIR) or TMP_MARK in name:
                        continue
                    try:
                        st = d.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        self.unreadable[relpath] = exc.strerror or str(exc)
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        if accept_dir(relpath):
                            found[relpath] = LocalFile(relpath, DIR, 0, min(st.st_mtime_ns, MAX_INT), st.st_ino,
                                                       stat.S_IMODE(st.st_mode) & 0o777)
                        if descend(relpath):
                            stack.append((relpath, d.path))
                    elif stat.S_ISREG(st.st_mode):
                        if accept_file(relpath):
                            found[relpath] = LocalFile(relpath, FILE, st.st_size, min(st.st_mtime_ns, MAX_INT), st.st_ino,
                                                       stat.S_IMODE(st.st_mode) & 0o777)
                    else:
                        log.debug("skipping %s: not a regular file or folder (symlinks are not synced)", relpath)
        return found

    def fill_hash(self, lf: LocalFile) -> LocalFile:
        if lf.kind == FILE and lf.hash is None:
            p = self.root / lf.path
            lf.hash = self._digest(p, lf.path, os.stat(p, follow_symlinks=False))
        return lf

    def stat_one(self, relpath: str) -> LocalFile | None:
        """Current state of one path (with digest), or None."""
        p = safe_join(self.root, relpath)
        try:
            st = os.stat(p, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            return LocalFile(relpath, DIR, 0, min(st.st_mtime_ns, MAX_INT), st.st_ino, stat.S_IMODE(st.st_mode) & 0o777)
        if stat.S_ISREG(st.st_mode):
            return self.fill_hash(LocalFile(relpath, FILE, st.st_size, min(st.st_mtime_ns, MAX_INT), st.st_ino,
                                            stat.S_IMODE(st.st_mode) & 0o777))
        return LocalFile(relpath, "other")

    def remove_temporaries(self) -> int:
        """Delete temporary files a killed run left beside their targets (they are ours by name)."""
        n = 0
        for dirpath, dirs, files in os.walk(self.root):
            if dirpath == str(self.root) and META_DIR in dirs:
                dirs.remove(META_DIR)
            for f in files:
                if f.startswith(TMP_MARK) or (f.startswith(".") and TMP_MARK in f):
                    try:
                        os.unlink(os.path.join(dirpath, f))
                        n += 1
                    except OSError:
                        pass
        if n:
            log.info("removed %d temporary file(s) left by an interrupted run", n)
        return n

    # -- writing ---------------------------------------------------------------------------
    def _unchanged(self, relpath: str, expect: LocalFile | None) -> bool:
        p = self.root / relpath
        try:
            st = os.stat(p, follow_symlinks=False)
        except FileNotFoundError:
            return expect is None
        if expect is None:
            return False
        if expect.kind == DIR:
            return stat.S_ISDIR(st.st_mode)
        return expect.same_stat(st)

    def fetch(self, target: str, entry: Entry, source: BinaryIO | None, expect: LocalFile | None,
              copy_from: str | None = None, whole: bool = False) -> None:
        """Write entry's content at target from ``source`` (exactly entry.size bytes read) or
        a local file ``copy_from``; verify, then rename into place if target is still ``expect``.

        ``whole``: the source is the file's own object, which must end right there (reading
        its end also authenticates an encrypted object's final chunk).
        """
        dest = safe_join(self.root, target)
        self.make_parents(target)
        tmp = dest.parent / f"{TMP_MARK}{uuid.uuid4().hex}"
        h = hashlib.new(self.algorithm)
        size = 0
        try:
            with open(tmp, "xb") as out:
                src = source if copy_from is None else open(safe_join(self.root, copy_from), "rb")
                try:
                    left = entry.size
                    while left > 0:
                        data = src.read(min(BLOCK, left))
                        if not data:
                            break
                        h.update(data)
                        out.write(data)
                        size += len(data)
                        left -= len(data)
                    if whole and src.read(1):
                        raise ContentMismatch(f"content of {target} is longer than announced")
                finally:
                    if copy_from is not None:
                        src.close()
                out.flush()
                os.fsync(out.fileno())
            if size != entry.size or h.hexdigest() != entry.hash:
                raise ContentMismatch(f"content of {target} does not match its announced digest/size")
            os.chmod(tmp, entry.mode & 0o777)
            os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))
            if not self._unchanged(target, expect):
                raise LocalChanged(f"{target} changed here during the download; kept the local version")
            if expect is not None and expect.kind == FILE:
                self._keep_in_trash(target, dest)
            os.replace(tmp, dest)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def move(self, source: str, source_expect: LocalFile | None, target: str, entry: Entry,
             expect: LocalFile | None) -> None:
        """Complete a rename: move the local file ``source`` (whose digest is entry's) to ``target``."""
        src = safe_join(self.root, source)
        dest = safe_join(self.root, target)
        if source_expect is None or source_expect.hash != entry.hash or not self._unchanged(source, source_expect):
            raise LocalChanged(f"{source} changed here; cannot complete its rename to {target}")
        self.make_parents(target)
        if not self._unchanged(target, expect):
            raise LocalChanged(f"{target} changed here during the sync; kept the local version")
        os.chmod(src, entry.mode & 0o777)
        os.utime(src, ns=(entry.mtime_ns, entry.mtime_ns))
        os.replace(src, dest)

    def make_parents(self, relpath: str) -> None:
        """Create the folders above a path (already checked by safe_join)."""
        parent = relpath.rpartition("/")[0]
        if parent:
            dest = self.root / parent
            if not dest.is_dir():
                if dest.exists() or dest.is_symlink():
                    raise LocalChanged(f"cannot create folder {parent}: a file is in the way")
                dest.mkdir(parents=True, exist_ok=True)

    def make_dir(self, relpath: str, mode: int) -> None:
        dest = safe_join(self.root, relpath)
        self.make_parents(relpath)
        try:
            dest.mkdir()
        except FileExistsError:
            if not dest.is_dir():
                raise LocalChanged(f"cannot create folder {relpath}: a file is in the way") from None
        os.chmod(dest, (mode & 0o777) | 0o700)

    def set_mode(self, relpath: str, mode: int) -> None:
        dest = safe_join(self.root, relpath)
        os.chmod(dest, (mode & 0o777) | (0o700 if dest.is_dir() else 0))

    def remove_dir(self, relpath: str) -> bool:
        """Remove a synced folder only if empty (its files were handled one by one)."""
        dest = safe_join(self.root, relpath)
        try:
            dest.rmdir()
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
        src = safe_join(self.root, relpath)
        if not self._unchanged(relpath, expect):
            raise LocalChanged(f"{relpath} changed here while syncing; kept it")
        if target is None:
            dest = self._trash_path(relpath)
        else:
            dest = safe_join(self.root, target)
            self.make_parents(target)
            if dest.exists():
                dest = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:6]}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        log.info("moved %s to %s", relpath, dest.relative_to(self.root))

    def _keep_in_trash(self, relpath: str, path: Path) -> None:
        """A copy of a file about to be replaced (a hard link: no data is copied)."""
        dest = self._trash_path(relpath)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:  # no hard links here (another filesystem type): copy
            shutil.copy2(path, dest)

    # -- trash -----------------------------------------------------------------------------
    def _trash_path(self, relpath: str) -> Path:
        if self._trash_batch is None:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            self._trash_batch = self.trash_root / f"{stamp}-{uuid.uuid4().hex[:4]}"
        dest = self._trash_batch.joinpath(*relpath.split("/"))
        return dest

    def end_batch(self) -> None:
        self._trash_batch = None

    def purge_trash(self, retention_days: float) -> int:
        """Delete trash batches older than the retention time."""
        if not self.trash_root.is_dir():
            return 0
        limit = time.time() - retention_days * 86400
        n = 0
        for batch in self.trash_root.iterdir():
            try:
                if batch.stat().st_mtime < limit:
                    shutil.rmtree(batch) if batch.is_dir() else batch.unlink()
                    n += 1
            except OSError as exc:
                log.warning("cannot purge trash %s: %s", batch, exc)
        return n
