"""Editing a configuration file from a program (:func:`set_option`) without touching
anything but the one value: comments, spelling, blank lines and line endings are kept, and
an edit that would stop the file from loading is refused.
"""
from __future__ import annotations

import configparser
import logging
import os
import re
import tempfile
from pathlib import Path

from ..errors import ConfigError
from .load import _read_text, parse_config_text
from .options import GLOBAL, OptionSpec, _suggest, lookup_option
from .read import _INLINE_COMMENT_RE

log = logging.getLogger(__name__)

_LINE_RE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_EOL_RE = re.compile(r"(\r\n|\r|\n)$")
_OPTION_LINE_RE = re.compile(r"^(?P<pre>\s*(?P<key>.*?)\s*[=:]\s*)(?P<value>.*)$")


def _scan(lines: list[str]) -> list[tuple[str, str | None]]:
    """Classify lines as configparser reads them: blank, comment, header, option or continuation."""
    out: list[tuple[str, str | None]] = []
    option_indent: int | None = None
    for i, line in enumerate(lines):
        body = _EOL_RE.sub("", line)
        if i == 0:
            body = body.lstrip("\ufeff")
        stripped = body.strip()
        if not stripped:
            out.append(("blank", None))
            continue
        if stripped.startswith(("#", ";")):
            out.append(("comment", None))
            continue
        indent = len(body) - len(body.lstrip())
        if option_indent is not None and indent > option_indent:
            out.append(("cont", None))
            continue
        header = configparser.ConfigParser.SECTCRE.match(stripped)
        if header:
            out.append(("header", header.group("header")))
            option_indent = None
            continue
        m = _OPTION_LINE_RE.match(stripped)
        out.append(("option", m.group("key") if m else None))
        option_indent = indent if m else None
    return out


def set_option(path: str | os.PathLike[str], section: str | None, option: str, value: str) -> None:
    """Set one option in the file, leaving every other byte as it was.

    ``section=None`` edits the global part. An existing line for the option
    (under any alias) keeps its spelling and only gets its value replaced;
    otherwise ``option = value`` is added after the section's last option.
    The result is checked with :func:`parse_config_text` before the file is
    atomically replaced, so an edit never turns a loadable file into a broken
    one (a file that is already broken may be completed option by option).
    """
    p = Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
    spec = lookup_option(option)
    if spec is None:
        raise ConfigError(f"unknown option '{option}'{_suggest(option)}", path=p, section=section,
                          option=option)
    if spec.scope == GLOBAL and section is not None:
        raise ConfigError("global option, put it before the first section", path=p, section=section,
                          option=option)
    value = str(value).strip()
    if "\n" in value or "\r" in value:
        raise ConfigError("a value must fit on one line", path=p, section=section, option=option)
    if _INLINE_COMMENT_RE.search(value):
        raise ConfigError("a value cannot hold '#' or ';' at its start or after a space: that starts a "
                          "comment", path=p, section=section, option=option)
    text = _read_text(p)
    lines = _LINE_RE.findall(text)
    kinds = _scan(lines)

    if section is None:
        start = 0
    else:
        starts = [i for i, (kind, name) in enumerate(kinds) if kind == "header" and name == section]
        if not starts:
            raise ConfigError(f"no section [{section}]", path=p)
        start = starts[0] + 1
    end = next((i for i in range(start, len(kinds)) if kinds[i][0] == "header"), len(kinds))

    eol_match = re.search(r"\r\n|\r|\n", text)
    eol = eol_match.group(0) if eol_match else "\n"
    target = None
    for i in range(start, end):
        kind, key = kinds[i]
        if kind == "option" and key is not None:
            found = lookup_option(key)
            if found is not None and found.field == spec.field:
                target = i
                break

    if target is not None:
        line = lines[target]
        line_eol = _EOL_RE.search(line)
        ending = line_eol.group(1) if line_eol else ""
        body = line[: len(line) - len(ending)]
        m = _OPTION_LINE_RE.match(body)
        assert m is not None
        pre = m.group("pre")
        if not m.group("value") and not pre[-1].isspace():
            pre += " "
        comment_at = _INLINE_COMMENT_RE.search(m.group("value"))
        comment = m.group("value")[comment_at.start():] if comment_at else ""  # kept as written
        if comment and not comment[0].isspace():
            comment = "   " + comment
        lines[target] = pre + value + comment + ending
        j = target + 1
        drop = []
        while j < end and kinds[j][0] in ("cont", "blank", "comment"):
            if kinds[j][0] == "cont":
                drop.append(j)
            j += 1
        for k in reversed(drop):
            del lines[k]
    else:
        last = max((i for i in range(start, end) if kinds[i][0] in ("option", "cont")), default=None)
        if last is None:
            if section is not None:
                last = start - 1
            else:
                # before the comments/blank lines that introduce the first section
                insert_at = end
                while insert_at > 0 and kinds[insert_at - 1][0] in ("blank", "comment"):
                    insert_at -= 1
                last = insert_at - 1
        if last >= 0 and not _EOL_RE.search(lines[last]):
            lines[last] += eol
        lines.insert(last + 1, f"{option} = {value}{eol}")

    new_text = "".join(lines)
    _check_edit(text, new_text, p, section, spec)
    _atomic_write(p, new_text.encode("utf-8"))
    log.info("%s: set %s'%s'", p, f"[{section}] " if section is not None else "", option)


def _check_edit(old_text: str, new_text: str, p: Path, section: str | None, spec: OptionSpec) -> None:
    """Refuse an edit that breaks the file, without blocking repairs of a broken file.

    A file that loaded must still load. A file that is already broken (say, a
    section being filled in one option at a time) may be written unless the
    first error is now about the option just set.
    """
    try:
        parse_config_text(new_text, p)
        return
    except ConfigError as exc:
        new_error = exc
    try:
        parse_config_text(old_text, p)
    except ConfigError:
        about = lookup_option(new_error.option) if new_error.option else None
        if about is not spec or new_error.section != section:
            log.debug("%s: written although it does not load yet: %s", p, new_error)
            return
    raise new_error


def _atomic_write(p: Path, data: bytes) -> None:
    """Replace the file in one rename so a crash never leaves half a configuration."""
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, p.stat().st_mode & 0o7777)
        except OSError:
            pass
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
