"""escale.checksum: cache hits and misses, pruning, persistence, and hashing races."""
from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from escale import checksum
from escale.names import db_key
from escale.checksum import ChecksumCache, FileChangedError, hash_bytes, hash_stream

OLD_NS = 1_600_000_000 * 10**9  # a fixed mtime well in the past


def write(path: Path, data: bytes, mtime_ns: int | None = OLD_NS) -> os.stat_result:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return os.stat(path)


def test_hash_helpers():
    data = os.urandom(3 * checksum.BLOCK_SIZE + 17)
    assert hash_bytes(data) == hashlib.sha256(data).hexdigest()
    assert hash_stream(io.BytesIO(data), "sha512") == hashlib.sha512(data).hexdigest()
    assert hash_bytes(b"", "blake2b") == hashlib.blake2b(b"").hexdigest()

    class ReadOnly:  # a stream without readinto
        def __init__(self, raw: bytes):
            self._io = io.BytesIO(raw)

        def read(self, n: int) -> bytes:
            return self._io.read(n)

    assert hash_stream(ReadOnly(data), "md5") == hashlib.md5(data).hexdigest()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        hash_bytes(b"", "nope")
    with pytest.raises(ValueError):
        ChecksumCache(None, "nope")


def test_lookup_hit_and_misses():
    with ChecksumCache(None) as cache:
        cache.store("a", 10, 1000, 7, "d1")
        assert cache.lookup("a", 10, 1000, 7) == "d1"
        assert cache.lookup("a", 11, 1000, 7) is None  # size
        assert cache.lookup("a", 10, 1001, 7) is None  # mtime
        assert cache.lookup("a", 10, 1000, 8) is None  # inode
        assert cache.lookup("b", 10, 1000, 7) is None  # path
        cache.store("a", 11, 1001, 7, "d2")  # replaces
        assert cache.lookup("a", 11, 1001, 7) == "d2" and len(cache) == 1
        cache.forget("a")
        cache.forget("never-there")
        assert cache.lookup("a", 11, 1001, 7) is None and len(cache) == 0


def test_algorithm_must_match(tmp_path):
    db = tmp_path / "cc.sqlite"
    with ChecksumCache(db, "sha256") as cache:
        cache.store("a", 1, 2, 3, "sha256-digest")
    with ChecksumCache(db, "sha512") as cache:
        assert cache.lookup("a", 1, 2, 3) is None


def test_persistence_across_reopen_and_schema(tmp_path):
    db = tmp_path / "deep" / "cc.sqlite"  # missing folders are created
    with ChecksumCache(db) as cache:
        with cache.batch():
            for i in range(100):
                cache.store(f"f{i}", i, i * 10, i + 1, f"d{i}")
    with ChecksumCache(db) as cache:
        assert len(cache) == 100
        assert cache.lookup("f42", 42, 420, 43) == "d42"
    cx = sqlite3.connect(db)
    try:
        cols = [row[1] for row in cx.execute("PRAGMA table_info(checksums)")]
        assert cols == ["path", "size", "mtime_ns", "inode", "algorithm", "digest", "parent"]
    finally:
        cx.close()


def test_a_cache_of_the_previous_version_is_indexed_by_folder_in_place(tmp_path):
    """A cache written before the ``parent`` column (escale 0.8's first release) keeps its
    digests: opened, each row gets its folder, and a folder's rows come in one query."""
    db = tmp_path / "cc.sqlite"
    cx = sqlite3.connect(db)
    cx.execute("CREATE TABLE checksums (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER, "
               "algorithm TEXT, digest TEXT)")
    raw = b"d/caf\xe9".decode("utf-8", "surrogateescape")  # a Latin-1 name, keyed by its bytes
    rows = [("top", "d0"), ("d/a", "d1"), ("d/e/b", "d2"), (raw, "d3")]
    cx.executemany("INSERT INTO checksums VALUES (?, 1, 2, 3, 'sha256', ?)", [(db_key(p), d) for p, d in rows])
    cx.commit()
    cx.close()
    with ChecksumCache(db) as cache:
        assert cache.folder("") == {"top": (1, 2, 3, "d0")}
        assert cache.folder("d") == {"d/a": (1, 2, 3, "d1"), raw: (1, 2, 3, "d3")}
        assert cache.folder("d/e") == {"d/e/b": (1, 2, 3, "d2")}
        assert cache.lookup("d/a", 1, 2, 3) == "d1"
        cache.forget_folders([db_key("d")])
        assert cache.folder("d") == {} and len(cache) == 2


def test_batch_is_one_transaction_and_survives_errors(tmp_path):
    db = tmp_path / "cc.sqlite"
    cache = ChecksumCache(db)
    with cache.batch():
        with cache.batch():  # nested
            cache.store("a", 1, 1, 1, "x")
        assert cache._cx.in_transaction  # still open until the outer block ends
    assert not cache._cx.in_transaction
    with pytest.raises(RuntimeError):
        with cache.batch():
            cache.store("b", 1, 1, 1, "y")
            raise RuntimeError("boom")
    cache.close()
    cache.close()  # idempotent
    with ChecksumCache(db) as again:
        assert again.lookup("a", 1, 1, 1) == "x"
        assert again.lookup("b", 1, 1, 1) == "y"  # a failed scan keeps its correct entries


def test_prune_forgets_deleted_files():
    with ChecksumCache(None) as cache:
        for name in ("a", "b", "c", "d/e"):
            cache.store(name, 1, 1, 1, name)
        assert cache.prune(iter(["a", "d/e", "not-cached"])) == 2
        assert cache.lookup("a", 1, 1, 1) == "a"
        assert cache.lookup("b", 1, 1, 1) is None
        assert cache.prune(["a", "d/e"]) == 0
        assert cache.prune([]) == 2 and len(cache) == 0


def test_digest_file_correct_and_cached(tmp_path, monkeypatch):
    data = os.urandom(2 * checksum.BLOCK_SIZE + 5)
    st = write(tmp_path / "f.bin", data)
    with ChecksumCache(tmp_path / "cc.sqlite", "sha1") as cache:
        digest = cache.digest_file(tmp_path / "f.bin", "f.bin", st)
        assert digest == hashlib.sha1(data).hexdigest()
        assert cache.lookup("f.bin", st.st_size, st.st_mtime_ns, st.st_ino) == digest

        def fail(*args, **kwargs):  # a hit must not read the file
            raise AssertionError("file was re-read")

        monkeypatch.setattr(checksum, "hash_stream", fail)
        assert cache.digest_file(tmp_path / "f.bin", "f.bin", st) == digest


def test_digest_file_misses_on_changes(tmp_path):
    path = tmp_path / "f"
    with ChecksumCache(None) as cache:
        st = write(path, b"one")
        assert cache.digest_file(path, "f", st) == hash_bytes(b"one")
        st = write(path, b"two!", OLD_NS)  # size changed, same mtime
        assert cache.digest_file(path, "f", st) == hash_bytes(b"two!")
        st = write(path, b"tw0!", OLD_NS + 1)  # same size, mtime changed by 1 ns
        assert cache.digest_file(path, "f", st) == hash_bytes(b"tw0!")


def test_same_size_same_mtime_new_inode_is_a_miss(tmp_path):
    path = tmp_path / "f"
    with ChecksumCache(None) as cache:
        st1 = write(path, b"AAAA")
        assert cache.digest_file(path, "f", st1) == hash_bytes(b"AAAA")
        write(tmp_path / "tmp", b"BBBB")  # created while the old file still exists
        os.replace(tmp_path / "tmp", path)
        st2 = os.stat(path)
        assert (st2.st_size, st2.st_mtime_ns) == (st1.st_size, st1.st_mtime_ns)
        assert st2.st_ino != st1.st_ino
        assert cache.lookup("f", st2.st_size, st2.st_mtime_ns, st2.st_ino) is None
        assert cache.digest_file(path, "f", st2) == hash_bytes(b"BBBB")


def test_recent_files_are_hashed_but_not_cached(tmp_path):
    path = tmp_path / "f"
    with ChecksumCache(None) as cache:
        st = write(path, b"fresh", mtime_ns=None)
        assert cache.digest_file(path, "f", st) == hash_bytes(b"fresh")
        assert len(cache) == 0  # a same-tick rewrite could keep size and mtime
        cache.racy_window_ns = 0
        cache.digest_file(path, "f", st)
        assert len(cache) == 1


def test_change_during_hashing_retries_once(tmp_path, monkeypatch):
    path = tmp_path / "f"
    st = write(path, b"before")
    real = checksum.hash_stream
    calls = []

    def racing(stream, algorithm):
        calls.append(1)
        if len(calls) == 1:
            write(path, b"after!!", OLD_NS + 5)  # in place: same inode
        return real(stream, algorithm)

    monkeypatch.setattr(checksum, "hash_stream", racing)
    with ChecksumCache(None) as cache:
        assert cache.digest_file(path, "f", st) == hash_bytes(b"after!!")
        assert len(calls) == 2
        new = os.stat(path)
        assert cache.lookup("f", new.st_size, new.st_mtime_ns, new.st_ino) == hash_bytes(b"after!!")
        assert cache.lookup("f", st.st_size, st.st_mtime_ns, st.st_ino) is None


def test_file_that_keeps_changing_raises(tmp_path, monkeypatch):
    path = tmp_path / "f"
    st = write(path, b"v0")
    real = checksum.hash_stream
    count = iter(range(1, 100))

    def always_racing(stream, algorithm):
        write(path, b"v%d" % next(count) * 3, OLD_NS + 10 * next(count))
        return real(stream, algorithm)

    monkeypatch.setattr(checksum, "hash_stream", always_racing)
    with ChecksumCache(None) as cache:
        with pytest.raises(FileChangedError) as info:
            cache.digest_file(path, "f", st)
        assert isinstance(info.value, OSError) and info.value.filename == str(path)
        assert len(cache) == 0


def test_stale_stat_is_rehashed(tmp_path):
    path = tmp_path / "f"
    old = write(path, b"old")
    write(path, b"newer", OLD_NS + 1)
    with ChecksumCache(None) as cache:
        assert cache.digest_file(path, "f", old) == hash_bytes(b"newer")


def test_missing_file(tmp_path):
    st = write(tmp_path / "f", b"x")
    os.unlink(tmp_path / "f")
    with ChecksumCache(None) as cache:
        with pytest.raises(FileNotFoundError):
            cache.digest_file(tmp_path / "f", "f", st)


def test_corrupt_cache_file_is_set_aside(tmp_path, caplog):
    db = tmp_path / "cc.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    with ChecksumCache(db) as cache:
        cache.store("a", 1, 1, 1, "d")
        assert cache.lookup("a", 1, 1, 1) == "d"
    assert (tmp_path / "cc.sqlite.corrupt").exists()
    assert "unreadable" in caplog.text


def test_closed_cache_raises():
    cache = ChecksumCache(None)
    cache.close()
    with pytest.raises(ValueError):
        cache.lookup("a", 1, 1, 1)


def test_threads_share_one_cache(tmp_path):
    cache = ChecksumCache(tmp_path / "cc.sqlite")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with cache.batch():
                for i in range(200):
                    cache.store(f"{n}/{i}", i, i, i, "d")
                    assert cache.lookup(f"{n}/{i}", i, i, i) == "d"
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache) == 1200
    cache.close()
