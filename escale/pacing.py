"""Pacing between cycles and the relay quota (escale 0.7's TimeQuotaController)."""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

DEFAULT_REFRESH = 30.0
#: idle cycles after which the sleep reaches ``refresh``
RAMP_CYCLES = 10


class TimeQuotaController:
    """Sleep ``refresh``/2 after a busy cycle, growing to ``refresh`` while idle.

    ``quota`` (bytes) caps what the relay may hold; the manager asks :meth:`room`
    before publishing and waits (while still pulling) when there is none.
    """

    def __init__(self, refresh: float | bool = True, quota: int | None = None,
                 quota_read_interval=None, quota_read_callback=None, logger=None):
        if refresh is True or refresh is None:
            refresh = DEFAULT_REFRESH
        if not refresh or refresh <= 0:
            raise ValueError("refresh must be a positive number of seconds")
        self.refresh = float(refresh)
        self.quota = quota
        self.idle_cycles = 0

    @property
    def interval(self) -> float:
        return self.refresh / 2 * (1 + min(self.idle_cycles, RAMP_CYCLES) / RAMP_CYCLES)

    def record(self, did_work: bool) -> None:
        self.idle_cycles = 0 if did_work else self.idle_cycles + 1

    def wait(self, did_work: bool = False, stop: threading.Event | None = None,
             wake: threading.Event | None = None, settle: float = 1.0) -> bool:
        """Sleep until the next cycle; False when asked to stop.

        ``wake`` (set on a local change) ends the sleep early, after ``settle`` seconds
        so that a burst of edits goes out in one cycle.
        """
        self.record(did_work)
        end = time.monotonic() + self.interval
        stop = stop or threading.Event()
        log.debug("next cycle in %.1f s", self.interval)
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
