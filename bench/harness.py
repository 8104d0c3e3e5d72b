"""What every benchmark here shares: run a step as its own process and measure it,
make test data, compare trees; for the side-by-side ones, the escale and rclone steps and
the loop over cases and tools."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def run(cmd: list[str], env=None) -> tuple[float, int]:
    """(seconds, peak RSS in MiB) of one command."""
    wall, _cpu, rss = step(cmd, env)
    return wall, rss


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
    """The Markdown results table: (data, tool, {"push": (s, MiB), "pull": (s, MiB)}) rows."""
    print(f"| data | tool | A → {where} (s) | {where} → B (s) | peak RSS push / pull (MiB) |")
    print("|---|---|---|---|---|")
    for label, tool, r in rows:
        print(f"| {label} | {tool} | {r['push'][0]:.2f} | {r['pull'][0]:.2f} | "
              f"{r['push'][1]} / {r['pull'][1]} |")


# The side-by-side benchmarks (escale against rclone through one relay) share the rest:
# the command line, the two data sets, the A → relay → B pair of steps for each tool, the
# loop over cases and tools, and the closing version line.

ROOT = Path(__file__).resolve().parent.parent


def arguments(big: int, big_unit: str = "MB (10^6 bytes)") -> argparse.ArgumentParser:
    """The options every side-by-side benchmark takes; a bench adds its own."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=5000, help="number of 4 KiB files")
    ap.add_argument("--big", type=int, default=big, help=f"size of the big file in {big_unit}")
    ap.add_argument("--tmp", default=None, help="work folder (default: a temporary one)")
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
    repository lines (credentials…). B registers first, as a running peer would be."""
    a, b = work / "A", work / "B"
    a.mkdir()
    size = make(a)
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
    run(esc + [str(confs["B"])], env)
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
            progress: bool = True) -> tuple[list, list]:
    """Each tool ``fn(work)`` -> result on each case, in a fresh temporary work folder;
    returns (rows, failed). ``keep_going``: a failed step (SystemExit from ``run``) is
    reported and the run goes on."""
    rows, failed = [], []
    for label, make in cases:
        for tool, fn in tools:
            with tempfile.TemporaryDirectory(dir=tmp) as work:
                try:
                    r = fn(Path(work), make)
                except SystemExit as exc:
                    if not keep_going:
                        raise
                    print(f"{label} {tool}: FAILED: {str(exc)[-600:]}", file=sys.stderr)
                    failed.append((label, tool, str(exc).strip().splitlines()[-1][-300:]))
                    continue
            rows.append((label, tool, r))
            if progress:
                print(f"{label} {tool}: push {r['push'][0]:.2f} s, pull {r['pull'][0]:.2f} s", file=sys.stderr)
    return rows, failed


def print_failed(failed: list[tuple[str, str, str]]) -> None:
    """Rows of the results table for the steps that failed."""
    for label, tool, reason in failed:
        print(f"| {label} | {tool} | failed: {reason} | | |")


def versions(*parts: str) -> str:
    """The closing line: Python, cores, what the bench names, then rclone's version."""
    rclone = subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.splitlines()[0]
    return ", ".join((f"\nPython {sys.version.split()[0]}", f"{os.cpu_count()} cores", *parts, rclone))
