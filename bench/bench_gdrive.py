"""Speed and memory of escale through a Google Drive relay: the local Drive v3 server.

Google's servers cannot be benchmarked from here (and would measure the network and
Google's rate limits), so this runs escale against the test suite's Drive v3 server
(tests/servers_drive.py), started in a process of its own on 127.0.0.1:

    python bench/bench_gdrive.py [--small N] [--big MB] [--tmp DIR]

It measures escale's side of a Drive relay — google-api-python-client's requests,
multipart uploads of small objects, resumable 8 MiB chunks and ranged 8 MiB downloads of
large ones — plus a Python HTTP server that keeps everything in memory (its own cost is
part of the wall time: both share this machine's cores). escale runs with
``encryption = off`` and with ``encryption = aes256gcm``, default options otherwise. Each
step is its own process (wall time around it, peak RSS from wait4()).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import ROOT, arguments, escale_pair, measure, print_table, size_cases  # noqa: E402


def start_server(work: Path) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "servers_drive.py"), "--dir", str(work)],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "tests")))
    return proc, json.loads(proc.stdout.readline())


def escale_case(work: Path, make, server: dict, encryption: str = "off") -> dict:
    return escale_pair(work, make, server["address"] + "-" + os.path.basename(work), server["conf"], encryption)


def main() -> None:
    args = arguments(big=200).parse_args()
    cases = size_cases(args.small, args.big)
    with tempfile.TemporaryDirectory(dir=args.tmp) as srv_dir:
        proc, server = start_server(Path(srv_dir))
        try:
            rows, _ = measure(cases, (
                ("escale (encryption off)", lambda w, m: escale_case(w, m, server)),
                ("escale (aes256gcm)", lambda w, m: escale_case(w, m, server, "aes256gcm"))), args.tmp)
        finally:
            proc.terminate()
            proc.wait()
    print_table(rows, "Drive server")
    import googleapiclient

    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores, google-api-python-client "
          f"{getattr(googleapiclient, '__version__', '')}".rstrip())


if __name__ == "__main__":
    main()
