"""How fast a change made on A shows on B, and what an idle daemon costs (issue 14).

Two escale daemons (A and B) with default settings (refresh 30 s, encrypted), each its
own process, on one relay: a file:// folder, then a WebDAV server (wsgidav on 127.0.0.1).
For each of create, edit, delete: N samples, each timed from the change on A to the
moment B's folder shows it (polled every 5 ms), with a random 0–2 s pause between
samples (so they do not line up with the daemons' polling). Then both daemons are left
idle: their relay requests are counted over a window that starts once the back-off has
reached `refresh` (urllib3's request lines on WebDAV, -vv; cycles on file://), and one
more change measures the delay after that idleness.

    pip install wsgidav cheroot && python bench/bench_propagation.py [--samples 20] [--idle 300]
"""
from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

REQUEST = re.compile(r'DEBUG urllib3\.connectionpool: .*"(PROPFIND|GET|PUT|DELETE|MOVE|MKCOL|HEAD)')
CYCLE = re.compile(r"DEBUG escale\.pacing: next cycle in")


class Daemon:
    def __init__(self, conf: Path, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "escale", "-c", str(conf), "-vv"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line))

    def count(self, rx: re.Pattern, start: float, end: float) -> int:
        return sum(1 for t, line in list(self.lines) if start <= t < end and rx.search(line))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def wait_until(pred, timeout: float = 120.0) -> float:
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise SystemExit("timed out: the change never reached B")
        time.sleep(0.005)
    return time.perf_counter() - t0


def write_conf(path: Path, folder: Path, address: str, extra: str, name: str, secret: Path, state: Path) -> None:
    path.write_text(f"cache dir = {state}\n[bench]\nlocal path = {folder}\nrelay address = {address}\n"
                    f"client name = {name}\npassphrase = {secret}\n{extra}")
    path.chmod(0o600)


def measure(base: Path, address: str, extra: str, samples: int, idle: float, requests: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(base))
    secret = base / "passphrase"
    secret.write_text("bench passphrase, long enough to be a real one\n")
    secret.chmod(0o600)
    a_dir, b_dir = base / "A", base / "B"
    a_dir.mkdir()
    b_dir.mkdir()
    write_conf(base / "a.conf", a_dir, address, extra, "A", secret, base / "state-a")
    write_conf(base / "b.conf", b_dir, address, extra, "B", secret, base / "state-b")
    a = Daemon(base / "a.conf", env)
    time.sleep(3)  # A creates the repository first
    b = Daemon(base / "b.conf", env)
    out: dict = {}
    try:
        (a_dir / "warm.txt").write_text("warm-up")
        wait_until(lambda: (b_dir / "warm.txt").exists(), timeout=300)
        for op in ("create", "edit", "delete"):
            times = []
            for i in range(samples):
                time.sleep(random.uniform(0, 2))
                p = a_dir / f"f{i:02d}.txt"
                q = b_dir / p.name
                if op == "create":
                    p.write_text(f"created {i}")
                    times.append(wait_until(lambda: q.exists() and q.read_text() == f"created {i}"))
                elif op == "edit":
                    p.write_text(f"edited {i}")
                    times.append(wait_until(lambda: q.exists() and q.read_text() == f"edited {i}"))
                else:
                    p.unlink()
                    times.append(wait_until(lambda: not q.exists()))
            out[op] = times
            print(f"  {op}: p50 {pct(times, 50):.2f} s, p90 {pct(times, 90):.2f} s, max {max(times):.2f} s",
                  flush=True)
        # idle: let the back-off reach refresh (30 s active + 1+2+…+16 s), then count
        time.sleep(70)
        start = time.monotonic()
        time.sleep(idle)
        end = time.monotonic()
        hours = (end - start) / 3600
        rx = REQUEST if requests else CYCLE
        out["idle"] = {"A": a.count(rx, start, end) / hours, "B": b.count(rx, start, end) / hours,
                       "what": "requests" if requests else "cycles"}
        print(f"  idle {out['idle']['what']} per hour: A {out['idle']['A']:.0f}, B {out['idle']['B']:.0f}",
              flush=True)
        (a_dir / "after-idle.txt").write_text("after a long idleness")
        out["after_idle"] = wait_until(lambda: (b_dir / "after-idle.txt").exists())
        print(f"  after {idle + 70:.0f} s idle: {out['after_idle']:.2f} s", flush=True)
    finally:
        a.stop()
        b.stop()
    return out


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--idle", type=float, default=300, help="seconds of the idle window")
    ap.add_argument("--relays", default="file,webdav")
    args = ap.parse_args()
    results = {}
    for kind in args.relays.split(","):
        with tempfile.TemporaryDirectory(prefix=f"escale-prop-{kind}-") as tmp:
            base = Path(tmp)
            print(f"{kind}:", flush=True)
            if kind == "file":
                results[kind] = measure(base, f"file://{base / 'relay'}", "", args.samples, args.idle, False)
            else:
                from servers_webdav import WsgiDAV

                server = WsgiDAV(base / "dav").start()
                try:
                    address, conf, _kw = server.new()
                    results[kind] = measure(base, address, conf, args.samples, args.idle, True)
                finally:
                    server.cleanup()
    print("\n| relay | change | p50 (s) | p90 (s) | max (s) |")
    print("|---|---|---|---|---|")
    for kind, r in results.items():
        for op in ("create", "edit", "delete"):
            print(f"| {kind} | {op} | {pct(r[op], 50):.2f} | {pct(r[op], 90):.2f} | {max(r[op]):.2f} |")
    print("\n| relay | idle window | A per hour | B per hour | a change after the idle window reached B in |")
    print("|---|---|---|---|---|")
    for kind, r in results.items():
        i = r["idle"]
        print(f"| {kind} | {args.idle:.0f} s | {i['A']:.0f} {i['what']} | {i['B']:.0f} {i['what']} | "
              f"{r['after_idle']:.2f} s |")


if __name__ == "__main__":
    main()
