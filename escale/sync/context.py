"""The repository context: what every part of a sync cycle shares.

One :class:`Repo` per synced folder holds the relay, the object store and its keys,
the local state, the folder, the settings, and the little a cycle learns about the
other members (their cards and names). The parts of a cycle (membership, pull,
apply, push, quota, collect) each receive it instead of reaching into one another;
what a part alone needs stays in that part. A :class:`CycleReport` belongs to one
cycle, so it is passed to the parts per call rather than kept here.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from ..access import AccessController
from ..checksum import ChecksumCache
from ..encryption import Cipher
from ..errors import IntegrityError, RelayObjectMissing, Terminated
from ..filters import Filter
from ..folder import Folder
from ..index import DIR, DIR_VERSION, GONE, Entry
from ..junk import Junk
from ..marker import FolderIdentity, Marker
from ..outbox import Outbox
from ..pacing import TimeQuotaController
from ..protocol import ObjectStore
from ..relay import Relay
from ..state import State

log = logging.getLogger(__name__)

#: files at least this large travel as their own relay object, streamed
BLOB_THRESHOLD = 4 << 20
#: a small object is cached (not re-read while unchanged) once its mtime is this old
SEEN_SETTLE_SECONDS = 2.0


@dataclass(eq=False)
class Repo:
    """One synced folder and its relay, as the parts of a cycle see them.

    The settings come first; the rest is filled in when the Manager opens the state
    (``state``, ``folder``, ``cache``, ``me``…) and reaches the relay (``cipher``,
    ``repository_id``). ``store`` and ``cipher`` are replaced once the key is known,
    so parts always read them from here, never keep a copy.
    """

    name: str
    relay: Relay
    repository: AccessController
    where: FolderIdentity
    filter: Filter
    tq: TimeQuotaController
    cipher: Cipher
    clientname: str
    mode: str
    algorithm: str
    enc_name: str
    count: int | None = None
    maxpagesize: int = 0
    passphrase: str | None = None
    padding: bool = True
    strict: bool = True
    config_path: object = None
    pinned_id: str | None = None  # the 'repository id' option, if set
    #: the configuration section (RepositoryConfig) when built from one: a relay move
    #: (escale.sync.moves) reads the file again and records itself through it
    section: object = None
    stop: threading.Event = field(default_factory=threading.Event)
    progress: bool = False  # show tqdm bars for long transfers (the CLI, in a terminal)
    meter: object = None  # told of each large transfer (escale.status.StatusPublisher)
    # -- filled in at open / connect
    store: ObjectStore | None = None
    state: State | None = None
    state_dir: Path | None = None
    folder: Folder | None = None
    cache: ChecksumCache | None = None
    outbox: Outbox | None = None  # in the state folder, once it is found
    marker: Marker | None = None
    me: str = ""
    secret: object = None
    repository_id: str | None = None  # from the header, once read
    # -- what a cycle learns (per cycle, or kept in memory between cycles)
    flags: dict[str, tuple] = field(default_factory=dict)  # per-file r/w flags, read once per cycle
    problems: list[str] = field(default_factory=list)  # integrity errors met outside a cycle's report
    junk: Junk = field(default_factory=Junk)  # objects of no member, this cycle
    bad: dict[str, tuple[int, float]] = field(default_factory=dict)  # unreadable cards (in memory only)
    cards: dict[str, dict] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    pos: dict[str, int] = field(default_factory=dict)  # pull positions during a cycle

    def __post_init__(self) -> None:
        if self.store is None:
            self.store = ObjectStore(self.relay, self.cipher)

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Terminated(f"{self.name}: stopped")

    def problem(self, exc: Exception) -> None:
        log.error("%s: %s", self.name, exc)
        self.problems.append(str(exc))

    def read_small(self, name: str, info, self_signed: str | None = None, junk: bool = False) -> object:
        """A small signed object, re-read only when the listing says it changed.

        ``junk``: a bad one is set aside for the cycle's one-line summary (and, in this
        process, not read again while unchanged) instead of an error line each."""
        cached = self.state.seen(name, info.size, info.mtime)
        if cached is not None:
            return cached
        if junk and self.bad.get(name) == (info.size, info.mtime):
            self.junk.add(name)
            return None
        try:
            value = self.store.get_json(name, self_signed=self_signed)
        except RelayObjectMissing:
            return None
        except IntegrityError as exc:
            if junk:
                self.junk.add(name, str(exc))
                self.bad[name] = (info.size, info.mtime)
            else:
                self.problem(exc)
            return None
        # servers with one-second mtimes could hide a rewrite in the same second: cache
        # only what has been stable for a while
        if time.time() - info.mtime > SEEN_SETTLE_SECONDS:
            self.state.set_seen(name, info.size, info.mtime, value)
        return value

    def name_of(self, cid: str) -> str:
        return self.names.get(cid) or cid[:8]

    def bar(self, stream: BinaryIO, total: int, desc: str):
        """A tqdm progress bar around a long transfer's stream (only in a terminal)."""
        if self.meter is not None and total >= BLOB_THRESHOLD:  # the daemon's status.json (escale/status.py)
            stream = self.meter.track(stream, total, desc)
        if not self.progress or total < BLOB_THRESHOLD:
            return contextlib.nullcontext(stream)
        from tqdm import tqdm

        return tqdm.wrapattr(stream, "read", total=total, desc=desc[-40:], unit="B", unit_scale=True,
                             unit_divisor=1024, leave=False)

    def scope_push(self, path: str, kind: str) -> bool:
        ok = self.filter.accepts_dir(path) if kind == DIR else self.filter.accepts_file(path)
        return ok and self.repository.may_push() and self.flags.get(path, (None, None))[0] is not False

    def scope_pull(self, e: Entry) -> bool:
        parent = e.path.rpartition("/")[0]
        if parent and not self.filter.may_descend(parent):
            return False
        is_dir = e.kind == DIR or (e.kind == GONE and e.prev == DIR_VERSION)
        kind_ok = self.filter.accepts_dir(e.path) if is_dir else self.filter.accepts_file(e.path)
        return kind_ok and self.repository.may_pull() and self.flags.get(e.path, (None, None))[1] is not False

    def load_flags(self) -> None:
        """The per-file r/w flags (usually a handful), read once per cycle: escalectl
        changes take effect at the next cycle without a table lookup per file."""
        self.flags = {p: (r, w) for p, r, w in self.repository.attributes.items()}

    def horizon(self) -> tuple[dict[str, int], dict[str, tuple[str, int]]]:
        """Our pull positions as we publish them, and the versions we received but did not
        apply (wanted but not yet written, or held back by a w- flag or a symlink).

        The positions are whole, so receivers apply our update only after everything we
        had applied (causal order); the versions not applied are named path by path, so
        no change of ours claims to have seen — and so silently supersedes — one of them.
        (Capping the positions instead, as before, let a receiver apply our update before
        updates we had applied, and meet their versions as conflicts.)"""
        deps = {p: s for p, (s, _d) in self.state.applied().items()}
        unseen: dict[str, tuple[str, int]] = {}
        held = [(e.path, e.author, e.seq) for e, _s in self.state.wants().values()] + self.state.held()
        for path, author, seq in held:
            if seq and author != self.me and (path not in unseen or unseen[path][1] < seq):
                unseen[path] = (author, seq)
        return deps, unseen

    def check_folder(self) -> None:
        """The synced folder still carries its marker (one stat): an unmounted disk or a
        renamed folder must not look like a folder whose files were all deleted."""
        if self.marker is not None:
            self.marker = self.where.check(self.marker)

    def known(self, cid: str) -> bool:
        """A writer we follow: a valid member card, or a key pinned from one earlier."""
        return cid == self.me or cid in self.cards or self.state.pinned(cid) is not None


class Stoppable:
    """A stream whose every read first checks for SIGTERM: a long transfer stops within
    one block (the writer's temporary file is removed by its own clean-up)."""

    def __init__(self, stream: BinaryIO, check: Callable[[], None]):
        self.stream, self.check = stream, check

    def read(self, n: int = -1) -> bytes:
        self.check()
        return self.stream.read(n)

    def close(self) -> None:
        self.stream.close()
