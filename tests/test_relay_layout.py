"""The flat and nested layouts of FTP, SFTP and WebDAV relays (escale/relay/layout.py), on
real servers (WebDAV: wsgidav, Apache mod_dav, ``rclone serve webdav``).

A new relay is flat (one folder: listed in one request); a relay made nested (before
2026-12, or with ``layout = nested``) stays nested whatever a client's option says; a flat
relay keeps a client that only knows folders from writing into it; a relay that holds both
layouts is refused; an SFTP flat relay's listing is reused only while its folder is unchanged.
The contract suite runs on both layouts (tests/test_relay_contract.py: ``ftp-nested``,
``sftp-nested``, ``webdav-wsgidav-nested``, ``webdav-apache-nested``).
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from escale.errors import RelayError
from escale.relay import FTP, SFTP, WebDAV
from escale.relay.layout import FLAT, GUARDS, NESTED, decode, encode
from idle_requests import counting

KINDS = ["ftp", "sftp", "webdav-wsgidav", "webdav-apache", "webdav-rclone"]


def _server(request, kind: str):
    if kind.startswith("webdav-"):
        return request.getfixturevalue("relay_" + kind.replace("-", "_"))
    return request.getfixturevalue("relay_ftp_pyftpdlib" if kind == "ftp" else "relay_sftp")


def _relay(kind: str, address: str, kwargs: dict, **extra):
    relay = (WebDAV if kind.startswith("webdav-") else FTP if kind == "ftp" else SFTP)(address, **{**kwargs, **extra})
    relay.open()
    return relay


def _folder(server, kind: str, address: str) -> Path:
    if kind.startswith("webdav-"):
        return server.data / "dav" / address.rsplit("/", 1)[1]
    return server.folder(address) if kind == "ftp" else server.data / address.rsplit("/", 1)[1]


def _put(relay, name: str, data: bytes = b"x") -> None:
    relay.put(name, io.BytesIO(data), size=len(data))


def test_flat_names_round_trip_and_never_look_like_a_guard() -> None:
    names = ["escale.json", "m/0123456789abcdef", "b/0123456789abcdef/7/0", "pct/%41%2F", "m", "u", "a b/c?d#e",
             "q/x y%z#+.txt"]
    for name in names:
        flat = encode(name)
        assert "/" not in flat and flat not in GUARDS and decode(flat) == name, (name, flat)
    assert encode("m") == "%6D"
    # a guard file, a name this layout never writes, an unsafe name: no object
    for other in ["m", "u", "a%2f", "%2E%2E%2Fx", "x%2F%2Fy", "%zz", "%41"]:
        assert decode(other) is None, other


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_relay_is_flat_and_a_nested_one_stays_nested(request, kind) -> None:
    server = _server(request, kind)
    address, _conf, kwargs = server.new()
    relay = _relay(kind, address, kwargs)
    try:
        assert relay.layout == FLAT
        _put(relay, "u/0123456789abcdef/1", b"one")
        _put(relay, "escale.json", b"{}")
        folder = _folder(server, kind, address)
        assert sorted(p.name for p in folder.iterdir()) == sorted([*GUARDS, "escale.json", "u%2F0123456789abcdef%2F1"])
        assert all(folder.joinpath(g).is_file() and folder.joinpath(g).stat().st_size == 0 for g in GUARDS)
        assert [(i.name, i.size) for i in relay.list()] == [("escale.json", 2), ("u/0123456789abcdef/1", 3)]
        assert [i.name for i in relay.list("u/")] == ["u/0123456789abcdef/1"]
        assert relay.get("u/0123456789abcdef/1").read() == b"one"
        relay.delete("u/0123456789abcdef/1")
        assert [i.name for i in relay.list()] == ["escale.json"]
    finally:
        relay.close()
    # a relay made nested keeps its layout for a client whose option says flat
    address, _conf, kwargs = server.new()
    old = _relay(kind, address, kwargs, layout="nested")
    try:
        _put(old, "m/0123456789abcdef", b"card")
    finally:
        old.close()
    relay = _relay(kind, address, kwargs, layout="flat")
    try:
        assert relay.layout == NESTED
        _put(relay, "u/0123456789abcdef/1", b"one")
        folder = _folder(server, kind, address)
        assert (folder / "u" / "0123456789abcdef" / "1").read_bytes() == b"one"
        assert sorted(i.name for i in relay.list()) == ["m/0123456789abcdef", "u/0123456789abcdef/1"]
    finally:
        relay.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_that_only_knows_folders_cannot_write_into_a_flat_relay(request, kind) -> None:
    """What escale before 2026-12 does on a flat relay: it reads the header (the same name
    in both layouts), sees no member, and its first write needs the folder ``m``, which a
    guard file holds: it fails, never leaving a nested object in a flat relay. Played by
    this backend's nested code path, which is the older escale's."""
    server = _server(request, kind)
    address, _conf, kwargs = server.new()
    new = _relay(kind, address, kwargs)
    try:
        _put(new, "escale.json", b"{}")
        _put(new, "m/1111111111111111", b"card")
    finally:
        new.close()
    old = _relay(kind, address, kwargs)
    setattr(old, "layout" if kind == "ftp" else "_layout", NESTED)  # the older code: names are paths
    try:
        assert old.get("escale.json").read() == b"{}"
        if kind == "webdav-apache":  # "m/" names a file: Apache refuses the listing (400), nothing is read
            with pytest.raises(RelayError, match="HTTP 400"):
                list(old.list("m/"))
        else:
            assert [i.name for i in old.list("m/")] == []
        with pytest.raises(RelayError, match="folder|not a folder|HTTP 40[049]"):
            _put(old, "m/2222222222222222", b"old card")
    finally:
        old.close()
    folder = _folder(server, kind, address)
    assert not any(p.is_dir() for p in folder.iterdir())  # no folder of the nested layout
    relay = _relay(kind, address, kwargs)
    try:
        assert [i.name for i in relay.list()] == ["escale.json", "m/1111111111111111"]
    finally:
        relay.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_relay_holding_both_layouts_is_refused(request, kind) -> None:
    server = _server(request, kind)
    address, _conf, kwargs = server.new()
    relay = _relay(kind, address, kwargs)
    try:
        _put(relay, "u/0123456789abcdef/1", b"one")
        # another version's client made its folder (a race at creation)
        if kind.startswith("webdav-"):  # through the server: rclone's VFS would not see a change behind it
            for method, url in (("DELETE", relay._url("m")), ("MKCOL", relay._url("m", True))):
                assert relay.session.request(method, url).status_code in (201, 204)
        else:
            folder = _folder(server, kind, address)
            (folder / "m").unlink()
            (folder / "m").mkdir()
        with pytest.raises(RelayError, match="nested layout"):
            list(relay.list())
    finally:
        relay.close()
    with pytest.raises(RelayError, match="mixes two layouts|holds the file"):
        r = _relay(kind, address, kwargs)
        try:
            list(r.list())
        finally:
            r.close()


def test_sftp_reuses_a_flat_listing_only_while_the_folder_is_unchanged(relay_sftp) -> None:
    """One ``stat`` of the relay folder stands for a listing while the folder's mtime is
    unchanged and was settled when the listing began; another client's put, delete or
    replace changes it; a folder changed within the last seconds is listed again."""
    address, _conf, kwargs = relay_sftp.new()
    reader, writer = _relay("sftp", address, kwargs), _relay("sftp", address, kwargs)
    try:
        _put(writer, "u/0123456789abcdef/1", b"one")
        with counting("sftp") as fresh:
            assert [i.name for i in reader.list()] == ["u/0123456789abcdef/1"]
        with counting("sftp") as again:
            assert [i.name for i in reader.list()] == ["u/0123456789abcdef/1"]
        assert fresh["opendir"] == 1 and again["opendir"] == 1, (fresh, again)  # changed < 2 s ago: listed
        time.sleep(2.2)
        list(reader.list())
        with counting("sftp") as idle:
            assert [i.name for i in reader.list()] == ["u/0123456789abcdef/1"]
        assert dict(idle) == {"stat": 1}, idle
        for change in (lambda: _put(writer, "u/0123456789abcdef/2", b"two"),
                       lambda: _put(writer, "u/0123456789abcdef/1", b"ONE"),  # same size: a replace
                       lambda: writer.delete("u/0123456789abcdef/2")):
            time.sleep(1.1)  # into another second: the folder's mtime changes
            change()
            expected = sorted((i.name, i.size, i.mtime) for i in writer.list())
            assert sorted((i.name, i.size, i.mtime) for i in reader.list()) == expected
        assert reader.get("u/0123456789abcdef/1").read() == b"ONE"
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize("kind", [k for k in KINDS if k.startswith("webdav-")])
def test_webdav_flat_names_are_quoted_once_and_stored_as_written(request, kind) -> None:
    """A flat name holds '%2F' (and '%25'): it goes on the wire as '%252F', and the server
    stores the file under the flat name itself and lists it back unchanged."""
    server = _server(request, kind)
    address, _conf, kwargs = server.new()
    relay = _relay(kind, address, kwargs)
    names = ["u/0123456789abcdef/1", "pct/100%", "pct/%41%2F", "a b/c#d+e"]
    try:
        with counting("webdav") as put:
            for i, name in enumerate(names):
                _put(relay, name, b"%d" % i)
        folder = _folder(server, kind, address)
        assert sorted(p.name for p in folder.iterdir()) == sorted([*GUARDS, *(encode(n) for n in names)])
        assert (folder / "pct%2F%2541%252F").read_bytes() == b"2"
        assert [i.name for i in relay.list()] == sorted(names)
        assert [relay.get(n).read() for n in names] == [b"%d" % i for i in range(len(names))]
        assert "MKCOL" not in put, put  # one folder: nothing to make
    finally:
        relay.close()


@pytest.mark.parametrize("kind", [k for k in KINDS if k.startswith("webdav-")])
def test_webdav_flat_relay_is_listed_in_one_depth_1_request(request, kind) -> None:
    """Open is one ``PROPFIND Depth: 1`` (existence, layout, and the first listing at once);
    each later listing is one more."""
    server = _server(request, kind)
    address, _conf, kwargs = server.new()
    writer = _relay(kind, address, kwargs)
    try:
        for n in ("m/0123456789abcdef", "u/0123456789abcdef/1", "b/0123456789abcdef/1/0"):
            _put(writer, n)
    finally:
        writer.close()
    relay = WebDAV(address, **kwargs)
    try:
        with counting("webdav") as opening:
            relay.open()
            first = [i.name for i in relay.list()]
        with counting("webdav") as again:
            assert [i.name for i in relay.list("u/")] == ["u/0123456789abcdef/1"]
        assert first == ["b/0123456789abcdef/1/0", "m/0123456789abcdef", "u/0123456789abcdef/1"]
        assert dict(opening) == {"PROPFIND": 1} and dict(opening.depths) == {"1": 1}, (opening, opening.depths)
        assert dict(again) == {"PROPFIND": 1} and dict(again.depths) == {"1": 1}, (again, again.depths)
    finally:
        relay.close()


@pytest.mark.parametrize("kind", ["webdav-wsgidav", "webdav-apache"])
def test_webdav_flat_temporaries_are_hidden_and_removed_by_their_writer(request, kind) -> None:
    """A writer killed mid-put leaves ``.escale-put-<flat name>.<random>`` in the relay
    folder: listings hide it, raw_usage counts it, abort_incomplete of its prefix removes it."""
    import uuid

    import requests

    from escale.relay.base import TMP_MARK

    server = _server(request, kind)
    address, _conf, kwargs = server.new()
    relay = _relay(kind, address, kwargs)
    try:
        for name in ("u/0123456789abcdef/5", "u/ffffffffffffffff/5"):
            tmp = f"{TMP_MARK}{encode(name)}.{uuid.uuid4().hex}"
            r = requests.put(relay._url(tmp), data=b"partial", auth=(kwargs["user"], kwargs["password"]))
            assert r.status_code in (201, 204)
        assert list(relay.list()) == []
        assert relay.raw_usage() == 14
        assert relay.abort_incomplete("u/0123456789abcdef/") == 1
        assert relay.raw_usage() == 7  # the other writer's temporary is not ours to remove
    finally:
        relay.close()
