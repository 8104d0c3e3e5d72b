"""Which local files a folder syncs: the include / exclude / file type / directory options.

Pattern syntax (kept from escale 0.7 so existing configs mean the same thing):

* a pattern starting with ``/`` is a raw regular expression (the leading ``/`` and an
  optional trailing ``/`` are removed) matched with :func:`re.match`, i.e. anchored at
  the start only: ``/foo`` matches ``foobar``;
* any other pattern is a shell glob matched on the whole string, case-sensitively
  (:func:`fnmatch.fnmatchcase`): ``*.txt``, ``report-??.pdf``.

What each option is matched against:

* ``include``, ``exclude``: the file's base name.
* ``filetype``: extensions, with or without the dot (``txt``, ``.tar.gz``), compared
  case-insensitively with the end of the base name.
* ``include_directory``, ``exclude_directory``: the file's folder, as a relative POSIX
  path. A folder *matches* a pattern when the pattern matches the folder's full path, the
  path of one of its ancestors, or any single component. So ``exclude_directory = build``
  excludes ``build/x``, ``build/sub/y`` and ``src/build/z``; ``src/gen`` excludes
  ``src/gen/a/b`` but not ``gen/c``.

A file is accepted iff: (there is no ``include`` and no ``filetype``, or its name matches
an ``include``, or its extension is in ``filetype``) and its name matches no ``exclude``
and its folder is accepted. A folder is accepted iff it matches no ``exclude_directory``
and (``include_directory`` is empty or it matches one). The top-level folder ('') matches
no directory pattern, so with ``include_directory`` set, top-level files are not synced.
escale's own top-level ``.escale`` (in any letter case, as :func:`escale.access.safe_join`
refuses it) is never accepted, whatever the patterns.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

__all__ = ["Filter", "compile_pattern"]

_STATE_DIR = ".escale"

Matcher = Callable[[str], bool]


def compile_pattern(pattern: str) -> Matcher:
    """A predicate for one pattern (see the module docstring); ValueError if invalid."""
    if pattern.startswith("/"):
        body = pattern[1:]
        if body.endswith("/") and not body.endswith("\\/"):
            body = body[:-1]
        try:
            rx = re.compile(body)
        except re.error as exc:
            raise ValueError(f"invalid regular expression in filter pattern {pattern!r}: {exc}"
                             ) from exc
        return lambda text: rx.match(text) is not None
    rx = re.compile(fnmatch.translate(pattern))  # translate() anchors both ends
    return lambda text: rx.match(text) is not None


def _patterns(value: str | Iterable[str] | None, option: str) -> list[str]:
    """A clean list: one string is one pattern; blanks (e.g. from 'a, b,') are dropped."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{option}: pattern {item!r} is not a string")
        if item.strip():
            out.append(item.strip())
    return out


def _dir_candidates(reldir: str) -> list[str]:
    """The strings a folder's path is matched on: each ancestor path and each component."""
    if not reldir:
        return []
    parts = reldir.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return prefixes + parts


@dataclass
class Filter:
    """The selection rules of one synced folder (see the module docstring)."""

    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    filetype: list[str] = field(default_factory=list)
    include_directory: list[str] = field(default_factory=list)
    exclude_directory: list[str] = field(default_factory=list)

    _include: list[Matcher] = field(init=False, repr=False, compare=False)
    _exclude: list[Matcher] = field(init=False, repr=False, compare=False)
    _extensions: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _include_dir: list[Matcher] = field(init=False, repr=False, compare=False)
    _exclude_dir: list[Matcher] = field(init=False, repr=False, compare=False)
    #: accepts_dir's answer per folder: a scan asks it once per file, for far fewer folders
    _dir_memo: dict[str, bool] = field(init=False, repr=False, compare=False, default_factory=dict)
    #: no rule at all: every file is accepted (but escale's own folder)
    _everything: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        self.include = _patterns(self.include, "include")
        self.exclude = _patterns(self.exclude, "exclude")
        self.filetype = _patterns(self.filetype, "filetype")
        self.include_directory = _patterns(self.include_directory, "include directory")
        self.exclude_directory = _patterns(self.exclude_directory, "exclude directory")
        self._include = [compile_pattern(p) for p in self.include]
        self._exclude = [compile_pattern(p) for p in self.exclude]
        self._include_dir = [compile_pattern(p) for p in self.include_directory]
        self._exclude_dir = [compile_pattern(p) for p in self.exclude_directory]
        extensions = []
        for ext in self.filetype:
            clean = ext.lstrip("*").lstrip(".").lower()
            if not clean:
                raise ValueError(f"filetype: {ext!r} is not a file extension")
            extensions.append("." + clean)
        self._extensions = tuple(extensions)
        self._everything = not (self.include or self.exclude or self.filetype or self.include_directory
                                or self.exclude_directory)

    # -- names
    def accepts_name(self, basename: str) -> bool:
        """The include / filetype / exclude rules, on a base name alone."""
        if self._include or self._extensions:
            lowered = basename.lower()
            wanted = any(m(basename) for m in self._include) or any(
                lowered.endswith(ext) and len(lowered) > len(ext) for ext in self._extensions)
            if not wanted:
                return False
        return not any(m(basename) for m in self._exclude)

    # -- folders
    def accepts_dir(self, relpath: str | os.PathLike[str]) -> bool:
        """May files directly in this folder ('' = top level) be synced?"""
        reldir = os.fspath(relpath).strip("/")
        known = self._dir_memo.get(reldir)
        if known is None:
            known = self._accepts_dir(reldir)
            if len(self._dir_memo) >= 65536:
                self._dir_memo.clear()
            self._dir_memo[reldir] = known
        return known

    def _accepts_dir(self, reldir: str) -> bool:
        if not self.may_descend(reldir):
            return False
        if self._include_dir:
            candidates = _dir_candidates(reldir)
            return any(m(c) for m in self._include_dir for c in candidates)
        return True

    def may_descend(self, relpath: str | os.PathLike[str]) -> bool:
        """May a crawl enter this folder? Only exclusions prune: an included folder can sit
        below one that is not included itself. Use as ``listFiles(dirname=...)``."""
        reldir = os.fspath(relpath).strip("/")
        if reldir.split("/", 1)[0].lower() == _STATE_DIR:
            return False
        return not any(m(c) for m in self._exclude_dir for c in _dir_candidates(reldir))

    # -- files
    def accepts_file(self, relpath: str | os.PathLike[str]) -> bool:
        """Should the file at this relative POSIX path be synced?"""
        text = os.fspath(relpath).strip("/")
        reldir, _, basename = text.rpartition("/")
        if not basename or text.split("/", 1)[0].lower() == _STATE_DIR:
            return False
        if self._everything:  # no rule set: a scan asks this for every file
            return True
        return self.accepts_name(basename) and self.accepts_dir(reldir)

    @property
    def accepts_every_file(self) -> bool:
        """No rule is set: every file is accepted (but escale's own folder, which a scan
        never enters), so a scan need not ask for each."""
        return self._everything

    def select(self, relpaths: Iterable[str]) -> list[str]:
        """The accepted paths among ``relpaths``, in order (0.7's ``Manager.filter``)."""
        return [p for p in relpaths if self.accepts_file(p)]

    @property
    def is_empty(self) -> bool:
        """True when no option is set (everything but ``.escale/`` is accepted)."""
        return not (self.include or self.exclude or self.filetype or self.include_directory
                    or self.exclude_directory)
