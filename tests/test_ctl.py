"""escalectl through the real CLI: flags set there change what the daemon does."""
import subprocess
import sys


def ctl(client, *args):
    p = subprocess.run([sys.executable, "-m", "escale.cli.ctl", "-c", str(client.conf), *args],
                       capture_output=True, text=True, env=client.cluster.env)
    return p.returncode, p.stdout, p.stderr


def test_access_flags_gate_push_and_pull(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    a.write("private.txt", "never leaves a")
    a.write("shared.txt", "v1")
    code, out, _ = ctl(a, "access", "private.txt", "r-")
    assert code == 0 and out.strip() == "repo: private.txt: r-w?"
    cluster.round(rounds=2)
    assert not b.path("private.txt").exists() and b.path("shared.txt").read_text() == "v1"
    # w- on b: a's next edit of shared.txt is not written there
    assert ctl(b, "access", str(b.path("shared.txt")), "w-")[0] == 0
    a.write("shared.txt", "v2")
    cluster.round(rounds=2)
    assert b.path("shared.txt").read_text() == "v1"
    # unset: the flag table forgets it and the file follows again on the next change
    assert ctl(b, "access", "shared.txt", "w?")[1].strip() == "repo: shared.txt: r?w?"
    a.write("shared.txt", "v3")
    cluster.round(rounds=2)
    assert b.path("shared.txt").read_text() == "v3"
    assert not [p for p in b.tree() if "conflict" in p]  # a skipped version is not a conflict


def test_access_errors(cluster):
    a = cluster.add("a")
    code, _, err = ctl(a, "access", "missing.txt")
    assert code == 3 and "no repository" in err
    a.write("f", "x")
    code, _, err = ctl(a, "access", "f", "x+")
    assert code == 3 and "invalid access modifier" in err


def test_status_lists_members_and_pending_updates(cluster):
    a, b = cluster.add("a"), cluster.add("b")
    b.once()
    a.write("f.txt", "x")
    a.once()
    code, out, _ = ctl(a, "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("[repo] relay file://")
    assert any(line.split()[:2] == ["a", "shared"] and "1 update(s) pending," in line
               and line.endswith("(this client)") for line in lines)
    assert any(line.split()[:2] == ["b", "shared"] and "0 update(s)" in line for line in lines)
    # the repository id (to pin in a joining client's config), and each member's latest
    # signed activity (a member whose time stops advancing is offline or hidden by the relay)
    import json
    assert lines[1].split() == ["repository", "id", json.loads((cluster.relay / "escale.json").read_text())["id"]]
    assert all("last signed activity 20" in line and " s ago)" in line for line in lines[2:4]), lines


def test_forget_lets_updates_be_collected_without_a_dead_puller(cluster):
    a, b, dead = cluster.add("a"), cluster.add("b"), cluster.add("dead")
    cluster.round(rounds=1)  # everyone is a member
    a.write("f.txt", "x")
    a.once()
    b.once()
    a.once()
    from cluster import update_objects
    assert update_objects(cluster), "the update must wait for 'dead'"
    code, out, _ = ctl(a, "forget", "dead")
    assert code == 0 and "forgot 1 member(s) named dead" in out, (code, out, _)
    a.once()
    assert update_objects(cluster) == []
    # if it comes back, it re-registers and catches up from the snapshot
    dead.once()
    a.once()
    dead.once()
    assert dead.path("f.txt").read_text() == "x"
