"""How a folder-based relay (FTP, SFTP, WebDAV) lays escale's objects out on the server.

Why two layouts
---------------
FTP (``MLSD``) and SFTP (``opendir``/``readdir``) list one folder per request and have no
recursive listing, so with escale's names (``u/<cid>/<seq>``, ``b/<cid>/<seq>/<n>``…) stored
as nested folders an idle cycle costs one listing per folder (5+ for two members; issue 16).
WebDAV has ``PROPFIND Depth: infinity``, but Apache refuses it by default and sabre/dav
(Nextcloud) answers it as ``Depth: 1``: there too a nested relay is walked per collection.
The **flat** layout stores every object as one file in the relay folder, its name's ``/``
written ``%2F`` (and ``%`` written ``%25``): a whole listing is one folder. Nothing above the
backend changes: names, the contract and the protocol are the same; only the backend's
mapping from a name to a file differs.

The **nested** layout (one folder per ``/``) is what relays made before 2026-12 have. A
backend finds a relay's layout from its root listing and never mixes the two:

- a root holding any first-level folder of the nested layout (``a b m n q r s u``) is nested;
- a root holding the flat layout's guard files (below) or ``%2F`` names is flat;
- both at once is an error naming them (someone wrote to the relay with the other layout);
- neither (a new relay, or one holding only ``escale.json``) takes the ``layout`` option's
  value, flat by default, and a flat one gets its guard files first.

Guard files
-----------
A flat relay holds an empty *file* named like each first-level folder of the nested layout
(``a``, ``b``, ``m``…). An escale that only knows the nested layout (before 2026-12) reads
the header, then fails with "cannot create folder m" (FTP) or "m … is not a folder" (SFTP)
at its first write, since a file holds the folder's name: it never writes a nested object
into a flat relay. On WebDAV it fails (exit 2) before writing anything: wsgidav answers its
PUT into ``m/`` 409, ``rclone serve webdav`` 404, Apache its ``PROPFIND u/<cid>`` 400. An object whose own flat name would be a guard's (an object named ``m``;
escale has none) is written percent-encoded (``%6D``).
"""
from __future__ import annotations

import re

from ..errors import ConfigError, RelayError
from .base import RelayOption, check_name

NESTED = "nested"
FLAT = "flat"
LAYOUTS = (FLAT, NESTED)
#: first-level folders of the nested layout (docs/protocol.md, "Relay layout"); in a flat
#: relay, empty files of these names keep clients that only know folders from writing
GUARDS = frozenset(("a", "b", "m", "n", "q", "r", "s", "u"))

_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def parse_layout(text: str) -> str:
    """The ``layout`` option: ``flat`` or ``nested``."""
    t = text.strip().lower()
    if t not in LAYOUTS:
        raise ValueError("expected 'flat' (one folder: one listing request) or 'nested' (a folder per '/', "
                         "readable by escale before 2026-12)")
    return t


#: the option of the backends that have both layouts (the same object: one declaration)
LAYOUT = RelayOption(
    "layout", ("layout", "relay layout"), parse_layout,
    doc="ftp, sftp, webdav: the layout of a relay this client creates: 'flat' (the default; one folder, listed in one "
        "request) or 'nested' (a folder per '/', as escale before 2026-12 wrote; they cannot use a flat "
        "relay); an existing relay keeps the layout it has")


def new_layout(value) -> str:
    """The layout a new relay gets, from the ``layout`` option's text (or a program's
    constant; empty: flat); a ConfigError naming the option for anything else."""
    try:
        return parse_layout(value) if isinstance(value, str) and value.strip() else (value or FLAT)
    except ValueError as exc:
        raise ConfigError(str(exc), option="layout") from None


def object_path(address: str, layout: str | None, name: str) -> str:
    """The path of object ``name`` under the relay folder in ``layout`` (None: the relay
    was not opened, so its layout is unknown: an error naming the relay)."""
    check_name(name)
    if layout is None:
        raise RelayError(f"{address}: the relay is not open")
    return encode(name) if layout == FLAT else name


def encode(name: str) -> str:
    """The file name of object ``name`` in a flat relay (no ``/``; reversible)."""
    flat = name.replace("%", "%25").replace("/", "%2F")
    if flat in GUARDS:
        flat = "".join(f"%{ord(c):02X}" for c in flat)
    return flat


def decode(flat: str) -> str | None:
    """The object name a flat relay's file stands for; None for a guard file or a name
    this layout never writes (left alone, as unknown names are)."""
    if flat in GUARDS:
        return None
    name = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), flat)
    if encode(name) != flat:
        return None
    try:
        return check_name(name)
    except Exception:  # noqa: BLE001 - UnsafePath: not an object name
        return None


def detect(address: str, folders: set[str], files: set[str]) -> str | None:
    """The layout a relay's root listing shows (``folders`` and ``files``: the names of
    its entries, temporaries left out); None when it shows none (a new relay)."""
    nested = sorted(folders & GUARDS)
    flat = sorted(files & GUARDS) + sorted(f for f in files if "%2F" in f)[:3]
    if nested and flat:
        raise RelayError(f"relay folder {address} mixes two layouts: folders {', '.join(nested)} (nested) and "
                         f"files {', '.join(flat[:5])} (flat); a client of another escale version wrote to it. "
                         "escale will not guess which objects count: move one set away (docs/relays.md, "
                         "'Layouts')")
    if nested:
        return NESTED
    if flat:
        return FLAT
    return None


def mixed(address: str, entry: str, nested: bool = False) -> RelayError:
    """The error of a flat relay in which a nested layout's folder appeared (``nested``: a
    nested relay in which a flat layout's file appeared)."""
    if nested:
        return RelayError(f"relay folder {address} is nested, but holds the file {entry} of the flat layout: a "
                          "client of another escale version wrote to it (docs/relays.md, 'Layouts')")
    return RelayError(f"relay folder {address} is flat, but holds the folder {entry} of the nested layout: a "
                      "client of another escale version wrote to it (docs/relays.md, 'Layouts')")
