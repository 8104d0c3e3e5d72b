"""What a running daemon's cycle costs at many files: watcher-driven (only changed folders
are listed) against a full scan every cycle (issue 16).

One folder of N files (100 folders), synced once; then the daemon (file:// relay, raw key,
``refresh = 1``) runs twice: with ``full scan = 3600`` (the default: the watcher says which
folders changed) and with ``full scan = 0`` (the whole folder every cycle, as before). For
each, over a window of W seconds after its start-up: idle, then one file edited every
second. CPU time (user + system, /proc/PID/stat) of the daemon over the window, divided
by the cycles it ran (its ``-vv`` "next cycle in" lines).

    python bench/bench_watch.py [--files 100000] [--window 20]
"""
from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CYCLE = re.compile(r"DEBUG escale\.pacing: next cycle in")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


class Daemon:
    def __init__(self, conf: Path, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "escale", "-c", str(conf), "-vv"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.cycles = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            if CYCLE.search(line):
                self.cycles += 1

    def window(self, seconds: float, during=None) -> tuple[int, float]:
        """(cycles, CPU seconds) over ``seconds``; ``during(i)`` is called every second."""
        c0, t0 = self.cycles, cpu_seconds(self.proc.pid)
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < seconds:
            if during is not None:
                during(i)
            i += 1
            time.sleep(max(0.0, start + i - time.monotonic()))
        return self.cycles - c0, cpu_seconds(self.proc.pid) - t0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--window", type=float, default=20.0, help="seconds measured, idle and with changes")
    args = ap.parse_args()
    folders = 100
    with tempfile.TemporaryDirectory(prefix="escale-bench-watch-") as tmp:
        base = Path(tmp)
        folder, relay = base / "A", base / "relay"
        relay.mkdir()
        per = max(1, args.files // folders)
        for d in range(folders):
            (folder / f"d{d}").mkdir(parents=True)
            for i in range(per):
                (folder / f"d{d}" / f"f{i}.txt").write_bytes(b"%d/%d\n" % (d, i))
        old = time.time() - 120
        for p in folder.rglob("*"):
            os.utime(p, (old, old))
        key = base / "key"
        key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        key.chmod(0o600)
        env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(base))
        rows = []
        for label, full in (("watched (`full scan = 3600`, the default)", 3600), ("full scan every cycle (`full scan = 0`)", 0)):
            conf = base / f"a-{full}.conf"
            conf.write_text(f"cache dir = {base / 'state'}\n[bench]\nlocal path = {folder}\n"
                            f"relay address = file://{relay}\nclient name = A\npassphrase = {key}\n"
                            f"refresh = 1\nfull scan = {full}\n")
            conf.chmod(0o600)
            if not rows:  # the first sync, not measured
                subprocess.run([sys.executable, "-m", "escale", "-c", str(conf), "--once", "-q"], env=env, check=True)
            d = Daemon(conf, env)
            try:
                end = time.monotonic() + 600
                while d.cycles < 2 and time.monotonic() < end:  # start-up and its full scan done
                    time.sleep(0.2)
                idle = d.window(args.window)
                n = [0]

                def edit(i: int) -> None:
                    n[0] += 1
                    (folder / f"d{(i * 37) % folders}" / "f0.txt").write_bytes(b"edit %d %d\n" % (full, n[0]))
                busy = d.window(args.window, edit)
            finally:
                d.stop()
            rows.append((label, idle, busy))
    print(f"Daemon cycles at {per * folders:,} files ({folders} folders), file:// relay, refresh = 1, "
          f"{args.window:g} s windows:\n")
    print("| daemon | idle: cycles | idle: CPU per cycle | 1 edit/s: cycles | 1 edit/s: CPU per cycle |")
    print("|---|---|---|---|---|")
    for label, (ic, it), (bc, bt) in rows:
        print(f"| {label} | {ic} | {it / max(ic, 1) * 1000:.0f} ms | {bc} | {bt / max(bc, 1) * 1000:.0f} ms |")
    import platform
    print(f"\nPython {platform.python_version()}")


if __name__ == "__main__":
    main()
