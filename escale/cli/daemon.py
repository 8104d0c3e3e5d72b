"""``escale``: run the repositories of a configuration file.

Exit codes: 0 all fine, 1 some files failed, 2 relay unreachable or failing,
3 configuration error, 4 already running, 5 terminated by SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .. import __version__
from ..config import load_config
from ..errors import (EXIT_CONFIG, EXIT_FILES_FAILED, EXIT_OK, EXIT_RELAY, EXIT_TERMINATED, ConfigError,
                      EscaleError, Terminated)
from ..manager import CycleReport, Manager
from .logs import setup_logging

log = logging.getLogger("escale")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="escale", description="Keep folders in sync through a relay.")
    p.add_argument("-c", "--config", help="configuration file (default: ~/.config/escale/escale.conf, "
                                          "~/.escale/escale.conf, /etc/escale.conf)")
    p.add_argument("-r", "--repository", action="append", default=[], metavar="NAME",
                   help="run only this repository (section); repeatable")
    p.add_argument("--once", action="store_true", help="run one cycle per repository, print a summary, exit")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="count", default=0, help="more detail on the console")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(-1 if args.quiet else args.verbose)
    try:
        cfg = load_config(args.config)
        g = cfg.globals
        setup_logging(-1 if args.quiet else args.verbose, g.log_file, g.log_level, g.log_rotate)
        managers = [Manager.from_config(r) for r in select(cfg, args.repository)]
        for m in managers:  # progress bars for long transfers, in a terminal
            m.progress = sys.stderr.isatty() and not args.quiet
    except ConfigError as exc:
        print(f"escale: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    stopped = threading.Event()

    def on_signal(signum, _frame):
        log.warning("received %s: finishing the object in progress, then stopping",
                    signal.Signals(signum).name)
        stopped.set()
        for m in managers:
            m.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if args.once:
        return run_once(managers, stopped)
    return run_forever(managers, stopped)


def run_once(managers: list[Manager], stopped: threading.Event) -> int:
    """One cycle of each repository; one that refuses to run (e.g. its folder is
    missing) does not stop the others. The exit code is the most serious one."""
    reports = []
    failed = []
    for m in managers:
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
            continue
        print(report.summary())
        reports.append(report)
    if stopped.is_set():
        return EXIT_TERMINATED
    return max([exit_code(reports), *failed])


def run_forever(managers: list[Manager], stopped: threading.Event) -> int:
    failures: list[EscaleError] = []

    def work(m: Manager) -> None:
        try:
            m.run()
        except Terminated:
            pass
        except EscaleError as exc:
            log.error("%s", exc)
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(m,), name=m.name, daemon=True) for m in managers]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.5)
    if failures:
        return max(f.exit_code for f in failures)
    return EXIT_TERMINATED if stopped.is_set() else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
