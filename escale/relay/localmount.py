"""A folder on a mounted filesystem (``file:///abs/path``) used as the relay.

Writes go to a hidden temporary file in the target's folder and are renamed
into place, so a reader never sees a half-written object; create-if-absent
uses ``link()``, which fails atomically when the name is taken.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import ObjectExists, RelayError, RelayObjectMissing
from .base import ObjectInfo, Relay, Usage, check_name

log = logging.getLogger(__name__)

TMP_MARK = ".escale-put-"
#: temporary files older than this are leftovers of a killed writer
STALE_TMP_SECONDS = 6 * 3600
COPY_BUFFER = 1 << 20


class LocalMount(Relay):
    schemes = ("file",)

    def __init__(self, address: str, **_ignored):
        super().__init__(address)
        path = address[len("file://"):] if address.startswith("file://") else address
        self.root = Path(os.path.expanduser(path))

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
        for dirpath, _dirs, files in os.walk(self.root):
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
        try:
            walk = list(os.walk(base))
        except OSError as exc:
            raise RelayError(f"cannot list relay folder {self.root}: {exc}") from exc
        for dirpath, dirs, files in walk:
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

    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False) -> int:
        target = self._path(name)
        # the target's name is in the temporary's, so its writer can find it after a crash
        tmp = target.parent / f"{TMP_MARK}{target.name}.{uuid.uuid4().hex}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as out:
                n = 0
                while chunk := stream.read(COPY_BUFFER):
                    out.write(chunk)
                    n += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if create_only:
                try:
                    os.link(tmp, target)
                except FileExistsError as exc:
                    raise ObjectExists(f"relay object {name} already exists") from exc
            else:
                os.replace(tmp, target)
            return n
        except OSError as exc:
            raise RelayError(f"cannot write relay object {name}: {exc}") from exc
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

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
        for dirpath, _dirs, files in os.walk(start):
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
