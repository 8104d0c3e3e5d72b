"""Relay layout and object formats: what the clients of a repository exchange.

Every object has exactly one writer, the client whose id is in its name, so two
clients never race on one object and no lock exists anywhere. The only object
shared at creation, ``escale.json``, is created with create-if-absent.

Layout (see docs/protocol.md)::

    escale.json              repository header (format, hash algorithm, cipher)
    m/<cid>                  member card: name, mode
    u/<cid>/<seq>            update: header (entries, chain link) + bundled contents
    b/<cid>/<seq>/<n>        content of one large file of update <seq>
    a/<cid>                  acknowledgements: per pusher, last seq applied + digest
    s/<cid>                  snapshot: the pusher's whole index at a seq
    q/<cid>                  requests: contents this client lacks
    r/<cid>                  quota reservation while publishing
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterable

from .encryption import Cipher
from .errors import IntegrityError, RelayError
from .index import Entry
from .relay.base import ObjectInfo, Relay
from .stream import ChainStream, read_exactly

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
HEADER_NAME = "escale.json"
UPDATE_MAGIC = b"ESCU\x01"
SNAPSHOT_MAGIC = b"ESCS\x01"
#: a header larger than this is refused as malformed (bounded memory on hostile input)
MAX_HEADER = 512 << 20
MAX_SMALL_OBJECT = 64 << 20
_CID = r"[0-9a-f]{16}"
_CID_RE = re.compile(rf"^{_CID}$")
_NAME_RE = re.compile(rf"^(?:(?P<kind>[mjasqr])/(?P<cid>{_CID})"
                      rf"|u/(?P<ucid>{_CID})/(?P<useq>[1-9][0-9]{{0,17}})"
                      rf"|b/(?P<bcid>{_CID})/(?P<bseq>[1-9][0-9]{{0,17}})/(?P<bn>0|[1-9][0-9]{{0,8}}))$")


def member_name(cid: str) -> str:
    return f"m/{cid}"


def update_name(cid: str, seq: int) -> str:
    return f"u/{cid}/{seq}"


def blob_name(cid: str, seq: int, n: int) -> str:
    return f"b/{cid}/{seq}/{n}"


def ack_name(cid: str) -> str:
    return f"a/{cid}"


def snapshot_name(cid: str) -> str:
    return f"s/{cid}"


def request_name(cid: str) -> str:
    return f"q/{cid}"


def reservation_name(cid: str) -> str:
    return f"r/{cid}"


@dataclass
class RelayView:
    """One listing of the relay, parsed: the whole picture a cycle works from."""

    members: dict[str, ObjectInfo] = field(default_factory=dict)
    updates: dict[str, dict[int, ObjectInfo]] = field(default_factory=dict)
    blobs: dict[tuple[str, int], list[ObjectInfo]] = field(default_factory=dict)
    acks: dict[str, ObjectInfo] = field(default_factory=dict)
    snapshots: dict[str, ObjectInfo] = field(default_factory=dict)
    requests: dict[str, ObjectInfo] = field(default_factory=dict)
    reservations: dict[str, ObjectInfo] = field(default_factory=dict)
    header: ObjectInfo | None = None
    unknown: list[str] = field(default_factory=list)
    used: int = 0

    @classmethod
    def from_listing(cls, objects: Iterable[ObjectInfo]) -> "RelayView":
        view = cls()
        for info in objects:
            view.used += info.size
            if info.name == HEADER_NAME:
                view.header = info
                continue
            m = _NAME_RE.match(info.name)
            if not m:
                view.unknown.append(info.name)
            elif m["ucid"]:
                view.updates.setdefault(m["ucid"], {})[int(m["useq"])] = info
            elif m["bcid"]:
                view.blobs.setdefault((m["bcid"], int(m["bseq"])), []).append(info)
            else:
                table = {"m": view.members, "a": view.acks, "s": view.snapshots,
                         "q": view.requests, "r": view.reservations}.get(m["kind"])
                if table is None:
                    view.unknown.append(info.name)
                else:
                    table[m["cid"]] = info
        return view

    def pushers(self) -> set[str]:
        return set(self.updates) | set(self.snapshots)



class ObjectStore:
    """Reads and writes protocol objects through the cipher; validates what it reads."""

    def __init__(self, relay: Relay, cipher: Cipher):
        self.relay = relay
        self.cipher = cipher

    # -- small JSON objects (cards, acks, requests, reservations, header) --------------
    def put_json(self, name: str, value: Any, *, create_only: bool = False) -> int:
        data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        return self.relay.put(name, self.cipher.encrypt(name, io.BytesIO(data)), create_only=create_only)

    def get_json(self, name: str) -> Any:
        with self.relay.get(name) as raw:
            stream = self.cipher.decrypt(name, raw)
            data = read_exactly(stream, MAX_SMALL_OBJECT + 1)
        if len(data) > MAX_SMALL_OBJECT:
            raise IntegrityError(name, "object too large")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(name, f"not a valid object ({exc})") from exc

    def json_size(self, value: Any) -> int:
        return self.cipher.size_on_relay(len(json.dumps(value, sort_keys=True, separators=(",", ":"))))

    # -- updates and snapshots: a header followed by a body ------------------------------
    @staticmethod
    def encode_header(magic: bytes, header: dict) -> bytes:
        body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        return magic + struct.pack(">I", len(body)) + body

    def put_framed(self, name: str, head: bytes, body: Iterable[bytes | BinaryIO]) -> int:
        return self.relay.put(name, self.cipher.encrypt(name, ChainStream([head, *body])))

    def open_framed(self, name: str, magic: bytes) -> tuple[dict, bytes, BinaryIO]:
        """(header, header digest, stream positioned at the body). Caller closes the stream."""
        raw = self.relay.get(name)
        stream = self.cipher.decrypt(name, raw)
        try:
            lead = read_exactly(stream, len(magic) + 4)
            if len(lead) < len(magic) + 4 or lead[:len(magic)] != magic:
                raise IntegrityError(name, "not an escale object of this kind/version")
            (length,) = struct.unpack(">I", lead[len(magic):])
            if length > MAX_HEADER:
                raise IntegrityError(name, "header too large")
            body = read_exactly(stream, length)
            if len(body) != length:
                raise IntegrityError(name, "truncated header")
            try:
                header = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise IntegrityError(name, f"unreadable header ({exc})") from exc
            if not isinstance(header, dict):
                raise IntegrityError(name, "header is not an object")
            return header, hashlib.sha256(lead + body).digest(), stream
        except BaseException:
            stream.close()
            raise


# ---------------------------------------------------------------------------------------
# Update header: what a pusher publishes
# ---------------------------------------------------------------------------------------
INLINE, BLOB, NONE = "inline", "blob", "none"


@dataclass
class Item:
    """One entry of an update and where its content travels."""

    entry: Entry
    data: str = NONE       # INLINE (in the update body), BLOB (own object) or NONE
    blob: int | None = None
    supply: bool = False   # answers a request: only clients that asked apply it

    def to_dict(self) -> dict:
        d = {"e": self.entry.to_dict(), "d": self.data}
        if self.blob is not None:
            d["n"] = self.blob
        if self.supply:
            d["s"] = True
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Item":
        if not isinstance(d, dict):
            raise ValueError("item is not an object")
        item = cls(Entry.from_dict(d.get("e")), d.get("d", NONE), d.get("n"), bool(d.get("s", False)))
        if item.data not in (INLINE, BLOB, NONE):
            raise ValueError("bad data placement")
        if item.data == BLOB and not (isinstance(item.blob, int) and item.blob >= 0):
            raise ValueError("blob item without a blob number")
        if item.data != NONE and item.entry.kind != "file":
            raise ValueError("content attached to a non-file entry")
        return item


@dataclass
class UpdateHeader:
    client: str
    seq: int
    prev: str           # hex digest of the previous update's header ('' for seq 1)
    time: float
    pullers: list[str]  # members that pulled when this was published
    count: int | None   # 'puller count' in force, if set
    items: list[Item]
    deps: dict[str, int] = field(default_factory=dict)  # publisher's pull positions

    def to_dict(self) -> dict:
        return {"v": FORMAT_VERSION, "client": self.client, "seq": self.seq, "prev": self.prev,
                "time": self.time, "pullers": self.pullers, "count": self.count,
                "items": [i.to_dict() for i in self.items], "deps": self.deps}

    @classmethod
    def parse(cls, name: str, d: dict, cid: str, seq: int) -> "UpdateHeader":
        try:
            if d.get("v") != FORMAT_VERSION:
                raise ValueError(f"unsupported format version {d.get('v')!r}")
            h = cls(d["client"], d["seq"], d["prev"], float(d["time"]), list(d["pullers"]),
                    d.get("count"), [Item.from_dict(i) for i in d["items"]], parse_deps(d.get("deps", {})))
            if not all(isinstance(p, str) for p in h.pullers) or not isinstance(h.prev, str):
                raise ValueError("bad puller list or chain link")
            if h.count is not None and not (isinstance(h.count, int) and h.count >= 1):
                raise ValueError("bad puller count")
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(name, f"malformed update header: {exc}") from exc
        if h.client != cid or h.seq != seq:
            raise IntegrityError(name, f"header says client {h.client[:16]!r} seq {h.seq!r}; "
                                       "the object was moved or replayed under another name")
        return h


def parse_deps(d: Any) -> dict[str, int]:
    """Pull positions ``{client id: seq}`` as found in an update or snapshot header."""
    if not isinstance(d, dict) or not all(
            isinstance(k, str) and _CID_RE.match(k) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in d.items()):
        raise ValueError("bad dependency positions")
    return dict(d)


@dataclass
class Snapshot:
    client: str
    seq: int
    digest: str
    deps: dict[str, int]
    entries: list[Entry]

    def to_dict(self) -> dict:
        return {"v": FORMAT_VERSION, "client": self.client, "seq": self.seq, "digest": self.digest,
                "deps": self.deps, "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def parse(cls, name: str, d: dict, cid: str) -> "Snapshot":
        try:
            if d.get("v") != FORMAT_VERSION:
                raise ValueError(f"unsupported format version {d.get('v')!r}")
            snap = cls(d["client"], int(d["seq"]), str(d["digest"]), parse_deps(d.get("deps", {})),
                       [Entry.from_dict(e) for e in d["entries"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(name, f"malformed snapshot: {exc}") from exc
        if snap.client != cid:
            raise IntegrityError(name, "snapshot of another client (moved or replayed under another name)")
        return snap


def list_relay(relay: Relay) -> RelayView:
    try:
        return RelayView.from_listing(relay.list())
    except RelayError:
        raise
    except OSError as exc:
        raise RelayError(f"cannot list relay {relay.address}: {exc}") from exc
