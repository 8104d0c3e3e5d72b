"""A local Google Drive v3 server for the tests: the one allowed stand-in.

Google offers no Drive emulator (nothing on PyPI emulates Drive; see
/work/shared/servers.md), so this module is a small but real HTTP server on 127.0.0.1
speaking Drive's wire format for the subset escale uses. The client under test is
google-api-python-client unchanged, built from its packaged static discovery document
with the root URL overridden through the relay's ``api endpoint`` option.

What it speaks (paths, parameters, status codes and JSON shapes as Drive v3 does):

- ``GET /drive/v3/files`` with ``q`` (``'<id>' in parents``, ``name = '…'``,
  ``trashed = false``, ``mimeType = / != '…'``, joined by ``and``), ``spaces``,
  ``pageSize`` (at most :attr:`DriveServer.page_max`) and ``pageToken``; ``fields``
  restricts the answer (with no ``fields``, only kind, id, name and mimeType, as Drive);
- ``POST /drive/v3/files`` (metadata only: folders), ``GET/PATCH/DELETE
  /drive/v3/files/{id}``, ``GET …?alt=media`` with ``Range`` (206 + Content-Range);
- ``POST /upload/drive/v3/files`` and ``PATCH /upload/drive/v3/files/{id}`` with
  ``uploadType=media|multipart|resumable``; a resumable session answers 200 +
  ``Location``, each chunk ``PUT`` answers **308** with ``Range: bytes=0-N`` until the
  last, a ``Content-Range: bytes */N`` query tells what arrived, DELETE cancels (499);
- ``GET /drive/v3/about`` (``storageQuota``);
- OAuth: ``POST /token`` (``authorization_code``, ``refresh_token`` and the service
  accounts' ``jwt-bearer`` grants) and ``GET /auth`` (consent is given at once: a 302 to
  the client's redirect URI with ``code`` and ``state``, as Google's page does after the
  user clicks "Allow").

What it emulates on purpose: names are not unique (two files may share a name in a
folder: :meth:`DriveServer.duplicate`), deleting a folder deletes what it holds, access
tokens expire (:attr:`DriveServer.token_lifetime`, :meth:`DriveServer.expire_tokens`) and
refresh tokens can be revoked (:meth:`DriveServer.revoke`), a storage quota
(:attr:`DriveServer.quota`, 403 ``storageQuotaExceeded``), scopes (``drive.appdata``
reaches only the appDataFolder space), and faults: 403 ``userRateLimitExceeded`` /
``rateLimitExceeded`` and 429 with ``Retry-After``, 500/503, a connection cut half-way
through an upload chunk or a download (:meth:`DriveServer.storm`, :meth:`DriveServer.inject`).
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import json
import random
import re
import secrets
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

FOLDER = "application/vnd.google-apps.folder"
SCOPE_FILE = "https://www.googleapis.com/auth/drive.file"
SCOPE_APPDATA = "https://www.googleapis.com/auth/drive.appdata"
SCOPE_DRIVE = "https://www.googleapis.com/auth/drive"
CLIENT_ID = "escale-test.apps.googleusercontent.com"
CLIENT_SECRET = "escale-test-client-secret"
CHUNK_GRANULE = 256 * 1024
FIELDS_ALL = ("kind", "id", "name", "mimeType", "parents", "size", "md5Checksum", "createdTime", "modifiedTime",
              "version", "trashed", "spaces")


def _rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class DFile:
    id: str
    name: str
    parents: list[str]
    mimeType: str
    space: str
    data: bytes = b""
    created: float = 0.0
    modified: float = 0.0
    version: int = 1

    def resource(self) -> dict:
        r = {"kind": "drive#file", "id": self.id, "name": self.name, "mimeType": self.mimeType,
             "parents": list(self.parents), "createdTime": _rfc3339(self.created),
             "modifiedTime": _rfc3339(self.modified), "version": str(self.version), "trashed": False,
             "spaces": [self.space]}
        if self.mimeType != FOLDER:
            r["size"] = str(len(self.data))
            r["md5Checksum"] = hashlib.md5(self.data).hexdigest()
        return r


@dataclass
class Upload:
    meta: dict
    file_id: str | None  # an update of this file, or a create
    total: int | None
    data: bytearray = field(default_factory=bytearray)
    scope: str = SCOPE_FILE


def _parse_fields(text: str | None) -> dict | None:
    """``nextPageToken,files(id,name)`` -> {'nextPageToken': None, 'files': {'id': None, …}}."""
    if not text:
        return None
    pos = 0

    def level() -> dict:
        nonlocal pos
        out: dict = {}
        name = ""
        while pos < len(text):
            c = text[pos]
            pos += 1
            if c == ",":
                if name.strip():
                    out[name.strip()] = None
                name = ""
            elif c == "(":
                out[name.strip()] = level()
                name = ""
            elif c == ")":
                break
            else:
                name += c
        if name.strip():
            out[name.strip()] = None
        return out

    result = level()
    # "files/id" style paths
    for key in [k for k in result if "/" in k]:
        head, _, rest = key.partition("/")
        result.pop(key)
        result.setdefault(head, {})[rest] = None
    return result


def _select(obj, spec):
    if spec is None or not isinstance(obj, dict):
        return obj
    if "*" in spec:
        return obj
    out = {}
    for k, sub in spec.items():
        if k in obj:
            v = obj[k]
            out[k] = [_select(x, sub) for x in v] if isinstance(v, list) and sub else _select(v, sub)
    return out


_TERM = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'\s+in\s+parents|(name|mimeType|trashed)\s*(=|!=)\s*('((?:[^'\\]|\\.)*)'|true|false))\s*$""")


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def _split_and(q: str) -> list[str]:
    terms, cur, quoted, i = [], "", False, 0
    while i < len(q):
        c = q[i]
        if quoted and c == "\\" and i + 1 < len(q):
            cur += q[i:i + 2]
            i += 2
            continue
        if c == "'":
            quoted = not quoted
        if not quoted and q[i:i + 5].lower() == " and ":
            terms.append(cur)
            cur = ""
            i += 5
            continue
        cur += c
        i += 1
    terms.append(cur)
    return terms


def compile_query(q: str):
    """A predicate for the ``q`` subset escale uses; ValueError for anything else."""
    preds = []
    for term in _split_and(q or ""):
        if not term.strip():
            continue
        m = _TERM.match(term)
        if not m:
            raise ValueError(f"Invalid Value: {term.strip()}")
        if m.group(1) is not None:
            pid = _unescape(m.group(1))
            preds.append(lambda f, pid=pid: pid in f.parents)
        else:
            attr, op, raw, s = m.group(2), m.group(3), m.group(4), m.group(5)
            if attr == "trashed":
                want = raw == "true"
                preds.append(lambda f, want=want, op=op: (not want) == (op == "="))
            else:
                val = _unescape(s) if s is not None else raw
                preds.append(lambda f, a=attr, v=val, op=op: (getattr(f, a) == v) == (op == "="))
    return lambda f: all(p(f) for p in preds)


class DriveServer:
    """The state and the HTTP server (one per test session; :meth:`new` gives each test a folder)."""

    def __init__(self, base: Path):
        self.base = base
        self.lock = threading.RLock()
        self.files: dict[str, DFile] = {}
        self.uploads: dict[str, Upload] = {}
        self.access: dict[str, tuple[float, str]] = {}  # access token -> (expiry, scope)
        self.refresh: dict[str, str] = {}  # refresh token -> scope
        self.codes: dict[str, tuple[str, str]] = {}  # authorization code -> (redirect uri, scope)
        self.service_keys: dict[str, object] = {}  # client_email -> public key
        self.token_lifetime = 3600.0
        self.quota: int | None = None
        self.page_max = 1000
        self.chunk_delay = 0.0  # seconds each resumable chunk takes (to catch an upload half-way)
        #: name -> barrier: creates of that name wait for each other (two clients' creates cross)
        self.hold_creates: dict[str, threading.Barrier] = {}
        self.counts: Counter = Counter()  # faults given, by kind
        self.seen: list[tuple[str, str, dict]] = []  # (method, path, query) of every API request
        self._faults: list[tuple[str, object, int]] = []  # (kind, match, left)
        self._storm: tuple[float, tuple[str, ...], random.Random] | None = None
        self.root = self._add("My Drive", [], FOLDER, "drive", fid="root-" + uuid.uuid4().hex[:8])
        self.appdata = self._add("appDataFolder", [], FOLDER, "appDataFolder", fid="appdata-" + uuid.uuid4().hex[:8])
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.drive = self
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="drive-server", daemon=True)

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> "DriveServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- what tests use ---------------------------------------------------------------------
    def grant(self, scope: str = SCOPE_FILE) -> str:
        """A refresh token, as the consent screen would give."""
        token = "1//" + secrets.token_urlsafe(24)
        with self.lock:
            self.refresh[token] = scope
        return token

    def token_file(self, path: Path, scope: str = SCOPE_FILE) -> Path:
        """An authorized-user token file (what ``escalectl drive-auth`` writes)."""
        path.write_text(json.dumps({"type": "authorized_user", "client_id": CLIENT_ID,
                                    "client_secret": CLIENT_SECRET, "refresh_token": self.grant(scope),
                                    "token_uri": self.url + "token", "scopes": [scope]}))
        path.chmod(0o600)
        return path

    def client_secrets(self, path: Path) -> Path:
        """An installed-app OAuth client file, as the Google Cloud console gives, pointing here."""
        path.write_text(json.dumps({"installed": {
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "project_id": "escale-test",
            "auth_uri": self.url + "auth", "token_uri": self.url + "token",
            "redirect_uris": ["http://localhost"]}}))
        return path

    def new(self) -> tuple[str, str, dict]:
        """A fresh relay location: (address, config lines, backend keywords)."""
        folder = f"t-{uuid.uuid4().hex[:12]}"
        token = self.token_file(self.base / f"token-{folder}.json")
        conf = f"api endpoint = {self.url}\ntoken file = {token}\n"
        return f"gdrive:///escale-tests/{folder}", conf, {"api_endpoint": self.url, "token_file": str(token)}

    def revoke(self, refresh_token: str | None = None) -> None:
        """Revoke one refresh token (or all) and the access tokens (the user removed access)."""
        with self.lock:
            if refresh_token is None:
                self.refresh.clear()
            else:
                self.refresh.pop(refresh_token, None)
            self.access.clear()

    def expire_tokens(self) -> None:
        with self.lock:
            self.access = {t: (0.0, s) for t, (_e, s) in self.access.items()}

    def inject(self, kind: str, count: int = 1, match=lambda method, path: True) -> None:
        """The next ``count`` requests that ``match`` get fault ``kind``: ``rate403``,
        ``rate403-global``, ``429``, ``500``, ``503``, ``cut`` (an upload chunk half stored,
        or a download half sent, then the connection closed), ``reset``."""
        with self.lock:
            self._faults.append((kind, match, count))

    def storm(self, rate: float, kinds=("rate403", "429", "rate403-global"), seed: int = 1) -> None:
        with self.lock:
            self._storm = (rate, tuple(kinds), random.Random(seed)) if rate else None

    def duplicate(self, file_id: str, data: bytes | None = None, *, created_delta: float = 0.001) -> str:
        """Another file with the same name in the same folder (as a second client's create, or
        a create whose answer was lost and was retried, would leave)."""
        with self.lock:
            f = self.files[file_id]
            dup = self._add(f.name, list(f.parents), f.mimeType, f.space,
                            data=f.data if data is None else data)
            dup.created = f.created + created_delta
            return dup.id

    def remove(self, file_id: str) -> None:
        """Delete a file or a folder with everything in it (as someone else's files.delete)."""
        with self.lock:
            todo = [file_id]
            while todo:
                fid = todo.pop()
                self.files.pop(fid, None)
                todo.extend(x.id for x in self.files.values() if fid in x.parents)

    def children(self, folder_id: str) -> list[DFile]:
        with self.lock:
            return [f for f in self.files.values() if folder_id in f.parents]

    def find(self, *path: str) -> list[DFile]:
        """Files reached by names from My Drive's root (every duplicate at every level)."""
        level = [self.root]
        for name in path:
            level = [f for p in level for f in self.children(p.id) if f.name == name]
        return level

    def used(self) -> int:
        with self.lock:
            return sum(len(f.data) for f in self.files.values())

    # -- internals --------------------------------------------------------------------------
    def _add(self, name, parents, mime, space, *, data=b"", fid=None) -> DFile:
        now = time.time()
        f = DFile(fid or self._new_id(), name, parents, mime, space, bytes(data), now, now)
        self.files[f.id] = f
        return f

    @staticmethod
    def _new_id() -> str:
        return "1" + base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")

    def resolve_id(self, fid: str) -> str:
        return {"root": self.root.id, "appDataFolder": self.appdata.id}.get(fid, fid)

    def fault_for(self, method: str, path: str) -> str | None:
        with self.lock:
            for i, (kind, match, left) in enumerate(self._faults):
                if match(method, path):
                    if left <= 1:
                        self._faults.pop(i)
                    else:
                        self._faults[i] = (kind, match, left - 1)
                    self.counts[kind] += 1
                    return kind
            if self._storm is not None and (path.startswith("/drive/") or path.startswith("/upload/")):
                rate, kinds, rng = self._storm
                if rng.random() < rate:
                    kind = rng.choice(kinds)
                    self.counts[kind] += 1
                    return kind
        return None


def _time_of(text: str | None) -> float:
    return 0.0 if not text else datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DriveTestServer/1"

    def log_message(self, *args) -> None:  # quiet
        pass

    @property
    def drive(self) -> DriveServer:
        return self.server.drive

    # -- plumbing ---------------------------------------------------------------------------
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, obj=None, *, headers: dict | None = None, raw: bytes | None = None,
              ctype: str = "application/json; charset=UTF-8") -> None:
        body = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else b"")
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body or status not in (204, 308):
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, reason: str, message: str, *, domain: str = "global",
               headers: dict | None = None) -> None:
        status_name = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                       404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
        self._send(status, {"error": {"code": status, "message": message, "status": status_name.get(status, ""),
                                      "errors": [{"domain": domain, "reason": reason, "message": message}]}},
                   headers=headers)

    def _cut(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _query(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        return parts.path, {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}

    # -- dispatch ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path, query = self._query()
        try:
            if path == "/token" and self.command == "POST":
                return self._token()
            if path == "/auth" and self.command == "GET":
                return self._auth(query)
            if not (path.startswith("/drive/v3/") or path.startswith("/upload/drive/v3/")):
                return self._error(404, "notFound", f"no such path {path}")
            self.drive.seen.append((self.command, path, query))
            scope = self._check_token()
            if scope is None:
                return
            kind = self.drive.fault_for(self.command, path)
            if kind is not None and self._fault(kind, path, query):
                return
            self._api(path, query, scope)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _fault(self, kind: str, path: str, query: dict) -> bool:
        """Give fault ``kind``; False when it does not apply here (the request goes on)."""
        if kind == "rate403":
            self._body()
            self._error(403, "userRateLimitExceeded", "User Rate Limit Exceeded.", domain="usageLimits",
                        headers={"Retry-After": "1"})
        elif kind == "rate403-global":
            self._body()
            self._error(403, "rateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits")
        elif kind == "429":
            self._body()
            self._error(429, "rateLimitExceeded", "Too Many Requests", domain="usageLimits",
                        headers={"Retry-After": "1"})
        elif kind in ("500", "503"):
            self._body()
            self._error(int(kind), "backendError", "Backend Error")
        elif kind == "reset":
            self._body()
            self._cut()
        elif kind == "cut":
            if self.command == "PUT" and query.get("upload_id"):
                return self._chunk(query, cut=True) or True
            if self.command == "GET" and query.get("alt") == "media":
                return self._media(path.rsplit("/", 1)[-1], cut=True) or True
            return False
        else:
            raise AssertionError(kind)
        return True

    def _check_token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self.drive.lock:
            expiry, scope = self.drive.access.get(token, (0.0, ""))
        if not token or expiry < time.time():
            self._body()
            self._error(401, "authError", "Request had invalid authentication credentials. Expected OAuth 2 "
                                          "access token, login cookie or other valid authentication credential.",
                        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
                                                     'error="invalid_token"'})
            return None
        return scope

    # -- OAuth ------------------------------------------------------------------------------
    def _issue(self, scope: str, refresh: str | None = None) -> dict:
        token = "ya29." + secrets.token_urlsafe(24)
        d = self.drive
        with d.lock:
            d.access[token] = (time.time() + d.token_lifetime, scope)
        out = {"access_token": token, "expires_in": int(d.token_lifetime), "token_type": "Bearer", "scope": scope}
        if refresh:
            out["refresh_token"] = refresh
        return out

    def _token(self) -> None:
        form = {k: v[-1] for k, v in parse_qs(self._body().decode()).items()}
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):  # requests-oauthlib sends the client's id and secret this way
            cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            form.setdefault("client_id", cid)
            form.setdefault("client_secret", secret)
        d = self.drive
        grant = form.get("grant_type")
        if grant == "refresh_token":
            with d.lock:
                scope = d.refresh.get(form.get("refresh_token", ""))
            if scope is None or form.get("client_id") != CLIENT_ID:
                return self._send(400, {"error": "invalid_grant", "error_description": "Token has been expired or "
                                                                                       "revoked."})
            return self._send(200, self._issue(scope))
        if grant == "authorization_code":
            with d.lock:
                got = d.codes.pop(form.get("code", ""), None)
            if got is None or got[0] != form.get("redirect_uri") or form.get("client_id") != CLIENT_ID:
                return self._send(400, {"error": "invalid_grant", "error_description": "Malformed auth code."})
            refresh = d.grant(got[1])
            return self._send(200, self._issue(got[1], refresh))
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._jwt(form.get("assertion", ""))
        return self._send(400, {"error": "unsupported_grant_type"})

    def _jwt(self, assertion: str) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            head, body, sig = assertion.split(".")
            pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
            claims = json.loads(base64.urlsafe_b64decode(pad(body)))
            key = self.drive.service_keys[claims["iss"]]
            key.verify(base64.urlsafe_b64decode(pad(sig)), f"{head}.{body}".encode(), padding.PKCS1v15(),
                       hashes.SHA256())
            if claims["exp"] < time.time() or claims["aud"] not in (self.drive.url + "token",
                                                                   "https://oauth2.googleapis.com/token"):
                raise ValueError("expired or wrong audience")
        except Exception:  # noqa: BLE001 - any bad assertion
            return self._send(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        return self._send(200, self._issue(claims.get("scope", SCOPE_FILE)))

    def _auth(self, query: dict) -> None:
        if query.get("client_id") != CLIENT_ID or query.get("response_type") != "code":
            return self._send(400, raw=b"Error 400: invalid_request", ctype="text/plain")
        code = "4/" + secrets.token_urlsafe(16)
        with self.drive.lock:
            self.drive.codes[code] = (query.get("redirect_uri", ""), query.get("scope", SCOPE_FILE))
        target = query.get("redirect_uri", "") + "?" + urlencode(
            {"state": query.get("state", ""), "code": code, "scope": query.get("scope", "")})
        self._send(302, headers={"Location": target}, raw=b"")

    # -- Drive API --------------------------------------------------------------------------
    def _may(self, scope: str, space: str) -> bool:
        return scope in (SCOPE_DRIVE,) or (SCOPE_APPDATA in scope.split() if space == "appDataFolder"
                                           else SCOPE_FILE in scope.split())

    def _denied(self) -> None:
        self._error(403, "insufficientPermissions", "Request had insufficient authentication scopes.")

    def _file(self, fid: str, scope: str) -> DFile | None:
        d = self.drive
        with d.lock:
            f = d.files.get(d.resolve_id(fid))
        if f is None or not self._may(scope, f.space):
            self._error(404, "notFound", f"File not found: {fid}.")
            return None
        return f

    def _api(self, path: str, query: dict, scope: str) -> None:
        fields = _parse_fields(query.get("fields"))
        m = self.command
        if path == "/drive/v3/about" and m == "GET":
            d = self.drive
            used = d.used()
            q = {"usage": str(used), "usageInDrive": str(used), "usageInDriveTrash": "0"}
            if d.quota is not None:
                q["limit"] = str(d.quota)
            return self._send(200, _select({"kind": "drive#about", "storageQuota": q}, fields))
        if path == "/drive/v3/files" and m == "GET":
            return self._list(query, scope, fields)
        if path == "/drive/v3/files" and m == "POST":
            meta = json.loads(self._body() or b"{}")
            return self._create(meta, b"", scope, fields)
        if path in ("/upload/drive/v3/files",) and m == "POST" or \
                path.startswith("/upload/drive/v3/files/") and m == "PATCH":
            fid = path.rsplit("/", 1)[-1] if m == "PATCH" else None
            return self._upload(fid, query, scope, fields)
        if path.startswith("/upload/drive/v3/files") and m in ("PUT", "DELETE") and query.get("upload_id"):
            if m == "DELETE":
                with self.drive.lock:
                    self.drive.uploads.pop(query["upload_id"], None)
                return self._send(499, raw=b"", headers={})
            return self._chunk(query)
        if path.startswith("/drive/v3/files/"):
            fid = path[len("/drive/v3/files/"):]
            if "/" in fid:
                return self._error(404, "notFound", f"no method {path}")
            if m == "GET" and query.get("alt") == "media":
                return self._media(fid, scope=scope)
            f = self._file(fid, scope)
            if f is None:
                self._body()
                return
            if m == "GET":
                return self._send(200, _select(f.resource(), fields or _DEFAULT))
            if m == "PATCH":
                meta = json.loads(self._body() or b"{}")
                return self._update(f, meta, None, query, fields)
            if m == "DELETE":
                self._delete(f)
                return self._send(204)
        self._body()
        self._error(404, "notFound", f"no method {m} {path}")

    def _list(self, query: dict, scope: str, fields) -> None:
        d = self.drive
        try:
            pred = compile_query(query.get("q", ""))
            size = min(int(query.get("pageSize") or 100), d.page_max)
            start = int(base64.urlsafe_b64decode(query["pageToken"]).decode()) if query.get("pageToken") else 0
        except (ValueError, KeyError) as exc:
            return self._error(400, "invalid", f"Invalid Value: {exc}")
        spaces = set((query.get("spaces") or "drive").split(","))
        q = query.get("q", "")
        with d.lock:
            ids = {"root": d.root.id, "appDataFolder": d.appdata.id}
            for alias, real in ids.items():
                q = q.replace(f"'{alias}' in parents", f"'{real}' in parents")
            pred = compile_query(q)
            found = sorted((f for f in d.files.values() if f.id not in (d.root.id, d.appdata.id)
                            and f.space in spaces and self._may(scope, f.space) and pred(f)), key=lambda f: f.id)
            page = [f.resource() for f in found[start:start + size]]
        out = {"kind": "drive#fileList", "incompleteSearch": False, "files": page}
        if start + size < len(found):
            out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        self._send(200, _select(out, fields or {"kind": None, "nextPageToken": None, "incompleteSearch": None,
                                                "files": _DEFAULT}))

    def _parent_space(self, meta: dict, scope: str) -> tuple[list[str], str] | None:
        d = self.drive
        parents = [d.resolve_id(p) for p in meta.get("parents") or ["root"]]
        with d.lock:
            p = d.files.get(parents[0])
        if p is None or p.mimeType != FOLDER:
            self._error(404, "notFound", f"File not found: {parents[0]}.")
            return None
        if not self._may(scope, p.space):
            self._denied()
            return None
        return parents, p.space

    def _over_quota(self, growth: int) -> bool:
        d = self.drive
        if d.quota is not None and d.used() + growth > d.quota:
            self._error(403, "storageQuotaExceeded", "The user's Drive storage quota has been exceeded.")
            return True
        return False

    def _create(self, meta: dict, data: bytes, scope: str, fields) -> None:
        hold = self.drive.hold_creates.get(str(meta.get("name")))
        if hold is not None:
            try:
                hold.wait(60)
            except threading.BrokenBarrierError:
                pass
        where = self._parent_space(meta, scope)
        if where is None:
            return
        if self._over_quota(len(data)):
            return
        d = self.drive
        with d.lock:
            f = d._add(str(meta.get("name", "Untitled")), where[0], meta.get("mimeType") or
                       "application/octet-stream", where[1], data=data)
        self._send(200, _select(f.resource(), fields or _DEFAULT))

    def _update(self, f: DFile, meta: dict, data: bytes | None, query: dict, fields) -> None:
        d = self.drive
        if data is not None and self._over_quota(len(data) - len(f.data)):
            return
        with d.lock:
            if "name" in meta:
                f.name = str(meta["name"])
            for p in filter(None, (query.get("removeParents") or "").split(",")):
                f.parents = [x for x in f.parents if x != d.resolve_id(p)]
            for p in filter(None, (query.get("addParents") or "").split(",")):
                f.parents.append(d.resolve_id(p))
            if data is not None:
                f.data = bytes(data)
            f.modified = time.time()
            f.version += 1
        self._send(200, _select(f.resource(), fields or _DEFAULT))

    def _delete(self, f: DFile) -> None:
        self.drive.remove(f.id)

    def _upload(self, fid: str | None, query: dict, scope: str, fields) -> None:
        kind = query.get("uploadType")
        target = None
        if fid is not None:
            target = self._file(fid, scope)
            if target is None:
                self._body()
                return
        if kind == "media":
            data, meta = self._body(), {}
        elif kind == "multipart":
            try:
                meta, data = _multipart(self.headers.get("Content-Type", ""), self._body())
            except ValueError as exc:
                return self._error(400, "badContent", f"bad multipart body: {exc}")
        elif kind == "resumable":
            meta = json.loads(self._body() or b"{}")
            if target is None and self._parent_space(meta, scope) is None:
                return
            total = self.headers.get("X-Upload-Content-Length")
            uid = secrets.token_urlsafe(18)
            with self.drive.lock:
                self.drive.uploads[uid] = Upload(meta, target.id if target else None,
                                                 int(total) if total else None, scope=scope)
            loc = f"{self.drive.url}upload/drive/v3/files" + (f"/{target.id}" if target else "") + \
                f"?uploadType=resumable&upload_id={uid}" + (f"&fields={query['fields']}" if query.get("fields") else "")
            return self._send(200, headers={"Location": loc, "X-GUploader-UploadID": uid}, raw=b"")
        else:
            self._body()
            return self._error(400, "invalid", f"Invalid value for uploadType: {kind}")
        if target is not None:
            return self._update(target, meta, data, query, fields)
        return self._create(meta, data, scope, fields)

    def _chunk(self, query: dict, cut: bool = False) -> None:
        d = self.drive
        if d.chunk_delay:
            time.sleep(d.chunk_delay)
        uid = query["upload_id"]
        with d.lock:
            up = d.uploads.get(uid)
        body = self._body()
        if up is None:
            return self._error(404, "notFound", "No upload session.")
        crange = self.headers.get("Content-Range", "")
        m = re.match(r"bytes (\*|(\d+)-(\d+))/(\*|\d+)$", crange.strip())
        if not m:
            return self._error(400, "badRequest", f"bad Content-Range {crange!r}")
        total = None if m.group(4) == "*" else int(m.group(4))
        if m.group(1) != "*":
            start = int(m.group(2))
            have = len(up.data)
            if start > have:
                return self._error(400, "badRequest", "Invalid request. Wrong starting byte.")
            fresh = body[have - start:]  # a resent chunk: keep only the bytes not yet stored
            if cut:
                keep = (len(fresh) // 2) // CHUNK_GRANULE * CHUNK_GRANULE
                with d.lock:
                    up.data += fresh[:keep]
                return self._cut()
            with d.lock:
                up.data += fresh
        if total is not None:
            up.total = total
        if up.total is not None and len(up.data) >= up.total:
            with d.lock:
                d.uploads.pop(uid, None)
            fields = _parse_fields(query.get("fields"))
            data = bytes(up.data[:up.total])
            if up.file_id is not None:
                f = self._file(up.file_id, up.scope)
                if f is None:
                    return
                return self._update(f, up.meta, data, {}, fields)
            return self._create(up.meta, data, up.scope, fields)
        headers = {"Range": f"bytes=0-{len(up.data) - 1}"} if up.data else {}
        self._send(308, headers=headers, raw=b"")

    def _media(self, fid: str, scope: str = SCOPE_DRIVE, cut: bool = False) -> None:
        f = self._file(fid, scope)
        if f is None:
            return
        if f.mimeType == FOLDER:
            return self._error(403, "fileNotDownloadable", "Only files with binary content can be downloaded.")
        data, total = f.data, len(f.data)
        rng = self.headers.get("Range")
        status, headers = 200, {}
        if rng:
            m = re.match(r"bytes=(\d+)-(\d*)$", rng.strip())
            if m:
                a = int(m.group(1))
                b = min(int(m.group(2)) if m.group(2) else total - 1, total - 1)
                if a >= total and total > 0:
                    return self._send(416, raw=b"", headers={"Content-Range": f"bytes */{total}"})
                status, data = 206, data[a:b + 1]
                headers["Content-Range"] = f"bytes {a}-{a + len(data) - 1}/{total}" if data else f"bytes */{total}"
        if cut:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            return self._cut()
        self._send(status, raw=data, headers=headers, ctype="application/octet-stream")


_DEFAULT = {"kind": None, "id": None, "name": None, "mimeType": None}


def _multipart(ctype: str, body: bytes) -> tuple[dict, bytes]:
    """The (metadata, media) of a ``multipart/related`` upload body."""
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    if not m:
        raise ValueError("no boundary")
    delim = b"--" + m.group(1).encode()
    first = body.index(delim)
    nl = b"\r\n" if body[first + len(delim):first + len(delim) + 2] == b"\r\n" else b"\n"
    parts = body[first + len(delim) + len(nl):].split(nl + delim)
    out = []
    for part in parts[:2]:
        head, sep, content = part.partition(nl + nl)
        if not sep:
            raise ValueError("part without headers")
        out.append(content)
    if len(out) != 2:
        raise ValueError("two parts expected")
    return json.loads(out[0] or b"{}"), out[1]


@pytest.fixture(scope="session")
def relay_gdrive(tmp_path_factory):
    """The local Drive v3 server, started once per test session."""
    server = DriveServer(tmp_path_factory.mktemp("gdrive")).start()
    yield server
    server.stop()


def main() -> None:
    """Serve in a process of its own (the benchmark): prints the URL and one token file's
    config lines as JSON on one line, then serves until SIGTERM."""
    import argparse
    import signal
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()
    server = DriveServer(Path(args.dir)).start()
    address, conf, kwargs = server.new()
    print(json.dumps({"url": server.url, "address": address, "conf": conf, "kwargs": kwargs}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.thread.join()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
