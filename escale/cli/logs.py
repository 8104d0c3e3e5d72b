"""Logging set-up shared by ``escale`` and ``escalectl``.

Console: INFO (``-q``: WARNING; ``-v``: escale's own DEBUG lines; ``-vv``: the libraries'
DEBUG lines too, e.g. every HTTP request of urllib3). Every line carries its time, except
under systemd, whose journal stamps each line itself. ``log format = json`` writes one
JSON object a line (console and file) for log collectors; see docs/configuration.md.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time

from ..labels import EscapingFormatter

#: loggers of libraries: their DEBUG lines (one per HTTP request…) only with -vv
LIBRARIES = ("urllib3", "botocore", "boto3", "s3transfer", "watchdog", "requests", "wsgidav", "cheroot",
             "paramiko", "googleapiclient", "google", "asyncio", "filelock", "charset_normalizer")
#: fields a record may carry (``extra=``) that the JSON format writes as keys of their own
JSON_FIELDS = ("repository", "event", "path", "count")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, and ``repository``/``event``/``path``/``count`` when the line has them.
    ASCII only, so a hostile file name (control characters, undecodable bytes) can
    neither break a line nor make the write fail."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc = {"time": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        for key in JSON_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=True, default=str)


class _Libraries(logging.Filter):
    """Drops the libraries' records below WARNING (the console at -v)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not any(record.name == lib or record.name.startswith(lib + ".") for lib in LIBRARIES)


def under_journal() -> bool:
    """True when stderr is systemd's journal (which adds its own time to each line):
    systemd sets JOURNAL_STREAM to the device and inode of that stream."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _Rotating(logging.handlers.RotatingFileHandler):
    """Rotated at 1 MiB; ``log rotate = 0`` keeps no old file: the log starts again. (The
    standard handler, with no backup to make, kept appending: a log without limit.)"""

    def doRollover(self) -> None:
        if self.backupCount == 0:
            if self.stream:
                self.stream.close()
                self.stream = None  # type: ignore[assignment]
            with open(self.baseFilename, "w", encoding=self.encoding or "utf-8"):
                pass
        super().doRollover()


def setup_logging(verbosity: int = 0, log_file=None, log_level: str = "DEBUG", log_rotate: int = 3,
                  log_format: str = "text") -> None:
    """Console at INFO (-v: DEBUG, -q: WARNING); optional rotating log file (1 MiB per file)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        root.removeHandler(h)
        if isinstance(h, logging.FileHandler):
            h.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO)
    if verbosity < 2:
        console.addFilter(_Libraries())
    if log_format == "json":
        console.setFormatter(JsonFormatter())
    elif under_journal():
        console.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        console.setFormatter(EscapingFormatter(TEXT_FORMAT, DATE_FORMAT))
    root.addHandler(console)
    if log_file:
        # a file name that is not UTF-8 is logged with its raw bytes escaped (\xe9), never refused
        fh = _Rotating(log_file, maxBytes=1 << 20, backupCount=log_rotate, errors="backslashreplace")
        fh.setLevel(getattr(logging, str(log_level).upper(), logging.DEBUG))
        fh.setFormatter(JsonFormatter() if log_format == "json" else
                        EscapingFormatter("%(asctime)s %(name)s[%(levelname)s] %(message)s"))
        root.addHandler(fh)
    # the root passes on only what some handler shows: a record no handler keeps is then never
    # made (a 5,000-file pull logged 15,000 DEBUG/INFO records nobody saw at -q: 0.2–0.4 s)
    root.setLevel(min(h.level for h in root.handlers))
