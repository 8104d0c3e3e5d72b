"""The data of one put, as the backends that send it themselves (FTP, SFTP) need it:
read in blocks, counted against the announced size, and sent again from its start on a
retry when it can be — a seekable source, or a body of at most ``REPLAY_BUFFER`` bytes
kept in memory. A failure to read it is the caller's (SourceError), never retried."""
from __future__ import annotations

import hashlib
from typing import BinaryIO, Iterator

from ..errors import SourceError
from ..stream import read_exactly
from .base import REPLAY_BUFFER

BLOCK = 1 << 20


class PutBody:
    """The data of one put: replayable when seekable or small, sent once otherwise."""

    def __init__(self, stream: BinaryIO, size: int | None, name: str):
        self.stream, self.name = stream, name
        self.expected = size
        self.data: bytes | None = None
        self.start = 0
        self.seekable = False
        self.started = False
        self.count = 0
        try:
            if stream.seekable():
                self.start = stream.tell()
                self.seekable = True
        except (AttributeError, OSError, ValueError):
            self.seekable = False
        if not self.seekable and (size is None or size <= REPLAY_BUFFER):
            head = self._read(REPLAY_BUFFER + 1)
            if len(head) <= REPLAY_BUFFER:
                self.data = head
            else:  # longer than announced or unknown: send it once, from this head on
                self.head = head
        if not hasattr(self, "head"):
            self.head = b""
        if self.data is not None and size is not None and len(self.data) != size:
            raise self._length_error(len(self.data))

    def _length_error(self, got: int) -> SourceError:
        if got < (self.expected or 0):
            return SourceError(f"relay object {self.name}: source stream ended {self.expected - got} bytes early")
        return SourceError(f"relay object {self.name}: source stream is longer than the {self.expected} "
                           "bytes announced")

    def _read(self, n: int) -> bytes:
        try:
            return read_exactly(self.stream, n)
        except OSError as exc:
            raise SourceError(f"cannot read the data to send as relay object {self.name}: "
                              f"{exc.strerror or exc}") from exc

    @property
    def replayable(self) -> bool:
        return self.data is not None or self.seekable or not self.started

    def blocks(self) -> Iterator[bytes]:
        """The bytes to send, in blocks, from the start (raises SourceError)."""
        self.count = 0
        self.started = True
        if self.data is not None:
            for i in range(0, len(self.data), BLOCK):
                self.count += len(self.data[i:i + BLOCK])
                yield self.data[i:i + BLOCK]
            return
        if self.seekable:
            try:
                self.stream.seek(self.start)
            except OSError as exc:
                raise SourceError(f"cannot read the data to send as relay object {self.name}: {exc}") from exc
        if self.head:
            head, self.head = self.head, b""
            self.count += len(head)
            yield head
        while True:
            want = BLOCK if self.expected is None else min(BLOCK, self.expected - self.count + 1)
            data = self._read(max(want, 1))
            if not data:
                break
            self.count += len(data)
            if self.expected is not None and self.count > self.expected:
                raise self._length_error(self.count)
            yield data
        if self.expected is not None and self.count != self.expected:
            raise self._length_error(self.count)

    def digest(self) -> str | None:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        if not self.seekable:
            return None
        h = hashlib.sha256()
        for block in self.blocks():
            h.update(block)
        return h.hexdigest()
