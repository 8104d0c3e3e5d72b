"""Watcher-driven cycles (issue 16): with the folder watcher running, a daemon cycle lists
only the folders that changed — O(changes), not O(files) — and still publishes exactly
what a full scan would.

Real parts: a real Manager on a file:// relay, a real watchdog/inotify watcher on a real
folder, real edits. The oracle after each watcher-driven cycle is a full scan of the same
folder, which must find nothing left to publish; at the end the other client's folder
must equal this one's.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import threading
import time
from pathlib import Path

import pytest

from cluster import tree
from test_idle_scale import _fill  # files d<n>/f<i>.txt, made old enough for the checksum cache
from escale.config import load_config
from escale.manager import Manager
from escale.watch import FolderWatcher, filesystem_type


def _old(folder: Path) -> None:
    """Older than the checksum cache's racy window, so cached digests count."""
    old = time.time() - 60
    for p in folder.rglob("*"):
        os.utime(p, (old, old), follow_symlinks=False)


def settle(watcher: FolderWatcher, quiet: float = 0.6, timeout: float = 20) -> None:
    """Wait until the watcher has noted everything (no new event for ``quiet`` seconds;
    watchdog holds a move back up to 0.5 s to pair its two halves)."""
    end = time.monotonic() + timeout
    last, since = watcher.pending(), time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.1)
        now = watcher.pending()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


class Watched:
    """Client A as its daemon runs it: a Manager with a started watcher."""

    def __init__(self, client, full_scan: float = 3600):
        self.client = client
        self.m = Manager.from_config(load_config(client.conf).repositories["repo"])
        self.m.open()
        self.m.connect()
        self.watcher = FolderWatcher(self.m.folder.root, self.m.wake, full_scan=full_scan)
        assert self.watcher.start()
        self.m.pusher.scanner.watcher = self.watcher
        if not self.watcher.trusted:
            self.close()
            pytest.skip(f"{filesystem_type(self.m.folder.root)} here: the watcher is not trusted, every scan is full")

    def cycle(self):
        settle(self.watcher)
        return self.m.cycle()

    def checked_cycle(self, what: str):
        """A watched cycle without errors, then the oracle: a full scan finds nothing left."""
        r = self.cycle()
        assert r.errors == [], (what, r.errors)
        again = self.full_cycle()
        assert (again.sent, again.deleted) == (0, 0), f"{what}: the watched cycle missed {again.files}"
        return r

    def full_cycle(self):
        """A cycle with a full scan (the oracle), the watcher's notes kept for later."""
        self.m.pusher.scanner.watcher = None
        try:
            return self.m.cycle()
        finally:
            self.m.pusher.scanner.watcher = self.watcher

    def close(self) -> None:
        self.watcher.stop()
        self.m.close()


@pytest.fixture
def watched(cluster):
    made: list[Watched] = []

    def make(client, **kw) -> Watched:
        w = Watched(client, **kw)
        made.append(w)
        return w
    yield make
    for w in made:
        w.close()


def test_an_idle_watched_cycle_lists_no_folder_and_a_change_lists_its_folder(cluster, watched):
    a = cluster.add("a")
    _fill(a.folder, 30, 5)
    w = watched(a)
    first = w.cycle()
    assert first.sent == 150 and w.m.pusher.scanner.walked == 31  # the start: a full scan
    idle = w.cycle()
    assert idle.sent == 0 and w.m.pusher.scanner.walked == 0  # nothing changed: nothing listed
    (a.folder / "d7" / "f1.txt").write_text("changed\n")
    r = w.cycle()
    assert r.sent == 1 and w.m.pusher.scanner.walked == 1  # d7 only, not 31 folders
    (a.folder / "d3" / "new").mkdir()
    (a.folder / "d3" / "new" / "x.txt").write_text("x")
    r = w.cycle()
    assert r.files == [("sent", "d3/new/x.txt")]
    assert w.m.pusher.scanner.walked == 2  # d3, and d3/new (new: walked from d3)
    (a.folder / "d3" / "f0.txt").write_text("changed too\n")
    r = w.cycle()
    assert r.files == [("sent", "d3/f0.txt")]
    assert w.m.pusher.scanner.walked == 1  # d3 only: d3/new is known now, and did not change
    assert w.full_cycle().sent == 0


def test_watched_cycles_publish_what_a_full_scan_would(cluster, watched):
    """Every kind of change, one per cycle; after each, a full scan finds nothing left."""
    a, b = cluster.add("a"), cluster.add("b")
    _fill(a.folder, 4, 3)
    (a.folder / "deep" / "er" / "est").mkdir(parents=True)
    (a.folder / "deep" / "er" / "est" / "leaf.txt").write_text("leaf")
    (a.folder / "deep" / "er" / "mid.txt").write_text("mid")
    _old(a.folder)
    w = watched(a)
    w.cycle()
    f = a.folder
    steps = [
        ("edit", lambda: (f / "d0" / "f0.txt").write_text("edited")),
        ("new file", lambda: (f / "d1" / "n.txt").write_text("new")),
        ("delete file", lambda: (f / "d1" / "f1.txt").unlink()),
        ("rename in folder", lambda: (f / "d2" / "f0.txt").rename(f / "d2" / "g0.txt")),
        ("move across folders", lambda: (f / "d2" / "f1.txt").rename(f / "d3" / "moved.txt")),
        ("chmod file", lambda: (f / "d3" / "f2.txt").chmod(0o600)),
        ("chmod folder", lambda: (f / "d3").chmod(0o700)),
        ("new tree", lambda: [(f / "t" / "u" / "v").mkdir(parents=True), (f / "t" / "u" / "v" / "w.txt").write_text("w"),
                              (f / "t" / "top.txt").write_text("top")]),
        ("move tree", lambda: (f / "deep").rename(f / "d0" / "deep2")),
        ("delete tree", lambda: shutil.rmtree(f / "t")),
        ("folder becomes a file", lambda: [shutil.rmtree(f / "d1"), (f / "d1").write_text("now a file")]),
        ("file becomes a folder", lambda: [(f / "d3" / "f0.txt").unlink(), (f / "d3" / "f0.txt").mkdir(),
                                           (f / "d3" / "f0.txt" / "in.txt").write_text("in")]),
        ("replace a tree", lambda: [shutil.rmtree(f / "d0" / "deep2"), (f / "d0" / "deep2" / "er").mkdir(parents=True),
                                    (f / "d0" / "deep2" / "er" / "again.txt").write_text("again")]),
        ("move a tree out", lambda: (f / "d2").rename(cluster.base / "outside-d2")),
        ("move a tree in", lambda: (cluster.base / "outside-d2").rename(f / "back")),
        # one event for the tree moved out, none below it: its subfolders' rows must still go
        ("a tree moved out, its name reused", lambda: [(f / "d0").rename(cluster.base / "outside-d0"),
                                                       (f / "d0").mkdir(), (f / "d0" / "new.txt").write_text("new")]),
    ]
    for what, step in steps:
        step()
        w.checked_cycle(what)
    b.once()
    assert tree(b.folder) == tree(a.folder)


def test_hard_links_edited_through_another_name(cluster, watched):
    """A file with several names (hard links): an edit through one name reaches only the
    watch of that name's folder. Folders holding such files are walked every watched cycle,
    and a new name found by a watched walk makes the next scan a full one."""
    a = cluster.add("a")
    f = a.folder
    for d in ("x", "y", "z", "p"):
        (f / d).mkdir()
    (f / "p" / "q.txt").write_text("q")
    (f / "x" / "a.txt").write_text("one")
    os.link(f / "x" / "a.txt", f / "y" / "b.txt")
    (f / "z" / "c.txt").write_text("c")
    outside = cluster.base / "outside.txt"
    os.link(f / "z" / "c.txt", outside)
    _old(f)
    w = watched(a)
    w.cycle()

    def edit(path: Path, text: str) -> None:
        with open(path, "r+") as fh:  # in place: the same inode, so every name changes
            fh.write(text)
    steps = [
        ("edit through x/a.txt", lambda: edit(f / "x" / "a.txt", "two")),
        ("edit through y/b.txt", lambda: edit(f / "y" / "b.txt", "six")),
        ("edit through a name outside the folder", lambda: edit(outside, "C")),
        ("a new name", lambda: [(f / "n").mkdir(), os.link(f / "x" / "a.txt", f / "n" / "new.txt")]),
        ("edit through the new name", lambda: edit(f / "n" / "new.txt", "ten")),
        ("edit through the new name again", lambda: edit(f / "n" / "new.txt", "TEN")),
        # (a cycle in between: the oracle's full scan would find the new name's folders itself)
        ("a second name for a file that had one, a cycle, an edit through it",
         lambda: [os.link(f / "p" / "q.txt", f / "n" / "r.txt"), w.cycle(), edit(f / "n" / "r.txt", "Q")]),
    ]
    for what, step in steps:
        step()
        w.checked_cycle(what)


def test_a_folder_too_deep_for_inotify_makes_every_scan_full(cluster, watched):
    """inotify watches a folder by its whole path: watchdog skips one longer than PATH_MAX
    (ENAMETOOLONG) without a word, while the scan walks it by descriptor and syncs it."""
    a = cluster.add("a")
    fd = os.open(a.folder, os.O_RDONLY)
    for _ in range(20):  # 20 x 251 bytes: past PATH_MAX (4096), made one level at a time
        os.mkdir("n" * 250, dir_fd=fd)
        fd, up = os.open("n" * 250, os.O_RDONLY, dir_fd=fd), fd
        os.close(up)
    w = watched(a)
    w.cycle()
    try:
        out = os.open("x.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, b"deep")
        os.close(out)
    finally:
        os.close(fd)
    r = w.cycle()
    assert [what for what, _path in r.files] == ["sent"]
    assert not w.watcher.trusted
    again = w.full_cycle()
    assert (again.sent, again.deleted) == (0, 0)


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)])
def test_random_edits_watched_cycles_miss_nothing(cluster, watched, seed):
    """Random creates, edits, deletes, renames and moves of files and folders, several per
    cycle; after each cycle a full scan finds nothing left, and B ends equal to A."""
    rng = random.Random(seed)
    a, b = cluster.add("a"), cluster.add("b")
    w = watched(a)
    w.cycle()
    f = a.folder

    def dirs() -> list[Path]:
        return [f] + sorted(p for p in f.rglob("*") if p.is_dir() and ".escale" not in p.parts)

    def files() -> list[Path]:
        return sorted(p for p in f.rglob("*") if p.is_file() and ".escale" not in p.parts)

    for round_ in range(12):
        for _ in range(rng.randint(1, 6)):
            op = rng.choice(["new", "new", "edit", "mkdir", "rm", "mv", "mvdir", "rmtree"])
            ds, fs = dirs(), files()
            if op == "new" or (op in ("edit", "rm", "mv") and not fs):
                (rng.choice(ds) / f"n{rng.randrange(10**6)}.txt").write_text(str(rng.random()))
            elif op == "edit":
                rng.choice(fs).write_text(str(rng.random()))
            elif op == "mkdir":
                (rng.choice(ds) / f"D{rng.randrange(10**6)}").mkdir()
            elif op == "rm":
                rng.choice(fs).unlink()
            elif op == "mv":
                src = rng.choice(fs)
                src.rename(rng.choice(ds) / f"m{rng.randrange(10**6)}.txt")
            elif len(ds) > 1:
                src = rng.choice(ds[1:])
                if op == "rmtree":
                    shutil.rmtree(src)
                else:
                    target = rng.choice([d for d in ds if d != src and src not in d.parents])
                    src.rename(target / f"M{rng.randrange(10**6)}")
        w.checked_cycle(f"seed {seed} round {round_}")
    b.once()
    assert tree(b.folder) == tree(a.folder)


def test_a_change_the_push_did_not_publish_is_scanned_again(cluster, watched):
    """A push that did not publish everything (the relay full) hands its folders back:
    the next cycle scans them again instead of forgetting the change."""
    a = cluster.add("a", extra="quota = 1 KiB\n")
    w = watched(a)
    w.cycle()
    (a.folder / "sub").mkdir()
    (a.folder / "sub" / "big.bin").write_bytes(os.urandom(64 << 10))
    r = w.cycle()
    assert r.waiting_for_room
    assert "sub" in (w.watcher.pending() or set())  # handed back: the next cycle looks again


def test_full_scans_come_back_after_the_interval_and_after_lost_events(tmp_path):
    wake = threading.Event()
    every = FolderWatcher(tmp_path, wake, full_scan=0)
    hourly = FolderWatcher(tmp_path, wake, full_scan=3600)
    for w in (every, hourly):
        assert w.start()
    try:
        if not hourly.trusted:
            pytest.skip(f"{filesystem_type(tmp_path)} here: the watcher is not trusted, every scan is full")
        assert hourly.take() is None  # at start: a full scan
        hourly.finished(None, complete=True)
        assert hourly.take() == set()  # then what changed: nothing
        hourly.finished(set(), complete=True)
        (tmp_path / "x").write_text("x")
        assert wake.wait(10)
        settle(hourly)
        assert hourly.take() == {""}
        hourly.finished({""}, complete=False)  # not published: handed back
        assert hourly.take() == {""}
        hourly.finished({""}, complete=True)
        # watchdog says a kernel queue overflow only in its log: that is listened to
        logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; filesystem events "
                                                                  "were lost")
        assert hourly.take() is None
        hourly.finished(None, complete=True)
        assert hourly.take() == set()
        hourly._last_full -= 3601  # an hour later: a full scan again
        assert hourly.take() is None
        every.take()
        every.finished(None, complete=True)
        assert every.take() is None  # full scan = 0: every cycle
    finally:
        every.stop()
        hourly.stop()


def _watching(root: Path, wake: threading.Event) -> FolderWatcher:
    """A started, trusted watcher whose start-up full scan is done (skip where untrusted)."""
    w = FolderWatcher(root, wake)
    assert w.start()
    if not w.trusted:
        w.stop()
        pytest.skip("the watcher is not trusted here")
    w.take()
    w.finished(None, complete=True)
    return w


def test_a_replaced_synced_folder_is_watched_again(tmp_path):
    root = tmp_path / "sync"
    root.mkdir()
    wake = threading.Event()
    w = _watching(root, wake)
    try:
        root.rename(tmp_path / "old")
        root.mkdir()
        assert w.take() is None  # not the folder it watched: a full scan, and a new watch
        w.finished(None, complete=True)
        (root / "y").write_text("y")
        assert wake.wait(10)
        settle(w)
        assert w.take() == {""}
    finally:
        w.stop()


_NO_ROOM = """
import sys, threading, time
from pathlib import Path
from escale.watch import FolderWatcher

limit = Path("/proc/sys/user/max_inotify_watches")  # this user namespace's own
limit.write_text("4")
root = Path(sys.argv[1])
deep = root.joinpath(*(f"d{i}" for i in range(8)))
deep.mkdir(parents=True)
wake = threading.Event()
w = FolderWatcher(root, wake)
assert w.start() and w.trusted
w.finished(w.take(), complete=True)
(deep / "x.txt").write_text("x")
time.sleep(1)
assert w.take() is None, "a folder without a watch: not every change was seen"
w.finished(None, complete=True)
limit.write_text("1000")
assert w.take() is None  # room again: watched anew, and this take is its full scan
w.finished(None, complete=True)
wake.clear()
(deep / "y.txt").write_text("y")
assert wake.wait(10)
time.sleep(0.6)
taken = w.take()
assert taken == {deep.relative_to(root).as_posix()}, taken
w.stop()
print("ok")
"""


def test_folders_inotify_had_no_room_to_watch(tmp_path):
    """watchdog skips a subfolder whose watch it cannot add (fs.inotify.max_user_watches
    reached: a large tree, or other programs' watches), without a word; the watcher must
    then not answer "nothing changed". The limit is lowered in a user namespace of the
    test's own (unshare -U), not for the machine."""
    import subprocess
    import sys

    if subprocess.run(["unshare", "-U", "-r", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a user namespace here (unshare -U)")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    p = subprocess.run(["unshare", "-U", "-r", sys.executable, "-c", _NO_ROOM, str(tmp_path / "sync")],
                       capture_output=True, text=True, env=env, timeout=120)
    if "w.trusted" in p.stderr:
        pytest.skip(f"{filesystem_type(tmp_path)} here: the watcher is not trusted, every scan is full")
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


_UNREADABLE = """
import sys, time
from pathlib import Path
from escale.config import load_config
from escale.manager import Manager
from escale.watch import FolderWatcher

def quiet():  # the watcher has noted everything (a fixed wait: nothing is asserted on it)
    time.sleep(1.2)

m = Manager.from_config(load_config(sys.argv[1]).repositories["repo"])
m.open()
m.connect()
u = m.folder.root / "u"
w = FolderWatcher(m.folder.root, m.wake)
assert w.start()
if not w.trusted:
    print("untrusted")
    sys.exit(0)
m.pusher.scanner.watcher = w
assert m.cycle().errors  # u cannot be read: neither sent nor deleted
u.chmod(0o755)
quiet()
r = m.cycle()
assert ("sent", "u/in/x.txt") in r.files, r.files
(u / "in" / "x.txt").write_text("edited")
(u / "y.txt").write_text("new")
quiet()
m.cycle()
m.pusher.scanner.watcher = None
r = m.cycle()  # the oracle: a full scan finds nothing left
print(r.sent, r.deleted, r.files)
w.stop()
m.close()
"""


def test_a_folder_unreadable_when_watched_is_watched_once_readable(cluster):
    """inotify needs read access to watch a folder: watchdog skips one it cannot read,
    without a word. Once the scan reads it (its mode fixed), it must be watched, or later
    changes in it reach no event. Root reads everything: the daemon runs as root without
    its capabilities (setpriv), so the folder's mode counts."""
    import shutil
    import subprocess
    import sys

    a = cluster.add("a")
    (a.folder / "u" / "in").mkdir(parents=True)
    (a.folder / "u" / "in" / "x.txt").write_text("x")
    (a.folder / "u").chmod(0o000)
    cmd = [sys.executable, "-c", _UNREADABLE, str(a.conf)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: every folder is readable")
        cmd = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *cmd]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=cluster.env, timeout=120)
    finally:
        (a.folder / "u").chmod(0o755)
    if p.stdout.strip() == "untrusted":
        pytest.skip(f"{filesystem_type(a.folder)} here: the watcher is not trusted, every scan is full")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("0 0 "), f"the watched cycle missed changes in the folder once unreadable: {p.stdout}"


def test_only_local_file_systems_are_trusted(tmp_path):
    mounts = tmp_path / "mountinfo"
    mounts.write_text(
        "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
        "40 22 0:40 / /mnt/nas rw,relatime shared:2 - nfs4 server:/export rw\n"
        "41 22 0:41 / /mnt/my\\040drive rw - fuse.sshfs host: rw\n")
    assert filesystem_type(Path("/home/u/sync"), str(mounts)) == "ext4"
    assert filesystem_type(Path("/mnt/nas/sync"), str(mounts)) == "nfs4"
    assert filesystem_type(Path("/mnt/my drive/x"), str(mounts)) == "fuse.sshfs"
    assert filesystem_type(Path("/mnt/nasty"), str(mounts)) == "ext4"  # a prefix of a name is not the mount


def test_a_file_system_mounted_inside_the_folder_makes_every_scan_full(cluster, watched):
    """A mount point inside the synced folder (a NAS share, a USB disk): inotify does not see
    what changes there through another path or machine, so the watcher is not trusted."""
    import subprocess

    a = cluster.add("a")
    (a.folder / "share").mkdir()
    (a.folder / "plain").mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "escale-test", str(a.folder / "share")],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (a.folder / "share" / "x.txt").write_text("x")
        w = watched(a)
        w.cycle()
        assert not w.watcher.trusted
        w.cycle()
        assert w.m.pusher.scanner.walked == 3  # the top, plain and share: every cycle scans it all
    finally:
        subprocess.run(["umount", "-l", str(a.folder / "share")], capture_output=True)


@pytest.mark.parametrize("text, seconds", [("600", 600.0), ("0", 0.0), ("always", 0.0), ("yes", 3600.0)])
def test_the_full_scan_option(tmp_path, text, seconds):
    conf = tmp_path / "c.conf"
    conf.write_text(f"[r]\nlocal path = {tmp_path / 'f'}\nrelay address = {tmp_path / 'relay'}\nencryption = off\n"
                    f"rescan = {text}\n")
    assert load_config(conf).repositories["r"].full_scan == seconds


@pytest.mark.parametrize("text", ["off", "never", "-5", "soon"])
def test_full_scans_cannot_be_turned_off(tmp_path, text):
    from escale.errors import ConfigError

    conf = tmp_path / "c.conf"
    conf.write_text(f"[r]\nlocal path = {tmp_path / 'f'}\nrelay address = {tmp_path / 'relay'}\nencryption = off\n"
                    f"full scan = {text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    assert "[r]" in str(info.value) and "'full scan'" in str(info.value)
    if text in ("off", "never"):
        assert "cannot be turned off" in str(info.value)


def test_a_folder_deleted_earlier_and_made_again_is_new(cluster, watched):
    """A deleted folder leaves deletion rows in the base; they do not make it 'known', so a
    watched walk enters it when it comes back (its own event may come after the walk)."""
    a = cluster.add("a")
    (a.folder / "x" / "y").mkdir(parents=True)
    (a.folder / "x" / "y" / "f.txt").write_text("f")
    w = watched(a)
    w.cycle()
    state = w.m.ctx.state
    assert state.knows_folder("x") and state.knows_folder("x/y")
    shutil.rmtree(a.folder / "x")
    assert w.cycle().deleted == 3  # the file and its two folders
    assert state.base_entry("x/y/f.txt") is not None  # a deletion row stays in the base
    assert not state.knows_folder("x") and not state.knows_folder("x/y")


def test_a_watcher_whose_observer_stopped_watches_again(tmp_path):
    """The observer thread ended (watchdog stops it on some errors): that take is a full scan
    and the folder is watched anew, instead of full scans from then on."""
    wake = threading.Event()
    w = _watching(tmp_path, wake)
    try:
        w._observer.stop()
        w._observer.join(5)
        assert w.take() is None
        w.finished(None, complete=True)
        (tmp_path / "z").write_text("z")
        assert wake.wait(10)
        settle(w)
        assert w.take() == {""}
    finally:
        w.stop()
