"""A randomized multi-client test: three clients, random edits, renames, deletes, folder
removals, concurrent runs and kill -9, on an encrypted relay; then an oracle.

The oracle: every content a user wrote and no user replaced or deleted *as seen on the
machine where they did it* must be on every client at the end (at its path or in a
conflict copy), and all clients must hold identical trees. Each written content starts
with a unique token line, so it can be recognised wherever it ends up.

Seeds: ``ESCALE_FUZZ_SEED`` (default: three fixed seeds), ``ESCALE_FUZZ_STEPS`` (default 60),
``ESCALE_FUZZ_KILLS`` (weight of kill -9 among the runs; by default the test runs once
without kills, where a seed replays exactly, and once with weight 2).
The seed is in the failure message, so a failing run can be replayed.
"""
from __future__ import annotations

import base64
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cluster import Cluster, kill9, temp_files

pytestmark = pytest.mark.slow

NAMES = [f"d{i}/f{j}.txt" for i in range(3) for j in range(4)] + ["top.txt", "x y/ü.md", "deep/a/b/c.bin"]
STEPS = int(os.environ.get("ESCALE_FUZZ_STEPS", "60"))
SEEDS = [int(os.environ["ESCALE_FUZZ_SEED"])] if "ESCALE_FUZZ_SEED" in os.environ else [11, 23, 37]
#: weight of kill -9 among the runs (ESCALE_FUZZ_KILLS overrides both variants)
KILLS = [float(os.environ["ESCALE_FUZZ_KILLS"])] if "ESCALE_FUZZ_KILLS" in os.environ else [0.0, 2.0]

class Oracle:
    """What users did: every token written, and the ones a user replaced or deleted."""

    def __init__(self) -> None:
        self.counter = 0
        self.written: set[str] = set()
        self.retired: set[str] = set()

    def new_content(self, rng: random.Random, who: str) -> bytes:
        self.counter += 1
        token = f"token-{who}-{self.counter}"
        self.written.add(token)
        size = rng.choice([0, 10, 300, 5000, 70_000])
        return token.encode() + b"\n" + rng.randbytes(size)

    def retire(self, path: Path) -> None:
        token = token_of(path)
        if token:
            self.retired.add(token)

    def alive(self) -> set[str]:
        return self.written - self.retired


def token_of(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            first = f.readline(100)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return first.rstrip(b"\n").decode() if first.startswith(b"token-") else None


def user_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirs, files in os.walk(folder):
        if Path(dirpath) == folder:
            dirs[:] = [d for d in dirs if d != ".escale"]
        out += [Path(dirpath) / f for f in files if ".escale-tmp-" not in f]
    return sorted(out)


def tokens_in(folder: Path) -> set[str]:
    return {t for p in user_files(folder) if (t := token_of(p))}


def user_step(rng: random.Random, oracle: Oracle, client) -> str:
    """One thing a user does on one machine, recorded in the oracle."""
    files = user_files(client.folder)
    op = rng.choices(["create", "edit", "delete", "rename", "rmtree"], [4, 4, 2, 2, 0.5])[0]
    if op in ("edit", "delete", "rename", "rmtree") and not files:
        op = "create"
    if op == "create":
        target = client.folder / rng.choice(NAMES)
        if target.is_file():
            oracle.retire(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            return f"{client.name}: create skipped, {target.name} is a folder"
        target.write_bytes(oracle.new_content(rng, client.name))
        return f"{client.name}: write {target.relative_to(client.folder)}"
    victim = rng.choice(files)
    rel = victim.relative_to(client.folder)
    if op == "edit":
        oracle.retire(victim)
        victim.write_bytes(oracle.new_content(rng, client.name))
        return f"{client.name}: edit {rel}"
    if op == "delete":
        oracle.retire(victim)
        victim.unlink()
        return f"{client.name}: delete {rel}"
    if op == "rename":
        target = client.folder / rng.choice(NAMES)
        if target == victim or target.is_dir() or any(p == victim for p in target.parents):
            return f"{client.name}: rename skipped"
        if target.is_file():
            oracle.retire(target)  # mv over an existing file replaces it: the user's choice
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(victim, target)
        return f"{client.name}: rename {rel} -> {target.relative_to(client.folder)}"
    top = rel.parts[0]
    folder = client.folder / top
    if not folder.is_dir():
        return f"{client.name}: rmtree skipped"
    for p in user_files(folder):
        oracle.retire(p)
    shutil.rmtree(folder)
    return f"{client.name}: rmtree {top}"


def sync_step(rng: random.Random, cluster: Cluster, kills: float) -> str:
    """Runs: one client, two at once, or one killed with -9 at a random moment."""
    names = list(cluster.clients)
    kind = rng.choices(["one", "two", "kill"], [5, 2, kills])[0]
    if kind == "one":
        n = rng.choice(names)
        r = cluster.clients[n].once(check=False)
        assert "Traceback" not in r.err, f"{n}: {r}"
        return f"run {n}: exit {r.code}"
    if kind == "two":
        pair = rng.sample(names, 2)
        procs = [cluster.clients[n].start("--once") for n in pair]
        for n, p in zip(pair, procs):
            out, err = p.communicate(timeout=300)
            assert "Traceback" not in err, f"{n}: exit {p.returncode}\n{err}"
        return f"run {pair[0]} and {pair[1]} at once"
    n = rng.choice(names)
    proc = cluster.clients[n].start("--once")
    delay = rng.uniform(0.05, 1.5)
    time.sleep(delay)
    kill9(proc)
    return f"kill -9 {n} after {delay:.2f} s"


def content_tree(folder: Path) -> dict[str, str | None]:
    return {p.relative_to(folder).as_posix(): (token_of(p) or p.read_bytes()[:40].hex())
            for p in user_files(folder)}


def assert_nothing_lost(seed: int, clients: list, trees: list, oracle: Oracle, log: str) -> None:
    """The end of a randomized run: every client holds A's tree, the run synced something,
    a last cycle of each ends clean, and every content no user deleted is in every folder."""
    for c, t in zip(clients, trees):
        assert t == trees[0], (f"seed {seed}: {c.name} differs from A: only in A "
                               f"{sorted(set(trees[0]) - set(t))[:5]}, only in {c.name} "
                               f"{sorted(set(t) - set(trees[0]))[:5]}\n{log}")
    assert oracle.alive() and any(t for t in trees[0].values()), f"seed {seed}: the run synced nothing\n{log}"
    for c in clients:
        r = c.once(check=False)
        assert r.code == 0, f"seed {seed}: {c.name} does not end clean: {r}\n{log}"
        lost = oracle.alive() - tokens_in(c.folder)
        assert not lost, f"seed {seed}: {c.name} lost contents no user deleted: {sorted(lost)[:10]}\n{log}"
        assert temp_files(c.folder) == [], f"seed {seed}: temporary files left in {c.name}"


@pytest.mark.parametrize("kills", KILLS,
                         ids=lambda k: f"kills{k:g}")
@pytest.mark.parametrize("seed", SEEDS)
def test_random_edits_renames_deletes_kills_lose_nothing(tmp_path, seed, kills):
    rng = random.Random(seed)
    key = tmp_path / "repo.key"
    key.write_text(base64.b64encode(rng.randbytes(32)).decode() + "\n")
    key.chmod(0o600)
    cluster = Cluster(tmp_path, relay_conf=f"passphrase = {key}\npadding = on\n", kind="encrypted")
    clients = [cluster.add(n) for n in ("A", "B", "C")]
    history: list[str] = [f"seed {seed}, kill weight {kills:g}"]
    oracle = Oracle()
    for _ in range(STEPS):
        if rng.random() < 0.6:
            history.append(user_step(rng, oracle, rng.choice(clients)))
        else:
            history.append(sync_step(rng, cluster, kills))

    # Quiet period: everyone runs until nothing changes any more.
    trees: list = []
    for _ in range(8):
        for c in clients:
            r = c.once(check=False)
            assert "Traceback" not in r.err, f"{c.name}: {r}"
        trees = [content_tree(c.folder) for c in clients]
        if all(t == trees[0] for t in trees):
            break
    log = "\n".join(history[-40:])
    print("\n".join(history), f"\n{len(oracle.alive())} contents alive, {len(trees[0])} files")
    assert_nothing_lost(seed, clients, trees, oracle, log)


@pytest.mark.parametrize("seed", [5, 17])
def test_random_edits_under_running_daemons_lose_nothing(tmp_path, seed):
    """The same users and oracle, but the clients are daemons running all along (their
    folder watchers drive the cycles: only changed folders are scanned), edited while they
    run and now and then killed with -9 and started again."""
    rng = random.Random(seed)
    key = tmp_path / "repo.key"
    key.write_text(base64.b64encode(rng.randbytes(32)).decode() + "\n")
    key.chmod(0o600)
    cluster = Cluster(tmp_path, relay_conf=f"passphrase = {key}\npadding = on\n", kind="encrypted")
    clients = [cluster.add(n, extra="full scan = 3600\n") for n in ("A", "B", "C")]
    history: list[str] = [f"seed {seed}, daemons"]
    oracle = Oracle()

    def start(c) -> subprocess.Popen:
        log = open(tmp_path / f"daemon-{c.name}.log", "a")
        try:
            return subprocess.Popen(c.cmd(), stdout=log, stderr=log, env=cluster.env)
        finally:
            log.close()

    procs = {c.name: start(c) for c in clients}
    trees: list = []
    try:
        for _ in range(STEPS):
            r = rng.random()
            if r < 0.85:
                history.append(user_step(rng, oracle, rng.choice(clients)))
                time.sleep(rng.uniform(0, 0.4))
            elif r < 0.93:
                c = rng.choice(clients)
                kill9(procs[c.name])
                procs[c.name] = start(c)
                history.append(f"kill -9 {c.name}'s daemon, started again")
            else:
                time.sleep(rng.uniform(1, 3))
                history.append("pause")
        stable, end = 0, time.monotonic() + 240
        while time.monotonic() < end and stable < 3:  # the same, equal trees three seconds running
            time.sleep(1)
            now = [content_tree(c.folder) for c in clients]
            stable = stable + 1 if all(t == now[0] for t in now) and now == trees else 0
            trees = now
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(timeout=60)
    log = "\n".join(history[-40:])
    for c in clients:
        text = (tmp_path / f"daemon-{c.name}.log").read_text()
        assert "Traceback" not in text, f"seed {seed}: {c.name}'s daemon:\n{text[-3000:]}"
    assert_nothing_lost(seed, clients, trees, oracle, log)
