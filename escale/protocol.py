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
    n/<cid>                  notice: the repository moved to another relay (escalectl migrate)

Length: the layout, every object format and the signed framing are one contract
with docs/format.md; kept together so a format change is read and reviewed in one place.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .encryption import Cipher
from .errors import IntegrityError, RelayError
from .index import Entry
from .relay.base import ObjectInfo, Relay
from .stream import BLOCK, ChainStream, read_exactly

log = logging.getLogger(__name__)

#: 2: a random repository id in the header, bound into every key and signature
FORMAT_VERSION = 2
HEADER_NAME = "escale.json"
UPDATE_MAGIC = b"ESCU\x01"
SNAPSHOT_MAGIC = b"ESCS\x02"  # 2: entries streamed as JSON lines after the header
#: a header larger than this is refused before it is read (its length is not signed, so
#: this bounds what a forged object can make a client hold in memory); publishers cut
#: updates well below it (see sync.push.MAX_UPDATE_HEADER)
MAX_HEADER = 64 << 20
MAX_SMALL_OBJECT = 64 << 20
#: a member card larger than this is refused before its bytes are parsed
MAX_CARD = 64 << 10
#: an update or snapshot larger than this is refused (maxpagesize caps what we write)
MAX_OBJECT = 64 << 30
SMALL_MAGIC = b"ESCJ\x01"
SIGNATURE = 64
#: member cards are padded to a multiple of this (with padding on), so a card's size
#: does not tell the length of its client's name
CARD_PAD = 1024
_CID = r"[0-9a-f]{16}"
_CID_RE = re.compile(rf"^{_CID}$")
_NAME_RE = re.compile(rf"^(?:(?P<kind>[masqrn])/(?P<cid>{_CID})"
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


def notice_name(cid: str) -> str:
    return f"n/{cid}"


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
    #: notices of a move to another relay (escalectl migrate)
    notices: dict[str, ObjectInfo] = field(default_factory=dict)
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
                         "q": view.requests, "r": view.reservations, "n": view.notices}[m["kind"]]
                table[m["cid"]] = info
        return view

    def pushers(self) -> set[str]:
        return set(self.updates) | set(self.snapshots)



def signer_of(name: str) -> str | None:
    """The client id in an object's name: the only client allowed to write it."""
    m = _NAME_RE.match(name)
    if not m:
        return None
    return m["cid"] or m["ucid"] or m["bcid"]


def _signed_message(repository: str, name: str, body: bytes) -> bytes:
    """What a signature covers: the repository id (an object copied from another
    repository is refused even with the same key), the object's name and its bytes."""
    return b"escale/v2/signature\x00" + repository.encode() + b"\x00" + name.encode() + b"\x00" + body


class ObjectStore:
    """Reads and writes protocol objects through the cipher; signs what it writes and
    verifies what it reads.

    Every object but the repository header is signed (Ed25519) by the client named in
    it; ``keys(cid)`` gives the public key pinned for a client (from its member card).
    """

    def __init__(self, relay: Relay, cipher: Cipher, signer: Ed25519PrivateKey | None = None,
                 keys: Callable[[str], bytes | None] = lambda cid: None, repository: str = ""):
        self.relay = relay
        self.cipher = cipher
        self.signer = signer
        self.keys = keys
        #: the repository id from the header (bound into every signature)
        self.repository = repository

    def _put(self, name: str, plaintext: bytes, create_only: bool = False) -> int:
        pad_to = CARD_PAD if name.startswith("m/") else 0
        return self.relay.put(name, self.cipher.encrypt(name, io.BytesIO(plaintext), len(plaintext), pad_to),
                              create_only=create_only)

    def _sign(self, name: str, body: bytes) -> bytes:
        if self.signer is None:
            raise RuntimeError("no signing key")
        if not self.repository:
            raise RuntimeError("no repository id yet: the header must be read before anything is signed")
        return self.signer.sign(_signed_message(self.repository, name, body))

    def _verify(self, name: str, body: bytes, signature: bytes, key: bytes | None = None) -> None:
        cid = signer_of(name)
        key = key if key is not None else (self.keys(cid) if cid else None)
        if key is None:
            raise IntegrityError(name, "signed by a client with no member card here (unknown writer)")
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, _signed_message(self.repository, name, body))
        except (InvalidSignature, ValueError):
            raise IntegrityError(name, f"bad signature: not written by client {cid} for this repository "
                                       "(forged, copied from another repository, or another client posing "
                                       "as it)") from None

    # -- the repository header: plain JSON, readable before any key exists --------------
    def put_header(self, value: Any) -> int:
        data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        return self.relay.put(HEADER_NAME, io.BytesIO(data), create_only=True)

    def get_header(self) -> Any:
        with self.relay.get(HEADER_NAME) as raw:
            data = read_exactly(raw, MAX_SMALL_OBJECT + 1)
        return _load_json(HEADER_NAME, data)

    # -- small JSON objects (cards, acks, requests, reservations): signed envelope -----
    def put_json(self, name: str, value: Any, *, create_only: bool = False) -> int:
        body = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        plaintext = SMALL_MAGIC + struct.pack(">I", len(body)) + body + self._sign(name, body)
        return self._put(name, plaintext, create_only)

    def get_json(self, name: str, *, self_signed: str | None = None) -> Any:
        """Read, decrypt and verify. ``self_signed``: the field of the object holding the
        key that signed it (a member card carries its own public key)."""
        with self.relay.get(name) as raw:
            stream = self.cipher.decrypt(name, raw)
            data = read_exactly(stream, MAX_SMALL_OBJECT + 1)
        if len(data) > MAX_SMALL_OBJECT:
            raise IntegrityError(name, "object too large")
        head = len(SMALL_MAGIC) + 4
        if len(data) < head + SIGNATURE or data[:len(SMALL_MAGIC)] != SMALL_MAGIC:
            raise IntegrityError(name, "not an escale object of this kind/version")
        (length,) = struct.unpack(">I", data[len(SMALL_MAGIC):head])
        if len(data) != head + length + SIGNATURE:
            raise IntegrityError(name, "truncated or padded envelope")
        body, signature = data[head:head + length], data[head + length:]
        # the signature is checked on the bytes, before any parsing: a forged object
        # never reaches the JSON parser. A self-signed card's key is found in its bytes
        # and must be the one the parsed card holds.
        key = None
        if self_signed is not None:
            if len(body) > MAX_CARD:
                raise IntegrityError(name, f"member card too large ({len(body)} bytes)")
            found = re.findall(rb'"' + re.escape(self_signed.encode()) + rb'":"([0-9a-f]{64})"', body)
            if len(found) != 1:
                raise IntegrityError(name, "member card without a valid public key")
            key = bytes.fromhex(found[0].decode())
        self._verify(name, body, signature, key)
        value = _load_json(name, body)
        if self_signed is not None and not (isinstance(value, dict) and value.get(self_signed) == key.hex()):
            raise IntegrityError(name, "member card without a valid public key")
        return value

    def json_size(self, value: Any) -> int:
        body = len(json.dumps(value, sort_keys=True, separators=(",", ":")))
        return self.cipher.size_on_relay(len(SMALL_MAGIC) + 4 + body + SIGNATURE)

    # -- updates and snapshots: a signed header followed by a body ----------------------
    @staticmethod
    def encode_header(magic: bytes, header: dict) -> bytes:
        body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        return magic + struct.pack(">I", len(body)) + body

    def put_framed(self, name: str, head: bytes, body: Iterable[bytes | BinaryIO], body_size: int) -> int:
        signature = self._sign(name, head)
        size = len(head) + SIGNATURE + body_size
        return self.relay.put(name, self.cipher.encrypt(name, ChainStream([head, signature, *body]), size),
                              size=self.cipher.size_on_relay(size))

    def framed_size(self, head_size: int, body_size: int) -> int:
        return self.cipher.size_on_relay(head_size + SIGNATURE + body_size)

    def open_framed(self, name: str, magic: bytes) -> tuple[dict, bytes, BinaryIO]:
        """(header, header digest, stream positioned at the body). Caller closes the stream.

        The header's signature is checked on its bytes before they are parsed.
        """
        header, digest, _size, stream = self.open_frame(name, magic)
        return header, digest, stream

    def open_frame(self, name: str, magic: bytes) -> tuple[dict, bytes, int, BinaryIO]:
        """As :meth:`open_framed`, with the byte size of the signed head (magic, length,
        JSON) as well: with the body size the header announces it gives the object's exact
        size on the relay (:meth:`framed_size`)."""
        stream = self.cipher.decrypt(name, self.relay.get(name))
        try:
            header, digest, size = self._read_header(name, magic, stream)
            return header, digest, size, stream
        except BaseException:
            stream.close()
            raise

    def fetch_framed(self, name: str, magic: bytes, body: Callable[[dict], tuple[int, str | None]],
                     spool_dir: str | os.PathLike, stop: Callable[[], None] = lambda: None
                     ) -> tuple[dict, bytes, BinaryIO]:
        """(header, header digest, spooled body): the whole object checked before any of
        it is used, without trusting a single unsigned byte for a size.

        The header is read (at most :data:`MAX_HEADER` bytes) and its signature checked;
        ``body(header)`` then says how many body bytes the *signed* header announces (and
        optionally their SHA-256); exactly that many are spooled to a temporary file, and
        the object must end there (which also authenticates an encrypted object's last
        chunk). A relay cannot make a client store more than a member declared.
        ``stop`` is called between blocks (it raises to interrupt a long copy).
        """
        with self.cipher.decrypt(name, self.relay.get(name)) as stream:
            header, digest, _head = self._read_header(name, magic, stream)
            size, sha256 = body(header)
            if not (isinstance(size, int) and 0 <= size <= MAX_OBJECT):
                raise IntegrityError(name, f"announces a body of {size!r} bytes")
            hasher = hashlib.sha256() if sha256 is not None else None
            spool = tempfile.TemporaryFile(dir=spool_dir, prefix="object-")
            try:
                done = 0
                while done < size:
                    stop()
                    data = stream.read(min(BLOCK, size - done))
                    if not data:
                        raise IntegrityError(name, f"truncated: {done} of the {size} body bytes its header "
                                                   "announces")
                    if hasher is not None:
                        hasher.update(data)
                    spool.write(data)
                    done += len(data)
                if stream.read(1):
                    raise IntegrityError(name, f"longer than the {size} body bytes its header announces")
                if hasher is not None and hasher.hexdigest() != sha256:
                    raise IntegrityError(name, "body does not match the digest its header announces")
                spool.seek(0)
            except BaseException:
                spool.close()
                raise
        return header, digest, spool

    def _read_header(self, name: str, magic: bytes, stream: BinaryIO) -> tuple[dict, bytes, int]:
        lead = read_exactly(stream, len(magic) + 4)
        if len(lead) < len(magic) + 4 or lead[:len(magic)] != magic:
            raise IntegrityError(name, "not an escale object of this kind/version")
        (length,) = struct.unpack(">I", lead[len(magic):])
        if length > MAX_HEADER:
            raise IntegrityError(name, f"header of {length} bytes (the limit is {MAX_HEADER})")
        body = read_exactly(stream, length)
        signature = read_exactly(stream, SIGNATURE)
        if len(body) != length or len(signature) != SIGNATURE:
            raise IntegrityError(name, "truncated header")
        self._verify(name, lead + body, signature)
        header = _load_json(name, body)
        if not isinstance(header, dict):
            raise IntegrityError(name, "header is not an object")
        return header, hashlib.sha256(lead + body).digest(), len(lead) + length


    # -- the documents, read and checked the one way every reader uses -------------------
    def update_header(self, name: str, cid: str, seq: int) -> tuple["UpdateHeader", bytes, int]:
        """An update's signed header only: (header, frame digest, expected relay size).
        The body is not read (``escalectl check`` without ``--read-data``)."""
        d, digest, head, stream = self.open_frame(name, UPDATE_MAGIC)
        stream.close()
        h = UpdateHeader.parse(name, d, cid, seq)
        return h, digest, self.framed_size(head, h.inline_size())

    def read_update(self, name: str, cid: str, seq: int, spool_dir: str | os.PathLike,
                    stop: Callable[[], None] = lambda: None) -> tuple["UpdateHeader", bytes, BinaryIO]:
        """A whole update, verified (signature, every AEAD chunk, exact length) and its
        body spooled: (header, frame digest, body). Caller closes the body."""
        parsed: list[UpdateHeader] = []

        def body(d: dict) -> tuple[int, None]:
            parsed.append(UpdateHeader.parse(name, d, cid, seq))
            return parsed[0].inline_size(), None

        _d, digest, spool = self.fetch_framed(name, UPDATE_MAGIC, body, spool_dir, stop)
        return parsed[0], digest, spool

    def snapshot_header(self, name: str, cid: str) -> tuple["Snapshot", int]:
        """A snapshot's signed header only, and the object's expected relay size."""
        d, _digest, head, stream = self.open_frame(name, SNAPSHOT_MAGIC)
        stream.close()
        snap = Snapshot.parse(name, d, cid)
        return snap, self.framed_size(head, snap.size)

    def read_snapshot(self, name: str, cid: str, spool_dir: str | os.PathLike,
                      stop: Callable[[], None] = lambda: None) -> "Snapshot":
        """A whole snapshot, its body verified (size and SHA-256 from the signed header)
        and spooled; its entries are checked as they are read (:meth:`Snapshot.entries`)."""
        parsed: list[Snapshot] = []

        def body(d: dict) -> tuple[int, str]:
            parsed.append(Snapshot.parse(name, d, cid))
            return parsed[0].size, parsed[0].sha256

        _d, _digest, spool = self.fetch_framed(name, SNAPSHOT_MAGIC, body, spool_dir, stop)
        parsed[0].body = spool
        return parsed[0]


def parse_acks(name: str, value: Any) -> dict[str, tuple[int, str]]:
    """An acknowledgement document: ``{pusher: (seq, frame digest hex)}``."""
    try:
        if not isinstance(value, dict) or value.get("v") != FORMAT_VERSION:
            raise ValueError(f"unsupported format version {value.get('v') if isinstance(value, dict) else value!r:.20}")
        acks = value["acks"]
        if not isinstance(acks, dict):
            raise ValueError("acks is not an object")
        out = {}
        for pusher, pos in acks.items():
            if not (isinstance(pusher, str) and _CID_RE.match(pusher) and isinstance(pos, list) and len(pos) == 2
                    and isinstance(pos[0], int) and not isinstance(pos[0], bool) and pos[0] >= 0
                    and isinstance(pos[1], str)):
                raise ValueError(f"bad position for {str(pusher)[:16]!r}")
            out[pusher] = (pos[0], pos[1])
        if not isinstance(value.get("time", 0), (int, float)):
            raise ValueError("bad time")
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(name, f"malformed acknowledgements: {exc}") from None
    return out


def parse_request(name: str, value: Any) -> tuple[int, list[dict]]:
    """A request document: (counter, wants), each want ``{path, hash, supplier}``."""
    try:
        if not isinstance(value, dict) or value.get("v") != FORMAT_VERSION:
            raise ValueError("unsupported format version")
        n, wants = value["n"], value["wants"]
        if not isinstance(n, int) or isinstance(n, bool) or not isinstance(wants, list):
            raise ValueError("bad counter or list of wants")
        for w in wants:
            if not (isinstance(w, dict) and isinstance(w.get("path"), str) and isinstance(w.get("hash"), str)
                    and isinstance(w.get("supplier"), str) and _CID_RE.match(w["supplier"])):
                raise ValueError("bad want")
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(name, f"malformed request: {exc}") from None
    return n, wants


@dataclass(frozen=True)
class Notice:
    """The repository moved: its objects are on ``relay`` now (an address without
    credentials), as of ``time``. Signed by the member who moved it."""

    relay: str
    time: float
    repository: str

    def to_dict(self) -> dict:
        return {"v": FORMAT_VERSION, "relay": self.relay, "time": self.time, "id": self.repository}


def parse_notice(name: str, value: Any, repository: str) -> Notice:
    """A move notice ``n/<cid>``: ``{"v", "relay", "time", "id"}``; its id must be this
    repository's (a notice copied from another repository is refused)."""
    try:
        if not isinstance(value, dict) or value.get("v") != FORMAT_VERSION:
            raise ValueError("unsupported format version")
        notice = Notice(value["relay"], float(value["time"]), value["id"])
        if not isinstance(notice.relay, str) or not notice.relay or len(notice.relay) > 4096 \
                or any(ord(c) < 32 for c in notice.relay):
            raise ValueError("bad relay address")
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(name, f"malformed notice: {exc}") from None
    if notice.repository != repository:
        raise IntegrityError(name, "a notice of another repository")
    return notice


def parse_reservation(name: str, value: Any) -> tuple[int, float]:
    """A quota reservation: (bytes, time)."""
    try:
        size, when = int(value["bytes"]), float(value["time"])
        if size < 0:
            raise ValueError("negative size")
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(name, f"malformed reservation: {exc}") from None
    return size, when


def _load_json(name: str, data: bytes) -> Any:
    """Parse an object's JSON; nesting deeper than the interpreter's recursion limit
    (about 1,000 levels; escale's own objects nest 5 deep) is a bad object, named."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(name, f"not a valid object ({exc})") from exc
    except RecursionError:
        raise IntegrityError(name, "not a valid object (JSON nested too deeply)") from None


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
    #: (publisher's bookkeeping, not written) (client, request counter) of the requests this answers
    requesters: list[tuple[str, int]] = field(default_factory=list, compare=False, repr=False)

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
    #: versions the publisher received but did not apply: path -> (author, seq)
    unseen: dict[str, tuple[str, int]] = field(default_factory=dict)

    def inline_size(self) -> int:
        """The body's size: the inline contents, in item order."""
        return sum(i.entry.size for i in self.items if i.data == INLINE)

    def to_dict(self) -> dict:
        return {"v": FORMAT_VERSION, "client": self.client, "seq": self.seq, "prev": self.prev,
                "time": self.time, "pullers": self.pullers, "count": self.count,
                "items": [i.to_dict() for i in self.items], "deps": self.deps, **unseen_dict(self.unseen)}

    @classmethod
    def parse(cls, name: str, d: dict, cid: str, seq: int) -> "UpdateHeader":
        try:
            if d.get("v") != FORMAT_VERSION:
                raise ValueError(f"unsupported format version {d.get('v')!r}")
            h = cls(d["client"], d["seq"], d["prev"], float(d["time"]), list(d["pullers"]),
                    d.get("count"), [Item.from_dict(i) for i in d["items"]], parse_deps(d.get("deps", {})),
                    parse_unseen(d.get("unseen", [])))
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


def unseen_dict(unseen: dict[str, tuple[str, int]]) -> dict:
    """``{"unseen": [[path, author, seq], ...]}`` for a header, or nothing if none."""
    return {"unseen": [[p, a, s] for p, (a, s) in sorted(unseen.items())]} if unseen else {}


def parse_unseen(d: Any) -> dict[str, tuple[str, int]]:
    """Versions a publisher held back, as found in an update or snapshot header."""
    if not isinstance(d, list) or not all(
            isinstance(v, list) and len(v) == 3 and isinstance(v[0], str) and isinstance(v[1], str)
            and _CID_RE.match(v[1]) and isinstance(v[2], int) and not isinstance(v[2], bool) and v[2] >= 1
            for v in d):
        raise ValueError("bad list of versions not applied")
    return {p: (a, s) for p, a, s in d}


#: one snapshot entry line longer than this is malformed (a path is at most 4 KiB)
MAX_ENTRY_LINE = 64 << 10


@dataclass
class Snapshot:
    """A pusher's whole index at a seq: a small signed header (its seq, chain digest and
    pull positions, and the entry count, byte size and SHA-256 of the body) followed by
    the entries as JSON lines, sorted by path. Readers stream the body: memory does not
    grow with the number of entries."""

    client: str
    seq: int
    digest: str
    deps: dict[str, int]
    count: int = 0
    size: int = 0
    sha256: str = ""
    #: versions the publisher received but did not apply: path -> (author, seq)
    unseen: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: the spooled, verified body (reader side)
    body: BinaryIO | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {"v": FORMAT_VERSION, "client": self.client, "seq": self.seq, "digest": self.digest,
                "deps": self.deps, "count": self.count, "size": self.size, "sha256": self.sha256,
                **unseen_dict(self.unseen)}

    @staticmethod
    def encode_entries(entries: Iterable[Entry], out: BinaryIO) -> tuple[int, int, str]:
        """Write entries (sorted by path) as the body; (count, size, sha256)."""
        return Snapshot.encode_lines((e.to_json() for e in entries), out)

    @staticmethod
    def encode_lines(lines: Iterable[str], out: BinaryIO) -> tuple[int, int, str]:
        """Write entries given as their :meth:`Entry.to_json` texts (sorted by path) as the
        body; (count, size, sha256)."""
        h, count, size = hashlib.sha256(), 0, 0
        for text in lines:
            line = text.encode() + b"\n"
            h.update(line)
            out.write(line)
            count += 1
            size += len(line)
        return count, size, h.hexdigest()

    @classmethod
    def parse(cls, name: str, d: dict, cid: str) -> "Snapshot":
        try:
            if d.get("v") != FORMAT_VERSION:
                raise ValueError(f"unsupported format version {d.get('v')!r}")
            snap = cls(d["client"], d["seq"], str(d["digest"]), parse_deps(d.get("deps", {})), d["count"],
                       d["size"], str(d["sha256"]), parse_unseen(d.get("unseen", [])))
            if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                       for x in (snap.seq, snap.count, snap.size)):
                raise ValueError("bad seq, count or size")
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(name, f"malformed snapshot: {exc}") from exc
        if snap.client != cid:
            raise IntegrityError(name, "snapshot of another client (moved or replayed under another name)")
        return snap

    def entries(self, name: str, stop: Callable[[], None] = lambda: None) -> Iterable[Entry]:
        """The body's entries, read one line at a time from the start; a malformed line,
        a path out of order or a count that differs from the header's is an IntegrityError."""
        assert self.body is not None
        self.body.seek(0)
        last, n = None, 0
        while line := self.body.readline(MAX_ENTRY_LINE + 1):
            if n % 4096 == 0:
                stop()
            if len(line) > MAX_ENTRY_LINE or not line.endswith(b"\n"):
                raise IntegrityError(name, f"malformed snapshot: entry {n + 1} too long or cut")
            try:
                e = Entry.from_dict(_load_json(name, line))
            except ValueError as exc:
                raise IntegrityError(name, f"malformed snapshot: entry {n + 1}: {exc}") from exc
            if last is not None and e.path <= last:
                raise IntegrityError(name, f"malformed snapshot: entry {n + 1} out of path order")
            last, n = e.path, n + 1
            yield e
        if n != self.count:
            raise IntegrityError(name, f"malformed snapshot: {n} entries, its header says {self.count}")

    def close(self) -> None:
        if self.body is not None:
            self.body.close()


def list_relay(relay: Relay) -> RelayView:
    try:
        return RelayView.from_listing(relay.list())
    except RelayError:
        raise
    except OSError as exc:
        raise RelayError(f"cannot list relay {relay.address}: {exc}") from exc
