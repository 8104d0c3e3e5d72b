"""Options that several backends share (TLS and retries), declared once.

A backend lists the ones it uses in its ``options`` next to its own; the configuration
accepts an option declared by several backends because the declarations are these same
objects (same field, same spellings, same parser).
"""
from __future__ import annotations

from ..values import parse_verify_ssl
from .base import RelayOption


def parse_retries(text: str) -> int:
    """``max retries``: a whole number, 0 or more."""
    try:
        n = int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number of retries, 0 or more") from None
    if n < 0:
        raise ValueError("expected a whole number of retries, 0 or more")
    return n


def parse_path_text(text: str) -> str:
    """A file name as written (the backend expands ``~`` and checks that it exists)."""
    return text.strip()


VERIFY_SSL = RelayOption(
    "verify_ssl", ("verify ssl",), parse_verify_ssl,
    doc="yes (default), no (skip certificate checks), or the path of an existing CA bundle file or folder; "
        "anything else, such as the typo 'flase', is refused")
CERTFILE = RelayOption(
    "certfile", ("certfile", "cert file", "certificate"), parse_path_text,
    doc="client certificate (PEM) for servers that ask for one; with 'keyfile' when the key is apart", path=True)
KEYFILE = RelayOption(
    "keyfile", ("keyfile", "key file", "private key"), parse_path_text,
    doc="private key (PEM) of the client certificate, when it is not in 'certfile'", path=True)
MAX_RETRIES = RelayOption(
    "max_retries", ("max retries",), parse_retries,
    doc="retries of a request that failed for a transient reason (5xx, throttling, a reset connection), "
        "with exponential back-off")

#: TLS options of a backend that talks HTTPS with optional client certificates
TLS = (VERIFY_SSL, CERTFILE, KEYFILE)

__all__ = ["CERTFILE", "KEYFILE", "MAX_RETRIES", "TLS", "VERIFY_SSL", "parse_path_text", "parse_retries"]
