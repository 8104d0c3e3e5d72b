"""``escale``: run the repositories of a configuration file.

Exit codes (docs/configuration.md, "Exit codes"):

- 0: all fine; in daemon mode also a stop asked by SIGTERM or SIGINT (the object in
  flight was finished or rolled back);
- 1: some files failed; 2: relay unreachable or failing; 3: configuration error;
- 4: already running (another daemon on this configuration file, or another process
  on one of its repositories);
- 5: ``--once`` interrupted by SIGTERM/SIGINT, or a daemon aborted by a second signal
  (safe: the next run finishes or rolls back what was interrupted).

Signals in daemon mode: SIGTERM/SIGINT stop after the object in flight; a second one
aborts at once; SIGHUP reloads the configuration file (repositories added, removed or
changed are started, stopped or restarted; the others go on undisturbed).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from .. import __version__
from ..errors import (EXIT_CONFIG, EXIT_FILES_FAILED, EXIT_OK, EXIT_RELAY, EXIT_TERMINATED, AlreadyRunning,
                      ConfigError, EscaleError, Terminated)
from .logs import setup_logging

if TYPE_CHECKING:  # the rest loads after the arguments are parsed: 'escale --version' stays light
    from ..alert import ErrorCommand
    from ..config import RepositoryConfig
    from ..manager import CycleReport, Manager

log = logging.getLogger("escale")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="escale", description="Keep folders in sync through a relay.",
                                epilog="New here? 'escale init' (or 'escale -i') writes a configuration file.")
    p.add_argument("-c", "--config", help="configuration file (default: ~/.config/escale/escale.conf, "
                                          "~/.escale/escale.conf, /etc/escale.conf)")
    p.add_argument("-r", "--repository", action="append", default=[], metavar="NAME",
                   help="run only this repository (section); repeatable")
    p.add_argument("--once", action="store_true", help="run one cycle per repository, print a summary, exit")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="more detail on the console: -v escale's decisions, -vv the libraries' too")
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on the console")
    p.add_argument("--version", action="version", version=f"escale {__version__}")
    return p


def select(cfg, names: list[str]):
    if not names:
        return list(cfg.repositories.values())
    missing = [n for n in names if n not in cfg.repositories]
    if missing:
        raise ConfigError(f"no repository named {', '.join(missing)} (sections: "
                          f"{', '.join(cfg.repositories) or 'none'})", path=cfg.path)
    return [cfg.repositories[n] for n in names]


def exit_code(reports: list[CycleReport]) -> int:
    if any(r.relay_error for r in reports):
        return EXIT_RELAY
    if any(r.errors for r in reports):
        return EXIT_FILES_FAILED
    return EXIT_OK


def _verbosity(args, repositories=()) -> int:
    """The console's level: -q / -v on the command line, else the highest ``verbosity`` of
    the repositories run (0: warnings only, 1: the default, 2 or more: debug)."""
    if args.quiet:
        return -1
    if args.verbose or not repositories:
        return args.verbose
    return max(r.verbosity for r in repositories) - 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["init"], ["-i"]):  # the set-up wizard (escale 0.7: escale -i)
        from .init import main as init_main

        setup_logging(-1)
        return init_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(_verbosity(args))
    from ..config import find_config, load_config
    from ..journal import log_cycle
    try:
        try:
            path = find_config(args.config)
        except ConfigError as exc:
            if args.config is None:
                raise ConfigError(f"{exc.detail}; to write one, run: escale init") from None
            raise
        cfg = load_config(path)
        g = cfg.globals
        chosen = select(cfg, args.repository)
        setup_logging(_verbosity(args, chosen), g.log_file, g.log_level, g.log_rotate, g.log_format)
        if args.once:
            managers = [_manager(r, args) for r in chosen]
            alerts = [_alert(r) for r in chosen]
            for m, alert in zip(managers, alerts):
                m.observers.append(lambda report: log_cycle(report, summary=False))
                if alert is not None:
                    m.observers.append(alert)
            try:
                return run_once(managers, _stopper(managers), alerts)
            finally:
                for alert in alerts:
                    if alert is not None:
                        alert.join()
        return Daemon(Path(path), args).run(chosen)
    except AlreadyRunning as exc:
        print(f"escale: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"escale: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _manager(r: RepositoryConfig, args) -> Manager:
    from ..manager import Manager

    m = Manager.from_config(r)
    m.progress = sys.stderr.isatty() and not args.quiet  # progress bars for long transfers, in a terminal
    return m


def _alert(r: RepositoryConfig) -> ErrorCommand | None:
    from ..alert import ErrorCommand

    return ErrorCommand(r.on_error, r.name, r.config_path) if r.on_error else None


def _stopper(managers: list[Manager]) -> threading.Event:
    stopped = threading.Event()

    def on_signal(signum, _frame):
        log.warning("received %s: finishing the object in progress, then stopping", signal.Signals(signum).name)
        stopped.set()
        for m in managers:
            m.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stopped


def run_once(managers: list[Manager], stopped: threading.Event, alerts: list | None = None) -> int:
    """One cycle of each repository; one that refuses to run (e.g. its folder is
    missing) does not stop the others. The exit code is the most serious one."""
    reports = []
    failed = []
    for i, m in enumerate(managers):
        if stopped.is_set():
            break
        try:
            report = m.run(once=True)
        except Terminated:
            print(f"{m.name}: terminated", file=sys.stderr)
            return EXIT_TERMINATED
        except EscaleError as exc:
            print(f"escale: {exc}", file=sys.stderr)
            failed.append(exc.exit_code)
            if alerts and alerts[i] is not None:
                alerts[i].failed(str(exc), exc.exit_code)
            continue
        print(report.summary())
        reports.append(report)
    if stopped.is_set():
        return EXIT_TERMINATED
    return max([exit_code(reports), *failed])


@dataclass
class Running:
    """One repository's thread in the daemon."""

    config: RepositoryConfig
    manager: Manager
    thread: threading.Thread
    failure: list[EscaleError] = field(default_factory=list)


class Daemon:
    """The repositories of one configuration file, each in its thread; the main
    thread waits for signals (stop, abort, reload)."""

    def __init__(self, config_path: Path, args):
        self.config_path, self.args = config_path, args
        self.running: dict[str, Running] = {}
        self.stopping = threading.Event()
        self.reload_asked = threading.Event()

    # -- signals ---------------------------------------------------------------------------
    def _on_stop(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.stopping.is_set():  # the second one: stop now; the next run rolls back
            os.write(2, f"escale: received {name} again: aborting now\n".encode())
            os._exit(EXIT_TERMINATED)
        log.warning("received %s: finishing or rolling back the object in progress, then stopping "
                    "(send it again to abort at once)", name)
        self.stopping.set()
        for r in list(self.running.values()):
            r.manager.stop.set()

    def _on_hup(self, _signum, _frame) -> None:
        self.reload_asked.set()

    # -- repositories ----------------------------------------------------------------------
    def _start(self, rc: RepositoryConfig) -> None:
        from ..journal import log_cycle
        from ..status import StatusPublisher

        m = _manager(rc, self.args)
        m.observers.append(log_cycle)
        m.meter = StatusPublisher(m)
        m.observers.append(m.meter)
        alert = _alert(rc)
        if alert is not None:
            m.observers.append(alert)
        failure: list[EscaleError] = []

        def work() -> None:
            try:
                m.run()
            except Terminated:
                pass
            except EscaleError as exc:
                log.error("%s", exc)
                failure.append(exc)
                if alert is not None:
                    alert.failed(f"stopped: {exc}", exc.exit_code)

        running = Running(rc, m, threading.Thread(target=work, name=rc.name, daemon=True), failure)
        self.running[rc.name] = running
        running.thread.start()

    def _stop(self, name: str) -> None:
        r = self.running.pop(name)
        r.manager.stop.set()
        while r.thread.is_alive():
            r.thread.join(0.5)

    def reload(self) -> None:
        """Re-read the configuration file: start the new repositories, stop the
        removed ones, restart the changed ones; a file that does not load changes
        nothing (the error is logged)."""
        from ..config import load_config

        try:
            cfg = load_config(self.config_path)
            wanted = {r.name: r for r in select(cfg, self.args.repository)}
        except ConfigError as exc:
            log.error("configuration not reloaded (the repositories go on as they were): %s", exc)
            return
        g = cfg.globals
        setup_logging(_verbosity(self.args, wanted.values()), g.log_file, g.log_level, g.log_rotate, g.log_format)
        for name in list(self.running):
            if name not in wanted:
                self._stop(name)
                log.info("%s: stopped (no longer in the configuration)", name)
            elif wanted[name] != self.running[name].config or not self.running[name].thread.is_alive():
                self._stop(name)
                log.info("%s: restarting with its new configuration", name)
        for name, rc in wanted.items():
            if name not in self.running:
                try:
                    self._start(rc)
                except ConfigError as exc:
                    log.error("%s: not started: %s", name, exc)
                    continue
                log.info("%s: started", name)
        log.info("configuration reloaded from %s (%d repositories)", self.config_path, len(self.running))

    def run(self, repositories: list[RepositoryConfig]) -> int:
        from .pidfile import DaemonLock

        lock = DaemonLock(self.config_path)
        lock.acquire()
        try:
            signal.signal(signal.SIGTERM, self._on_stop)
            signal.signal(signal.SIGINT, self._on_stop)
            signal.signal(signal.SIGHUP, self._on_hup)
            for rc in repositories:
                self._start(rc)
            log.info("escale %s: running %d repositories from %s (pid %d)", __version__, len(repositories),
                     self.config_path, os.getpid())
            while not self.stopping.is_set():
                if self.reload_asked.is_set():
                    self.reload_asked.clear()
                    self.reload()
                if not any(r.thread.is_alive() for r in self.running.values()):
                    break
                self.stopping.wait(0.2)
            for r in list(self.running.values()):
                while r.thread.is_alive():
                    r.thread.join(0.5)
        finally:
            lock.release()
        failures = [f for r in self.running.values() for f in r.failure]
        if failures:
            return max(f.exit_code for f in failures)
        if self.stopping.is_set():
            log.info("stopped")
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
