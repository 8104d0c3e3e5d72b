"""The contract between escale's protocol and the storage it uses as a relay.

A backend only stores opaque objects under '/'-separated names. It knows nothing
of updates, acks or encryption: all protocol logic lives above it
(:mod:`escale.protocol`). Adding a backend means adding one module here, declaring its
options and capabilities, and giving ``tests/test_relay_contract.py`` a server
fixture; the protocol code does not change.

Names
    Relative, '/'-separated, never empty, never starting with '/', no empty, '.' or
    '..' part, no backslash (:func:`check_name`). Any other character may appear
    (spaces, ``%``, ``#``, ``?``, ``+``, non-ASCII); a backend escapes them for its
    protocol. A name is compared as bytes: the backend does not normalise Unicode.
    Folders are not objects: they exist only as the common prefix of names.

list(prefix)
    Every complete object whose name starts with ``prefix``, each once, recursively,
    with its size and version. Never a partially written object, a backend's
    temporary or probe, or an entry the storage reports an error for. A listing that
    cannot be read completely raises: it never returns a shorter list instead (callers
    delete and prune on the strength of what it says). Listing after write
    (:attr:`Capabilities.list_after_write`): an object whose put returned is listed.

put(name, stream, size=…)
    Reads the source to its end and stores it. With ``size`` (the exact byte count,
    which the protocol always knows) the backend sends a sized body (never a chunked
    one, which some servers silently drop). A put is atomic: readers see the old object
    or the complete new one, never a part (:attr:`Capabilities.atomic_replace`). With
    ``create_only`` the put fails with ObjectExists if the name is taken by another
    object, atomically where :attr:`Capabilities.atomic_create` says so. A source that
    fails to read raises SourceError (a local file error), never a relay error.

get(name) and ranged reads
    ``get`` streams the object's bytes. ``get_range(name, start, length, version=…)`` gives
    bytes ``[start, start + length)`` of it: fewer only where the object ends (a range
    past the end is empty, never an error), RelayObjectMissing when it is absent, and,
    with ``version`` (the token a listing or the first GET gave: an ETag), a RelayError
    when the object is no longer that version, so pieces of two versions are never
    spliced. Every backend has it: the default reads one GET and skips to ``start``.
    A backend whose storage serves real ranged reads declares
    :attr:`Capabilities.ranged_reads` and may read a large object in its ``get`` with
    several ranged requests at once (:mod:`escale.relay.ranged`: pieces fetched in
    parallel threads, handed out in order, memory bounded by the pieces in flight).

versions
    :attr:`ObjectInfo.version` is an opaque token that changes whenever the object's
    content may have changed (an ETag, or size and modification time); callers compare
    it for equality only. :attr:`ObjectInfo.mtime` is kept as a float "version stamp"
    for the state cache: it is not a clock.

errors (:mod:`escale.errors`)
    not found (RelayObjectMissing), exists (ObjectExists), auth (AuthenticationError),
    quota (QuotaExceeded), transient (TransientRelayError: retried, then reported),
    permanent (PermanentRelayError or any other RelayError), and SourceError for the
    caller's own data.

retries and lost answers
    Transient failures are retried by the one shared wrapper, :func:`escale.relay.retry.call`
    (exponential back-off with jitter, Retry-After, ``max retries``; its docstring says
    how a backend uses it): the backend raises TransientRelayError for what may pass and
    declares ``options.MAX_RETRIES``. A retried call that is not idempotent may find its own first attempt's
    work done: a create-if-absent whose answer was lost finds "its" name taken. The
    backend gives the wrapper an outcome check (``landed``: the object holds exactly the
    bytes it sent, the temporary it moved is gone) that is asked before anything is
    resent and before ObjectExists or "not found" is reported for a retried call.

deletes
    delete(name) removes one object; absent is fine. A backend that has folders may
    remove a folder only when it has checked it is empty: it never removes a folder
    that holds anything, even when a listing could not place what it holds.
"""
from __future__ import annotations

import io
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Mapping

from ..errors import RelayError, RelayObjectMissing

log = logging.getLogger(__name__)

#: the name prefixes of a backend's own temporaries (a put under way) and probe objects: one
#: convention for every backend, hidden from listings
TMP_MARK = ".escale-put-"
PROBE_MARK = ".escale-probe-"
#: temporaries older than this are leftovers of a killed writer (removed by listings)
STALE_TMP_SECONDS = 6 * 3600
#: a non-seekable body up to this size is held in memory so that its put can be retried
REPLAY_BUFFER = 8 << 20


@dataclass(frozen=True)
class RelayOption:
    """An option a backend declares for its section of the configuration file.

    The configuration (:mod:`escale.config`) registers the options of every backend, so
    adding a backend never means editing the option table. The value reaches the
    backend's constructor as the keyword ``field``; ``parse`` turns the text into that
    value and raises ValueError with a message a user can act on (the configuration
    names the file, section and option around it). Several backends may declare the
    same option (TLS, retries) with the same field and aliases.
    """

    field: str
    #: spellings accepted in a configuration file; the first is the one shown
    aliases: tuple[str, ...]
    parse: Callable[[str], object] | None = None
    #: never logged or shown (a token, a key file's passphrase)
    secret: bool = False
    doc: str = ""
    #: a file name: a relative one is read beside the configuration file (as ``passphrase``)
    path: bool = False

    @property
    def name(self) -> str:
        return self.aliases[0]


@dataclass(frozen=True)
class Capabilities:
    """What a backend guarantees on the storage it talks to (some are found by probing)."""

    #: create-if-absent cannot let two writers both succeed
    atomic_create: bool = True
    #: replacing an object is atomic for readers
    atomic_replace: bool = True
    #: an object is listed as soon as its put returned
    list_after_write: bool = True
    #: largest object the storage takes (None: no known limit)
    max_object_size: int | None = None
    #: ``get_range`` is a real ranged request (not the default: one GET read up to the range)
    ranged_reads: bool = False


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing tells about one object."""

    name: str
    size: int
    mtime: float = 0.0
    etag: str | None = None

    @property
    def version(self) -> str:
        """An opaque token that changes when the content may have changed."""
        return self.etag if self.etag else f"{self.size}:{self.mtime!r}"


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
    #: options of this backend's sections (registered by :mod:`escale.config`)
    options: tuple[RelayOption, ...] = ()

    @property
    def capabilities(self) -> Capabilities:
        """What this backend guarantees here (a backend that probes refines it)."""
        return Capabilities()

    @classmethod
    def check_config(cls, address: str, *, user: str | None, password: str | None,
                     options: Mapping[str, object]) -> None:
        """Refuse, when the configuration is read, a section this backend could never use.

        ``address`` is the ``relay address`` as written, ``options`` the parsed values of
        this backend's options (and ``port``). Raises ConfigError with ``option`` set to
        the option at fault (ValueError: the relay address); the configuration adds the
        file and section. Nothing here connects: this runs on every start and edit.
        """

    @classmethod
    def location(cls, address: str, directory: str) -> str | None:
        """The relay URL that a configuration's ``relay address`` and ``relay directory``
        give, for a backend whose addresses are not ``scheme://host[:port]/path`` (a Drive
        folder path or folder id); None: they are, and the configuration parses them.
        Raises ConfigError (the configuration adds file, section and option)."""
        return None

    def __init__(self, address: str):
        self.address = address

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r})"

    def use_state_dir(self, state_dir, repository: str | None = None) -> None:
        """The repository's private state folder, given before :meth:`open`: where a backend
        keeps what belongs to this client (an OAuth token, upload sessions). Most need none."""

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

    def get_range(self, name: str, start: int, length: int, *, version: str | None = None) -> BinaryIO:
        """Bytes ``[start, start + length)`` of the object (fewer only where it ends; a
        range past the end is empty); raises RelayObjectMissing, and RelayError when
        ``version`` is given and the object is no longer that version (module doc).

        This default streams one GET and skips to ``start``: correct on any backend, fast
        only near the object's start. A backend with real ranged reads overrides it and
        declares :attr:`Capabilities.ranged_reads`."""
        if start < 0 or length < 0:
            raise ValueError("a range starts at 0 or later and has a length of 0 or more")
        stream = self.get(name)
        try:
            if version is not None:
                info = self.stat(name)
                if info is None:
                    raise RelayObjectMissing(f"relay object {name} is missing")
                if info.version != version:
                    raise RelayError(f"relay object {name} changed while being read")
            left = start
            while left > 0:
                skipped = len(stream.read(min(left, 1 << 20)))
                if not skipped:
                    break
                left -= skipped
        except BaseException:
            stream.close()
            raise
        return _Window(stream, length)

    @abstractmethod
    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False, size: int | None = None) -> int:
        """Store ``stream`` under ``name``; return the byte count.

        ``size``: the exact number of bytes the stream gives (sent as the body's length).
        With ``create_only`` the put fails with ObjectExists if the name is taken,
        atomically where the storage allows it (see the module doc).
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


class _Window(io.RawIOBase):
    """At most ``length`` bytes of ``stream`` (the default ranged read)."""

    def __init__(self, stream: BinaryIO, length: int):
        self.stream, self.left = stream, length

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.left <= 0:
            return 0
        with memoryview(b) as view:
            data = self.stream.read(min(len(view), self.left))
            n = len(data)
            view[:n] = data
        self.left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
        super().close()


def check_name(name: str) -> str:
    """Refuse names that could address something outside the relay folder."""
    from ..errors import UnsafePath

    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(name, "invalid relay object name")
    return name
