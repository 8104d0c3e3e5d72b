"""The whole benchmark suite in one command: every bench here, side by side with rclone where
rclone can speak the server, and the generated tables of docs/performance.md rewritten.

    python bench/run.py                      # everything, --runs 3, rewrites docs/performance.md
    python bench/run.py --quick              # small sizes, one run: a smoke test (~3 minutes)
    python bench/run.py --only local,idle    # some benches (--list names them), --skip others
    python bench/run.py --runs 5 --doc FILE  # more runs; another document (tests use a copy)

Each bench runs as its own process (so this one, kept small, does not inflate the peak RSS of
the steps it measures: a child's maxrss starts at its parent's size). The side-by-side benches
repeat each case ``--runs`` times, the tools taking turns within a run, and report min / median
of the wall time and the medians of CPU time (user + system, from wait4) and peak RSS. A bench
that cannot start here (a server not installed) is skipped and the reason is written into the
document's header, never silently. Only what lies between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` is rewritten; a block whose markers are missing is appended at the end.
The hand-written analysis around the blocks is left alone: reread it after a run.

Raw results (JSON lines, each bench's output and errors) go to ``--out`` (default: a new folder
under the system's temporary folder, printed at the end).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DOC = ROOT / "docs" / "performance.md"


@dataclass
class Bench:
    """One bench of the suite; ``name`` is its block's marker in the document."""

    name: str
    title: str
    script: str
    full: list[str]
    quick: list[str] | None  # None: not part of --quick (fixed sizes)
    kind: str = "pairs"  # pairs: harness --runs/--json; table: repeated here; text: its own statistics
    needs: tuple[str, ...] = ()  # "cmd:NAME" on PATH or a Python module
    peer: str = "rclone copy through a crypt remote on the same server"
    timeout: float = 3600
    requires: str = ""  # an option the script must offer (else skipped: an older bench)
    if_offered: tuple[str, ...] = ()  # more arguments, given when the script offers the first one


SUITE = [
    Bench("idle", "Idle cost, start-up, requests per cycle", "bench_idle.py",
          ["--files", "100000"], ["--files", "2000"], kind="text", needs=("wsgidav", "cheroot"),
          peer="rclone sync --dry-run of the same folder; rclone version"),
    Bench("idle-small", "Idle cost at 10,000 files (for the memory per file)", "bench_idle.py",
          ["--files", "10000"], None, kind="text", needs=("wsgidav", "cheroot"),
          peer="rclone sync --dry-run of the same folder", if_offered=("--only", "idle")),
    Bench("idle-scale", "First sync and idle run of many files: memory per file", "bench_idle.py",
          ["--only", "scale", "--scale-files", "100000"], ["--only", "scale", "--scale-files", "3000"], kind="text",
          peer="none", requires="--scale-files"),
    Bench("requests", "Requests at start-up and per idle cycle, every backend", "bench_requests.py", [],
          ["--kinds", "file,wsgidav"], kind="text", peer="none (request counts: deterministic, one run)"),
    Bench("local", "file:// relay", "bench_local.py", ["--small", "5000", "--big", "1024"],
          ["--small", "50", "--big", "2"], needs=("cmd:rclone",), peer="rclone copy (no crypt) to a folder"),
    Bench("local-50k", "file:// relay, 50,000 small files", "bench_local.py",
          ["--small", "50000", "--only", "small"], ["--small", "300", "--only", "small"], needs=("cmd:rclone",),
          peer="rclone copy (no crypt) to a folder"),
    Bench("webdav-apache", "WebDAV, Apache httpd", "bench_webdav.py",
          ["--server", "apache", "--small", "5000", "--big", "1074"], ["--server", "apache", "--small", "50", "--big", "2"],
          needs=("cmd:rclone", "cmd:apache2")),
    Bench("s3-seaweedfs", "S3, SeaweedFS", "bench_s3.py",
          ["--server", "seaweedfs", "--small", "5000", "--big", "1074"],
          ["--server", "seaweedfs", "--small", "50", "--big", "2"], needs=("cmd:rclone", "cmd:weed", "boto3")),
    Bench("webdav-wsgidav", "WebDAV, wsgidav", "bench_webdav.py",
          ["--server", "wsgidav", "--small", "2000", "--big", "200"], ["--server", "wsgidav", "--small", "50", "--big", "2"],
          needs=("cmd:rclone", "wsgidav", "cheroot")),
    Bench("webdav-rclone", "WebDAV, rclone serve webdav", "bench_webdav.py",
          ["--server", "rclone", "--small", "2000", "--big", "200"], ["--server", "rclone", "--small", "50", "--big", "2"],
          needs=("cmd:rclone",)),
    Bench("s3-moto", "S3, moto", "bench_s3.py", ["--server", "moto", "--small", "2000", "--big", "200"],
          ["--server", "moto", "--small", "50", "--big", "2"], needs=("cmd:rclone", "boto3", "moto", "flask")),
    Bench("s3-rclone", "S3, rclone serve s3", "bench_s3.py", ["--server", "rclone", "--small", "2000", "--big", "200"],
          ["--server", "rclone", "--small", "50", "--big", "2"], needs=("cmd:rclone", "boto3")),
    Bench("ftp", "FTP, pyftpdlib", "bench_ftp.py", ["--small", "2000", "--big", "200"], ["--small", "50", "--big", "2"],
          needs=("cmd:rclone", "pyftpdlib")),
    Bench("ftps", "FTPS (explicit TLS), pyftpdlib", "bench_ftp.py", ["--tls", "--small", "2000", "--big", "200"],
          ["--tls", "--small", "50", "--big", "2"], needs=("cmd:rclone", "pyftpdlib", "OpenSSL")),
    Bench("sftp", "SFTP (asyncssh server), and rclone:// over rclone's sftp", "bench_sftp.py",
          ["--small", "2000", "--big", "200"], ["--small", "50", "--big", "2"],
          needs=("cmd:rclone", "asyncssh", "paramiko")),
    Bench("gdrive", "Google Drive, the local Drive v3 server", "bench_gdrive.py", ["--small", "2000", "--big", "200"],
          ["--small", "50", "--big", "2"], needs=("googleapiclient",),
          peer="none: rclone's drive backend cannot be pointed at another API server"),
    Bench("bigfile", "One large file, encrypted, file:// relay", "bench_bigfile.py", ["--size-mb", "1024"],
          ["--size-mb", "8"], kind="table", needs=("cmd:rclone",), peer="rclone copy through a crypt remote on a folder"),
    Bench("propagation", "Propagation delay and idle requests of two daemons", "bench_propagation.py",
          ["--samples", "5", "--idle", "30", "--relays", "file,webdav"], ["--samples", "2", "--idle", "2", "--relays", "file"],
          kind="text", needs=("wsgidav", "cheroot"), peer="none (rclone has no daemon that syncs both ways)"),
    Bench("watch", "Daemon cycles with the folder watcher, 100,000 files", "bench_watch.py",
          ["--files", "100000", "--window", "20"], ["--files", "2000", "--window", "4"], kind="text",
          peer="the same daemon scanning the whole folder every cycle (`full scan = 0`); rclone has no daemon"),
    Bench("padding", "Space cost of padding", "bench_padding.py", [], None, kind="text",
          peer="none (sizes, not times: deterministic, one run)"),
]


@dataclass
class Outcome:
    """What one bench gave: its block for the document, and what the target table needs."""

    bench: Bench
    status: str  # "ran", "skipped", "failed"
    reason: str = ""
    records: list[dict] = field(default_factory=list)
    text: str = ""
    versions: str = ""
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    args: list[str] = field(default_factory=list)  # what the bench was given


def missing(bench: Bench) -> str | None:
    """Why this bench cannot run here, or None."""
    for need in bench.needs:
        if need.startswith("cmd:"):
            if shutil.which(need[4:]) is None:
                return f"`{need[4:]}` is not installed"
        elif importlib.util.find_spec(need) is None:
            return f"Python module `{need}` is not installed"
    return None


def run_bench(bench: Bench, args, out: Path) -> Outcome:
    why = missing(bench)
    if why:
        return Outcome(bench, "skipped", why)
    extra = bench.quick if args.quick else args.args_of.get(bench.name, bench.full)
    if extra is None:
        return Outcome(bench, "skipped", "not part of --quick (its sizes are fixed)")
    if bench.requires or bench.if_offered:
        offered = subprocess.run([sys.executable, str(BENCH / bench.script), "--help"], capture_output=True,
                                 text=True, cwd=BENCH).stdout
        if bench.requires and bench.requires not in offered:
            return Outcome(bench, "skipped", f"this {bench.script} has no {bench.requires} option")
        if bench.if_offered and bench.if_offered[0] in offered:
            extra = [*extra, *bench.if_offered]
    runs = 1 if args.quick else args.runs_of.get(bench.name, args.runs)
    jsonl = out / f"{bench.name}.jsonl"
    jsonl.unlink(missing_ok=True)
    cmd = [sys.executable, str(BENCH / bench.script), *extra]
    if bench.kind == "pairs":
        cmd += ["--runs", str(runs), "--json", str(jsonl)]
    elif bench.name in ("idle", "idle-small"):
        cmd += ["--runs", str(runs)]
    elif bench.name == "padding":
        cmd += [str(out / "padding-work")]
    repeat = runs if bench.kind == "table" else 1
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    outputs = []
    print(f"[{_now():%H:%M:%S}] {bench.name}: {' '.join(cmd[1:])}" + (f" × {repeat}" if repeat > 1 else ""),
          file=sys.stderr, flush=True)
    for n in range(repeat):
        with open(out / f"{bench.name}.stderr", "a") as err:
            try:
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=BENCH,
                                   timeout=bench.timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            except subprocess.TimeoutExpired:
                return Outcome(bench, "failed", f"did not finish within {bench.timeout:.0f} s")
        (out / f"{bench.name}.stdout").open("a").write(p.stdout)
        if p.returncode != 0:
            tail = (out / f"{bench.name}.stderr").read_text(errors="replace").strip().splitlines()
            return Outcome(bench, "failed", f"exit {p.returncode}: {tail[-1] if tail else 'no message'}"[:300])
        outputs.append(p.stdout)
        if bench.name == "padding":
            shutil.rmtree(out / "padding-work", ignore_errors=True)
    records = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    lines = [line for line in outputs[-1].strip().splitlines() if line.strip()]
    return Outcome(bench, "ran", records=records, text=aggregate_tables(outputs) if repeat > 1 else outputs[0],
                   versions=lines[-1] if lines and not lines[-1].startswith("|") else "",
                   seconds=time.monotonic() - t0, load=(load0, os.getloadavg()[0]), args=cmd[2:])


# ----------------------------------------------------------------------------- tables


def tables(text: str) -> list[list[str]]:
    """The Markdown tables of a bench's output, each a list of lines."""
    found, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            found.append(cur)
            cur = []
    return found + ([cur] if cur else [])


NUMS = re.compile(r"^\s*[\d.]+(\s*/\s*[\d.]+)*\s*$")


def aggregate_tables(outputs: list[str]) -> str:
    """Cell by cell over runs of a bench that prints one table per run: a lone figure becomes
    "min / median", an "a / b" pair the median of each part."""
    runs = [tables(o) for o in outputs]
    lines = []
    for ti, table in enumerate(runs[0]):
        for li, line in enumerate(table):
            cells = line.strip().strip("|").split("|")
            if li < 2:
                lines.append(line)
                continue
            merged = []
            for ci, cell in enumerate(cells):
                values = []
                for r in runs:
                    try:
                        values.append(r[ti][li].strip().strip("|").split("|")[ci])
                    except IndexError:
                        pass
                if not NUMS.match(cell) or len(values) < 2:
                    merged.append(cell.strip())
                    continue
                parts = [[float(x) for x in v.split("/")] for v in values]
                if len(parts[0]) == 1:
                    xs = [p[0] for p in parts]
                    merged.append(f"{_num(min(xs))} / {_num(statistics.median(xs))}")
                else:
                    merged.append(" / ".join(_num(statistics.median(p[i] for p in parts))
                                             for i in range(len(parts[0]))))
            lines.append("| " + " | ".join(merged) + " |")
        lines.append("")
    return "\n".join(lines).strip() + (f"\n\nOver {len(outputs)} runs: a lone figure is min / median, "
                                       "an \"a / b\" figure the median of each.")


def _num(x: float) -> str:
    return f"{x:.0f}" if x == int(x) and x >= 10 else f"{x:.2f}"


def _mm(xs: list[float]) -> str:
    return f"{min(xs):.2f}" if len(xs) == 1 else f"{min(xs):.2f} / {statistics.median(xs):.2f}"


def pair_rows(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    rows: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        if "case" in r:
            rows.setdefault((r["case"], r["tool"]), []).append(r)
    return rows


def pairs_block(o: Outcome) -> str:
    where = "relay" if o.bench.name.startswith("local") else "server"
    out = [f"| data | tool | A → {where} (s) | {where} → B (s) | CPU push / pull (s) | peak RSS push / pull (MiB) |",
           "|---|---|---|---|---|---|"]
    runs = 0
    for (case, tool), rs in pair_rows(o.records).items():
        ok = [r for r in rs if "failed" not in r]
        bad = [r for r in rs if "failed" in r]
        if ok:
            runs = max(runs, len(ok))
            cells = []
            for side in ("push", "pull"):
                walls = [r[f"{side}_wall"] for r in ok]
                cell = _mm(walls)
                if ok[0]["size"] >= 50_000_000:
                    cell += f" ({ok[0]['size'] / 1e6 / statistics.median(walls):.0f} MB/s)"
                cells.append(cell)
            cpu = " / ".join(f"{statistics.median(r[f'{s}_cpu'] for r in ok):.2f}" for s in ("push", "pull"))
            rss = " / ".join(f"{statistics.median(r[f'{s}_rss'] for r in ok):.0f}" for s in ("push", "pull"))
            out.append(f"| {case} | {tool} | {cells[0]} | {cells[1]} | {cpu} | {rss} |")
        for r in bad:
            out.append(f"| {case} | {tool} | failed: {r['failed']} | | | |")
    note = (f"Times: min / median of {runs} runs (MB/s from the median); CPU (user + system) and peak RSS: "
            "medians." if runs > 1 else "One run (no min / median: a smoke run).")
    return "\n".join(out) + "\n\n" + note


def text_block(o: Outcome) -> str:
    if o.bench.kind == "table" and "Over " in o.text:
        return o.text
    found = tables(o.text)
    if found:
        return "\n\n".join("\n".join(t) for t in found)
    return "```text\n" + o.text.strip() + "\n```"


def block(o: Outcome, facts: dict) -> str:
    b = o.bench
    head = (f"*Generated by `python bench/run.py{' --quick' if facts['quick'] else ''}` on {facts['date']} "
            f"(escale {facts['commit']}); "
            f"`{b.script} {' '.join(a for a in o.args if not a.startswith(('/', '--json')))}`; "
            f"peer: {b.peer}; "
            f"load average {o.load[0]:.1f} → {o.load[1]:.1f}; {o.seconds:.0f} s.*")
    if o.status != "ran":
        return f"*Not measured on {facts['date']}: {o.status}, {o.reason}.*"
    body = pairs_block(o) if b.kind == "pairs" else text_block(o)
    return head + "\n\n" + body + (f"\n\n{o.versions.strip()}" if o.versions.strip() else "")


# ----------------------------------------------------------------------------- machine


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out[0] if out else ""


def _module_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - not installed
        return ""


def machine_facts(quick: bool) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    commit = _first_line(["git", "-C", str(ROOT), "log", "-1", "--format=%h (%cd)", "--date=short"]) or "?"
    if _first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]):
        commit += " + uncommitted changes"
    servers = [_first_line(["rclone", "version"]), _first_line(["apache2", "-v"]),
               ("SeaweedFS " + _first_line(["weed", "version"])) if shutil.which("weed") else ""]
    servers += [f"{m} {v}" for m in ("wsgidav", "cheroot", "moto", "pyftpdlib", "asyncssh", "paramiko", "boto3",
                                     "google-api-python-client") if (v := _module_version(m))]
    return {"date": f"{_now():%Y-%m-%d %H:%M} UTC", "cpu": cpu, "cores": os.cpu_count(), "mem": mem,
            "kernel": platform.release(), "python": platform.python_version(), "commit": commit,
            "versions": [s for s in servers if s], "load": os.getloadavg(), "quick": quick}


def header_block(facts: dict, outcomes: list[Outcome], args, seconds: float, load_after) -> str:
    la, lb = facts["load"], load_after
    ran = [o.bench.name for o in outcomes if o.status == "ran"]
    lines = [
        f"*Generated by `python bench/run.py{' --quick' if args.quick else ''}` on {facts['date']}.*",
        "",
        f"- Machine: {facts['cpu']}, {facts['cores']} cores, {facts['mem']} MiB of memory, Linux "
        f"{facts['kernel']}, loopback network, local disk; clients and servers share the cores.",
        f"- **Load average** (1/5/15 min): {la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} before, {lb[0]:.1f} / "
        f"{lb[1]:.1f} / {lb[2]:.1f} after" + (" — a loaded machine: other jobs ran meanwhile, so wall times are noisy; "
                                              "CPU times and peak RSS are steadier" if max(*la, *lb) >= 0.5 * facts["cores"]
                                              else "") + ".",
        f"- escale {facts['commit']}, Python {facts['python']}.",
        f"- Versions: {', '.join(facts['versions'])}.",
        f"- Runs: {'1 (--quick: small sizes, a smoke run, not figures to quote)' if args.quick else args.runs} "
        f"per case; {seconds / 60:.0f} min in all. Ran: {', '.join(ran) or 'nothing'}.",
    ]
    if args.runs_of:
        lines.append("- Other run counts: " + ", ".join(f"{k} {v}" for k, v in args.runs_of.items()) + ".")
    for o in outcomes:
        if o.status != "ran":
            lines.append(f"- **{o.bench.name} {o.status}**: {o.reason}.")
    left = [b.name for b in SUITE if b.name not in {o.bench.name for o in outcomes}]
    if left:
        lines.append(f"- **Not selected in this run** (their blocks keep earlier, dated figures): {', '.join(left)}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- targets (issue 16)


IDLE_ROW = re.compile(r"CPU ([\d.]+) / ([\d.]+) s, peak RSS (\d+) / (\d+) MiB")


def idle_rows(o: Outcome | None) -> dict[str, tuple[float, float, int, int]]:
    """bench_idle's rows (first two cells, lowercased) -> (CPU min, CPU median, RSS min, RSS median)."""
    found = {}
    for line in (o.text if o and o.status == "ran" else "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = IDLE_ROW.search(line)
        if len(cells) >= 3 and m:
            found[f"{cells[0]} | {cells[1]}".lower()] = (float(m[1]), float(m[2]), int(m[3]), int(m[4]))
    return found


def _find(rows: dict, *words: str):
    return next((v for k, v in rows.items() if all(w in k for w in words)), None)


def _cpu(v) -> str:
    return f"CPU {v[0]:.2f} / {v[1]:.2f} s, {v[3]} MiB" if v else "not measured"


def _not(name: str, by: dict) -> str:
    o = by.get(name)
    return f"not measured ({name}: {o.status + ', ' + o.reason if o else 'not selected'})"


def target_rows(by: dict[str, Outcome]) -> list[tuple[str, str, str, str, str]]:
    """(what, escale, peer, target, met?) for every target row of issue 16, from this run."""
    rows = []
    idle = idle_rows(by.get("idle"))
    small = idle_rows(by.get("idle-small"))
    # requests per idle cycle and at start-up: every backend (bench_requests), else bench_idle's
    counted = next((by[n].text for n in ("requests", "idle") if n in by and by[n].status == "ran"
                    and "requests, " in by[n].text), "")
    for line in counted.splitlines():
        m = re.search(r"\|\s*requests, ([^|]+?)\s*\|.*?start-up \+ first cycle (\d+).*?idle cycle (\d+)", line)
        if m:
            start, cyc = int(m[2]), int(m[3])
            rows.append((f"requests per idle cycle / at start-up, {m[1]}", f"{cyc} / {start}", "—",
                         "≤ 2 / ≤ 6", _met(cyc <= 2 and start <= 6)))
    if not rows:
        rows.append(("requests per idle cycle / at start-up", _not("requests", by), "—", "≤ 2 / ≤ 6", "?"))
    files = _files(by.get("idle"))
    e, r = _find(idle, "idle --once", "escale"), _find(idle, "idle --once", "rclone")
    rows.append((f"idle `--once`, {files or 'many'} files, file:// (CPU min / median, peak RSS median)",
                 _cpu(e) if e else _not("idle", by), _cpu(r) + " (`rclone sync --dry-run`)" if r else "—",
                 "≤ 1 s CPU, ≤ 100 MiB", _met(e[1] <= 1 and e[3] <= 100) if e else "?"))
    e2, r2 = _find(small, "idle --once", "escale"), _find(small, "idle --once", "rclone")
    files2 = _files(by.get("idle-small"))
    if e and e2 and files and files2 and files != files2:
        per = (e[3] - e2[3]) * 1024 / (files - files2)
        peer = f"{(r[3] - r2[3]) * 1024 / (files - files2):.2f} KiB/file" if r and r2 else "—"
        rows.append((f"memory per synced file (peak RSS of idle `--once`, {files2} → {files} files)",
                     f"{per:.2f} KiB/file ({e2[3]} → {e[3]} MiB)", peer, "≤ 0.3 KiB/file (1,000,000 files < 300 MiB)",
                     _met(per <= 0.3)))
    else:
        rows.append(("memory per synced file", _not("idle-small", by), "—", "≤ 0.3 KiB/file", "?"))
    rows.append(scale_row(by))
    rows.append(watch_row(by))
    rv = _find(idle, "rclone version")
    e = _find(idle, "encrypted", "later")
    rows.append(("encrypted `--once` after the first run", _cpu(e) if e else _not("idle", by),
                 _cpu(rv) + " (`rclone version`)" if rv else "—", "≤ 0.3 s CPU, ≤ 60 MiB",
                 _met(e[1] <= 0.3 and e[3] <= 60) if e else "?"))
    e = _find(idle, "escale --version")
    rows.append(("`escale --version`", _cpu(e) if e else _not("idle", by),
                 _cpu(rv) + " (`rclone version`)" if rv else "—", "≤ 0.1 s CPU", _met(e[1] <= 0.1) if e else "?"))
    for name, what in (("s3-seaweedfs", "S3 (SeaweedFS)"), ("webdav-apache", "WebDAV (Apache)")):
        rows.append(big_row(by, name, what))
    rows.append(small_row(by))
    rows.append(local50k_row(by))
    return rows


SCALE_ROW = re.compile(r"\|\s*(first push|first pull|collect \(snapshot\)|idle), (\d+) files[^|]*\|[^|]*\|\s*wall ([\d.]+) s, "
                       r"CPU ([\d.]+) s, peak RSS (\d+) MiB")


def scale_row(by: dict) -> tuple:
    """bench_idle --only scale: peak RSS of the first push, first pull, the pusher's next run
    (snapshot and collection) and an idle run of N files."""
    o = by.get("idle-scale")
    got = {m[1]: (int(m[2]), float(m[4]), int(m[5])) for m in SCALE_ROW.finditer(o.text if o else "")}
    target = "< 300 MiB with 1,000,000 files"
    if not got:
        return ("first sync of many files, peak RSS", _not("idle-scale", by), "—", target, "?")
    n = next(iter(got.values()))[0]
    worst = max(v[2] for v in got.values())
    text = ", ".join(f"{k} {v[2]} MiB (CPU {v[1]:.1f} s)" for k, v in got.items())
    met = _met(worst < 300) if n >= 1_000_000 else f"? (measured at {n:,} files, not 1,000,000)"
    return (f"first sync of {n:,} files, file:// (peak RSS; one run)", f"{text}; {worst * 1024 / n:.2f} KiB/file",
            "—", target, met)


WATCH_ROW = re.compile(r"\|\s*(watched|full scan every cycle)[^|]*\|\s*(\d+)\s*\|\s*(\d+) ms\s*\|\s*(\d+)\s*\|"
                       r"\s*(\d+) ms")


def watch_row(by: dict) -> tuple:
    """bench_watch: the daemon's CPU per cycle, watcher-driven against a full scan every cycle."""
    o = by.get("watch")
    got = {m[1]: (int(m[3]), int(m[5])) for m in WATCH_ROW.finditer(o.text if o else "")}
    n = re.search(r"at ([\d,]+) files", o.text if o else "")
    label = f"daemon cycle with the watcher running, {n[1] if n else 'many'} files (CPU per cycle: idle / 1 edit a second)"
    target = "O(changes), not O(files)"
    if "watched" not in got or "full scan every cycle" not in got:
        return (label, _not("watch", by), "—", target, "?")
    (wi, wb), (fi, fb) = got["watched"], got["full scan every cycle"]
    return (label, f"{wi} / {wb} ms", f"{fi} / {fb} ms (the same daemon, `full scan = 0`)", target,
            _met(wi * 10 <= fi and wb * 5 <= fb))


def _files(o: Outcome | None) -> int | None:
    m = re.search(r"idle --once, (\d+) files", o.text if o else "")
    return int(m[1]) if m else None


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _med(rs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rs if "failed" not in r)


def _tool(o: Outcome, case_part: str, tool_start: str) -> list[dict]:
    """The successful runs of the first case containing ``case_part`` run by a tool named so."""
    return next(([r for r in rs if "failed" not in r] for (case, tool), rs in pair_rows(o.records).items()
                 if case_part in case and tool.startswith(tool_start)), [])


def big_row(by: dict, name: str, what: str) -> tuple:
    o = by.get(name)
    label = f"large file, {what}, up / down (MB/s from the median; peak RSS push / pull)"
    e = _tool(o, "one ", "escale (aes") if o and o.status == "ran" else []
    r = _tool(o, "one ", "rclone") if o and o.status == "ran" else []
    if not e:
        return (label, _not(name, by), "—", "≥ rclone both ways, ≤ 100 MiB", "?")
    size = e[0]["size"]
    label = label.replace("large file", f"{size / 2**30:.2f} GiB file" if size >= 2**29 else f"{size / 1e6:.0f} MB file")

    def fig(rs):
        up, down = size / 1e6 / _med(rs, "push_wall"), size / 1e6 / _med(rs, "pull_wall")
        return up, down, f"{up:.0f} / {down:.0f} MB/s, {_med(rs, 'push_rss'):.0f} / {_med(rs, 'pull_rss'):.0f} MiB"

    eu, ed, etext = fig(e)
    if not r:
        return (label, etext + " (aes256gcm)", "rclone failed or absent", "≥ rclone both ways, ≤ 100 MiB", "?")
    ru, rd, rtext = fig(r)
    rss = max(_med(e, "push_rss"), _med(e, "pull_rss"))
    return (label, etext + " (aes256gcm)", rtext + " (crypt)", "≥ rclone both ways, ≤ 100 MiB",
            _met(eu >= ru and ed >= rd and rss <= 100))


def small_row(by: dict) -> tuple:
    o = by.get("webdav-apache")
    label = "small files A → B, WebDAV (Apache), push + pull (median)"
    e = _tool(o, "KiB", "escale (aes") if o and o.status == "ran" else []
    r = _tool(o, "KiB", "rclone") if o and o.status == "ran" else []
    if not e or not r:
        return (label, _not("webdav-apache", by), "—", "≥ 10× tuned rclone", "?")
    label = label.replace("small files", e[0]["case"])
    et = statistics.median(x["push_wall"] + x["pull_wall"] for x in e)
    rt = statistics.median(x["push_wall"] + x["pull_wall"] for x in r)
    return (label, f"{et:.2f} s (aes256gcm)", f"{rt:.2f} s (crypt, pacer 0); rclone / escale = {rt / et:.2f}",
            "≥ 10× tuned rclone", _met(rt / et >= 10))


def local50k_row(by: dict) -> tuple:
    """From the 50,000-file bench; without it, from the file:// bench's small files (the label
    gives the count)."""
    o = by.get("local-50k")
    if not (o and o.status == "ran") and by.get("local") and by["local"].status == "ran":
        o = by["local"]
    e = _tool(o, "KiB", "escale") if o and o.status == "ran" else []
    r = _tool(o, "KiB", "rclone") if o and o.status == "ran" else []
    if not e:
        return ("first sync of many small files, file://", _not("local-50k", by), "—", "pull ≤ push × 2", "?")
    push, pull = _med(e, "push_wall"), _med(e, "pull_wall")
    peer = f"push {_med(r, 'push_wall'):.2f} s, pull {_med(r, 'pull_wall'):.2f} s" if r else "—"
    return (f"{e[0]['case']} first sync, file:// (median)", f"push {push:.2f} s, pull {pull:.2f} s "
            f"(pull = push × {pull / push:.2f})", peer, "pull ≤ push × 2", _met(pull <= 2 * push))


#: a target row (by a word of its label) -> a word of the hand-written section that analyses it
ANALYSIS = (("daemon cycle", "watcher"), ("requests", "idle cycle"), ("idle", "idle cycle"), ("memory", "idle cycle"), ("start", "idle cycle"), ("encrypted", "idle cycle"),
            ("version", "idle cycle"), ("GiB", "Large files"), ("MB file", "Large files"),
            ("large file", "Large files"), ("KiB", "Small files"), ("small files", "Small files"),
            ("first sync of", "idle cycle"))


BY_HAND = "\n# Measurements and analysis, by hand\n"


def analysis_link(label: str, doc: str) -> str:
    """A link to the hand-written section about a target row (found by its heading, so that a
    renamed section is still found by a word of it), or ""."""
    word = next((w for key, w in ANALYSIS if key in label), None)
    by_hand = doc.split(BY_HAND, 1)[-1]  # the headings of the generated part name benches, not analyses
    heads = [h for h in re.findall(r"^##+ (.+)$", by_hand, re.M) if "Latest run" not in h]
    head = next((h for h in heads if word and word.lower() in h.lower()), None)
    if head is None:
        return ""
    anchor = re.sub(r"[^\w\- ]", "", head.strip().lower()).replace(" ", "-")
    return f"[{head.split('(')[0].strip()}](#{anchor})"


def targets_block(by: dict[str, Outcome], facts: dict, doc: str = "") -> str:
    out = [f"*Generated by `python bench/run.py{' --quick' if facts['quick'] else ''}` on {facts['date']}, from the "
           "bench blocks below (same run); medians unless said otherwise. Where a target is not met, the "
           "section in the last column says what limits it and what was tried.*", "",
           "| what | escale | peer, same run | target | met? | analysis |", "|---|---|---|---|---|---|"]
    out += [f"| {' | '.join(r)} | {analysis_link(r[0], doc)} |" for r in target_rows(by)]
    return "\n".join(out)


# ----------------------------------------------------------------------------- the document


def rewrite(doc: str, blocks: dict[str, str]) -> str:
    """Each block's text between its markers; a block without markers is appended."""
    for name, text in blocks.items():
        rx = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S)
        new = f"<!-- bench:{name} -->\n{text.strip()}\n<!-- /bench:{name} -->"
        if rx.search(doc):
            doc = rx.sub(lambda _m: new, doc, count=1)
        else:
            doc = doc.rstrip("\n") + f"\n\n## {TITLES.get(name, name)} (generated)\n\n{new}\n"
    return doc


TITLES = {b.name: b.title for b in SUITE} | {"header": "Latest run of the suite", "targets": "Issue 16 targets"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one run: a smoke test")
    ap.add_argument("--runs", type=int, default=3, help="runs of each case (default 3)")
    ap.add_argument("--runs-of", default="", metavar="NAME=N,…", help="other run counts for some benches")
    ap.add_argument("--args-of", action="append", default=[], metavar="NAME=ARGS",
                    help="other arguments for a bench (instead of its full-run ones), e.g. "
                         "--args-of 'ftp=--small 1000 --big 100'; the block names what ran")
    ap.add_argument("--only", default="", help="comma-separated bench names (see --list)")
    ap.add_argument("--skip", default="", help="comma-separated bench names not to run")
    ap.add_argument("--doc", default=str(DOC), help="the document to rewrite (default docs/performance.md)")
    ap.add_argument("--no-write", action="store_true", help="print the blocks instead of rewriting the document")
    ap.add_argument("--out", default=None, help="folder for raw results and logs")
    ap.add_argument("--list", action="store_true", help="name the benches and stop")
    args = ap.parse_args()
    if args.list:
        for b in SUITE:
            print(f"{b.name:15} {b.title} ({b.script} {' '.join(b.full)})")
        return
    args.runs_of = {k: int(v) for k, v in (item.split("=") for item in args.runs_of.split(",") if item)}
    args.args_of = {k: shlex.split(v) for k, v in (item.split("=", 1) for item in args.args_of)}
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    unknown = (only | skip | set(args.runs_of) | set(args.args_of)) - {b.name for b in SUITE}
    if unknown:
        raise SystemExit(f"unknown bench: {', '.join(sorted(unknown))} (see --list)")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="escale-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    facts = machine_facts(args.quick)
    t0 = time.monotonic()
    outcomes = []
    for b in SUITE:
        if (only and b.name not in only) or b.name in skip:
            continue
        o = run_bench(b, args, out)
        print(f"[{_now():%H:%M:%S}] {b.name}: {o.status} {o.reason}".rstrip(), file=sys.stderr, flush=True)
        outcomes.append(o)
    by = {o.bench.name: o for o in outcomes}
    blocks = {"header": header_block(facts, outcomes, args, time.monotonic() - t0, os.getloadavg()),
              "targets": targets_block(by, facts, Path(args.doc).read_text() if Path(args.doc).exists() else "")}
    for o in outcomes:
        if o.status == "ran" or not Path(args.doc).exists() or f"<!-- bench:{o.bench.name} -->" not in \
                Path(args.doc).read_text():
            blocks[o.bench.name] = block(o, facts)
        # a bench that did not run keeps its previous figures (dated); the header says why it did not
    (out / "blocks.json").write_text(json.dumps(blocks, indent=1, ensure_ascii=False))
    if args.no_write:
        for name, text in blocks.items():
            print(f"<!-- bench:{name} -->\n{text}\n<!-- /bench:{name} -->\n")
    else:
        doc = Path(args.doc)
        doc.write_text(rewrite(doc.read_text() if doc.exists() else "", blocks))
        print(f"rewrote {doc}", file=sys.stderr)
    print(f"raw results and logs: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
