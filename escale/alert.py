"""``on error = COMMAND``: tell someone when a repository fails.

The command runs through the shell (so ``mail``, ``notify-send``, ``curl`` to a webhook,
pipes…) with the facts in its environment, never in its command line (a file name or
an error text from the relay cannot inject anything):

- ``ESCALE_REPOSITORY``: the section name; ``ESCALE_ERROR``: what failed (first lines);
- ``ESCALE_EXIT_CODE``: the family (1 files, 2 relay, 3 configuration);
- ``ESCALE_CONFIG``: the configuration file; ``ESCALE_SUPPRESSED``: failures not told
  since the last run of the command (rate limit).

Rate limit: at most one run per :data:`MIN_INTERVAL` per repository while it keeps
failing; a repository that recovered and fails again is told at once. The command
runs in the background with a time limit; its own failure is logged, never retried.
"""
from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from pathlib import Path

from .errors import EXIT_FILES_FAILED, EXIT_RELAY

log = logging.getLogger(__name__)

#: seconds between two runs of the command for one repository that keeps failing
MIN_INTERVAL = 3600.0
#: seconds a run may take before it is killed
TIMEOUT = 120.0
#: characters of error text passed on
MAX_TEXT = 4000


class ErrorCommand:
    """Called with each finished cycle's report (and with an error that stopped the
    repository): runs the command when something failed, rate-limited."""

    def __init__(self, command: str, repository: str, config_path: Path | None = None,
                 min_interval: float = MIN_INTERVAL):
        self.command, self.repository, self.config_path = command, repository, config_path
        self.min_interval = min_interval
        self._last: float | None = None
        self._suppressed = 0
        self._threads: list[threading.Thread] = []

    def __call__(self, report) -> None:
        if report.relay_error:
            self.failed(f"relay failed: {report.relay_error}", EXIT_RELAY)
        elif report.errors:
            self.failed("\n".join(report.errors[:20]), EXIT_FILES_FAILED)
        else:
            self._last, self._suppressed = None, 0  # healthy again: the next failure is told at once

    def failed(self, text: str, code: int) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.min_interval:
            self._suppressed += 1
            return
        self._last = now
        env = dict(os.environ, ESCALE_REPOSITORY=self.repository, ESCALE_ERROR=text[:MAX_TEXT],
                   ESCALE_EXIT_CODE=str(code), ESCALE_CONFIG=str(self.config_path or ""),
                   ESCALE_SUPPRESSED=str(self._suppressed))
        self._suppressed = 0
        t = threading.Thread(target=self._run, args=(env,), name=f"on error [{self.repository}]", daemon=True)
        self._threads.append(t)
        t.start()

    def _run(self, env: dict[str, str]) -> None:
        try:
            p = subprocess.run(self.command, shell=True, env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("%s: 'on error' command still running after %.0f s; killed", self.repository, TIMEOUT)
            return
        except OSError as exc:
            log.warning("%s: 'on error' command could not run: %s", self.repository, exc)
            return
        if p.returncode != 0:
            tail = p.stderr.decode("utf-8", "backslashreplace").strip()[-500:]
            log.warning("%s: 'on error' command failed (exit %d)%s", self.repository, p.returncode,
                        f": {tail}" if tail else "")
        else:
            log.info("%s: 'on error' command told of the failure", self.repository)

    def join(self, timeout: float = TIMEOUT) -> None:
        """Wait for the runs under way (``escale --once`` does, before exiting)."""
        for t in self._threads:
            t.join(timeout)
