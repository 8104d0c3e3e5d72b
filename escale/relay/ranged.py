"""A large object read with several ranged requests at once, handed out in order.

Why: one HTTP connection from a local S3 or WebDAV server delivers ~120–150 MB/s here,
and the reading side (decryption, the file's digest, the write) waits on it; rclone reads
large objects with four ranged streams at once. A backend that declares
:attr:`~escale.relay.base.Capabilities.ranged_reads` returns a :class:`ParallelRead` from
its ``get`` when the object is at least :attr:`Parallel.min_size` bytes: the first GET
(already open) gives the first piece, and up to ``width`` threads fetch the next pieces
with ``get_range`` pinned to the version the first GET answered with, so a rewrite under
way is an error, never a splice of two versions.

Memory: at most ``width`` pieces fetched ahead plus the one being read (4 × 4 MiB by
default; each piece is read in 256 KiB slices, so a fetching thread holds no second
MiB-sized buffer besides its piece). Why 3 × 4 MiB and not 4 × 2 MiB: on S3 each ranged GET
costs ~2 ms of botocore CPU, and half as many GETs with one thread fewer gave a faster
pull for the same peak memory (docs/performance.md, "Large files"). The reader sees the same bytes, in the same order, as from one GET: a piece
that comes short (the object truncated or replaced) is an error at that point, and the
callers' own checks (the AEAD chunks, the file's digest) stay where they were.
"""
from __future__ import annotations

import io
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from ..errors import RelayError
from ..stream import BlockReader

if TYPE_CHECKING:
    from .base import Relay

log = logging.getLogger(__name__)

MiB = 1 << 20
#: how much of a piece one read asks for (a backend's read may hold a copy of it meanwhile)
SLICE = 256 << 10


@dataclass(frozen=True)
class Parallel:
    """How a backend reads large objects: pieces of ``piece`` bytes, ``width`` at once, for
    objects of ``min_size`` bytes or more (a smaller one is one GET)."""

    piece: int = 4 * MiB
    width: int = 3
    min_size: int = 16 * MiB

    def applies(self, size: int, version: str | None) -> bool:
        """Whether an object of ``size`` bytes at ``version`` is read in parallel (a version
        is needed to pin the pieces to one object)."""
        return bool(version) and self.width > 1 and size >= max(self.min_size, 2 * self.piece)


class _Stopped(Exception):
    """The reader was closed while a piece was being fetched."""


class ParallelRead(BlockReader):
    """Bytes ``[0, size)`` of relay object ``name`` at ``version``: the first piece from the
    already open ``first`` stream, the others by ``relay.get_range`` in threads."""

    def __init__(self, relay: "Relay", name: str, size: int, version: str, first: BinaryIO, plan: Parallel):
        super().__init__()
        self.relay, self.name, self.size, self.version, self.plan = relay, name, size, version, plan
        self.first: BinaryIO | None = first
        self.count = -(-size // plan.piece)
        self.pool = ThreadPoolExecutor(plan.width, thread_name_prefix="get-range")
        self.stop = threading.Event()
        self.ahead: deque[Future] = deque()
        self.submitted = 0
        while self.submitted < min(plan.width, self.count):
            self._submit()

    def _submit(self) -> None:
        self.ahead.append(self.pool.submit(self._fetch, self.submitted))
        self.submitted += 1

    def _fetch(self, k: int) -> bytearray:
        start = k * self.plan.piece
        length = min(self.plan.piece, self.size - start)
        if k == 0:
            src, self.first = self.first, None
        else:
            src = self.relay.get_range(self.name, start, length, version=self.version)
        buf = bytearray(length)
        got = 0
        # get_range's answer is not read from yet: if the backend wrapped it in a buffer
        # (WebDAV), its raw stream reads straight into the piece (through the buffer, each
        # slice would be copied once more)
        reader = src.raw if k and isinstance(src, io.BufferedReader) else src
        try:
            with memoryview(buf) as view:
                while got < length:
                    if self.stop.is_set():
                        raise _Stopped()
                    n = reader.readinto(view[got:min(length, got + SLICE)]) or 0
                    if not n:
                        break
                    got += n
        finally:
            src.close()
        if got < length:
            raise RelayError(f"relay object {self.name} ended at byte {start + got} of {self.size} while being "
                             "read (truncated or replaced meanwhile)")
        return buf

    def _block(self) -> bytearray | None:
        """The next piece, in order (its fetch's error raised here); None after the last."""
        if not self.ahead:
            return None
        buf = self.ahead.popleft().result()
        if self.submitted < self.count:
            self._submit()
        return buf

    def close(self) -> None:
        if not self.closed:
            self.stop.set()
            for f in self.ahead:
                f.cancel()
            self.pool.shutdown(wait=True)
            for f in self.ahead:  # a piece whose fetch failed after the close: nothing to report
                if f.done() and not f.cancelled():
                    f.exception()
            self.ahead.clear()
            if self.first is not None:
                self.first.close()
                self.first = None
        super().close()
