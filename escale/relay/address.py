"""Relay addresses as users write them: ``scheme://[user[:password]@]host[:port]/path``.

One parser for the configuration and every network backend, so that they agree on
what an address means:

- the user in the address is kept (``https://alice@host/dav``);
- an IPv6 literal keeps its brackets (``https://[::1]:8080/dav``);
- a port that is not a number from 1 to 65535 is a :class:`ConfigError` (exit code 3);
- the path is everything after the host: ``#`` and ``?`` are characters of a folder
  name there, not a fragment or a query (an address names a folder, never a web page);
  percent-escapes are decoded once, by the backend that uses the path;
- a password written in the address is never shown: :func:`redact` replaces it in
  every message that quotes an address.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError

_PASSWORD_IN_URL = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*):[^/@]*@")


def redact(text: str) -> str:
    """``text`` with any ``user:password@`` of an address in it shown as ``user:***@``."""
    return _PASSWORD_IN_URL.sub(r"\g<head>:***@", text)


@dataclass(frozen=True)
class NetworkAddress:
    """The parts of a network relay address; ``path`` is as written (not yet decoded)."""

    scheme: str
    host: str
    port: int | None
    path: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def host_literal(self) -> str:
        """The host as it is written in a URL (an IPv6 literal in brackets)."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def netloc(self, port: int | None = None, *, with_user: bool = True) -> str:
        """``[user@]host[:port]`` (IPv6 literals in brackets); never the password."""
        host = self.host_literal
        port = port if port is not None else self.port
        user = f"{self.user}@" if with_user and self.user else ""
        return f"{user}{host}" + (f":{port}" if port is not None else "")

    @property
    def decoded_path(self) -> str:
        """The folder path with percent-escapes decoded, without leading/trailing '/'."""
        return unquote(self.path).strip("/")


def split_network_address(text: str) -> NetworkAddress:
    """Parse ``scheme://[user[:password]@]host[:port][/path]``; raises ConfigError."""
    raw = text.strip()
    shown = redact(raw)
    parts = urlsplit(raw, allow_fragments=False)
    if parts.scheme.lower() == "s3" and not parts.hostname:
        raise ConfigError(f"relay address '{shown}' has no bucket; write s3://bucket or s3://bucket/prefix",
                          option="relay address")
    if not parts.scheme or not parts.netloc:
        raise ConfigError(f"relay address '{shown}' is not scheme://host[:port]/path", option="relay address")
    try:
        port = parts.port
    except ValueError:
        bad = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ConfigError(f"relay address '{shown}' has a bad port '{bad}' (a number from 1 to 65535)",
                          option="relay address") from None
    if port == 0:
        raise ConfigError(f"relay address '{shown}' has a bad port '0' (a number from 1 to 65535)",
                          option="relay address")
    host = parts.hostname or ""
    if not host:
        raise ConfigError(f"relay address '{shown}' has no host", option="relay address")
    path = parts.path + ("?" + parts.query if parts.query or raw.endswith("?") else "")
    return NetworkAddress(scheme=parts.scheme.lower(), host=host, port=port, path=path,
                          user=unquote(parts.username) if parts.username else None,
                          password=unquote(parts.password) if parts.password is not None else None)
