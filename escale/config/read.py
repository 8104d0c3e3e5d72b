"""Reading the INI text: the global part and the sections, each option sorted by scope,
and typed getters that report a bad value with the file, section and option.
"""
from __future__ import annotations

import configparser
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from ..errors import ConfigError
from .model import GlobalConfig
from .options import GLOBAL, OBSOLETE, lookup_option, option_table, _suggest
from .parsers import _parse_abs_path, _parse_int, _parse_log_format, _parse_log_level

log = logging.getLogger(__name__)

T = TypeVar("T")

_GLOBAL_HEADER = "\x00escale-global\x00"
#: after whitespace (or at the start of a line), these start a comment, in every option
INLINE_COMMENT_PREFIXES = ("#", ";")
_INLINE_COMMENT_RE = re.compile(r"(?:^|\s+)[#;]")
_NO_DEFAULT_SECTION = "\x00escale-no-default\x00"
_RESERVED_SECTIONS = ("default", "error")
_SECRET_FIELDS = ("password", "passphrase")


@dataclass
class _Value:
    """One option as written: for error messages and for origin (None = global part)."""

    option: str
    value: str
    section: str | None


def _where(section: str | None) -> str:
    return "" if section is not None else " (in the global part, before the first section)"


def _bad(v: _Value, reason: str, path: Path | None) -> ConfigError:
    spec = lookup_option(v.option)
    shown = "<hidden>" if spec is not None and (spec.secret or spec.field in _SECRET_FIELDS) else v.value
    return ConfigError(f"bad value '{shown}'{_where(v.section)}: {reason}",
                       path=path, section=v.section, option=v.option)


def _read_ini(text: str, path: Path | None) -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    """Split the file into global (key, value) pairs and sections, in file order."""
    # one rule for every option: '#' or ';' after whitespace starts a comment (never part of a value)
    parser = configparser.ConfigParser(interpolation=None, default_section=_NO_DEFAULT_SECTION,
                                       strict=True, inline_comment_prefixes=INLINE_COMMENT_PREFIXES)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep spelling for messages
    text = text.lstrip("\ufeff")
    try:
        parser.read_string(f"[{_GLOBAL_HEADER}]\n{text}", source=str(path or "<string>"))
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f"line {(exc.lineno or 1) - 1}: section [{exc.section}] appears twice",
                          path=path) from None
    except configparser.DuplicateOptionError as exc:
        where = "the global part" if exc.section == _GLOBAL_HEADER else f"[{exc.section}]"
        raise ConfigError(f"line {(exc.lineno or 1) - 1}: option '{exc.option}' appears twice in {where}",
                          path=path) from None
    except configparser.ParsingError as exc:
        lineno, line = exc.errors[0]
        raise ConfigError(f"line {lineno - 1}: cannot parse {line} "
                          "(expected 'option = value' or '[section]')", path=path) from None
    except configparser.Error as exc:  # pragma: no cover - other syntax errors
        raise ConfigError(f"syntax error: {exc}", path=path) from None
    sections: dict[str, list[tuple[str, str]]] = {}
    for name in parser.sections():
        if name == _GLOBAL_HEADER:
            continue
        if name.strip().lower() in _RESERVED_SECTIONS:
            raise ConfigError(f"section name [{name}] is reserved; rename the section", path=path,
                              section=name)
        if not name.strip():
            raise ConfigError("a section name cannot be blank", path=path)
        sections[name] = list(parser.items(name, raw=True))
    return list(parser.items(_GLOBAL_HEADER, raw=True)), sections


def _classify(raw: list[tuple[str, str]], section: str | None, path: Path | None
              ) -> tuple[dict[str, _Value], dict[str, _Value], dict[str, _Value]]:
    """Sort one block's options into (repository/relay, global-only, obsolete) by field."""
    fields: dict[str, _Value] = {}
    globals_: dict[str, _Value] = {}
    obsolete: dict[str, _Value] = {}
    for option, value in raw:
        spec = lookup_option(option)
        if spec is None:
            raise ConfigError(f"unknown option '{option}'{_where(section)}{_suggest(option)}",
                              path=path, section=section, option=option)
        if spec.scope == GLOBAL and section is not None:
            raise ConfigError("global option, put it before the first section",
                              path=path, section=section, option=option)
        target = {GLOBAL: globals_, OBSOLETE: obsolete}.get(spec.scope, fields)
        if spec.field in target:
            first = target[spec.field].option
            raise ConfigError(f"option given twice{_where(section)} (also as '{first}')",
                              path=path, section=section, option=option)
        target[spec.field] = _Value(option, value, section)
    for v in obsolete.values():
        log.warning("%s%s: option '%s' is obsolete and ignored",
                    path or "<config>", f" [{section}]" if section is not None else "", v.option)
    return fields, globals_, obsolete


def _parse_globals(vals: dict[str, _Value], path: Path | None) -> GlobalConfig:
    g = GlobalConfig()
    parsers: dict[str, Callable[[str], object]] = {
        "cache_dir": _parse_abs_path,
        "log_file": _parse_abs_path,
        "log_level": _parse_log_level,
        "log_rotate": lambda t: _parse_int(t, 0),
        "log_format": _parse_log_format,
    }
    for name, v in vals.items():
        if not v.value.strip():
            continue
        try:
            setattr(g, name, parsers[name](v.value))
        except ValueError as exc:
            raise _bad(v, str(exc), path) from None
    return g


class _Section:
    """The merged options of one section, with typed getters that report bad values."""

    def __init__(self, name: str, vals: dict[str, _Value], path: Path | None):
        self.name, self.vals, self.path = name, vals, path

    def raw(self, name: str) -> _Value | None:
        v = self.vals.get(name)
        return v if v is not None and v.value.strip() else None

    def get(self, name: str, parser: Callable[[str], T], default: T) -> T:
        v = self.raw(name)
        if v is None:
            return default
        try:
            return parser(v.value)
        except ValueError as exc:
            raise _bad(v, str(exc), self.path) from None

    def required(self, name: str) -> _Value:
        v = self.raw(name)
        if v is None:
            spec = next(s for s in option_table() if s.field == name)
            raise ConfigError(f"missing required option '{spec.name}'", path=self.path, section=self.name)
        return v

    def error(self, v: _Value, message: str) -> ConfigError:
        return ConfigError(message + _where(v.section), path=self.path, section=v.section, option=v.option)
