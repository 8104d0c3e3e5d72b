"""How the receiving file system compares names: escale's own folder under any spelling, and twins.

On macOS (APFS, HFS+) and Windows (NTFS) ``.ESCALE`` *is* ``.escale``; Windows also drops
trailing dots and spaces (``.escale.``), reaches a file's default stream through
``.escale::$DATA`` and may give it the short name ``ESCALE~1``; HFS+ ignores some invisible
code points and stores names decomposed (NFD), so ``é`` and ``e`` + U+0301 are one name.
:func:`is_state_name` refuses all those spellings of escale's own folder everywhere, whatever
the local file system: a relay-supplied name must never reach it.

Two different names that one file system takes for the same file are *twins* (``a.txt`` and
``A.txt`` on a case-insensitive disk, NFC and NFD ``é.txt`` on a normalising one). Writing one
would overwrite the other, so the folder refuses a path whose component's spelling on disk
differs from the one asked for (:class:`NameTwin`), naming both. Whether the receiving file
system folds case or normalises is probed once per run in escale's own folder
(:meth:`FsRules.probe`); on a file system that does neither (Linux ext4, …) names are compared
exactly and nothing is checked.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import unicodedata
import uuid
from dataclasses import dataclass

from .errors import EscaleError

log = logging.getLogger(__name__)

__all__ = ["STATE_DIR", "fold", "is_state_name", "FsRules", "NameTwin"]

STATE_DIR = ".escale"
#: code points HFS+ ignores in names (the list git checks for ``.git``, CVE-2014-9390)
_HFS_IGNORABLE = dict.fromkeys(map(ord, "\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                        "\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"))
_SHORT_NAME = re.compile(r"^escale~[0-9]+$")


def _caseless(name: str) -> str:
    """Canonical caseless form (Unicode D145): NFD(casefold(NFD(name)))."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def fold(name: str) -> str:
    """The name as the most forgiving file system reads it: invisible code points dropped,
    case folded, normalised, an NTFS stream suffix and trailing dots/spaces removed."""
    n = _caseless(name.translate(_HFS_IGNORABLE))
    n = n.split(":", 1)[0]
    return n.rstrip(". ")


def is_state_name(name: str) -> bool:
    """Does ``name`` (one path component) reach escale's own folder on some file system?"""
    f = fold(name)
    return f == STATE_DIR or bool(_SHORT_NAME.match(f))


class NameTwin(EscaleError):
    """A path's name is spelled differently on disk: the file system takes both for one file."""

    def __init__(self, relpath: str, other: str):
        self.relpath, self.other = relpath, other
        super().__init__(f"{relpath!r} and {other!r} are one name on this file system (letter case or "
                         f"Unicode normalisation differ); {relpath!r} is not written, so neither "
                         "overwrites the other")


@dataclass(frozen=True)
class FsRules:
    """How one file system compares names."""

    case_insensitive: bool = False
    normalising: bool = False
    #: names are stored decomposed whatever was asked (HFS+): an NFD spelling on disk is the
    #: very name asked for, not a twin
    stores_nfd: bool = False
    #: Windows drops trailing dots and spaces
    trims: bool = os.name == "nt"

    @property
    def exact(self) -> bool:
        """Names are compared byte for byte: no twins possible."""
        return not (self.case_insensitive or self.normalising or self.trims)

    def same_name(self, asked: str, on_disk: str) -> bool:
        """Is ``on_disk`` just how this file system stores the name ``asked``?"""
        return asked == on_disk or (self.stores_nfd and unicodedata.normalize("NFD", asked) == on_disk)

    def key(self, name: str) -> str:
        """What this file system compares when it looks ``name`` (one component) up."""
        if self.case_insensitive:
            name = _caseless(name)
        elif self.normalising:
            name = unicodedata.normalize("NFD", name)
        return name.rstrip(". ") if self.trims else name

    @classmethod
    def probe(cls, dir_fd: int) -> FsRules:
        """Ask the file system itself, with a scratch file in folder ``dir_fd`` (escale's own)."""
        stem = f"name-probe-{uuid.uuid4().hex}-"
        made = stem + "A\u00e9"  # capital A, precomposed é (NFC)
        fd = os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        os.close(fd)
        try:
            rules = cls(case_insensitive=_exists(dir_fd, stem + "a\u00e9"),
                        normalising=_exists(dir_fd, stem + "Ae\u0301"),
                        stores_nfd=made not in os.listdir(dir_fd))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(made, dir_fd=dir_fd)
        log.debug("file system names: %s", rules)
        return rules


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
    except OSError:  # e.g. EILSEQ: the file system refuses the spelling, so it cannot be a twin
        return False
