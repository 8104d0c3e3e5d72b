"""What a configuration file says, once read: the records the rest of escale uses.

:class:`Config` holds the global options (:class:`GlobalConfig`) and one
:class:`RepositoryConfig` per section; :mod:`escale.config.load` builds them and
``Manager.from_config`` consumes a RepositoryConfig. Defaults live here, next to the fields.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from ..deletions import DEFAULT_MAX_DELETE, DeleteLimit
from ..marker import FolderIdentity
from ..watch import DEFAULT_FULL_SCAN

DEFAULT_REFRESH = 30.0
DEFAULT_MAXPAGESIZE = 200 * 10**6
DEFAULT_CHECKSUM = "sha256"
DEFAULT_TRASH_RETENTION_DAYS = 30.0
MAX_CLIENT_NAME = 64
MODES = ("shared", "upload", "download", "conservative")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: the relay-move operations of a section (escale.config.relocate registers itself
#: here when escale.config is imported; it needs the loader, which needs this module)
MOVES = None


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
    #: seconds between two full scans of the folder while the watcher reports changes; 0: every cycle
    full_scan: float = DEFAULT_FULL_SCAN
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

    def moved(self, address: str):
        """(section, relay, option lines) to follow a relay move (escale.config.relocate)."""
        return MOVES.moved(self, address)

    def record_move(self, ctx, section, options: dict[str, str]) -> None:
        """Record a relay move in the file and the state (escale.config.relocate)."""
        MOVES.record_move(ctx, section, options)

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
