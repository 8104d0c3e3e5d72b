"""Byte streams that let objects of any size pass with constant memory."""
from __future__ import annotations

import hashlib
import io
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
        data = self.src.read(len(b))
        if not data:
            return 0
        b[:len(data)] = data
        self.hasher.update(data)
        self.count += len(data)
        return len(data)

    def close(self) -> None:
        self.src.close()
        super().close()

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()
