"""bench/bench_bigfile.py --code DIR runs escale from DIR, not from the tree the bench is
started in (``python -m escale`` puts the working folder first on sys.path: started from
the repository root, every --code run used to run the root's code)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_code_tree_is_the_code_that_runs(tmp_path) -> None:
    fake = tmp_path / "fake"
    (fake / "escale").mkdir(parents=True)
    (fake / "escale" / "__init__.py").write_text("")
    (fake / "escale" / "__main__.py").write_text("import sys\nsys.exit('fake escale tree ran')\n")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_bigfile.py"), "--relay", "file", "--size-mb", "1",
                        "--no-rclone", "--code", str(fake), "--tmp", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode != 0, "the fake tree's escale did not run: the bench ran another tree's code"
    assert "fake escale tree ran" in r.stdout + r.stderr
