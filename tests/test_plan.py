"""The reconcile rules, decided without a disk or a relay."""
from escale.index import DIR, FILE, GONE, Entry, LocalFile, Synced
from escale.plan import (CONSERVATIVE, DOWNLOAD, Displace, Fetch, MakeDir, Remember, RemoveDir, SetMode,
                         Changes, conflict_name, folder_changes, local_changes, reconcile, saw)

H0, H1, H2 = "a0" * 16, "b1" * 16, "c2" * 16
ME, ALICE, BOB = "0" * 16, "a" * 16, "b" * 16
NAMES = {ME: "me", ALICE: "alice", BOB: "bob"}.get


def entry(path="f.txt", h=H1, prev=None, mtime=2_000_000_000_000_000_000, author=ALICE, kind=FILE, mode=0o644):
    return Entry(path, kind, h if kind == FILE else None, 5 if kind == FILE else 0, mtime, mode, prev, author)


def local(path="f.txt", h=H0, mtime=1_000_000_000_000_000_000, kind=FILE, mode=0o644):
    return LocalFile(path, kind, 5, mtime, 1, mode, h if kind == FILE else None)


def kinds(plan):
    return [type(s).__name__ for s in plan.steps]


def test_new_file_is_fetched_and_remembered():
    e = entry()
    plan = reconcile(e, None, None, me=ME)
    assert plan.steps == [Fetch("f.txt", e), Remember(e)]


def test_identical_local_content_only_remembers():
    e = entry(h=H1)
    assert kinds(reconcile(e, None, local(h=H1), me=ME)) == ["Remember"]


def test_mode_change_only_sets_mode():
    e = entry(h=H1, prev=H1, mode=0o755)
    plan = reconcile(e, entry(h=H1), local(h=H1, mode=0o644), me=ME)
    assert plan.steps[0] == SetMode("f.txt", 0o755)


def test_continuation_of_base_overwrites_unmodified_local():
    base = entry(h=H0)
    e = entry(h=H1, prev=H0)
    plan = reconcile(e, base, local(h=H0), me=ME)
    assert kinds(plan) == ["Fetch", "Remember"]


def test_deletion_applies_only_to_the_version_the_deleter_saw():
    base = entry(h=H0)
    gone = entry(kind=GONE, prev=H0)
    assert kinds(reconcile(gone, base, local(h=H0), me=ME)) == ["Displace", "Remember"]
    assert reconcile(gone, base, local(h=H0), me=ME).steps[0] == Displace("f.txt", None)
    # changed here since: local wins, nothing moved
    plan = reconcile(gone, base, local(h=H2), me=ME)
    assert not any(isinstance(s, Displace) for s in plan.steps)
    # the deleter saw an older version than ours
    plan = reconcile(gone, entry(h=H2), local(h=H2), me=ME)
    assert plan.steps == []


def test_deletion_of_a_version_we_hold_without_base_applies():
    gone = entry(kind=GONE, prev=H0)
    assert kinds(reconcile(gone, None, local(h=H0), me=ME)) == ["Displace", "Remember"]


def test_folder_deletion_removes_folder():
    gone = entry("d", kind=GONE, prev="/")
    plan = reconcile(gone, entry("d", kind=DIR), local("d", kind=DIR), me=ME)
    assert plan.steps[0] == RemoveDir("d")


def test_edit_beats_deletion_both_ways():
    # we deleted locally (unpublished), an edit arrives: it comes back
    plan = reconcile(entry(h=H1, prev=H0), entry(h=H0), None, me=ME)
    assert kinds(plan) == ["Fetch", "Remember"]
    # we published a deletion (base gone), a concurrent edit of the old version arrives
    plan = reconcile(entry(h=H1, prev=H0), entry(kind=GONE, prev=H0), None, me=ME)
    assert kinds(plan) == ["Fetch", "Remember"]


def test_concurrent_edit_newer_incoming_wins_and_local_becomes_conflict_copy():
    base = entry(h=H0, author=ME, mtime=10**18)
    e = entry(h=H1, prev=H0, mtime=3 * 10**18, author=ALICE)
    loc = local(h=H2, mtime=2 * 10**18)  # edited here, not yet published
    plan = reconcile(e, base, loc, me=ME, name_of=NAMES)
    assert plan.steps[0] == Displace("f.txt", conflict_name("f.txt", "me", 2 * 10**18))
    assert plan.steps[1] == Fetch("f.txt", e)


def test_concurrent_edit_newer_local_wins_incoming_becomes_conflict_copy():
    base = entry(h=H0, mtime=10**18)
    e = entry(h=H1, prev=H0, mtime=2 * 10**18, author=ALICE)
    loc = local(h=H2, mtime=3 * 10**18)
    plan = reconcile(e, base, loc, me=ME, name_of=NAMES)
    assert plan.steps[0] == Fetch(conflict_name("f.txt", "alice", 2 * 10**18), e)
    assert plan.steps[1] == Remember(e)  # our edit is published next as E's successor


def test_published_conflict_resolves_identically_on_both_sides():
    """Alice and Bob both edited version H0; each sees the other's update."""
    t_a, t_b = 5 * 10**18, 6 * 10**18
    ea = entry(h=H1, prev=H0, mtime=t_a, author=ALICE)
    eb = entry(h=H2, prev=H0, mtime=t_b, author=BOB)
    # on Alice: base is her own ea; Bob's eb arrives
    pa = reconcile(eb, ea, local(h=H1, mtime=t_a), me=ALICE, name_of=NAMES)
    # on Bob: base is his own eb; Alice's ea arrives
    pb = reconcile(ea, eb, local(h=H2, mtime=t_b), me=BOB, name_of=NAMES)
    # a third client that applied ea first, then sees eb
    pc = reconcile(eb, ea, local(h=H1, mtime=t_a), me=ME, name_of=NAMES)
    copy = conflict_name("f.txt", "alice", t_a)
    # Bob's edit is newer: it stays at the path everywhere, Alice's becomes the copy
    assert pa.steps[0] == Displace("f.txt", copy) and pa.steps[1] == Fetch("f.txt", eb)
    assert pb.steps[0] == Fetch(copy, ea) and Remember(ea) not in pb.steps
    assert pc.steps[0] == Displace("f.txt", copy)


def test_conservative_keeps_local_edit():
    base = entry(h=H0, mtime=10**18)
    e = entry(h=H1, prev=H0, mtime=9 * 10**18)
    plan = reconcile(e, base, local(h=H2, mtime=2 * 10**18), me=ME, mode=CONSERVATIVE, name_of=NAMES)
    assert isinstance(plan.steps[0], Fetch) and plan.steps[0].target != "f.txt"
    # but an unmodified file is updated
    plan = reconcile(e, base, local(h=H0), me=ME, mode=CONSERVATIVE)
    assert plan.steps[0] == Fetch("f.txt", e)


def test_download_mode_trashes_local_edit():
    base = entry(h=H0, mtime=10**18)
    e = entry(h=H1, prev=H0, mtime=2 * 10**18)
    plan = reconcile(e, base, local(h=H2, mtime=9 * 10**18), me=ME, mode=DOWNLOAD)
    assert plan.steps[:2] == [Displace("f.txt", None), Fetch("f.txt", e)]


def test_incoming_folder_over_local_file():
    e = entry("d", kind=DIR)
    plan = reconcile(e, None, local("d", h=H0), me=ME, name_of=NAMES)
    assert isinstance(plan.steps[0], Displace) and plan.steps[0].target.startswith("d.conflict-me-")
    assert plan.steps[1] == MakeDir("d", 0o644)


def test_conflict_name_shape():
    t = 1_700_000_000 * 10**9
    assert conflict_name("dir/report.txt", "bob", t) == "dir/report.conflict-bob-20231114-221320.txt"
    assert conflict_name(".bashrc", "bob", t) == ".bashrc.conflict-bob-20231114-221320"


def test_local_changes_new_modified_deleted_and_renamed():
    base = {"a": entry("a", h=H0), "old": entry("old", h=H1), "d": entry("d", kind=DIR, mode=0o755),
            "gone": entry("gone", kind=GONE, prev=H2)}
    scan = {"a": local("a", h=H2), "new": local("new", h=H1), "d2": local("d2", kind=DIR, mode=0o755)}
    changes = {e.path: e for e in local_changes(scan, base, me=ME)}
    assert changes["a"].prev == H0 and changes["a"].hash == H2
    assert changes["new"].origin == "old"  # rename: content travels by reference
    assert changes["old"].kind == GONE and changes["old"].prev == H1
    assert changes["d"].kind == GONE and changes["d"].prev == "/"
    assert changes["d2"].kind == DIR
    assert "gone" not in changes
    order = [e.path for e in local_changes(scan, base, me=ME)]
    assert order.index("d2") < order.index("a") < order.index("old") < order.index("d")


def test_local_changes_respects_scope():
    base = {"secret": entry("secret", h=H0)}
    changes = local_changes({"x": local("x")}, base, me=ME, in_scope=lambda p, k: p != "secret")
    assert [e.path for e in changes] == ["x"]  # an out-of-scope base path is not reported deleted


def test_folder_changes_builds_entries_only_for_what_differs():
    """One folder at a time: unchanged paths cost no Entry; a changed file is returned so the
    pusher can open that very file; a base row whose folder was not walked is a deletion."""
    base = {"d/same": Synced("d/same", FILE, H0, 0o644), "d/edit": Synced("d/edit", FILE, H0, 0o644),
            "d/mode": Synced("d/mode", FILE, H1, 0o644), "d/old": Synced("d/old", FILE, H2, 0o644)}
    found = {"d/same": local("d/same", h=H0), "d/edit": local("d/edit", h=H1),
             "d/mode": local("d/mode", h=H1, mode=0o755), "d/new": local("d/new", h=H2)}
    into = Changes()
    changed = folder_changes(found, base, into, me=ME)
    assert sorted(lf.path for lf in changed) == ["d/edit", "d/mode", "d/new"]
    folder_changes({}, {"gone/x": Synced("gone/x", FILE, H0, 0o644),
                        "gone/sub": Synced("gone/sub", DIR, None, 0o755)}, into, me=ME)
    out = {e.path: e for e in into.ordered()}
    assert set(out) == {"d/edit", "d/mode", "d/new", "d/old", "gone/x", "gone/sub"}
    assert out["d/edit"].prev == H0 and out["d/mode"].mode == 0o755
    assert out["d/new"].origin == "d/old"  # a rename across the folder's rows
    assert out["gone/x"].kind == GONE and out["gone/x"].prev == H0 and out["gone/sub"].prev == "/"


def test_local_changes_is_the_same_folder_by_folder():
    """The whole-folder form and the folder-by-folder form give the same entries in the same
    order (the pusher uses the second, the rules are stated with the first)."""
    base = {f"d{i}/f{j}": entry(f"d{i}/f{j}", h=(H0, H1)[j % 2]) for i in range(3) for j in range(4)}
    scan = {p: local(p, h=b.hash, mtime=10**18 + len(p)) for p, b in base.items() if not p.startswith("d2/")}
    scan["d0/f1"] = local("d0/f1", h=H2)
    scan["d1/new"] = local("d1/new", h=H1, mtime=5)
    whole = local_changes(scan, base, me=ME)
    into = Changes()
    for folder in ("d0", "d1", "d2"):
        folder_changes({p: lf for p, lf in scan.items() if p.startswith(folder + "/")},
                       {p: Synced(p, b.kind, b.hash, b.mode) for p, b in base.items() if p.startswith(folder + "/")},
                       into, me=ME)
    streamed = into.ordered()
    strip = [(e.path, e.kind, e.hash, e.prev, e.origin) for e in whole]
    assert strip == [(e.path, e.kind, e.hash, e.prev, e.origin) for e in streamed]
    assert strip[0][:2] == ("d0/f1", FILE) and ("d2/f0", GONE, None, H0, None) in strip
    assert [e.path for e in whole if e.origin] == ["d1/new"]  # takes the first deleted path of its content


def test_entry_supersedes_a_base_its_publisher_had_seen():
    """C applied Alice's v1 (her update 3) while Bob, who had applied it too, wrote v2 on
    top of a version C never saw: v2 still supersedes v1 (Bob's deps cover it)."""
    base = Entry("f.txt", FILE, H0, 5, 10**18, 0o644, None, ALICE, seq=3)
    e = Entry("f.txt", FILE, H2, 5, 10**17, 0o644, H1, BOB, seq=9)  # older mtime, prev unknown to us
    plan = reconcile(e, base, local(h=H0), me=ME, seen=lambda b: saw(BOB, {ALICE: 3}, b))
    assert kinds(plan) == ["Fetch", "Remember"]
    # Bob had only applied Alice's update 2: truly concurrent, the stamps decide
    plan = reconcile(e, base, local(h=H0), me=ME, name_of=NAMES, seen=lambda b: saw(BOB, {ALICE: 2}, b))
    assert plan.steps[0] == Fetch(conflict_name("f.txt", "bob", 10**17), e)
    # a local edit on top of the base still makes a conflict
    plan = reconcile(e, base, local(h=H1, mtime=3 * 10**18), me=ME, name_of=NAMES,
                     seen=lambda b: saw(BOB, {ALICE: 3}, b))
    assert any(isinstance(s, Fetch) and "conflict" in s.target for s in plan.steps)


def test_deletion_by_a_publisher_that_saw_our_version():
    base = Entry("f.txt", FILE, H0, 5, 10**18, 0o644, None, ALICE, seq=4)
    gone = Entry("f.txt", GONE, None, 0, 2 * 10**18, 0, H1, BOB, seq=2)  # Bob deleted a later version
    assert kinds(reconcile(gone, base, local(h=H0), me=ME, seen=lambda b: saw(BOB, {ALICE: 4}, b))) == \
        ["Displace", "Remember"]
    assert reconcile(gone, base, local(h=H0), me=ME, seen=lambda b: saw(BOB, {ALICE: 3}, b)).steps == []


def test_saw():
    e = Entry("p", FILE, H0, 1, 1, 0o644, None, ALICE, seq=5)
    assert saw(ALICE, {}, e) and saw(BOB, {ALICE: 5}, e) and not saw(BOB, {ALICE: 4}, e)
    assert not saw(BOB, {ALICE: 9}, Entry("p", FILE, H0, 1, 1, 0o644, None, ALICE))  # never published


def test_a_version_the_base_replaced_arriving_late_is_history():
    """Bob deleted (then edited) what Alice wrote; we applied Bob's update first (a snapshot
    merge or a backlog drained out of order): Alice's late entry must not bring the file back
    nor make a conflict copy of an ancestor (found by tests/test_randomized.py with kill -9)."""
    created = Entry("f.txt", FILE, H1, 5, 10**18, 0o644, None, ALICE, seq=5)
    tomb = Entry("f.txt", GONE, None, 0, 2 * 10**18, 0, H1, BOB, seq=7)
    bob_saw_alice = lambda b: saw(ALICE, {}, b)  # Alice's deps: she had seen nothing of Bob's
    assert reconcile(created, tomb, None, me=ME, seen=bob_saw_alice).steps == []
    edited = Entry("f.txt", FILE, H1, 5, 10**18, 0o644, H0, ALICE, seq=5)  # an edit H0 -> H1
    assert reconcile(edited, tomb, None, me=ME, seen=bob_saw_alice).steps == []
    later = Entry("f.txt", FILE, H2, 5, 3 * 10**18, 0o644, H1, BOB, seq=8)  # Bob edited H1 -> H2
    assert reconcile(created, later, local(h=H2), me=ME, name_of=NAMES, seen=bob_saw_alice).steps == []
    # a re-creation by someone who had seen the deletion comes back
    again = Entry("f.txt", FILE, H1, 5, 4 * 10**18, 0o644, None, ME[:-1] + "c", seq=2)
    plan = reconcile(again, tomb, None, me=ME, seen=lambda b: saw(again.author, {BOB: 7}, b))
    assert kinds(plan) == ["Fetch", "Remember"]
    # Alice's own re-creation follows her own deletion (our base then), so it applies
    alice_tomb = Entry("f.txt", GONE, None, 0, 3 * 10**18, 0, H1, ALICE, seq=6)
    recreated = Entry("f.txt", FILE, H1, 5, 4 * 10**18, 0o644, None, ALICE, seq=9)
    assert kinds(reconcile(recreated, alice_tomb, None, me=ME, seen=bob_saw_alice)) == ["Fetch", "Remember"]
    # a revert to the content the base replaced, by its publisher's successor, applies
    revert = Entry("f.txt", FILE, H1, 5, 4 * 10**18, 0o644, H2, ALICE, seq=9)
    assert kinds(reconcile(revert, later, local(h=H2), me=ME, seen=bob_saw_alice)) == ["Fetch", "Remember"]
