"""The daemon's lock file: one ``escale`` daemon per configuration file.

It lives in the user's runtime folder (``$XDG_RUNTIME_DIR/escale``; the user state
folder where there is none) and holds the daemon's pid. The pid is never trusted on
its own: the daemon keeps an ``flock`` on the file for its whole life, so a file whose
lock anyone can take belongs to a daemon that is gone (crashed, killed -9, rebooted),
whatever pid it names — and that pid may by now be another program's.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ..errors import AlreadyRunning
from ..private import private_dir


def runtime_dir() -> Path:
    """Where lock files go: the runtime folder when the system has one (a tmpfs
    emptied at logout: no lock outlives a reboot), else the user state folder."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / "escale"
    if sys.platform == "darwin":
        return platformdirs.user_runtime_path("escale")
    return platformdirs.user_state_path("escale") / "run"


def lock_path(config_path: Path) -> Path:
    """The lock file of the daemon running this configuration file."""
    digest = hashlib.sha256(str(Path(config_path).resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    return runtime_dir() / f"escale-{digest[:16]}.pid"


@dataclass(frozen=True)
class Holder:
    pid: int
    config: str


class DaemonLock:
    """Taken by the daemon (:meth:`acquire`), looked at by ``escalectl`` (:meth:`holder`)."""

    def __init__(self, config_path: Path):
        self.config_path = Path(config_path)
        self.path = lock_path(self.config_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock for this process; AlreadyRunning (exit 4) names the other daemon."""
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        for attempt in range(20):  # escalectl looks at the lock for an instant: wait that out
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < 19:
                    time.sleep(0.05)
        else:
            other = _read(fd)
            os.close(fd)
            pid = f" (pid {other.pid})" if other else ""
            raise AlreadyRunning(f"an escale daemon already runs {self.config_path}{pid}; "
                                 f"see 'escalectl -c {self.config_path} status', or stop it with "
                                 f"'escalectl -c {self.config_path} stop'") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{self.config_path.resolve()}\n".encode("utf-8", "surrogateescape"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def holder(self) -> Holder | None:
        """The running daemon, or None: a file nobody holds a lock on is stale,
        whatever pid it names."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read(fd)
            return None  # nobody holds it: a leftover (the next daemon takes it over)
        finally:
            os.close(fd)


def _read(fd: int) -> Holder | None:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "surrogateescape")
        pid, _, config = text.partition("\n")
        return Holder(int(pid), config.strip())
    except (OSError, ValueError):
        return None
