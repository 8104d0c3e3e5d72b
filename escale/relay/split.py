"""Objects larger than a relay takes: stored as parts plus a manifest (``max object size``).

Why: Apache 2.4.54+ refuses bodies over 1 GiB by default, Cloudflare's free plan over
100 MB, vfat files over 4 GiB: a large blob would fail every cycle. :class:`Splitting`
sits between the protocol and the backend (as rclone's chunker overlay does) and is
always there, because every client must read what a client with a smaller limit wrote.

Layout (docs/format.md, "Split objects")
    An object of up to ``limit`` bytes is stored as it is. A larger one is stored as
    ``n`` parts of ``limit`` bytes (the last one shorter) named
    ``<name>.~part.<upload id>.<k>.<n>`` (``k`` from 1; the upload id is 8 random hex
    digits, so two uploads of one name never mix), then a manifest under ``<name>``,
    written last and with the put's own create-if-absent semantics::

        16 bytes  magic "ESCALE-SPLIT\\0\\0\\0\\1"
         8 bytes  total size (little-endian)
        32 bytes  SHA-256 of the whole object
         4 bytes  upload id
         4 bytes  n
        n × (8 bytes part size, 32 bytes SHA-256 of the part)

    It holds only what the stored object already shows (sizes, and digests of the
    stored — encrypted — bytes), so it leaks nothing the plain object would not. Its
    size is exactly ``64 + 40 n``. A plain object that happens to begin with the magic
    (a plaintext relay holding such a file) is stored as a one-part split object, so
    a manifest is never confused with data.

Guarantees
    - ``list`` hides parts and reports the logical size (from the part sizes in the
      same listing; the manifest is read only when crashed or concurrent uploads leave
      doubt, and then cached by its version). ``stat`` agrees with ``list``.
    - ``get`` streams the parts and checks each part's size and digest as it ends and
      the total at the end: a truncated or altered part is an IntegrityError naming the
      object, the part and its name; a missing part is RelayObjectMissing.
    - ``delete`` removes the manifest first (the object is gone at once), then the parts.
    - A crash between parts leaves parts without a manifest: invisible to ``list``, and
      removed by :meth:`abort_incomplete`, which the writer calls at every start.

Length: one layer's whole contract (parts, manifest, listings with logical sizes,
create-if-absent, clean-up of a killed writer) in one place; splitting it would
scatter one format.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
import secrets
import struct
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from ..errors import IntegrityError, ObjectExists, RelayError, RelayObjectMissing, SourceError
from ..stream import read_exactly
from ..values import parse_size
from .base import Capabilities, ObjectInfo, Relay, RelayOption, Usage

log = logging.getLogger(__name__)

MAGIC = b"ESCALE-SPLIT\x00\x00\x00\x01"
_HEAD = struct.Struct("<16sQ32s4sI")
_PART = struct.Struct("<Q32s")
PART_MARK = ".~part."
_PART_RE = re.compile(r"^(?P<base>.+)\.~part\.(?P<uid>[0-9a-f]{8})\.(?P<k>[1-9][0-9]*)\.(?P<n>[1-9][0-9]*)$")
#: a manifest never lists more parts than this (a hostile one cannot make us read more)
MAX_PARTS = 1_000_000
#: smallest ``max object size`` a configuration may set (tests use smaller ones through the API)
MIN_LIMIT = 1 << 20
#: a manifest may be this large even under a smaller limit (only tests set one that small)
MANIFEST_FLOOR = 64 << 10
BLOCK = 1 << 20
SPOOL_IN_MEMORY = 8 << 20


def manifest_size(n: int) -> int:
    return _HEAD.size + n * _PART.size


def part_name(name: str, uid: str, k: int, n: int) -> str:
    return f"{name}{PART_MARK}{uid}.{k}.{n}"


@dataclass(frozen=True)
class PartName:
    base: str
    uid: str
    k: int
    n: int


def parse_part_name(name: str) -> PartName | None:
    m = _PART_RE.match(name) if PART_MARK in name else None
    if not m:
        return None
    k, n = int(m["k"]), int(m["n"])
    return PartName(m["base"], m["uid"], k, n) if k <= n else None


def parse_max_object_size(text: str) -> int | None:
    """``max object size``: a size of at least 1 MiB, or ``off``/``none`` (no limit)."""
    t = text.strip().lower()
    if t in ("off", "none", "no", "0", "unlimited"):
        return None
    n = parse_size(text)
    if n < MIN_LIMIT:
        raise ValueError("a max object size is at least 1MiB (or 'off')")
    return n


#: the option every backend declares (the default is the backend's Capabilities.max_object_size)
MAX_OBJECT_SIZE = RelayOption(
    "max_object_size", ("max object size",), parse_max_object_size,
    doc="largest object escale stores on this relay in one piece; larger ones are split into parts "
        "of this size, reassembled and verified by every client (default: the backend's known limit, "
        "if any; 'off' for none; at least 1MiB)")


@dataclass(frozen=True)
class Manifest:
    total: int
    digest: bytes
    uid: str
    parts: tuple[tuple[int, bytes], ...]

    def encode(self) -> bytes:
        return _HEAD.pack(MAGIC, self.total, self.digest, bytes.fromhex(self.uid), len(self.parts)) + b"".join(
            _PART.pack(size, d) for size, d in self.parts)

    @classmethod
    def decode(cls, name: str, data: bytes) -> "Manifest":
        if len(data) < _HEAD.size:
            raise IntegrityError(name, "split-object manifest is truncated")
        magic, total, digest, uid, n = _HEAD.unpack_from(data)
        if magic != MAGIC or not 1 <= n <= MAX_PARTS or len(data) != manifest_size(n):
            raise IntegrityError(name, f"split-object manifest is malformed ({len(data)} bytes for {n} parts)")
        parts = tuple(_PART.unpack_from(data, _HEAD.size + i * _PART.size) for i in range(n))
        if sum(s for s, _d in parts) != total:
            raise IntegrityError(name, "split-object manifest: part sizes do not add up to its total")
        return cls(total, digest, uid.hex(), parts)

    def part_names(self, name: str) -> list[str]:
        n = len(self.parts)
        return [part_name(name, self.uid, k, n) for k in range(1, n + 1)]


class _Prefixed(io.RawIOBase):
    """``head`` then the rest of ``stream`` (a peeked stream given back whole)."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self.head, self.stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        readinto = getattr(self.stream, "readinto", None)
        if readinto is not None:
            return readinto(b) or 0
        data = self.stream.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
        super().close()


def _seekable(stream) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class _Window(io.RawIOBase):
    """At most ``size`` bytes of ``stream`` (one part), hashed as they pass; a local read
    error is the caller's SourceError."""

    def __init__(self, stream: BinaryIO, size: int, total: "hashlib._Hash", name: str):
        self.stream, self.left, self.total, self.name = stream, size, total, name
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.left <= 0:
            return 0
        try:
            data = self.stream.read(min(len(b), self.left))
        except OSError as exc:
            if isinstance(exc, SourceError):
                raise
            raise SourceError(f"cannot read the data to send as relay object {self.name}: "
                              f"{exc.strerror or exc}") from exc
        n = len(data)
        b[:n] = data
        self.left -= n
        self.count += n
        self.hash.update(data)
        self.total.update(data)
        return n


class _Joined(io.RawIOBase):
    """The parts of a split object read one after the other, each checked as it ends."""

    def __init__(self, inner: Relay, name: str, manifest: Manifest):
        self.inner, self.name, self.m = inner, name, manifest
        self.names = manifest.part_names(name)
        self.k = 0  # index of the part being read
        self.part: BinaryIO | None = None
        self.hash = hashlib.sha256()
        self.total = hashlib.sha256()
        self.count = self.seen = 0

    def readable(self) -> bool:
        return True

    def _what(self) -> str:
        return f"part {self.k + 1} of {len(self.names)} ({self.names[self.k]})"

    def readinto(self, b) -> int:
        while self.k < len(self.names):
            if self.part is None:
                try:
                    self.part = self.inner.get(self.names[self.k])
                except RelayObjectMissing:
                    raise RelayObjectMissing(f"relay object {self.name}: {self._what()} is missing") from None
                self.hash, self.count = hashlib.sha256(), 0
            size, digest = self.m.parts[self.k]
            want = min(len(b), size - self.count + 1)  # one byte more shows a part too long
            with memoryview(b) as view:
                n = self.part.readinto(view[:want]) or 0
                if n:
                    self.count += n
                    if self.count > size:
                        raise IntegrityError(self.name, f"{self._what()} is longer than the {size} bytes its "
                                             "manifest gives (altered)")
                    self.hash.update(view[:n])
                    self.total.update(view[:n])
                    self.seen += n
                    return n
            self.part.close()
            self.part = None
            if self.count != size:
                raise IntegrityError(self.name, f"{self._what()} is truncated: {self.count} of {size} bytes")
            if self.hash.digest() != digest:
                raise IntegrityError(self.name, f"{self._what()} does not match its digest (altered)")
            self.k += 1
        if self.seen == self.m.total and self.total.digest() != self.m.digest:
            self.seen += 1  # report once
            raise IntegrityError(self.name, "the reassembled parts do not match the object's digest")
        return 0

    def close(self) -> None:
        if self.part is not None:
            self.part.close()
            self.part = None
        super().close()


class Splitting(Relay):
    """The relay the protocol talks to: ``inner`` with objects over ``limit`` split."""

    def __init__(self, inner: Relay, limit: int | None = None):
        self.inner = inner
        #: largest object stored in one piece (None: no splitting, but split objects are read)
        self._explicit = limit is not None
        self.limit = limit if limit is not None else inner.capabilities.max_object_size
        super().__init__(inner.address)
        #: name -> (version, manifest or None) of objects whose first bytes were read
        self._manifests: dict[tuple[str, str], Manifest | None] = {}
        #: name -> part names seen beside it in the last listing that covered it
        self._parts: dict[str, list[str]] = {}

    @classmethod
    def around(cls, relay: Relay, limit: int | None = None) -> "Splitting":
        return relay if isinstance(relay, Splitting) else cls(relay, limit)

    def __getattr__(self, attr: str):
        # backend-specific attributes (a WebDAV relay's raw_usage, an S3 relay's bucket…)
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def __repr__(self) -> str:
        return f"Splitting({self.inner!r}, limit={self.limit})"

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(self.inner.capabilities, max_object_size=None)

    def open(self) -> None:
        self.inner.open()
        if not self._explicit:  # a backend may learn its limit when it connects
            self.limit = self.inner.capabilities.max_object_size

    def close(self) -> None:
        self.inner.close()

    def usage(self) -> Usage:
        return self.inner.usage()

    def use_state_dir(self, state_dir, repository: str | None = None) -> None:
        # Relay's no-op would shadow __getattr__: the backend keeps its token and sessions there
        self.inner.use_state_dir(state_dir, repository)

    # -- reading ---------------------------------------------------------------------------
    def _manifest_of(self, info: ObjectInfo) -> Manifest | None:
        """The manifest stored under ``info.name``, or None for a plain object (cached by version)."""
        key = (info.name, info.version)
        if key not in self._manifests:
            if len(self._manifests) > 10_000:
                self._manifests.clear()
            m = None
            if info.size >= manifest_size(1) and (info.size - _HEAD.size) % _PART.size == 0:
                try:
                    with self.inner.get(info.name) as f:
                        head = read_exactly(f, len(MAGIC))
                        if head == MAGIC:  # read no more than the largest manifest, whatever the listing says
                            more = min(info.size, manifest_size(MAX_PARTS)) - len(MAGIC) + 1
                            m = Manifest.decode(info.name, head + read_exactly(f, more))
                except RelayObjectMissing:
                    return None  # deleted since it was listed
                except IntegrityError as exc:
                    # a forged or damaged manifest: listed as it is (its get is refused by name), so
                    # one such object never stops a listing
                    log.warning("%s", exc)
            self._manifests[key] = m
        return self._manifests[key]

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        objects: list[ObjectInfo] = []
        groups: dict[str, dict[tuple[str, int], dict[int, int]]] = {}
        names: dict[str, list[str]] = {}
        for info in self.inner.list(prefix):
            p = parse_part_name(info.name)
            if p is None:
                objects.append(info)
                continue
            groups.setdefault(p.base, {}).setdefault((p.uid, p.n), {})[p.k] = info.size
            names.setdefault(p.base, []).append(info.name)
        for info in objects:
            self._parts[info.name] = names.get(info.name, [])
            yield self._logical(info, groups.get(info.name))

    def _logical(self, info: ObjectInfo, groups: dict[tuple[str, int], dict[int, int]] | None) -> ObjectInfo:
        if not groups:
            return info
        complete = [(uid, n, sum(parts.values())) for (uid, n), parts in groups.items()
                    if len(parts) == n]
        if len(complete) == 1 and info.size == manifest_size(complete[0][1]):
            return dataclasses.replace(info, size=complete[0][2])
        m = self._manifest_of(info)  # crashed or concurrent uploads beside it: ask the manifest
        return dataclasses.replace(info, size=m.total) if m else info

    def stat(self, name: str) -> ObjectInfo | None:
        info = self.inner.stat(name)
        if info is None:
            return None
        m = self._manifest_of(info)
        return dataclasses.replace(info, size=m.total) if m else info

    def get(self, name: str) -> BinaryIO:
        raw = self.inner.get(name)
        try:
            head = read_exactly(raw, len(MAGIC))
            if head != MAGIC:
                if _seekable(raw):  # a local file: handed back as it is, no copy on the way
                    raw.seek(0)
                    return raw
                return io.BufferedReader(_Prefixed(head, raw), BLOCK)
            rest = read_exactly(raw, manifest_size(MAX_PARTS) - len(MAGIC) + 1)
        except BaseException:
            raw.close()
            raise
        raw.close()
        m = Manifest.decode(name, head + rest)
        return io.BufferedReader(_Joined(self.inner, name, m), BLOCK)

    # -- writing ---------------------------------------------------------------------------
    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False, size: int | None = None) -> int:
        stream, size, head = self._sized(name, stream, size)
        if head != MAGIC and (self.limit is None or size is None or size <= self.limit):
            n = self.inner.put(name, stream, create_only=create_only, size=size)
            self._forget_old_parts(name, keep=None)
            return n
        return self._put_split(name, stream, size, create_only)

    def _sized(self, name: str, stream: BinaryIO, size: int | None) -> tuple[BinaryIO, int | None, bytes]:
        """The source with its first bytes peeked (put back) and its exact size, known
        whenever it matters (a limit applies, or the data looks like a manifest)."""
        seekable = False
        try:
            seekable = stream.seekable()
        except (AttributeError, OSError, ValueError):
            pass
        try:
            if seekable:
                start = stream.tell()
                if size is None:
                    size = stream.seek(0, os.SEEK_END) - start
                    stream.seek(start)
                head = read_exactly(stream, len(MAGIC))
                stream.seek(start)
                return stream, size, head
            if size is None and self.limit is not None:
                # an unsized, one-way source: spooled (to memory, then disk) to learn its size
                spool = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY)
                while data := stream.read(BLOCK):
                    spool.write(data)
                size = spool.tell()
                spool.seek(0)
                head = read_exactly(spool, len(MAGIC))
                spool.seek(0)
                return spool, size, head  # type: ignore[return-value]
            head = read_exactly(stream, len(MAGIC))
        except OSError as exc:
            if isinstance(exc, SourceError):
                raise
            raise SourceError(f"cannot read the data to send as relay object {name}: {exc.strerror or exc}") from exc
        wrapped = io.BufferedReader(_Prefixed(head, stream), BLOCK)
        if size is None:  # no limit: the size does not matter, unless the data looks like a manifest
            if head != MAGIC:
                return wrapped, None, head
            spool = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY)
            while data := wrapped.read(BLOCK):
                spool.write(data)
            size = spool.tell()
            spool.seek(0)
            return spool, size, head  # type: ignore[return-value]
        return wrapped, size, head

    def _put_split(self, name: str, stream: BinaryIO, size: int, create_only: bool) -> int:
        part = self.limit if self.limit is not None else max(size, 1)
        n = max(1, -(-size // part))
        if self.limit is not None and manifest_size(n) > max(self.limit, MANIFEST_FLOOR):
            raise RelayError(f"relay object {name} ({size} bytes) would need {n} parts of {part} bytes, more "
                             f"than a manifest of {max(self.limit, MANIFEST_FLOOR)} bytes can list; raise "
                             "'max object size'")
        if create_only and self.inner.stat(name) is not None:
            raise ObjectExists(f"relay object {name} already exists")
        uid = secrets.token_hex(4)
        total = hashlib.sha256()
        parts: list[tuple[int, bytes]] = []
        written: list[str] = []
        done = False
        try:
            left = size
            for k in range(1, n + 1):
                want = min(part, left)
                pname = part_name(name, uid, k, n)
                window = _Window(stream, want, total, name)
                written.append(pname)
                self.inner.put(pname, window, size=want)
                if window.count != want:
                    raise SourceError(f"relay object {name}: the data to send ended {want - window.count} "
                                      f"bytes early (part {k} of {n})")
                parts.append((want, window.hash.digest()))
                left -= want
            if read_exactly(stream, 1):
                raise SourceError(f"relay object {name}: the data to send is longer than the {size} bytes announced")
            manifest = Manifest(size, total.digest(), uid, tuple(parts)).encode()
            self.inner.put(name, io.BytesIO(manifest), create_only=create_only, size=len(manifest))
            done = True
        finally:
            if not done:
                for pname in written:
                    try:
                        self.inner.delete(pname)
                    except RelayError as exc:  # left for abort_incomplete at the next start
                        log.debug("could not remove part %s: %s", pname, exc)
        log.debug("relay object %s: %d bytes stored as %d parts", name, size, n)
        self._forget_old_parts(name, keep=uid)
        self._parts[name] = [part_name(name, uid, k, n) for k in range(1, n + 1)]
        return size

    def _forget_old_parts(self, name: str, keep: str | None) -> None:
        """After a replace: remove the parts of the object's earlier uploads we know of."""
        for pname in self._parts.pop(name, []):
            p = parse_part_name(pname)
            if p is not None and p.uid != keep:
                try:
                    self.inner.delete(pname)
                except RelayError as exc:
                    log.debug("could not remove old part %s: %s", pname, exc)

    def delete(self, name: str) -> None:
        parts = self._parts.pop(name, None)
        if parts is None:  # not listed here: the manifest tells which upload; a listing, which parts exist
            info = self.inner.stat(name)
            m = self._manifest_of(info) if info is not None else None
            parts = self._present_parts(name, m.uid) if m else []
        self.inner.delete(name)  # the object is gone at once; its parts follow
        for pname in parts:
            self.inner.delete(pname)

    def _present_parts(self, name: str, uid: str) -> list[str]:
        """The stored parts of ``name``'s upload ``uid``: one listing of its folder, never one
        DELETE per part a manifest claims (a forged one may claim a million)."""
        folder = name.rpartition("/")[0]
        found = []
        for info in self.inner.list(f"{folder}/" if folder else ""):
            p = parse_part_name(info.name)
            if p is not None and p.base == name and p.uid == uid:
                found.append(info.name)
        return found

    def abort_incomplete(self, prefix: str) -> int:
        removed = self.inner.abort_incomplete(prefix)
        objects: dict[str, ObjectInfo] = {}
        groups: dict[str, dict[str, list[str]]] = {}
        for info in self.inner.list(prefix):
            p = parse_part_name(info.name)
            if p is None:
                objects[info.name] = info
            else:
                groups.setdefault(p.base, {}).setdefault(p.uid, []).append(info.name)
        for base, uploads in groups.items():
            keep = None
            if base in objects:
                m = self._manifest_of(objects[base])
                keep = m.uid if m else None
            for uid, pnames in uploads.items():
                if uid == keep:
                    continue
                for pname in pnames:  # parts of an upload that never got (or lost) its manifest
                    self.inner.delete(pname)
                    removed += 1
                log.info("removed %d part(s) of an interrupted upload of relay object %s", len(pnames), base)
        return removed
