"""Idle cost of escale: CPU and memory of an idle ``--once``, relay requests per idle cycle,
start-up of an encrypted repository, ``escale --version``; side by side with rclone.

    python bench/bench_idle.py [--files N] [--tmp DIR] [--only idle|scale|startup|requests]
                               [--code DIR ...] [--scale-files N]

- idle ``--once`` with N files (file:// relay, encryption off): CPU (user + system) and peak
  RSS of the process, from wait4(); the peer is ``rclone sync --dry-run`` of the same folder
  to a copy of itself (what rclone does to find that nothing changed).
- ``--only scale``: memory per file: the first push of ``--scale-files`` (default 1,000,000)
  tiny files from A, the first pull into B, A's next run (it writes its snapshot of the
  whole base and collects the updates B acknowledged), then an idle ``--once`` of A; CPU
  and peak RSS of each (one run each: the first sync of a million files takes many minutes).
- ``--code DIR`` (repeatable): run escale from these source trees (PYTHONPATH) instead of
  this one, one after the other on the same data: before / after figures from one run.
- start-up of an encrypted repository (scrypt passphrase), first run and later runs, 10 files;
  ``escale --version``.
- relay requests per idle cycle and at start-up, counted inside one process: calls to the
  file:// backend's methods, HTTP requests sent by requests (WebDAV, wsgidav). Counts are
  deterministic; tests/test_idle_requests.py asserts them.

Each figure is the min / median of ``--runs`` runs (default 3). The machine is shared:
wall times are noisy, CPU times less so.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from harness import step as measure  # noqa: E402

PYCACHE = os.path.join(tempfile.gettempdir(), f"escale-bench-pycache-{os.getuid()}")


def runs(cmd, n, env=None) -> str:
    got = [measure(cmd, env) for _ in range(n)]
    walls, cpus, rss = zip(*got)
    return (f"wall {min(walls):.2f} / {statistics.median(walls):.2f} s, CPU {min(cpus):.2f} / "
            f"{statistics.median(cpus):.2f} s, peak RSS {min(rss)} / {int(statistics.median(rss))} MiB")


def make_files(folder: Path, n: int) -> None:
    for i in range(n):
        d = folder / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.txt").write_bytes(b"x%d\n" % i)


def conf(work: Path, name: str, folder: Path, relay: str, extra: str = "encryption = off\n") -> Path:
    c = work / f"{name}.conf"
    c.write_text(f"cache dir = {work}/state-{name}\n[bench]\nlocal path = {folder}\nrelay address = {relay}\n"
                 f"client name = {name}\n{extra}")
    c.chmod(0o600)
    return c


def idle_once(work: Path, n: int, nruns: int, codes: list[Path]) -> None:
    a = work / "A"
    make_files(a, n)
    c = conf(work, "A", a, f"file://{work}/relay")
    esc = [sys.executable, "-m", "escale", "-q", "--once", "-c", str(c)]
    measure(esc, _env(codes[0]))  # the first sync
    for code in codes:
        env = _env(code)
        measure(esc, env)  # a first idle run of this code (a state of another version is migrated)
        print(f"| idle --once, {n} files, file:// | escale ({_name(code)}) | {runs(esc, nruns, env)} |")
    if shutil.which("rclone"):
        copy = work / "copy"
        subprocess.run(["rclone", "--config", "/dev/null", "copy", str(a), str(copy)], check=True)
        rc = ["rclone", "--config", "/dev/null", "sync", "--dry-run", str(a), str(copy)]
        print(f"| idle --once, {n} files, file:// | rclone sync --dry-run | {runs(rc, nruns)} |")


def scale(work: Path, n: int, code: Path) -> None:
    """First push, first pull and an idle run with ``n`` files: memory per file."""
    a, b = work / "A", work / "B"
    make_files(a, n)
    b.mkdir()
    env = _env(code)
    ca = conf(work, "A", a, f"file://{work}/relay")
    cb = conf(work, "B", b, f"file://{work}/relay")
    # A's first run after B's pull is no idle run: every update is acknowledged, so A
    # writes its snapshot (the whole base) and collects them; the idle run comes after
    for what, c in (("first push", ca), ("first pull", cb), ("collect (snapshot)", ca), ("idle", ca)):
        wall, cpu, rss = measure([sys.executable, "-m", "escale", "-q", "--once", "-c", str(c)], env)
        print(f"| {what}, {n} files, file:// | escale ({_name(code)}) | wall {wall:.1f} s, CPU {cpu:.1f} s, "
              f"peak RSS {rss} MiB ({rss * 1024 / n:.2f} KiB/file) |", flush=True)


def _env(code: Path) -> dict:
    """Run ``code``'s escale as an installed copy runs: with its bytecode compiled once
    (kept under a temporary prefix, never in the source tree), not recompiled every run."""
    env = dict(os.environ, PYTHONPATH=str(code), PYTHONPYCACHEPREFIX=PYCACHE)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _name(code: Path) -> str:
    return "this tree" if code == ROOT else str(code)


def startup(work: Path, nruns: int) -> None:
    a = work / "E"
    make_files(a, 10)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    c = conf(work, "E", a, f"file://{work}/relay-e", "passphrase = text:bench passphrase\n")
    esc = [sys.executable, "-m", "escale", "-q", "--once", "-c", str(c)]
    print(f"| encrypted --once, first run (creates) | escale | {runs(esc[:], 1, env)} |")
    print(f"| encrypted --once, later runs | escale | {runs(esc, nruns, env)} |")
    print(f"| escale --version | escale | {runs([sys.executable, '-m', 'escale', '--version'], nruns, env)} |")
    if shutil.which("rclone"):
        print(f"| rclone version | rclone | {runs(['rclone', 'version'], nruns)} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--scale-files", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--only", choices=("startup", "idle", "scale", "requests"), action="append")
    ap.add_argument("--code", type=Path, action="append", help="an escale source tree to measure")
    args = ap.parse_args()
    os.chdir("/")  # python -m escale puts the working folder first on sys.path: only PYTHONPATH may choose
    only = set(args.only or ("startup", "idle", "requests"))  # scale (a million files) when asked
    codes = [c.resolve() for c in args.code] if args.code else [ROOT]
    print("| what | tool | min / median |")
    print("|---|---|---|")
    if "startup" in only:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            startup(Path(tmp), args.runs)
    if "idle" in only:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            idle_once(Path(tmp), args.files, args.runs, codes)
    if "scale" in only:
        for code in codes:
            with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                scale(Path(tmp), args.scale_files, code)
    if "requests" in only:
        from idle_requests import count_idle  # tests/idle_requests.py: the counting the tests assert on
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            for kind in ("file", "wsgidav"):
                start, idle = count_idle(Path(tmp) / kind, kind, files=20)
                print(f"| requests, {kind} | escale | start-up + first cycle {sum(start.values())} "
                      f"({_fmt(start)}); idle cycle {sum(idle.values())} ({_fmt(idle)}) |")
    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


if __name__ == "__main__":
    main()
