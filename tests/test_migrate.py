"""escalectl migrate through the real CLI: the repository moves, the clients follow."""
import os
import subprocess
import sys
import time

import pytest

from cluster import Cluster
from test_backup import ctl


@pytest.fixture
def secret_cluster(tmp_path):
    secret = tmp_path / "passphrase"
    secret.write_text("migrate test passphrase\n")
    secret.chmod(0o600)
    return Cluster(tmp_path, relay_conf=f"passphrase = {secret}\n")


def objects(folder):
    out = {}
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, folder)] = os.path.getsize(p)
    return out


def test_migrate_file_to_file_clients_follow(secret_cluster, tmp_path):
    cluster = secret_cluster
    a, b, c = cluster.add("a"), cluster.add("b"), cluster.add("c")
    cluster.round()
    a.write("small.txt", "hello")
    a.write("big.bin", os.urandom((4 << 20) + 100))
    a.once()  # b and c have not pulled: the update and its large file are in transit
    before = cluster.relay_objects()
    new = tmp_path / "new-relay"
    new.mkdir()

    code, out, err = ctl(a, "migrate", "--dry-run", f"file://{new}")
    assert code == 0, err
    assert f"would copy {len(before)} object(s)" in out and objects(new) == {}

    code, out, err = ctl(a, "migrate", f"file://{new}")
    assert code == 0, (out, err)
    assert f"{len(before) - 1} object(s) copied" in out  # and the header
    me = next(n.split("/")[1] for n in before if n.startswith("u/"))
    assert objects(new) == before  # every object as it was, byte counts equal
    assert list(cluster.relay_objects()) == [f"n/{me}"]  # the old relay keeps only the notice
    conf = a.conf.read_text()
    assert f"relay address = file://{new}\n" in conf and conf.startswith("# test client a\n")

    # the others read the notice, reach the new relay with their configuration, and follow
    r = b.once()
    assert "moved to" in r.err and b.path("big.bin").read_bytes() == a.path("big.bin").read_bytes()
    assert f"relay address = file://{new}" in b.conf.read_text()
    c.once()
    a.once()
    c.write("from-c.txt", "c")
    for _ in range(2):
        for client in (a, b, c):
            client.once()
    assert a.tree() == b.tree() == c.tree() and a.path("from-c.txt").read_text() == "c"
    assert list(cluster.relay_objects()) == [f"n/{me}"]  # nothing written on the old relay
    code, out, err = ctl(a, "check", "--read-data")
    assert code == 0 and "no problem found" in out, (out, err)


def _wait(predicate, timeout=120, what=""):
    from cluster import wait_for

    assert wait_for(predicate, timeout=timeout, interval=0.5), f"timed out waiting for {what}"


def _stop(procs):
    import signal

    outs = {}
    for name, p in procs.items():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for name, p in procs.items():
        try:
            out, err = p.communicate(timeout=60)
        except Exception:
            p.kill()
            out, err = p.communicate()
        outs[name] = err
    return outs


def test_three_daemons_follow_file_to_webdav_to_s3(tmp_path, relay_webdav_wsgidav, relay_s3_moto):
    """While three clients run as daemons, one moves the repository from a folder to
    WebDAV, then to S3. A client without the WebDAV credentials stops syncing with a
    message saying what to change, and resumes once its configuration is edited."""
    from escale.config import set_option
    from escale.relay import S3, WebDAV

    secret = tmp_path / "passphrase"
    secret.write_text("migrate test passphrase\n")
    secret.chmod(0o600)
    cluster = Cluster(tmp_path, relay_conf=f"passphrase = {secret}\n")
    dav_address, dav_conf, dav_kwargs = relay_webdav_wsgidav.new()
    s3_address, _s3_conf, s3_kwargs = relay_s3_moto.new()
    s3_kwargs = dict(s3_kwargs, user=dav_kwargs["user"], password=dav_kwargs["password"])  # moto takes any key
    endpoint = f"endpoint = {relay_s3_moto.endpoint}\n"  # for when the relay is on S3
    a = cluster.add("a", extra=dav_conf + endpoint)
    b = cluster.add("b", extra=dav_conf + endpoint)
    c = cluster.add("c", extra=endpoint)  # no WebDAV credentials
    cluster.round()
    for i in range(5):
        a.write(f"a/{i}.txt", f"a{i}")
        b.write(f"b/{i}.txt", f"b{i}")
    a.write("a/big.bin", os.urandom((4 << 20) + 10))
    procs = {n: cl.start() for n, cl in cluster.clients.items()}
    try:
        _wait(lambda: a.tree() == b.tree() == c.tree() and "a/big.bin" in c.tree(), what="first convergence")
        migrate = subprocess.Popen([sys.executable, "-m", "escale.cli.ctl", "-c", str(a.conf), "migrate", dav_address],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env)
        for i in range(5):  # the clients keep working during the copy
            b.write(f"during/b{i}.txt", f"b{i}")
            c.write(f"during/c{i}.txt", f"c{i}")
            time.sleep(0.3)
        out, err = migrate.communicate(timeout=300)
        assert migrate.returncode == 0, (out, err)
        _wait(lambda: dav_address in a.conf.read_text() and dav_address in b.conf.read_text(), what="a, b follow")
        _wait(lambda: a.tree() == b.tree() and "during/b4.txt" in a.tree(), what="a and b converge on WebDAV")
        assert f"relay address = file://" in c.conf.read_text()  # c cannot follow: it stays put
        time.sleep(3)
        assert procs["c"].poll() is None  # the daemon waits (its other repositories would sync on)
        # its configuration gets the credentials: it follows without a restart
        set_option(c.conf, "repo", "user", dav_kwargs["user"])
        set_option(c.conf, "repo", "password", dav_kwargs["password"])
        _wait(lambda: dav_address in c.conf.read_text(), what="c follows once its configuration is edited")
        _wait(lambda: a.tree() == b.tree() == c.tree() and "during/c4.txt" in a.tree(), what="all converge")
        notices = cluster.relay_objects()
        assert list(notices) == [n for n in notices if n.startswith("n/")] and len(notices) == 1, notices

        # WebDAV -> S3 (the same credentials work there)
        code, out, err = ctl(a, "migrate", s3_address)
        assert code == 0, (out, err)
        for cl in (a, b, c):
            _wait(lambda cl=cl: s3_address in cl.conf.read_text(), what=f"{cl.name} follows to S3")
        c.write("on-s3.txt", "s3")
        _wait(lambda: a.tree() == b.tree() == c.tree() and "on-s3.txt" in b.tree(), what="all converge on S3")
        tree = a.tree()
        assert not [p for p in tree if "conflict" in p], tree  # nothing applied twice
        assert all(f"during/{w}{i}.txt" in tree for w in "bc" for i in range(5)), tree  # nothing lost
        dav = WebDAV(dav_address, **dav_kwargs)
        with dav:
            assert [i.name for i in dav.list()] == list(notices)  # the notice only
        s3 = S3(s3_address, **s3_kwargs)
        with s3:
            names = {i.name for i in s3.list()}
        assert "escale.json" in names and not any(n.startswith("n/") for n in names)
    finally:
        errs = _stop(procs)
    assert "the repository moved to " + dav_address in errs["c"] and "Set 'relay address = " in errs["c"], errs["c"][-3000:]
    code, out, err = ctl(b, "check", "--read-data")
    assert code == 0 and "no problem found" in out, (out, err)


@pytest.mark.parametrize("kind", ["file", "webdav"])
def test_kill_9_during_migrate_then_again(secret_cluster, tmp_path, kind, request):
    from cluster import kill9, temp_files, wait_for
    from escale.relay import WebDAV

    cluster = secret_cluster
    if kind == "webdav":
        address, dav_conf, kwargs = request.getfixturevalue("relay_webdav_wsgidav").new()
        extra = dav_conf

        def objects_at(_new):
            with WebDAV(address, **kwargs) as dav:
                return {i.name: i.size for i in dav.list()}
    else:
        new = tmp_path / "new-relay"
        new.mkdir()
        address, extra, objects_at = f"file://{new}", "", objects
    a, b = cluster.add("a", extra=extra), cluster.add("b", extra=extra)
    cluster.round()
    for i in range(12):
        a.write(f"big{i}.bin", os.urandom((4 << 20) + i))
    a.once()
    before = cluster.relay_objects()
    new = tmp_path / "new-relay"
    journal = []

    def copying():
        journal[:] = list(cluster.base.glob("state-a/**/migrate-*.jsonl"))
        return bool(journal) and len(journal[0].read_text().splitlines()) >= 3

    proc = subprocess.Popen([sys.executable, "-m", "escale.cli.ctl", "-c", str(a.conf), "migrate", address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env)
    assert wait_for(lambda: proc.poll() is not None or copying(), timeout=120, interval=0.01)
    kill9(proc)
    partial = objects_at(new)
    assert 0 < len(partial) < len(before) and "escale.json" not in partial, partial
    assert cluster.relay_objects() == before  # nothing changed on the old relay yet

    code, out, err = ctl(a, "migrate", address)
    assert code == 0, (out, err)
    assert objects_at(new) == before  # nothing missing, nothing twice
    if kind == "file":
        assert not temp_files(new)  # no leftover of the interrupted upload
    assert list(cluster.relay_objects()) == [n for n in cluster.relay_objects() if n.startswith("n/")]
    b.once()
    assert b.tree() == a.tree()


def test_a_forged_notice_redirects_nobody(cluster, tmp_path):
    """A notice must be signed by a member this client pinned: one signed by another key
    under a member's name, or by an id nobody knows, is reported by name and ignored."""
    import json as _json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from escale.encryption import Plain
    from escale.protocol import Notice, ObjectStore
    from escale.relay import LocalMount

    a, b = cluster.add("a"), cluster.add("b")
    cluster.round(rounds=2)
    b_id = next(n.split("/")[1] for n in cluster.relay_objects() if n.startswith("m/") and
                _json.loads((cluster.relay / n).read_bytes()[9:].split(b"}")[0] + b"}")["name"] == "b")
    repo_id = _json.loads((cluster.relay / "escale.json").read_text())["id"]
    evil = tmp_path / "evil-relay"
    evil.mkdir()
    relay = LocalMount(f"file://{cluster.relay}")
    with relay:
        store = ObjectStore(relay, Plain(), Ed25519PrivateKey.generate(), repository=repo_id)
        notice = Notice(f"file://{evil}", time.time(), repo_id).to_dict()
        store.put_json(f"n/{b_id}", notice)  # b's name, another key
        store.put_json("n/00000000000000aa", notice)  # an id nobody met
    r = a.once(check=False)
    assert r.code == 1, r
    assert f"relay object n/{b_id}: bad signature" in r.err, r.err
    assert "relay object n/00000000000000aa: a relay-move notice of a client this client never met" in r.err
    assert f"relay address = file://{cluster.relay}" in a.conf.read_text() and objects(evil) == {}
    b.write("still.txt", "here")
    b.once(check=False)
    a.once(check=False)
    assert a.path("still.txt").read_text() == "here"


def test_destination_quota_and_dry_run(secret_cluster, tmp_path):
    cluster = secret_cluster
    a = cluster.add("a")
    a.write("big.bin", os.urandom(200_000))
    a.once()
    small = tmp_path / "small-relay"
    small.mkdir()
    with open(a.conf, "a") as f:  # another section names the destination, with a quota
        f.write(f"\n[small]\nlocal path = {tmp_path / 'other'}\nrelay address = file://{small}\n"
                f"disk quota = 100KB\nencryption = off\n")
    (tmp_path / "other").mkdir()
    code, out, err = ctl(a, "migrate", "-r", "repo", "small")
    assert code == 1 and "more than the 'disk quota'" in err and objects(small) == {}, (out, err)
    code, out, err = ctl(a, "migrate", "-r", "repo", "--dry-run", "small")
    assert code == 0 and "would copy" in out and "u/" in out and objects(small) == {}


def test_a_second_migration_of_the_same_repository_is_refused(secret_cluster, tmp_path):
    """Two `escalectl migrate` of one repository on one machine at once shared one journal and
    would each write a notice: the second is refused (exit 4) while the first holds the lock,
    and nothing is copied by it."""
    import fcntl

    cluster = secret_cluster
    a = cluster.add("a")
    a.write("f.txt", "x")
    a.once()
    state_dir = next(p.parent for p in a.state.rglob("state.sqlite"))
    new = tmp_path / "new-relay"
    new.mkdir()
    fd = os.open(state_dir / "migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a migration in progress
        code, out, err = ctl(a, "migrate", f"file://{new}")
        assert code == 4, (code, out, err)
        assert "already being migrated" in err and "repo" in err
        assert objects(new) == {}
    finally:
        os.close(fd)
    code, out, err = ctl(a, "migrate", f"file://{new}")  # once the first is done, it runs
    assert code == 0, (out, err)
    assert "object(s) copied" in out


def test_two_machines_migrating_at_once(secret_cluster, tmp_path):
    """a and b migrate one repository at once, each to a relay of its own; b finishes
    (notice written, old relay cleared) while a is copying. a stops — nothing removed,
    its configuration unchanged — and follows b's move at its next cycle, as c does.
    Before, a went on: its listing showed every object gone ("collected meanwhile"), it
    wrote its notice, the newest, so c followed it to a relay holding the header alone,
    while b stayed on its own: the repository split."""
    from escale.config import load_config
    from escale.config.relocate import destination_for, open_relay
    from escale.manager import Manager
    from escale.migrate import MovedMeanwhile, migrate

    cluster = secret_cluster
    a, b, c = cluster.add("a"), cluster.add("b"), cluster.add("c")
    cluster.round()
    for i in range(4):
        a.write(f"f{i}.txt", f"file {i}")
    a.write("big.bin", os.urandom((2 << 20) + 5))
    cluster.round()
    new_a, new_b = tmp_path / "new-a", tmp_path / "new-b"
    new_a.mkdir()
    new_b.mkdir()
    copies: list[str] = []

    def b_migrates_meanwhile() -> None:
        copies.append("one more")
        if len(copies) == 2:  # a has copied one object
            code, out, err = ctl(b, "migrate", f"file://{new_b}")
            assert code == 0, (out, err)

    cfg = load_config(str(a.conf))
    (repo,) = cfg.repositories.values()
    dest = destination_for(repo, f"file://{new_a}", cfg)
    manager = Manager.from_config(repo)
    try:
        with pytest.raises(MovedMeanwhile, match=f"moved this repository to file://{new_b}"):
            migrate(manager, open_relay(dest.config), stop=b_migrates_meanwhile)
    finally:
        manager.close()
    assert len(copies) >= 2 and f"file://{new_a}" not in a.conf.read_text()
    assert all(n.startswith("n/") for n in cluster.relay_objects()) and len(cluster.relay_objects()) == 1
    for client in (c, a, b, c, a, b):
        client.once()
    for client in (a, b, c):
        assert f"relay address = file://{new_b}\n" in client.conf.read_text(), client.conf.read_text()
    assert a.tree() == b.tree() == c.tree() and a.path("big.bin").stat().st_size == (2 << 20) + 5
    a.write("after.txt", "after")
    for client in (a, b, c):
        client.once()
    assert c.path("after.txt").read_text() == "after"


def test_a_migration_that_sees_a_rival_notice_after_its_own_names_the_rival_relay(secret_cluster, tmp_path):
    """The last look, just after writing its notice (escale/migrate._yield_to_a_rival): a
    member that finds another's notice there too rewrites its own to name the other's
    relay and stops, so every notice names one relay whichever is newest; then it follows."""
    from escale.config import load_config
    from escale.manager import Manager
    from escale.migrate import MovedMeanwhile, _yield_to_a_rival
    from escale.protocol import Notice, notice_name, parse_notice

    cluster = secret_cluster
    a, b = cluster.add("a"), cluster.add("b")
    cluster.round()
    a.write("f.txt", "from a")
    cluster.round()
    new_a, new_b = tmp_path / "new-a", tmp_path / "new-b"
    new_a.mkdir()
    new_b.mkdir()
    (repo,) = load_config(str(a.conf)).repositories.values()
    manager = Manager.from_config(repo)
    try:
        with manager.inspecting():  # a, about to write its notice, when b's migration ends
            code, out, err = ctl(b, "migrate", f"file://{new_b}")
            assert code == 0, (out, err)
            # a's own notice, written just before its last look (a later time: the newest)
            manager.store.put_json(notice_name(manager.me),
                                   Notice(f"file://{new_a}", time.time() + 60, manager.repository_id).to_dict())
            with pytest.raises(MovedMeanwhile, match=f"moved this repository to file://{new_b}"):
                _yield_to_a_rival(manager, f"file://{new_a}")
            mine = parse_notice(notice_name(manager.me), manager.store.get_json(notice_name(manager.me)),
                                manager.repository_id)
            assert mine.relay == f"file://{new_b}"
    finally:
        manager.close()
    a.once()
    assert f"relay address = file://{new_b}\n" in a.conf.read_text()
    a.write("g.txt", "after")
    a.once()
    b.once()
    assert b.path("g.txt").read_text() == "after"
