"""Running as a service (issue 14): logs, signals, reload, escalectl start/stop/status,
the systemd unit, the folder watcher, 'on error', 'escale init'.

Daemons are started as a user starts them (``escale`` in a loop, or ``escalectl start``)
with their own runtime folder (XDG_RUNTIME_DIR), and always stopped by the test.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from escale.watch import FolderWatcher


# --------------------------------------------------------------------------- the folder watcher

def test_reading_a_file_does_not_wake_the_daemon(tmp_path: Path) -> None:
    """Regression: a read (inotify IN_CLOSE_NOWRITE, watchdog's "closed_no_write") woke
    the daemon for a cycle; only a change may."""
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    wake = threading.Event()
    watcher = FolderWatcher(tmp_path, wake)
    assert watcher.start()
    try:
        time.sleep(0.3)
        wake.clear()
        for _ in range(3):
            (tmp_path / "f.txt").read_bytes()
            os.listdir(tmp_path / "sub")
        assert not wake.wait(1.5), "a read woke the daemon"
        (tmp_path / "f.txt").write_text("y")  # and a change still does
        assert wake.wait(10)
    finally:
        watcher.stop()


# --------------------------------------------------------------------------- daemons as users run them

import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from cluster import Client, Cluster, kill9, temp_files, wait_for  # noqa: E402
from escale.relay.localmount import TMP_MARK as RELAY_TMP  # noqa: E402

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


class Daemon:
    """``escale`` in a loop, its stderr read line by line as it comes."""

    def __init__(self, client: Client, *args: str, env: dict | None = None):
        self.client = client
        self.proc = subprocess.Popen(client.cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env or client.cluster.env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_line(self, pattern: str, timeout: float = 60, after: int = 0) -> bool:
        rx = re.compile(pattern)
        return wait_for(lambda: any(rx.search(l) for l in self.lines[after:]) or self.proc.poll() is not None
                        and any(rx.search(l) for l in self.lines[after:]), timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                kill9(self.proc)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            kill9(self.proc)
        self._reader.join(10)


@pytest.fixture
def runtime(tmp_path, monkeypatch) -> Path:
    """A runtime folder of the test's own (where daemons put their lock files)."""
    d = tmp_path / "runtime"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d


@pytest.fixture
def svc(tmp_path, runtime) -> Cluster:
    c = Cluster(tmp_path)
    c.env["XDG_RUNTIME_DIR"] = str(runtime)
    return c


def _cycled(cluster: Cluster, name: str) -> bool:
    """The client's first cycle is over (its acknowledgement is on the relay)."""
    return any(n.startswith("a/") for n in cluster.relay_objects())


def test_idle_daemon_writes_nothing_and_names_each_file(svc: Cluster) -> None:
    a, b = svc.add("a"), svc.add("b")
    a.write("first.txt", "1")
    d = Daemon(a)
    try:
        assert d.wait_line(r"sent first\.txt"), d.text()
        assert d.wait_line(r"1 sent, 0 received"), d.text()
        time.sleep(0.5)
        quiet_from = len(d.lines)
        time.sleep(6)  # refresh = 1 s: several idle cycles
        assert d.lines[quiet_from:] == [], "an idle daemon wrote:\n" + "".join(d.lines[quiet_from:])
        a.write("second.txt", "2")
        assert d.wait_line(r"INFO escale\.activity: repo: sent second\.txt", after=quiet_from), d.text()
        b.once()
        (b.folder / "from-b.txt").write_text("b")
        b.once()
        assert d.wait_line(r"repo: received from-b\.txt", after=quiet_from), d.text()
    finally:
        code = d.stop()
    assert code == 0, d.text()
    assert all(STAMP.match(l) for l in d.lines if l.strip()), d.text()  # every line has its time
    assert (b.folder / "second.txt").read_text() == "2"


def test_many_files_make_one_summary_line(svc: Cluster) -> None:
    a = svc.add("a")
    for i in range(30):
        a.write(f"many/f{i:02d}.txt", str(i))
    r = a.once()
    assert "30 sent" in r.err and "many/f00.txt" in r.err, r
    assert not re.search(r"sent many/f\d\d\.txt$", r.err, re.M), r  # not one line per file


def test_verbose_shows_escale_decisions_but_not_library_chatter(capsys) -> None:
    import logging

    from escale.cli.logs import setup_logging

    try:
        setup_logging(1)
        logging.getLogger("escale.manager").debug("decision: fetch x")
        logging.getLogger("urllib3.connectionpool").debug("GET /relay 200")
        logging.getLogger("urllib3.connectionpool").warning("retrying")
        err = capsys.readouterr().err
        assert "decision: fetch x" in err and "retrying" in err and "GET /relay" not in err
        setup_logging(2)
        logging.getLogger("urllib3.connectionpool").debug("GET /relay 200")
        assert "GET /relay 200" in capsys.readouterr().err
    finally:
        setup_logging(0)


def test_verbose_daemon_says_why(svc: Cluster) -> None:
    a = svc.add("a")
    a.write("x.txt", "x")
    r = a.once("-v")
    assert re.search(r"DEBUG escale\.sync\.push: repo: published update 1 \(1 entries", r.err), r
    b = svc.add("b")
    r = b.once("-v")
    assert re.search(r"DEBUG escale\.sync\.apply: repo: x\.txt: .*Fetch", r.err), r


def test_json_log_format(svc: Cluster) -> None:
    a, b = svc.add("a", extra=""), svc.add("b")
    text = a.conf.read_text()
    a.conf.write_text("log format = json\n" + text)
    a.write("j\x1b[31m.txt", "escape in a name")
    r = a.once()
    docs = [json.loads(l) for l in r.err.splitlines() if l.strip()]
    assert docs and all({"time", "level", "logger", "message"} <= set(d) for d in docs), r.err
    sent = [d for d in docs if d.get("event") == "sent"]
    assert [d["path"] for d in sent] == ["j\x1b[31m.txt"] and sent[0]["repository"] == "repo"
    assert "\x1b" not in r.err  # escaped in the line itself
    bad = svc.add("c", extra="")
    bad.conf.write_text("log format = xml\n" + bad.conf.read_text())
    r = bad.once(check=False)
    assert r.code == 3 and "option 'log format'" in r.err and "json" in r.err, r


# --------------------------------------------------------------------------- signals

def _relay_temps(cluster: Cluster) -> list[str]:
    return [f for d, _, fs in os.walk(cluster.relay) for f in fs if f.startswith(RELAY_TMP)]


def test_sigterm_during_an_upload_rolls_back_and_exits_0(svc: Cluster) -> None:
    a, b = svc.add("a", refresh=600), svc.add("b")
    b.once()
    d = Daemon(a)
    try:
        assert wait_for(lambda: _cycled(svc, "a"), timeout=60)
        a.write("big.bin", os.urandom(60 << 20))
        assert wait_for(lambda: d.proc.poll() is not None or bool(_relay_temps(svc)), timeout=60, interval=0.002)
    finally:
        code = d.stop(signal.SIGTERM)
    assert code == 0, d.text()
    assert "received SIGTERM" in d.text()
    assert temp_files(a.folder) == []
    for _ in range(2):
        a.once()
        b.once()
    assert b.tree() == a.tree() and "big.bin" in b.tree()


def _has_open(pid: int, path: Path) -> bool:
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


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to see the file being read")
def test_second_sigint_aborts_at_once_and_the_next_run_recovers(svc: Cluster) -> None:
    a, b = svc.add("a"), svc.add("b")
    for i in range(5):
        a.write(f"keep/{i}.txt", str(i))
    a.once()
    b.once()
    big = a.folder / "huge.bin"
    with open(big, "wb") as f:  # sparse: hashing it takes seconds, writing it none
        f.truncate(6 << 30)
    d = Daemon(a)
    try:
        assert wait_for(lambda: d.proc.poll() is not None or _has_open(d.proc.pid, big), timeout=60,
                        interval=0.01), d.text()
        d.proc.send_signal(signal.SIGINT)
        assert d.wait_line("received SIGINT", timeout=30), d.text()
        code = d.stop(signal.SIGINT)
    finally:
        d.kill()
    assert code == 5, d.text()
    assert "aborting now" in d.text()
    big.unlink()
    a.write("keep/after.txt", "after")
    for _ in range(2):
        a.once()
        b.once()
    assert b.tree() == a.tree() and "keep/after.txt" in b.tree() and "keep/4.txt" in b.tree()
    assert temp_files(a.folder) == [] and _relay_temps(svc) == []


def test_sighup_reloads_the_configuration(svc: Cluster, tmp_path: Path) -> None:
    a, b = svc.add("a"), svc.add("b")
    second = tmp_path / "second"
    second.mkdir()
    (second / "s.txt").write_text("second repository")
    relay2 = tmp_path / "relay2"
    section2 = (f"\n[two]\nlocal path = {second}\nrelay address = file://{relay2}\nclient name = a\n"
                f"refresh = 1\nencryption = off\n")
    a.write("one.txt", "1")
    d = Daemon(a)
    try:
        assert d.wait_line(r"repo: sent one\.txt"), d.text()
        base = a.conf.read_text()
        # added
        a.conf.write_text(base + section2)
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_line(r"two: sent s\.txt"), d.text()
        assert d.wait_line(r"configuration reloaded .*\(2 repositories\)"), d.text()
        # broken: nothing changes, the error is said
        mark = len(d.lines)
        a.conf.write_text(base + section2 + "\n[three]\nlocal path = relative/path\n")
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_line("configuration not reloaded", after=mark), d.text()
        # changed, and removed
        mark = len(d.lines)
        a.conf.write_text(base.replace("refresh = 1", "refresh = 2"))
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_line(r"two: stopped \(no longer in the configuration\)", after=mark), d.text()
        assert d.wait_line(r"repo: restarting with its new configuration", after=mark), d.text()
        assert d.wait_line(r"\(1 repositories\)", after=mark), d.text()
        a.write("after-reload.txt", "still syncing")
        assert d.wait_line(r"repo: sent after-reload\.txt", after=mark), d.text()
        assert d.proc.poll() is None
    finally:
        code = d.stop()
    assert code == 0, d.text()
    b.once()
    assert (b.folder / "after-reload.txt").read_text() == "still syncing"


# --------------------------------------------------------------------------- on error

ALERT = 'printf "%s|%s|%s|%s\\n" "$ESCALE_REPOSITORY" "$ESCALE_EXIT_CODE" "$ESCALE_SUPPRESSED" "$ESCALE_ERROR" >> '


def test_on_error_runs_the_command_rate_limited(svc: Cluster, tmp_path: Path) -> None:
    alerts = tmp_path / "alerts.txt"
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where the relay should be")
    a = svc.add("a", extra=f"on error = {ALERT}{alerts}\n")
    text = a.conf.read_text().replace(f"relay address = file://{svc.relay}", f"relay address = file://{blocker}/r")
    a.conf.write_text(text)
    r = a.once(check=False)
    assert r.code == 2, r
    lines = alerts.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("repo|2|0|relay failed: "), lines
    alerts.unlink()
    d = Daemon(a, "-v")
    try:
        assert d.wait_line("relay failed", timeout=30), d.text()
        time.sleep(5)  # refresh = 1 s: several failed cycles
        assert d.proc.poll() is None
    finally:
        code = d.stop()
    assert code == 0, d.text()
    lines = alerts.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("repo|2|0|relay failed"), (lines, d.text())
    # failures went on (seen at DEBUG); the command ran once, and the console said it once
    assert len(re.findall(r"DEBUG escale\.manager: repo: relay failed", d.text())) >= 2, d.text()
    assert len(re.findall(r"ERROR escale\.manager: repo: relay failed", d.text())) == 1, d.text()


# --------------------------------------------------------------------------- escalectl start / stop / status

def ctl(client: Client, *args: str, timeout: float = 180) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", "escale.cli.ctl", "-c", str(client.conf), *args],
                       capture_output=True, text=True, env=client.cluster.env, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def status(client: Client) -> dict:
    code, out, err = ctl(client, "status", "--json")
    doc = json.loads(out)
    # exit 1 when a repository could not be read whole (e.g. its relay has no repository yet)
    assert code == (1 if any(r["error"] for r in doc["repositories"]) else 0), (code, out, err)
    return doc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_escalectl_start_status_reload_stop(svc: Cluster, runtime: Path) -> None:
    a, b = svc.add("a"), svc.add("b")
    b.once()
    a.write("before.txt", "written before start")
    code, out, err = ctl(a, "start")
    assert code == 0 and "escale started (pid" in out, (code, out, err)
    pid = int(re.search(r"pid (\d+)", out).group(1))
    try:
        assert _pid_alive(pid)
        code, out, _ = ctl(a, "start")
        assert code == 0 and f"already running" in out and str(pid) in out
        r = a.once(check=False)  # a second process on the same repository is refused
        assert r.code == 4, r
        by_hand = subprocess.run(a.cmd(), capture_output=True, text=True, env=svc.env, timeout=60)
        assert by_hand.returncode == 4 and f"pid {pid}" in by_hand.stderr, by_hand.stderr
        assert wait_for(lambda: (status(a)["repositories"][0]["last_busy_cycle"] or {}).get("sent") == 1,
                        timeout=60)
        doc = status(a)
        assert doc["schema"] == 1 and doc["daemon"] == {"running": True, "pid": pid}
        repo = doc["repositories"][0]
        assert repo["name"] == "repo" and repo["daemon_status"] == "live" and repo["error"] is None
        assert repo["last_cycle"]["result"] == "ok" and repo["repository_id"]
        assert repo["local_changes_unpublished"] == 0 and repo["last_cycle"]["unpublished"] == 0
        assert {m["name"] for m in repo["members"]} == {"a", "b"}
        assert [m["this_client"] for m in repo["members"] if m["name"] == "a"] == [True]
        assert repo["relay_usage"]["used_bytes"] > 0 and repo["relay_usage"]["used"].endswith("B")
        assert all(m["last_activity"] and m["last_activity"].endswith("Z") for m in repo["members"])
        code, out, _ = ctl(a, "status")
        assert code == 0 and "[repo] relay file://" in out and f"escale daemon: running (pid {pid})" in out, out
        assert "last cycle" in out and ": ok, " in out, out
        # reload: a repository added to the file starts without a restart
        second = svc.base / "second"
        second.mkdir()
        (second / "s.txt").write_text("s")
        with a.conf.open("a") as f:
            f.write(f"\n[two]\nlocal path = {second}\nrelay address = file://{svc.base / 'relay2'}\n"
                    f"client name = a\nrefresh = 1\nencryption = off\n")
        code, out, _ = ctl(a, "reload")
        assert code == 0 and str(pid) in out
        assert wait_for(lambda: [r["name"] for r in status(a)["repositories"]
                                 if (r["last_busy_cycle"] or {}).get("sent") == 1] == ["repo", "two"], timeout=60)
        a.write("during.txt", "while the daemon runs")
        assert wait_for(lambda: b.once() is not None and (b.folder / "during.txt").exists(), timeout=60)
    finally:
        code, out, err = ctl(a, "stop")
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert code == 0 and f"escale stopped (pid {pid})" in out, (code, out, err)
    assert wait_for(lambda: not _pid_alive(pid), timeout=10)
    log = next(svc.base.glob("state-a/daemon-*.log")).read_text()
    assert "received SIGTERM" in log and "INFO escale: stopped" in log, log
    doc = status(a)
    assert doc["daemon"] == {"running": False, "pid": None}
    assert doc["repositories"][0]["daemon_status"] == "from a daemon no longer running"
    assert doc["repositories"][0]["last_cycle"]["result"] == "ok"
    code, out, _ = ctl(a, "stop")
    assert code == 0 and "not running" in out
    assert (b.folder / "before.txt").read_text() == "written before start"


def test_stale_lock_is_not_trusted(svc: Cluster, runtime: Path) -> None:
    """A lock file left by a daemon killed -9 (or naming a pid now used by another
    program) is seen as stale: status says not running, stop signals nobody, start works."""
    from escale.cli.pidfile import lock_path

    a = svc.add("a")
    code, out, _ = ctl(a, "start")
    assert code == 0, out
    pid = int(re.search(r"pid (\d+)", out).group(1))
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not _pid_alive(pid) or open(f"/proc/{pid}/stat").read().split()[2] == "Z", timeout=10)
    path = lock_path(a.conf)
    path.write_text(f"{os.getpid()}\n{a.conf}\n")  # a live pid: this test's own
    try:
        assert status(a)["daemon"]["running"] is False
        code, out, _ = ctl(a, "stop")
        assert code == 0 and "not running" in out  # and this test process got no SIGTERM
        code, out, err = ctl(a, "start")
        assert code == 0 and "started" in out, (out, err)
        new = int(re.search(r"pid (\d+)", out).group(1))
        assert status(a)["daemon"] == {"running": True, "pid": new}
    finally:
        code, out, _ = ctl(a, "stop")
    assert code == 0 and "stopped" in out


def test_start_reports_a_daemon_that_cannot_run(svc: Cluster) -> None:
    a = svc.add("a")
    a.conf.write_text(a.conf.read_text().replace("mode = shared", "mode = sideways"))
    code, out, err = ctl(a, "start")
    assert code == 3 and "option 'mode'" in err, (code, out, err)


# --------------------------------------------------------------------------- the systemd unit

def test_service_unit_installs_and_verifies(svc: Cluster, tmp_path: Path) -> None:
    import shutil

    a = svc.add("a")
    units = tmp_path / "units"
    code, out, err = ctl(a, "service", "install", "--unit-dir", str(units))
    assert code == 0, (out, err)
    unit = (units / "escale.service").read_text()
    assert "Restart=on-failure" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    exec_line = next(l for l in unit.splitlines() if l.startswith("ExecStart="))
    assert exec_line.split("=", 1)[1].split() == [sys.executable, "-m", "escale", "-c", str(a.conf.resolve())]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    p = subprocess.run(["systemd-analyze", "--user", "verify", str(units / "escale.service")],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0 and "Failed to" in p.stderr and "escale.service" not in p.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {p.stderr.strip()[:200]}")
    assert p.returncode == 0 and "escale.service" not in p.stderr, p.stderr


# --------------------------------------------------------------------------- escale init

def _escale(*args: str, env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "escale", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=180)


def test_init_non_interactive_two_machines_then_sync(svc: Cluster, tmp_path: Path) -> None:
    env = dict(svc.env, HOME=str(tmp_path / "home"))
    relay = tmp_path / "relay"
    relay.mkdir()
    c1, c2 = tmp_path / "m1" / "escale.conf", tmp_path / "m2" / "escale.conf"
    f1, f2 = tmp_path / "folder1", tmp_path / "folder2"
    p = _escale("init", "-c", str(c1), "--folder", str(f1), "--relay", f"file://{relay}", "--name", "docs",
                "--client-name", "one", "--generate-passphrase", "--non-interactive", env=env)
    assert p.returncode == 0, p
    assert "connection test: ok" in p.stdout and "carry that" in p.stdout, p.stdout
    secret = c1.parent / "docs.passphrase"
    assert c1.stat().st_mode & 0o777 == 0o600 and secret.stat().st_mode & 0o777 == 0o600
    assert c1.parent.stat().st_mode & 0o077 == 0
    phrase = secret.read_text().strip()
    assert len(phrase.replace("-", "")) == 40 and phrase not in c1.read_text()  # 200 bits, not in the config
    assert _escale("-c", str(c1), "--once", env=env).returncode == 0  # creates the repository
    p = _escale("init", "-c", str(c2), "--folder", str(f2), "--relay", f"file://{relay}", "--name", "docs",
                "--client-name", "two", "--passphrase-file", str(secret), "--non-interactive", env=env)
    assert p.returncode == 0, p
    assert "the passphrase opens it" in p.stdout and "repository id = " in p.stdout, p.stdout
    (f1 / "hello.txt").write_text("from machine one")
    for conf in (c1, c2, c1, c2):
        assert _escale("-c", str(conf), "--once", env=env).returncode == 0
    assert (f2 / "hello.txt").read_text() == "from machine one"
    # a wrong passphrase is found by the connection test
    bad = tmp_path / "wrong"
    bad.write_text("not the passphrase\n")
    p = _escale("init", "-c", str(tmp_path / "m3" / "escale.conf"), "--folder", str(tmp_path / "folder3"),
                "--relay", f"file://{relay}", "--client-name", "three", "--passphrase-file", str(bad),
                "--non-interactive", env=env)
    assert p.returncode == 3 and "connection test failed" in p.stderr, p
    # missing flags are named, nothing is written
    p = _escale("init", "-c", str(tmp_path / "m4" / "escale.conf"), "--non-interactive", env=env)
    assert p.returncode == 3 and "--folder" in p.stderr and not (tmp_path / "m4" / "escale.conf").exists(), p


def test_init_interactive_and_escale_without_config_points_to_it(svc: Cluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = dict(svc.env, HOME=str(home))
    p = _escale("--once", env=env)
    assert p.returncode == 3 and "escale init" in p.stderr, p
    relay = tmp_path / "relay"
    answers = "\n".join([str(tmp_path / "mine"), "", f"file://{relay}", "1"]) + "\n"
    p = _escale("-i", "--interactive", "--client-name", "me", env=env, stdin=answers)
    assert p.returncode == 0, p
    conf = home / ".config" / "escale" / "escale.conf"
    assert conf.stat().st_mode & 0o777 == 0o600
    text = conf.read_text()
    assert "[mine]" in text and f"relay address = file://{relay}" in text and "passphrase = " in text
    p = _escale("--once", env=env)  # the default file is found now
    assert p.returncode == 0, p


def test_status_counts_updates_each_member_has_to_take(svc: Cluster) -> None:
    a, b, c = svc.add("a"), svc.add("b"), svc.add("c")
    b.once()
    c.once()
    a.write("one.txt", "1")
    a.once()
    a.write("two.txt", "2")
    a.once()
    b.once()  # b takes both; c takes none
    doc = status(a)
    members = {m["name"]: m for m in doc["repositories"][0]["members"]}
    assert members["a"]["updates_on_relay"] == 2
    assert (members["a"]["updates_to_take"], members["b"]["updates_to_take"], members["c"]["updates_to_take"]) \
        == (0, 0, 2), members
    code, out, _ = ctl(a, "status")
    assert any(l.split()[:2] == ["c", "shared"] and ", 2 to take," in l for l in out.splitlines()), out
    assert doc["daemon"]["running"] is False and doc["repositories"][0]["daemon_status"] is None


def test_daemon_publishes_the_transfer_in_progress(svc: Cluster) -> None:
    """status.json in the state folder names a large transfer while it runs (what
    escalectl status shows as 'sending big.bin: N %')."""
    a, b = svc.add("a", refresh=600), svc.add("b")
    b.once()
    d = Daemon(a)
    seen: list[dict] = []
    try:
        assert wait_for(lambda: any(a.state.rglob("status.json")), timeout=60), d.text()  # first cycle over
        files = list(a.state.rglob("status.json"))
        assert len(files) == 1, files
        a.write("big.bin", os.urandom(150 << 20))

        def transfer() -> bool:
            try:
                t = json.loads(files[0].read_text()).get("transfer")
            except (OSError, ValueError):
                return False
            if t:
                seen.append(t)
            return bool(seen) or d.proc.poll() is not None
        assert wait_for(transfer, timeout=120, interval=0.005), d.text()
        assert d.wait_line(r"repo: sent big\.bin"), d.text()
    finally:
        code = d.stop()
    assert code == 0, d.text()
    assert seen and seen[0]["path"] == "big.bin" and seen[0]["direction"] == "send", seen
    assert seen[0]["total_bytes"] == 150 << 20 and 0 <= seen[0]["done_bytes"] <= seen[0]["total_bytes"]
    assert files[0].stat().st_mode & 0o777 == 0o600
    assert json.loads(files[0].read_text())["transfer"] is None  # over once the cycle ended


def test_verbosity_option_sets_the_console_level(tmp_path) -> None:
    """0.7's ``verbosity`` (``verbosity level``) was accepted and then ignored: 0 now keeps the
    console to warnings, 1 (the default) adds what happened, 2 or more logs every file (debug,
    as 0.7's "at 2 or more, logs every file"). -q / -v on the command line win."""
    from cluster import Cluster

    cluster = Cluster(tmp_path)
    levels = {}
    for v in (0, 1, 2):
        c = cluster.add(f"v{v}", extra=f"verbosity = {v}\n")
        c.write("x.txt", "hello")
        err = c.once().err
        levels[v] = {lvl for lvl in ("DEBUG", "INFO", "WARNING") if f" {lvl} " in err}
    assert levels == {0: {"WARNING"}, 1: {"INFO", "WARNING"}, 2: {"DEBUG", "INFO", "WARNING"}}
    quiet = cluster.add("q", extra="verbosity = 2\n")
    assert " DEBUG " not in quiet.once("-q").err
    loud = cluster.add("l", extra="verbosity = 0\n")
    assert " INFO " in loud.once("-v").err


def test_log_rotate_zero_keeps_the_log_bounded(tmp_path) -> None:
    """``log rotate = 0`` (keep no rotated file): the standard handler then never rotated and
    the log grew without limit; it now starts again at 1 MiB, leaving no other file."""
    import logging

    from escale.cli.logs import setup_logging

    log_file = tmp_path / "escale.log"
    try:
        setup_logging(-1, str(log_file), "DEBUG", 0)
        line = "x" * 1000
        for _ in range(3000):  # ~3 MB of records
            logging.getLogger("escale.test").debug(line)
        assert log_file.stat().st_size <= (1 << 20) + 2000
        assert sorted(p.name for p in tmp_path.iterdir()) == ["escale.log"]
        setup_logging(-1, str(log_file), "DEBUG", 2)  # and a positive count still keeps backups
        for _ in range(3000):
            logging.getLogger("escale.test").debug(line)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["escale.log", "escale.log.1", "escale.log.2"]
    finally:
        setup_logging(0)
