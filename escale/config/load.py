"""Finding, reading and checking a configuration file: :func:`load_config`.

:func:`parse_config_text` turns text into a :class:`~escale.config.model.Config` (every
section built by :mod:`escale.config.repository`, then checked against the others);
:func:`load_config` also refuses a file that others can read when it holds a secret.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from .model import Config, RepositoryConfig
from .read import _classify, _parse_globals, _read_ini
from .repository import _build_repository

log = logging.getLogger(__name__)

#: the system-wide file, last in the search order; read from the package
#: (``escale.config.SYSTEM_CONFIG``) at each search, so tests and packagers can move it
SYSTEM_CONFIG = Path("/etc/escale.conf")

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
    system = getattr(sys.modules[__package__], "SYSTEM_CONFIG", SYSTEM_CONFIG)
    return [home / ".config" / "escale" / "escale.conf", home / ".escale" / "escale.conf", system]


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
