"""The shape of the code (docs/architecture.md): every module imports alone, imports flow
one way through the layers, a file:// start stays light, and modules stay small.

Real imports in fresh interpreters (subprocesses) and the real source tree; nothing is
mocked.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "escale"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))

#: modules may import only from their own layer or the ones after it (docs/architecture.md)
LAYERS = ["cli", "config", "manager", "sync", "core", "encryption", "relay", "base"]
#: the bottom layer: what the relay backends and the cipher may use themselves
BASE = {"escale", "escale.errors", "escale.values", "escale.confined", "escale.stream"}
#: modules outside escale/cli/ that belong to the command line: escale.status is what
#: `escalectl status` shows and the daemon publishes; it builds Managers, and only the
#: CLI imports it
CLI_SIDE = {"escale.status"}
#: a module longer than this says why in its docstring (a paragraph starting "Length:")
MAX_LINES = 500
#: heavy libraries a file:// repository never needs (escale.relay.webdav imports requests and
#: urllib3 on first use, issue 16)
HEAVY = ("boto3", "botocore", "googleapiclient", "paramiko", "tqdm", "watchdog", "requests", "urllib3")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _layer(module: str) -> str:
    if module in BASE:
        return "base"
    if module in CLI_SIDE:
        return "cli"
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top in ("cli", "__main__"):
        return "cli"
    if top.startswith("config"):
        return "config"
    if top in ("manager", "sync", "encryption", "relay"):
        return top
    return "core"


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The escale modules ``module`` imports (at top or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from . import x` imports the submodule x when there is one
            names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """Each module imported first, with no escale module loaded before it: an import
    cycle that only works in one order, or a missing import, fails here."""
    script = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "escale" or m.startswith("escale.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=3)
print(json.dumps(failures))
"""
    names = sorted(m for m in _modules() if m != "escale.__main__")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(names)], env=ENV, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    failures = json.loads(out.stdout.strip().splitlines()[-1])
    assert failures == {}, "\n".join(f"{m}:\n{tb}" for m, tb in failures.items())
    assert len(names) > 40  # the walk found the package


def test_imports_flow_one_way_through_the_layers():
    graph = _graph()
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = sorted(f"{m} ({_layer(m)}) imports {d} ({_layer(d)})" for m, deps in graph.items() for d in deps
                   if rank[_layer(d)] < rank[_layer(m)])
    assert wrong == [], "imports against the layers cli -> config -> manager -> sync -> core -> encryption " \
                        "-> relay -> base:\n" + "\n".join(wrong)
    # the relay layer in particular: a backend never reaches up into the sync machinery
    relay = {m: deps for m, deps in graph.items() if _layer(m) == "relay"}
    assert relay, "no relay modules found"
    for m, deps in relay.items():
        assert not {d for d in deps if _layer(d) in ("cli", "config", "manager", "sync")}, (m, deps)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if dep.startswith(node + "."):  # a package importing its own submodules is no cycle
                continue
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_a_file_relay_cycle_does_not_import_heavy_libraries(tmp_path):
    folder, relay, state = tmp_path / "folder", tmp_path / "relay", tmp_path / "state"
    folder.mkdir()
    (folder / "a.txt").write_text("light\n")
    conf = tmp_path / "escale.conf"
    conf.write_text(f"cache dir = {state}\n[repo]\nlocal path = {folder}\nrelay address = file://{relay}\n"
                    "client name = light\nencryption = off\n")
    script = """
import json, sys
from escale.cli.daemon import main
code = main(["-q", "--once", "-c", sys.argv[1]])
print(json.dumps([code, sorted(m.split(".")[0] for m in sys.modules)]))
"""
    out = subprocess.run([sys.executable, "-c", script, str(conf)], env=ENV, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    code, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert code == 0, out.stderr
    assert (relay / "escale.json").exists()  # it did sync
    assert "escale" in loaded
    assert sorted(set(HEAVY) & set(loaded)) == []


def test_modules_stay_small_or_say_why():
    long = {}
    for module, path in _modules().items():
        rel = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if "\nLength:" not in "\n" + doc:
            long[rel] = lines
    assert long == {}, (f"modules over {MAX_LINES} lines without a 'Length:' paragraph in their docstring saying "
                        f"why (or split them): {long}")


def test_version_loads_no_configuration_manager_or_relay():
    """`escale --version` answers from the argument parser: nothing heavy is imported (issue 16)."""
    script = """
import json, sys
from escale.cli.daemon import main
try:
    main(["--version"])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0 and "escale " in out.stdout, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "escale.cli.daemon" in loaded
    heavy = [m for m in loaded if m.split(".")[0] in (*HEAVY, "cryptography", "sqlite3")
             or m.startswith(("escale.config", "escale.manager", "escale.sync", "escale.relay"))]
    assert heavy == []
