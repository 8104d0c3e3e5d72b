"""Read, check and edit escale's INI configuration file.

One file holds any number of *repositories*, one per ``[section]``. Options
written before the first section are global: they are inherited by every
section, except the few global-only ones (cache dir, logging) that configure
the process. Every option of escale 0.7 is still recognised under all of its
aliases so that old files keep loading; options that no longer mean anything
are accepted with a warning instead of an error.

Relay backends declare their own options (:attr:`escale.relay.base.Relay.options`); the
option table here is the core one, and :func:`option_table` adds the options of every
backend registered in :data:`escale.relay.BACKENDS`, so a new backend needs no change here.
A backend's own rules (an S3 bucket name) are its :meth:`~escale.relay.base.Relay.check_config`.

Everything a user can get wrong ends in a :class:`~escale.errors.ConfigError`
naming the file, the section, the option and the bad value (never the value of
a secret), so the CLI can exit with code 3 and a message that can be acted on.
"""
from __future__ import annotations

import configparser
import difflib
import functools
import hashlib
import logging
import math
import os
import posixpath
import re
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import platformdirs

from .deletions import DEFAULT_MAX_DELETE, DeleteLimit
from .encryption import TEXT_PREFIX, passphrase_file, passphrase_file_problem
from .errors import ConfigError
from .marker import FolderIdentity
from .values import _FALSE, _TRUE, parse_bool, parse_size, parse_verify_ssl  # noqa: F401 - re-exported
from .relay import BACKENDS, backend_for, parse_address, split_network_address
from .repository_id import parse_id

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the system-wide file, last in the search order (a module attribute so tests can move it)
SYSTEM_CONFIG = Path("/etc/escale.conf")

DEFAULT_REFRESH = 30.0
DEFAULT_MAXPAGESIZE = 200 * 10**6
DEFAULT_CHECKSUM = "sha256"
DEFAULT_TRASH_RETENTION_DAYS = 30.0
MAX_CLIENT_NAME = 64
MODES = ("shared", "upload", "download", "conservative")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# --------------------------------------------------------------------------- data model


@dataclass
class GlobalConfig:
    """Options that configure the process rather than one repository."""

    cache_dir: Path | None = None
    log_file: Path | None = None
    log_level: str = "INFO"
    log_rotate: int = 3
    #: "text" (a time, a level, a message) or "json" (one object a line, for log collectors)
    log_format: str = "text"


@dataclass
class RepositoryConfig:
    """One ``[section]``: a local folder kept in sync through one relay."""

    name: str
    config_path: Path | None
    local_path: Path
    relay_url: str
    relay_protocol: str
    client_name: str
    mode: str = "shared"
    refresh: float = DEFAULT_REFRESH
    quota: int | None = None
    puller_count: int | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    filetype: list[str] = field(default_factory=list)
    include_directory: list[str] = field(default_factory=list)
    exclude_directory: list[str] = field(default_factory=list)
    checksum: str = DEFAULT_CHECKSUM
    checksum_cache: bool | Path = True
    index: str | None = None
    maxpagesize: int = DEFAULT_MAXPAGESIZE
    encryption: str = "aes256gcm"
    passphrase: str | None = field(default=None, repr=False)
    padding: bool = True
    repository_id: str | None = None
    strict_permissions: bool = True
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    trash_retention_days: float = DEFAULT_TRASH_RETENTION_DAYS
    max_delete: DeleteLimit = field(default_factory=lambda: DeleteLimit.parse(DEFAULT_MAX_DELETE))
    timestamp: bool = True
    verbosity: int = 1
    #: a shell command run when a cycle fails (escale/alert.py), or None
    on_error: str | None = None
    #: keywords for the relay backend: ``port`` and the backend's declared options, parsed
    #: (repr=False: a backend's option may be secret)
    options: dict[str, object] = field(default_factory=dict, repr=False)
    cache_dir: Path | None = None
    #: options (as written) whose secret is in the configuration file itself, not in a file
    inline_secrets: list[str] = field(default_factory=list, repr=False)

    def state_root(self) -> Path:
        """Base folder of the repositories' local state (``cache dir``, else the user
        state folder); derived, never created here."""
        return Path(self.cache_dir if self.cache_dir is not None else platformdirs.user_state_path("escale"))

    def identity(self) -> FolderIdentity:
        """Finds this repository's state folder from its synced folder's marker
        (:mod:`escale.marker`): it follows the folder, not this file."""
        return FolderIdentity(Path(self.local_path), self.relay_url, self.state_root(), repository=self.name,
                              config_path=self.config_path)


@dataclass
class Config:
    """A whole configuration file: global options plus repositories in file order."""

    path: Path | None
    globals: GlobalConfig
    repositories: dict[str, RepositoryConfig]


def _sanitize(name: str) -> str:
    """A file-name-safe rendering of a section name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "_"


# --------------------------------------------------------------------------- option table

GLOBAL, REPO, RELAY, OBSOLETE = "global", "repository", "relay", "obsolete"


@dataclass(frozen=True)
class OptionSpec:
    """One option: its field name, every accepted spelling and where it may appear.

    ``scope`` is GLOBAL (before the first section only), REPO (a repository
    field, inheritable from the global part), RELAY (declared by relay backends,
    :attr:`escale.relay.base.Relay.options`; parsed with ``parse`` and passed to the
    backend as the keyword ``field`` through ``RepositoryConfig.options``) or OBSOLETE
    (0.7 option, accepted with a warning and ignored).
    """

    field: str
    aliases: tuple[str, ...]
    scope: str = REPO
    #: RELAY: text -> value for the backend's keyword (raises ValueError); None keeps the text
    parse: Callable[[str], object] | None = None
    #: never shown in messages (a token, a key)
    secret: bool = False
    doc: str = ""
    #: RELAY: the backend classes that declare the option, in registration order
    backends: tuple[type, ...] = ()

    @property
    def name(self) -> str:
        return self.aliases[0]


def _o(fieldname: str, *aliases: str, scope: str = REPO) -> OptionSpec:
    return OptionSpec(fieldname, aliases, scope)


#: options escale itself reads; relay backends declare theirs (:func:`option_table` adds them)
CORE_OPTIONS: tuple[OptionSpec, ...] = (
    # repository options
    _o("local_path", "local path", "path"),
    _o("relay_address", "relay address", "host address", "remote address", "address"),
    _o("relay_directory", "relay directory", "host directory", "remote directory", "directory",
       "relay dir", "remote dir", "host dir", "dir", "relay path", "remote path", "host path"),
    _o("port", "port", "host port", "relay port", "remote port"),
    _o("client_name", "client name", "client"),
    _o("mode", "mode", "synchronization mode"),
    _o("push_only", "push only", "read only"),
    _o("pull_only", "pull only", "write only"),
    _o("refresh", "refresh"),
    _o("quota", "disk quota", "quota"),
    _o("puller_count", "puller count", "pullers"),
    _o("include", "include", "include files", "filter", "pattern"),
    _o("exclude", "exclude", "exclude files"),
    _o("filetype", "file extension", "file type"),
    _o("include_directory", "include directory", "include directories"),
    _o("exclude_directory", "exclude directory", "exclude directories"),
    _o("checksum", "checksum", "hash algorithm"),
    _o("checksum_cache", "checksum cache"),
    _o("index", "index", "compact"),
    _o("maxpagesize", "maxpagesize", "maxarchivesize"),
    _o("encryption", "encryption"),
    _o("passphrase", "passphrase", "key"),
    _o("padding", "padding"),
    _o("repository_id", "repository id"),
    _o("strict_permissions", "strict permissions"),
    _o("user", "user", "auth user", "host user", "relay user", "remote user",
       "access key", "access key id", "aws access key id"),
    _o("password", "password", "secret", "secret file", "credential",
       "secret key", "secret access key", "aws secret access key"),
    _o("trash_retention", "trash retention", "trash days"),
    _o("max_delete", "max delete", "max deletes"),
    _o("timestamp", "modification time", "timestamp", "mtime"),
    _o("verbosity", "verbosity", "verbosity level"),
    _o("on_error", "on error", "on failure"),
    # escale 0.7 options that no longer mean anything: warned about, ignored. A backend
    # that declares one of these (every spelling) takes it over (see _relay_specs).
    _o("ssl_version", "ssl version", scope=OBSOLETE),  # TLS versions are negotiated
    _o("rclone_binary", "rclone binary", scope=OBSOLETE),  # until an rclone backend declares it
    _o("drive_binary", "drive binary", scope=OBSOLETE),  # the odeke-em tool; Drive is reached by its API
    _o("lock_timeout", "lock timeout", scope=OBSOLETE),
    _o("min_split_size", "min split size", "split size", "split", scope=OBSOLETE),
    _o("max_pending_transfers", "max pending transfers", scope=OBSOLETE),
    _o("retry_on_error", "retry on error", "retryonerror", scope=OBSOLETE),
    _o("pull_overwrite", "pull overwrite", scope=OBSOLETE),
    _o("allow_page_deletion", "allow page deletion", "page deletion", scope=OBSOLETE),
    _o("maintainer", "maintainer", "email", scope=OBSOLETE),
    _o("priority", "priority", scope=OBSOLETE),
    _o("keep_alive", "keep alive", scope=OBSOLETE),
    _o("protocol", "protocol", scope=OBSOLETE),
    _o("client_count", "client count", scope=OBSOLETE),
    _o("homogeneous_clients", "homogeneous clients", scope=OBSOLETE),
    _o("upload_count", "upload count", scope=OBSOLETE),
    _o("upload_max_wait", "upload max wait", scope=OBSOLETE),
    # global-only options
    _o("cache_dir", "cache dir", "cache", scope=GLOBAL),
    _o("log_file", "log file", scope=GLOBAL),
    _o("log_level", "log level", scope=GLOBAL),
    _o("log_rotate", "log rotate", scope=GLOBAL),
    _o("log_format", "log format", scope=GLOBAL),
)


def _key(name: str) -> str:
    """Lookup key: case, spaces, underscores and hyphens do not matter."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def _display(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def backend_label(cls: type) -> str:
    """How messages and docs name a backend: its scheme that matches its class name
    (``webdav`` for WebDAV, ``s3``), else its first scheme (``file``)."""
    schemes = tuple(getattr(cls, "schemes", ()))
    own = cls.__name__.lower()
    return own if own in schemes else (schemes[0] if schemes else own)


def _relay_specs(backends: tuple[type, ...], core: tuple[OptionSpec, ...]) -> list[OptionSpec]:
    """One RELAY spec per option the backends declare; a declaration shared by several
    backends must agree on field and spellings (a programming error otherwise)."""
    core_fields = {spec.field for spec in core if spec.scope != OBSOLETE}
    merged: dict[str, OptionSpec] = {}
    for cls in backends:
        for opt in getattr(cls, "options", ()):
            where = f"{cls.__name__}.options: {opt.name!r}"
            if opt.field in core_fields:
                raise AssertionError(f"{where} reuses the field {opt.field!r} of a core option")
            known = merged.get(opt.field)
            if known is None:
                merged[opt.field] = OptionSpec(opt.field, tuple(opt.aliases), RELAY, opt.parse, opt.secret,
                                               opt.doc, (cls,))
            elif known.aliases != tuple(opt.aliases) or known.secret != opt.secret:
                raise AssertionError(f"{where} is declared by {known.backends[0].__name__} with other "
                                     "spellings or secrecy; declare it once and share it")
            elif cls not in known.backends:
                merged[opt.field] = OptionSpec(known.field, known.aliases, RELAY, known.parse, known.secret,
                                               known.doc, known.backends + (cls,))
    return list(merged.values())


@functools.lru_cache(maxsize=None)
def _tables(backends: tuple[type, ...]) -> tuple[tuple[OptionSpec, ...], dict[str, OptionSpec]]:
    relay = _relay_specs(backends, CORE_OPTIONS)
    relay_keys = {_key(a) for spec in relay for a in spec.aliases}
    specs: list[OptionSpec] = []
    for spec in CORE_OPTIONS:
        taken = {_key(a) for a in spec.aliases} & relay_keys
        if taken and spec.scope == OBSOLETE:
            if len(taken) != len(spec.aliases):
                raise AssertionError(f"a backend takes over the 0.7 option {spec.name!r}: it must declare "
                                     f"every spelling of it ({', '.join(spec.aliases)})")
            continue  # a backend gives this 0.7 option a meaning again
        specs.append(spec)
    specs.extend(relay)
    table: dict[str, OptionSpec] = {}
    for spec in specs:
        for alias in spec.aliases:
            k = _key(alias)
            if k in table and table[k] is not spec:
                raise AssertionError(f"alias {alias!r} is ambiguous")  # programming error
            table[k] = spec
    return tuple(specs), table


def _registered() -> tuple[type, ...]:
    """The backend classes of :data:`escale.relay.BACKENDS`, each once, in order."""
    return tuple(dict.fromkeys(BACKENDS.values()))


def option_table() -> tuple[OptionSpec, ...]:
    """Every option: the core table plus the options of every registered backend."""
    return _tables(_registered())[0]


def lookup_option(name: str) -> OptionSpec | None:
    """The option a (possibly differently spelt) name refers to, or None."""
    return _tables(_registered())[1].get(_key(name))


def all_aliases() -> tuple[str, ...]:
    return tuple(a for spec in option_table() for a in spec.aliases)


def __getattr__(name: str) -> object:
    # OPTIONS and ALL_ALIASES follow the registered backends (a test may register one)
    if name == "OPTIONS":
        return option_table()
    if name == "ALL_ALIASES":
        return all_aliases()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(_display(name), all_aliases(), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


# --------------------------------------------------------------------------- value parsers

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


# --------------------------------------------------------------------------- reading the file

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


#: keys of _relay_location's extra options: the user and password written in the address
_ADDRESS_USER, _ADDRESS_PASSWORD = "\0user", "\0password"


def _relay_location(sec: _Section) -> tuple[str, str, dict[str, object]]:
    """(relay URL, protocol, extra options) from the address, directory and port options."""
    addr_v = sec.required("relay_address")
    scheme = addr_v.value.strip().partition("://")[0].lower() if "://" in addr_v.value else ""
    own_form = backend_for(scheme) if scheme else None
    if own_form is not None:  # a backend with its own address form (gdrive:///folder/path)
        dir_v = sec.raw("relay_directory")
        try:
            url = own_form.location(addr_v.value.strip(),
                                    os.path.expanduser(dir_v.value.strip()) if dir_v is not None else "")
        except ConfigError as exc:
            raise sec.error(addr_v, exc.detail) from None
        if url is not None:
            if sec.raw("port") is not None:
                log.warning("[%s] a port is meaningless for a %s relay; ignored", sec.name, scheme)
            return url, scheme, {}
    try:
        protocol, host, addr_port, addr_path = parse_address(addr_v.value)
    except ConfigError as exc:  # a bad port: name the file, section and option
        raise sec.error(addr_v, exc.detail) from None
    if not protocol:
        raise sec.error(addr_v, f"relay address '{addr_v.value}' has no protocol; write "
                                "'file:///absolute/path' or an absolute path for a mounted folder")
    if backend_for(protocol) is None:
        raise sec.error(addr_v, f"no relay backend for '{protocol}' yet "
                                f"(available: {', '.join(sorted(BACKENDS))})")
    extra: dict[str, object] = {}
    port = sec.get("port", _parse_port, None)
    if addr_port is not None:
        if port is not None and port != int(addr_port):
            port_v = sec.raw("port")
            assert port_v is not None
            raise sec.error(port_v, f"port {port} contradicts the port {addr_port} in the relay address")
        port = int(addr_port)
    if port is not None:
        extra["port"] = str(port)
    dir_v = sec.raw("relay_directory")
    directory = os.path.expanduser(dir_v.value.strip()) if dir_v is not None else ""

    if protocol == "file":
        if port is not None:
            log.warning("[%s] a port is meaningless for a file relay; ignored", sec.name)
        base = host  # parse_address puts a file relay's absolute path here
        if not base and addr_path:
            raise sec.error(addr_v, f"relay path '{addr_path}' is relative; write file:///absolute/path")
        if base and directory:
            if os.path.isabs(directory):
                inside = os.path.normpath(directory)
                if os.path.commonpath([inside, os.path.normpath(base)]) != os.path.normpath(base):
                    assert dir_v is not None
                    raise sec.error(dir_v, f"relay directory '{dir_v.value}' is absolute but not inside "
                                           f"the relay address path '{base}'; make it relative to the "
                                           "address, or leave the path out of the address")
                full = inside
            else:
                full = os.path.join(base, directory)
        elif directory:
            if not os.path.isabs(directory):
                assert dir_v is not None
                raise sec.error(dir_v, f"relay directory '{dir_v.value}' is relative and the relay "
                                       "address has no path; give an absolute path")
            full = directory
        elif base:
            full = base
        else:
            raise sec.error(addr_v, "a file relay needs an absolute path, e.g. file:///mnt/share/escale")
        return f"file://{os.path.normpath(full)}", protocol, extra

    # network relays: proto://[user@]host[:port]/address-path/directory (never the password)
    try:
        net = split_network_address(addr_v.value)
    except ConfigError as exc:
        raise sec.error(addr_v, exc.detail) from None
    if net.user is not None:
        extra[_ADDRESS_USER] = net.user
    if net.password is not None:
        extra[_ADDRESS_PASSWORD] = net.password
    addr_path = net.path.lstrip("/")
    path = posixpath.join(addr_path, directory.lstrip("/")) if directory else addr_path
    return f"{protocol}://{net.netloc(port)}/{path.strip('/')}".rstrip("/"), protocol, extra


def _resolve_password(v: _Value, user: str | None, path: Path | None,
                      section: str, strict: bool) -> tuple[str | None, str, bool]:
    """(user, password, inline): a literal password, or the credential file it names.

    The file holds one line ``user:password`` or just the password; with a
    known user, a line ``user:password`` among several lines is picked. A file
    other users can read is refused when ``strict`` (else a warning).
    Nothing read here is ever logged or shown in an error.
    """
    raw = v.value.strip()
    must_be_file = _key(v.option) == "secretfile"
    candidate = Path(os.path.expanduser(raw))
    if not candidate.is_absolute() and path is not None:
        candidate = path.parent / candidate
    try:
        is_file = candidate.is_file()
    except (OSError, ValueError):
        is_file = False
    if not is_file:
        if must_be_file:
            raise ConfigError(f"credential file {candidate} does not exist" + _where(v.section),
                              path=path, section=v.section, option=v.option)
        return user, raw, True
    try:
        mode = candidate.stat().st_mode
        lines = [ln.strip() for ln in candidate.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read credential file {candidate}: {exc}" + _where(v.section),
                          path=path, section=v.section, option=v.option) from None
    if mode & 0o077:
        msg = (f"credential file {candidate} can be read by other users (chmod 600 it, or set "
               "'strict permissions = no')")
        if strict:
            raise ConfigError(msg + _where(v.section), path=path, section=v.section, option=v.option)
        log.warning("[%s] %s", section, msg)
    if not lines:
        raise ConfigError(f"credential file {candidate} is empty" + _where(v.section),
                          path=path, section=v.section, option=v.option)
    if user is not None:
        for line in lines:
            if line.startswith(user + ":"):
                return user, line[len(user) + 1:], False
        return user, lines[0], False
    first = lines[0]
    if ":" in first:
        file_user, password = first.split(":", 1)
        return (file_user or None), password, False
    return None, first, False


def _relay_options(sec: _Section, backend: type, options: dict[str, object], inline_secrets: list[str]) -> None:
    """Parse the section's relay options into ``options`` (the backend's keywords).

    Every option is checked with its declared parser, even one that belongs to another
    backend (a bad value is an error wherever it is); one that does not belong to this
    section's backend is then ignored, with a warning naming the backends it is for when
    the section itself sets it (one inherited from the global part may be for others).
    """
    for spec in option_table():
        if spec.scope != RELAY or (v := sec.raw(spec.field)) is None:
            continue
        parse = spec.parse
        if backend in spec.backends:  # the section's own backend's parser
            parse = next((o.parse for o in backend.options if o.field == spec.field), parse)
        value = sec.get(spec.field, parse or str.strip, None)
        if backend not in spec.backends:
            owners = "/".join(sorted({backend_label(cls) for cls in spec.backends}))
            (log.warning if v.section is not None else log.info)(
                "[%s] option '%s' only applies to %s relays; ignored", sec.name, v.option, owners)
            continue
        options[spec.field] = value
        if spec.secret:
            inline_secrets.append(v.option)


def _backend_error(sec: _Section, exc: ConfigError) -> ConfigError:
    """A backend's refusal (:meth:`Relay.check_config`), placed at the option as written."""
    spec = lookup_option(exc.option) if exc.option else lookup_option("relay address")
    v = sec.raw(spec.field) if spec is not None else None
    if v is not None:
        return sec.error(v, exc.detail)
    return ConfigError(exc.detail, path=sec.path, section=sec.name, option=exc.option or "relay address")


def _not_a_folder(p: Path) -> Path | None:
    """The path itself, or its nearest existing parent, when that is not a folder."""
    for candidate in (p, *p.parents):
        try:
            if candidate.is_dir():
                return None
            if candidate.exists() or candidate.is_symlink():
                return candidate
        except OSError:
            return None  # unreadable: the sync reports it with the OS's own words
    return None


def _encryption(sec: _Section, passphrase_v: _Value | None) -> str:
    """The cipher, or "off" only when the repository's own section says so.

    A global ``encryption = off`` would silently apply to any section added later (as
    with a copied example file), and a passphrase next to ``off`` says the opposite;
    both are refused, as is a repository with neither a passphrase nor ``off``.
    """
    enc_v = sec.raw("encryption")
    chosen = sec.get("encryption", _parse_encryption, None)
    if chosen == "off":
        assert enc_v is not None
        if enc_v.section is None:
            raise ConfigError("'encryption = off' before the first section would make every repository, "
                              "even one added later, plaintext; write it in the section of each "
                              "repository that is to stay unencrypted", path=sec.path, option=enc_v.option)
        if passphrase_v is not None:
            where = "" if passphrase_v.section is not None else " (given before the first section)"
            raise ConfigError(f"'encryption = off' contradicts the 'passphrase'{where}: remove the "
                              "passphrase to keep this repository in plaintext, or remove "
                              "'encryption = off' to encrypt it", path=sec.path, section=sec.name,
                              option=enc_v.option)
        return "off"
    if passphrase_v is None:
        what = (f"encryption = {chosen} needs a 'passphrase'" if chosen else
                "no 'passphrase', and every repository is encrypted unless its own section says "
                "'encryption = off'")
        raise ConfigError(f"{what}; add 'passphrase = ~/.config/escale/{_sanitize(sec.name)}.passphrase' "
                          "naming a file that holds the passphrase (the same on every machine; chmod 600), "
                          "or, for a relay you trust with your files, 'encryption = off' in this section",
                          path=sec.path, section=sec.name, option="passphrase")
    return chosen or "aes256gcm"


def _default_client_name(section: str) -> str:
    host = socket.gethostname()
    return section if not host or host == "localhost" else host


def _build_repository(name: str, vals: dict[str, _Value], path: Path | None,
                      g: GlobalConfig) -> RepositoryConfig:
    sec = _Section(name, vals, path)
    local_v = sec.required("local_path")
    sec.required("relay_address")
    local_path = sec.get("local_path", _parse_abs_path, Path("/"))
    if (blocker := _not_a_folder(local_path)) is not None:
        raise sec.error(local_v, f"{blocker} is not a folder; 'local path' must name a folder "
                                 "(or a path where one can be created)")
    relay_url, protocol, options = _relay_location(sec)
    if protocol == "file":
        relay_real = os.path.realpath(relay_url[len("file://"):])
        local_real = os.path.realpath(local_path)
        if os.path.commonpath([relay_real, local_real]) in (relay_real, local_real):
            raise sec.error(local_v, f"the local folder {local_path} and the relay folder "
                                     f"{relay_url[len('file://'):]} overlap; keep them apart")

    client_v = sec.raw("client_name")
    if client_v is None:
        default_name = _default_client_name(name)
        try:
            client_name = _parse_client_name(default_name)
        except ValueError as exc:
            raise ConfigError(f"the default client name '{default_name}' is unusable ({exc}); "
                              "set 'client name'", path=path, section=name) from None
    else:
        client_name = sec.get("client_name", _parse_client_name, "")

    mode = sec.get("mode", _parse_mode, None)
    push_only = sec.get("push_only", parse_bool, False)
    pull_only = sec.get("pull_only", parse_bool, False)
    if push_only and pull_only:
        v = sec.raw("pull_only")
        assert v is not None
        raise sec.error(v, "'push only' and 'pull only' cannot both be on; use 'mode' instead")
    for flag, implied, fname in ((push_only, "upload", "push_only"), (pull_only, "download", "pull_only")):
        if flag:
            if mode is not None and mode != implied:
                v = sec.raw(fname)
                assert v is not None
                raise sec.error(v, f"'{v.option}' means mode = {implied}, which contradicts "
                                   f"mode = {mode}; keep only one of them")
            mode = implied

    strict = sec.get("strict_permissions", parse_bool, True)
    inline_secrets: list[str] = []
    user = sec.get("user", lambda t: t.strip(), None)
    address_user, password = options.pop(_ADDRESS_USER, None), options.pop(_ADDRESS_PASSWORD, None)
    if password is not None:
        inline_secrets.append("relay address")  # user:password@host: a secret written in the file
    if user is None:
        user = address_user
    pw_v = sec.raw("password")
    if pw_v is not None:
        user, password, inline = _resolve_password(pw_v, user, path, name, strict)
        if inline:
            inline_secrets.append(pw_v.option)
    passphrase_v = sec.raw("passphrase")
    encryption = _encryption(sec, passphrase_v)
    if passphrase_v is not None:
        if passphrase_file(passphrase_v.value, path) is None:
            if not passphrase_v.value.strip()[len(TEXT_PREFIX):].strip():
                raise sec.error(passphrase_v, f"empty passphrase after '{TEXT_PREFIX}'")
            inline_secrets.append(passphrase_v.option)
        elif (problem := passphrase_file_problem(passphrase_v.value, path)) is not None:
            raise sec.error(passphrase_v, problem)

    backend = backend_for(protocol)
    assert backend is not None  # _relay_location refused unknown protocols
    _relay_options(sec, backend, options, inline_secrets)
    try:
        backend.check_config(sec.required("relay_address").value, user=user, password=password,
                             options=options)
    except ConfigError as exc:
        raise _backend_error(sec, exc) from None
    except ValueError as exc:
        raise sec.error(sec.required("relay_address"), str(exc)) from None

    return RepositoryConfig(
        name=name,
        config_path=path,
        local_path=local_path,
        relay_url=relay_url,
        relay_protocol=protocol,
        client_name=client_name,
        mode=mode or "shared",
        refresh=sec.get("refresh", _parse_refresh, DEFAULT_REFRESH),
        quota=sec.get("quota", _parse_quota, None),
        puller_count=sec.get("puller_count", lambda t: _parse_int(t, 1), None),
        include=sec.get("include", _parse_list, []),
        exclude=sec.get("exclude", _parse_list, []),
        filetype=sec.get("filetype", _parse_extensions, []),
        include_directory=sec.get("include_directory", _parse_list, []),
        exclude_directory=sec.get("exclude_directory", _parse_list, []),
        checksum=sec.get("checksum", _parse_checksum, DEFAULT_CHECKSUM),
        checksum_cache=sec.get("checksum_cache", _parse_checksum_cache, True),
        index=sec.get("index", _parse_index, None),
        maxpagesize=sec.get("maxpagesize", _parse_positive_size, DEFAULT_MAXPAGESIZE),
        encryption=encryption,
        passphrase=passphrase_v.value if passphrase_v is not None else None,
        padding=sec.get("padding", parse_bool, True),
        repository_id=sec.get("repository_id", parse_id, None),
        strict_permissions=strict,
        user=user or None,
        password=password,
        trash_retention_days=sec.get("trash_retention", _parse_trash, DEFAULT_TRASH_RETENTION_DAYS),
        max_delete=sec.get("max_delete", DeleteLimit.parse, DeleteLimit.parse(DEFAULT_MAX_DELETE)),
        timestamp=sec.get("timestamp", _parse_timestamp, True),
        verbosity=sec.get("verbosity", lambda t: _parse_int(t, 0), 1),
        on_error=sec.get("on_error", _parse_command, None),
        options=options,
        cache_dir=g.cache_dir,
        inline_secrets=inline_secrets,
    )


def _check_across(repos: dict[str, RepositoryConfig], path: Path | None) -> None:
    """Refuse sections that would trample on each other."""
    seen: dict[tuple[str, str], str] = {}
    for r in repos.values():
        key = (r.relay_url, r.client_name)
        if key in seen:
            raise ConfigError(f"section [{seen[key]}] already uses client name '{r.client_name}' on relay "
                              f"{r.relay_url}; give this section a different 'client name'",
                              path=path, section=r.name)
        seen[key] = r.name
    for r in repos.values():
        if r.relay_protocol != "file":
            continue
        relay_real = os.path.realpath(r.relay_url[len("file://"):])
        for s in repos.values():
            local_real = os.path.realpath(s.local_path)
            if s is not r and os.path.commonpath([relay_real, local_real]) in (relay_real, local_real):
                raise ConfigError(f"its relay folder {relay_real} overlaps the local folder of "
                                  f"[{s.name}] ({s.local_path}); keep them apart",
                                  path=path, section=r.name)


def parse_config_text(text: str, path: str | Path | None = None) -> Config:
    """Parse configuration text; ``path`` is used for messages, state and relative credential files."""
    cfg_path = Path(os.path.abspath(os.path.expanduser(os.fspath(path)))) if path is not None else None
    raw_globals, raw_sections = _read_ini(text, cfg_path)
    inherited, global_vals, _ = _classify(raw_globals, None, cfg_path)
    g = _parse_globals(global_vals, cfg_path)
    if not raw_sections:
        raise ConfigError("no repository section; add a [section] with 'local path' and 'relay address'",
                          path=cfg_path)
    repos: dict[str, RepositoryConfig] = {}
    for name, raw in raw_sections.items():
        own, _, _ = _classify(raw, name, cfg_path)
        repos[name] = _build_repository(name, {**inherited, **own}, cfg_path, g)
    _check_across(repos, cfg_path)
    return Config(path=cfg_path, globals=g, repositories=repos)


# --------------------------------------------------------------------------- finding and loading


def config_search_path() -> list[Path]:
    """Where a configuration file is looked for without ``-c``, first match wins."""
    home = Path.home()
    return [home / ".config" / "escale" / "escale.conf", home / ".escale" / "escale.conf", SYSTEM_CONFIG]


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The configuration file to use: ``explicit`` if given, else the first one that exists.

    Only looks; never creates a file or folder (escale 0.7 created /etc/escale.conf as root).
    """
    if explicit is not None:
        p = Path(os.path.expanduser(os.fspath(explicit)))
        if not p.is_file():
            what = "is not a file" if p.exists() else "does not exist"
            raise ConfigError(f"configuration file {what}", path=p)
        return p
    candidates = config_search_path()
    for p in candidates:
        if p.is_file():
            return p
    raise ConfigError("no configuration file found; looked in " + ", ".join(map(str, candidates)))


def _read_text(p: Path) -> str:
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file: {exc.strerror or exc}", path=p) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"line {line}: not valid UTF-8 text", path=p) from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Find, read and check the configuration file (ConfigError on any problem)."""
    p = find_config(path)
    cfg = parse_config_text(_read_text(p), p)
    _check_file_privacy(cfg, p)
    return cfg


def _check_file_privacy(cfg: Config, p: Path) -> None:
    """Refuse a file that others can read when it holds a passphrase or password itself.

    ``strict permissions = no`` in a section turns the refusal into a warning for it.
    """
    exposed = [r for r in cfg.repositories.values() if r.inline_secrets]
    if not exposed:
        return
    try:
        mode = p.stat().st_mode
    except OSError:
        return
    if not mode & 0o077:
        return
    shown = cfg.path or p
    for r in exposed:
        msg = (f"holds {' and '.join(repr(o) for o in r.inline_secrets)} in the file itself, and the file "
               f"can be read by other users (mode {mode & 0o777:o}); chmod 600 {shown}, or put the secret in "
               "a file of its own (chmod 600)")
        if r.strict_permissions:
            raise ConfigError(msg + ", or set 'strict permissions = no'", path=shown, section=r.name,
                              option=r.inline_secrets[0])
        log.warning("%s [%s]: %s", shown, r.name, msg)


# --------------------------------------------------------------------------- editing


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


__all__ = ["Config", "GlobalConfig", "OPTIONS", "OptionSpec", "RepositoryConfig", "SYSTEM_CONFIG",
           "config_search_path", "find_config", "load_config", "lookup_option", "parse_bool",
           "parse_config_text", "parse_size", "set_option"]
