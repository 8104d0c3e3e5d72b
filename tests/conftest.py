import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import Cluster, raw_key_file  # noqa: E402
from relays import RELAY_KINDS  # noqa: E402
from servers_webdav import (dav_server, relay_webdav_apache, relay_webdav_rclone,  # noqa: E402,F401
                            relay_webdav_wsgidav)
from servers_s3 import relay_s3_moto, relay_s3_seaweedfs, s3_rclone, s3_server  # noqa: E402,F401
from servers_drive import relay_gdrive  # noqa: E402,F401
from servers_ftp import relay_ftp_pyftpdlib, relay_ftps_pyftpdlib  # noqa: E402,F401
from servers_sftp import relay_sftp, sftp_nolinks  # noqa: E402,F401
from servers_rclone import (rclone_config, relay_rclone_local, relay_rclone_s3,  # noqa: E402,F401
                            relay_rclone_webdav)


@pytest.fixture
def cluster(tmp_path):
    """Clients on a file:// relay (tests that look inside the relay folder use this)."""
    return Cluster(tmp_path)


@pytest.fixture(params=RELAY_KINDS)
def relay_cluster(request, tmp_path):
    """The same clients on every relay kind: the multi-client scenarios use this."""
    kind = request.param
    if kind == "file":
        return Cluster(tmp_path)
    if kind == "encrypted":
        # the scenarios test encryption and padding, not the passphrase path
        secret = raw_key_file(tmp_path)
        return Cluster(tmp_path, relay_conf=f"passphrase = {secret}\npadding = on\n", kind=kind)
    factory = request.getfixturevalue("relay_" + kind.replace("-", "_"))
    address, conf, kwargs = factory.new()
    return Cluster(tmp_path, address, conf, kwargs, kind=kind)


#: the multi-client scenarios run whole on the local kinds; on a network relay two run by
#: default (a conflict resolved alike everywhere, a late joiner catching up) and the others in
#: the slow suite (.ci/run runs it): each backend also has the conformance suite
#: (tests/test_relay_contract.py) and its own three-client, kill -9 and fault scenarios in its
#: test file, so the default suite is meant to stay under ten minutes on two cores (two pytest-xdist
#: workers, setup.cfg's addopts: each worker starts its own servers, on free ports, in its
#: own temporary folder)
_NETWORK_DEFAULT = ("test_concurrent_edit_gives_one_winner_and_one_conflict_copy_everywhere",
                    "test_late_joiner_receives_everything")
#: on the local Drive server every CLI cycle also pays googleapiclient's import (about 0.8 s):
#: one scenario by default
_GDRIVE_DEFAULT = _NETWORK_DEFAULT[:1]


def pytest_collection_modifyitems(config, items):
    """Scenarios on network relays beyond the default ones join the slow suite."""
    for item in items:
        kind = getattr(getattr(item, "callspec", None), "params", {}).get("relay_cluster")
        if kind in (None, "file", "encrypted"):
            continue
        if item.originalname not in (_GDRIVE_DEFAULT if kind == "gdrive" else _NETWORK_DEFAULT):
            item.add_marker(pytest.mark.slow)
