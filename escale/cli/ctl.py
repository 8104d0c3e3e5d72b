"""``escalectl``: inspect and control repositories without running a sync.

- ``access [-r NAME] FILE [MODIFIERS…]``: show or set per-file flags (escale 0.7's
  ``r+``/``r-``/``r?`` = may/may not be uploaded, ``w…`` = may be written locally).
- ``status [-r NAME] [--json]``: the daemon, and per repository its members (mode, latest
  signed activity, updates pending), files waiting to arrive, relay usage vs quota, the
  daemon's last cycle and transfer in progress (escale/status.py).
- ``start | stop | restart | reload``: the background daemon of this configuration file;
  ``service install``: the systemd user unit (escale/cli/service.py).
- ``forget [-r NAME] CLIENT``: stop waiting for a client that will not come back
  (never the member running it: its other cards under the same name go).
- ``confirm-deletes [-r NAME] [--dry-run]``: show the local deletions the mass-deletion
  guard holds back, and let the next cycle publish them.
- ``backup [-r NAME] ARCHIVE`` / ``restore [-r NAME] [--force] ARCHIVE``: the relay's
  objects to a tar archive and back (:mod:`escale.backup`).
- ``drive-auth [-r NAME] [--headless]``: authorize a Google Drive relay (escale/cli/driveauth.py).
- ``check [-r NAME] [--read-data]``: verify every object on the relay, report every
  problem by name (:mod:`escale.check`); exit 1 if there is any.
- ``migrate [-r NAME] [--dry-run] DESTINATION``: move the repository to another relay
  while the other clients keep running (:mod:`escale.migrate`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import __version__
from ..access import AccessAttributes, parse_modifiers
from ..names import shown
from ..config import load_config
from ..errors import EXIT_CONFIG, EXIT_FILES_FAILED, EXIT_OK, ConfigError, EscaleError
from ..private import private_dir
from . import driveauth
from .daemon import select
from .logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="escalectl", description="Control escale repositories.")
    p.add_argument("-c", "--config", help="configuration file (default: the standard search)")
    p.add_argument("--version", action="version", version=f"escalectl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("access", help="show or set a file's r/w flags")
    a.add_argument("-r", "--repository", metavar="NAME", help="repository (section) of the file")
    a.add_argument("resource", help="file, relative to the synced folder or absolute")
    a.add_argument("modifiers", nargs="*", help="e.g. r- (never upload), w- (never overwrite), r?w? (unset)")
    s = sub.add_parser("status", help="the daemon, members, pending updates, files waiting, relay usage")
    s.add_argument("-r", "--repository", action="append", default=[], metavar="NAME")
    s.add_argument("--json", action="store_true", help="one JSON document (schema: docs/running.md)")
    for name, what in (("start", "start the escale daemon in the background"),
                       ("stop", "stop the daemon (after the object in flight)"),
                       ("restart", "stop the daemon, then start it"),
                       ("reload", "make the daemon re-read its configuration file (SIGHUP)")):
        c = sub.add_parser(name, help=what)
        c.add_argument("-r", "--repository", action="append", default=[], metavar="NAME",
                       help="(start) run only this repository; repeatable")
        c.add_argument("--timeout", type=float, default=120.0, help="(stop) seconds to wait (default 120)")
    v = sub.add_parser("service", help="install the systemd user unit that runs escale at login")
    v.add_argument("action", choices=["install"])
    v.add_argument("--unit-dir", help="folder for escale.service (default ~/.config/systemd/user)")
    v.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    f = sub.add_parser("forget", help="stop waiting for a client that will not come back")
    f.add_argument("-r", "--repository", action="append", default=[], metavar="NAME")
    f.add_argument("client", help="the client name (as in its 'client name' option)")
    d = sub.add_parser("confirm-deletes", help="show the deletions held back by 'max delete' and publish them")
    d.add_argument("-r", "--repository", action="append", default=[], metavar="NAME")
    d.add_argument("-n", "--dry-run", action="store_true", help="only show what is held back")
    b = sub.add_parser("backup", help="save the relay's objects to a tar archive (.tar, .tar.gz, .tar.bz2, .tar.xz)")
    b.add_argument("-r", "--repository", metavar="NAME", help="repository (section); needed if there are several")
    b.add_argument("archive", help="archive to create; without a tar ending, .tar.bz2 is appended")
    r = sub.add_parser("restore", help="put the objects of a backup archive back on the relay")
    r.add_argument("-r", "--repository", metavar="NAME", help="repository (section); needed if there are several")
    r.add_argument("--force", action="store_true", help="write over a relay that is not empty")
    r.add_argument("archive", help="archive made by escalectl backup")
    k = sub.add_parser("check", help="verify every object on the relay (signatures, chains, sizes; "
                                     "--read-data: every byte)")
    k.add_argument("-r", "--repository", action="append", default=[], metavar="NAME")
    k.add_argument("--read-data", action="store_true", help="read every object whole: AEAD, file digests, "
                                                            "snapshot entries")
    k.add_argument("-v", "--verbose", action="store_true", help="also show notes (members not met yet, uploads "
                                                                "in progress)")
    driveauth.add_parser(sub)
    m = sub.add_parser("migrate", help="move the repository to another relay (every object copied as is)")
    m.add_argument("-r", "--repository", metavar="NAME", help="repository (section); needed if there are several")
    m.add_argument("-n", "--dry-run", action="store_true", help="only say what would be copied")
    m.add_argument("destination", help="a relay address, another section's name, or a configuration file")
    return p


def cmd_migrate(cfg, args) -> int:
    from ..config.relocate import destination_for, open_relay, record_move
    from ..manager import Manager
    from ..migrate import migrate

    repo = _one(cfg, args.repository)
    dest = destination_for(repo, args.destination, cfg)
    manager = Manager.from_config(repo)
    rep = migrate(manager, open_relay(dest.config), quota=dest.config.quota, dry_run=args.dry_run)
    if rep.dry_run:
        print(f"{repo.name}: would copy {len(rep.would_copy)} object(s), {rep.bytes} bytes, to {rep.destination}"
              f"{f' ({rep.present} already copied)' if rep.present else ''}")
        for name in rep.would_copy:
            print(f"  {name}")
        return EXIT_OK
    record_move(manager.ctx, dest.config, dest.options)
    print(f"{repo.name}: moved to {rep.destination}: {rep.copied} object(s) copied ({rep.bytes} bytes, each "
          f"checked), {rep.dropped} collected meanwhile, {rep.passes} listing(s); the old relay keeps only the "
          f"notice{f'; {repo.config_path} updated' if repo.config_path else ''}")
    return EXIT_OK


def cmd_check(cfg, args) -> int:
    from ..check import check
    from ..manager import Manager

    code = EXIT_OK
    for repo in select(cfg, args.repository):
        try:
            rep = check(Manager.from_config(repo), read_data=args.read_data)
        except EscaleError as exc:
            print(f"escalectl: {repo.name}: {exc}", file=sys.stderr)
            code = max(code, exc.exit_code)
            continue
        for p in rep.problems:
            print(f"{repo.name}: {p}")
        if args.verbose:
            for n in rep.notes:
                print(f"{repo.name}: note: {n}")
        what = "every byte read" if args.read_data else "headers, sizes and small objects read"
        verdict = "no problem found" if rep.ok else f"{len(rep.problems)} problem(s)"
        print(f"{repo.name}: checked {rep.objects} object(s) ({what}, {rep.read} bytes): {verdict}")
        if not rep.ok:
            code = max(code, EXIT_FILES_FAILED)
    return code


def _one(cfg, name: str | None):
    """The one repository a command acts on: named with -r, or the only section."""
    repos = select(cfg, [name] if name else [])
    if len(repos) != 1:
        raise ConfigError(f"{'no repository' if not repos else 'several repositories'} in the configuration "
                          f"({', '.join(r.name for r in repos) or 'none'}): name one with -r", path=cfg.path)
    return repos[0]


def _relay(repo):
    """The repository's relay, built exactly as the daemon builds it."""
    from ..manager import Manager

    return Manager.from_config(repo).relay


def cmd_backup(cfg, args) -> int:
    from ..backup import backup

    repo = _one(cfg, args.repository)
    relay = _relay(repo)
    with relay:
        rep = backup(relay, args.archive)
    note = " (the relay was still changing: each object as it was when read)" if rep.unsettled else ""
    print(f"{repo.name}: saved {rep.objects} object(s), {rep.bytes} bytes, to {rep.archive}{note}")
    return EXIT_OK


def cmd_restore(cfg, args) -> int:
    from ..backup import restore

    repo = _one(cfg, args.repository)
    relay = _relay(repo)
    with relay:
        rep = restore(relay, args.archive, force=args.force)
    extra = f", {rep.present} already there" if rep.present else ""
    extra += f", {len(rep.replaced)} replaced" if rep.replaced else ""
    print(f"{repo.name}: restored {rep.objects} object(s), {rep.bytes} bytes, from {rep.archive}{extra}; "
          "every object checked against the archive's manifest")
    return EXIT_OK


def _locate(cfg, resource: str, name: str | None):
    """(repository config, relative path) for a file named by the user."""
    repos = select(cfg, [name] if name else [])
    matches = []
    for r in repos:
        root = Path(r.local_path)
        p = Path(resource)
        if p.is_absolute():
            try:
                rel = p.resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                continue
        else:
            rel = p.as_posix()
            if not name and not (root / rel).exists():
                continue
        matches.append((r, rel))
    if not matches:
        raise ConfigError(f"'{resource}' is in no repository's folder" if not name else
                          f"'{resource}' is not inside [{name}]'s folder", path=cfg.path)
    if len(matches) > 1:
        raise ConfigError(f"'{resource}' is in several repositories ({', '.join(r.name for r, _ in matches)}); "
                          "name one with -r", path=cfg.path)
    return matches[0]


def cmd_access(cfg, args) -> int:
    repo, rel = _locate(cfg, args.resource, args.repository)
    try:
        changes = parse_modifiers(args.modifiers)
    except ValueError as exc:
        print(f"escalectl: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    state, _marker = repo.identity().resolve()  # the flags follow the folder, not this file
    private_dir(state)
    with AccessAttributes(state / "access.db") as table:
        if "r" in changes:
            table.setReadability(rel, changes["r"])
        if "w" in changes:
            table.setWritability(rel, changes["w"])
        print(f"{repo.name}: {shown(rel)}: {table.table(rel)}")
    return EXIT_OK


def cmd_status(cfg, args) -> int:
    import json

    from ..status import gather
    from .pidfile import DaemonLock

    daemon = DaemonLock(cfg.path).holder() if cfg.path is not None else None
    doc = gather(cfg, select(cfg, args.repository), daemon)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        _print_status(doc)
    return max([EXIT_OK] + [EXIT_FILES_FAILED for r in doc["repositories"] if r["error"]])


def _print_status(doc: dict) -> None:
    for r in doc["repositories"]:
        if r["error"]:
            print(f"escalectl: {r['name']}: {r['error']}", file=sys.stderr)
        usage = r["relay_usage"]
        if usage is not None:
            quota = f" of {usage['quota']} quota ({usage['percent']} %)" if usage["quota_bytes"] else ""
            told = [f"{_size(usage[k])} {w}" for k, w in (("storage_used_bytes", "used"),
                    ("storage_available_bytes", "available")) if usage.get(k) is not None]
            storage = f" (the relay's storage reports {', '.join(told)})" if told else ""
            print(f"[{r['name']}] relay {r['relay']}: {usage['used']} in use{quota}{storage}")
            print(f"  repository id {r['repository_id']}")
        else:
            print(f"[{r['name']}] relay {r['relay']}: not reachable")
        for m in r["members"]:
            tag = " (this client)" if m["this_client"] else ""
            take = f", {m['updates_to_take']} to take" if m.get("updates_to_take") is not None else ""
            print(f"  {m['name']:<20} {m['mode']:<12} {m['updates_on_relay']} update(s) pending{take}, "
                  f"last signed activity {_when(_parse_iso(m['last_activity']))}{tag}")
        waiting = r["files_waiting"]
        if waiting["count"]:
            print(f"  waiting for the contents of {waiting['count']} file(s)")
            for f in waiting["files"][:10]:
                print(f"    {shown(f['path'])} (from {f['from']})")
        if r["held_deletions"]:
            print(f"  {r['held_deletions']} local deletion(s) held back: see escalectl confirm-deletes -r {r['name']}")
        if r["local_changes_unpublished"]:
            print(f"  {r['local_changes_unpublished']} local change(s) not published yet")
        cycle = r["last_cycle"]
        if cycle:
            stale = "" if r["daemon_status"] == "live" else f" ({r['daemon_status']})"
            print(f"  last cycle {_when(_parse_iso(cycle['finished']))}: {cycle['result']}, {cycle['sent']} sent, "
                  f"{cycle['received']} received{stale}")
        t = r["transfer"]
        if t:
            pct = 100 * t["done_bytes"] // max(1, t["total_bytes"])
            print(f"  {'sending' if t['direction'] == 'send' else 'receiving'} {shown(t['path'])}: {pct} % "
                  f"of {_size(t['total_bytes'])}")
    d = doc["daemon"]
    print(f"escale daemon: running (pid {d['pid']})" if d["running"] else "escale daemon: not running")


def _size(n: int) -> str:
    from ..status import human_size

    return human_size(n) or "?"


def _parse_iso(text: str | None) -> float | None:
    import calendar

    if not text:
        return None
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def _when(t: float | None) -> str:
    """A member's last signed activity, in UTC and as an age: an age that keeps growing
    while that member runs means the relay is hiding it (or it is offline)."""
    if t is None:
        return "unknown"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    age = max(0, int(time.time() - t))
    ago = f"{age} s" if age < 120 else f"{age // 60} min" if age < 7200 else f"{age // 3600} h"
    return f"{stamp} ({ago} ago)"


def cmd_forget(cfg, args) -> int:
    from ..manager import Manager

    code = EXIT_OK
    for repo in select(cfg, args.repository):
        try:
            removed = Manager.from_config(repo).forget(args.client)
        except EscaleError as exc:
            print(f"escalectl: {repo.name}: {exc}", file=sys.stderr)
            code = max(code, exc.exit_code)
            continue
        mine = " (never this client itself)" if args.client == repo.client_name else ""
        print(f"{repo.name}: forgot {len(removed)} member(s) named {args.client}{mine}")
        if not removed:
            code = max(code, EXIT_FILES_FAILED)
    return code


def cmd_confirm_deletes(cfg, args) -> int:
    from ..deletions import CONFIRMED_KEY, HELD_KEY, dump_paths, load_paths
    from ..marker import read_marker
    from ..state import State

    for repo in select(cfg, args.repository):
        where = repo.identity()
        if read_marker(where.root) is None:
            print(f"{repo.name}: nothing held back (the folder has not been synced here)")
            continue
        state_dir, _marker = where.resolve()
        if not (state_dir / "state.sqlite").exists():
            print(f"{repo.name}: nothing held back")
            continue
        state = State(state_dir)
        try:
            held = load_paths(state.get(HELD_KEY))
            if not held:
                print(f"{repo.name}: nothing held back")
                continue
            print(f"{repo.name}: {len(held)} deletion(s) held back:")
            for path in held:
                print(f"  {path}")
            if args.dry_run:
                continue
            with state.transaction():
                state.set(CONFIRMED_KEY, dump_paths(sorted(set(held) | set(load_paths(state.get(CONFIRMED_KEY))))))
            print(f"{repo.name}: confirmed; the next cycle publishes these deletions")
        finally:
            state.close()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(-1)
    try:
        cfg = load_config(args.config)
        from . import service

        return {"access": cmd_access, "status": cmd_status, "forget": cmd_forget,
                "confirm-deletes": cmd_confirm_deletes, "backup": cmd_backup, "restore": cmd_restore,
                "check": cmd_check, "migrate": cmd_migrate, "start": service.cmd_start, "stop": service.cmd_stop,
                "restart": service.cmd_restart, "reload": service.cmd_reload, "service": service.cmd_service,
                "drive-auth": driveauth.cmd_drive_auth}[args.command](cfg, args)
    except ConfigError as exc:
        print(f"escalectl: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EscaleError as exc:
        print(f"escalectl: {exc}", file=sys.stderr)
        return exc.exit_code or EXIT_FILES_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
