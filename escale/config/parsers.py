"""Parsers of the core options' values: text in, value out, ValueError with a message a
user can act on (the caller names the file, section and option around it).

Values that relay backends read too (booleans, sizes, ``verify ssl``) are parsed by
:mod:`escale.values`, below both.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from pathlib import Path

from ..values import _FALSE, _TRUE, parse_bool, parse_size
from .model import DEFAULT_CHECKSUM, DEFAULT_FULL_SCAN, DEFAULT_REFRESH, LOG_LEVELS, MAX_CLIENT_NAME

log = logging.getLogger(__name__)

def _parse_positive_size(text: str) -> int:
    n = parse_size(text)
    if n <= 0:
        raise ValueError("must be greater than 0")
    return n


def _parse_quota(text: str) -> int | None:
    if text.strip().lower() in _FALSE | {"none"}:
        return None
    return _parse_positive_size(text)


def _parse_int(text: str, minimum: int | None = None) -> int:
    try:
        n = int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None
    if minimum is not None and n < minimum:
        raise ValueError(f"must be at least {minimum}")
    return n


def _parse_float(text: str) -> float:
    try:
        x = float(text.strip().replace(",", "."))
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(x):
        raise ValueError("expected a number, not infinity or NaN")
    return x


def _parse_refresh(text: str) -> float:
    t = text.strip().lower()
    if t in _TRUE - {"1"}:
        return DEFAULT_REFRESH
    if t in _FALSE - {"0"}:
        raise ValueError("refresh cannot be turned off; give the longest pause between two "
                         f"synchronisation cycles in seconds, greater than 0 (default {DEFAULT_REFRESH:g})")
    x = _parse_float(t)
    if x <= 0:
        raise ValueError("must be a number of seconds greater than 0 "
                         f"(the pause between two synchronisation cycles; default {DEFAULT_REFRESH:g})")
    return x


def _parse_full_scan(text: str) -> float:
    t = text.strip().lower()
    if t in _TRUE - {"1"}:
        return DEFAULT_FULL_SCAN
    if t in ("always", "every cycle"):
        return 0.0
    if t in _FALSE - {"0"} or t == "never":
        raise ValueError("full scans cannot be turned off (they find what the folder watcher missed); give "
                         f"the longest time between two in seconds (default {DEFAULT_FULL_SCAN:g}), or 0 to "
                         "scan the whole folder every cycle")
    x = _parse_float(t)
    if x < 0:
        raise ValueError("must be a number of seconds, 0 or more (0: the whole folder every cycle; "
                         f"default {DEFAULT_FULL_SCAN:g})")
    return x


def _parse_mode(text: str) -> str:
    t = text.strip().lower()
    if t.startswith("shar"):
        return "shared"
    if t in ("upload", "download", "conservative"):
        return t
    if t == "protective":
        return "conservative"
    raise ValueError("expected shared, upload, download or conservative")


def _parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _parse_extensions(text: str) -> list[str]:
    exts = [e.lstrip(".") for e in _parse_list(text)]
    if any(not e for e in exts):
        raise ValueError("an extension cannot be only dots")
    return exts


def _parse_checksum(text: str) -> str:
    t = text.strip().lower()
    if t in _TRUE:
        return DEFAULT_CHECKSUM
    if t in _FALSE:
        raise ValueError("checksums cannot be turned off: escale needs them to detect changes; "
                         f"remove the option to use {DEFAULT_CHECKSUM}")
    usable = sorted(a for a in hashlib.algorithms_available if not a.startswith("shake_"))
    if t not in usable:
        raise ValueError(f"unknown hash algorithm (available: {', '.join(usable)})")
    return t


def _parse_abs_path(text: str) -> Path:
    p = os.path.expanduser(text.strip())
    if not os.path.isabs(p):
        raise ValueError("must be an absolute path (a leading ~ is expanded)")
    return Path(os.path.normpath(p))


def _parse_checksum_cache(text: str) -> bool | Path:
    try:
        return parse_bool(text)
    except ValueError:
        pass
    try:
        return _parse_abs_path(text)
    except ValueError:
        raise ValueError("expected yes/no or an absolute path") from None


def _parse_index(text: str) -> str | None:
    t = re.sub(r"\s+", " ", text.strip().lower())
    if t in _TRUE:
        return "on"
    if t in _FALSE:
        return None
    m = re.fullmatch(r"top ?dir(?: ?: ?(\d+))?", t)
    if not m:
        raise ValueError("expected yes/no, topdir or topdir:N")
    if m.group(1) is None:
        return "topdir"
    depth = int(m.group(1))
    if depth < 1:
        raise ValueError("the topdir depth must be at least 1")
    return f"topdir:{depth}"


_ENCRYPTION_OFF = {"off", "no", "false", "0", "plain", "none"}


_ENCRYPTION_NAMES = {"aes256gcm": "aes256gcm", "aes-256-gcm": "aes256gcm", "aes": "aes256gcm",
                     "chacha20poly1305": "chacha20poly1305", "chacha20-poly1305": "chacha20poly1305",
                     "chacha": "chacha20poly1305", "on": "aes256gcm", "yes": "aes256gcm", "true": "aes256gcm",
                     "1": "aes256gcm"}


def _parse_encryption(text: str) -> str:
    t = text.strip().lower()
    if t in _ENCRYPTION_OFF:
        return "off"
    if t in _ENCRYPTION_NAMES:
        return _ENCRYPTION_NAMES[t]
    raise ValueError(f"unknown encryption '{text.strip()}' (choose aes256gcm, chacha20poly1305, on or off)")


def _parse_trash(text: str) -> float:
    x = _parse_float(text)
    if x < 0:
        raise ValueError("must be 0 (empty the trash every cycle) or a number of days")
    return x


def _parse_timestamp(text: str) -> bool:
    if "%" in text:
        log.warning("timestamp formats of escale 0.7 (%r) are obsolete; modification times are kept", text)
        return True
    return parse_bool(text)


def _parse_client_name(text: str) -> str:
    name = text.strip()
    if not name:
        raise ValueError("a client name cannot be empty")
    if "/" in name:
        raise ValueError("a client name cannot contain '/'")
    if len(name) > MAX_CLIENT_NAME:
        raise ValueError(f"a client name has at most {MAX_CLIENT_NAME} characters")
    if any(ord(c) < 32 for c in name):
        raise ValueError("a client name cannot contain control characters")
    return name


def _parse_log_level(text: str) -> str:
    t = text.strip().upper()
    if t not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return t


def _parse_log_format(text: str) -> str:
    t = text.strip().lower()
    if t not in ("text", "json"):
        raise ValueError("expected 'text' or 'json'")
    return t


def _parse_command(text: str) -> str:
    t = text.strip()
    if not t:
        raise ValueError("give a command (run by the shell)")
    return t


def _parse_port(text: str) -> int:
    n = _parse_int(text, 1)
    if n > 65535:
        raise ValueError("a port is at most 65535")
    return n
