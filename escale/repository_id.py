"""The repository id: a random name fixed when a repository is created.

It is written in the repository header (``escale.json``) and bound into every key
(HKDF info), every signature and so every object's associated data, so an object
copied from another repository that shares the passphrase or key file is refused.
A config may pin it (``repository id = …``): a client then refuses a relay that
holds another repository, even one whose header was copied from a repository with
the same passphrase.
"""
from __future__ import annotations

import re
import secrets

from .errors import ConfigError

ID_BYTES = 16
_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class WrongRepository(ConfigError):
    """The relay holds another repository than this client's (exit code 3)."""


def new_id() -> str:
    return secrets.token_hex(ID_BYTES)


def is_id(value: object) -> bool:
    return isinstance(value, str) and bool(_ID_RE.match(value))


def parse_id(text: str) -> str:
    """The ``repository id`` option: 32 hexadecimal digits, as ``escalectl status`` shows it."""
    value = text.strip().lower()
    if not is_id(value):
        raise ValueError(f"not a repository id ({text.strip()!r}): expected the 32 hexadecimal digits "
                         "that 'escalectl status' shows")
    return value


def check_pinned(found: str, pinned: str | None, *, repository: str, address: str, config_path=None) -> None:
    """Refuse a relay whose repository is not the one the config pins."""
    if pinned is not None and found != pinned:
        raise WrongRepository(f"the relay {address} holds repository {found}, not {pinned} as 'repository id' "
                              f"says: another repository (or a relay that swapped it); refusing to sync",
                              path=config_path, section=repository, option="repository id")
