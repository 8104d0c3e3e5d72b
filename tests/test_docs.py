"""The documentation names only options and commands that exist, and every option exists in
docs/configuration.md (the developers' guide: "docs/ must stay true").

Read from the real sources: the option table the configuration loads (core options plus every
registered backend's ``RelayOption``) and the real argument parsers of ``escale``, ``escale
init`` and ``escalectl``.
"""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from escale.cli import ctl, daemon
from escale.cli import init as cli_init
from escale.config.options import OBSOLETE, RELAY, lookup_option, option_table
from escale.relay import BACKENDS

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
#: every file a user reads commands in
DOC_FILES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "escale.conf.example"]


def backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", text))


# --------------------------------------------------------------------------- options


def test_every_option_the_code_accepts_is_in_configuration_md() -> None:
    """Every spelling of every option (core, obsolete and each backend's) appears in backticks."""
    quoted = backticked(CONFIGURATION.read_text())
    table = option_table()
    assert any(spec.scope == RELAY for spec in table) and any(spec.scope == OBSOLETE for spec in table)
    missing = [f"{spec.field}: {alias}" for spec in table for alias in spec.aliases if alias not in quoted]
    assert missing == [], "document these options in docs/configuration.md"


def test_every_backend_option_is_in_configuration_md() -> None:
    """Read from the backends themselves, not through the table (a backend the table missed)."""
    quoted = backticked(CONFIGURATION.read_text())
    missing = [f"{cls.__name__}: {alias}" for cls in dict.fromkeys(BACKENDS.values())
               for opt in cls.options for alias in opt.aliases if alias not in quoted]
    assert missing == []


def documented_options(text: str) -> list[str]:
    """The names in the first two columns (option, aliases) of every '| option |' table."""
    names: list[str] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("| option |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        if in_table and not line.startswith("|---"):
            cells = line.split("|")[1:3]
            for cell in cells:
                names += [n for n in re.findall(r"`([^`]+)`", cell)]
    return names


def test_every_documented_option_exists() -> None:
    names = documented_options(CONFIGURATION.read_text())
    assert len(names) > 100  # the tables were found
    unknown = [n for n in names if lookup_option(n) is None]
    assert unknown == []


def test_the_table_reader_sees_a_made_up_option() -> None:
    text = "| option | aliases | meaning |\n|---|---|---|\n| `local path` | `path` | x |\n| `no such` | | y |\n"
    names = documented_options(text)
    assert names == ["local path", "path", "no such"]
    assert [n for n in names if lookup_option(n) is None] == ["no such"]


# --------------------------------------------------------------------------- commands


def command_lines(text: str) -> list[str]:
    """Every command shown: inline code spans and lines of indented or fenced blocks that start
    with ``escale`` or ``escalectl``, without a trailing ``# comment`` and line continuation."""
    found = []
    for span in re.findall(r"`([^`\n]+)`", text):
        found.append(span)
    for line in text.splitlines():
        found.append(line.strip().lstrip("#").strip().removeprefix("$ "))
    commands = []
    for cmd in found:
        m = re.match(r"(escalectl|escale)(\s.*)?$", cmd)
        if m:
            cmd = re.split(r"\s+#\s", cmd)[0].rstrip("\\ ").strip()
            commands.append(cmd)
    return commands


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def problems(command: str) -> list[str]:
    """What in one documented command line the real parsers do not accept."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    words = [w for w in words if not re.fullmatch(r"[\[\]|/.…]+", w)]
    words = [w.strip("[]") for w in words]
    if words[0] == "escalectl":
        parser = ctl.build_parser()
        rest = words[1:]
        while rest[:1] and rest[0].startswith("-"):  # escalectl -c FILE ...
            if rest[0] not in flags(parser):
                return [f"{command!r}: escalectl has no {rest[0]}"]
            rest = rest[2:] if rest[0] in ("-c", "--config") else rest[1:]
        if not rest:
            return []
        commands = subparsers(parser)
        if rest[0] not in commands:
            return [f"{command!r}: no escalectl subcommand {rest[0]!r} (there are {', '.join(commands)})"]
        parser, rest = commands[rest[0]], rest[1:]
    elif words[1:2] in (["init"], ["-i"]):
        parser, rest = cli_init.build_parser(), words[2:]
    else:
        parser, rest = daemon.build_parser(), words[1:]
    known = flags(parser)
    return [f"{command!r}: {parser.prog} has no {w}" for w in rest
            if re.fullmatch(r"--?[a-zA-Z][a-zA-Z-]*", w) and w.split("=")[0] not in known]


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_every_documented_command_exists(doc: Path) -> None:
    bad = [p for cmd in command_lines(doc.read_text()) for p in problems(cmd)]
    assert bad == []


def test_every_escalectl_subcommand_is_documented() -> None:
    text = "\n".join(p.read_text() for p in DOC_FILES)
    shown = {c.split()[1] for c in command_lines(text) if c.startswith("escalectl ") and len(c.split()) > 1}
    assert set(subparsers(ctl.build_parser())) - shown == set()


def test_the_command_reader_catches_made_up_commands() -> None:
    text = ("Run `escalectl status --json` or\n\n    escalectl frobnicate -r x   # no such thing\n"
            "and `escale --once --turbo`, `escale init --folder ~/x --colour`.\n")
    cmds = command_lines(text)
    assert cmds == ["escalectl status --json", "escale --once --turbo", "escale init --folder ~/x --colour",
                    "escalectl frobnicate -r x"]
    found = [p for c in cmds for p in problems(c)]
    assert len(found) == 3
    assert "--turbo" in found[0] and "--colour" in found[1] and "no escalectl subcommand 'frobnicate'" in found[2]


# --------------------------------------------------------------------------- cited tests


def cited_tests(text: str) -> list[tuple[str | None, str, bool]]:
    """(file or None, test name, is a prefix) of every test a text cites: ``test_x``,
    ``test_file.py::test_x`` or a prefix written ``test_x_…``."""
    return [(m["file"], m["name"], bool(m["more"]))
            for m in re.finditer(r"(?:(?:tests/)?(?P<file>test_\w+\.py)::)?\b(?P<name>test_\w+)\b(?!\.py)(?P<more>…)?",
                                 text)]


def missing_tests(text: str, defined: dict[str, set[str]]) -> list[str]:
    bad = []
    for file, name, prefix in cited_tests(text):
        where = {f for n, fs in defined.items() if (n.startswith(name) if prefix else n == name) for f in fs}
        if not where or (file is not None and file not in where):
            bad.append(f"{file + '::' if file else ''}{name}{'…' if prefix else ''}")
    return bad


def defined_tests() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in (ROOT / "tests").glob("test_*.py"):
        for m in re.finditer(r"^(?:    )?def (test_\w+)", f.read_text(), re.M):
            found.setdefault(m[1], set()).add(f.name)
    return found


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_every_cited_test_exists(doc: Path) -> None:
    """The threat model and others prove their claims by naming tests: the names must hold."""
    assert missing_tests(doc.read_text(), defined_tests()) == []


def test_the_citation_reader_catches_a_renamed_test() -> None:
    defined = {"test_a_b": {"test_x.py"}, "test_c": {"test_y.py"}}
    text = "`test_x.py::test_a_b`, `test_a_…`, `test_y.py::test_a_b`, `test_gone`, `test_c`, test_q.py alone"
    assert missing_tests(text, defined) == ["test_y.py::test_a_b", "test_gone"]


# --------------------------------------------------------------------------- named files and objects


def named_files(text: str) -> list[str]:
    """Source files a text names: ``escale/…py``, ``tests/…py``, ``bench/…py``, ``escale/data/…``."""
    return re.findall(r"(?<![\w/.])((?:escale|tests|bench)/[\w./-]*\.(?:py|service))\b", text)


def named_objects(text: str) -> list[str]:
    """Dotted names a text gives in code spans: ``escale.config.set_option``, ``escale.relay.WebDAV.usage()``."""
    return [m for m in re.findall(r"`(escale(?:\.\w+)+)(?:\(\))?`", text) if m not in ("escale.json", "escale.conf", "escale.conf.example")]


def resolves(dotted: str) -> bool:
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_every_named_file_and_object_exists(doc: Path) -> None:
    text = doc.read_text()
    assert [f for f in named_files(text) if not (ROOT / f).exists()] == []
    assert [o for o in named_objects(text) if not resolves(o)] == []


def test_the_name_readers_catch_a_moved_module() -> None:
    text = "see `escale/relay/webdav.py`, escale/gone.py and `escale.config.set_option`, `escale.config.nothing`"
    assert named_files(text) == ["escale/relay/webdav.py", "escale/gone.py"]
    assert [f for f in named_files(text) if not (ROOT / f).exists()] == ["escale/gone.py"]
    assert [o for o in named_objects(text) if not resolves(o)] == ["escale.config.nothing"]


# --------------------------------------------------------------------------- documented defaults

#: an address each backend can be built from without reaching anything
ADDRESSES = {"file": "file:///tmp/escale-test-docs/relay", "webdav": "https://127.0.0.1:1/dav",
             "s3": "s3://bucket-docs/p", "googledrive": "gdrive:///escale/docs", "ftp": "ftps://127.0.0.1:1/x",
             "sftp": "sftp://127.0.0.1:1/x"}


def documented_row(text: str, heading: str, option: str) -> list[str] | None:
    """The cells of ``option``'s row in the table under ``### <heading>``."""
    part = re.search(rf"^###\s+{re.escape(heading)}\s*\n(.*?)(?=^#{{1,3}}\s|\Z)", text, re.M | re.S | re.I)
    if part is None:
        return None
    for line in part.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == f"`{option}`":
            return cells
    return None


@pytest.mark.parametrize("label", sorted(ADDRESSES) + ["rclone"])
def test_documented_max_retries_default_is_the_backends(label: str) -> None:
    """The 'default' column of each backend's `max retries` row is what the backend uses."""
    from escale.relay import backend_for

    text = CONFIGURATION.read_text()
    cells = documented_row(text, f"{'WebDAV' if label == 'webdav' else label} relays", "max retries")
    assert cells is not None, f"no `max retries` row under '### {label} relays'"
    # columns: option | aliases | key | type | default | meaning
    documented = int(cells[4])
    if label == "rclone":  # rclone's requests go through the WebDAV backend, with its retries
        built = backend_for("https")(ADDRESSES["webdav"], max_retries=None)
    else:
        built = backend_for(ADDRESSES[label].partition(":")[0])(ADDRESSES[label])
    assert built.retry.max_retries == documented


def test_the_row_reader_finds_a_backends_row() -> None:
    text = ("### s3 relays\n\n| option | aliases | key | type | default | meaning |\n|---|---|---|---|---|---|\n"
            "| `max retries` | | `max_retries` | int ≥ 0 | 9 | x |\n### ftp relays\n| `max retries` | | | | 5 | y |\n")
    assert documented_row(text, "s3 relays", "max retries")[4] == "9"
    assert documented_row(text, "ftp relays", "max retries")[4] == "5"
    assert documented_row(text, "sftp relays", "max retries") is None
