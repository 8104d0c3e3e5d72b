"""Peak memory of one command, measured as the kernel sees it for that process alone.

``os.wait4()`` called from pytest would report pytest's own peak as well: Linux carries
a parent's high-water mark over fork and exec, and pytest grows to hundreds of MiB over a
whole run. A small launcher process waits for the command instead.
"""
from __future__ import annotations

import subprocess
import sys

_LAUNCHER = ("import os, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
             "err = p.stderr.read()\n"
             "_pid, status, usage = os.wait4(p.pid, 0)\n"
             "sys.stderr.buffer.write(err)\n"
             "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n")


def peak_rss(cmd: list[str], env: dict | None = None, timeout: float = 600) -> tuple[int, int, str]:
    """(exit code, peak RSS in bytes, stderr) of ``cmd``."""
    r = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], env=env, capture_output=True, text=True,
                       timeout=timeout)
    code, maxrss_kib = map(int, r.stdout.split())
    return code, maxrss_kib * 1024, r.stderr
