"""Relay kinds the multi-client scenarios run against.

Every kind but ``file`` needs a real server, started once per test session by a
fixture named ``relay_<kind with - as _>`` (see the ``servers_*.py`` modules) that
returns an object with ``new() -> (address, config lines, backend keywords)`` giving
a fresh, empty relay location for one test.
"""
from __future__ import annotations

#: kinds parametrising the ``relay_cluster`` fixture; server modules append theirs
RELAY_KINDS: list[str] = ["file", "encrypted"]  # encrypted: file:// with aes256gcm and padding

# S3 (tests/servers_s3.py)
RELAY_KINDS += ["s3-seaweedfs", "s3-moto"]

# WebDAV: wsgidav and Apache httpd mod_dav (tests/servers_webdav.py)
RELAY_KINDS += ["webdav-wsgidav", "webdav-apache"]

# FTP and FTPS (explicit TLS): pyftpdlib (tests/servers_ftp.py)
RELAY_KINDS += ["ftp-pyftpdlib", "ftps-pyftpdlib"]

# Google Drive: the local Drive v3 server (tests/servers_drive.py), the one allowed stand-in
RELAY_KINDS += ["gdrive"]

# SFTP: asyncssh's SFTP server in a process of its own (tests/servers_sftp.py)
RELAY_KINDS += ["sftp"]
