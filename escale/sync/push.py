"""Push: publish local changes (and contents other members asked for) as updates.

A scan finds what changed since the last sync; deletions beyond ``max delete`` are
held back until confirmed. Items are cut into batches (content size, header size,
room under the quota); each batch becomes one update: big files as their own blob
objects, small ones inline in the update's body, spooled to the outbox and sealed
before the update object is written, so an interrupted publication is finished with
exactly the same bytes — or rolled back if it never left (``recover_outbox``).
A scan that finds many new files publishes them as it goes (``_stream``), so the first
sync of a million files holds one batch at a time.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from dataclasses import replace
from typing import BinaryIO

from ..deletions import (CONFIRMED_KEY, HELD_KEY, DeletionGuard, dump_paths, is_file_deletion,
                         load_paths)
from ..errors import EscaleError, IntegrityError, QuotaExceeded
from ..folder import TMP_MARK
from ..fsnames import is_state_name
from ..index import FILE, GONE, Entry, LocalFile
from ..names import db_key
from ..plan import Changes
from ..protocol import (BLOB, INLINE, NONE, UPDATE_MAGIC, Item, ObjectStore, RelayView, UpdateHeader, blob_name,
                        reservation_name, update_name)
from ..state import Published
from ..stream import HashingReader, ReadAhead, copy_exactly
from .acks import Acks
from .context import BLOB_THRESHOLD, Repo, Stoppable
from .report import CycleReport
from .membership import Membership
from .quota import Quota
from .scan import Scanner, _within

log = logging.getLogger(__name__)

#: an update header is cut below this (readers refuse one above protocol.MAX_HEADER): about
#: 20,000 entries, whose parsed form a reader holds while it applies them
MAX_UPDATE_HEADER = 4 << 20
#: a scan holding this many new or changed files publishes them before it goes on (_stream)
STREAM_AT = 20_000


class Pusher:
    """Publishes this client's changes; finishes or rolls back an interrupted one."""

    def __init__(self, ctx: Repo, members: Membership, acks: Acks, quota: Quota, deletions: DeletionGuard):
        self.ctx, self.members, self.acks, self.quota = ctx, members, acks, quota
        self.deletions = deletions
        self.deletions_held = False  # read from the state when it is opened
        self.scanner = Scanner(ctx)
        self.scanner.each_folder = self._stream  # a large scan publishes as it goes
        self._streaming = False  # a scan publishes as it goes (_stream) until this is False
        #: (synced files, highest base rowid) before a scan's first early update (_stream)
        self._before: tuple[int, int] | None = None

    @property
    def scanned(self) -> dict[str, LocalFile]:
        """The last scan's changed files: what is sent is opened again as that very file."""
        return self.scanner.scanned

    def push(self, view: RelayView, report: CycleReport) -> CycleReport:
        """Scan the folder (escale/sync/scan.py: only what changed when a watcher runs);
        publish its changes and the contents others asked us for."""
        complete = False
        unsettled: set[str] = set()  # there but unreadable or changing: neither sent nor deleted
        self._streaming, self._before = True, None
        try:
            changes = self._guard_deletions(self.scanner.changes(unsettled, report), report)
            supplies = self._supplies(view)
            items = [self._item(e) for e in changes] + supplies
            report.unpublished = len(unsettled) + len(self.held_deletions())
            left = len(changes)
            for batch in self._batches(items, report) if items else ():
                self.ctx.check_stop()
                if not self._publish(batch, report):
                    report.waiting_for_room = True
                    break
                left -= sum(1 for i in batch if not i.supply)
            report.unpublished += max(0, left) if report.waiting_for_room else 0
            complete = not report.waiting_for_room and not self.deletions_held
            return report
        finally:
            self.scanner.done(complete)

    def _stream(self, into: Changes, report: CycleReport) -> None:
        """Publish, in the middle of a scan, the files it found new or changed once it holds
        STREAM_AT of them: the first sync of a million files then holds one batch, not an
        Entry, a LocalFile and an Item per file until the walk ends.

        Only what the rest of the walk cannot change is sent early: changed files, and new
        files whose content no file synced before this cycle holds (any other may turn out
        to be the new name of a file the walk finds deleted later, and travel without
        content as a rename). Folders and deletions wait for the end of the walk: a folder
        the walk cannot enter is not published, deletions are known only then, and the
        deletion guard weighs them all at once (a file's folder is made when the file is
        written, so a receiver needs no folder entry first). Each early update is an
        ordinary one, recorded in the state as it is published: a kill -9 in between
        leaves what was published remembered, and the next scan finds the rest."""
        if not self._streaming or len(into.files) < STREAM_AT:
            return
        if self._before is None:  # what was synced before this scan published anything
            self._before = (self.ctx.state.base_file_count(), self.ctx.state.base_last_row())
        blind = self.ctx.folder.unreadable
        ready, wait = [], []
        for e in into.files:
            later = (e.prev is None and self._renamable(e.hash)) or (blind and _within(e.path, blind))
            (wait if later else ready).append(e)
        into.files = wait
        if len(wait) >= STREAM_AT // 2:  # mostly possible renames: the rest of this walk waits for its end
            self._streaming = False
        early = Changes()
        early.files = ready
        items = [self._item(e) for e in early.ordered()]
        published: set[int] = set()
        waiting, report.waiting_for_room, stuck = report.waiting_for_room, False, False
        for batch in self._batches(items, report):
            self.ctx.check_stop()
            if not self._publish(batch, report):
                stuck = True
                break
            published.update(id(i) for i in batch)
            for i in batch:
                self.scanned.pop(i.entry.path, None)  # sent (or left for the next scan): not looked at again
        stuck |= report.waiting_for_room
        report.waiting_for_room = waiting  # the end of the push says whether it waits for room
        if stuck:  # no room on the relay: what is left waits for the end of the walk, tried again there
            self._streaming = False
            into.files += [i.entry for i in items if id(i) not in published]
        # (else an item not published is larger than the quota allows: _batches said so)

    def _renamable(self, digest: str | None) -> bool:
        """Could a new file with this content be a rename (some file synced before this
        push began holds it)? One indexed query; nothing was synced before a first push."""
        assert self._before is not None
        return self._before[0] > 0 and self.ctx.state.base_holds(digest, self._before[1])

    def _guard_deletions(self, changes: list[Entry], report: CycleReport) -> list[Entry]:
        """Hold back a scan's deletions beyond ``max delete`` until the user confirms them
        (escalectl confirm-deletes); everything else is published."""
        gone = {e.path for e in changes if e.kind == GONE}
        if not gone and not self.deletions_held:
            return changes
        confirmed = set(load_paths(self.ctx.state.get(CONFIRMED_KEY)))
        # the synced files before this scan published any (the guard weighs deletions against them)
        synced = self._before[0] if self._before is not None else self.ctx.state.base_file_count()
        kept, held = self.deletions.screen(changes, synced, confirmed & gone)
        with self.ctx.state.transaction():
            if confirmed and not confirmed <= gone:  # published, or the files came back
                self.ctx.state.set(CONFIRMED_KEY, dump_paths(list(confirmed & gone)))
            if held:
                text = dump_paths([e.path for e in held], synced=synced, limit=str(self.deletions.limit))
                if self.ctx.state.get(HELD_KEY) != text:
                    self.ctx.state.set(HELD_KEY, text)
            elif self.deletions_held:
                self.ctx.state.unset(HELD_KEY)
        self.deletions_held = bool(held)
        if held:
            files = sum(1 for e in held if is_file_deletion(e))
            report.error(f"{files} local deletion(s) held back: this scan would delete {files} of the {synced} "
                         f"synced files, more than 'max delete' = {self.deletions.limit} allows (an unmounted "
                         f"disk or a mistake?). They are not published; everything else syncs. If you meant "
                         f"it: escalectl confirm-deletes -r {self.ctx.name}; otherwise restore the files")
        return kept

    def held_deletions(self) -> list[str]:
        """Paths whose deletion is held back (read from the state; safe while a daemon runs)."""
        return load_paths(self.ctx.state.get(HELD_KEY)) if self.ctx.state is not None else []

    def _item(self, e: Entry, supply: bool = False) -> Item:
        if e.kind != FILE or (e.origin is not None and not supply):
            return Item(e, NONE, supply=supply)
        return Item(e, BLOB if e.size >= BLOB_THRESHOLD else INLINE, supply=supply)

    def _supplies(self, view: RelayView) -> list[Item]:
        """Contents other clients asked us for (late joiners, renames they could not apply)."""
        items: list[Item] = []
        seen: dict[str, Item] = {}
        for cid, info in view.requests.items():
            self.ctx.check_stop()
            if cid == self.ctx.me:
                continue
            req = self.ctx.read_small(info.name, info)
            if not isinstance(req, dict) or not isinstance(req.get("wants"), list):
                continue
            n = req.get("n")
            if not isinstance(n, int) or isinstance(n, bool) or self._replayed_request(info, n):
                continue
            acked = self.acks.acked_seq(view, cid)
            for w in req["wants"]:
                if not isinstance(w, dict) or w.get("supplier") != self.ctx.me:
                    continue
                path, digest = w.get("path"), w.get("hash")
                lf = self._local_file(path) if isinstance(path, str) else None
                if lf is None or lf.kind != FILE or lf.hash != digest:
                    continue
                sent = self.ctx.state.get(f"supplied:{cid}:{db_key(path)}:{digest}")
                if sent is not None and acked < int(sent):
                    continue  # already on its way
                if self.ctx.state.mark(f"answered:{cid}:{db_key(path)}:{digest}") >= n:
                    continue  # this request was answered: only a newer one asks again
                b = self.ctx.state.base_entry(path)
                self.scanned[path] = lf  # sent as the very file looked at here
                e = b if b is not None and b.kind == FILE and b.hash == digest else \
                    Entry(path, FILE, digest, lf.size, lf.mtime_ns, lf.mode, None, self.ctx.me)
                if path in seen:
                    seen[path].requesters.append((cid, n))
                    continue
                seen[path] = self._item(e, supply=True)
                seen[path].requesters.append((cid, n))
                items.append(seen[path])
        return items

    def _local_file(self, path: str) -> LocalFile | None:
        """The file at ``path`` as the scan would see it (digest filled), or None if the scan
        would not take it (filtered, escale's own, in an excluded folder) or cannot read it."""
        got = self.scanned.get(path)
        if got is not None:
            return got
        flt = self.ctx.filter
        parts = path.split("/")
        if (not path or is_state_name(parts[0]) or any(TMP_MARK in p for p in parts)
                or not flt.accepts_file(path)
                or not all(flt.may_descend("/".join(parts[:i])) for i in range(1, len(parts)))):
            return None
        try:
            lf = self.ctx.folder.stat_one(path)
        except (EscaleError, OSError, ValueError) as exc:  # LocalChanged, UnsafePath, NameTwin, unreadable
            log.info("%s: %s: cannot supply it now (%s)", self.ctx.name, path, exc)
            return None
        return lf if lf is not None and lf.kind == FILE else None

    def _replayed_request(self, info, n: int) -> bool:
        """A request whose counter is below the newest seen from its client — or equal
        to it in another object (its client never rewrites a counter) — is an old one
        the relay replays: reported, and it costs nothing."""
        cid = info.name.split("/")[1]
        last = self.ctx.state.get(f"request:{cid}")
        if last is not None:
            seen_n, size, mtime = json.loads(last)
            if n < seen_n or (n == seen_n and (size, mtime) != (info.size, info.mtime)):
                self.ctx.problem(IntegrityError(info.name, f"an old request (counter {n}, newest seen {seen_n}) "
                                                        "replayed by the relay; ignored"))
                return True
            if n == seen_n:
                return False
        self.ctx.state.set(f"request:{cid}", json.dumps([n, info.size, info.mtime]))
        return False

    def _batches(self, items: list[Item], report: CycleReport):
        """Cut updates of at most ``maxpagesize`` content bytes — and, with a quota, of at
        most the room left — contentless items first. Each batch is sized just before it
        is published, so room freed meanwhile is used."""
        free = [i for i in items if i.data == NONE]
        heavy = [i for i in items if i.data != NONE]
        quota = self.ctx.tq.quota
        if quota is not None:
            most = quota - self.quota.headroom(len(items)) - self.quota.frame_size(1)
            for item in list(heavy):
                if self.ctx.cipher.size_on_relay(item.entry.size) > most:
                    report.error(f"{item.entry.path} ({item.entry.size} bytes) is larger than the relay quota "
                                 f"allows ({max(0, most)} of {quota} bytes usable for one file); it cannot be sent")
                    heavy.remove(item)
        while free or heavy:
            limit = self.ctx.maxpagesize
            if quota is not None:
                limit = min(limit, self.quota.room(len(items)))
            # the header stays far below what readers accept (protocol.MAX_HEADER)
            n, head = 0, 0
            while n < len(free) and (n == 0 or head + _head_bytes(free[n]) <= MAX_UPDATE_HEADER):
                head += _head_bytes(free[n])
                n += 1
            batch, size = free[:n], 0
            free = free[n:]
            while heavy and not free:
                cost = self.ctx.cipher.size_on_relay(heavy[0].entry.size)
                if batch and size + cost + self.quota.frame_size(len(batch) + 1) > limit:
                    break
                if batch and head + _head_bytes(heavy[0]) > MAX_UPDATE_HEADER:
                    break
                if not batch and quota is not None and cost + self.quota.frame_size(1) > limit:
                    break  # not even one file fits now: wait for room
                head += _head_bytes(heavy[0])
                batch.append(heavy.pop(0))
                size += cost
            if not batch:
                report.waiting_for_room = True
                return
            yield batch

    def _publish(self, items: list[Item], report: CycleReport) -> bool:
        """Write one update (blobs first, then the update object); False if no room."""
        try:
            return self._publish_batch(items, report)
        except QuotaExceeded as exc:  # the storage itself is full (e.g. WebDAV 507)
            log.info("%s: %s; waiting for room", self.ctx.name, exc)
            seq = self.ctx.state.own_seq + 1
            if self.ctx.outbox.head(seq) is not None:
                return False  # the update itself was being written: its seq is spent, retried as is
            for info in list(self.ctx.relay.list(f"b/{self.ctx.me}/{seq}/")):
                self.ctx.relay.delete(info.name)
            self.ctx.relay.abort_incomplete(f"b/{self.ctx.me}/{seq}/")
            self.ctx.relay.abort_incomplete(update_name(self.ctx.me, seq))
            with self.ctx.state.transaction():
                self.ctx.state.clear_outbox(seq)
            return False

    def _publish_batch(self, items: list[Item], report: CycleReport) -> bool:
        if self.ctx.state.outbox():  # an update whose write failed: finish it before any other
            self.recover_outbox()
        seq = self.ctx.state.own_seq + 1
        estimate = sum(self.ctx.cipher.size_on_relay(i.entry.size) for i in items if i.data != NONE)
        estimate += self.ctx.cipher.size_on_relay(self.quota.frame_size(len(items)))
        if not self.quota.reserve(estimate + self.quota.headroom(len(items))):
            log.info("%s: relay quota reached; waiting for pullers to free room", self.ctx.name)
            return False
        try:
            with self.ctx.state.transaction():
                self.ctx.state.set_outbox(seq, time.time())
            kept: list[Item] = []
            blob_no = 0
            with self.ctx.outbox.new_body(seq) as spool:
                for item in items:
                    if item.data == NONE:
                        kept.append(item)
                        continue
                    path = self.scanned.get(item.entry.path)
                    try:
                        if path is None or path.kind != FILE:
                            raise FileNotFoundError(errno.ENOENT, "not found by the scan", item.entry.path)
                        if item.data == BLOB:
                            item.blob = blob_no
                            ok = self._put_blob(blob_name(self.ctx.me, seq, blob_no), path, item.entry)
                            blob_no += 1
                        else:
                            ok = self._spool(spool, path, item.entry)
                    except FileNotFoundError:
                        ok = False  # gone since the scan: the next scan says so
                    except OSError as exc:
                        report.error(f"{item.entry.path}: cannot read it ({exc.strerror or exc}); not sent, "
                                     "will retry")
                        ok = False
                    if ok:
                        kept.append(item)
                    elif item.data == INLINE:
                        spool.truncate(sum(i.entry.size for i in kept if i.data == INLINE))
                        spool.seek(0, os.SEEK_END)
                if not kept:
                    with self.ctx.state.transaction():
                        self.ctx.state.clear_outbox(seq)
                    self.ctx.outbox.discard(seq)
                    return True
                kept = [i if i.supply else Item(replace(i.entry, seq=seq), i.data, i.blob, i.supply) for i in kept]
                deps, unseen = self.ctx.horizon()
                header = UpdateHeader(self.ctx.me, seq, self.ctx.state.own_digest, time.time(), self.members.pullers(),
                                      self.ctx.count, kept, deps, unseen)
                head = ObjectStore.encode_header(UPDATE_MAGIC, header.to_dict())
                body_size = spool.seek(0, os.SEEK_END)
                self.ctx.outbox.seal(seq, head, spool)  # from here on, seq is spent (escale/outbox.py)
                spool.seek(0)
                written = self.ctx.store.put_framed(update_name(self.ctx.me, seq), head, [spool], body_size)
            size = written + sum(self.ctx.cipher.size_on_relay(i.entry.size) for i in kept if i.data == BLOB)
            self._published(seq, head, header, size, kept)
            report.sent += sum(1 for i in kept if i.entry.kind == FILE and not i.supply)
            report.deleted += sum(1 for i in kept if i.entry.kind == GONE)
            for i in kept:
                if not i.supply and i.entry.kind in (FILE, GONE):
                    report.moved("sent" if i.entry.kind == FILE else "sent deletion", i.entry.path)
            log.debug("%s: published update %d (%d entries, %d bytes)", self.ctx.name, seq, len(kept), size)
            return True
        finally:
            if self.ctx.tq.quota is not None:
                self.ctx.relay.delete(reservation_name(self.ctx.me))

    def _spool(self, spool: BinaryIO, path: LocalFile, e: Entry) -> bool:
        with self.ctx.folder.open_read(path) as f:
            reader = HashingReader(f, self.ctx.algorithm)
            n = copy_exactly(reader, spool, e.size)
            extra = f.read(1)
        if n != e.size or extra or reader.hexdigest() != e.hash:
            log.info("%s: %s changed while being sent; will send it next cycle", self.ctx.name, e.path)
            return False
        return True

    def _put_blob(self, name: str, path: LocalFile, e: Entry) -> bool:
        size = self.ctx.cipher.size_on_relay(e.size)
        with self.ctx.folder.open_read(path) as f:
            reader = HashingReader(f, self.ctx.algorithm)
            # read, hashed and sealed by a thread of its own while this one sends (ReadAhead)
            with ReadAhead(self.ctx.cipher.encrypt(name, reader, e.size)) as sealed, \
                    self.ctx.bar(Stoppable(sealed, self.ctx.check_stop), size, f"send {e.path}") as shown:
                self.ctx.relay.put(name, shown, size=size)
        if reader.count != e.size or reader.hexdigest() != e.hash:
            self.ctx.relay.delete(name)
            log.info("%s: %s changed while being sent; will send it next cycle", self.ctx.name, e.path)
            return False
        return True

    def _published(self, seq: int, head: bytes, header: UpdateHeader, size: int, items: list[Item]) -> None:
        """Record update ``seq`` as on the relay (and drop its local copy)."""
        digest = hashlib.sha256(head).hexdigest()
        with self.ctx.state.transaction():
            for item in items:
                if not item.supply:
                    self.ctx.state.remember(item.entry)
                for cid, n in item.requesters:  # answered: not again until that client acks it,
                    self.ctx.state.set(f"supplied:{cid}:{db_key(item.entry.path)}:{item.entry.hash}", str(seq))
                    self.ctx.state.raise_mark(f"answered:{cid}:{db_key(item.entry.path)}:{item.entry.hash}", n)  # nor asks anew
            self.ctx.state.add_published(Published(seq, digest, header.pullers, header.count, size))
            self.ctx.state.clear_outbox(seq)
        self.ctx.outbox.discard(seq)

    def recover_outbox(self) -> None:
        """Finish an update whose write failed or was interrupted — with exactly the bytes
        sealed before it left (never another update under its seq: a relay that kept
        the first attempt would otherwise fork our history) — or roll back one that never
        left."""
        for seq in sorted(self.ctx.state.outbox()):
            name = update_name(self.ctx.me, seq)
            head = self.ctx.outbox.head(seq)
            if seq > self.ctx.state.own_seq and head is not None:
                h = UpdateHeader.parse(name, json.loads(head[len(UPDATE_MAGIC) + 4:]), self.ctx.me, seq)
                with self.ctx.outbox.body(seq) as body:
                    body_size = body.seek(0, os.SEEK_END)
                    body.seek(0)
                    written = self.ctx.store.put_framed(name, head, [body], body_size)
                size = written + sum(i.size for i in self.ctx.relay.list(f"b/{self.ctx.me}/{seq}/"))
                self._published(seq, head, h, size, h.items)
                log.info("%s: completed update %d interrupted by a crash or a failed write (sent again as "
                         "sealed)", self.ctx.name, seq)
            else:
                for info in list(self.ctx.relay.list(f"b/{self.ctx.me}/{seq}/")):
                    self.ctx.relay.delete(info.name)
                with self.ctx.state.transaction():
                    self.ctx.state.clear_outbox(seq)
                self.ctx.outbox.discard(seq)
                log.info("%s: rolled back update %d interrupted before it was sent", self.ctx.name, seq)


def _head_bytes(item: Item) -> int:
    """An item's bytes in an update header (with room for the seq filled in later)."""
    return len(json.dumps(item.to_dict(), separators=(",", ":"))) + 32
