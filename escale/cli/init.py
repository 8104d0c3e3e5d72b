"""``escale init`` (also ``escale -i``, as in escale 0.7): write a configuration file.

Asks for what it was not given on the command line (the folder, the relay address, the
relay's credentials, the passphrase), or, with ``--non-interactive`` (or without a
terminal), refuses to guess and names the missing flag. Secrets never go into the
configuration file itself: the passphrase and a relay password are written to files of
their own beside it (0600), which the configuration names. The configuration is written
0600 in a 0700 folder, loaded back with the same code the daemon uses, and the relay is
then reached once (``--no-test`` skips that).
"""
from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
import time
from pathlib import Path

from ..errors import EXIT_CONFIG, EXIT_OK, EXIT_RELAY, ConfigError, EscaleError

#: 32 letters and digits, none that reads like another (0/o, 1/l): 5 bits each
ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
#: groups of 5 characters: 8 × 25 bits = 200 bits of entropy
GROUPS = 8


def generate_passphrase() -> str:
    """A passphrase made to be carried in a file, not remembered: 200 random bits in
    groups of five (the dashes keep it from ever being read as a base64 raw key)."""
    return "-".join("".join(secrets.choice(ALPHABET) for _ in range(5)) for _ in range(GROUPS))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="escale init", description="Write an escale configuration file, "
                                "step by step or from flags, and test the connection to the relay.")
    p.add_argument("-c", "--config", help="file to write (default: ~/.config/escale/escale.conf); "
                                          "an existing file gets a new section")
    p.add_argument("--name", help="repository (section) name (default: the folder's name)")
    p.add_argument("--folder", help="the folder to keep in sync")
    p.add_argument("--relay", help="relay address: /path or file:///path, https://host/path (WebDAV), "
                                   "s3://bucket/prefix, …")
    p.add_argument("--user", help="relay user name (network relays)")
    p.add_argument("--password-file", help="file holding the relay password (read once, copied into a private "
                                           "file beside the configuration)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--generate-passphrase", action="store_true",
                   help="make a new strong passphrase (the first machine of a repository)")
    g.add_argument("--passphrase-file", help="the passphrase file carried from another machine of this repository")
    g.add_argument("--no-encryption", action="store_true", help="encryption = off (a relay you trust with "
                                                                 "your files)")
    p.add_argument("--client-name", help="this machine's name in the repository (default: the host name)")
    p.add_argument("--no-test", action="store_true", help="do not reach the relay")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--non-interactive", action="store_true", help="never ask; a missing flag is an error "
                                                                  "(the default without a terminal)")
    m.add_argument("--interactive", action="store_true", help="ask even without a terminal (answers on stdin)")
    return p


class Asker:
    def __init__(self, interactive: bool):
        self.interactive = interactive

    def ask(self, question: str, default: str | None = None, flag: str = "", secret: bool = False) -> str:
        if not self.interactive:
            if default is not None:
                return default
            raise ConfigError(f"missing {flag} (escale init --non-interactive asks nothing)")
        shown = f" [{default}]" if default else ""
        while True:
            if secret and sys.stdin.isatty():
                answer = getpass.getpass(f"{question}: ")
            else:
                print(f"{question}{shown}: ", end="", flush=True)
                line = sys.stdin.readline()
                if not line:
                    raise ConfigError(f"no answer for: {question}")
                answer = line.rstrip("\n")
            answer = answer.strip() or (default or "")
            if answer:
                return answer

    def choose(self, question: str, choices: dict[str, str], default: str) -> str:
        if not self.interactive:
            return default
        for key, what in choices.items():
            print(f"  {key}) {what}")
        while True:
            answer = self.ask(question, default)
            if answer in choices:
                return answer
            print(f"  answer one of: {', '.join(choices)}")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _free(path: Path) -> Path:
    """``path``, or ``path.2``, ``path.3``…: never over an existing file."""
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"escale init: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def run(args) -> int:
    from ..config import config_search_path, load_config, parse_config_text
    from ..private import private_dir

    ask = Asker(args.interactive or (not args.non_interactive and sys.stdin.isatty()))
    conf = Path(os.path.expanduser(args.config)) if args.config else config_search_path()[0]
    conf = conf if conf.is_absolute() else Path.cwd() / conf
    existing = conf.read_text() if conf.exists() else ""
    if ask.interactive:
        print(f"escale init: writing {conf}" + (" (a new section)" if existing else ""))
    folder = Path(os.path.expanduser(args.folder or ask.ask("Folder to keep in sync", flag="--folder")))
    folder = folder if folder.is_absolute() else Path.cwd() / folder
    name = args.name or (folder.name if not ask.interactive else ask.ask("Name of this repository", folder.name))
    relay = args.relay or ask.ask("Relay address (/path, https://host/dav/path, s3://bucket/prefix…)",
                                  flag="--relay")
    network = not (relay.startswith("/") or relay.startswith("file://"))
    user = args.user
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    if network and ask.interactive and user is None:
        user = ask.ask("Relay user name (empty: none)", default="-")
        user = None if user == "-" else user
    if network and ask.interactive and user and password is None:
        password = ask.ask(f"Relay password for {user}", secret=True)
    # the passphrase
    secret_text: str | None = None
    carried: Path | None = Path(os.path.expanduser(args.passphrase_file)) if args.passphrase_file else None
    if not (args.generate_passphrase or carried or args.no_encryption) and ask.interactive:
        how = ask.choose("Passphrase", {"1": "generate a new one (the first machine of this repository)",
                                        "2": "use the passphrase of the other machines (paste it)",
                                        "3": "use a passphrase file carried from another machine"}, "")
        if how == "1":
            args.generate_passphrase = True
        elif how == "2":
            secret_text = ask.ask("Passphrase", secret=True)
        else:
            carried = Path(os.path.expanduser(ask.ask("Passphrase file")))
    if args.generate_passphrase:
        secret_text = generate_passphrase()
    elif carried is not None:
        if not carried.is_file():
            raise ConfigError(f"passphrase file {carried} does not exist")
        secret_text = carried.read_text().strip()
        if not secret_text:
            raise ConfigError(f"passphrase file {carried} is empty")
    if secret_text is None and not args.no_encryption:
        raise ConfigError("no passphrase: give --generate-passphrase, --passphrase-file or --no-encryption")
    # the files
    private_dir(conf.parent)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "repository"
    lines = [f"# [{name}] written by escale init on {time.strftime('%Y-%m-%d %H:%M:%S')}", f"[{name}]",
             f"local path = {folder}", f"relay address = {relay}"]
    if args.client_name:
        lines.append(f"client name = {args.client_name}")
    written: list[Path] = []
    pass_file = None
    if secret_text is not None:
        pass_file = _free(conf.parent / f"{stem}.passphrase")
        lines.append(f"passphrase = {pass_file}")
    else:
        lines.append("encryption = off")
    pw_file = None
    if user:
        lines.append(f"user = {user}")
    if password:
        pw_file = _free(conf.parent / f"{stem}.password")
        lines.append(f"password = {pw_file}")
    text = (existing.rstrip("\n") + "\n\n" if existing else "") + "\n".join(lines) + "\n"
    if pass_file is not None:
        _write_private(pass_file, secret_text + "\n")
        written.append(pass_file)
    if pw_file is not None:
        _write_private(pw_file, password + "\n")
        written.append(pw_file)
    try:
        parse_config_text(text, conf)  # refused before the configuration is written (a taken section name…)
    except ConfigError:
        for p in written:
            p.unlink()
        raise
    tmp = conf.with_name(f".{conf.name}.{os.getpid()}.tmp")
    _write_private(tmp, text)
    os.replace(tmp, conf)
    print(f"wrote {conf} (private: mode 600)")
    for p in written:
        print(f"wrote {p} (private: mode 600)")
    cfg = load_config(conf)  # what the daemon will read, with its checks
    repo = cfg.repositories[name]
    if args.generate_passphrase:
        print(f"\nA new passphrase is in {pass_file}. Every machine of this repository needs it: carry that\n"
              "file by a way you trust (a USB stick, a password manager, scp between your machines; never\n"
              "through the relay), then on each machine:\n"
              f"  escale init --folder <its folder> --relay {relay} --passphrase-file <the carried file>\n"
              "Lose it everywhere and the relay's copy cannot be read by anyone, you included.")
    code = EXIT_OK
    if not args.no_test:
        code = _test_connection(repo)
    print(f"\nnext: run 'escale -c {conf}' (or 'escalectl -c {conf} start', or 'escalectl service install' "
          "to start it at every login)")
    return code


def _test_connection(repo) -> int:
    """Reach the relay once; with a repository already there, open it with the key."""
    from ..manager import Manager
    from ..protocol import HEADER_NAME

    print(f"testing the connection to {repo.relay_url} …")
    try:
        m = Manager.from_config(repo)
        relay = m.relay
        relay.open()
        try:
            exists = relay.stat(HEADER_NAME) is not None
            relay.list()
        finally:
            relay.close()
        if not exists:
            print("connection test: ok (no repository there yet: the first run creates it)")
            return EXIT_OK
        st = m.status()
        print(f"connection test: ok; repository {st.repository_id} with {len(st.members)} member(s); the "
              "passphrase opens it")
        print(f"  to pin it (a relay then cannot hand this machine another repository): "
              f"repository id = {st.repository_id}")
        return EXIT_OK
    except EscaleError as exc:
        print(f"connection test failed: {exc}\n(the configuration is written; fix it, or the relay, and run "
              "'escalectl status' to try again)", file=sys.stderr)
        return exc.exit_code or EXIT_RELAY
