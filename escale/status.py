"""What ``escalectl status`` shows, and what the daemon publishes for it.

The daemon writes ``status.json`` in each repository's state folder (0600, replaced
atomically): the time and result of its last cycle, what that cycle moved, the local
changes it could not publish yet, and the transfer in progress with its progress
(rewritten every :data:`TRANSFER_EVERY` seconds while one runs). ``escalectl status``
reads it beside what the relay and the local state say, so it works with or without a
running daemon (the file of a daemon that is gone is shown as such).

``escalectl status --json`` prints :func:`gather`'s document; its schema is documented
in docs/running.md ("status --json") and only grows: a key is never renamed or removed
without raising :data:`SCHEMA`.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

#: version of the ``--json`` document and of ``status.json``
SCHEMA = 1
STATUS_FILE = "status.json"
#: seconds between two writes of the file while a transfer runs
TRANSFER_EVERY = 2.0
#: wanted files listed by name (the count is always given)
MAX_LISTED = 50


def human_size(n: int | None) -> str | None:
    """Bytes in SI units, as disks and quotas are sold: ``1.5 GB``."""
    if n is None:
        return None
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(size) < 1000 or unit == "PB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _write_private(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_published(state_dir: Path | None) -> dict | None:
    if state_dir is None:
        return None
    try:
        doc = json.loads((Path(state_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass
class Transfer:
    path: str
    direction: str  # "send" or "receive"
    total: int
    done: int = 0
    started: float = 0.0


class _Counted:
    """A stream that counts what is read through it."""

    def __init__(self, stream: BinaryIO, transfer: Transfer, publisher: "StatusPublisher"):
        self._stream, self._transfer, self._publisher = stream, transfer, publisher

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._transfer.done += len(data)
        self._publisher.tick()
        return data

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class StatusPublisher:
    """The daemon's side: told of each cycle (a Manager observer) and of each large
    transfer (:meth:`track`); writes the repository's ``status.json``."""

    def __init__(self, manager):
        self.manager = manager
        self.last_cycle: dict | None = None
        self.last_busy_cycle: dict | None = None  # the latest cycle that moved something
        self.transfer: Transfer | None = None
        self._cycle_started = time.time()
        self._written = 0.0
        self._lock = threading.Lock()

    # -- hooks -----------------------------------------------------------------------------
    def __call__(self, report) -> None:
        now = time.time()
        if report.relay_error:
            result = "relay failed"
        elif report.errors:
            result = "errors"
        elif report.waiting_for_room:
            result = "waiting for room"
        else:
            result = "ok"
        self.last_cycle = {"started": iso(self._cycle_started), "finished": iso(now),
                           "duration_s": round(now - self._cycle_started, 3), "result": result,
                           "sent": report.sent, "received": report.received, "deleted": report.deleted,
                           "conflicts": report.conflicts, "errors": list(report.errors[:20]),
                           "relay_error": report.relay_error,
                           "unpublished": getattr(report, "unpublished", None)}
        if report.did_work:
            self.last_busy_cycle = self.last_cycle
        self.transfer = None
        self.write()
        self._cycle_started = time.time()  # the next cycle starts after the pause; close enough

    def track(self, stream: BinaryIO, total: int, desc: str) -> BinaryIO:
        direction, _, path = desc.partition(" ")
        self.transfer = Transfer(path, {"send": "send", "recv": "receive"}.get(direction, direction), total,
                                 started=time.time())
        self.write()
        return _Counted(stream, self.transfer, self)  # type: ignore[return-value]

    def tick(self) -> None:
        if time.monotonic() - self._written >= TRANSFER_EVERY:
            self.write()

    # -- the file --------------------------------------------------------------------------
    def document(self) -> dict:
        t = self.transfer
        return {"schema": SCHEMA, "pid": os.getpid(), "written": iso(time.time()), "repository": self.manager.name,
                "last_cycle": self.last_cycle, "last_busy_cycle": self.last_busy_cycle,
                "transfer": None if t is None else {"path": t.path, "direction": t.direction, "total_bytes": t.total,
                                                    "done_bytes": t.done, "started": iso(t.started)}}

    def write(self) -> None:
        state_dir = self.manager.state_dir
        if state_dir is None:
            return
        with self._lock:
            self._written = time.monotonic()
            try:
                _write_private(Path(state_dir) / STATUS_FILE, self.document())
            except OSError as exc:
                log.debug("%s: cannot write %s: %s", self.manager.name, STATUS_FILE, exc)


# --------------------------------------------------------------------------- escalectl status

def repository_status(repo, daemon_pid: int | None) -> dict:
    """One repository's part of the ``--json`` document (see docs/running.md)."""
    from .errors import EscaleError
    from .manager import Manager
    from .marker import read_marker
    from .state import State

    doc: dict = {"name": repo.name, "relay": repo.relay_url, "repository_id": None, "members": [],
                 "relay_usage": None, "files_waiting": {"count": 0, "files": []}, "held_deletions": 0,
                 "local_changes_unpublished": None, "last_cycle": None, "last_busy_cycle": None,
                 "transfer": None, "daemon_status": None,
                 "error": None}
    state_dir = None
    if read_marker(Path(repo.local_path)) is not None:
        try:
            state_dir, _marker = repo.identity().resolve()
        except EscaleError as exc:
            doc["error"] = str(exc)
    try:
        st = Manager.from_config(repo).status()
    except EscaleError as exc:
        doc["error"] = doc["error"] or str(exc)
        st = None
    if st is not None:
        doc["repository_id"] = st.repository_id
        doc["relay_usage"] = {"used_bytes": st.used_bytes, "quota_bytes": st.quota, "used": human_size(st.used_bytes),
                              "quota": human_size(st.quota),
                              "percent": None if not st.quota else round(100 * st.used_bytes / st.quota, 1),
                              "storage_used_bytes": st.storage.used if st.storage else None,
                              "storage_available_bytes": st.storage.available if st.storage else None}
        doc["members"] = [{"name": m.name, "mode": m.mode, "this_client": m.is_me,
                           "last_activity": iso(m.last_activity),
                           "updates_on_relay": m.pending_updates,
                           "updates_to_take": m.to_take} for m in st.members]
        doc["held_deletions"] = st.held_deletes
    if state_dir is not None and (Path(state_dir) / "state.sqlite").exists():
        state = State(Path(state_dir))
        try:
            labels = dict(_member_labels(st)) if st is not None else {}
            doc["files_waiting"] = {"count": state.want_count(),
                                    "files": [{"path": p, "from": labels.get(s, s)}
                                              for p, _digest, s in state.wants_page(MAX_LISTED)]}
        finally:
            state.close()
    published = read_published(state_dir)
    if published is not None:
        live = daemon_pid is not None and published.get("pid") == daemon_pid
        doc["daemon_status"] = "live" if live else "from a daemon no longer running"
        doc["last_cycle"] = published.get("last_cycle")
        doc["last_busy_cycle"] = published.get("last_busy_cycle")
        doc["transfer"] = published.get("transfer") if live else None
        if doc["last_cycle"]:
            doc["local_changes_unpublished"] = doc["last_cycle"].get("unpublished")
    return doc


def _member_labels(st) -> list[tuple[str, str]]:
    return [(m.client_id, m.name) for m in st.members if m.client_id]


def gather(cfg, repos, daemon) -> dict:
    """The whole ``escalectl status --json`` document."""
    pid = daemon.pid if daemon is not None else None
    return {"schema": SCHEMA, "config": str(cfg.path), "time": iso(time.time()),
            "daemon": {"running": daemon is not None, "pid": pid},
            "repositories": [repository_status(r, pid) for r in repos]}
