"""Local attacks on the synced folder and on a file:// relay (issue 9, points 4, 5 and 12).

A local user who can write into the synced folder (or the relay folder) swaps files and
folders for symbolic links while escale works; escale must never read a file outside the
folder, never write outside it, and never follow a link inside the relay. Names that a
case-insensitive or normalising file system takes for escale's own folder, or for another
file, are refused by name.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path

import pytest

from cluster import Result

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- the victim's key, 64 bytes!\n"
assert len(SECRET) == 64

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> None:
    """Swap two names atomically (Linux renameat2 RENAME_EXCHANGE): a folder <-> a link."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


def files_holding(top: Path, data: bytes) -> list[str]:
    found = []
    for dirpath, _dirs, names in os.walk(top):
        for n in names:
            p = Path(dirpath) / n
            if not p.is_symlink() and p.read_bytes() == data:
                found.append(str(p.relative_to(top)))
    return found


def has_open(pid: int, path: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


# --------------------------------------------------------------------------- point 4: push

def test_push_never_sends_a_file_swapped_for_a_symlink_while_hashing(cluster, tmp_path):
    """Right after the scan, a local user swaps a file for a link to a secret and a folder for
    a link to a folder holding one; the pusher must send neither secret."""
    outside = tmp_path / "victim"
    (outside / "ssh").mkdir(parents=True)
    secret = outside / "ssh" / "id_ed25519"
    secret.write_bytes(SECRET)
    (outside / "ssh" / "target").write_bytes(SECRET)
    a, b = cluster.add("A"), cluster.add("B")
    cluster.round("B", "A", "B")
    big = a.write("big.bin", os.urandom(48 << 20))  # hashed first: the swap happens meanwhile
    a.write("sub1/target", b"x" * 64)  # same size as the secret, as an attacker would make it
    a.write("sub2/target", b"y" * 64)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    proc = a.start("--once")
    try:
        deadline = time.monotonic() + 60
        while not has_open(proc.pid, big) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert proc.poll() is None, "the push ended before it hashed big.bin"
        link = a.path("sub1/.link")
        os.symlink(secret, link)
        os.replace(link, a.path("sub1/target"))  # the file becomes a link to the secret
        os.symlink(outside / "ssh", a.path(".sub2-link"))
        exchange(a.path(".sub2-link"), a.path("sub2"))  # the folder becomes a link
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 1), err
    r = b.once(check=False)
    assert r.code in (0, 1), r
    assert files_holding(b.folder, SECRET) == [], "a private file outside A's folder reached B"
    assert (b.folder / "big.bin").stat().st_size == 48 << 20  # the rest synced


# --------------------------------------------------------------------------- point 4: pull

def test_pull_never_writes_outside_when_a_folder_flips_to_a_symlink(cluster, tmp_path):
    """While B pulls 1,000 files into sub/, a local user keeps swapping B's sub/ with a link
    to a folder outside; nothing may land there, and what cannot be written is reported."""
    a, b = cluster.add("A"), cluster.add("B")
    a.write("sub/seed", "seed")
    cluster.round("B", "A", "B")
    n = 1000  # the old code wrote about 1 in 200 of them outside
    for i in range(n):
        a.write(f"sub/f{i:04d}", f"file {i}\n" * 8)
    a.once()
    outside = tmp_path / "outside"
    outside.mkdir()
    link = b.path(".sub-link")
    os.symlink(outside, link)
    stop = threading.Event()
    flips = [0]

    def flipper() -> None:
        while not stop.is_set():
            exchange(link, b.path("sub"))  # sub is now the link
            time.sleep(0.0002)
            exchange(link, b.path("sub"))  # and the folder again
            flips[0] += 1
            time.sleep(0.0001)

    t = threading.Thread(target=flipper, daemon=True)
    t.start()
    try:
        r = b.once(check=False)
    finally:
        stop.set()
        t.join(5)
    assert flips[0] > 10
    assert os.listdir(outside) == [], f"received files written outside B's folder: {sorted(os.listdir(outside))[:5]}"
    assert r.code in (0, 1), r
    assert not b.path("sub").is_symlink()
    assert files_holding(b.folder, b"seed") == ["sub/seed"]
    got = [p for p in b.path("sub").iterdir() if p.name != "seed"]
    assert all(p.read_bytes() == a.path(f"sub/{p.name}").read_bytes() for p in got)
    missing = {f"f{i:04d}" for i in range(n)} - {p.name for p in got}
    assert all(f"sub/{name}" in r.err for name in missing), r.err[-2000:]  # each reported by name


# --------------------------------------------------------------------------- point 5: relay

def _relay_attack(cluster, tmp_path, which: str) -> tuple[Path, bytes, Result]:
    a, b = cluster.add("A"), cluster.add("B")
    a.write("one.txt", "one")
    cluster.round("B", "A", "B")
    relay = cluster.relay
    acks = sorted(p.name for p in (relay / "a").iterdir())
    updates = sorted(p.name for p in (relay / "u").iterdir())
    victim = tmp_path / f"victim-{which}"
    victim.mkdir()
    if which == "a":  # B's next acknowledgement would land in the victim's folder
        target = victim / acks[0]
        moved = relay / "a"
    else:  # A's next update would
        cid = updates[0]
        seqs = [int(p.name) for p in (relay / "u" / cid).iterdir()] or [1]
        target = victim / str(max(seqs) + 1)
        for s in range(1, max(seqs) + 3):
            (victim / str(s)).write_bytes(b"user data %d\n" % s)
        moved = relay / "u" / cid
    before = b"the user's own file\n"
    target.write_bytes(before)
    for p in list(moved.iterdir()):
        if p.is_file():
            os.replace(p, victim / p.name) if not (victim / p.name).exists() else p.unlink()
    moved.rmdir()
    os.symlink(victim, moved)
    a.write("two.txt", "two")
    return target, before, (a.once(check=False) if which == "u" else (a.once(check=False), b.once(check=False))[1])


@pytest.mark.parametrize("which", ["a", "u"])
def test_symlink_inside_file_relay_is_a_relay_error(cluster, tmp_path, which):
    """a/ or u/<cid>/ replaced by a link to a user's folder: escale never writes through it
    and stops with a relay error (exit 2) naming the link."""
    target, before, r = _relay_attack(cluster, tmp_path, which)
    assert target.read_bytes() == before, "escale wrote a relay object through a link in the relay"
    assert r.code == 2, r
    assert "symbolic link" in r.err and (f"{which}/" in r.err or f" {which} " in r.err), r


def test_relay_backend_refuses_links_everywhere(tmp_path):
    from escale.errors import RelayError
    from escale.relay import LocalMount

    relay_dir, elsewhere = tmp_path / "relay", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x").write_bytes(b"private")
    relay = LocalMount(f"file://{relay_dir}")
    relay.open()
    import io
    relay.put("m/abc", io.BytesIO(b"card"))
    os.symlink(elsewhere, relay_dir / "q")
    os.symlink(elsewhere / "x", relay_dir / "m" / "def")
    for op in (lambda: list(relay.list()), lambda: relay.get("q/x"), lambda: relay.get("m/def"),
               lambda: relay.stat("m/def"), lambda: relay.put("q/y", io.BytesIO(b"z")),
               lambda: relay.put("q/x", io.BytesIO(b"z")), lambda: relay.delete("q/x"),
               lambda: relay.delete("m/def"), lambda: relay.abort_incomplete("q/")):
        with pytest.raises(RelayError, match="symbolic link"):
            op()
    assert os.listdir(elsewhere) == ["x"] and (elsewhere / "x").read_bytes() == b"private"
    assert (relay_dir / "m" / "def").is_symlink()


# --------------------------------------------------------------------------- point 12: names

@pytest.mark.parametrize("name", [".ESCALE/x", ".Escale/state.sqlite", ".escale./x", ".escale ./x", ".escale::$DATA",
                                  ".escale:stream/x", "ESCALE~1/x", ".esc\u200cale/x", ".\ufeffescale/x",
                                  ".escale\u200d/x", ".ESCAle.../x", ".\u0045SCALE/x"])
def test_every_spelling_of_escales_folder_is_refused(tmp_path, name):
    from escale.access import safe_join
    from escale.errors import UnsafePath

    with pytest.raises(UnsafePath, match="own .escale"):
        safe_join(tmp_path, name)


@pytest.mark.parametrize("name", ["escale/x", ".escaler/x", "a/.escale/x", "x.escale", "ESCALE~1x"])
def test_names_near_escales_folder_are_allowed(tmp_path, name):
    from escale.access import safe_join

    assert safe_join(tmp_path, name) == tmp_path / name


def _rules(monkeypatch, **kw):
    from escale.fsnames import FsRules

    monkeypatch.setattr(FsRules, "probe", classmethod(lambda cls, fd: FsRules(**kw)))


def test_case_twins_are_reported_and_never_overwrite_each_other(cluster, monkeypatch):
    """On a case-insensitive receiver, Notes.txt and notes.txt are one file: the second to
    arrive is refused by name; neither is overwritten, and the rest syncs."""
    a, b = cluster.add("A"), cluster.add("B")
    cluster.round("B")
    a.write("notes.txt", "lower case, written first")
    a.write("Dir/inner.txt", "in Dir")
    a.once()
    from escale.manager import Manager
    from escale.relay import LocalMount

    _rules(monkeypatch, case_insensitive=True)
    state = next(b.state.rglob("state.sqlite")).parent

    def pull():
        m = Manager(LocalMount, repository=str(b.folder), address=cluster.relay_address, name="repo",
                    clientname="B", state_dir=state, encryption="off")
        return m.run(once=True)

    pull()
    assert b.path("notes.txt").read_text() == "lower case, written first"
    a.write("Notes.txt", "upper case twin")
    a.write("dir/other.txt", "in dir, a twin of Dir")
    a.write("fine.txt", "no twin")
    a.once()
    report = pull()
    text = "\n".join(report.errors)
    assert "'Notes.txt' and 'notes.txt'" in text and "dir/other.txt: 'dir' and 'Dir'" in text, text
    assert b.path("notes.txt").read_text() == "lower case, written first"
    assert not b.path("Notes.txt").exists() and not b.path("dir").exists()
    assert b.path("fine.txt").read_text() == "no twin"


def test_nfc_nfd_twins_on_a_normalising_file_system(tmp_path):
    from escale.fsnames import FsRules, NameTwin
    from escale.folder import Folder
    from escale.index import FILE, Entry
    import hashlib
    import io

    folder = Folder(tmp_path, "sha256", lambda f, p, st: hashlib.sha256(f.read()).hexdigest(),
                    rules=FsRules(normalising=True))
    data = b"composed"
    e = Entry("caf\u00e9.txt", FILE, hashlib.sha256(data).hexdigest(), len(data), 10**18, 0o644)
    folder.fetch(e.path, e, io.BytesIO(data), None)
    twin = Entry("cafe\u0301.txt", FILE, hashlib.sha256(b"decomposed").hexdigest(), 10, 10**18, 0o644)
    with pytest.raises(NameTwin, match="are one name"):
        folder.fetch(twin.path, twin, io.BytesIO(b"decomposed"), None)
    assert os.listdir(tmp_path) == ["caf\u00e9.txt"]
    assert (tmp_path / "caf\u00e9.txt").read_bytes() == data


def test_probe_reads_this_file_system(tmp_path):
    from escale.folder import Folder

    folder = Folder(tmp_path, "sha256", lambda f, p, st: "")
    assert folder.rules.exact  # Linux ext4/tmpfs/xfs: names compared byte for byte
    assert os.listdir(tmp_path / ".escale") == []  # the probe cleaned up
