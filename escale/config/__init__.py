"""Read, check and edit escale's INI configuration file.

One file holds any number of *repositories*, one per ``[section]``. Options
written before the first section are global: they are inherited by every
section, except the few global-only ones (cache dir, logging) that configure
the process. Every option of escale 0.7 is still recognised under all of its
aliases so that old files keep loading; options that no longer mean anything
are accepted with a warning instead of an error.

Relay backends declare their own options (:attr:`escale.relay.base.Relay.options`); the
option table holds the core ones, and :func:`option_table` adds the options of every
backend registered in :data:`escale.relay.BACKENDS`, so a new backend needs no change here.
A backend's own rules (an S3 bucket name) are its :meth:`~escale.relay.base.Relay.check_config`.

Everything a user can get wrong ends in a :class:`~escale.errors.ConfigError`
naming the file, the section, the option and the bad value (never the value of
a secret), so the CLI can exit with code 3 and a message that can be acted on.

Where each part lives:

- :mod:`~escale.config.model`: the records (:class:`Config`, :class:`GlobalConfig`,
  :class:`RepositoryConfig`) and defaults;
- :mod:`~escale.config.options`: the option table, spellings, lookup and suggestions, and the
  registration of the backends' options;
- :mod:`~escale.config.parsers`: the core options' value parsers (shared ones are in
  :mod:`escale.values`);
- :mod:`~escale.config.read`: the INI text into options sorted by scope, with typed getters;
- :mod:`~escale.config.repository`: one section into one RepositoryConfig;
- :mod:`~escale.config.load`: finding, reading and checking a file (:func:`load_config`);
- :mod:`~escale.config.editor`: :func:`set_option`, an edit that keeps every comment.
"""
from __future__ import annotations

from ..values import parse_bool, parse_size, parse_verify_ssl
from .editor import set_option
from .load import SYSTEM_CONFIG, config_search_path, find_config, load_config, parse_config_text
from .model import (DEFAULT_CHECKSUM, DEFAULT_MAXPAGESIZE, DEFAULT_REFRESH, DEFAULT_TRASH_RETENTION_DAYS,
                    LOG_LEVELS, MAX_CLIENT_NAME, MODES, Config, GlobalConfig, RepositoryConfig)
from .options import (CORE_OPTIONS, GLOBAL, OBSOLETE, RELAY, REPO, OptionSpec, all_aliases, backend_label,
                      lookup_option, option_table)
from .read import INLINE_COMMENT_PREFIXES, _bad, _Value  # noqa: F401 - for tests of messages
from . import relocate  # noqa: F401,E402 - registers RepositoryConfig.moved / record_move


def __getattr__(name: str) -> object:
    # OPTIONS and ALL_ALIASES follow the registered backends (a test may register one)
    if name == "OPTIONS":
        return option_table()
    if name == "ALL_ALIASES":
        return all_aliases()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ALL_ALIASES", "CORE_OPTIONS", "Config", "DEFAULT_CHECKSUM", "DEFAULT_MAXPAGESIZE", "DEFAULT_REFRESH",
           "DEFAULT_TRASH_RETENTION_DAYS", "GLOBAL", "GlobalConfig", "INLINE_COMMENT_PREFIXES", "LOG_LEVELS",
           "MAX_CLIENT_NAME", "MODES", "OBSOLETE", "OPTIONS", "OptionSpec", "RELAY", "REPO", "RepositoryConfig",
           "SYSTEM_CONFIG", "all_aliases", "backend_label", "config_search_path", "find_config", "load_config",
           "lookup_option", "option_table", "parse_bool", "parse_config_text", "parse_size", "parse_verify_ssl",
           "set_option"]
