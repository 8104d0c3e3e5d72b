"""What a cycle did, told in the log so that people can live with it.

An idle cycle says nothing at INFO (its summary goes to DEBUG): a daemon left alone
for a day writes no line. A cycle that moved files names each one at INFO, or, past
:data:`PER_FILE_LIMIT` files, gives counts and the first few names; then a summary.
Each line carries ``repository``/``event``/``path`` for the JSON log format.
"""
from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("escale.activity")

#: above this many files in one cycle, one line with counts instead of a line per file
PER_FILE_LIMIT = 20
#: names shown in that line
SHOWN_NAMES = 5

#: the events a report records, as they read in the log
EVENTS = ("sent", "received", "deleted here", "sent deletion", "conflict copy")


#: the relay failure each repository's last cycle met: the same one again is no news
_last_failure: dict[str, str | None] = {}


def log_cycle(report, summary: bool = True) -> None:
    """The log lines of one finished cycle (a :class:`CycleReport`); ``summary=False``
    when the caller prints the summary itself (``escale --once``)."""
    from .names import shown

    files = list(report.files)
    more = getattr(report, "more_files", None) or Counter()  # past the names a report keeps
    if files and len(files) <= PER_FILE_LIMIT and not more:
        for event, path in files:
            log.info("%s: %s %s", report.repository, event, shown(path),
                     extra={"repository": report.repository, "event": event, "path": path})
    elif files:
        counts = Counter(event for event, _ in files) + more
        first = ", ".join(shown(p) for p in sorted(p for _, p in files)[:SHOWN_NAMES])
        for event, path in files:  # every name still, at DEBUG (-v, or the log file)
            log.debug("%s: %s %s", report.repository, event, shown(path),
                      extra={"repository": report.repository, "event": event, "path": path})
        log.info("%s: %s (%s, …)", report.repository,
                 ", ".join(f"{n} {event}" for event, n in counts.items()), first,
                 extra={"repository": report.repository, "event": "files", "count": sum(counts.values())})
    if not summary:
        return
    again = report.relay_error is not None and _last_failure.get(report.repository) == report.relay_error
    _last_failure[report.repository] = report.relay_error
    busy = report.did_work or report.errors or (report.relay_error and not again) or report.waiting_for_room
    log.log(logging.INFO if busy else logging.DEBUG, "%s", report.summary(),
            extra={"repository": report.repository, "event": "cycle"})
