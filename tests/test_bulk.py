"""Bulk transfers (issue 16): grouped durability of small pulled files, and a returning
machine that does not fetch what later updates replaced or deleted."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time

from cluster import kill9, temp_files


def base_files(client) -> dict[str, str]:
    """What B's base records as files (path -> digest), read straight from its state."""
    found = list(client.state.rglob("state.sqlite"))
    assert len(found) == 1, found
    db = sqlite3.connect(found[0])
    try:
        rows = [json.loads(e) for (e,) in db.execute("SELECT entry FROM base")]
    finally:
        db.close()
    return {r["path"]: r["hash"] for r in rows if r.get("kind") == "file"}


def test_kill9_during_grouped_writes_leaves_no_partial_file_and_no_unwritten_base(cluster):
    """Small pulled files are fsynced in groups, then renamed, then remembered: a kill at any
    point leaves every real name either absent or holding the pusher's exact bytes, and the
    base never records a file that is not there with that content."""
    a = cluster.add("A")
    b = cluster.add("B")
    b.once()
    for i in range(1200):
        a.write(f"d{i % 6}/f{i:04d}.txt", os.urandom(4096))
    before = a.tree()
    a.once()
    kills, mid = [], 0
    for delay in (None, None, 0.3, 0.6, 1.0, 1.5):
        proc = b.start("--once")
        end = time.monotonic() + 30
        if delay is None:  # as soon as a group of temporaries waits for its flush
            while proc.poll() is None and time.monotonic() < end and len(temp_files(b.folder)) < 2:
                time.sleep(0.002)
        else:
            try:
                proc.wait(delay)
            except subprocess.TimeoutExpired:
                pass
        alive = proc.poll() is None
        temps = len(temp_files(b.folder))
        kill9(proc)
        proc.communicate(timeout=60)
        mid += alive and temps >= 2
        kills.append(f"{delay}:{'killed' if alive else 'finished'}:{temps} temps")
        got = b.tree()
        for rel, v in got.items():
            if ".escale-tmp-" in rel:
                continue
            assert rel in before, f"unexpected {rel} after {kills[-1]}"
            if v[0] == "file":
                assert v[1] == before[rel][1], f"{rel} partially written after {kills[-1]}"
        for rel, digest in base_files(b).items():
            data = (b.folder / rel).read_bytes() if (b.folder / rel).is_file() else None
            assert data is not None, f"the base records {rel}, which is not in the folder ({kills[-1]})"
            assert hashlib.sha256(data).hexdigest() == digest, f"{rel}: base and file differ ({kills[-1]})"
    print("kills:", kills)
    assert mid >= 1, f"no kill landed while a group of writes was pending: {kills}"
    for _ in range(2):
        b.once()
    assert b.tree() == before
    assert temp_files(b.folder) == []


def trash_files(client) -> list[str]:
    trash = client.folder / ".escale" / "trash"
    return sorted(str(p.relative_to(trash)) for p in trash.rglob("*") if p.is_file()) if trash.exists() else []


def test_returning_machine_does_not_fetch_what_later_updates_replace_or_delete(cluster):
    """B was away while A wrote, rewrote and deleted files: B takes only the outcome. Before,
    it downloaded every intermediate version (blobs and inline) and moved each straight to
    its trash."""
    a = cluster.add("A")
    b = cluster.add("B")
    b.once()
    a.write("big.bin", os.urandom(3_000_000))
    a.write("gone.bin", os.urandom(3_000_000))
    a.write("small.txt", os.urandom(3000))
    a.write("kept.bin", os.urandom(3_000_000))
    a.once()
    a.write("big.bin", os.urandom(3_000_000))
    (a.folder / "gone.bin").unlink()
    a.once()
    a.write("small.txt", os.urandom(2000))
    a.once()
    b.once()
    assert b.tree() == a.tree()
    assert trash_files(b) == [], "B downloaded versions that later updates had replaced or deleted"
    # and a machine that is up to date keeps replacing with a trash copy, as ever
    a.write("kept.bin", os.urandom(1000))
    a.once()
    b.once()
    assert b.tree() == a.tree()
    assert any(t.endswith("kept.bin") for t in trash_files(b))



def test_quiet_run_makes_no_log_record_that_no_handler_keeps(tmp_path) -> None:
    """A 5,000-file pull made 15,000 DEBUG/INFO records at -q that no handler kept (0.2–0.4 s):
    the root logger now lets through only what some handler shows."""
    import logging

    from escale.cli.logs import setup_logging

    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counting(*args, **kw):
        record = factory(*args, **kw)
        made.append(record)
        return record

    logging.setLogRecordFactory(counting)
    try:
        setup_logging(-1)
        logging.getLogger("escale.sync.apply").debug("repo: f.bin: Fetch, Remember")
        logging.getLogger("escale.sync.apply").info("repo: f.bin: new file")
        logging.getLogger("escale.sync.apply").warning("repo: shown")
        assert [r.levelname for r in made] == ["WARNING"], made
        made.clear()
        setup_logging(-1, tmp_path / "escale.log", "DEBUG")  # a log file at DEBUG keeps them all
        logging.getLogger("escale.sync.apply").debug("repo: kept in the file")
        assert [r.levelname for r in made] == ["DEBUG"], made
        assert "kept in the file" in (tmp_path / "escale.log").read_text()
    finally:
        logging.setLogRecordFactory(factory)
        setup_logging(0)


def _deferred(folder, paths: list[str]) -> tuple[list, dict[str, bytes]]:
    """Small files written to their temporaries (verified, not yet fsynced nor renamed)."""
    import io

    from escale.index import FILE, Entry

    writes, data = [], {}
    for i, rel in enumerate(paths):
        body = os.urandom(4096)
        e = Entry(rel, FILE, hashlib.sha256(body).hexdigest(), len(body), 1_600_000_000_000_000_000 + i, 0o644)
        writes.append(folder.fetch(rel, e, io.BytesIO(body), None, defer=True))
        data[rel] = body
    return writes, data


def _folder(root):
    from escale.folder import Folder

    return Folder(root, "sha256", lambda f, p, st: hashlib.sha256(f.read()).hexdigest())


def _names(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".escale" not in p.parts)


def test_grouped_writes_appear_only_after_their_fsyncs_and_leave_no_descriptor(tmp_path) -> None:
    """Two groups in flight (the applier writes one while the other's fsyncs run): no real
    name exists before its group is finished, each then holds exact bytes, and no temporary
    or descriptor is left — also when a group is abandoned (the pull stopped)."""
    root = tmp_path / "f"
    root.mkdir()
    folder = _folder(root)
    fds = len(os.listdir("/proc/self/fd"))
    first, data1 = _deferred(folder, [f"a/f{i}.bin" for i in range(40)] + [f"b/g{i}.bin" for i in range(40)])
    started = folder.start_writes(first)
    second, data2 = _deferred(folder, [f"a/h{i}.bin" for i in range(40)])
    assert all(".escale-tmp-" in n for n in _names(root) if n not in ("a", "b")), _names(root)
    assert folder.finish_writes(first, started) == [None] * 80
    for rel, body in data1.items():
        assert (root / rel).read_bytes() == body
    assert not any((root / rel).exists() for rel in data2), "the second group appeared before its fsyncs"
    folder.abandon_writes(second, folder.start_writes(second))
    assert _names(root) == sorted(["a", "b", *data1]), "a temporary or an abandoned file is left"
    assert len(os.listdir("/proc/self/fd")) == fds, "descriptors left open"


def test_folder_replaced_mid_group_gets_nothing_written_into_it(tmp_path) -> None:
    """A folder renamed away (and a new one made at its path) while its group waits for the
    fsyncs: no file lands in the old folder nor, unverified, in the new one; both are left
    without temporaries and the writes report an error (the files are asked for again)."""
    root = tmp_path / "f"
    root.mkdir()
    folder = _folder(root)
    writes, data = _deferred(folder, [f"sub/f{i}.bin" for i in range(30)] + ["top.bin"])
    started = folder.start_writes(writes)
    (root / "sub").rename(root / "old")
    (root / "sub").mkdir()
    outcomes = folder.finish_writes(writes, started)
    assert all(o is not None for o in outcomes[:30]) and outcomes[30] is None, outcomes
    assert list((root / "old").iterdir()) == [], "written into the folder that was replaced"
    assert list((root / "sub").iterdir()) == []
    assert (root / "top.bin").read_bytes() == data["top.bin"]


def test_kept_folder_descriptors_follow_a_folder_replaced_or_linked_meanwhile(tmp_path) -> None:
    """While an update is applied the folders' descriptors are kept; a folder renamed away
    and made again, or swapped for a link, between two files is never written through its
    kept descriptor: the next file goes to the new folder, or is refused (a link)."""
    from escale.errors import UnsafePath
    from escale.folder import LocalChanged

    root = tmp_path / "f"
    root.mkdir()
    folder = _folder(root)
    fds = len(os.listdir("/proc/self/fd"))
    with folder.keeping():
        first, _ = _deferred(folder, ["sub/deep/a.bin", "sub/b.bin"])
        assert folder.finish_writes(first) == [None, None]
        (root / "sub").rename(root / "old")
        (root / "sub" / "deep").mkdir(parents=True)
        second, data = _deferred(folder, ["sub/deep/c.bin", "sub/d.bin"])
        assert folder.finish_writes(second) == [None, None]
        assert sorted(_names(root / "old")) == ["b.bin", "deep", "deep/a.bin"], "written into the old folder"
        assert (root / "sub/deep/c.bin").read_bytes() == data["sub/deep/c.bin"]
        (root / "sub").rename(root / "old2")
        (root / "sub").symlink_to(root / "old")
        try:
            _deferred(folder, ["sub/deep/e.bin"])
            raise AssertionError("wrote through a folder swapped for a link")
        except (LocalChanged, UnsafePath):  # (the path check sees the link first)
            pass
        assert sorted(_names(root / "old")) == ["b.bin", "deep", "deep/a.bin"]
    assert len(os.listdir("/proc/self/fd")) == fds, "kept descriptors left open"
