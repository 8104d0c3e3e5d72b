"""The data of one put, as the backends that send it themselves (WebDAV, FTP, SFTP) need
it: read in blocks, counted against the announced size, and sent again from its start on
a retry when it can be — a seekable source, or a body of at most ``REPLAY_BUFFER`` bytes
kept in memory. A failure to read it, or a length other than announced, is the caller's
(SourceError), never retried."""
from __future__ import annotations

import hashlib
import io
from typing import BinaryIO, Iterator

from ..errors import SourceError
from ..stream import read_exactly
from .base import REPLAY_BUFFER

BLOCK = 1 << 20


class PutBody:
    """The data of one put: replayable when seekable or small, sent once otherwise.

    ``length`` is the number of bytes to send when it is known before sending (the
    announced size, a seekable source's rest, a body kept in memory): WebDAV sends it as
    Content-Length. A seekable source of at most one block is read at once and kept.
    ``error`` is the SourceError the body raised, if any: an HTTP client that wraps what
    the body raised in its own connection error must not make it a relay failure.
    """

    def __init__(self, stream: BinaryIO, size: int | None, name: str):
        self.stream, self.name = stream, name
        self.length = size
        self.data: bytes | None = None
        self.head = b""
        self.start = 0
        self.seekable = False
        self.started = False
        self.count = 0
        self.error: SourceError | None = None
        try:
            if stream.seekable():
                start = stream.tell()
                if size is None:
                    self.length = stream.seek(0, io.SEEK_END) - start
                    stream.seek(start)
                self.start, self.seekable = start, True
        except (AttributeError, OSError, ValueError):
            self.seekable = False
        if self.seekable and self.length is not None and self.length <= BLOCK:
            self.data, self.seekable = self._read(self.length + 1), False
        elif not self.seekable and (size is None or size <= REPLAY_BUFFER):
            head = self._read(REPLAY_BUFFER + 1)
            if len(head) <= REPLAY_BUFFER:
                self.data = head
            else:  # longer than announced or unknown: send it once, from this head on
                self.head = head
        if self.data is not None:
            if self.length is not None and len(self.data) != self.length:
                raise self._length_error(len(self.data))
            self.length = len(self.data)

    def _fail(self, error: SourceError) -> SourceError:
        self.error = error
        return error

    def _length_error(self, got: int) -> SourceError:
        if got < (self.length or 0):
            return self._fail(SourceError(f"relay object {self.name}: source stream ended "
                                          f"{self.length - got} bytes early"))
        return self._fail(SourceError(f"relay object {self.name}: source stream is longer than the "
                                      f"{self.length} bytes announced"))

    def _read(self, n: int) -> bytes:
        try:
            return read_exactly(self.stream, n)
        except OSError as exc:
            raise self._fail(SourceError(f"cannot read the data to send as relay object {self.name}: "
                                         f"{exc.strerror or exc}")) from exc

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
                raise self._fail(SourceError(f"cannot read the data to send as relay object {self.name}: "
                                             f"{exc}")) from exc
        if self.head:
            head, self.head = self.head, b""
            self.count += len(head)
            yield head
        while True:
            want = BLOCK if self.length is None else min(BLOCK, self.length - self.count + 1)
            data = self._read(max(want, 1))
            if not data:
                break
            self.count += len(data)
            if self.length is not None and self.count > self.length:
                raise self._length_error(self.count)
            yield data
        if self.length is not None and self.count != self.length:
            raise self._length_error(self.count)

    def digest(self) -> str | None:
        """SHA-256 of the whole body, when it can be read again (None otherwise)."""
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        if not self.seekable:
            return None
        h = hashlib.sha256()
        for block in self.blocks():
            h.update(block)
        return h.hexdigest()
