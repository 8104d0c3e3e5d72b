"""The exceptions escale raises, each with a message a user can act on.

Every error a user may see derives from :class:`EscaleError`; the CLI maps the
families to stable exit codes (see :data:`EXIT_CODES`).
"""
from __future__ import annotations


class EscaleError(Exception):
    """Base class of every escale error."""

    exit_code = 1


class ConfigError(EscaleError):
    """A configuration file, section or option is wrong (exit code 3)."""

    exit_code = 3

    def __init__(self, message: str, *, path: object = None, section: str | None = None,
                 option: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if section is not None:
            where.append(f"[{section}]")
        if option is not None:
            where.append(f"option '{option}'")
        self.path, self.section, self.option = path, section, option
        self.detail = message
        super().__init__(f"{' '.join(where)}: {message}" if where else message)


class WrongPassphrase(ConfigError):
    """The passphrase or key does not open this repository (exit code 3)."""


class FolderUnavailable(ConfigError):
    """The synced folder (``local path``) is missing, lost its marker or was replaced:
    the repository refuses to sync rather than publish its files as deleted (exit code 3)."""

    def __init__(self, folder: object, message: str, *, path: object = None, section: str | None = None,
                 option: str | None = "local path"):
        self.folder = folder
        super().__init__(f"local folder {folder} {message}", path=path, section=section, option=option)


class RelayError(EscaleError):
    """The relay cannot be reached or fails (exit code 2)."""

    exit_code = 2


class AuthenticationError(RelayError):
    """The relay refused our credentials (the taxonomy's "auth")."""


class RelayObjectMissing(RelayError):
    """An object expected on the relay is not there (the taxonomy's "not found")."""


class ObjectExists(RelayError):
    """A create-if-absent put found the name taken by someone else's object ("exists")."""


class TransientRelayError(RelayError):
    """A failure that may pass by itself (timeouts, resets, 5xx, throttling): retried by
    :func:`escale.relay.retry.call`, then reported; the next cycle tries again."""


class PermanentRelayError(RelayError):
    """A failure that retrying will not cure (a refused request, an unusable answer)."""


class SourceError(EscaleError, OSError):
    """The local data being sent to the relay could not be read (a file error, exit code 1).

    It is an OSError too, so callers that skip an unreadable file and retry it next
    cycle treat it as they treat any local read error; it is never a relay failure.
    """

    exit_code = 1


#: the relay error taxonomy under short names (see escale/relay/base.py)
NotFound, Exists, AuthError, Transient, Permanent = (RelayObjectMissing, ObjectExists, AuthenticationError,
                                                    TransientRelayError, PermanentRelayError)


class QuotaExceeded(EscaleError):
    """Publishing would exceed the relay quota, or the relay itself says it is full
    (the taxonomy's "quota"); the pusher waits for room."""


class IntegrityError(EscaleError):
    """An object read from the relay is malformed, forged, replayed or unsafe.

    Always names the relay object; nothing from that object touches the local folder.
    """

    def __init__(self, obj: str, message: str):
        self.object = obj
        super().__init__(f"relay object {obj}: {message}")


class UnsafePath(IntegrityError):
    """A path read from the relay would escape the synced folder."""

    def __init__(self, path: str, message: str):
        self.object, self.reason = path, message
        EscaleError.__init__(self, f"unsafe path {path!r}: {message}")


class AlreadyRunning(EscaleError):
    """Another escale process holds this repository's state (exit code 4)."""

    exit_code = 4


class Terminated(EscaleError):
    """SIGTERM/SIGINT asked us to stop (exit code 5)."""

    exit_code = 5


Quota = QuotaExceeded

EXIT_OK, EXIT_FILES_FAILED, EXIT_RELAY, EXIT_CONFIG, EXIT_RUNNING, EXIT_TERMINATED = 0, 1, 2, 3, 4, 5
