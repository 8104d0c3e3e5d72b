"""When to look for our own interrupted uploads on the relay (and temporaries in the folder).

``Relay.abort_incomplete`` costs one listing per prefix (seven at every start-up, e.g.
seven ListMultipartUploads on S3) although leftovers only come from a writer that died
mid-upload. A run that ends through ``Manager.close`` records it; the next start-up
sweeps only when that record is missing (killed, crashed, power cut) — and at least once
a day, for an upload whose own abort failed while the process went on (a network cut).
"""
from __future__ import annotations

import time

#: meta key: set when a run ends through close(), removed when the next one sweeps
CLEAN_KEY = "ended_cleanly"
#: meta key: time of the last sweep
SWEPT_KEY = "swept_at"
#: a sweep at least this often, whatever the runs' endings (seconds)
SWEEP_INTERVAL = 24 * 3600.0


def sweep_due(state) -> bool:
    """Whether this start-up must look for interrupted uploads; from here on the run counts
    as unfinished until ``ended_cleanly``."""
    due = sweep_needed(state)
    state.unset(CLEAN_KEY)  # running: a kill from here on leaves no record
    return due


def sweep_needed(state) -> bool:
    """Whether the run before this one may have left something behind (it did not end
    through close()), or the daily sweep is due; reads only. Also says whether to look
    for the temporary files a killed run leaves in the synced folder (a whole walk)."""
    if state.get(CLEAN_KEY) != "1":
        return True
    try:
        last = float(state.get(SWEPT_KEY, "0"))
    except ValueError:
        return True
    return not 0 <= time.time() - last < SWEEP_INTERVAL


def swept(state) -> None:
    state.set(SWEPT_KEY, str(time.time()))


def ended_cleanly(state) -> None:
    state.set(CLEAN_KEY, "1")
