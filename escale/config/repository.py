"""One section into one :class:`~escale.config.model.RepositoryConfig`: the relay's
location, credentials, encryption, the backend's options and its own checks.
"""
from __future__ import annotations

import logging
import os
import posixpath
import socket
from pathlib import Path

from ..deletions import DEFAULT_MAX_DELETE, DeleteLimit
from ..encryption import TEXT_PREFIX, passphrase_file, passphrase_file_problem
from ..errors import ConfigError
from ..relay import BACKENDS, backend_for, parse_address, split_network_address
from ..repository_id import parse_id
from ..values import parse_bool
from .model import (DEFAULT_CHECKSUM, DEFAULT_FULL_SCAN, DEFAULT_MAXPAGESIZE, DEFAULT_REFRESH, DEFAULT_TRASH_RETENTION_DAYS,
                    GlobalConfig, RepositoryConfig, _sanitize)
from .options import RELAY, _key, backend_label, lookup_option, option_table
from .parsers import (_parse_abs_path, _parse_checksum, _parse_checksum_cache, _parse_client_name,
                      _parse_command, _parse_encryption, _parse_extensions, _parse_index, _parse_int, _parse_list,
                      _parse_full_scan, _parse_mode, _parse_port, _parse_positive_size, _parse_quota, _parse_refresh,
                      _parse_timestamp, _parse_trash)
from .read import _Section, _Value, _where

log = logging.getLogger(__name__)

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
            own = next(o for o in backend.options if o.field == spec.field)
            parse = own.parse
            if own.path and sec.path is not None:
                parse = _beside(sec.path, parse or str.strip)
        value = sec.get(spec.field, parse or str.strip, None)
        if backend not in spec.backends:
            owners = "/".join(sorted({backend_label(cls) for cls in spec.backends}))
            (log.warning if v.section is not None else log.info)(
                "[%s] option '%s' only applies to %s relays; ignored", sec.name, v.option, owners)
            continue
        options[spec.field] = value
        if spec.secret:
            inline_secrets.append(v.option)


def _beside(config_path: Path, parse):
    """``parse`` of a file name, a relative one taken beside the configuration file (where
    ``passphrase`` and ``password`` files are found), never in whatever folder escale runs from."""
    def parse_beside(text: str):
        name = text.strip()
        if name and not name.startswith("~") and not os.path.isabs(name):
            name = str(config_path.parent / name)
        return parse(name)
    return parse_beside


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
        full_scan=sec.get("full_scan", _parse_full_scan, DEFAULT_FULL_SCAN),
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
