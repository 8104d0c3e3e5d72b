"""Backend options are declared by the backends and registered by the configuration
(issue 10 point 1): a new backend's options are accepted, checked, passed to it and
documented with no change to escale.config; the backends' own rules (S3's bucket names)
live in the backends.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping

import pytest

from escale import config as cfgmod
from escale.config import lookup_option, parse_config_text, set_option
from escale.errors import ConfigError
from escale.manager import Manager
from escale.relay import BACKENDS, S3, WebDAV
from escale.relay.base import ObjectInfo, Relay, RelayOption
from escale.relay.options import MAX_RETRIES

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "configuration.md", ROOT / "docs" / "relays.md")


def _depth(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 9:
        raise ValueError("a depth is 1 to 9")
    return n


class Tiny(Relay):
    """A backend that exists only in this test: nothing in escale knows its options."""

    schemes = ("tiny",)
    options = (
        RelayOption("depth", ("tiny depth", "depth of tiny"), _depth, doc="how deep"),
        RelayOption("token", ("tiny token",), str.strip, secret=True, doc="a secret"),
        MAX_RETRIES,  # shared with WebDAV and S3
    )

    def __init__(self, address: str, *, depth: int = 1, token: str | None = None, max_retries: int = 5,
                 **_ignored):
        super().__init__(address)
        self.depth, self.token, self.max_retries = depth, token, max_retries

    @classmethod
    def check_config(cls, address: str, *, user: str | None, password: str | None,
                     options: Mapping[str, object]) -> None:
        if address.endswith("/forbidden"):
            raise ConfigError("a tiny relay cannot live in /forbidden", option="relay address")
        if options.get("depth") == 9 and options.get("max_retries") == 0:
            raise ConfigError("depth 9 needs retries", option="tiny depth")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(())

    def stat(self, name: str) -> ObjectInfo | None:
        return None

    def get(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False, size: int | None = None) -> int:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        pass


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> type[Tiny]:
    """Registered the way a real backend is: one entry in escale.relay.BACKENDS."""
    monkeypatch.setitem(BACKENDS, "tiny", Tiny)
    return Tiny


def section(relay: str, extra: str = "", tmp: Path = Path("/tmp/escale-t")) -> str:
    return f"[repo]\nlocal path = {tmp}/local\nrelay address = {relay}\nencryption = off\n{extra}"


def one(text: str):
    (repo,) = parse_config_text(text, "/tmp/escale-t/escale.conf").repositories.values()
    return repo


def test_a_new_backends_options_are_accepted_parsed_and_passed_to_it(tiny, tmp_path: Path) -> None:
    r = one(section("tiny://host/x", "Tiny_Depth = 3\nmax retries = 0\ntiny token = abc\n", tmp_path))
    assert r.options == {"depth": 3, "max_retries": 0, "token": "abc"}
    assert "abc" not in repr(r)
    relay = Manager.from_config(r).relay.inner  # the backend, under the splitting layer (relay/split.py)
    assert isinstance(relay, Tiny)
    assert (relay.depth, relay.max_retries, relay.token) == (3, 0, "abc")
    # every spelling, and an option that belongs to the new backend only is no longer unknown
    assert one(section("tiny://host/x", "depth of tiny = 2\n", tmp_path)).options == {"depth": 2}
    assert lookup_option("tiny depth") is lookup_option("DEPTH_OF_TINY")
    assert lookup_option("tiny depth") in cfgmod.OPTIONS


def test_without_registration_the_option_is_unknown(tmp_path: Path) -> None:
    """What the test above relies on: nothing else in escale declares these options."""
    with pytest.raises(ConfigError, match="unknown option 'tiny depth'"):
        one(section("https://host/x", "tiny depth = 3\n", tmp_path))
    assert lookup_option("tiny depth") is None


def test_a_bad_value_is_reported_with_the_backends_own_message(tiny, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        one(section("tiny://host/x", "tiny depth = 12\n", tmp_path))
    assert e.value.exit_code == 3 and e.value.option == "tiny depth" and e.value.section == "repo"
    assert "bad value '12'" in str(e.value) and "a depth is 1 to 9" in str(e.value)
    # checked in every section, whatever its relay
    with pytest.raises(ConfigError, match="a depth is 1 to 9"):
        one(section("https://host/x", "tiny depth = 12\n", tmp_path))


def test_a_secret_option_is_never_shown_and_counts_as_a_secret_in_the_file(tiny, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        one(section("tiny://host/x", "tiny token = hunter2\ntiny token = hunter3\n", tmp_path))
    assert "hunter" not in str(e.value)
    assert one(section("tiny://host/x", "tiny token = hunter2\n", tmp_path)).inline_secrets == ["tiny token"]


def test_an_option_of_another_backend_is_ignored_with_a_warning_naming_it(tiny, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="escale.config"):
        r = one(section("https://host/x", "tiny depth = 3\nmax retries = 2\n", tmp_path))
    assert r.options == {"max_retries": 2}  # shared: WebDAV declares it too
    warned = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert [rec.getMessage() for rec in warned] == ["[repo] option 'tiny depth' only applies to tiny relays; ignored"]
    caplog.clear()
    # from the global part (which serves sections of every kind): logged, not warned
    with caplog.at_level(logging.INFO, logger="escale.config"):
        r = one("tiny depth = 3\n" + section("https://host/x", "", tmp_path))
    assert r.options == {}
    assert [rec.levelno for rec in caplog.records if "tiny depth" in rec.getMessage()] == [logging.INFO]


def test_the_backends_own_check_is_placed_at_the_option_as_written(tiny, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        one(section("tiny://host/forbidden", "", tmp_path))
    assert (e.value.path, e.value.section, e.value.option) == (Path("/tmp/escale-t/escale.conf"), "repo",
                                                               "relay address")
    with pytest.raises(ConfigError) as e:
        one(section("tiny://host/x", "depth of tiny = 9\nmax retries = 0\n", tmp_path))
    assert e.value.option == "depth of tiny" and "depth 9 needs retries" in str(e.value)


def test_set_option_knows_a_new_backends_options(tiny, tmp_path: Path) -> None:
    conf = tmp_path / "escale.conf"
    conf.write_text(section("tiny://host/x", "# how deep\ntiny depth = 3  # for now\n", tmp_path))
    set_option(conf, "repo", "Depth of Tiny", "4")
    assert "tiny depth = 4  # for now\n" in conf.read_text()
    with pytest.raises(ConfigError, match="a depth is 1 to 9"):
        set_option(conf, "repo", "tiny depth", "10")
    assert one(conf.read_text()).options == {"depth": 4}


def test_shared_options_must_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    class Clash(Tiny):
        schemes = ("clash",)
        options = (RelayOption("max_retries", ("max retries", "retries"), int),)

    monkeypatch.setitem(BACKENDS, "clash", Clash)
    with pytest.raises(AssertionError, match="declare it once and share it"):
        lookup_option("max retries")


def test_a_backend_may_take_over_an_obsolete_07_option(tmp_path: Path) -> None:
    """The rclone backend owns 0.7's 'rclone binary' again (it was obsolete without it)."""
    from escale.relay import Rclone

    spec = lookup_option("rclone binary")
    assert spec.scope == "relay" and Rclone in spec.backends
    r = one(section("rclone://remote:x", "rclone binary = /opt/rclone\n", tmp_path))
    assert r.options == {"rclone_binary": "/opt/rclone"} and r.relay_url == "rclone://remote:x"


def test_the_s3_rules_are_the_s3_backends() -> None:
    """Bucket names, ports and credential pairs: S3.check_config, called by the configuration."""
    with pytest.raises(ConfigError, match="not a bucket name") as e:
        S3.check_config("s3://Upper/x", user=None, password=None, options={})
    assert e.value.option == "relay address"
    with pytest.raises(ConfigError, match="has no port") as e:
        S3.check_config("s3://bucket/x", user=None, password=None, options={"port": "9000"})
    assert e.value.option == "port"
    with pytest.raises(ConfigError, match="'secret key' is missing"):
        S3.check_config("s3://bucket/x", user="AK", password=None, options={})
    S3.check_config("s3://bucket/x", user="AK", password="SK", options={})
    assert "_check_s3" not in vars(cfgmod) and "_parse_part_size" not in vars(cfgmod)


def test_a_section_with_a_drive_address_builds_its_relay(tmp_path: Path) -> None:
    """gdrive:///folder has no host: the configuration read it (GoogleDrive.location), but
    Manager.from_config, which every run goes through, refused it as 'not
    scheme://host[:port]/path' (exit 3)."""
    from escale.relay import GoogleDrive

    for address, path in (("gdrive:///escale/p", ["escale", "p", "sub"]), ("google://F0lderId/x", ["x", "sub"])):
        r = one(section(address, "relay directory = sub\nchunk size = 8MiB\n", tmp_path))
        relay = Manager.from_config(r).relay.inner  # under the splitting layer (relay/split.py)
        assert isinstance(relay, GoogleDrive) and relay.path == path and relay.chunk_size == 8 << 20
    # a backend without its own form keeps the network form's checks
    with pytest.raises(ConfigError, match="scheme://host"):
        one(section("https:///dav", "", tmp_path))


# ------------------------------------------------------------------ documentation


def undocumented(backends) -> list[str]:
    """Options of these backends missing from their '### <name> relays' part of the docs."""
    parts: dict[str, str] = {}
    for doc in DOCS:
        if doc.exists():
            for m in re.finditer(r"^###\s+(.+?)\n(.*?)(?=^#{1,3}\s|\Z)", doc.read_text(), re.M | re.S):
                parts[m.group(1).strip().lower()] = parts.get(m.group(1).strip().lower(), "") + m.group(2)
    missing = []
    for cls in dict.fromkeys(backends):
        label = cfgmod.backend_label(cls)
        text = parts.get(f"{label} relays", "")
        missing += [f"{label}: {alias}" for opt in cls.options for alias in opt.aliases if f"`{alias}`" not in text]
    return missing


def test_every_registered_backend_option_is_documented_under_its_backend() -> None:
    assert WebDAV in BACKENDS.values() and S3 in BACKENDS.values()
    assert undocumented(BACKENDS.values()) == [], (
        "list each backend's options (every alias, in backticks) under a heading '### <name> relays' "
        "in docs/configuration.md or docs/relays.md")


def test_a_new_backend_without_docs_is_caught(tiny) -> None:
    assert undocumented(BACKENDS.values()) == ["tiny: tiny depth", "tiny: depth of tiny", "tiny: tiny token",
                                               "tiny: max retries"]
