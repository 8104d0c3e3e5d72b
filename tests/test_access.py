"""escale.access: modes, persistent r/w flags, modifier parsing, the path gate, listing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from escale.access import (
    CONSERVATIVE, DOWNLOAD, SHARED, UPLOAD, AccessAttributes, AccessController,
    normalize_mode, parse_modifiers, safe_join,
)
from escale.errors import ConfigError, IntegrityError, UnsafePath


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "sync"
    root.mkdir()
    return root


# --------------------------------------------------------------------------- modes

@pytest.mark.parametrize("given, expected", [
    (None, SHARED), ("shared", SHARED), ("share", SHARED), ("Sharing", SHARED),
    ("upload", UPLOAD), ("DOWNLOAD", DOWNLOAD), ("conservative", CONSERVATIVE),
    ("protective", CONSERVATIVE), ("preservative", CONSERVATIVE),
])
def test_mode_names(given, expected):
    assert normalize_mode(given) == expected


def test_mode_errors():
    with pytest.raises(ConfigError):
        normalize_mode("sideways")
    with pytest.raises(ConfigError):
        normalize_mode(None, push_only=True, pull_only=True)
    with pytest.raises(ConfigError):
        normalize_mode("download", push_only=True)
    assert normalize_mode(None, push_only=True) == UPLOAD
    assert normalize_mode(None, pull_only=True) == DOWNLOAD
    assert normalize_mode("upload", push_only=True) == UPLOAD


@pytest.mark.parametrize("mode, push, pull", [
    (SHARED, True, True), (UPLOAD, True, False), (DOWNLOAD, False, True),
    (CONSERVATIVE, True, True),
])
def test_modes_gate_directions(folder, mode, push, pull):
    touch(folder / "a.txt")
    with AccessController("repo", folder, mode=mode) as ac:
        assert ac.mode == mode
        assert ac.may_push() is push and ac.may_pull() is pull
        assert ac.readable(["a.txt", "b.txt"]) == (["a.txt", "b.txt"] if push else [])
        assert ac.isReadable("a.txt") is push
        assert ac.isWritable("new.txt") is pull
        assert (ac.writable("new.txt") == folder / "new.txt") is pull
        # an existing file with no flag is writable in every pulling mode; conservative
        # mode's "never overwrite a local edit" rule is the planner's (tests/test_plan.py)
        assert ac.isWritable("a.txt") is pull


def test_push_only_pull_only_switches(folder):
    with AccessController("r", folder, push_only=True) as ac:
        assert ac.mode == UPLOAD and ac.writable("x") is None
    with AccessController("r", folder, pull_only=True) as ac:
        assert ac.mode == DOWNLOAD and ac.readable(["x"]) == []


def test_explicit_w_minus_protects_a_file(folder):
    touch(folder / "a.txt")
    with AccessController("r", folder, mode="conservative") as ac:
        ac.setWritability("a.txt", False)
        assert ac.writable("a.txt") is None
        ac.setWritability("a.txt", True)
        assert ac.writable("a.txt") == folder / "a.txt"
        assert ac.writable("a.txt", absolute=False) == "a.txt"


def test_properties(tmp_path, folder):
    ac = AccessController("repo", folder, persistent=tmp_path / "state" / "access.db",
                          ui_controller=object())  # unknown 0.7 keywords are ignored
    try:
        assert ac.repository == "repo"
        assert ac.path == folder and isinstance(ac.path, Path)
        assert ac.persistent == tmp_path / "state" / "access.db"
        assert ac.persistent.exists()  # the table is created when missing
        assert isinstance(ac.attributes, AccessAttributes)
        assert ac.absolute("a/b") == folder / "a" / "b"
    finally:
        ac.close()
    assert AccessController("repo", folder).persistent is None


# --------------------------------------------------------------------------- flags

def test_flags_unset_means_allowed(folder):
    with AccessController("r", folder) as ac:
        assert ac.getReadability("f") is None and ac.getWritability("f") is None
        assert ac.isReadable("f") and ac.isWritable("f")
        assert ac.attributes.table("f") == "r?w?"


def test_flags_block_per_file(folder):
    touch(folder / "f")
    with AccessController("r", folder) as ac:
        ac.setReadability("f", False)
        assert ac.readable(["f", "g"]) == ["g"]
        assert not ac.isReadable("f")
        ac.setWritability("g", False)
        assert ac.writable("g") is None and not ac.isWritable("g")
        assert ac.writable("f") == folder / "f"


def test_attribute_methods_and_encoding(tmp_path):
    db = tmp_path / "flags.db"
    with AccessAttributes(db) as attrs:
        attrs.setReadable("a/é.txt")
        attrs.setNotWritable("a/é.txt")
        assert attrs.table("a/é.txt") == "r+w-"
        attrs.unsetReadability("a/é.txt")
        assert attrs.table("a/é.txt") == "r?w-"
        attrs.setNotReadable("b")
        attrs.setWritable("c")
        attrs.setReadability("d", True)
        attrs.setWritability("d", None)
        attrs.unsetWritability("a/é.txt")  # both unset: the entry goes away
        assert sorted(attrs.items()) == [("b", False, None), ("c", None, True), ("d", True, None)]
        assert attrs.isReadable("x", make_explicit=False) is False
        assert attrs.getReadability("x") is False
        with pytest.raises(TypeError):
            attrs.setReadability("y", "yes")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            attrs.setReadable("/abs")
    # on-disk format: UTF-8 relative path -> two bytes (r, w)
    from escale import sqlitedbm
    with sqlitedbm.open(db, "r") as raw:
        assert raw["b"] == b"- "
        assert raw["c"] == b" +"
        assert raw["x"] == b"- "
        assert "a/é.txt".encode() not in raw


def test_flags_persist_across_reopen(tmp_path, folder):
    persistent = tmp_path / "access.db"
    with AccessController("r", folder, persistent=persistent) as ac:
        ac.setReadability("sub/a.txt", False)
        ac.setWritability("sub/b.txt", True)
    with AccessController("r", folder, persistent=persistent) as ac:
        assert ac.getReadability("sub/a.txt") is False
        assert ac.getWritability("sub/b.txt") is True
        assert ac.getWritability("sub/a.txt") is None
        assert ac.attributes.table("sub/a.txt") == "r-w?"


def test_malformed_value_counts_as_unset(tmp_path):
    from escale import sqlitedbm
    db = tmp_path / "flags.db"
    with sqlitedbm.open(db, "c") as raw:
        raw["bad"] = b"x"
    with AccessAttributes(db) as attrs:
        assert attrs.getReadability("bad") is None and attrs.isWritable("bad")


def test_in_memory_attributes():
    attrs = AccessAttributes(None)
    attrs.setNotReadable("a")
    assert attrs.isReadable("a") is False
    attrs.close()


# --------------------------------------------------------------------------- modifiers

@pytest.mark.parametrize("args, expected", [
    (["r-"], {"r": False}),
    (["w+"], {"w": True}),
    (["r?w-"], {"r": None, "w": False}),
    (["r?", "w-"], {"r": None, "w": False}),
    (["r"], {"r": True}),
    (["rw-"], {"r": True, "w": False}),
    (["rw"], {"r": True, "w": True}),
    (["wr?"], {"w": True, "r": None}),
    (["r- w+"], {"r": False, "w": True}),
    (["r-", "r-"], {"r": False}),
    ([], {}),
])
def test_parse_modifiers(args, expected):
    assert parse_modifiers(args) == expected


@pytest.mark.parametrize("args", [["x"], ["r*"], ["+"], ["r--"], ["r-r+"], ["r", "w", "q"]])
def test_parse_modifiers_rejects(args):
    with pytest.raises(ValueError, match="access modifier"):
        parse_modifiers(args)


# --------------------------------------------------------------------------- safe_join

@pytest.mark.parametrize("bad", [
    "", "../x", "/etc/passwd", "a/../../x", "a/..", "..", "a\\b", "..\\x", ".escale/x",
    ".escale", ".ESCALE/state", "a//b", "a/", "./a", "a/./b", "a\x00b", "C:/x", "c:x",
])
def test_safe_join_rejects(folder, bad):
    with pytest.raises(UnsafePath) as info:
        safe_join(folder, bad)
    assert isinstance(info.value, IntegrityError)  # names the relay object
    assert info.value.object == bad


def test_safe_join_rejects_non_string(folder):
    with pytest.raises(UnsafePath):
        safe_join(folder, b"a")  # type: ignore[arg-type]


def test_safe_join_accepts(folder):
    assert safe_join(folder, "a") == folder / "a"
    assert safe_join(folder, "a/b/.hidden") == folder / "a" / "b" / ".hidden"
    assert safe_join(folder, "x/.escale/y") == folder / "x" / ".escale" / "y"
    assert safe_join(folder, "a..b/c...") == folder / "a..b" / "c..."
    assert safe_join(str(folder), "é ü/x y") == folder / "é ü" / "x y"


def test_safe_join_rejects_symlinked_folder(tmp_path, folder):
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "sub").mkdir()
    os.symlink(outside, folder / "sub" / "link")
    os.symlink(outside, folder / "toplink")
    for bad in ("toplink/x", "sub/link/x", "sub/link/deeper/x"):
        with pytest.raises(UnsafePath, match="symbolic link"):
            safe_join(folder, bad)
    # a symlink as the final component is not a folder we descend through
    assert safe_join(folder, "toplink") == folder / "toplink"
    with AccessController("r", folder) as ac:
        with pytest.raises(UnsafePath):
            ac.writable("toplink/evil")
        assert ac.writable("toplink") is None  # never replace the user's symlink
    assert list(outside.iterdir()) == []


def test_safe_join_remembers_only_what_depends_on_the_string(tmp_path, folder):
    """The spelling checks are remembered process-wide (escale/access.py ``_spelling``):
    a path that passed in one folder is still refused in another where one of its
    folders is a symbolic link, and a refused spelling is refused every time."""
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(tmp_path / "outside", other / "d")
    assert safe_join(folder, "d/f") == folder / "d" / "f"
    for _ in range(2):
        with pytest.raises(UnsafePath, match="symbolic link"):
            safe_join(other, "d/f")
        with pytest.raises(UnsafePath, match="'..' component"):
            safe_join(folder, "d/../f")
    for i in range(5000):  # past the 4096 remembered: all still answered
        assert safe_join(folder, f"n{i}/f") == folder / f"n{i}" / "f"
    with pytest.raises(UnsafePath, match="symbolic link"):
        safe_join(other, "d/f")


def test_safe_join_root_may_be_a_symlink(tmp_path, folder):
    alias = tmp_path / "alias"
    os.symlink(folder, alias)
    assert safe_join(alias, "a/b") == alias / "a" / "b"


def test_writable_checks_paths_in_every_mode(folder):
    for mode in ("upload", "download", "shared", "conservative"):
        with AccessController("r", folder, mode=mode) as ac:
            with pytest.raises(UnsafePath):
                ac.writable("../escape")
            with pytest.raises(UnsafePath):
                ac.isWritable("/etc/passwd")


# --------------------------------------------------------------------------- listing

def test_list_files(tmp_path, folder):
    touch(folder / "a.txt")
    touch(folder / ".hidden")
    touch(folder / ".config" / "x")
    touch(folder / "sub" / "b.txt")
    touch(folder / "sub" / ".escale" / "nested-is-user-data")
    touch(folder / ".escale" / "state.db")
    touch(folder / "sub" / "c.txt.escale-tmp-123")
    touch(folder / ".escale-tmp-abc")
    (folder / "empty").mkdir()
    outside = touch(tmp_path / "outside" / "secret")
    os.symlink(outside, folder / "filelink")
    os.symlink(outside.parent, folder / "dirlink")
    os.mkfifo(folder / "fifo")
    with AccessController("r", folder) as ac:
        assert ac.listFiles() == [
            ".config/x", ".hidden", "a.txt", "sub/.escale/nested-is-user-data", "sub/b.txt"]
        assert ac.listFiles("sub") == ["sub/.escale/nested-is-user-data", "sub/b.txt"]
        assert ac.listFiles(basename=lambda n: n.endswith(".txt")) == ["a.txt", "sub/b.txt"]
        assert ac.listFiles(dirname=lambda d: not d.split("/")[-1].startswith(".")) == [
            ".hidden", "a.txt", "sub/b.txt"]
        assert ac.listFiles(absolute=True)[0] == str(folder / ".config" / "x")
        assert ac.listFiles("missing") == []
        with pytest.raises(UnsafePath):
            ac.listFiles("../")


def test_list_files_skips_non_utf8_names(folder, caplog):
    name = os.fsencode(folder) + b"/bad-\xff"
    with open(name, "wb"):
        pass
    touch(folder / "good")
    with AccessController("r", folder) as ac:
        assert ac.listFiles() == ["good"]
    assert "not valid UTF-8" in caplog.text


def test_confirm_hooks_and_accessor(folder):
    touch(folder / "f")
    with AccessController("r", folder) as ac:
        with ac.confirmPull("f"):
            pass
        with ac.confirmPush("f"):
            pass
        assert ac.attributes.table("f") == "r?w?"  # no implicit flag changes
        acc = ac.accessor("f")
        assert acc.exists()
        ac.setWritability("f", False)
        with pytest.raises(PermissionError):
            acc.delete()
        ac.setWritability("f", None)
        acc.delete()
        assert not acc.exists()
