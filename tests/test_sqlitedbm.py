"""escale.sqlitedbm: the MutableMapping behaviour, the flags, and file compatibility with
CPython 3.13's dbm.sqlite3 (checked with a real 3.13 interpreter when one is installed)."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from escale import sqlitedbm

PY313 = Path("/root/.pyenv/versions/3.13.0/bin/python")
needs_py313 = pytest.mark.skipif(not PY313.exists(), reason=f"{PY313} is not installed")


def run_py313(code: str) -> str:
    done = subprocess.run([str(PY313), "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_basic_operations(tmp_path):
    with sqlitedbm.open(tmp_path / "t.db", "c") as db:
        assert len(db) == 0
        db["a"] = "1"
        db[b"b"] = b"\x00\xff"
        db["é"] = "ü"
        assert db["a"] == b"1"
        assert db[b"a"] == b"1"  # str and bytes keys address the same entry
        assert db["b"] == b"\x00\xff"
        assert db["é".encode()] == "ü".encode()
        assert len(db) == 3
        assert "a" in db and b"zz" not in db
        assert sorted(db.keys()) == sorted([b"a", b"b", "é".encode()])
        assert dict(db.items())[b"a"] == b"1"
        db["a"] = "2"
        assert db["a"] == b"2" and len(db) == 3
        del db["a"]
        with pytest.raises(KeyError):
            db["a"]
        with pytest.raises(KeyError):
            del db["a"]
        assert db.get("a") is None
        assert db.setdefault("c", b"3") == b"3"
        for key in db:  # iteration is a snapshot: deleting while iterating is fine
            del db[key]
        assert len(db) == 0


def test_closed_object_raises(tmp_path):
    db = sqlitedbm.open(tmp_path / "t.db", "c")
    db.close()
    db.close()  # idempotent
    with pytest.raises(sqlitedbm.error):
        db["a"]
    with pytest.raises(OSError):  # error is an OSError, like the dbm modules'
        db["a"] = "b"


def test_flags(tmp_path):
    path = tmp_path / "t.db"
    with pytest.raises(sqlitedbm.error):
        sqlitedbm.open(path, "r")
    with pytest.raises(sqlitedbm.error):
        sqlitedbm.open(path, "w")
    assert not path.exists()
    with pytest.raises(ValueError):
        sqlitedbm.open(path, "x")

    with sqlitedbm.open(path, "c") as db:
        db["k"] = "v"
    with sqlitedbm.open(path, "c") as db:  # 'c' keeps existing content
        assert db["k"] == b"v"
    with sqlitedbm.open(path, "w") as db:
        db["k2"] = "v2"
    with sqlitedbm.open(path) as db:  # default 'r'
        assert db["k2"] == b"v2"
        with pytest.raises(sqlitedbm.error):
            db["k3"] = "v3"
    with sqlitedbm.open(path, "n") as db:  # 'n' truncates
        assert len(db) == 0
        db["fresh"] = "1"
    with sqlitedbm.open(path, "r") as db:
        assert list(db) == [b"fresh"]


def test_create_mode_and_odd_names(tmp_path):
    path = tmp_path / "a?b#c%20 d.db"
    with sqlitedbm.open(path, "c", 0o600) as db:
        db["x"] = "y"
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".db")] == [path.name]


def test_schema_matches_stdlib(tmp_path):
    path = tmp_path / "t.db"
    with sqlitedbm.open(path, "c") as db:
        db["k"] = "v"
    cx = sqlite3.connect(path)
    try:
        sql = cx.execute("SELECT sql FROM sqlite_master WHERE name = 'Dict'").fetchone()[0]
        assert " ".join(sql.split()) == (
            "CREATE TABLE Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)")
        assert cx.execute("SELECT typeof(key), typeof(value) FROM Dict").fetchone() == (
            "blob", "blob")
        assert cx.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        cx.close()


def test_threads_share_one_object(tmp_path):
    db = sqlitedbm.open(tmp_path / "t.db", "c", threadsafe=True)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(100):
                db[f"{n}-{i}"] = str(i)
                assert db[f"{n}-{i}"] == str(i).encode()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(db) == 800
    db.close()


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="the fallback is only used before 3.13")
def test_fallback_is_used_before_313(tmp_path):
    with sqlitedbm.open(tmp_path / "t.db", "c") as db:
        assert isinstance(db, sqlitedbm.SQLiteDBM)


@needs_py313
def test_ours_written_stdlib313_reads_and_writes(tmp_path):
    path = tmp_path / "ours.db"
    with sqlitedbm.open(path, "c") as db:
        db["path/é.txt"] = b"+-"
        db[b"\x00bin"] = b"\xff\x00"
        db["gone"] = "x"
    out = run_py313(f"""
        import dbm.sqlite3
        with dbm.sqlite3.open({str(path)!r}, "w") as db:
            assert db["path/é.txt"] == b"+-", db["path/é.txt"]
            assert db[b"\\x00bin"] == b"\\xff\\x00"
            assert len(db) == 3
            del db["gone"]
            db["from313"] = "ü"
            print(sorted(k.hex() for k in db.keys()))
    """)
    assert "66726f6d333133" in out  # b"from313"
    with sqlitedbm.open(path, "r") as db:
        assert db["from313"] == "ü".encode()
        assert "gone" not in db
        assert len(db) == 3


@needs_py313
def test_stdlib313_written_ours_reads_and_writes(tmp_path):
    path = tmp_path / "theirs.db"
    run_py313(f"""
        import dbm.sqlite3
        with dbm.sqlite3.open({str(path)!r}, "c") as db:
            db["a/b.txt"] = " -"
            db[b"raw"] = b"\\x01\\x02"
    """)
    with sqlitedbm.open(path, "w") as db:
        assert db["a/b.txt"] == b" -"
        assert db[b"raw"] == b"\x01\x02"
        db["a/b.txt"] = "+ "
        db["ours"] = "1"
    out = run_py313(f"""
        import dbm.sqlite3
        with dbm.sqlite3.open({str(path)!r}, "r") as db:
            print(repr((db["a/b.txt"], db["ours"], len(db))))
    """)
    assert out.strip() == repr((b"+ ", b"1", 3))


@needs_py313
def test_module_under_py313(tmp_path):
    """On 3.13 open() hands out the stdlib object; threadsafe=True still gives ours."""
    repo = Path(sqlitedbm.__file__).resolve().parent.parent
    out = run_py313(f"""
        import sys, threading, dbm.sqlite3
        sys.path.insert(0, {str(repo)!r})
        from escale import sqlitedbm
        with sqlitedbm.open({str(tmp_path / "a.db")!r}, "c") as db:
            assert type(db).__module__ == "dbm.sqlite3", type(db)
        db = sqlitedbm.open({str(tmp_path / "b.db")!r}, "c", threadsafe=True)
        assert isinstance(db, sqlitedbm.SQLiteDBM)
        assert sqlitedbm.error is dbm.sqlite3.error
        t = threading.Thread(target=db.__setitem__, args=("k", "v"))
        t.start(); t.join()
        print(db["k"])
        db.close()
    """)
    assert out.strip() == "b'v'"
