"""Logging set-up shared by ``escale`` and ``escalectl``."""
from __future__ import annotations

import logging
import logging.handlers
import sys

from ..labels import EscapingFormatter


def setup_logging(verbosity: int = 0, log_file=None, log_level: str = "DEBUG", log_rotate: int = 3) -> None:
    """Console at INFO (-v: DEBUG, -q: WARNING); optional rotating log file (1 MiB per file)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO)
    console.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    if log_file:
        # a file name that is not UTF-8 is logged with its raw bytes escaped (\xe9), never refused
        fh = logging.handlers.RotatingFileHandler(log_file, maxBytes=1 << 20, backupCount=log_rotate,
                                                  errors="backslashreplace")
        fh.setLevel(getattr(logging, str(log_level).upper(), logging.DEBUG))
        fh.setFormatter(EscapingFormatter("%(asctime)s %(name)s[%(levelname)s] %(message)s"))
        root.addHandler(fh)
