"""``escalectl check``: verify every object on a repository's relay (as ``restic check``).

Reads the relay without writing to it, with the reading functions every client uses
(:class:`escale.protocol.ObjectStore` and the parsers next to it), so a problem it
reports is exactly what a client would refuse. It checks:

- the repository header (format, id, key check against this client's passphrase, and
  the header this client pinned);
- every member card (signature with the key it carries; that key equals the one this
  client pinned) and every object's writer (a member with a card);
- every update's and snapshot's signed header, its fields, and its exact size on the
  relay (a truncated or extended object is found without reading it); the chain of
  each pusher's updates (``prev`` links, no gap not covered by its snapshot); the
  large-file objects each update names (present, exact size);
- acknowledgements (well formed, no position past what its pusher published, the same
  digest as the update it names), requests, reservations and relay-move notices
  (signed, well formed).

With ``read_data`` every object is read whole: every AEAD chunk, every inline file's
and large file's digest, every snapshot entry.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from typing import Callable

from .errors import IntegrityError, RelayObjectMissing
from .protocol import (BLOB, INLINE, ObjectStore, RelayView, Snapshot, UpdateHeader, ack_name, blob_name, parse_acks,
                       parse_notice, parse_request, parse_reservation, signer_of, update_name)
from .stream import copy_exactly

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    object: str
    message: str

    def __str__(self) -> str:
        return f"relay object {self.object}: {self.message}"


@dataclass
class CheckReport:
    repository: str
    relay: str
    objects: int = 0
    #: bytes of object data read (headers, small documents; everything with read_data)
    read: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: facts worth knowing that are not damage (an interrupted upload, a member not met yet)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Checker:
    def __init__(self, store: ObjectStore, view: RelayView, pinned: Callable[[str], bytes | None],
                 algorithm: str, read_data: bool, spool_dir: str, report: CheckReport,
                 stop: Callable[[], None]):
        self.store, self.view, self.pinned = store, view, pinned
        self.algorithm, self.read_data, self.spool_dir = algorithm, read_data, spool_dir
        self.report, self.stop = report, stop
        self.keys: dict[str, bytes] = {}
        self._blobs = {i.name: i for infos in view.blobs.values() for i in infos}
        self.digests: dict[tuple[str, int], str] = {}  # (pusher, seq) -> frame digest hex
        self.latest: dict[str, int] = {}  # pusher -> highest seq it published (update or snapshot)

    def problem(self, name: str, message: str) -> None:
        self.report.problems.append(Problem(name, message))

    def guarded(self, name: str, what: Callable[[], object]) -> object:
        """Run one reading; an integrity failure or a vanished object is a problem named."""
        self.stop()
        try:
            return what()
        except IntegrityError as exc:
            self.report.problems.append(Problem(exc.object, str(exc).removeprefix(f"relay object {exc.object}: ")))
        except RelayObjectMissing:
            self.problem(name, "listed but cannot be read (deleted meanwhile?)")
        return None

    # -- members --------------------------------------------------------------------------
    def cards(self) -> None:
        for cid, info in sorted(self.view.members.items()):
            self.report.objects += 1
            card = self.guarded(info.name, lambda n=info.name: self.store.get_json(n, self_signed="key"))
            if card is None:
                continue
            key = bytes.fromhex(card["key"])
            if not isinstance(card.get("name"), str):
                self.problem(info.name, "member card without a client name")
            pinned = self.pinned(cid)
            if pinned is not None and pinned != key:
                self.problem(info.name, "carries another signing key than the one this client pinned for it "
                                        "(someone posing as that member?)")
                key = pinned
            elif pinned is None:
                self.report.notes.append(f"{info.name}: member not met by this client yet (its card's key is used)")
            self.keys[cid] = key
        for cid in sorted(set(self.view.acks) | set(self.view.requests) | set(self.view.reservations)
                          | set(self.view.updates) | set(self.view.snapshots) | {c for c, _s in self.view.blobs}):
            if cid not in self.keys and self.pinned(cid) is not None:
                self.keys[cid] = self.pinned(cid)  # a member whose card is gone: still verifiable
                self.report.notes.append(f"m/{cid}: no member card (forgotten?); its objects are checked with "
                                         "the key pinned here")

    def known(self, name: str) -> bool:
        cid = signer_of(name)
        if cid in self.keys:
            return True
        self.problem(name, f"written by client {cid}, which has no member card (and no key pinned here)")
        return False

    # -- small documents -----------------------------------------------------------------
    def small(self) -> None:
        acks = {}
        notice = lambda n, v: parse_notice(n, v, self.store.repository)  # noqa: E731
        for table, parse in ((self.view.acks, parse_acks), (self.view.requests, parse_request),
                             (self.view.reservations, parse_reservation), (self.view.notices, notice)):
            for cid, info in sorted(table.items()):
                self.report.objects += 1
                if not self.known(info.name):
                    continue
                value = self.guarded(info.name, lambda n=info.name, p=parse: p(n, self.store.get_json(n)))
                self.report.read += info.size
                if value is not None and table is self.view.acks:
                    acks[cid] = value
        for cid, positions in sorted(acks.items()):
            name = ack_name(cid)
            for pusher, (seq, digest) in sorted(positions.items()):
                latest = self.latest.get(pusher)
                if latest is not None and seq > latest:
                    self.problem(name, f"acknowledges update {seq} of client {pusher}, which published only "
                                       f"up to {latest} (a rolled-back relay, or a forged position)")
                ours = self.digests.get((pusher, seq))
                if ours is not None and ours != digest:
                    self.problem(name, f"acknowledges {update_name(pusher, seq)} with another digest than the "
                                       f"update on the relay ({digest[:12]}…, on the relay {ours[:12]}…): a fork "
                                       "of that client's history")

    # -- updates, blobs, snapshots -------------------------------------------------------
    def snapshots(self) -> dict[str, Snapshot]:
        out = {}
        for cid, info in sorted(self.view.snapshots.items()):
            self.report.objects += 1
            if not self.known(info.name):
                continue
            snap = self.guarded(info.name, lambda n=info.name, c=cid: self._snapshot(n, c, info.size))
            if snap is not None:
                out[cid] = snap
                self.latest[cid] = max(self.latest.get(cid, 0), snap.seq)
                if snap.seq:
                    self.digests.setdefault((cid, snap.seq), snap.digest)
        return out

    def _snapshot(self, name: str, cid: str, size: int) -> Snapshot:
        snap, expected = self.store.snapshot_header(name, cid)
        self._size(name, size, expected)
        if self.read_data:
            full = self.store.read_snapshot(name, cid, self.spool_dir, self.stop)
            try:
                for _ in full.entries(name, self.stop):
                    pass
            finally:
                full.close()
            self.report.read += size
        return snap

    def _size(self, name: str, listed: int, expected: int) -> None:
        if listed != expected:
            raise IntegrityError(name, f"{listed} bytes on the relay, its signed header makes it {expected} bytes "
                                       f"({'truncated' if listed < expected else 'extended'})")

    def updates(self, snaps: dict[str, Snapshot]) -> None:
        referenced: set[str] = set()
        for cid in sorted(self.view.updates):
            seqs = sorted(self.view.updates[cid])
            known = all(self.known(update_name(cid, s)) for s in seqs[:1])
            headers: dict[int, tuple[UpdateHeader, str]] = {}
            for seq in seqs:
                info = self.view.updates[cid][seq]
                self.report.objects += 1
                if not known:
                    continue
                got = self.guarded(info.name, lambda n=info.name, s=seq, c=cid: self._update(n, c, s, info.size))
                if got is not None:
                    headers[seq] = got
                    self.digests[(cid, seq)] = got[1]
                    referenced.update(blob_name(cid, seq, i.blob) for i in got[0].items if i.data == BLOB)
            if known and seqs:
                self.latest[cid] = max(self.latest.get(cid, 0), seqs[-1])
                self._chain(cid, seqs, headers, snaps.get(cid))
        for (cid, seq), infos in sorted(self.view.blobs.items()):
            for info in infos:
                self.report.objects += 1
                if cid not in self.keys:
                    self.known(info.name)
                elif info.name not in referenced and seq not in self.view.updates.get(cid, {}):
                    self.report.notes.append(f"{info.name}: large file of no update on the relay (an upload "
                                             "in progress or interrupted; its writer removes it)")
                elif info.name not in referenced:
                    self.problem(info.name, f"named by no item of {update_name(cid, seq)}")

    def _update(self, name: str, cid: str, seq: int, size: int) -> tuple[UpdateHeader, str]:
        h, digest, expected = self.store.update_header(name, cid, seq)
        self._size(name, size, expected)
        for item in h.items:
            if item.data == BLOB:
                self._blob(blob_name(cid, seq, item.blob), item.entry.size, item.entry.hash)
        if self.read_data:  # every chunk, the exact length, every inline file's digest
            def read() -> None:
                full, _digest, body = self.store.read_update(name, cid, seq, self.spool_dir, self.stop)
                try:
                    self._inline(name, full, body)
                finally:
                    body.close()
            self.guarded(name, read)
            self.report.read += size
        return h, digest.hex()

    def _inline(self, name: str, h: UpdateHeader, body) -> None:
        for item in h.items:
            if item.data != INLINE:
                continue
            hasher = hashlib.new(self.algorithm)
            copy_exactly(body, None, item.entry.size, hasher)
            if hasher.hexdigest() != item.entry.hash:
                self.problem(name, f"content of {item.entry.path!r} does not match its digest")

    def _blob(self, name: str, size: int, digest: str | None) -> None:
        listed = self._blobs.get(name)
        if listed is None:
            self.problem(name, "missing: its update names it (the file's content is lost with it; "
                               "receivers ask its writer again)")
            return
        expected = self.store.cipher.size_on_relay(size)
        if listed.size != expected:
            self.problem(name, f"{listed.size} bytes on the relay, the file it holds makes it {expected} bytes "
                               f"({'truncated' if listed.size < expected else 'extended'})")
            return
        if self.read_data:
            def read() -> None:
                with self.store.cipher.decrypt(name, self.store.relay.get(name)) as stream:
                    hasher = hashlib.new(self.algorithm)
                    n = copy_exactly(stream, None, size + 1, hasher)
                if n != size or hasher.hexdigest() != digest:
                    raise IntegrityError(name, "content does not match the digest its update gives")
            self.guarded(name, read)
            self.report.read += listed.size

    def _chain(self, cid: str, seqs: list[int], headers: dict[int, tuple[UpdateHeader, str]],
               snap: Snapshot | None) -> None:
        """Every seq after the snapshot is on the relay, and each update follows the one
        before it (its ``prev`` is that update's frame digest)."""
        base = snap.seq if snap is not None else 0
        have = set(seqs)
        missing = [s for s in range(base + 1, seqs[-1]) if s not in have]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            self.problem(update_name(cid, missing[0]), f"missing: a gap in client {cid}'s updates not covered by "
                                                        f"its snapshot (at {base}){more}")
        for seq in seqs:
            if seq not in headers:
                continue
            h = headers[seq][0]
            if seq == 1:
                prev = ""
            elif seq - 1 in headers:
                prev = headers[seq - 1][1]
            elif snap is not None and snap.seq == seq - 1:
                prev = snap.digest
            else:
                continue  # the update before it was collected: its digest is not known here
            if h.prev != prev:
                self.problem(update_name(cid, seq), f"does not follow {update_name(cid, seq - 1) if seq > 1 else 'the start'}"
                                                    " (its chain link differs): a fork or a replayed update")

    def run(self) -> None:
        for name in self.view.unknown:
            self.report.objects += 1
            self.problem(name, "not an escale object name (left there by something else)")
        self.cards()
        snaps = self.snapshots()
        self.updates(snaps)
        self.small()


def check(manager, *, read_data: bool = False) -> CheckReport:
    """Verify every object on the relay of ``manager`` (an :class:`escale.manager.Manager`,
    not running), read-only; safe while a daemon syncs the same repository. Every problem
    is in the report, named; ``CheckReport.ok`` is False if there is any."""
    report = CheckReport(manager.name, manager.relay.address)
    try:
        with manager.inspecting() as view:
            report.objects += 1  # the header, checked by opening the repository
            store = ObjectStore(manager.relay, manager.cipher, None, lambda cid: None, manager.repository_id)
            with tempfile.TemporaryDirectory(prefix="escale-check-") as spool:
                checker = _Checker(store, view, manager.state.pinned, manager.algorithm, read_data, spool, report,
                                   manager.check_stop)
                store.keys = checker.keys.get
                checker.run()
    except IntegrityError as exc:
        report.problems.append(Problem(exc.object, str(exc).removeprefix(f"relay object {exc.object}: ")))
    for p in report.problems:
        log.debug("%s: %s", manager.name, p)
    return report

