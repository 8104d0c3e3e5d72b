"""Relay requests of escale's start-up and of an idle cycle on every backend the tests can start
(issue 16: ≤ 2 per idle cycle, start-up ≤ 6), counted by tests/idle_requests.py — the counting
tests/test_idle_requests.py asserts on — against each test server started here on 127.0.0.1.

    python bench/bench_requests.py [--kinds file,wsgidav,…] [--files 20]

Counts are deterministic (no min / median: one run each). A server that cannot start here is
reported as a row saying why. Where tests/idle_requests.py counts only HTTP and file:// (an
older tree), only those kinds run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import idle_requests  # noqa: E402

ALL = ("file", "wsgidav", "apache", "rclone", "s3-seaweedfs", "s3-moto", "ftp-pyftpdlib", "ftps-pyftpdlib",
       "sftp", "gdrive")


def server_for(kind: str, base: Path):
    """(server, stop) for a kind that count_idle does not start itself."""
    base.mkdir(parents=True, exist_ok=True)
    if kind.startswith("s3-"):
        import servers_s3

        server = {"s3-seaweedfs": servers_s3.start_seaweedfs, "s3-moto": servers_s3.start_moto}[kind](base)
        return server, server.stop
    if kind.startswith("ftp"):
        from servers_ftp import FTPServer

        server = FTPServer(base / "ftp", tls=kind.startswith("ftps")).start()
        return server, server.stop
    if kind == "sftp":
        from servers_sftp import SFTPServer

        server = SFTPServer(base / "sftp").start()
        return server, server.stop
    if kind == "gdrive":
        from servers_drive import DriveServer

        (base / "drive").mkdir(parents=True, exist_ok=True)
        server = DriveServer(base / "drive").start()
        return server, server.stop
    return None, lambda: None


def _fmt(counts) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", default=",".join(ALL))
    ap.add_argument("--files", type=int, default=20)
    args = ap.parse_args()
    every = hasattr(idle_requests, "COUNTERS")  # counts S3, FTP, SFTP and Drive too
    print("| what | tool | requests |")
    print("|---|---|---|")
    for kind in args.kinds.split(","):
        if not every and kind not in ("file", "wsgidav", "apache", "rclone"):
            print(f"| requests, {kind} | escale | not counted: this tree's tests/idle_requests.py counts "
                  "only file:// and HTTP |")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                server, stop = server_for(kind, Path(tmp) / "server")
            except BaseException as exc:  # noqa: BLE001 - pytest.skip's exception when a server cannot start
                print(f"| requests, {kind} | escale | not counted: the server did not start: "
                      f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__} |", flush=True)
                continue
            try:
                start, idle = idle_requests.count_idle(Path(tmp) / "work", kind, files=args.files, server=server)
            except Exception as exc:  # noqa: BLE001 - said in the table; the other kinds go on
                print(f"| requests, {kind} | escale | not counted: {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:200] if str(exc) else ''} |", flush=True)
                continue
            finally:
                stop()
        print(f"| requests, {kind} | escale | start-up + first cycle {sum(start.values())} "
              f"({_fmt(start)}); idle cycle {sum(idle.values())} ({_fmt(idle)}) |", flush=True)
    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
