"""The Google Drive relay against the local Drive v3 server (tests/servers_drive.py):
Drive's own semantics (duplicate names, ids, non-atomic create), resumable transfers,
rate limits, tokens, quota, scopes, and the light import."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from escale.errors import AuthenticationError, ObjectExists, QuotaExceeded, RelayError, RelayObjectMissing
from escale.relay import GoogleDrive
from escale.relay.gdrive import SESSIONS_NAME, TOKEN_NAME
from escale.relay.retry import RetryPolicy
from servers_drive import SCOPE_APPDATA, SCOPE_FILE

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def relay_of(request, server, address=None, **kw) -> GoogleDrive:
    addr, _conf, kwargs = server.new()
    relay = GoogleDrive(address or addr, **{**kwargs, **kw})
    relay.retry = RetryPolicy(max_retries=8, cap=0.05, retry_after_max=0.05)  # quick; the policy is retry.py's
    relay.open()
    request.addfinalizer(relay.close)
    return relay


def twin(request, relay: GoogleDrive, **kw) -> GoogleDrive:
    """A second client on the same relay folder (its own connection and caches)."""
    other = GoogleDrive(relay.address, api_endpoint=relay.endpoint, token_file=str(relay.token_file), **kw)
    other.retry = relay.retry
    other.open()
    request.addfinalizer(other.close)
    return other


def read(relay, name) -> bytes:
    with relay.get(name) as f:
        return f.read()


def folder_files(server, relay):
    return [f for f in server.children(relay.folder_id)]


def test_import_is_light() -> None:
    """No google library is loaded by importing the relays, only when a Drive relay opens."""
    code = "import escale.relay, escale.config, sys; bad = [m for m in sys.modules if m.split('.')[0] in " \
           "('googleapiclient', 'google', 'google_auth_oauthlib', 'httplib2')]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_address_forms(request, relay_gdrive) -> None:
    """gdrive:///path, the 0.7 names google:// and googledrive://, and gdrive://<folder id>/path
    all reach the same folder."""
    a = relay_of(request, relay_gdrive)
    a.put("x", io.BytesIO(b"same folder"))
    kw = {"api_endpoint": a.endpoint, "token_file": str(a.token_file)}
    path = a.address[len("gdrive://"):]
    for address in (f"google://{path}", f"googledrive://{path}", f"gdrive://{a.folder_id}"):
        b = GoogleDrive(address, **kw)
        b.open()
        assert b.folder_id == a.folder_id and read(b, "x") == b"same folder", address
        b.close()
    parent = relay_gdrive.find("escale-tests")[0].id
    c = GoogleDrive(f"gdrive://{parent}/{path.rsplit('/', 1)[1]}", **kw)
    c.open()
    assert c.folder_id == a.folder_id


def test_create_only_race_ends_with_one_header_everyone_agrees_on(request, relay_gdrive) -> None:
    """Create-if-absent is not atomic on Drive (declared); four clients creating the header
    at once: exactly one succeeds, the others get ObjectExists and read the winner's bytes,
    and one file is left."""
    first = relay_of(request, relay_gdrive)
    assert first.capabilities.atomic_create is False
    clients = [first] + [twin(request, first) for _ in range(3)]
    barrier = threading.Barrier(len(clients))
    outcomes: dict[int, str] = {}

    def create(i: int) -> None:
        barrier.wait()
        try:
            clients[i].put("header", io.BytesIO(b"client %d" % i), create_only=True)
            outcomes[i] = "won"
        except ObjectExists:
            outcomes[i] = "exists"

    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(create, range(len(clients))))
    winners = [i for i, o in outcomes.items() if o == "won"]
    assert len(winners) == 1, outcomes
    seen = {read(c, "header") for c in clients}
    assert seen == {b"client %d" % winners[0]}
    assert [f.name for f in folder_files(relay_gdrive, first)] == ["header"]


def test_duplicate_names_resolve_to_the_oldest_and_own_copies_are_cleaned(request, relay_gdrive) -> None:
    relay = relay_of(request, relay_gdrive)
    relay.put("u/c/1", io.BytesIO(b"original"))
    original = relay_gdrive.find(*relay.path, "u/c/1")[0].id
    relay_gdrive.duplicate(original, b"a retried create's copy")
    other = twin(request, relay)
    for client in (relay, other):
        assert [(i.name, i.size) for i in client.list()] == [("u/c/1", 8)]
        assert read(client, "u/c/1") == b"original"
        assert client.stat("u/c/1").size == 8
    relay.put("u/c/1", io.BytesIO(b"replaced"))  # the writer replaces the object and drops its copies
    files = relay_gdrive.find(*relay.path, "u/c/1")
    assert [f.id for f in files] == [original] and read(other, "u/c/1") == b"replaced"
    relay_gdrive.duplicate(original)
    relay.delete("u/c/1")  # every copy: none comes back as the object
    assert relay_gdrive.find(*relay.path, "u/c/1") == [] and other.stat("u/c/1") is None


def test_gone_cached_id_is_looked_up_again(request, relay_gdrive) -> None:
    a = relay_of(request, relay_gdrive)
    b = twin(request, a)
    a.put("a/x", io.BytesIO(b"one"))
    assert [i.name for i in b.list()] == ["a/x"]  # b caches the id
    a.delete("a/x")
    a.put("a/x", io.BytesIO(b"two"))  # a new file, a new id
    assert read(b, "a/x") == b"two"
    a.delete("a/x")
    with pytest.raises(RelayObjectMissing):
        read(b, "a/x")


def test_relay_folder_created_once_by_racing_clients(request, relay_gdrive) -> None:
    """Two clients opening a new relay path at once agree on one folder."""
    addr, _conf, kw = relay_gdrive.new()
    addr += "/sub"
    clients = [GoogleDrive(addr, **kw) for _ in range(3)]
    barrier = threading.Barrier(3)

    def open_(c):
        barrier.wait()
        c.open()
        return c.folder_id

    with ThreadPoolExecutor(3) as pool:
        ids = set(pool.map(open_, clients))
    assert len(ids) == 1
    assert len(relay_gdrive.find(*clients[0].path)) == 1


def test_resumable_upload_resumes_after_a_cut_chunk(request, relay_gdrive) -> None:
    """A chunk cut half-way (the server kept part of it): the upload asks the server what
    arrived and goes on from there; a non-seekable source is read once."""
    relay = relay_of(request, relay_gdrive, chunk_size="1MiB")
    data = os.urandom(6 * MiB + 123)
    relay_gdrive.inject("cut", 2, lambda m, p: m == "PUT")
    seen_before = len(relay_gdrive.seen)

    class OneWay(io.RawIOBase):
        def __init__(self):
            self.src = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            return self.src.readinto(b)

    assert relay.put("b/c/1/0", OneWay(), size=len(data)) == len(data)
    assert relay_gdrive.counts["cut"] >= 2
    assert read(relay, "b/c/1/0") == data
    puts = [q for m, p, q in relay_gdrive.seen[seen_before:] if m == "PUT"]
    assert len(puts) >= 7  # 7 chunks, plus what was resent
    assert not relay._sessions and relay_gdrive.uploads == {} or all(
        u.meta.get("name") != "b/c/1/0" for u in relay_gdrive.uploads.values())


def test_download_resumes_with_range(request, relay_gdrive) -> None:
    relay = relay_of(request, relay_gdrive, chunk_size="1MiB")
    data = os.urandom(3 * MiB + 7)
    relay.put("b/big", io.BytesIO(data), size=len(data))
    relay_gdrive.inject("cut", 2, lambda m, p: m == "GET" and p.startswith("/drive/v3/files/"))
    n = len(relay_gdrive.seen)
    assert read(relay, "b/big") == data
    ranges = [q for m, p, q in relay_gdrive.seen[n:] if q.get("alt") == "media"]
    assert len(ranges) >= 4 + 2 and relay_gdrive.counts["cut"] >= 2


def test_interrupted_session_is_cancelled_by_abort_incomplete(request, relay_gdrive, tmp_path) -> None:
    """An upload whose process died leaves a session; the next start cancels it (the
    protocol's abort_incomplete for the writer's own prefixes)."""
    relay = relay_of(request, relay_gdrive, chunk_size="256KiB")
    relay.use_state_dir(tmp_path, "repo")
    data = os.urandom(6 * MiB)

    class Dies(io.RawIOBase):
        def __init__(self):
            self.left = 2 * MiB

        def readable(self):
            return True

        def readinto(self, b):
            if self.left <= 0:
                raise KeyboardInterrupt  # the process is stopped mid-upload
            n = min(len(b), self.left)
            b[:n] = data[:n]
            self.left -= n
            return n

    relay._cancel = lambda uri: None  # as after kill -9: nothing is cleaned up on the way out
    with pytest.raises(KeyboardInterrupt):
        relay.put("b/me/3/0", Dies(), size=len(data))
    sessions = json.loads((tmp_path / SESSIONS_NAME).read_text())
    assert len(sessions) == 1 and oct((tmp_path / SESSIONS_NAME).stat().st_mode & 0o777) == "0o600"
    assert len(relay_gdrive.uploads) >= 1
    later = twin(request, relay)
    later.use_state_dir(tmp_path, "repo")
    assert later.abort_incomplete("b/other/") == 0
    assert later.abort_incomplete("b/me/") == 1
    assert json.loads((tmp_path / SESSIONS_NAME).read_text()) == {}
    assert all(u.meta.get("name") != "b/me/3/0" for u in relay_gdrive.uploads.values())
    assert later.stat("b/me/3/0") is None


def test_rate_limit_storm(request, relay_gdrive) -> None:
    """403 userRateLimitExceeded / rateLimitExceeded and 429 on a third of the requests:
    every operation gets through with back-off, and Retry-After is honoured."""
    relay = relay_of(request, relay_gdrive)
    waits: list[float] = []
    relay.retry = RetryPolicy(max_retries=8, cap=0.01, sleep=waits.append)  # what it would wait, not waited
    relay_gdrive.storm(0.33, seed=5)
    try:
        for n in range(10):
            relay.put(f"f/{n}", io.BytesIO(b"data %d" % n))
        assert sorted(i.name for i in relay.list()) == [f"f/{n}" for n in range(10)]
        assert all(read(relay, f"f/{n}") == b"data %d" % n for n in range(10))
        for n in range(10):
            relay.delete(f"f/{n}")
        assert list(relay.list()) == []
    finally:
        relay_gdrive.storm(0)
    assert relay_gdrive.counts["rate403"] and relay_gdrive.counts["429"] and relay_gdrive.counts["rate403-global"]
    assert any(w >= 1.0 for w in waits) and min(waits) < 0.02  # Retry-After: 1 was honoured


def test_backoff_policy() -> None:
    """The shared policy with Drive's numbers: 8 retries, doubling up to 32 s, Retry-After up to 300 s."""
    relay = GoogleDrive("gdrive:///x")
    assert relay.retry.max_retries == 8 and GoogleDrive("gdrive:///x", max_retries="2").retry.max_retries == 2
    delays = [relay.retry.delay(a) for a in range(10)]
    assert 0.25 <= delays[0] <= 0.5 and delays[6] >= 16 and max(delays) <= 32
    assert relay.retry.delay(0, 200.0) >= 200.0


def test_expired_access_token_is_refreshed_and_kept(request, relay_gdrive) -> None:
    relay = relay_of(request, relay_gdrive)
    relay.put("a", io.BytesIO(b"1"))
    before = json.loads(Path(relay.token_file).read_text()).get("token")
    relay_gdrive.expire_tokens()  # every access token now answers 401
    relay.put("b", io.BytesIO(b"2"))
    assert read(relay, "a") == b"1"
    kept = json.loads(Path(relay.token_file).read_text())
    assert kept["token"] and kept["token"] != before and kept["refresh_token"]
    assert Path(relay.token_file).stat().st_mode & 0o777 == 0o600


def test_revoked_token_is_an_authentication_error_naming_the_fix(request, relay_gdrive) -> None:
    relay = relay_of(request, relay_gdrive)
    relay.use_state_dir(Path(relay.token_file).parent, "photos")
    relay_gdrive.revoke(json.loads(Path(relay.token_file).read_text())["refresh_token"])
    with pytest.raises(AuthenticationError, match=r"expired or was revoked.*escalectl drive-auth -r photos") as e:
        list(relay.list())
    assert e.value.exit_code == 2


def test_missing_token_names_the_command(tmp_path, relay_gdrive) -> None:
    relay = GoogleDrive("gdrive:///escale-tests/x", api_endpoint=relay_gdrive.url)
    relay.use_state_dir(tmp_path, "docs")
    with pytest.raises(AuthenticationError, match=rf"{TOKEN_NAME}.*escalectl drive-auth -r docs"):
        relay.open()


def test_quota_usage_and_full_drive(request, relay_gdrive) -> None:
    relay = relay_of(request, relay_gdrive)
    relay_gdrive.quota = relay_gdrive.used() + 10_000
    try:
        u = relay.usage()
        assert u.used == relay_gdrive.used() and u.available == 10_000
        with pytest.raises(QuotaExceeded):
            relay.put("big", io.BytesIO(b"x" * 20_000))
        relay.put("small", io.BytesIO(b"x" * 5_000))
        used = relay_gdrive.used()
        relay.delete("small")  # permanent: the space is free at once (no trash)
        assert relay_gdrive.used() == used - 5_000 and relay.usage().available == 10_000
    finally:
        relay_gdrive.quota = None


def test_listing_restricts_fields_and_follows_pages(request, relay_gdrive) -> None:
    relay = relay_of(request, relay_gdrive)
    names = [f"m/{n:03d}" for n in range(130)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: relay.put(n, io.BytesIO(b"1")), names))
    relay_gdrive.page_max = 50
    try:
        n = len(relay_gdrive.seen)
        assert [i.name for i in relay.list("m/")] == names
        lists = [q for m, p, q in relay_gdrive.seen[n:] if m == "GET" and p == "/drive/v3/files"]
        assert len(lists) == 3 and sum(1 for q in lists if q.get("pageToken")) == 2
        assert all(q["fields"].startswith("nextPageToken") and "files(" in q["fields"] for q in lists)
    finally:
        relay_gdrive.page_max = 1000


def test_app_data_folder_needs_its_scope(request, relay_gdrive, tmp_path) -> None:
    addr, _c, kw = relay_gdrive.new()
    wrong = GoogleDrive(addr, app_data_folder="yes", **kw)  # a drive.file token
    with pytest.raises(AuthenticationError, match="drive.appdata"):
        wrong.open()
    token = relay_gdrive.token_file(tmp_path / "appdata.json", SCOPE_APPDATA)
    relay = GoogleDrive(addr, app_data_folder="yes", api_endpoint=relay_gdrive.url, token_file=str(token))
    relay.open()
    relay.put("x", io.BytesIO(b"hidden"))
    assert relay_gdrive.files[relay.folder_id].space == "appDataFolder"
    assert read(relay, "x") == b"hidden" and relay_gdrive.find(*relay.path) == []


def test_service_account_key(request, relay_gdrive, tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = "escale@escale-test.iam.gserviceaccount.com"
    relay_gdrive.service_keys[email] = key.public_key()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    keyfile = tmp_path / "sa.json"
    keyfile.write_text(json.dumps({"type": "service_account", "project_id": "escale-test", "private_key_id": "k1",
                                   "private_key": pem, "client_email": email, "client_id": "1",
                                   "token_uri": relay_gdrive.url + "token"}))
    addr, _c, _kw = relay_gdrive.new()
    relay = GoogleDrive(addr, api_endpoint=relay_gdrive.url, service_account=str(keyfile))
    relay.open()
    relay.put("x", io.BytesIO(b"by a service account"))
    assert read(relay, "x") == b"by a service account"


def test_bad_options_are_config_errors() -> None:
    from escale.errors import ConfigError

    with pytest.raises(ConfigError, match="chunk size"):
        GoogleDrive("gdrive:///x", chunk_size="1000")
    with pytest.raises(ConfigError, match="api endpoint"):
        GoogleDrive("gdrive:///x", api_endpoint="127.0.0.1:80")
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        GoogleDrive("gdrive:///a/../b")


def test_plain_http_api_endpoint_off_loopback_is_refused(tmp_path) -> None:
    """'api endpoint = http://…' anywhere but this machine would send the Drive access token
    (and, at refresh, the refresh token) unencrypted: refused with exit 3 naming the option
    (it was accepted); http:// stays allowed for 127.0.0.1/localhost (a local server, a proxy)."""
    from escale.errors import ConfigError

    for url in ("http://www.googleapis.com/", "http://drive.example.com:8080/", "http://10.0.0.2/"):
        with pytest.raises(ConfigError, match="api endpoint"):
            GoogleDrive("gdrive:///x", api_endpoint=url)
    for url in ("http://127.0.0.1:9/", "http://localhost:8080/", "http://[::1]:80/", "https://example.com/"):
        assert GoogleDrive("gdrive:///x", api_endpoint=url).endpoint.startswith(url.rstrip("/"))
    (tmp_path / "local").mkdir()
    conf = tmp_path / "escale.conf"
    conf.write_text(f"[r]\nlocal path = {tmp_path / 'local'}\nrelay address = gdrive:///escale\n"
                    "api endpoint = http://www.googleapis.com/\nencryption = off\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "escale", "-c", str(conf), "--once"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "api endpoint" in proc.stderr and "https" in proc.stderr and "Traceback" not in proc.stderr


def test_configuration_section(tmp_path) -> None:
    """The address forms keep a folder id's case, 'relay directory' is appended, and the
    backend's options reach it parsed."""
    from escale.config import parse_config_text

    text = ("[r]\nlocal path = /tmp/escale-t/local\nrelay address = gdrive://1AbCdEfGh/Sync Me\n"
            "relay directory = sub\napi endpoint = http://127.0.0.1:9/\nchunk size = 4MiB\nmax retries = 2\n"
            "encryption = off\n[s]\nlocal path = /tmp/escale-t/l2\nrelay address = GoogleDrive:///escale\n"
            "encryption = off\n")
    cfg = parse_config_text(text, str(tmp_path / "escale.conf"))
    r = cfg.repositories["r"]
    assert r.relay_url == "gdrive://1AbCdEfGh/Sync Me/sub" and r.relay_protocol == "gdrive"
    relay = GoogleDrive(r.relay_url, **r.options)
    assert (relay.start_id, relay.path) == ("1AbCdEfGh", ["Sync Me", "sub"])
    assert relay.endpoint == "http://127.0.0.1:9/" and relay.chunk_size == 4 * MiB and relay.max_retries == 2
    s = cfg.repositories["s"]
    assert s.relay_url == "googledrive:///escale" and GoogleDrive(s.relay_url).path == ["escale"]


# ------------------------------------------------------------------ through the real CLI
def ctl(client, *args, **kw):
    return subprocess.Popen([sys.executable, "-u", "-m", "escale.cli.ctl", "-c", str(client.conf), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(client.cluster.env, OAUTHLIB_INSECURE_TRANSPORT="1"), **kw)


def auth_cluster(tmp_path, server):
    from cluster import Cluster

    address, _conf, _kw = server.new()
    secrets = server.client_secrets(tmp_path / "client.json")
    conf = f"api endpoint = {server.url}\nclient secrets = {secrets}\n"
    return Cluster(tmp_path, address, conf, {"api_endpoint": server.url}, kind="gdrive")


def _url_from(proc) -> str:
    for line in proc.stdout:
        if "/auth?" in line:
            return line.strip()
    raise AssertionError(f"no address printed; stderr: {proc.stderr.read()}")


def _state_token(client) -> Path:
    found = list(client.state.parent.glob("**/" + TOKEN_NAME)) + list(Path(client.state).glob("**/" + TOKEN_NAME))
    assert len(set(found)) == 1, found
    return found[0]


def test_drive_auth_loopback_then_sync_and_revocation(tmp_path, relay_gdrive) -> None:
    """escalectl drive-auth: the loopback flow stores a 0600 token in the state folder; escale
    syncs with it; once revoked, a cycle fails with exit code 2 naming the command."""
    import urllib.request

    cl = auth_cluster(tmp_path, relay_gdrive)
    a = cl.add("a")
    r = a.once(check=False)
    assert r.code == 2 and "escalectl drive-auth -r repo" in r.err, r  # no token yet
    proc = ctl(a, "drive-auth", "--no-browser")
    url = _url_from(proc)
    assert "scope=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fdrive.file" in url
    with urllib.request.urlopen(url, timeout=30) as page:  # the browser: consent, then the loopback redirect
        assert b"You can close this page" in page.read()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    token = _state_token(a)
    assert f"token kept in {token}" in out and token.stat().st_mode & 0o777 == 0o600
    assert json.loads(token.read_text())["refresh_token"]
    a.write("f.txt", "through drive")
    a.once()
    assert [f.name for f in relay_gdrive.find("escale-tests", cl.relay_address.rsplit("/", 1)[1], "escale.json")]
    relay_gdrive.revoke(json.loads(token.read_text())["refresh_token"])
    r = a.once(check=False)
    assert r.code == 2, r
    assert "expired or was revoked" in r.err and "run `escalectl drive-auth -r repo`" in r.err, r.err


def test_drive_auth_headless(tmp_path, relay_gdrive) -> None:
    """--headless: print the address; the user pastes where the browser ended."""
    import urllib.error
    import urllib.request

    cl = auth_cluster(tmp_path, relay_gdrive)
    a = cl.add("a")
    proc = ctl(a, "drive-auth", "--headless", stdin=subprocess.PIPE)
    url = _url_from(proc)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    try:
        urllib.request.build_opener(NoRedirect).open(url, timeout=30)
        raise AssertionError("no redirect")
    except urllib.error.HTTPError as exc:  # the page the browser ends on: nothing listens there
        landed = exc.headers["Location"]
    assert landed.startswith("http://127.0.0.1:8085/?") and "code=" in landed
    out, err = proc.communicate(landed + "\n", timeout=60)
    assert proc.returncode == 0, err
    assert _state_token(a).stat().st_mode & 0o777 == 0o600
    a.once()


def test_three_clients_converge_encrypted(tmp_path, relay_gdrive) -> None:
    from cluster import Cluster, raw_key_file

    address, conf, kw = relay_gdrive.new()
    secret = raw_key_file(tmp_path)  # encryption, not the passphrase, is tested here
    cl = Cluster(tmp_path, address, conf + f"passphrase = {secret}\n", kw, kind="gdrive")
    a, b, c = cl.add("a"), cl.add("b"), cl.add("c")
    a.write("docs/a.txt", "from a, secret words")
    b.write("b.bin", os.urandom(7 * MiB))  # a resumable upload
    c.write("deep/er/c.txt", "from c")
    cl.round(rounds=3)
    trees = [x.tree() for x in (a, b, c)]
    assert trees[0] == trees[1] == trees[2] and len([k for k, v in trees[0].items() if v[0] == "file"]) == 3
    b.path("b.bin").unlink()
    a.write("docs/a.txt", "edited by a")
    cl.round(rounds=3)
    assert a.tree() == b.tree() == c.tree() and not c.path("b.bin").exists()
    folder = relay_gdrive.find("escale-tests", address.rsplit("/", 1)[1])[0]
    blobs = b"".join(f.data for f in relay_gdrive.children(folder.id))
    assert b"secret words" not in blobs and b"edited by a" not in blobs and b"docs/a.txt" not in blobs


def test_kill_9_during_a_resumable_upload_then_resume(tmp_path, relay_gdrive) -> None:
    """A client killed half-way through a resumable upload: nothing partial is listed; its
    next start cancels the session (kept in its state folder) and sends the file again."""
    from cluster import Cluster, kill9, wait_for

    address, conf, kw = relay_gdrive.new()
    cl = Cluster(tmp_path, address, conf + "chunk size = 256KiB\n", kw, kind="gdrive")
    a, b = cl.add("a"), cl.add("b")
    a.once()
    b.once()
    data = os.urandom(12 * MiB)
    a.write("big.bin", data)
    relay_gdrive.chunk_delay = 0.05
    try:
        proc = a.start("--once")
        assert wait_for(lambda: any(len(u.data) >= MiB for u in list(relay_gdrive.uploads.values())), 120)
        kill9(proc)
    finally:
        relay_gdrive.chunk_delay = 0.0
    sessions = [u for u in relay_gdrive.uploads.values() if u.meta.get("name", "").startswith("b/")]
    assert sessions and all(len(u.data) < len(data) for u in sessions)
    listed = cl.relay_objects()
    assert not any(size >= MiB for size in listed.values())  # no partial blob
    kept = list(Path(a.state.parent).glob("**/gdrive-uploads.json")) + list(Path(a.state).glob("**/gdrive-uploads.json"))
    assert kept and json.loads(kept[0].read_text())
    a.once()
    assert not [u for u in relay_gdrive.uploads.values() if u.meta.get("name", "").startswith("b/")]
    b.once()
    assert b.path("big.bin").read_bytes() == data


def test_status_shows_the_drive_quota(tmp_path, relay_gdrive) -> None:
    """about.get's storage quota reaches escalectl status (text and --json)."""
    from cluster import Cluster

    address, conf, kw = relay_gdrive.new()
    cl = Cluster(tmp_path, address, conf, kw, kind="gdrive")
    a = cl.add("a")
    a.write("f.txt", "x" * 1000)
    a.once()
    relay_gdrive.quota = relay_gdrive.used() + 3_000_000
    try:
        p = ctl(a, "status", "--json")
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        usage = json.loads(out)["repositories"][0]["relay_usage"]
        assert usage["storage_available_bytes"] == 3_000_000
        assert usage["storage_used_bytes"] == relay_gdrive.used()
        p = ctl(a, "status")
        out, err = p.communicate(timeout=120)
        assert "the relay's storage reports" in out and "3.0 MB available" in out, out
    finally:
        relay_gdrive.quota = None


def _first_clients_race(tmp_path, server):
    """Two clients start on an empty relay at once; both find no header and both create one
    (the server holds each create until the other's has arrived)."""
    from cluster import Cluster

    address, conf, kw = server.new()
    cl = Cluster(tmp_path, address, conf, kw, kind="gdrive")
    a, b = cl.add("a"), cl.add("b")
    a.write("from-a.txt", "a")
    b.write("from-b.txt", "b")
    server.hold_creates["escale.json"] = threading.Barrier(2)
    try:
        procs = [a.start("--once"), b.start("--once")]
        results = [(p.communicate(timeout=300), p.returncode) for p in procs]
    finally:
        del server.hold_creates["escale.json"]
    return cl, address, results


def test_two_first_clients_race_for_the_repository_header(tmp_path, relay_gdrive) -> None:
    """Create-if-absent is not atomic on Drive: both first clients create a header. They end
    with one header, and the same repository: they sync with each other."""
    cl, address, results = _first_clients_race(tmp_path, relay_gdrive)
    assert all("Traceback" not in err for (_out, err), _code in results), results
    assert sum("created repository" in err for (_out, err), _code in results) == 1, results
    folder = relay_gdrive.find("escale-tests", address.rsplit("/", 1)[1])[0]
    assert [f.name for f in relay_gdrive.children(folder.id)].count("escale.json") == 1
    a, b = cl.clients["a"], cl.clients["b"]
    cl.round(rounds=2)
    assert a.tree() == b.tree() and {"from-a.txt", "from-b.txt"} <= set(a.tree())


def test_first_clients_racing_both_end_their_first_cycle_cleanly(tmp_path, relay_gdrive) -> None:
    """A member whose card appears between a cycle's two listings is a member, not a stranger
    whose objects are junk (both first cycles used to exit 1: 'ignored … no member card')."""
    _cl, _address, results = _first_clients_race(tmp_path, relay_gdrive)
    assert [code for _r, code in results] == [0, 0], [err[-600:] for (_o, err), _c in results]


@pytest.mark.slow  # 30–40 s; the relay-level storm above runs by default
def test_clients_converge_through_a_rate_limit_storm(tmp_path, relay_gdrive) -> None:
    """Two clients through the CLI while a fifth of Drive's answers are 403 rateLimitExceeded,
    429 with Retry-After or 503: every cycle ends cleanly and they converge."""
    from cluster import Cluster

    address, conf, kw = relay_gdrive.new()
    cl = Cluster(tmp_path, address, conf, kw, kind="gdrive")
    a, b = cl.add("a"), cl.add("b")
    a.once()
    b.once()
    a.write("one.txt", "from a")
    b.write("two/two.txt", "from b")
    before = sum(relay_gdrive.counts.values())
    relay_gdrive.storm(0.2, kinds=("rate403-global", "429", "503"), seed=11)
    try:
        cl.round(rounds=2)
        a.write("one.txt", "edited by a")
        cl.round(rounds=2)
    finally:
        relay_gdrive.storm(0)
    assert sum(relay_gdrive.counts.values()) - before >= 5
    assert a.tree() == b.tree() and b.path("one.txt").read_text() == "edited by a"


def test_replacing_an_object_deleted_meanwhile_creates_it(request, relay_gdrive) -> None:
    """A put that found the object, which another client deleted before the update landed."""
    a = relay_of(request, relay_gdrive)
    a.put("a/x", io.BytesIO(b"one"))
    fid = relay_gdrive.find(*a.path, "a/x")[0].id
    real = a._copies
    a._copies = lambda name: (lambda found: (relay_gdrive.files.pop(fid, None), found)[1])(real(name))
    a.put("a/x", io.BytesIO(b"two"))
    a._copies = real
    assert read(a, "a/x") == b"two" and len(relay_gdrive.find(*a.path, "a/x")) == 1


def test_relay_folder_made_anew_is_found_again(request, relay_gdrive) -> None:
    """The cached id of the relay folder is gone (the folder was deleted, and another client
    made it again at the same path): listings and puts follow the new folder; with no folder
    at the path any more, a listing is an error, never an empty relay."""
    a = relay_of(request, relay_gdrive)
    a.put("x", io.BytesIO(b"old"))
    old = a.folder_id
    relay_gdrive.remove(old)
    with pytest.raises(RelayError, match="gone"):
        list(a.list())
    b = twin(request, a)  # makes the folder again
    b.put("y", io.BytesIO(b"new"))
    assert [i.name for i in a.list()] == ["y"] and a.folder_id == b.folder_id != old
    relay_gdrive.remove(a.folder_id)
    c = twin(request, a)
    a.put("z", io.BytesIO(b"after"))  # the put finds c's folder
    assert a.folder_id == c.folder_id and read(c, "z") == b"after"
