"""Where a repository moves (``escalectl migrate``), and how this file follows it.

The configuration side of a relay move (the copy itself is :mod:`escale.migrate`, the
reading of a notice :mod:`escale.sync.moves`): the destination as the user names it
(an address, another section, another file), a section as the file reads with another
``relay address`` (so the options it holds for that kind of relay apply), and the
edit that records the move in place, comments kept.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ConfigError, EscaleError
from ..migrate import alias_state, public_address
from ..relay import backend_for, parse_address
from ..relay.base import Relay
from .editor import set_option
from . import model
from .load import load_config

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# destination
# ---------------------------------------------------------------------------------------
@dataclass
class Destination:
    """Where to move: the section as it will read afterwards, and the option lines to
    write into this client's configuration for it."""

    config: object  # RepositoryConfig
    options: dict[str, str]


def destination_for(cfg, destination: str, config) -> Destination:
    """DESTINATION as ``escalectl migrate`` takes it: another section's name, a
    configuration file (its section of the same name, or its only one), or a relay
    address (reached with this section's credentials)."""
    other = None
    if destination in config.repositories and destination != cfg.name:
        other = config.repositories[destination]
    elif "://" not in destination and Path(os.path.expanduser(destination)).is_file():
        theirs = load_config(os.path.expanduser(destination))
        other = theirs.repositories.get(cfg.name)
        if other is None and len(theirs.repositories) == 1:
            other = next(iter(theirs.repositories.values()))
        if other is None:
            raise ConfigError(f"no section [{cfg.name}] (and more than one section) in {destination}",
                              path=destination)
    if other is not None:
        dest = replace(cfg, relay_url=other.relay_url, relay_protocol=other.relay_protocol, user=other.user,
                       password=other.password, options=dict(other.options), quota=other.quota)
        options = {"relay address": other.relay_url}
        if other.user != cfg.user and other.user is not None:
            options["user"] = other.user
        if other.password != cfg.password and other.password is not None:
            options["password"] = other.password
        backend = backend_for(other.relay_protocol)
        names = {o.field: o.name for o in getattr(backend, "options", ())}
        for key, value in other.options.items():
            if cfg.options.get(key) != value and key in names and isinstance(value, str):
                options[names[key]] = value
        return Destination(dest, options)
    proto = parse_address(destination)[0]
    if backend_for(proto) is None:
        raise ConfigError(f"'{destination}' is no section of {config.path}, no configuration file and no relay "
                          f"address escale knows (schemes: file, http(s), webdav(s), s3…)", path=config.path)
    if proto == "file" and not destination.startswith("file://"):
        destination = "file://" + os.path.abspath(os.path.expanduser(destination))
    section = _section_at(cfg.config_path, cfg.name, destination) if cfg.config_path else None
    return Destination(section or replace(cfg, relay_url=destination, relay_protocol=proto),
                       {"relay address": destination})


def _section_at(path, name: str, address: str):
    """Section ``name`` of the configuration file as it would read with ``relay address =
    address``: parsed from a private copy of the file (in its folder, for relative
    paths), so that the options it holds for that kind of relay apply. None if it
    cannot be read."""
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".escale-move")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(Path(path).read_bytes())
        set_option(tmp, name, "relay address", address)
        section = load_config(tmp).repositories.get(name)
    except (EscaleError, OSError) as exc:
        log.warning("%s: cannot read %s with the relay address %s: %s", name, path, public_address(address), exc)
        return None
    finally:
        os.unlink(tmp)
    return replace(section, config_path=Path(path)) if section is not None else None


def open_relay(cfg) -> Relay:
    """A section's relay (not opened), built as the daemon builds it."""
    from ..manager import Manager

    return Manager.from_config(cfg).relay


def record_move(ctx, section, options: dict[str, str]) -> None:
    """After a move: this client's state folder gets an alias under the new address,
    and its configuration file the new option lines (edited in place, comments kept)."""
    alias_state(ctx, section.relay_url)
    path = ctx.config_path
    if path is None:
        return
    for option, value in options.items():
        set_option(path, ctx.name, option, value)
    log.info("%s: %s now names the relay %s", ctx.name, path, public_address(section.relay_url))


def moved(section, address: str):
    """(section, relay, option lines to record) for following a move to ``address``,
    from the file as it reads now (so an edited file counts without a restart): another
    section of the file whose relay is that address (its credentials are taken), else
    this section with that relay address. Raises EscaleError if it cannot be read."""
    path = section.config_path
    if path is None:
        raise ConfigError("a repository without a configuration file cannot follow a move by itself")
    config = load_config(path)
    mine = config.repositories.get(section.name)
    if mine is None:
        raise ConfigError(f"no section [{section.name}] any more", path=path)
    for other in config.repositories.values():
        if other.name != mine.name and \
                public_address(other.relay_url).rstrip("/") == public_address(address).rstrip("/"):
            dest = destination_for(mine, other.name, config)
            return dest.config, open_relay(dest.config), dest.options
    new = _section_at(path, mine.name, address)
    if new is None:
        raise ConfigError(f"cannot read the section with relay address {public_address(address)}", path=path,
                          section=mine.name)
    if backend_for(new.relay_protocol) is None:
        raise ConfigError(f"no relay backend for {public_address(address)}", path=path, section=mine.name)
    return new, open_relay(new), {"relay address": address}


model.MOVES = sys.modules[__name__]  # RepositoryConfig.moved / record_move
