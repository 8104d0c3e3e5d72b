"""Pacing between cycles and the relay quota (escale 0.7's TimeQuotaController)."""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

DEFAULT_REFRESH = 30.0
#: the pause between cycles while the repository is active (seconds)
FAST_INTERVAL = 1.0
#: seconds of fast cycles after the last cycle that moved something
ACTIVE_HOLD = 30.0
#: local changes wait this long for the burst they belong to, then go out
SETTLE = 0.5


class TimeQuotaController:
    """Adaptive pause between cycles: :data:`FAST_INTERVAL` while the repository is
    active (a cycle moved something less than :data:`ACTIVE_HOLD` seconds ago), then
    doubling each idle cycle up to ``refresh``, the longest pause. Local changes wake
    the daemon at once (escale/watch.py), so only what arrives from other members
    waits for a pause: within ~1 s while active, within ``refresh`` after long idleness.

    ``quota`` (bytes) caps what the relay may hold; the manager asks :meth:`room`
    before publishing and waits (while still pulling) when there is none.
    """

    def __init__(self, refresh: float | bool = True, quota: int | None = None,
                 quota_read_interval=None, quota_read_callback=None, logger=None,
                 clock=time.monotonic):
        if refresh is True or refresh is None:
            refresh = DEFAULT_REFRESH
        if not refresh or refresh <= 0:
            raise ValueError("refresh must be a positive number of seconds")
        self.refresh = float(refresh)
        self.quota = quota
        self.idle_cycles = 0
        self._clock = clock
        self._last_work: float | None = None
        self._interval = min(FAST_INTERVAL, self.refresh)

    @property
    def interval(self) -> float:
        """The pause before the next cycle."""
        return self._interval

    def record(self, did_work: bool) -> None:
        now = self._clock()
        if did_work:
            self._last_work, self.idle_cycles = now, 0
        else:
            self.idle_cycles += 1
        if self._last_work is not None and now - self._last_work < ACTIVE_HOLD:
            self._interval = min(FAST_INTERVAL, self.refresh)
        else:
            self._interval = min(self.refresh, max(FAST_INTERVAL, self._interval * 2))

    def wait(self, did_work: bool = False, stop: threading.Event | None = None,
             wake: threading.Event | None = None, settle: float = SETTLE) -> bool:
        """Sleep until the next cycle; False when asked to stop.

        ``wake`` (set on a local change) ends the sleep early, after ``settle`` seconds
        so that a burst of edits goes out in one cycle.
        """
        self.record(did_work)
        end = time.monotonic() + self.interval
        stop = stop or threading.Event()
        log.debug("next cycle in %.1f s (%s)", self.interval,
                  "active" if self.interval <= FAST_INTERVAL else f"idle for {self.idle_cycles} cycle(s)")
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return not stop.is_set()
            if stop.wait(min(left, 0.2)):
                return False
            if wake is not None and wake.is_set():
                wake.clear()
                return not stop.wait(min(settle, max(0.0, end - time.monotonic())))

    def room(self, used: int) -> int | None:
        """Bytes that may still be written, or None when there is no quota."""
        if self.quota is None:
            return None
        return max(0, self.quota - used)
