"""Byte streams that let objects of any size pass with constant memory."""
from __future__ import annotations

import hashlib
import io
import queue
import threading
from typing import BinaryIO, Callable, Iterable

BLOCK = 1 << 20


class ChainStream(io.RawIOBase):
    """Read several byte strings and streams one after the other, as one stream."""

    def __init__(self, parts: Iterable[bytes | BinaryIO | Callable[[], BinaryIO]]):
        self._parts = iter(parts)
        self._cur: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def _next(self) -> bool:
        if self._cur is not None:
            self._cur.close()
        part = next(self._parts, None)
        if part is None:
            self._cur = None
            return False
        if isinstance(part, (bytes, bytearray)):
            part = io.BytesIO(part)
        elif callable(part):
            part = part()
        self._cur = part
        return True

    def readinto(self, b) -> int:
        if self._cur is None and not self._next():
            return 0
        while True:
            data = self._cur.read(len(b))
            if data:
                b[:len(data)] = data
                return len(data)
            if not self._next():
                return 0

    def close(self) -> None:
        if self._cur is not None:
            self._cur.close()
            self._cur = None
        super().close()


def read_exactly(stream: BinaryIO, n: int) -> bytes:
    """n bytes, or fewer only if the stream ended (callers treat that as truncation)."""
    chunks, left = [], n
    while left > 0:
        data = stream.read(min(left, BLOCK))  # never ask for more than arrives: n may be hostile
        if not data:
            break
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def copy_exactly(src: BinaryIO, dst: BinaryIO | None, n: int, hasher=None) -> int:
    """Copy (or, with dst None, skip) n bytes; return how many were there."""
    done = 0
    while done < n:
        data = src.read(min(BLOCK, n - done))
        if not data:
            break
        if hasher is not None:
            hasher.update(data)
        if dst is not None:
            dst.write(data)
        done += len(data)
    return done


class HashingReader(io.RawIOBase):
    """Wrap a stream and hash (and count) what passes through."""

    def __init__(self, src: BinaryIO, algorithm: str):
        self.src = src
        self.hasher = hashlib.new(algorithm)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        """Read into ``b`` (straight from the source where it has ``readinto``: no copy) and
        hash exactly the bytes read."""
        readinto = getattr(self.src, "readinto", None)
        if readinto is not None:
            n = readinto(b) or 0
            if n:
                with memoryview(b) as view:
                    self.hasher.update(view[:n])
        else:
            data = self.src.read(len(b))
            n = len(data)
            b[:n] = data
            self.hasher.update(data)
        self.count += n
        return n

    def close(self) -> None:
        self.src.close()
        super().close()

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()


class BlockReader(io.RawIOBase):
    """A readable stream whose bytes come a block at a time from :meth:`_block`.

    One piece of logic for every stream that produces blocks (decrypted chunks, pieces of a
    parallel download, blocks read ahead by a thread): ``read(n)`` hands out at most the rest
    of the current block, without copying it when it fits whole; ``readinto`` and ``readall``
    follow from it."""

    _cur: bytes | bytearray | memoryview = b""
    _pos = 0
    _ended = False

    def readable(self) -> bool:
        return True

    def _block(self) -> bytes | bytearray | memoryview | None:
        """The next block (it may be empty: asked again), or None at the end."""
        raise NotImplementedError

    def _fill(self) -> bool:
        """Make the current block one with bytes left to hand out; False at the end."""
        if self.closed:
            raise ValueError("read of a closed stream")
        while self._pos >= len(self._cur):
            if self._ended:
                return False
            block = self._block()
            if block is None:
                self._ended = True
                self._cur, self._pos = b"", 0
                return False
            self._cur, self._pos = block, 0
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while block := self.read(BLOCK):
                parts.append(block)
            return b"".join(parts)
        if size == 0:
            if self.closed:
                raise ValueError("read of a closed stream")
            return b""
        if not self._fill():
            return b""
        cur, pos = self._cur, self._pos
        if pos == 0 and size >= len(cur):
            self._cur = b""
            return cur if isinstance(cur, bytes) else bytes(cur)
        if isinstance(cur, bytes):
            data = cur[pos:pos + size]
        else:
            with memoryview(cur) as view:
                data = bytes(view[pos:pos + size])
        self._pos = pos + len(data)
        return data

    def readinto(self, b) -> int:
        """Copy straight from the current block into ``b`` (one copy; ``read`` and a
        slice assignment would be two)."""
        size = len(b)
        if size == 0:
            if self.closed:
                raise ValueError("read of a closed stream")
            return 0
        if not self._fill():
            return 0
        cur, pos = self._cur, self._pos
        n = min(size, len(cur) - pos)
        with memoryview(cur) as view:
            b[:n] = view[pos:pos + n]
        self._pos = pos + n
        return n

    def readall(self) -> bytes:
        return self.read(-1)


class ReadAhead(BlockReader):
    """``src`` read by a thread of its own, up to ``depth`` blocks ahead of the reader.

    Why: producing the bytes (a network receive, AES-GCM, SHA-256 in a HashingReader) and
    using them (a file's digest and write, a socket send) each release the GIL on large
    buffers, so with the two in different threads they overlap on two cores instead of
    taking turns. Memory: at most ``depth`` + 1 blocks. What the source raises is raised
    to the reader at the point where it happened (and again at every later read);
    :meth:`close` stops the thread (it may finish the block it is reading) before it closes
    the source.
    """

    def __init__(self, src: BinaryIO, block: int = BLOCK, depth: int = 4):
        super().__init__()
        self.src, self.block = src, block
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self.src.read(self.block)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the reader
            self._put(exc)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _block(self) -> bytes | None:
        if self._failed is not None:
            raise self._failed
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._failed = item
            raise item
        return item or None

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            while self._thread.is_alive():
                try:  # make room for a put under way
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self.src.close()
        super().close()
