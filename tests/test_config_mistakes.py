"""Ordinary configuration mistakes (issue 8, points 6, 7, 8, 9 and 13) and the shipped examples.

Each mistake must stop with a configuration error (exit 3) naming the option, never
silently weaken encryption; the README's, docs' and example file's INI blocks must load
as written. Everything runs through the real loader or the real CLI.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import Cluster
from escale.config import OBSOLETE, OPTIONS, load_config, lookup_option, parse_config_text, set_option
from escale.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def plain_text(conf: Path) -> str:
    """The client's config without the 'encryption = off' the test cluster adds."""
    return conf.read_text().replace("encryption = off\n", "")


# --------------------------------------------------------------------------- 6. passphrase


def test_mistyped_passphrase_path_is_exit_3(tmp_path):
    """README's own line, with the file not made (or the path mistyped): exit 3, never a key."""
    cl = Cluster(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    cl.env["HOME"] = str(home)
    a = cl.add("a", extra="passphrase = ~/.config/escale/documents.passphrase   # chmod 600; same on every machine\n")
    a.write("f.txt", "secret contents")
    r = a.once(check=False)
    assert r.code == 3, r
    assert "[repo] option 'passphrase'" in r.err and "does not exist" in r.err, r
    assert str(home / ".config/escale/documents.passphrase") in r.err and "text:" in r.err, r
    assert "Traceback" not in r.err and not cl.relay.exists()


def test_passphrase_bare_word_names_a_file_and_is_not_shown(tmp_path):
    cl = Cluster(tmp_path)
    a = cl.add("a", extra="passphrase = documentspassphrase\n")
    r = a.once(check=False)
    assert r.code == 3 and "option 'passphrase'" in r.err and "names no existing file" in r.err, r
    assert "documentspassphrase" not in r.err and not cl.relay.exists()
    # a file of that name beside the configuration file is what it means
    pw = tmp_path / "documentspassphrase"
    pw.write_text("words in a file\n")
    pw.chmod(0o600)
    a.write("f.txt", "x")
    a.once()
    assert "scrypt" in (cl.relay / "escale.json").read_text()


def test_text_passphrase_is_the_passphrase(tmp_path):
    cl = Cluster(tmp_path)
    a = cl.add("a", extra="passphrase = text: correct horse battery staple   # a comment\n")
    b = cl.add("b", extra="passphrase = text:correct horse battery staple\n")
    a.write("f.txt", "hello")
    cl.round("a", "b")
    assert b.path("f.txt").read_text() == "hello"
    c = cl.add("c", extra="passphrase = text:correct horse battery stable\n")
    r = c.once(check=False)
    assert r.code == 3 and "wrong passphrase" in r.err, r
    assert "empty passphrase" in str(_config_error("passphrase = text:   \n"))


def _config_error(extra: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config_text(f"[r]\nlocal path = /tmp/escale-t/l\nrelay address = /tmp/escale-t/r\n{extra}",
                          "/tmp/escale-t/escale.conf")
    assert info.value.exit_code == 3
    return info.value


# --------------------------------------------------------------------------- 7. inline comments

#: a valid value for every option, in a plaintext file relay section ...
PLAIN = {
    "local path": "/tmp/escale-t/local", "relay address": "file:///tmp/escale-t/relay",
    "relay directory": "sub", "port": "2121", "client name": "laptop", "mode": "upload",
    "push only": "no", "pull only": "no", "refresh": "12", "full scan": "600", "disk quota": "2GB",
    "puller count": "2",
    "include": "*.txt, *.md", "exclude": "*.tmp, a#b, c;d", "file extension": ".jpg, png",
    "include directory": "docs", "exclude directory": "build", "checksum": "sha512",
    "checksum cache": "no", "index": "topdir:2", "maxpagesize": "50MB", "encryption": "off",
    "user": "alice", "password": "s3cr3t", "trash retention": "7", "modification time": "yes",
    "verbosity": "2", "strict permissions": "no", "max delete": "20%",
    "repository id": "0123456789abcdef0123456789abcdef", "on error": "logger -t escale failed",
}
#: ... in an encrypted one ...
SECRET = {"local path": "/tmp/escale-t/local", "relay address": "/tmp/escale-t/relay",
          "passphrase": "text:correct horse", "encryption": "chacha20poly1305", "padding": "yes"}
#: ... in an s3 one (the relay options) ...
S3 = {"local path": "/tmp/escale-t/local", "relay address": "s3://escale-relay/p", "encryption": "off",
      "endpoint": "http://127.0.0.1:8333", "region": "eu-west-3", "profile": "work", "create bucket": "yes",
      "part size": "8MiB", "ssl version": "TLSv1_2", "verify ssl": "no", "certfile": "/etc/ssl/c.pem",
      "keyfile": "/etc/ssl/c.key", "max retries": "3", "rclone binary": "/usr/bin/rclone",
      "drive binary": "/usr/bin/drive", "access key": "AK", "secret key": "SK"}
#: ... in a Google Drive one ...
GDRIVE = {"local path": "/tmp/escale-t/local", "relay address": "gdrive:///escale/p", "encryption": "off",
          "api endpoint": "http://127.0.0.1:8080/", "app data folder": "no", "client secrets": "~/g.json",
          "service account": "/etc/escale/sa.json", "token file": "/tmp/escale-t/token.json",
          "chunk size": "4MiB", "max retries": "4"}
#: ... in an ftp one ...
FTP = {"local path": "/tmp/escale-t/local", "relay address": "ftps://alice@ftp.example.org/escale",
       "encryption": "off", "tls mode": "implicit", "passive": "no", "timeout": "30", "max retries": "2",
       "layout": "nested"}
#: ... in an sftp one ...
SFTP = {"local path": "/tmp/escale-t/local", "relay address": "sftp://alice@ssh.example.org:2222/srv/escale",
        "encryption": "off", "key file": "~/.ssh/id_ed25519", "key passphrase": "kp",
        "known hosts": "/tmp/escale-t/known_hosts", "ssh config": "/tmp/escale-t/ssh_config", "max retries": "2",
        "max object size": "64MiB"}
#: ... in an rclone one ...
RCLONE = {"local path": "/tmp/escale-t/local", "relay address": "rclone://dropbox:escale/p", "encryption": "off",
          "rclone binary": "/usr/bin/rclone", "rclone config": "/tmp/escale-t/rclone.conf", "max retries": "1"}
#: ... and before the first section
GLOBALS = {"cache dir": "/tmp/escale-t/cache", "log file": "/tmp/escale-t/escale.log", "log level": "DEBUG",
           "log rotate": "2", "log format": "json"}
COMMENTS = ["   # a note", "\t; a note", " #", " ;x # y"]


def _text(globals_: dict[str, str], section: dict[str, str], commented: str | None, comment: str) -> str:
    def line(k: str, v: str) -> str:
        return f"{k} = {v}{comment if k == commented else ''}\n"
    return "".join(line(k, v) for k, v in globals_.items()) + "[r]\n" + "".join(
        line(k, v) for k, v in section.items())


def test_every_option_is_covered_by_the_comment_test():
    covered = {k for d in (PLAIN, SECRET, S3, GDRIVE, FTP, SFTP, RCLONE, GLOBALS) for k in d}
    assert all(lookup_option(k) is not None for k in covered)
    missing = {spec.name for spec in OPTIONS if spec.scope != OBSOLETE and not set(spec.aliases) & covered}
    assert missing == set()


@pytest.mark.parametrize("comment", COMMENTS)
@pytest.mark.parametrize("block,option", [(name, k) for name, d in
                                          (("plain", PLAIN), ("secret", SECRET), ("s3", S3), ("gdrive", GDRIVE),
                                           ("ftp", FTP), ("sftp", SFTP), ("rclone", RCLONE), ("globals", GLOBALS))
                                          for k in d])
def test_inline_comment_is_never_part_of_a_value(block: str, option: str, comment: str):
    """One rule for every option: whitespace then '#' or ';' starts a comment."""
    globals_ = GLOBALS if block == "globals" else {}
    section = {"globals": PLAIN, "plain": PLAIN, "secret": SECRET, "s3": S3, "gdrive": GDRIVE, "ftp": FTP,
               "sftp": SFTP, "rclone": RCLONE}[block]
    path = "/tmp/escale-t/escale.conf"
    expected = parse_config_text(_text(globals_, section, None, ""), path)
    got = parse_config_text(_text(globals_, section, option, comment), path)
    assert got == expected


def test_hash_without_space_stays_in_the_value():
    r = parse_config_text(_text({}, PLAIN, None, ""), "/tmp/escale-t/escale.conf").repositories["r"]
    assert r.exclude == ["*.tmp", "a#b", "c;d"]


# --------------------------------------------------------------------------- 8. plaintext by default


def test_copied_example_with_global_encryption_off_is_exit_3(tmp_path):
    """0.7's example set 'encryption = off' globally: adding a passphrase gave plaintext."""
    cl = Cluster(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("my passphrase\n")
    pw.chmod(0o600)
    a = cl.add("a", extra=f"passphrase = {pw}\n")
    a.conf.write_text("encryption = off\n" + a.conf.read_text())
    a.write("f.txt", "secret contents")
    r = a.once(check=False)
    assert r.code == 3 and "option 'encryption'" in r.err and "before the first section" in r.err, r
    assert not cl.relay.exists()


def test_section_without_passphrase_or_encryption_off_is_exit_3(tmp_path):
    cl = Cluster(tmp_path)
    a = cl.add("a")
    a.conf.write_text(plain_text(a.conf))
    a.write("f.txt", "secret contents")
    r = a.once(check=False)
    assert r.code == 3 and "[repo] option 'passphrase'" in r.err, r
    assert "'encryption = off' in this section" in r.err and "passphrase = ~/.config/escale/" in r.err, r
    assert not cl.relay.exists()
    # the fix it names works
    a.conf.write_text(a.conf.read_text() + "encryption = off\n")
    r = a.once()
    assert "encryption is off" in r.err


def test_library_manager_without_passphrase_is_refused(tmp_path):
    """escale 0.7's API, ``Manager(LocalMount, repository=..., address=...)``, was plaintext
    when given no passphrase (a warning only): the library weakened encryption silently where a
    configuration file could not. It is refused, naming the option; ``encryption="off"`` runs."""
    from escale.errors import ConfigError
    from escale.manager import Manager
    from escale.relay import LocalMount

    folder, relay = tmp_path / "docs", tmp_path / "relay"
    folder.mkdir()
    (folder / "f.txt").write_text("secret contents")
    with pytest.raises(ConfigError, match="passphrase") as exc:
        Manager(LocalMount, repository=str(folder), address=f"file://{relay}", name="lib",
                state_dir=str(tmp_path / "state"))
    assert "encryption='off'" in str(exc.value)
    assert not relay.exists()
    m = Manager(LocalMount, repository=str(folder), address=f"file://{relay}", name="lib",
                state_dir=str(tmp_path / "state"), encryption="off")
    assert m.run(once=True).sent == 1


def test_passphrase_and_encryption_off_contradict(tmp_path):
    cl = Cluster(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("my passphrase\n")
    pw.chmod(0o600)
    a = cl.add("a", extra=f"passphrase = {pw}\nencryption = off\n")
    a.write("f.txt", "secret contents")
    r = a.once(check=False)
    assert r.code == 3 and "option 'encryption'" in r.err and "contradicts the 'passphrase'" in r.err, r
    assert not cl.relay.exists()


# --------------------------------------------------------------------------- 9. secrets readable by others


def _modes(base: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirs, files in os.walk(base):
        for n in dirs + files:
            p = Path(dirpath) / n
            out[str(p.relative_to(base))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def test_state_is_private_whatever_the_umask(tmp_path):
    cl = Cluster(tmp_path)
    a = cl.add("a")
    a.write("f.txt", "x")
    old = os.umask(0o002)  # the children inherit it: as open as a shared-group setup
    try:
        a.once()
        r = subprocess.run([sys.executable, "-m", "escale.cli.ctl", "-c", str(a.conf), "access",
                            str(a.path("f.txt")), "r-"], capture_output=True, text=True, env=cl.env)
        assert r.returncode == 0, r
    finally:
        os.umask(old)
    modes = _modes(a.state)
    assert any(k.endswith("state.sqlite") for k in modes) and any(k.endswith("access.db") for k in modes)
    bad = {k: oct(m) for k, m in modes.items()
           if m != (0o700 if (a.state / k).is_dir() else 0o600)}
    assert bad == {}
    # the repository's state folder left open by an older version is tightened when next opened
    repo_state = next(p for p in a.state.rglob("state.sqlite")).parent
    for p in [repo_state, *repo_state.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    a.once()
    bad = {k: oct(m) for k, m in _modes(a.state).items()
           if m != (0o700 if (a.state / k).is_dir() else 0o600)}
    assert bad == {}


def test_config_holding_a_secret_readable_by_others_is_exit_3(tmp_path):
    cl = Cluster(tmp_path)
    a = cl.add("a", extra="passphrase = text:correct horse battery staple\n")
    a.write("f.txt", "x")
    a.conf.chmod(0o644)
    r = a.once(check=False)
    assert r.code == 3, r
    assert "[repo] option 'passphrase'" in r.err and "can be read by other users" in r.err, r
    assert "chmod 600" in r.err and "correct horse" not in r.err and not cl.relay.exists()
    a.conf.chmod(0o600)
    a.once()
    # allowed, with a warning, when the section says so
    a.conf.write_text(a.conf.read_text() + "strict permissions = no\n")
    a.conf.chmod(0o644)
    r = a.once()
    assert "can be read by other users" in r.err


def test_config_holding_a_password_readable_by_others_is_refused(tmp_path):
    conf = tmp_path / "escale.conf"
    conf.write_text("[r]\nlocal path = /tmp/escale-t/l\nrelay address = /tmp/escale-t/r\nencryption = off\n"
                    "user = me\npassword = hunter2\n")
    conf.chmod(0o640)
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    assert info.value.option == "password" and "hunter2" not in str(info.value)
    conf.chmod(0o600)
    assert load_config(conf).repositories["r"].password == "hunter2"


# --------------------------------------------------------------------------- 13. local path is a file


@pytest.mark.parametrize("under", [False, True])
def test_local_path_is_a_file_is_exit_3(tmp_path, under):
    cl = Cluster(tmp_path)
    a = cl.add("a")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "sub" if under else blocker
    a.conf.write_text(a.conf.read_text().replace(f"local path = {a.folder}", f"local path = {target}"))
    r = a.once(check=False)
    assert r.code == 3, r
    assert "[repo] option 'local path'" in r.err and f"{blocker} is not a folder" in r.err, r
    assert "Traceback" not in r.err and blocker.read_text() == "not a folder"


# --------------------------------------------------------------------------- the shipped examples

_SECRET_OPTIONS = re.compile(r"^\s*(passphrase|key|password|secret|secret file|credential|secret key|"
                             r"secret access key|aws secret access key)\s*[=:]\s*(\S+)", re.M)


def ini_blocks() -> list[tuple[str, str]]:
    """Every ```ini block of README.md and docs/*.md, the example file, and its commented sections."""
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, m in enumerate(re.finditer(r"^```ini\n(.*?)^```", doc.read_text(), re.M | re.S)):
            out.append((f"{doc.relative_to(ROOT)}#{i + 1}", m.group(1)))
    example = (ROOT / "escale.conf.example").read_text()
    out.append(("escale.conf.example", example))
    for m in re.finditer(r"^#\[(.+)\]\n((?:#\w.*\n)+)", example, re.M):
        body = "".join(line[1:] + "\n" for line in m.group(2).splitlines())
        out.append((f"escale.conf.example [{m.group(1)}] uncommented", f"[{m.group(1)}]\n{body}"))
    return out


def test_there_are_ini_blocks_to_check():
    names = [n for n, _ in ini_blocks()]
    assert any(n.startswith("README.md") for n in names)
    assert sum("uncommented" in n for n in names) >= 2


@pytest.mark.parametrize("name,text", ini_blocks(), ids=[n for n, _ in ini_blocks()])
def test_documented_ini_blocks_load_as_written(tmp_path, monkeypatch, name, text):
    """Loaded by the real loader, with the secret files they name made (chmod 600) in a fresh HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for m in _SECRET_OPTIONS.finditer(text):
        value = m.group(2)
        if value.startswith("~/"):
            f = Path(os.path.expanduser(value))
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("AKIDEXAMPLE:secret\n" if "passphrase" not in m.group(1) and m.group(1) != "key"
                         else "a passphrase\n")
            f.chmod(0o600)
    conf = tmp_path / "escale.conf"
    conf.write_text(text)
    conf.chmod(0o600)
    cfg = load_config(conf)
    assert cfg.repositories
    for r in cfg.repositories.values():
        assert r.encryption != "off" or "encryption = off" in text


def test_quick_start_runs(tmp_path):
    """README: `escale -c escale.conf.example --once`, with its /tmp folders moved into tmp_path."""
    text = (ROOT / "escale.conf.example").read_text().replace("/tmp/escale-example", str(tmp_path / "ex"))
    conf = tmp_path / "escale.conf.example"
    conf.write_text(text)
    (tmp_path / "ex" / "documents").mkdir(parents=True)
    (tmp_path / "ex" / "documents" / "hello.txt").write_text("hello")
    env = dict(os.environ, HOME=str(tmp_path / "home"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "escale", "-c", str(conf), "--once"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r
    assert "1 sent" in r.stdout, r


def test_set_option_keeps_the_comment_and_refuses_a_value_it_would_cut(tmp_path):
    conf = tmp_path / "escale.conf"
    conf.write_text("[r]\nlocal path = /tmp/escale-t/l\nrelay address = /tmp/escale-t/r\n"
                    "encryption = off   # a trusted relay\nmode = shared   # for now\n")
    set_option(conf, "r", "mode", "upload")
    assert "mode = upload   # for now\n" in conf.read_text()
    assert load_config(conf).repositories["r"].mode == "upload"
    with pytest.raises(ConfigError, match="starts a comment"):
        set_option(conf, "r", "exclude", "*.tmp #1")
    assert "exclude" not in conf.read_text()


def test_password_in_the_relay_address_counts_as_a_secret_in_the_file(tmp_path):
    conf = tmp_path / "escale.conf"
    conf.write_text("[r]\nlocal path = /tmp/escale-t/l\nrelay address = https://me:hunter2@dav.example.org/dav\n"
                    "encryption = off\n")
    conf.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    assert info.value.option == "relay address" and "hunter2" not in str(info.value)
    conf.chmod(0o600)
    assert load_config(conf).repositories["r"].password == "hunter2"
