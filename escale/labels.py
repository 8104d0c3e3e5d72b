"""Member names as received from the relay, turned into labels safe to show and to put
in a file name.

A member card's ``name`` is chosen by whoever wrote the card (another member, or with
``encryption = off`` the relay itself). It reaches two places where a hostile string
does harm: terminals and logs (escape sequences, bidi overrides) and file names
(conflict copies embed the name: ``/``, ``..``, NUL…). And two members may claim the
same name, which would make conflict copies and ``escalectl status`` ambiguous.

The rule for a *received* card: its name is only a label. The label has no control
or format character, no ``/``, ``\\`` or leading dot (it is used as is in conflict-copy
names and log lines), at most 64 characters, and a name claimed by more than one
member id is labelled ``name#<id prefix>`` for every holder — the same on every
client, since it depends only on the cards on the relay, never on the order in which
one client happened to read them. Other text from the relay is escaped where printed
(:func:`printable`, :class:`EscapingFormatter`).
"""
from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping

#: a label longer than this (in characters) is cut; the id keeps it unique
MAX_LABEL = 64
#: characters of the client id added to a name several members claim
ID_PREFIX = 8
_FILE_UNSAFE = re.compile(r"[/\\:*?\"<>|]")


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every control/format/unassigned character escaped (``\\x1b``,
    ``\\u202e``): safe to print to a terminal or a log line."""
    out = []
    for ch in text[:limit] if limit else text:
        if unicodedata.category(ch)[0] in "CZ" and ch != " ":
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    if limit and len(text) > limit:
        out.append("…")
    return "".join(out)


def file_safe(label: str) -> str:
    """A label usable inside one file name: no separator, no control character, no
    leading dot, never empty, at most :data:`MAX_LABEL` characters."""
    cleaned = "".join("_" if unicodedata.category(ch)[0] in "CZ" and ch != " " else ch for ch in label)
    cleaned = _FILE_UNSAFE.sub("_", cleaned).strip(" .")
    cleaned = cleaned[:MAX_LABEL].rstrip(" .")
    return cleaned or "_"


def labels(names: Mapping[str, object]) -> dict[str, str]:
    """``{client id: label}`` for the member cards' ``names`` (id -> claimed name):
    each label printable, short, and unique in the repository."""
    shown = {cid: file_safe(name if isinstance(name, str) else "?") for cid, name in names.items()}
    claimed = Counter(shown.values())
    return {cid: label if claimed[label] == 1 else f"{label}#{cid[:ID_PREFIX]}" for cid, label in shown.items()}


class EscapingFormatter(logging.Formatter):
    """Escapes control characters in every log message (names, paths and errors read
    from the relay end up in log lines, and a line break could forge a line); the
    traceback, added after the message, keeps its line breaks."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return printable(super().formatMessage(record))
