"""What every benchmark here shares: run a step as its own process and measure it,
make test data, compare trees."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def run(cmd: list[str], env=None) -> tuple[float, int]:
    """(seconds, peak RSS in MiB) of one command; peak RSS is the kernel's maxrss for that
    child (os.wait4). Run benchmarks from a small process: a child's maxrss starts at its
    parent's size when it was forked."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _pid, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{p.stderr.read().decode()[-2000:]}")
    return dt, usage.ru_maxrss // 1024


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
