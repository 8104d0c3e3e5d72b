"""Tests for escale.config: parsing, aliases, errors, search order, state dirs and editing."""
from __future__ import annotations

import logging
import os
import re
import socket
import sys
from pathlib import Path

import pytest

from escale import config as cfgmod
from escale.config import (
    OPTIONS,
    Config,
    RepositoryConfig,
    find_config,
    load_config,
    lookup_option,
    parse_config_text,
    parse_size,
    set_option,
)
from escale.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def section(local: str = "/tmp/escale-t/local", relay: str = "file:///tmp/escale-t/relay",
            extra: str = "", name: str = "repo") -> str:
    """A section; plaintext (said in the section, as it must be) unless ``extra`` speaks of encryption."""
    plain = "" if re.search(r"^(passphrase|key|encryption)\s*=", extra, re.M) else "encryption = off\n"
    return f"[{name}]\nlocal path = {local}\nrelay address = {relay}\n{plain}{extra}"


def one(text: str, path: str | None = "/tmp/escale-t/escale.conf") -> RepositoryConfig:
    cfg = parse_config_text(text, path)
    assert len(cfg.repositories) == 1
    return next(iter(cfg.repositories.values()))


def error(text: str, path: str | None = "/tmp/escale-t/escale.conf") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, path)
    assert info.value.exit_code == 3
    return str(info.value)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("text,expected", [
    ("500MB", 500 * 10**6),
    ("2GB", 2 * 10**9),
    ("1.5GiB", int(1.5 * 2**30)),
    ("5", 5 * 10**6),
    ("1,5 GB", 1_500_000_000),
    ("10 B", 10),
    ("3K", 3000), ("3kB", 3000), ("3Ko", 3000), ("3k", 3000),
    ("2Mo", 2 * 10**6), ("1Go", 10**9), ("1To", 10**12), ("1TB", 10**12),
    ("1KiB", 1024), ("1MiB", 2**20), ("1TiB", 2**40),
    ("8Kb", 1000), ("8Mb", 10**6), ("1Gb", 125 * 10**6),
    ("  7 MB  ", 7 * 10**6),
    ("0.5", 500_000),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "-1MB", "1 GX", "1.2.3", "1 mb", "1gib", "abc", "1 G B"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# --------------------------------------------------------------------------- aliases and fields


def test_minimal_section_defaults() -> None:
    r = one(section())
    assert r.name == "repo"
    assert r.local_path == Path("/tmp/escale-t/local")
    assert r.relay_url == "file:///tmp/escale-t/relay"
    assert r.relay_protocol == "file"
    assert r.mode == "shared"
    assert r.refresh == 30.0
    assert r.quota is None and r.puller_count is None
    assert r.checksum == "sha256" and r.checksum_cache is True
    assert r.index is None
    assert r.maxpagesize == 200 * 10**6
    assert r.encryption == "off"
    assert r.trash_retention_days == 30.0
    assert r.timestamp is True and r.verbosity == 1
    assert r.options == {}
    assert r.config_path == Path("/tmp/escale-t/escale.conf")
    host = socket.gethostname()
    assert r.client_name == (host if host != "localhost" else "repo")


@pytest.mark.parametrize("spelling", ["local path", "Local Path", "local_path", "local-path",
                                      "LOCAL__PATH", "localpath", "path", "PATH"])
def test_local_path_spellings(spelling: str) -> None:
    r = one(f"[s]\n{spelling} = /tmp/escale-t/x\naddress = /tmp/escale-t/relay\nencryption = off\n")
    assert r.local_path == Path("/tmp/escale-t/x")


@pytest.mark.parametrize("alias", ["relay address", "host address", "remote address", "address",
                                   "Relay_Address"])
def test_address_aliases(alias: str) -> None:
    r = one(f"[s]\npath = /tmp/escale-t/x\n{alias} = file:///tmp/escale-t/relay\nencryption = off\n")
    assert r.relay_url == "file:///tmp/escale-t/relay"


@pytest.mark.parametrize("alias", ["relay directory", "host directory", "remote directory", "directory",
                                   "relay dir", "remote dir", "host dir", "dir", "relay path",
                                   "remote path", "host path"])
def test_directory_aliases_join_address(alias: str) -> None:
    r = one(f"[s]\npath = /tmp/escale-t/x\naddress = file:///tmp/escale-t/a\n{alias} = b\nencryption = off\n")
    assert r.relay_url == "file:///tmp/escale-t/a/b"


def test_relay_url_forms() -> None:
    assert one(section(relay="/tmp/escale-t/a")).relay_url == "file:///tmp/escale-t/a"
    assert one(section(relay="/tmp/escale-t/a/", extra="dir = b/c/\n")).relay_url == "file:///tmp/escale-t/a/b/c"
    # an absolute directory inside the address path is accepted as is
    assert one(section(relay="/tmp/escale-t/a", extra="dir = /tmp/escale-t/a/b\n")).relay_url \
        == "file:///tmp/escale-t/a/b"
    # no path in the address: the directory carries it
    assert one(section(relay="file://", extra="dir = /tmp/escale-t/z\n")).relay_url == "file:///tmp/escale-t/z"


def test_relay_tilde_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    r = one(section(local="~/docs", relay="~/relay"))
    assert r.local_path == tmp_path / "docs"
    assert r.relay_url == f"file://{tmp_path}/relay"


@pytest.mark.parametrize("relay,extra", [
    ("file://relative/dir", ""),
    ("file://", "dir = relative\n"),
    ("file://", ""),
])
def test_relative_file_relay_refused(relay: str, extra: str) -> None:
    msg = error(section(relay=relay, extra=extra))
    assert "[repo]" in msg


def test_absolute_directory_outside_address_refused() -> None:
    msg = error(section(relay="/tmp/escale-t/a", extra="dir = /elsewhere\n"))
    assert "option 'dir'" in msg and "not inside" in msg


def test_unknown_protocol_refused() -> None:
    msg = error(section(relay="gopher://example.org/x"))
    assert "option 'relay address'" in msg
    assert "no relay backend for 'gopher' yet (available: file" in msg
    assert "has no protocol" in error(section(relay="example.org"))


def test_relay_overlapping_local_folder_refused() -> None:
    assert "overlap" in error(section(local="/tmp/escale-t/x", relay="/tmp/escale-t/x/relay"))
    assert "overlap" in error(section(local="/tmp/escale-t/x", relay="/tmp/escale-t"))
    two = (section(local="/tmp/escale-t/a", relay="/tmp/escale-t/r1", name="a")
           + section(local="/tmp/escale-t/r1/sub", relay="/tmp/escale-t/r2", name="b"))
    assert "overlaps" in error(two)


def test_all_fields_through_aliases(tmp_path: Path) -> None:
    text = section(relay="https://dav.example.org/escale", extra="""\
client = laptop
synchronization mode = protective
refresh = 12.5
disk quota = 2GB
pullers = 3
filter = *.txt, , report*
exclude files = *.tmp,~*
file type = .jpg, png , ..tar.gz
include directories = docs, src
exclude directories = build
hash algorithm = SHA512
checksum cache = off
compact = topdir:2
maxarchivesize = 50MB
encryption = chacha
key = text:correct horse
auth user = alice
secret = s3cr3t
trash days = 0
mtime = no
verbosity level = 2
port = 2121
verify ssl = no
cert file = /etc/ssl/client.pem
private key = /etc/ssl/client.key
max retries = 5
""")
    r = one(text)
    assert r.client_name == "laptop"
    assert r.mode == "conservative"
    assert r.refresh == 12.5
    assert r.quota == 2 * 10**9
    assert r.puller_count == 3
    assert r.include == ["*.txt", "report*"]
    assert r.exclude == ["*.tmp", "~*"]
    assert r.filetype == ["jpg", "png", "tar.gz"]
    assert r.include_directory == ["docs", "src"]
    assert r.exclude_directory == ["build"]
    assert r.checksum == "sha512"
    assert r.checksum_cache is False
    assert r.index == "topdir:2"
    assert r.maxpagesize == 50 * 10**6
    assert r.encryption == "chacha20poly1305"
    assert r.passphrase == "text:correct horse"
    assert r.user == "alice" and r.password == "s3cr3t"
    assert r.trash_retention_days == 0.0
    assert r.timestamp is False
    assert r.verbosity == 2
    # the WebDAV backend's options (escale.relay.options), parsed by their declared parsers
    assert r.options == {"port": "2121", "verify_ssl": False, "certfile": "/etc/ssl/client.pem",
                         "keyfile": "/etc/ssl/client.key", "max_retries": 5}
    assert "s3cr3t" not in repr(r)


@pytest.mark.parametrize("value,mode", [("shared", "shared"), ("Sharing", "shared"), ("shar", "shared"),
                                        ("upload", "upload"), ("DOWNLOAD", "download"),
                                        ("conservative", "conservative"), ("protective", "conservative")])
def test_modes(value: str, mode: str) -> None:
    assert one(section(extra=f"mode = {value}\n")).mode == mode


def test_push_pull_only() -> None:
    assert one(section(extra="push only = yes\n")).mode == "upload"
    assert one(section(extra="read only = on\n")).mode == "upload"
    assert one(section(extra="pull only = true\n")).mode == "download"
    assert one(section(extra="write only = 1\n")).mode == "download"
    assert one(section(extra="push only = no\nmode = download\n")).mode == "download"
    assert one(section(extra="push only = yes\nmode = upload\n")).mode == "upload"


def test_push_only_and_pull_only_conflict() -> None:
    msg = error(section(extra="push only = yes\npull only = yes\n"))
    assert "cannot both be on" in msg and "[repo]" in msg
    msg = error(section(extra="read only = yes\nmode = download\n"))
    assert "contradicts" in msg and "option 'read only'" in msg


@pytest.mark.parametrize("value,expected", [("yes", 30.0), ("ON", 30.0), ("true", 30.0), ("1", 1.0),
                                            ("0.5", 0.5), ("45", 45.0)])
def test_refresh_values(value: str, expected: float) -> None:
    assert one(section(extra=f"refresh = {value}\n")).refresh == expected


@pytest.mark.parametrize("value", ["no", "off", "0", "-3", "soon", "nan"])
def test_refresh_refused(value: str) -> None:
    msg = error(section(extra=f"refresh = {value}\n"))
    assert "option 'refresh'" in msg and f"bad value '{value}'" in msg
    assert "greater than 0" in msg or "a number" in msg


def test_checksum_values() -> None:
    assert one(section(extra="checksum = yes\n")).checksum == "sha256"
    assert one(section(extra="checksum = blake2b\n")).checksum == "blake2b"
    assert "cannot be turned off" in error(section(extra="checksum = off\n"))
    assert "unknown hash algorithm" in error(section(extra="checksum = shake_128\n"))
    assert "unknown hash algorithm" in error(section(extra="checksum = crc32\n"))


def test_checksum_cache_path(tmp_path: Path) -> None:
    assert one(section(extra=f"checksum cache = {tmp_path}/cc.db\n")).checksum_cache == tmp_path / "cc.db"
    assert "absolute path" in error(section(extra="checksum cache = relative.db\n"))


@pytest.mark.parametrize("value,expected", [("yes", "on"), ("1", "on"), ("off", None), ("0", None),
                                            ("topdir", "topdir"), ("top dir", "topdir"),
                                            ("topdir:3", "topdir:3"), ("TopDir : 1", "topdir:1")])
def test_index_values(value: str, expected: str | None) -> None:
    assert one(section(extra=f"index = {value}\n")).index == expected


@pytest.mark.parametrize("value", ["pages", "topdir:0", "topdir:x"])
def test_index_refused(value: str) -> None:
    assert "option 'index'" in error(section(extra=f"index = {value}\n"))


@pytest.mark.parametrize("value", ["off", "no", "false", "plain", "none", "OFF"])
def test_encryption_off_accepted(value: str) -> None:
    assert one(section(extra=f"encryption = {value}\n")).encryption == "off"


@pytest.mark.parametrize("value, expected", [("on", "aes256gcm"), ("yes", "aes256gcm"),
                                             ("AES256GCM", "aes256gcm"), ("chacha20poly1305", "chacha20poly1305"),
                                             ("chacha20-poly1305", "chacha20poly1305")])
def test_encryption_values(value: str, expected: str) -> None:
    assert one(section(extra=f"encryption = {value}\npassphrase = text:secret words\n")).encryption == expected


@pytest.mark.parametrize("value", ["fernet", "blowfish", "rot13"])
def test_unknown_encryption_refused(value: str) -> None:
    assert f"unknown encryption '{value}'" in error(section(extra=f"encryption = {value}\npassphrase = x\n"))


def test_encryption_defaults_follow_the_passphrase() -> None:
    assert one(section(extra="passphrase = text:correct horse\n")).encryption == "aes256gcm"
    msg = error(section(extra="encryption = on\n"))
    assert "option 'passphrase'" in msg and "needs a 'passphrase'" in msg
    r = one(section(extra="passphrase = text:x\npadding = on\nstrict permissions = yes\n"))
    assert r.padding and r.strict_permissions
    assert not one(section(extra="passphrase = text:x\nstrict permissions = no\n")).strict_permissions


def test_bad_numbers_refused() -> None:
    assert "at least 1" in error(section(extra="pullers = 0\n"))
    assert "whole number" in error(section(extra="puller count = two\n"))
    assert "0 (empty the trash" in error(section(extra="trash retention = -1\n"))
    assert "greater than 0" in error(section(extra="maxpagesize = 0\n"))
    assert "option 'quota'" in error(section(extra="quota = lots\n"))
    assert one(section(extra="quota = none\n")).quota is None


def test_client_name_rules() -> None:
    assert "'/'" in error(section(extra="client name = a/b\n"))
    assert "64" in error(section(extra="client name = " + "x" * 65 + "\n"))
    assert one(section(extra="client name = " + "x" * 64 + "\n")).client_name == "x" * 64


def test_default_client_name_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")
    assert one(section(name="office")).client_name == "office"
    monkeypatch.setattr(socket, "gethostname", lambda: "box.example.org")
    assert one(section(name="office")).client_name == "box.example.org"


def test_same_client_on_same_relay_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "box")
    text = (section(local="/tmp/escale-t/a", relay="/tmp/escale-t/r", name="a")
            + section(local="/tmp/escale-t/b", relay="/tmp/escale-t/r", name="b"))
    msg = error(text)
    assert "[b]" in msg and "client name" in msg
    ok = parse_config_text(text + "client = other\n", "/tmp/escale-t/escale.conf")
    assert [r.client_name for r in ok.repositories.values()] == ["box", "other"]


# --------------------------------------------------------------------------- s3 relays


S3 = "s3://escale-relay/some/prefix"


def test_s3_options_reach_the_backend_keywords() -> None:
    r = one(section(relay=S3, extra="""\
endpoint = http://127.0.0.1:8333/
region = eu-west-3
aws profile = work
access key = AKIDEXAMPLE
secret key = s3cr3t
create bucket = yes
part size = 8MiB
relay directory = docs
"""))
    assert r.relay_url == "s3://escale-relay/some/prefix/docs" and r.relay_protocol == "s3"
    assert (r.user, r.password) == ("AKIDEXAMPLE", "s3cr3t")
    # parsed by the parsers S3 declares (escale.relay.s3.S3.options)
    assert r.options == {"endpoint": "http://127.0.0.1:8333", "region": "eu-west-3", "profile": "work",
                         "create_bucket": True, "part_size": 8 * 2**20}
    assert "s3cr3t" not in repr(r)
    # what Manager.from_config does with them
    from escale.relay.s3 import S3 as Backend

    relay = Backend(r.relay_url, user=r.user, password=r.password, **r.options)
    assert (relay.bucket, relay.prefix) == ("escale-relay", "some/prefix/docs/")
    assert relay.part_size == 8 * 2**20 and relay.create_bucket is True
    assert relay.endpoint == "http://127.0.0.1:8333" and relay.region == "eu-west-3"


@pytest.mark.parametrize("access,secret", [
    ("access key", "secret key"), ("access key id", "secret access key"),
    ("aws access key id", "aws secret access key"), ("user", "password")])
def test_s3_credential_aliases(access: str, secret: str) -> None:
    r = one(section(relay=S3, extra=f"{access} = AK\n{secret} = SK\n"))
    assert (r.user, r.password) == ("AK", "SK")


def test_s3_credentials_from_a_file(tmp_path: Path) -> None:
    cred = tmp_path / "s3-secret"
    cred.write_text("AKIDFILE:secretfromfile\n")
    cred.chmod(0o600)
    r = one(section(relay=S3, extra=f"secret key = {cred}\n"))
    assert (r.user, r.password) == ("AKIDFILE", "secretfromfile")


def test_s3_defaults_use_the_aws_chain() -> None:
    r = one(section(relay="s3://escale-relay"))
    assert r.relay_url == "s3://escale-relay" and r.user is None and r.password is None and r.options == {}


@pytest.mark.parametrize("extra,option,words", [
    ("access key = AK\n", "secret key", "give both 'access key' and 'secret key'"),
    ("secret key = SK\n", "access key", "give both"),
    ("part size = 1MiB\n", "part size", "between 5MiB and 5GiB"),
    ("part size = 6GiB\n", "part size", "between 5MiB and 5GiB"),
    ("part size = lots\n", "part size", "not a size"),
    ("create bucket = maybe\n", "create bucket", "yes/no"),
    ("endpoint = 127.0.0.1:8333\n", "endpoint", "http:// or https://"),
    ("endpoint = ftp://host\n", "endpoint", "http:// or https://"),
    ("endpoint = http://host:99999\n", "endpoint", "not a URL"),
    ("endpoint = http://u:p@host\n", "endpoint", "without query or credentials"),
    ("region = eu west\n", "region", "single word"),
    ("profile = a/b\n", "profile", "single word"),
    ("port = 9000\n", "port", "put it in 'endpoint'"),
    ("access key = AK\nuser = AK2\nsecret key = SK\n", "user", "given twice"),
])
def test_s3_bad_options_refused(extra: str, option: str, words: str) -> None:
    msg = error(section(relay=S3, extra=extra))
    assert f"option '{option}'" in msg and words in msg


@pytest.mark.parametrize("relay,words", [
    ("s3:///prefix", "has no bucket"),
    ("s3://", "has no bucket"),
    ("s3://Upper-Case/x", "not a bucket name"),
    ("s3://ab", "not a bucket name"),
    ("s3://escale-relay:9000/x", "without a port"),
])
def test_s3_address_needs_a_bucket(relay: str, words: str) -> None:
    msg = error(section(relay=relay))
    assert "option 'relay address'" in msg and words in msg


def test_s3_secret_key_hidden_in_errors() -> None:
    msg = error(section(relay=S3, extra="secret key = hunter2\nsecret access key = hunter3\naccess key = a\n"))
    assert "given twice" in msg and "hunter" not in msg


def test_s3_options_ignored_with_a_warning_elsewhere(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="escale.config"):
        r = one(section(extra="endpoint = http://127.0.0.1:8333\npart size = 32MiB\n"))
    assert r.options == {}
    assert "option 'endpoint' only applies to s3 relays; ignored" in caplog.text
    # still checked: a bad value is an error wherever it is
    assert "option 'part size'" in error(section(extra="part size = 1KiB\n"))


def test_s3_options_inherited_from_the_global_part() -> None:
    text = "endpoint = http://127.0.0.1:8333\ncreate bucket = on\n" + section(relay=S3)
    assert one(text).options == {"endpoint": "http://127.0.0.1:8333", "create_bucket": True}


# --------------------------------------------------------------------------- credentials


def test_password_file_user_and_password(tmp_path: Path) -> None:
    cred = tmp_path / "relay.credential"
    cred.write_text("bob:pa:ss\n")
    cred.chmod(0o600)
    r = one(section(extra=f"secret file = {cred}\n"))
    assert (r.user, r.password) == ("bob", "pa:ss")


def test_password_file_password_only_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("justapassword\n")
    (tmp_path / "pw").chmod(0o600)
    r = one(section(extra="user = carol\ncredential = pw\n"), path=str(tmp_path / "escale.conf"))
    assert (r.user, r.password) == ("carol", "justapassword")


def test_password_file_picks_user_line(tmp_path: Path) -> None:
    cred = tmp_path / "cred"
    cred.write_text("alice:one\ncarol:two\n")
    cred.chmod(0o600)
    r = one(section(extra=f"user = carol\npassword = {cred}\n"))
    assert r.password == "two"


def test_secret_file_must_exist_and_secrets_hidden(tmp_path: Path) -> None:
    msg = error(section(extra=f"secret file = {tmp_path}/missing\n"))
    assert "does not exist" in msg
    # a literal password is kept; the repr never shows it
    r = one(section(extra="password = hunter2\n"))
    assert r.password == "hunter2" and "hunter2" not in repr(r)


def test_world_readable_credential_refused_or_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cred = tmp_path / "cred"
    cred.write_text("u:topsecret\n")
    cred.chmod(0o644)
    msg = error(section(extra=f"password = {cred}\n"))
    assert "option 'password'" in msg and "chmod 600" in msg and "topsecret" not in msg
    with caplog.at_level(logging.WARNING, logger="escale.config"):
        one(section(extra=f"password = {cred}\nstrict permissions = no\n"))
    assert "chmod 600" in caplog.text
    assert "topsecret" not in caplog.text


# --------------------------------------------------------------------------- globals


def test_global_inheritance_and_override() -> None:
    text = ("refresh = 10\nquota = 1GB\nexclude = *.bak\ncache dir = /tmp/escale-t/cache\n"
            "log level = debug\nlog rotate = 5\nlog file = /tmp/escale-t/escale.log\n\n"
            + section(local="/tmp/escale-t/a", relay="/tmp/escale-t/r", name="a", extra="client = a\n")
            + section(local="/tmp/escale-t/b", relay="/tmp/escale-t/r", name="b",
                      extra="client = b\nrefresh = 5\nQuota = 3GB\n"))
    cfg = parse_config_text(text, "/tmp/escale-t/escale.conf")
    assert isinstance(cfg, Config)
    assert list(cfg.repositories) == ["a", "b"]
    a, b = cfg.repositories["a"], cfg.repositories["b"]
    assert (a.refresh, a.quota, a.exclude) == (10.0, 10**9, ["*.bak"])
    assert (b.refresh, b.quota, b.exclude) == (5.0, 3 * 10**9, ["*.bak"])
    assert cfg.globals.cache_dir == Path("/tmp/escale-t/cache")
    assert cfg.globals.log_level == "DEBUG"
    assert cfg.globals.log_rotate == 5
    assert cfg.globals.log_file == Path("/tmp/escale-t/escale.log")
    assert a.cache_dir == b.cache_dir == Path("/tmp/escale-t/cache")


def test_global_defaults() -> None:
    g = parse_config_text(section(), None).globals
    assert (g.cache_dir, g.log_file, g.log_level, g.log_rotate) == (None, None, "INFO", 3)


def test_global_only_option_in_section_refused() -> None:
    msg = error(section(extra="log level = DEBUG\n"))
    assert "global option, put it before the first section" in msg
    assert "[repo]" in msg and "option 'log level'" in msg


def test_bad_global_value() -> None:
    msg = error("log level = loud\n" + section())
    assert "option 'log level'" in msg and "'loud'" in msg and "DEBUG" in msg
    msg = error("refresh = never\n" + section())
    assert "global part" in msg and "option 'refresh'" in msg and "'never'" in msg


def test_reserved_sections_refused() -> None:
    assert "reserved" in error("[DEFAULT]\nrefresh = 3\n" + section())
    assert "reserved" in error(section(name="error"))


def test_no_section() -> None:
    assert "no repository section" in error("refresh = 3\n")
    assert "no repository section" in error("")


# --------------------------------------------------------------------------- error messages


def test_typo_suggestion() -> None:
    msg = error(section(extra="locl path = /x\n"))
    assert msg == ("/tmp/escale-t/escale.conf [repo] option 'locl path': "
                   "unknown option 'locl path'; did you mean 'local path'?")
    assert "did you mean 'refresh'?" in error(section(extra="refesh = 3\n"))
    assert "did you mean 'exclude'?" in error(section(extra="exclud = *.o\n"))


def test_unknown_option_without_suggestion() -> None:
    msg = error(section(extra="zzzzqqq = 1\n"))
    assert "unknown option 'zzzzqqq'" in msg and "did you mean" not in msg
    assert "/tmp/escale-t/escale.conf" in msg and "[repo]" in msg


def test_bad_value_names_everything() -> None:
    msg = error(section(extra="disk quota = 2 GX\n"))
    assert msg.startswith("/tmp/escale-t/escale.conf [repo] option 'disk quota': bad value '2 GX'")
    msg = error(section(extra="push only = maybe\n"))
    assert "option 'push only'" in msg and "'maybe'" in msg and "yes/no" in msg


def test_secret_values_hidden_in_errors() -> None:
    msg = error(section(extra="password = hunter2\nsecret = hunter3\n"))
    assert "given twice" in msg and "hunter" not in msg
    msg = error(section(extra="passphrase = horse\nkey = battery\n"))
    assert "given twice" in msg and "horse" not in msg and "battery" not in msg
    bad = cfgmod._bad(cfgmod._Value("secret", "hunter2", "repo"), "whatever", None)
    assert "hunter2" not in str(bad) and "<hidden>" in str(bad)


def test_missing_required_options() -> None:
    msg = error("[repo]\nrelay address = /tmp/escale-t/relay\n")
    assert "missing required option 'local path'" in msg and "[repo]" in msg
    msg = error("[repo]\nlocal path = /tmp/escale-t/x\n")
    assert "missing required option 'relay address'" in msg
    assert "missing required option 'local path'" in error("[repo]\npath =\naddress = /tmp/r\n")
    assert "absolute" in error(section(local="relative/dir"))


def test_duplicate_option_under_two_aliases() -> None:
    msg = error(section(extra="path = /tmp/escale-t/other\n"))
    assert "given twice" in msg and "local path" in msg


def test_syntax_errors_give_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.conf"
    f.write_text("# comment\n[repo]\nlocal path = /tmp/escale-t/x\nthis line is wrong\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert str(f) in str(info.value) and "line 4" in str(info.value)
    f.write_text("[a]\nx = 1\n[a]\n")
    with pytest.raises(ConfigError, match="line 3: section \\[a\\] appears twice"):
        load_config(f)
    f.write_text("[a]\nrefresh = 1\nrefresh = 2\n")
    with pytest.raises(ConfigError, match="line 3: option 'refresh' appears twice"):
        load_config(f)
    f.write_bytes(b"[a]\nlocal path = /tmp/\xff\n")
    with pytest.raises(ConfigError, match="line 2: not valid UTF-8"):
        load_config(f)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(tmp_path)


def test_no_interpolation() -> None:
    assert one(section(extra="exclude = %(x)s, 100%\n")).exclude == ["%(x)s", "100%"]


# --------------------------------------------------------------------------- obsolete options


OBSOLETE = [a for spec in OPTIONS if spec.scope == "obsolete" for a in spec.aliases]


@pytest.mark.parametrize("alias", OBSOLETE)
def test_obsolete_options_warn(alias: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="escale.config"):
        r = one(section(extra=f"{alias} = 1\n"))
    assert f"option '{alias}' is obsolete and ignored" in caplog.text
    assert r.options == {}


def test_obsolete_global_option_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    text = ("keep alive = yes\n" + section(local="/tmp/escale-t/a", relay="/tmp/escale-t/r1", name="a")
            + section(local="/tmp/escale-t/b", relay="/tmp/escale-t/r2", name="b"))
    with caplog.at_level(logging.WARNING, logger="escale.config"):
        parse_config_text(text, "/tmp/escale-t/escale.conf")
    assert caplog.text.count("option 'keep alive' is obsolete and ignored") == 1


def test_relay_options_go_to_the_backend_that_declares_them(caplog: pytest.LogCaptureFixture) -> None:
    extra = "ssl version = TLSv1.2\nrclone binary = /usr/bin/rclone\nkeyfile = /k\ncertfile = /c\n"
    r = one(section(relay="https://dav.example.org/x", extra=extra))
    assert r.options == {"keyfile": "/k", "certfile": "/c"}
    with caplog.at_level(logging.WARNING, logger="escale.config"):
        r = one(section(extra=extra))  # a file relay: a copied 0.7 file still loads
    assert r.options == {}
    # every backend that declares it is named (webdav, and ftp, sftp… as they land)
    assert re.search(r"option 'keyfile' only applies to [a-z0-9/]*\bwebdav\b[a-z0-9/]* relays; ignored", caplog.text)
    assert "option 'ssl version' is obsolete and ignored" in caplog.text
    assert "option 'rclone binary' only applies to rclone relays; ignored" in caplog.text  # 0.7's, owned again


def test_aliases_are_unambiguous() -> None:
    for spec in OPTIONS:
        for alias in spec.aliases:
            assert lookup_option(alias) is spec
            assert lookup_option(alias.upper().replace(" ", "_")) is spec


# --------------------------------------------------------------------------- state dirs


def test_state_follows_the_folder_not_the_file(tmp_path: Path) -> None:
    """The state folder comes from the synced folder's marker: the same folder through two
    files (or two section names) is one state; another relay or folder is another."""
    body = (section(local=f"{tmp_path}/a", relay=f"{tmp_path}/r", name="a", extra="client = a\n")
            + section(local=f"{tmp_path}/b", relay=f"{tmp_path}/r", name="b", extra="client = b\n"))
    text = f"cache dir = {tmp_path}/state\n" + body
    c1 = parse_config_text(text, tmp_path / "one" / "escale.conf")
    c2 = parse_config_text(text.replace("[a]", "[renamed]"), tmp_path / "two" / "escale.conf")
    assert c1.repositories["a"].state_root() == tmp_path / "state"
    a1, _ = c1.repositories["a"].identity().resolve()
    a2, _ = c2.repositories["renamed"].identity().resolve()
    b1, _ = c1.repositories["b"].identity().resolve()
    assert a1 == a2 and a1 != b1 and a1.parent == tmp_path / "state"
    assert (tmp_path / "a" / ".escale" / "folder.json").is_file()  # first use marks the folder
    other_relay = parse_config_text(text.replace(f"{tmp_path}/r", f"{tmp_path}/r2"), tmp_path / "x.conf")
    assert other_relay.repositories["a"].identity().resolve()[0] != a1


def test_state_root_default_and_nothing_created_by_the_config_layer() -> None:
    import platformdirs

    r = one(section(), path=None)
    assert r.state_root() == platformdirs.user_state_path("escale")
    assert r.identity().root == r.local_path


# --------------------------------------------------------------------------- search order


@pytest.fixture
def fake_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    monkeypatch.setattr(cfgmod, "SYSTEM_CONFIG", tmp_path / "etc" / "escale.conf")
    return home


def test_search_order(fake_home: Path, tmp_path: Path) -> None:
    system = tmp_path / "etc" / "escale.conf"
    xdg = fake_home / ".config" / "escale" / "escale.conf"
    legacy = fake_home / ".escale" / "escale.conf"
    with pytest.raises(ConfigError) as info:
        find_config(None)
    assert "no configuration file found; looked in" in str(info.value)
    assert str(xdg) in str(info.value) and str(legacy) in str(info.value) and str(system) in str(info.value)
    for p in (system, legacy, xdg):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(section())
        assert find_config(None) == p
    explicit = tmp_path / "mine.conf"
    explicit.write_text(section())
    assert find_config(str(explicit)) == explicit
    assert load_config(explicit).path == explicit
    assert load_config().path == xdg
    with pytest.raises(ConfigError, match="does not exist"):
        find_config(str(tmp_path / "nope.conf"))


def test_explicit_tilde(fake_home: Path) -> None:
    (fake_home / "e.conf").write_text(section())
    assert find_config("~/e.conf") == fake_home / "e.conf"


def test_search_creates_nothing(fake_home: Path, tmp_path: Path) -> None:
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ConfigError):
        load_config()
    assert sorted(tmp_path.rglob("*")) == before
    assert not (tmp_path / "etc").exists()


def test_config_module_writes_nothing_outside_tmp(fake_home: Path, tmp_path: Path) -> None:
    """Watch every open for writing while the config layer works: only tmp_path may be touched."""
    writes: list[str] = []
    active = [True]

    def hook(event: str, args: tuple) -> None:
        if not active[0]:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and isinstance(path, (str, bytes, os.PathLike)):
                writes.append(os.fsdecode(path))
        elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove"):
            writes.append(os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else "?")

    etc_existed = Path("/etc/escale.conf").exists()
    sys.addaudithook(hook)
    try:
        with pytest.raises(ConfigError):
            find_config(None)
        conf = fake_home / ".config" / "escale" / "escale.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text("# mine\n" + section())
        writes.clear()
        cfg = load_config()
        cfg.repositories["repo"].identity()
        parse_config_text(section(), None).repositories["repo"].state_root()
        assert writes == []
        set_option(conf, "repo", "refresh", "9")
        assert writes and all(w.startswith(str(tmp_path)) for w in writes)
    finally:
        active[0] = False
    assert Path("/etc/escale.conf").exists() == etc_existed


# --------------------------------------------------------------------------- set_option


COMMENTED = """\
# top comment ; keep me
; another style
refresh = 20   

[docs]
# the folder
Local_Path = /tmp/escale-t/docs
relay address: file:///tmp/escale-t/relay
encryption = off
exclude = *.tmp,
    *.bak
# trailing comment of docs

[photos]
local path = /tmp/escale-t/photos
address = /tmp/escale-t/relay2
encryption = off
"""


def test_set_option_replaces_one_line(tmp_path: Path) -> None:
    f = tmp_path / "escale.conf"
    f.write_text(COMMENTED)
    set_option(f, "docs", "local path", "/tmp/escale-t/new docs")
    lines, new = COMMENTED.splitlines(keepends=True), f.read_text().splitlines(keepends=True)
    assert len(new) == len(lines)
    changed = [i for i, (a, b) in enumerate(zip(lines, new)) if a != b]
    assert changed == [6]
    assert new[6] == "Local_Path = /tmp/escale-t/new docs\n"
    assert load_config(f).repositories["docs"].local_path == Path("/tmp/escale-t/new docs")


def test_set_option_alias_delimiter_and_continuation(tmp_path: Path) -> None:
    f = tmp_path / "escale.conf"
    f.write_text(COMMENTED)
    set_option(f, "docs", "address", "/tmp/escale-t/relay3")
    set_option(f, "docs", "exclude files", "*.o")
    expected = COMMENTED.replace("relay address: file:///tmp/escale-t/relay\n",
                                 "relay address: /tmp/escale-t/relay3\n")
    expected = expected.replace("exclude = *.tmp,\n    *.bak\n", "exclude = *.o\n")
    assert f.read_text() == expected


def test_set_option_adds_missing_line(tmp_path: Path) -> None:
    f = tmp_path / "escale.conf"
    f.write_text(COMMENTED)
    set_option(f, "docs", "quota", "5GB")
    expected = COMMENTED.replace("    *.bak\n", "    *.bak\nquota = 5GB\n")
    assert f.read_text() == expected
    set_option(f, "photos", "mode", "upload")
    assert f.read_text() == expected + "mode = upload\n"
    cfg = load_config(f)
    assert cfg.repositories["docs"].quota == 5 * 10**9
    assert cfg.repositories["photos"].mode == "upload"


def test_set_option_global_part(tmp_path: Path) -> None:
    f = tmp_path / "escale.conf"
    f.write_text(COMMENTED)
    set_option(f, None, "refresh", "7")
    assert f.read_text() == COMMENTED.replace("refresh = 20   \n", "refresh = 7\n")
    set_option(f, None, "log level", "DEBUG")
    assert "refresh = 7\nlog level = DEBUG\n\n[docs]" in f.read_text()
    assert load_config(f).globals.log_level == "DEBUG"


def test_set_option_keeps_crlf_and_no_final_newline(tmp_path: Path) -> None:
    f = tmp_path / "escale.conf"
    original = "# c\r\n[r]\r\nlocal path = /tmp/escale-t/x\r\naddress = /tmp/escale-t/r"
    f.write_bytes(original.encode())
    set_option(f, "r", "local path", "/tmp/escale-t/y")
    set_option(f, "r", "refresh", "3")
    assert f.read_bytes() == (b"# c\r\n[r]\r\nlocal path = /tmp/escale-t/y\r\n"
                              b"address = /tmp/escale-t/r\r\nrefresh = 3\r\n")


def test_set_option_refuses_bad_edits(tmp_path: Path) -> None:
    f = tmp_path / "escale.conf"
    f.write_text(COMMENTED)
    f.chmod(0o640)
    with pytest.raises(ConfigError, match="bad value"):
        set_option(f, "docs", "refresh", "never")
    with pytest.raises(ConfigError, match="did you mean 'refresh'"):
        set_option(f, "docs", "refrsh", "3")
    with pytest.raises(ConfigError, match="no section"):
        set_option(f, "nope", "refresh", "3")
    with pytest.raises(ConfigError, match="global option"):
        set_option(f, "docs", "log file", "/tmp/x.log")
    with pytest.raises(ConfigError, match="one line"):
        set_option(f, "docs", "refresh", "3\n[evil]")
    assert f.read_text() == COMMENTED
    set_option(f, "docs", "refresh", "3")
    assert f.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escale.conf"]


# --------------------------------------------------------------------------- shipped files


def test_example_file_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "example-host")
    cfg = load_config(ROOT / "escale.conf.example")
    assert list(cfg.repositories) == ["demo"]
    demo = cfg.repositories["demo"]
    assert demo.relay_url.startswith("file:///tmp/")
    assert demo.quota == 2 * 10**9 and demo.trash_retention_days == 14
    assert demo.encryption == "off"  # the quick start's plaintext, said in its own section


@pytest.mark.parametrize("doc", ["escale.conf.example", "docs/configuration.md"])
def test_every_alias_is_documented(doc: str) -> None:
    text = (ROOT / doc).read_text()
    missing = [a for spec in OPTIONS for a in spec.aliases if a not in text]
    assert missing == []


def test_set_option_completes_a_broken_file(tmp_path: Path) -> None:
    f = tmp_path / "escale.conf"
    f.write_text("# header\n\n# about r\n[r]\n")
    set_option(f, None, "refresh", "4")
    assert f.read_text() == "refresh = 4\n# header\n\n# about r\n[r]\n"
    set_option(f, "r", "local path", "/tmp/escale-t/x")
    with pytest.raises(ConfigError, match="option 'relay address'"):
        set_option(f, "r", "relay address", "gopher://example.org")
    set_option(f, "r", "relay address", "/tmp/escale-t/relay")
    set_option(f, "r", "encryption", "off")
    assert f.read_text() == ("refresh = 4\n# header\n\n# about r\n[r]\n"
                             "local path = /tmp/escale-t/x\nrelay address = /tmp/escale-t/relay\n"
                             "encryption = off\n")
    assert load_config(f).repositories["r"].refresh == 4


def test_max_delete_values() -> None:
    from escale.deletions import DeleteLimit

    assert one(section()).max_delete == DeleteLimit(50.0, None)
    assert one(section(extra="max delete = 20%\n")).max_delete == DeleteLimit(20.0, None)
    assert one(section(extra="max deletes = 300\n")).max_delete == DeleteLimit(None, 300)
    assert one(section(extra="max delete = off\n")).max_delete == DeleteLimit(None, None)
    assert "option 'max delete'" in error(section(extra="max delete = lots\n"))
    assert "between 0% and 100%" in error(section(extra="max delete = 150%\n"))
    limit = DeleteLimit(50.0, None)
    assert not limit.exceeded(50, 60)  # the floor: 50 files or fewer are never held back
    assert limit.exceeded(51, 100) and not limit.exceeded(51, 102)
    assert DeleteLimit(None, 0).exceeded(1, 10**6) and not DeleteLimit(None, None).exceeded(10**6, 10**6)


def test_backend_file_options_are_read_beside_the_configuration_file(tmp_path, monkeypatch):
    """A relative ``known hosts``, ``certfile`` or ``rclone config`` was read from whatever
    folder escale ran in (the home folder under systemd), while ``passphrase`` and
    ``password`` files are found beside the configuration file: one rule now, the latter."""
    confdir, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    confdir.mkdir()
    elsewhere.mkdir()
    conf = confdir / "escale.conf"
    conf.write_text(
        f"[ssh]\nlocal path = {tmp_path / 'a'}\nrelay address = sftp://example.org/relay\n"
        "encryption = off\nknown hosts = keys/known_hosts\nssh config = ~/.ssh/config\n\n"
        f"[dav]\nlocal path = {tmp_path / 'b'}\nrelay address = https://example.org/dav\n"
        "encryption = off\ncertfile = client.pem\nkeyfile = /etc/escale/client.key\n\n"
        f"[rc]\nlocal path = {tmp_path / 'c'}\nrelay address = rclone://remote:path\n"
        "encryption = off\nrclone config = rclone.conf\nrclone binary = rclone\n")
    conf.chmod(0o600)
    monkeypatch.chdir(elsewhere)
    repos = {r.name: r.options for r in load_config(conf).repositories.values()}
    assert repos["ssh"]["known_hosts"] == str(confdir / "keys/known_hosts")
    assert repos["ssh"]["ssh_config"] == "~/.ssh/config"  # the backend expands ~
    assert repos["dav"]["certfile"] == str(confdir / "client.pem")
    assert repos["dav"]["keyfile"] == "/etc/escale/client.key"
    assert repos["rc"]["rclone_config"] == str(confdir / "rclone.conf")
    assert repos["rc"]["rclone_binary"] == "rclone"  # a command name, looked up in PATH
