"""An update being published, kept on local disk until the relay surely has it.

A pusher must never publish two different objects under one seq: a relay that keeps
a finished upload whose final rename it made fail (or that answers an error to a
write it did store) could otherwise serve the first version to some clients and a
rolled-back-and-redone second version to others — a fork of the pusher's history.

So the update's body (the inline contents) is spooled to ``outbox/<seq>.body`` and,
before the first byte of the update object leaves, its signed header is sealed in
``outbox/<seq>.head``. From then on the seq is spent: a failed or interrupted write
is retried with exactly these bytes (Ed25519 signatures are deterministic, so the
signed plaintext, and its digest, are the same), never replaced by another update.
Before the seal nothing of the update object was sent, and the seq may be reused.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO


class Outbox:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir) / "outbox"

    def _path(self, seq: int, part: str) -> Path:
        return self.dir / f"{seq}.{part}"

    def tighten(self) -> None:
        """Make an outbox left open by an older version private again."""
        if self.dir.is_dir():
            os.chmod(self.dir, 0o700)
            for f in self.dir.iterdir():
                os.chmod(f, 0o600)

    def _private(self, path: Path) -> int:
        """A new file only this user can read (the state folder is private whatever the
        umask: an update's body holds file contents in plaintext)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        return fd

    def new_body(self, seq: int) -> BinaryIO:
        """A fresh, empty body spool for update ``seq`` (read and write)."""
        return os.fdopen(self._private(self._path(seq, "body")), "w+b")

    def body(self, seq: int) -> BinaryIO:
        return open(self._path(seq, "body"), "rb")

    def seal(self, seq: int, head: bytes, body: BinaryIO) -> None:
        """Make the update's bytes durable; from here on the seq is spent."""
        body.flush()
        os.fsync(body.fileno())
        tmp = self._path(seq, "head.tmp")
        with os.fdopen(self._private(tmp), "wb") as f:
            f.write(head)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(seq, "head"))
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def head(self, seq: int) -> bytes | None:
        """The sealed header of update ``seq``, or None if it was never sealed."""
        try:
            return self._path(seq, "head").read_bytes()
        except FileNotFoundError:
            return None

    def discard(self, seq: int) -> None:
        for part in ("head", "head.tmp", "body"):
            try:
                self._path(seq, part).unlink()
            except FileNotFoundError:
                pass
