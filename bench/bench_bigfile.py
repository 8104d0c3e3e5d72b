"""One large file A → relay → B, encrypted: escale against rclone crypt, speed and memory.

    python bench/bench_bigfile.py [--relay file|s3|webdav] [--size-mb 1024] [--runs 3]
                                  [--code DIR ...] [--no-rclone] [--passphrase]

escale uses ``aes256gcm`` with a **raw key file** (base64 of 32 bytes, mode 0600), so the
figures are the transfer's, not scrypt's (128 MiB and ~0.4 s per process; ``--passphrase``
measures with it). The relay is a folder (``file``), a SeaweedFS ``weed mini`` (``s3``,
tests/servers_s3.py) or an Apache httpd with mod_dav (``webdav``, tests/servers_webdav.py;
wsgidav when Apache is missing), started for the run on 127.0.0.1. The peer is
``rclone copy`` through a crypt remote on the same server (its defaults: multi-thread
download of 4 streams above 256 MiB, 4 upload threads of 5 MiB chunks on S3).

Each step (B registers, A pushes, B pulls) is its own process; wall time around it, CPU
time (user + sys) and peak RSS from ``wait4()``. ``--runs`` repeats the whole pair and
the table gives min / median; ``--code`` runs escale from other source trees too (e.g. a
``git archive`` of the previous commit), one after the other in each round, so old and
new code meet the same machine load.
"""
from __future__ import annotations

import argparse
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import make_big, obscure, rclone_crypt_env, same_tree, step, versions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class Relay:
    """A server (or folder) for one run: escale's address lines and rclone's remote."""

    def __init__(self, kind: str, base: Path):
        self.kind, self.base, self.server = kind, base, None
        if kind == "s3":
            from servers_s3 import start_seaweedfs
            try:
                self.server = start_seaweedfs(base / "srv")
            except BaseException as exc:  # pytest.skip's exception when it cannot start
                raise SystemExit(f"SeaweedFS did not start: {exc}") from None
        elif kind == "webdav":
            from servers_webdav import make_server
            import shutil
            self.server = make_server("apache" if shutil.which("apache2") else "wsgidav", base / "srv").start()

    def escale(self, tag: str) -> str:
        if self.kind == "s3":
            return f"relay address = s3://{self.server.bucket}/escale-{tag}\n{self.server.conf()}"
        if self.kind == "webdav":
            from servers_webdav import PASSWORD, USER
            return f"relay address = {self.server.url}/dav/escale-{tag}\nuser = {USER}\npassword = {PASSWORD}\n"
        return f"relay address = file://{self.base}/relay-{tag}\n"

    def rclone(self, tag: str) -> dict:
        if self.kind == "s3":
            s = self.server
            return rclone_crypt_env(dict(TYPE="s3", PROVIDER="Other", ENDPOINT=s.endpoint, ACCESS_KEY_ID=s.access_key,
                                         SECRET_ACCESS_KEY=s.secret_key, REGION="us-east-1",
                                         FORCE_PATH_STYLE="true"), f"srv:{s.bucket}/rclone-{tag}")
        if self.kind == "webdav":
            from servers_webdav import PASSWORD, USER
            env = rclone_crypt_env(dict(TYPE="webdav", URL=f"{self.server.url}/dav/", VENDOR="other", USER=USER,
                                        PASS=obscure(PASSWORD)), f"srv:rclone-{tag}")
            env["RCLONE_WEBDAV_PACER_MIN_SLEEP"] = "0"
            return env
        return rclone_crypt_env(dict(TYPE="local"), f"srv:{self.base}/rclone-{tag}")

    def stop(self) -> None:
        if self.kind == "s3":
            self.server.stop()
        elif self.kind == "webdav":
            self.server.cleanup()


def escale_run(work: Path, src: Path, relay: Relay, code: Path, passphrase: bool) -> dict:
    tag = uuid.uuid4().hex[:8]
    b = work / "B"
    key = work / "key"
    if passphrase:
        key.write_text("bench passphrase")
    else:
        key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key.chmod(0o600)
    env = dict(os.environ, PYTHONPATH=str(code))
    confs = {}
    for name, folder in (("A", src), ("B", b)):
        conf = work / f"{name}.conf"
        conf.write_text(f"cache dir = {work}/state-{name}\n[big]\nlocal path = {folder}\n{relay.escale(tag)}"
                        f"client name = {name}\nencryption = aes256gcm\npassphrase = {key}\n")
        conf.chmod(0o600)
        confs[name] = conf
    esc = [sys.executable, "-m", "escale", "-q", "--once", "-c"]
    step(esc + [str(confs["B"])], env)
    push = step(esc + [str(confs["A"])], env)
    pull = step(esc + [str(confs["B"])], env)
    assert same_tree(src, b), "escale: trees differ"
    return {"push": push, "pull": pull}


def rclone_run(work: Path, src: Path, relay: Relay) -> dict:
    env = relay.rclone(uuid.uuid4().hex[:8])
    rc = ["rclone", "copy", "--transfers", "4", "--checkers", "8"]
    push = step(rc + [str(src), "c:"], env)
    pull = step(rc + ["c:", str(work / "B")], env)
    assert same_tree(src, work / "B"), "rclone: trees differ"
    return {"push": push, "pull": pull}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", choices=("file", "s3", "webdav"), default="file")
    ap.add_argument("--size-mb", type=int, default=1024, help="file size in MiB")
    ap.add_argument("--mb", type=int, default=None,
                    help="file size in MB (10^6 bytes) instead; Apache refuses bodies over 1 GiB, so a 1 GiB "
                         "file (padded, encrypted) needs 'max object size' there, and 1000 MB does not")
    ap.add_argument("--runs", type=int, default=1, help="rounds (bench/run.py repeats the whole script instead)")
    ap.add_argument("--code", action="append", default=[], help="another escale source tree to run too")
    ap.add_argument("--no-rclone", action="store_true")
    ap.add_argument("--passphrase", action="store_true", help="scrypt passphrase instead of a raw key")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    codes = [("escale", ROOT)] + [(f"escale {Path(c).name}", Path(c).resolve()) for c in args.code]
    tmp_base = None if args.tmp is None else str(Path(args.tmp).resolve())
    # python -m escale puts the working folder first on sys.path: run from the repository
    # root, every --code tree would run this tree's code (as the 2026-12-01 comparisons did)
    os.chdir("/")
    results: dict[str, list[dict]] = {}
    size = args.mb * 10**6 if args.mb else args.size_mb << 20
    what = f"{args.mb} MB" if args.mb else f"{args.size_mb} MiB"
    with tempfile.TemporaryDirectory(dir=tmp_base) as tmp:
        work = Path(tmp)
        src = work / "A"
        make_big(src, size)
        relay = Relay(args.relay, work)
        try:
            for r in range(args.runs):
                tools = [(label, lambda w, c=code: escale_run(w, src, relay, c, args.passphrase))
                         for label, code in codes]
                if not args.no_rclone:
                    tools.append(("rclone copy (crypt)", lambda w: rclone_run(w, src, relay)))
                for label, fn in tools:
                    with tempfile.TemporaryDirectory(dir=work) as w:
                        res = fn(Path(w))
                    results.setdefault(label, []).append(res)
                    print(f"run {r + 1} {label}: push {res['push'][0]:.2f} s ({res['push'][1]:.2f} CPU, "
                          f"{res['push'][2]} MiB), pull {res['pull'][0]:.2f} s ({res['pull'][1]:.2f} CPU, "
                          f"{res['pull'][2]} MiB)", file=sys.stderr)
        finally:
            relay.stop()
    mb = size / 1e6

    print(f"| {what}, {args.relay} | up MB/s (max / median) | down MB/s (max / median) | "
          "CPU s up / down (min) | peak RSS up / down (MiB, max) |")
    print("|---|---|---|---|---|")
    for label, runs in results.items():
        up = [mb / r["push"][0] for r in runs]
        down = [mb / r["pull"][0] for r in runs]
        print(f"| {label} | {max(up):.0f} / {statistics.median(up):.0f} | {max(down):.0f} / "
              f"{statistics.median(down):.0f} | {min(r['push'][1] for r in runs):.2f} / "
              f"{min(r['pull'][1] for r in runs):.2f} | {max(r['push'][2] for r in runs)} / "
              f"{max(r['pull'][2] for r in runs)} |")
    print(versions(f"{args.runs} runs"))


if __name__ == "__main__":
    main()
