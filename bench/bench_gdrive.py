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

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import make_big, make_small, print_table, run, same_tree  # noqa: E402


def start_server(work: Path) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "servers_drive.py"), "--dir", str(work)],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "tests")))
    return proc, json.loads(proc.stdout.readline())


def escale_case(work: Path, make, server: dict, encryption: str = "off") -> dict:
    a, b = work / "A", work / "B"
    a.mkdir()
    size = make(a)
    address = server["address"] + "-" + os.path.basename(work)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    confs = {}
    for name, folder in (("A", a), ("B", b)):
        conf = work / f"{name}.conf"
        conf.write_text(f"cache dir = {work}/state-{name}\n[bench]\nlocal path = {folder}\n"
                        f"relay address = {address}\n{server['conf']}"
                        f"client name = {name}\nencryption = {encryption}\n"
                        + ("passphrase = text:bench passphrase\n" if encryption != "off" else ""))
        conf.chmod(0o600)
        confs[name] = conf
    esc = [sys.executable, "-m", "escale", "-q", "--once", "-c"]
    run(esc + [str(confs["B"])], env)  # B registers first, as a running peer would be
    push = run(esc + [str(confs["A"])], env)
    pull = run(esc + [str(confs["B"])], env)
    assert same_tree(a, b), "escale: trees differ"
    return {"size": size, "push": push, "pull": pull}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=5000, help="number of 4 KiB files")
    ap.add_argument("--big", type=int, default=200, help="size of the big file in MB (10^6 bytes)")
    ap.add_argument("--tmp", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    cases = [(f"{args.small} × 4 KiB files", lambda f: make_small(f, args.small)),
             (f"one {args.big} MB file", lambda f: make_big(f, args.big * 10**6))]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as srv_dir:
        proc, server = start_server(Path(srv_dir))
        try:
            for label, make in cases:
                for tool, enc in (("escale (encryption off)", "off"), ("escale (aes256gcm)", "aes256gcm")):
                    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                        r = escale_case(Path(tmp), make, server, enc)
                    rows.append((label, tool, r))
                    print(f"{label} {tool}: push {r['push'][0]:.2f} s, pull {r['pull'][0]:.2f} s", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait()
    print_table(rows, "Drive server")
    import googleapiclient

    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores, google-api-python-client "
          f"{getattr(googleapiclient, '__version__', '')}".rstrip())


if __name__ == "__main__":
    main()
