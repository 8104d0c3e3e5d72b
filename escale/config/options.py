"""The option table: every option's field, spellings and scope, and how a name is looked up.

The core table (:data:`CORE_OPTIONS`) holds the options escale itself reads. Relay backends
declare theirs (:attr:`escale.relay.base.Relay.options`); :func:`option_table` adds the
options of every backend registered in :data:`escale.relay.BACKENDS`, so that a new backend
needs no change here. Spellings ignore case, spaces, ``_`` and ``-``.
"""
from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import Callable

from ..relay import BACKENDS

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
    _o("full_scan", "full scan", "full scan interval", "rescan"),
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


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(_display(name), all_aliases(), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
