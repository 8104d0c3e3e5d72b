"""The one small interface every storage backend implements.

A backend only stores opaque objects under '/'-separated names. It knows nothing
of updates, acks or encryption: all protocol logic lives above it
(:mod:`escale.protocol`). Adding a backend means adding one module here plus its tests.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO, Iterator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing tells about one object."""

    name: str
    size: int
    mtime: float = 0.0
    etag: str | None = None


@dataclass(frozen=True)
class Usage:
    """Space on the relay as the backend itself reports it (None = unknown)."""

    used: int | None = None
    available: int | None = None


class Relay(ABC):
    """Dumb storage reachable by every client.

    Names are relative, '/'-separated, never empty, never start with '/', never
    contain '..'. A put never leaves a half-written object under its final name.
    """

    #: URL schemes this backend serves, e.g. ("file",)
    schemes: tuple[str, ...] = ()

    def __init__(self, address: str):
        self.address = address

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r})"

    def open(self) -> None:
        """Connect and check the relay is usable (raises RelayError)."""

    def close(self) -> None:
        """Release connections."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every complete object whose name starts with ``prefix``, recursively."""

    @abstractmethod
    def stat(self, name: str) -> ObjectInfo | None:
        """The object's info, or None when absent."""

    @abstractmethod
    def get(self, name: str) -> BinaryIO:
        """A readable stream of the object's bytes (raises RelayObjectMissing)."""

    @abstractmethod
    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False) -> int:
        """Store ``stream`` under ``name``; return the byte count.

        With ``create_only`` the put fails with ObjectExists if the name is taken,
        atomically where the storage allows it.
        """

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove the object; absent objects are not an error."""

    def abort_incomplete(self, prefix: str) -> int:
        """Remove interrupted uploads of objects whose name starts with ``prefix``.

        Called by the one writer of those objects after a crash (a multipart upload
        on S3, a temporary file on a mounted folder). Returns how many were removed.
        """
        return 0

    def usage(self) -> Usage:
        """Space the storage reports, when it does (quota accounting uses listings)."""
        return Usage()

    def __enter__(self) -> "Relay":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_name(name: str) -> str:
    """Refuse names that could address something outside the relay folder."""
    from ..errors import UnsafePath

    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(name, "invalid relay object name")
    return name
