"""Relay backends and the address parser that picks one.

``file:///abs/path`` (or a bare absolute path) selects :class:`LocalMount`;
``http(s)://host[:port]/path`` and ``webdav(s)://…`` (= https) select :class:`WebDAV`;
``s3://bucket/prefix`` selects :class:`S3`; ``gdrive:///folder`` (``google://``,
``googledrive://``) selects :class:`GoogleDrive`; ``ftps://`` and ``ftp://`` select :class:`FTP`;
``sftp://[user@]host[:port]/path`` selects :class:`SFTP`; ``rclone://REMOTE:path`` (a remote
of rclone's configuration, not a URL) selects :class:`Rclone`.
"""
from __future__ import annotations

import os

from .address import NetworkAddress, redact, split_network_address
from .base import ObjectInfo, Relay, Usage, check_name
from .localmount import LocalMount
from .webdav import WebDAV
from .s3 import S3  # boto3 itself is imported when an s3 relay is first used
from .gdrive import GoogleDrive  # googleapiclient itself is imported when a Drive relay is opened
from .ftp import FTP  # ftplib and ssl are imported when an FTP relay first connects
from .sftp import SFTP  # paramiko itself is imported when an sftp relay is first used
from .rclone import Rclone

#: scheme -> backend class; network backends register here as they land
BACKENDS: dict[str, type[Relay]] = {s: cls for cls in (LocalMount, WebDAV) for s in cls.schemes}
BACKENDS.update({s: S3 for s in S3.schemes})
BACKENDS.update({s: GoogleDrive for s in GoogleDrive.schemes})
BACKENDS.update({s: FTP for s in FTP.schemes})
BACKENDS.update({s: SFTP for s in SFTP.schemes})
BACKENDS.update({s: Rclone for s in Rclone.schemes})


def parse_address(addr: str, multi_path_protocols=()) -> tuple[str, str, str | None, str]:
    """Split a relay address into (protocol, address, port, path), as escale 0.7 did.

    ``file:///abs``, ``/abs`` and ``~/rel`` give ``('file', '/abs', None, '')``;
    ``proto://host[:port][/path]`` gives ``(proto, host, port, path)``.
    """
    addr = addr.strip()
    if addr.startswith("/") or addr.startswith("~"):
        return "file", os.path.expanduser(addr), None, ""
    if "://" not in addr:
        return "", addr, None, ""
    proto, rest = addr.split("://", 1)
    proto = proto.lower()
    if proto in GoogleDrive.schemes:  # a folder path or a folder id, not a host
        return proto, "", None, rest
    if proto == "file" or proto in multi_path_protocols:
        if rest.startswith("/") or rest.startswith("~"):
            return proto, os.path.expanduser(rest), None, ""
        return proto, "", None, rest
    if has_own_address_form(BACKENDS.get(proto)):  # gdrive:///folder: no host to parse
        return proto, "", None, rest
    a = split_network_address(addr)  # ConfigError on a bad port, never a traceback
    return proto, a.host_literal, (str(a.port) if a.port else None), a.path.lstrip("/")


def has_own_address_form(cls: type[Relay] | None) -> bool:
    """Whether a backend spells its addresses its own way (it overrides :meth:`Relay.location`)."""
    return cls is not None and getattr(cls.location, "__func__", None) is not Relay.location.__func__


def backend_for(protocol: str) -> type[Relay] | None:
    return BACKENDS.get(protocol.lower())


__all__ = ["BACKENDS", "FTP", "GoogleDrive", "LocalMount", "NetworkAddress", "ObjectInfo", "Rclone", "Relay", "S3", "SFTP",
           "Usage",
           "WebDAV", "backend_for", "check_name", "has_own_address_form", "parse_address", "redact", "split_network_address"]
