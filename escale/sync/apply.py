"""Apply: carry out a plan from :mod:`escale.plan` on the synced folder.

For one incoming entry: refuse an unsafe path, keep to the scope (filters, r/w
flags), reconcile it with the remembered base and the local file, then do the steps
— write the content (from the update's body, its blob, or a local file holding the
same content: renames travel without content), displace a local version to the
trash or a conflict copy, make or remove folders — and remember the result. Errors
are per file: a file that cannot be written is wanted again and reported every cycle.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import BinaryIO

from ..access import check_relpath
from ..checksum import FileChangedError
from ..errors import IntegrityError, RelayObjectMissing, UnsafePath
from ..folder import ContentMismatch, LocalChanged, PendingWrite
from ..fsnames import NameTwin
from ..index import DIR, FILE, GONE, MAX_INT, Entry, LocalFile
from ..plan import Displace, Fetch, MakeDir, Plan, Remember, RemoveDir, SetMode, reconcile
from ..stream import ReadAhead
from .context import Repo, Stoppable
from .report import CycleReport

log = logging.getLogger(__name__)


#: files up to this size are written, verified, and made durable in groups (see flush)
DEFER_MAX = 1 << 20
#: each waiting write holds two descriptors (the temporary and its folder), and two groups may
#: wait at once (one being written, one being fsynced): 2 × 2 × 160 stays well under the 1,024
#: open files many desktops allow a process by default
DEFER_FILES = 160
DEFER_BYTES = 32 << 20


@dataclass
class _Deferred:
    """A plan stopped after its write: the write waits for the group's fsync, then the rest runs."""

    write: PendingWrite
    plan: Plan
    next: int
    entry: Entry
    expect: LocalFile | None
    report: CycleReport
    where: tuple[str, str]  # (relay object, pusher): for errors and re-asking


class LazyBlob:
    """A blob object opened only if the plan needs its content."""

    def __init__(self, ctx: Repo, name: str):
        self.ctx, self.name, self.stream = ctx, name, None

    def open(self) -> BinaryIO:
        raw = self.ctx.relay.get(self.name)
        try:
            # decrypted by a thread of its own while this one hashes and writes (ReadAhead)
            self.stream = ReadAhead(self.ctx.cipher.decrypt(self.name, raw))
        except BaseException:
            raw.close()
            raise
        return self.stream

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


class Applier:
    """Applies incoming entries to the folder; remembers, per pull, the files it could
    not write and the contents it must ask for."""

    def __init__(self, ctx: Repo):
        self.ctx = ctx
        self.moves: dict[str, str | None] = {}  # rename sources the current update deletes
        self.failures: dict[str, str] = {}  # files we could not write (path -> why), kept in the state
        self.failed_now: set[str] = set()
        self.reask = False  # a content was wanted (again) this pull: publish a new request
        #: small files written and verified, waiting for their grouped fsync and rename (flush)
        self.pending: list[_Deferred] = []
        self.pending_paths: set[str] = set()  # targets of pending and in-flight writes
        self.pending_bytes = 0
        self.any_wants = self.any_held = True  # until begin() counts them
        #: the previous group, whose fsyncs run in the background while the next one is written
        self.inflight: list[_Deferred] = []
        self.inflight_sync: list[Future] = []
        self.finishing: tuple[list[_Deferred], list[Future] | None] = ([], None)

    def begin(self) -> None:
        """A new pull: base and wants are read row by row from the state (never loaded
        whole), so memory stays flat however many entries a snapshot brings."""
        self.moves = {}
        self.failures = self.ctx.state.failures()  # files we could not write, cycles ago
        self.failed_now = set()
        self.reask = False
        # usually both tables are empty: then no per-file query or delete is made for them
        self.any_wants = self.ctx.state.any_wants()
        self.any_held = self.ctx.state.any_held()

    def apply_entry(self, objname: str, e: Entry, pusher: str, source, report: CycleReport, *,
                     supply: bool = False, seen=lambda b: False) -> None:
        """Reconcile one incoming entry and carry out the plan (errors are per file)."""
        try:
            check_relpath(self.ctx.folder.root, e.path)
            if e.origin is not None:
                check_relpath(self.ctx.folder.root, e.origin)
        except UnsafePath as exc:
            source = f" (rename source {_shown(exc.object)})" if exc.object != e.path else ""
            report.error(f"relay object {objname}: refused unsafe path {_shown(e.path)}{source}: {exc.reason}")
            return
        wanted = self.ctx.state.wanted(e.path) if self.any_wants else None
        if supply and (wanted is None or wanted[0].hash != e.hash):
            return  # content someone else asked for
        if not self.ctx.scope_pull(e):
            if self.ctx.repository.may_pull() and self.ctx.flags.get(e.path, (None, None))[1] is False:
                self._hold(e)  # w-: not applied, and our deps must not claim we saw it
            return
        if self.pending_paths and not (e.kind == FILE and e.origin is None and e.path not in self.pending_paths):
            self.flush()  # anything but a plain file write may look at (or move) what is pending
        with self._errors(objname, e, pusher, report):
            local = self.local(e.path)
            if local is not None and local.kind not in (FILE, DIR):
                log.info("%s: %s: left alone: a symbolic link or special file is there", self.ctx.name, e.path)
                self._hold(e)
                return
            plan = reconcile(e, self.ctx.state.base_entry(e.path), local, me=self.ctx.me, mode=self.ctx.mode, name_of=self.ctx.name_of,
                             seen=seen)
            if plan.needs_content:
                if source is None:
                    source, copy_from = None, self._local_source(e)
                    if copy_from is None:
                        self._want(e, pusher)
                        return
                else:
                    copy_from = None
            else:
                copy_from = None
            move = copy_from is not None and copy_from == e.origin and self.moves.get(e.origin) == e.hash
            self._execute(plan, e, local, source, copy_from, report, move=move, where=(objname, pusher))
            if wanted is not None:
                self.ctx.state.unwant(e.path)

    @contextlib.contextmanager
    def _errors(self, objname: str, e: Entry, pusher: str, report: CycleReport) -> Iterator[None]:
        """What a failure to apply one entry means (errors are per file)."""
        try:
            yield
        except NameTwin as exc:  # the file system takes it for another file here: never overwrite that
            report.error(f"relay object {objname}: {e.path}: {exc}")
            self._hold(e)
            if self.failures.pop(e.path, None) is not None:
                self.ctx.state.resolve(e.path)
        except OSError as exc:  # escale may not write here (permissions, read-only, full disk)
            self._could_not_write(e, pusher, exc.strerror or str(exc), report)
        except (LocalChanged, ContentMismatch) as exc:
            if isinstance(exc.__cause__, OSError):  # a local file we cannot read
                self._could_not_write(e, pusher, str(exc), report)
                return
            report.error(f"{e.path}: {exc}; will retry")
            self._want(e, pusher)
        except IntegrityError as exc:  # its own object (a blob) is damaged: ask for it again
            report.error(f"{exc}; {e.path} not written, asked again")
            self._want(e, pusher)
        except RelayObjectMissing as exc:  # its blob is gone: ask for the content again
            report.error(f"{exc}; {e.path} not written, asked again")
            self._want(e, pusher)

    def _could_not_write(self, e: Entry, supplier: str, why: str, report: CycleReport) -> None:
        report.error(f"{e.path}: cannot write it here ({why}); will retry")
        self._want(e, supplier)
        self.ctx.state.fail(e.path, why)
        self.failures[e.path] = why
        self.failed_now.add(e.path)

    def _want(self, e: Entry, supplier: str) -> None:
        self.ctx.state.want(e, supplier)
        self.any_wants = True
        self.reask = True  # (again): a new request, with a new counter

    def _hold(self, e: Entry) -> None:
        self.ctx.state.hold(e)
        self.any_held = True

    def _local_source(self, e: Entry) -> str | None:
        """A local file holding exactly e's content (renames travel without content)."""
        self.flush()
        candidates = [e.origin] if e.origin else []
        # base paths holding this content: one indexed query, the base is never loaded whole
        candidates += [p for p in self.ctx.state.base_paths_with(e.hash) if p != e.path]
        for p in candidates:
            try:
                lf = self.local(p)
            except LocalChanged:
                continue
            if lf is not None and lf.kind == FILE and lf.hash == e.hash:
                return p
        return None

    def _execute(self, plan: Plan, e: Entry, local: LocalFile | None, source, copy_from: str | None,
                 report: CycleReport, move: bool = False, start: int = 0, where: tuple[str, str] = ("", "")) -> None:
        expect = local
        for i, step in enumerate(plan.steps[start:], start):
            if isinstance(step, Displace):
                target = step.target
                if target is not None and step.spare is not None and self.local(target) is not None:
                    target = step.spare  # never over another file
                self.ctx.folder.displace(step.path, target, expect)
                if step.target is None:
                    report.deleted += e.kind == GONE
                    if e.kind == GONE:
                        report.moved("deleted here", step.path)
                else:
                    report.conflicts += 1
                    report.moved("conflict copy", target)
                expect = None
            elif isinstance(step, Fetch):
                target, target_expect = step.target, expect
                if step.target != e.path:
                    report.conflicts += 1
                    target, target_expect = self._copy_target(step), None
                    if target is None:
                        continue  # that conflict copy is already here
                if copy_from is not None and move and target == e.path:
                    written = self.ctx.folder.move(copy_from, self.local(copy_from), target, e, target_expect)
                elif copy_from is not None:
                    written = self.ctx.folder.fetch(target, e, None, target_expect, copy_from=copy_from)
                else:
                    whole = isinstance(source, LazyBlob)
                    stream = Stoppable(source.open() if whole else source, self.ctx.check_stop)
                    defer = not whole and e.size <= DEFER_MAX
                    with self.ctx.bar(stream, e.size, f"recv {e.path}") as shown:
                        written = self.ctx.folder.fetch(target, e, shown, target_expect, whole=whole, defer=defer)
                    if defer:  # the rest of the plan runs once it is durable and in place (flush)
                        self.pending.append(_Deferred(written, plan, i + 1, e, expect, report, where))
                        self.pending_paths.add(target)
                        self.pending_bytes += e.size
                        if len(self.pending) >= DEFER_FILES or self.pending_bytes >= DEFER_BYTES:
                            self._rotate()
                        return
                self._received(target, e, report, written)
            elif isinstance(step, MakeDir):
                self.ctx.folder.make_dir(step.path, step.mode)
            elif isinstance(step, SetMode):
                self.ctx.folder.set_mode(step.path, step.mode)
            elif isinstance(step, RemoveDir):
                if self.ctx.folder.remove_dir(step.path):
                    report.deleted += 1
            elif isinstance(step, Remember):
                if self.any_held:
                    self.ctx.state.release(step.entry.path)
                self.ctx.state.remember(step.entry)
        if plan.note and plan.note != "up to date":
            log.info("%s: %s: %s", self.ctx.name, e.path, plan.note)
        log.debug("%s: %s: %s", self.ctx.name, e.path, ", ".join(type(s).__name__ for s in plan.steps) or "nothing to do")

    def _received(self, target: str, e: Entry, report: CycleReport, st: os.stat_result) -> None:
        # the status of the file as written (taken before its rename, which keeps inode, size
        # and mtime): no second walk to the file, and an edit right after the rename is not
        # recorded with our digest
        self.ctx.cache.store(target, st.st_size, min(st.st_mtime_ns, MAX_INT), st.st_ino, e.hash)
        report.received += 1
        report.moved("received", target)

    def _rotate(self) -> None:
        """A group is full: begin its fsyncs in the background, finish the group before it
        (its fsyncs had the time to return), and go on writing the next one."""
        group, self.pending, self.pending_bytes = self.pending, [], 0
        started = self.ctx.folder.start_writes([d.write for d in group])
        previous, previous_started = self.inflight, self.inflight_sync
        self.inflight, self.inflight_sync = group, started  # abandon() finds it if what follows fails
        if previous:
            self._finish(previous, previous_started)
            self.pending_paths.difference_update(d.write.target for d in previous)

    def flush(self) -> None:
        """Make every pending small file durable, put it in place, and finish its plan
        (remember it). Called before anything that may look at them and before the
        update's base is committed: the base never records a file that is not on disk
        under its name."""
        if self.pending:
            self._rotate()
        group, started, self.inflight, self.inflight_sync = self.inflight, self.inflight_sync, [], []
        if group:
            self._finish(group, started)
        self.pending_paths = set()

    def _finish(self, pending: list[_Deferred], started: list[Future] | None) -> None:
        self.finishing = (pending, started)  # abandon() drops what an exception here leaves
        outcomes = self.ctx.folder.finish_writes([d.write for d in pending], started)
        with self.ctx.cache.batch():  # one checksum-cache transaction for the group, not one a file
            for d, failure in zip(pending, outcomes):
                with self._errors(d.where[0], d.entry, d.where[1], d.report):
                    if failure is not None:
                        raise failure
                    self._received(d.write.target, d.entry, d.report, d.write.stat)
                    self._execute(d.plan, d.entry, d.expect, None, None, d.report, start=d.next, where=d.where)
        self.finishing = ([], None)

    def abandon(self) -> None:
        """The pull stopped before a flush: drop the temporaries (nothing was remembered)."""
        (finishing, finishing_started), self.finishing = self.finishing, ([], None)
        group, started, self.inflight, self.inflight_sync = self.inflight, self.inflight_sync, [], []
        pending, self.pending, self.pending_paths, self.pending_bytes = self.pending, [], set(), 0
        try:  # (dropping a write twice is harmless: its descriptors are -1 once closed)
            self.ctx.folder.abandon_writes([d.write for d in finishing], finishing_started)
            self.ctx.folder.abandon_writes([d.write for d in group], started)
        finally:
            self.ctx.folder.abandon_writes([d.write for d in pending])

    def _copy_target(self, step: Fetch) -> str | None:
        """Where a conflict copy goes: its name, or its spare name if another file holds
        that (a copy never replaces a file the plan did not decide to supersede); None if
        the copy is already there."""
        for name in (step.target, step.spare):
            if name is None:
                continue
            there = self.local(name)
            if there is None:
                return name
            if there.kind == FILE and there.hash == step.entry.hash:
                return None
        raise LocalChanged(f"other files hold the names of its conflict copy ({step.target}, {step.spare}); "
                           "that version is not written")

    def local(self, path: str) -> LocalFile | None:
        try:
            return self.ctx.folder.stat_one(path)
        except (FileChangedError, OSError) as exc:
            raise LocalChanged(f"cannot read {path}: {exc}") from exc


def _shown(path: object) -> str:
    """A relay-supplied path for a message: quoted, at most 200 characters."""
    return repr(path) if not isinstance(path, str) or len(path) <= 200 else f"{path[:200]!r}…"
