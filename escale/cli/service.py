"""``escalectl start|stop|restart`` and ``escalectl service install``.

``start`` runs ``escale`` in the background, in a session of its own, its output appended
to a log file in the state folder; the daemon itself takes the configuration file's lock
(escale/cli/pidfile.py), so a daemon started by hand, by systemd or by ``start`` is seen
and stopped the same way. ``stop`` sends SIGTERM to the process holding that lock — never
to a pid read from a file whose lock nobody holds — and waits until it is gone.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import platformdirs

from ..errors import EXIT_FILES_FAILED, EXIT_OK
from ..private import private_dir
from .pidfile import DaemonLock

#: seconds ``start`` waits for the daemon to take its lock
START_TIMEOUT = 60.0
#: seconds ``stop`` waits by default (a large file in flight is finished or rolled back first)
STOP_TIMEOUT = 120.0


def daemon_log(cfg) -> Path:
    """Where a daemon started by ``escalectl start`` writes its console output."""
    root = Path(cfg.globals.cache_dir) if cfg.globals.cache_dir else platformdirs.user_state_path("escale")
    digest = hashlib.sha256(str(Path(cfg.path).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return root / f"daemon-{digest}.log"


def daemon_command(cfg, repositories: list[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "escale", "-c", str(Path(cfg.path).resolve())]
    for name in repositories:
        cmd += ["-r", name]
    return cmd


def cmd_start(cfg, args) -> int:
    lock = DaemonLock(cfg.path)
    holder = lock.holder()
    if holder is not None:
        print(f"escale is already running {cfg.path} (pid {holder.pid})")
        return EXIT_OK
    log_path = daemon_log(cfg)
    private_dir(log_path.parent)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen(daemon_command(cfg, args.repository), stdin=subprocess.DEVNULL, stdout=fd,
                                stderr=fd, start_new_session=True, close_fds=True, cwd="/")
    finally:
        os.close(fd)
    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end:
        code = proc.poll()
        if code is not None:
            print(f"escalectl: escale stopped at once (exit {code}); its last lines ({log_path}):", file=sys.stderr)
            print(_tail(log_path), file=sys.stderr)
            return code or EXIT_FILES_FAILED
        holder = lock.holder()
        if holder is not None and holder.pid == proc.pid:
            print(f"escale started (pid {proc.pid}); log: {log_path}")
            return EXIT_OK
        time.sleep(0.05)
    print(f"escalectl: escale (pid {proc.pid}) did not take its lock within {START_TIMEOUT:.0f} s; "
          f"see {log_path}", file=sys.stderr)
    return EXIT_FILES_FAILED


def cmd_stop(cfg, args) -> int:
    lock = DaemonLock(cfg.path)
    holder = lock.holder()
    if holder is None:
        print(f"escale is not running {cfg.path}")
        return EXIT_OK
    try:
        os.kill(holder.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    end = time.monotonic() + args.timeout
    while time.monotonic() < end:
        if lock.holder() is None:
            print(f"escale stopped (pid {holder.pid})")
            return EXIT_OK
        time.sleep(0.05)
    print(f"escalectl: escale (pid {holder.pid}) is still finishing after {args.timeout:.0f} s; "
          f"'kill -INT {holder.pid}' twice aborts it at once (safe: the next run rolls back)", file=sys.stderr)
    return EXIT_FILES_FAILED


def cmd_reload(cfg, args) -> int:
    """SIGHUP to the running daemon: it re-reads its configuration file."""
    holder = DaemonLock(cfg.path).holder()
    if holder is None:
        print(f"escalectl: escale is not running {cfg.path}", file=sys.stderr)
        return EXIT_FILES_FAILED
    os.kill(holder.pid, signal.SIGHUP)
    print(f"asked escale (pid {holder.pid}) to reload {cfg.path}")
    return EXIT_OK


def cmd_restart(cfg, args) -> int:
    code = cmd_stop(cfg, args)
    if code != EXIT_OK:
        return code
    return cmd_start(cfg, args)


def unit_text(cfg) -> str:
    """The shipped systemd user unit with this machine's command line in ExecStart."""
    template = resources.files("escale").joinpath("data/escale.service").read_text()
    return template.replace("@EXEC@", " ".join(shlex.quote(a) for a in daemon_command(cfg)))


def cmd_service(cfg, args) -> int:
    text = unit_text(cfg)
    if args.print:
        sys.stdout.write(text)
        return EXIT_OK
    unit_dir = Path(args.unit_dir) if args.unit_dir else Path(platformdirs.user_config_dir("systemd")) / "user"
    unit_dir.mkdir(parents=True, exist_ok=True)
    unit = unit_dir / "escale.service"
    unit.write_text(text)
    print(f"wrote {unit}")
    print("to start it now and at every login:\n"
          "  systemctl --user daemon-reload\n"
          "  systemctl --user enable --now escale\n"
          "(to keep it running while you are logged out: loginctl enable-linger)")
    return EXIT_OK


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="backslashreplace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
