"""Peak memory of escale moving one large file A → relay → B, encrypted.

    python bench/bench_bigfile.py [--size-mb 2048]

Each step runs as its own `escale --once` process; peak RSS is the kernel's maxrss
for that process (os.wait4). The same file through `rclone copy` (to a crypt remote
over the same kind of folder) runs side by side as the peer. Results: a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        work = Path(tmp)
        a, b = work / "A", work / "B"
        a.mkdir()
        block = os.urandom(1 << 20)
        with open(a / "big.bin", "wb") as f:
            for _ in range(args.size_mb):
                f.write(block)
        pw = work / "pw"
        pw.write_text("bench passphrase")
        pw.chmod(0o600)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for name, folder in (("A", a), ("B", b)):
            (work / f"{name}.conf").write_text(
                f"cache dir = {work}/state-{name}\n[big]\nlocal path = {folder}\n"
                f"relay address = file://{work}/relay\nclient name = {name}\npassphrase = {pw}\n")
        esc = [sys.executable, "-m", "escale", "-q", "--once", "-c"]
        run(esc + [str(work / "B.conf")], env)
        push = run(esc + [str(work / "A.conf")], env)
        pull = run(esc + [str(work / "B.conf")], env)
        assert (b / "big.bin").stat().st_size == args.size_mb << 20
        rows.append(("escale (aes256gcm)", push, pull))
        rc_env = dict(os.environ, RCLONE_CONFIG_LOCAL_TYPE="local", RCLONE_CONFIG_SECRET_TYPE="crypt",
                      RCLONE_CONFIG_SECRET_REMOTE=f"local:{work}/rclone-relay",
                      RCLONE_CONFIG_SECRET_PASSWORD=subprocess.run(
                          ["rclone", "obscure", "bench passphrase"], capture_output=True, text=True).stdout.strip())
        try:
            rpush = run(["rclone", "--config", "/dev/null", "copy", str(a), "secret:"], rc_env)
            rpull = run(["rclone", "--config", "/dev/null", "copy", "secret:", str(work / "RB")], rc_env)
            rows.append(("rclone copy via crypt", rpush, rpull))
        except (SystemExit, FileNotFoundError) as exc:
            print(f"(rclone peer skipped: {exc})", file=sys.stderr)
    print(f"| {args.size_mb} MiB file | A → relay (s) | relay → B (s) | peak RSS push / pull (MiB) |")
    print("|---|---|---|---|")
    for tool, push, pull in rows:
        print(f"| {tool} | {push[0]:.1f} | {pull[0]:.1f} | {push[1]} / {pull[1]} |")


if __name__ == "__main__":
    main()
