"""What every benchmark here shares: run a step as its own process and measure it,
make test data, compare trees; for the side-by-side ones, the escale and rclone steps and
the loop over cases and tools."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def run(cmd: list[str], env=None) -> tuple[float, int, float]:
    """(seconds, peak RSS in MiB, CPU seconds) of one command: wall time and memory first, as
    the tables print them; the CPU time (user + system) for bench/run.py's figures."""
    wall, cpu, rss = step(cmd, env)
    return wall, rss, cpu


def step(cmd: list[str], env=None) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS in MiB) of one command; peak RSS is the kernel's maxrss for
    that child (os.wait4). Run benchmarks from a small process: a child's maxrss starts at
    its parent's size when it was forked."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _pid, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{p.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024


def make_small(folder: Path, n: int) -> int:
    """n files of 4 KiB of random bytes, 500 per folder; returns the bytes written."""
    for i in range(n):
        d = folder / f"d{i // 500:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(4096))
    return n * 4096


def make_big(folder: Path, size: int, name: str = "big.bin") -> int:
    """One file of ``size`` bytes (random 1 MiB block repeated); returns size."""
    folder.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with open(folder / name, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    return size


def same_tree(a: Path, b: Path) -> bool:
    r = subprocess.run(["diff", "-rq", "--exclude=.escale", str(a), str(b)], capture_output=True)
    return r.returncode == 0


def print_table(rows: list[tuple[str, str, dict]], where: str = "relay") -> None:
    """The Markdown results table: (data, tool, {"push": (s, MiB), "pull": (s, MiB)}) rows;
    with several runs, times are "min / median" and memory the median."""
    print(f"| data | tool | A → {where} (s) | {where} → B (s) | peak RSS push / pull (MiB) |")
    print("|---|---|---|---|---|")
    for label, tool, r in rows:
        push, pull = _spread(r, "push"), _spread(r, "pull")
        print(f"| {label} | {tool} | {push} | {pull} | {r['push'][1]} / {r['pull'][1]} |")


def _spread(r: dict, side: str) -> str:
    walls = [one[side][0] for one in r.get("runs", [r])]
    if len(walls) == 1:
        return f"{walls[0]:.2f}"
    return f"{min(walls):.2f} / {statistics.median(walls):.2f}"


# The side-by-side benchmarks (escale against rclone through one relay) share the rest:
# the command line, the two data sets, the A → relay → B pair of steps for each tool, the
# loop over cases and tools, and the closing version line.

ROOT = Path(__file__).resolve().parent.parent


class _Parser(argparse.ArgumentParser):
    """Keeps the parsed ``--runs`` and ``--json`` in OPTIONS, so that ``measure`` repeats and
    records without every benchmark passing them along."""

    def parse_args(self, *a, **kw):  # type: ignore[override]
        ns = super().parse_args(*a, **kw)
        OPTIONS.update(runs=ns.runs, json=ns.json)
        return ns


OPTIONS: dict = {"runs": 1, "json": None}


def arguments(big: int, big_unit: str = "MB (10^6 bytes)") -> argparse.ArgumentParser:
    """The options every side-by-side benchmark takes; a bench adds its own."""
    ap = _Parser()
    ap.add_argument("--small", type=int, default=5000, help="number of 4 KiB files")
    ap.add_argument("--big", type=int, default=big, help=f"size of the big file in {big_unit}")
    ap.add_argument("--tmp", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--runs", type=int, default=1,
                    help="runs of each case and tool (tables show min / median); tools alternate run by run")
    ap.add_argument("--json", default=None, metavar="FILE",
                    help="also append every run's figures to FILE, one JSON object a line (bench/run.py)")
    return ap


def size_cases(small: int, big: int, mib: bool = False, only: str | None = None) -> list[tuple[str, Callable]]:
    """(label, make(folder) -> bytes) for ``small`` 4 KiB files and one ``big`` MB (or MiB) file;
    ``only`` ("small" or "big") keeps one of them."""
    cases = [(f"{small} × 4 KiB files", lambda f: make_small(f, small)),
             (f"one {big} MiB file", lambda f: make_big(f, big << 20)) if mib else
             (f"one {big} MB file", lambda f: make_big(f, big * 10**6))]
    if only:
        cases = [cases[0 if only == "small" else 1]]
    return cases


def need(*tools: tuple[str, str]) -> None:
    """Stop with the pip package to install when a (command, package) is not on PATH."""
    for tool, package in tools:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: pip install {package}")


def escale_pair(work: Path, make, address: str, extra: str = "", encryption: str = "off",
                env: dict | None = None) -> dict:
    """Machine A pushes ``make``'s data to ``address``, machine B pulls it; ``extra`` is more
    repository lines (credentials…). A and B have each run once before the data is made, as
    running peers would have (A made the repository, B joined; each derived its key and kept
    it): the two steps measure a sync, not a first start, which bench_idle.py measures."""
    a, b = work / "A", work / "B"
    a.mkdir()
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT))
    confs = {}
    for name, folder in (("A", a), ("B", b)):
        conf = work / f"{name}.conf"
        conf.write_text(f"cache dir = {work}/state-{name}\n[bench]\nlocal path = {folder}\n"
                        f"relay address = {address}\n{extra}client name = {name}\nencryption = {encryption}\n"
                        + ("passphrase = text:bench passphrase\n" if encryption != "off" else ""))
        conf.chmod(0o600)  # it may hold a password and a passphrase
        confs[name] = conf
    esc = [sys.executable, "-m", "escale", "-q", "--once", "-c"]
    run(esc + [str(confs["A"])], env)
    run(esc + [str(confs["B"])], env)
    size = make(a)
    push = run(esc + [str(confs["A"])], env)
    pull = run(esc + [str(confs["B"])], env)
    assert same_tree(a, b), "escale: trees differ"
    return {"size": size, "push": push, "pull": pull}


def obscure(secret: str) -> str:
    """rclone's own obscuring of a password for its configuration."""
    return subprocess.run(["rclone", "obscure", secret], capture_output=True, text=True,
                          check=True).stdout.strip()


def rclone_crypt_env(srv: dict[str, str], remote: str) -> dict:
    """rclone configured only through environment variables (/work/shared/servers.md section 6):
    remote ``srv`` (RCLONE_CONFIG_SRV_<key> from ``srv``) and a **crypt** remote ``c`` on ``remote``."""
    return dict(os.environ, RCLONE_CONFIG="/dev/null",
                **{f"RCLONE_CONFIG_SRV_{key}": value for key, value in srv.items()},
                RCLONE_CONFIG_C_TYPE="crypt", RCLONE_CONFIG_C_REMOTE=remote,
                RCLONE_CONFIG_C_PASSWORD=obscure("bench pw1"), RCLONE_CONFIG_C_PASSWORD2=obscure("bench pw2"))


def rclone_pair(work: Path, make, remote: str, env: dict | None = None) -> dict:
    """``rclone copy`` (4 transfers, 8 checkers) from A to ``remote``, then from it to B."""
    a, b = work / "A", work / "B"
    a.mkdir()
    size = make(a)
    rc = ["rclone", "copy", "--transfers", "4", "--checkers", "8"]
    push = run(rc + [str(a), remote], env)
    pull = run(rc + [remote, str(b)], env)
    assert same_tree(a, b), "rclone: trees differ"
    return {"size": size, "push": push, "pull": pull}


def measure(cases, tools, tmp: str | None, keep_going: bool = False,
            progress: bool = True, runs: int | None = None) -> tuple[list, list]:
    """Each tool ``fn(work)`` -> result on each case, in a fresh temporary work folder, ``runs``
    times (default: ``--runs``); the tools take turns within a run, so a burst of load on
    the shared machine falls on all of them. Returns (rows, failed): a row's result is its
    median run (peak RSS, "size") with every run under "runs". ``keep_going``: a failed step
    (SystemExit from ``run``) is reported and the run goes on. With ``--json``, every run is
    appended to that file as it ends."""
    runs = runs or OPTIONS["runs"]
    got: dict[tuple[str, str], list[dict]] = {}
    failed = []
    for n in range(runs):
        for label, make in cases:
            for tool, fn in tools:
                if (label, tool) in {(f[0], f[1]) for f in failed}:
                    continue
                with tempfile.TemporaryDirectory(dir=tmp) as work:
                    try:
                        r = fn(Path(work), make)
                    except SystemExit as exc:
                        if not keep_going:
                            raise
                        print(f"{label} {tool}: FAILED: {str(exc)[-600:]}", file=sys.stderr)
                        failed.append((label, tool, str(exc).strip().splitlines()[-1][-300:]))
                        _record({"case": label, "tool": tool, "failed": failed[-1][2]})
                        continue
                got.setdefault((label, tool), []).append(r)
                _record({"case": label, "tool": tool, "run": n + 1, "size": r["size"],
                         **{f"{side}_{what}": r[side][i] for side in ("push", "pull")
                            for i, what in enumerate(("wall", "rss", "cpu")) if i < len(r[side])}})
                if progress:
                    print(f"{label} {tool}: push {r['push'][0]:.2f} s, pull {r['pull'][0]:.2f} s"
                          + (f" (run {n + 1} of {runs})" if runs > 1 else ""), file=sys.stderr)
    rows = []
    for (label, tool), results in got.items():
        row = dict(results[0])
        for side in ("push", "pull"):
            row[side] = (statistics.median(r[side][0] for r in results),
                         int(statistics.median(r[side][1] for r in results)))
        row["runs"] = results
        rows.append((label, tool, row))
    return rows, failed


def _record(obj: dict) -> None:
    if OPTIONS["json"]:
        with open(OPTIONS["json"], "a") as f:
            f.write(json.dumps(obj) + "\n")


def print_failed(failed: list[tuple[str, str, str]]) -> None:
    """Rows of the results table for the steps that failed."""
    for label, tool, reason in failed:
        print(f"| {label} | {tool} | failed: {reason} | | |")


def versions(*parts: str) -> str:
    """The closing line: Python, cores, what the bench names, then rclone's version."""
    rclone = subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.splitlines()[0]
    _record({"versions": [*parts, rclone]})
    return ", ".join((f"\nPython {sys.version.split()[0]}", f"{os.cpu_count()} cores", *parts, rclone))
