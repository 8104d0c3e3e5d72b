"""Google Drive used as the relay (``gdrive:///folder/path``, ``gdrive://<folder id>/sub/path``;
``google://`` and ``googledrive://`` are escale 0.7's names for the same).

Library: google-api-python-client (Drive v3) built from the discovery document it ships
(no discovery request), with google-auth credentials and google-auth-httplib2 transport;
google-auth-oauthlib runs the consent flow (``escalectl drive-auth``). They are imported
when a Drive relay is first opened, never by ``import escale.relay``.

Addresses
    ``gdrive:///a/b`` is the folder path ``a/b`` from the root of My Drive (or of the
    application data folder with ``app data folder = yes``), created when missing.
    ``gdrive://<folder id>/a/b`` starts from the folder with that id instead.
    With the ``drive.file`` scope escale sees only what it created itself, so let it
    create the folder (a folder made in the Drive web page is invisible to it; the
    folder-id form is for a folder escale created, or a shared drive with a service
    account).

Authentication (see docs/relays.md)
    A user token (``escalectl drive-auth -r NAME``: installed-app OAuth with a loopback
    redirect, or ``--headless``: print a URL, paste the answer) is kept 0600 in the
    repository's state folder (``gdrive-token.json``, or ``token file``) and refreshed
    automatically; or a service-account JSON key (``service account``). Scope:
    ``drive.file``, or ``drive.appdata`` with ``app data folder = yes``. A token that
    expired for good or was revoked is an AuthenticationError (exit code 2) naming the
    command that fixes it.

Layout and Drive's semantics
    Every relay object is one file directly in the relay folder, named with the full
    relay name (Drive names may hold ``/``): no sub-folders, so no folder-creation race
    and no path->id cache to invalidate below the relay folder. Names are not unique on
    Drive: among files sharing a name the one with the oldest ``createdTime`` (then the
    smallest id) *is* the object, for every client alike; a put replaces that one in
    place (``files.update`` with media: readers see the old or the new content) and
    deletes the other copies (a name has one writer: the copies are its own, left by a
    create whose answer was lost); delete removes every copy. Ids seen are cached; an id
    that is gone (404) is looked up again once; a relay folder whose id is gone is looked
    up again by path (never created mid-run).

    Create-if-absent is not atomic on Drive (declared: ``atomic_create=False``). A
    create-only put looks the name up, creates, then looks again: when another client's
    file with the same name is older, it deletes its own and raises ObjectExists. Of two
    clients racing, both end with the older file (the second to look sees both); what is
    left is the storage's listing lag, which Drive does not document.

    Uploads up to 5 MiB are one multipart request; larger ones are resumable sessions in
    ``chunk size`` pieces, read from the stream one chunk at a time: an interrupted chunk
    is resumed from the offset the server acknowledges (``Content-Range: bytes */N``
    query, then 308 ``Range``). A session left by a killed process is cancelled by
    :meth:`abort_incomplete` (the session URIs are kept in the state folder).
    Downloads are ranged GETs (``alt=media``) of ``chunk size``; a broken one resumes at
    the byte reached; a multi-chunk object is checked against its ``md5Checksum``.
    Deletion is ``files.delete``: permanent, not the trash, so the quota frees at once.
    ``about.get``'s storage quota is :meth:`usage`. Listings ask only for the fields they
    use and follow ``nextPageToken``.

Retries
    403 ``userRateLimitExceeded``/``rateLimitExceeded``, 429, 5xx, connection errors and
    timeouts are retried ``max retries`` times with exponential back-off and jitter,
    waiting at least what ``Retry-After`` asks. A create whose answer was lost is checked
    (a file of that name with our bytes) before it is sent again.

Length: one backend's whole contract over one API (OAuth token, folder tree,
listings, resumable uploads, duplicates by name, retries); splitting it would scatter
one protocol across files.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, TypeVar
from urllib.parse import unquote

from ..errors import (AuthenticationError, ConfigError, EscaleError, ObjectExists, PermanentRelayError,
                      QuotaExceeded, RelayError, RelayObjectMissing, SourceError, TransientRelayError)
from ..values import parse_bool, parse_size
from .base import Capabilities, ObjectInfo, Relay, RelayOption, Usage, check_name
from . import retry
from .options import MAX_RETRIES
from .split import MAX_OBJECT_SIZE

log = logging.getLogger(__name__)

SCOPE_FILE = "https://www.googleapis.com/auth/drive.file"
SCOPE_APPDATA = "https://www.googleapis.com/auth/drive.appdata"
FOLDER_MIME = "application/vnd.google-apps.folder"
OBJECT_MIME = "application/octet-stream"
#: the state folder's files of this backend
TOKEN_NAME = "gdrive-token.json"
SESSIONS_NAME = "gdrive-uploads.json"
MiB = 1 << 20
#: objects up to this size go in one multipart request (Drive's limit for it is 5 MB)
SIMPLE_MAX = 5 * MiB
DEFAULT_CHUNK = 8 * MiB
GRANULE = 256 * 1024  # resumable chunks are multiples of this
DEFAULT_RETRIES = 8
BACKOFF_CAP, RETRY_AFTER_CAP = 32.0, 300.0
FILE_FIELDS = "id,name,size,md5Checksum,createdTime,modifiedTime,version,mimeType"
LIST_FIELDS = f"nextPageToken,incompleteSearch,files({FILE_FIELDS})"
PAGE_SIZE = 1000
RATE_REASONS = {"userRateLimitExceeded", "rateLimitExceeded", "backendError", "internalError"}
QUOTA_REASONS = {"storageQuotaExceeded", "quotaExceeded", "teamDriveFileLimitExceeded"}
AUTH_REASONS = {"insufficientPermissions", "insufficientFilePermissions", "appNotAuthorizedToFile",
                "authError", "invalidCredentials", "domainPolicy"}

T = TypeVar("T")

# googleapiclient warns about every 403/429 it sees; the retries here say what matters
for _name in ("googleapiclient.http", "googleapiclient.discovery_cache"):
    _lg = logging.getLogger(_name)
    if _lg.level == logging.NOTSET:
        _lg.setLevel(logging.ERROR)
_DOC_LOCK = threading.Lock()
_DOC: dict | None = None


def _parse_url(text: str) -> str:
    t = text.strip()
    if not (t.startswith("http://") or t.startswith("https://")):
        raise ValueError(f"'{t}' is not an http(s):// URL (e.g. http://127.0.0.1:8080/)")
    if t.startswith("http://"):
        from urllib.parse import urlsplit

        try:
            host = urlsplit(t).hostname or ""
        except ValueError:
            host = ""
        if host not in ("127.0.0.1", "localhost", "::1"):  # the access token would travel in the clear
            raise ValueError(f"'{t}' is plain http: the Drive tokens would travel unencrypted; use https:// "
                             "(http:// is for a server on this machine: 127.0.0.1, localhost, [::1])")
    return t if t.endswith("/") else t + "/"


def _parse_path(text: str) -> str:
    t = os.path.expanduser(text.strip())
    if not t:
        raise ValueError("empty path")
    return t


def _parse_chunk(text: str) -> int:
    n = parse_size(text) if isinstance(text, str) else int(text)
    if n < GRANULE or n % GRANULE:
        raise ValueError(f"chunk size {n} must be a multiple of 256 KiB (262144 bytes), e.g. 8MiB")
    return n


def _option(value, parse: Callable[[str], T], option: str, default: T) -> T:
    """A keyword given as text (configuration) or as its value (Python callers)."""
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        return value  # already parsed
    try:
        return parse(value)
    except ValueError as exc:
        raise ConfigError(str(exc), option=option) from None


def _drive_doc(endpoint: str | None) -> dict:
    """The packaged Drive v3 discovery document, its root moved to ``endpoint``."""
    global _DOC
    with _DOC_LOCK:
        if _DOC is None:
            from googleapiclient.discovery_cache import get_static_doc

            text = get_static_doc("drive", "v3")
            if text is None:  # pragma: no cover - a broken install
                raise ConfigError("google-api-python-client lacks its Drive v3 discovery document; reinstall it",
                                  option="relay address")
            _DOC = json.loads(text)
    doc = dict(_DOC)
    if endpoint:
        doc["rootUrl"] = endpoint
        doc["baseUrl"] = endpoint + doc.get("servicePath", "drive/v3/")
        doc["mtlsRootUrl"] = endpoint
    return doc


@dataclass(frozen=True)
class _File:
    id: str
    name: str
    size: int
    md5: str | None
    created: str
    modified: str
    version: str

    @classmethod
    def of(cls, r: dict) -> "_File":
        return cls(r["id"], r.get("name", ""), int(r.get("size") or 0), r.get("md5Checksum"),
                   r.get("createdTime", ""), r.get("modifiedTime", ""), str(r.get("version", "")))

    def order(self) -> tuple[str, str]:
        """Which of several files with one name is the object: the oldest, then the smallest id."""
        return (self.created, self.id)

    def info(self) -> ObjectInfo:
        return ObjectInfo(self.name, self.size, _stamp(self.modified, self.version), f"{self.id}.{self.version}")


def _stamp(rfc3339: str, version: str) -> float:
    """modifiedTime as seconds, plus a fraction of the version (a version stamp, not a clock)."""
    import datetime

    try:
        t = datetime.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        t = 0.0
    try:
        v = int(version)
    except ValueError:
        v = 0
    return round(t, 3) + (v % 1000) / 1e7


def _q(text: str) -> str:
    """A string literal of Drive's query language."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_drive_address(address: str) -> tuple[str | None, list[str]]:
    """(folder id or None for the root, folder names below it) of a gdrive address."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        raise ConfigError(f"relay address '{address}' is not gdrive:///folder/path or gdrive://<folder id>/path",
                          option="relay address")
    if rest.startswith("/"):
        start, path = None, rest
    else:
        start, _, path = rest.partition("/")
        start = start.strip() or None
    parts = [unquote(p) for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ConfigError(f"relay address '{address}' has a '.' or '..' folder", option="relay address")
    return start, parts


class _Window:
    """A non-seekable source of known size seen through one chunk: googleapiclient asks
    for ``getbytes(offset, n)`` with offsets that never go back before the last
    acknowledged one, so only the current chunk is kept in memory."""

    def __init__(self, src: BinaryIO, size: int, name: str):
        self.src, self.size, self.name = src, size, name
        self.base = 0
        self.buf = bytearray()

    # MediaIoBaseUpload finds the size with seek(0, 2) / tell()
    def seek(self, offset: int, whence: int = 0) -> int:
        return self.size if whence == 2 else offset

    def tell(self) -> int:
        return self.size

    def chunk(self, begin: int, length: int) -> bytes:
        if begin < self.base:
            raise RelayError(f"relay object {self.name}: the upload went back to byte {begin}, before the "
                             f"{self.base} bytes already confirmed")
        del self.buf[:begin - self.base]
        self.base = begin
        end = min(begin + length, self.size)
        need = end - (self.base + len(self.buf))
        if need > 0:
            data = _read_source(self.src, need, self.name)
            if len(data) < need:
                raise SourceError(f"the data to send as relay object {self.name} ended at byte "
                                  f"{self.base + len(self.buf) + len(data)} of {self.size}")
            self.buf += data
        return bytes(self.buf[:end - begin])


def _read_source(stream: BinaryIO, n: int, name: str) -> bytes:
    """Up to ``n`` bytes of the caller's data; a read error is the caller's (SourceError)."""
    out = bytearray()
    try:
        while len(out) < n:
            block = stream.read(n - len(out))
            if not block:
                break
            out += block
    except EscaleError:
        raise
    except OSError as exc:
        raise SourceError(f"cannot read the data to send as relay object {name}: {exc.strerror or exc}") from exc
    return bytes(out)


def _upload_class():
    from googleapiclient.http import MediaIoBaseUpload

    class _Media(MediaIoBaseUpload):
        """Chunks handed to httplib2 as bytes (a stream body cannot be re-sent by its retry)."""

        def has_stream(self) -> bool:
            return False

        def getbytes(self, begin: int, length: int) -> bytes:
            return self._fd.chunk(begin, length)

    return _Media


class GoogleDrive(Relay):
    schemes = ("gdrive", "google", "googledrive")
    options = (
        RelayOption("api_endpoint", ("api endpoint",), _parse_url,
                    doc="root URL of the Drive API (default Google's; a local test server or a compatible "
                        "proxy, e.g. http://127.0.0.1:8080/; plain http:// only on this machine)"),
        RelayOption("app_data_folder", ("app data folder", "appdatafolder"), parse_bool,
                    doc="keep the relay in the hidden application data folder (scope drive.appdata; "
                        "invisible in the Drive web page)"),
        RelayOption("client_secrets", ("client secrets", "client secrets file"), _parse_path,
                    doc="the OAuth client file (Desktop app) from the Google Cloud console, used by "
                        "escalectl drive-auth", path=True),
        RelayOption("service_account", ("service account", "service account file"), _parse_path, secret=False,
                    doc="a service account's JSON key file, instead of a user token", path=True),
        RelayOption("token_file", ("token file",), _parse_path,
                    doc="where the user token is kept (default: gdrive-token.json in the state folder)", path=True),
        RelayOption("chunk_size", ("chunk size",), _parse_chunk,
                    doc="size of resumable upload and ranged download pieces (multiple of 256 KiB, default 8 MiB)"),
        MAX_RETRIES,
        MAX_OBJECT_SIZE,
    )

    def __init__(self, address: str, *, api_endpoint: str | None = None, app_data_folder=None,
                 client_secrets: str | None = None, service_account: str | None = None,
                 token_file: str | None = None, chunk_size=None, max_retries=None, repository: str | None = None,
                 **_ignored):
        super().__init__(address)
        self.start_id, self.path = parse_drive_address(address)
        self.endpoint = _option(api_endpoint, _parse_url, "api endpoint", None)
        self.app_data = _option(app_data_folder, parse_bool, "app data folder", False)
        if self.start_id == "appDataFolder":
            self.app_data = True
        self.scope = SCOPE_APPDATA if self.app_data else SCOPE_FILE
        self.client_secrets = _option(client_secrets, _parse_path, "client secrets", None)
        self.service_account = _option(service_account, _parse_path, "service account", None)
        self.token_file = Path(_option(token_file, _parse_path, "token file", "")) if token_file else None
        self.chunk_size = _option(chunk_size, _parse_chunk, "chunk size", DEFAULT_CHUNK)
        #: the shared retry policy (escale/relay/retry.py): back-off with jitter, Retry-After honoured
        self.retry = retry.RetryPolicy.from_option(max_retries, DEFAULT_RETRIES, cap=BACKOFF_CAP,
                                                   retry_after_max=RETRY_AFTER_CAP)
        self.repository = repository
        self.state_dir: Path | None = None
        self.folder_id: str | None = None
        self._creds = None
        self._doc: dict | None = None
        self._local = threading.local()
        self._ids: dict[str, str] = {}  # relay name -> file id (a cache; a gone id is looked up again)
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[str, float]] = {}  # session URI -> (name, started)

    @classmethod
    def location(cls, address: str, directory: str) -> str | None:
        """``gdrive:///path`` or ``gdrive://<folder id>/path``, with ``relay directory`` appended."""
        parse_drive_address(address)  # ConfigError on a malformed one
        scheme, _, rest = address.partition("://")
        url = f"{scheme.lower()}://{rest}"
        if directory.strip("/"):
            url = url.rstrip("/") + "/" + directory.strip("/")
        parse_drive_address(url)
        return url

    # -- where things live -------------------------------------------------------------------
    def use_state_dir(self, state_dir: Path, repository: str | None = None) -> None:
        """The repository's state folder (private), where the token and upload sessions live."""
        self.state_dir = Path(state_dir)
        if repository:
            self.repository = repository

    @property
    def fix(self) -> str:
        """The command that (re)authorizes this relay."""
        return f"escalectl drive-auth -r {self.repository}" if self.repository else "escalectl drive-auth -r <repository>"

    def token_path(self) -> Path | None:
        if self.token_file is not None:
            return self.token_file
        return self.state_dir / TOKEN_NAME if self.state_dir is not None else None

    # -- connection --------------------------------------------------------------------------
    def _credentials(self):
        if self.service_account:
            from google.oauth2 import service_account

            try:
                return service_account.Credentials.from_service_account_file(self.service_account,
                                                                             scopes=[self.scope])
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(f"cannot use the service account key {self.service_account}: {exc}",
                                  option="service account") from None
        path = self.token_path()
        if path is None or not path.exists():
            raise AuthenticationError(f"no Google Drive authorization for {self.address} yet"
                                      + (f" ({path} does not exist)" if path else "") + f": run `{self.fix}`")
        from google.oauth2.credentials import Credentials

        try:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
                log.warning("%s: the Drive token %s was readable by other users; made it 0600", self.address, path)
            info = json.loads(path.read_text())
            creds = Credentials.from_authorized_user_info(info)
            if self.endpoint and info.get("token_uri"):
                # google-auth always refreshes at Google; a local server or a proxy named by
                # 'api endpoint' has its own token endpoint (the token file says which)
                creds = creds.with_token_uri(info["token_uri"])
        except (OSError, ValueError, KeyError) as exc:
            raise AuthenticationError(f"the Google Drive token {path} is unusable ({exc}): run `{self.fix}`") from None
        granted = set(info.get("scopes") or [])
        if granted and self.scope not in granted and "https://www.googleapis.com/auth/drive" not in granted:
            raise AuthenticationError(f"the Google Drive token {path} grants {', '.join(sorted(granted))}, not "
                                      f"{self.scope} that this relay needs: run `{self.fix}`")
        refresh = creds.refresh

        def refresh_and_keep(request) -> None:
            refresh(request)
            self._save_token(creds, path)

        creds.refresh = refresh_and_keep  # the new access token is kept for the next run
        return creds

    def _save_token(self, creds, path: Path) -> None:
        data = creds.to_json()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("%s: cannot keep the refreshed Drive token in %s: %s", self.address, path, exc)

    def _service(self):
        s = getattr(self._local, "service", None)
        if s is None:
            import google_auth_httplib2
            from googleapiclient.discovery import build_from_document
            from googleapiclient.http import build_http

            if self._creds is None:
                self._creds = self._credentials()
            http = google_auth_httplib2.AuthorizedHttp(self._creds, http=build_http())
            s = build_from_document(self._doc, http=http)
            self._local.service = s
        return s

    def open(self) -> None:
        try:
            import googleapiclient  # noqa: F401
        except ImportError as exc:  # a dependency; only a broken install lacks it
            raise ConfigError(f"the gdrive relay needs google-api-python-client ({exc}); "
                              "pip install google-api-python-client google-auth-oauthlib",
                              option="relay address") from None
        self._doc = _drive_doc(self.endpoint)
        self._creds = self._credentials()
        self.folder_id = self._resolve_folder()

    def close(self) -> None:
        self._local = threading.local()

    # -- requests and errors -----------------------------------------------------------------
    def _map(self, exc: BaseException, what: str) -> EscaleError:
        from google.auth import exceptions as gexc
        from googleapiclient.errors import HttpError

        if isinstance(exc, EscaleError):
            return exc
        if isinstance(exc, HttpError):
            status = int(exc.resp.status)
            reason, message = _reason(exc)
            ra = exc.resp.get("retry-after")
            if status in (429, 500, 502, 503, 504) or (status == 403 and reason in RATE_REASONS):
                return retry.transient(f"{what}: Google Drive answered {status} {reason or message}",
                                       _seconds(ra), f"{status} {reason or message}")
            if status == 401 or (status == 403 and reason in AUTH_REASONS):
                return AuthenticationError(f"Google Drive refused the authorization for {self.address} "
                                           f"({status} {reason or message}): run `{self.fix}`")
            if status == 403 and reason in QUOTA_REASONS:
                return QuotaExceeded(f"{what}: Google Drive is full ({reason}: {message})")
            if status == 404:
                return RelayObjectMissing(f"{what} is missing on {self.address}")
            return PermanentRelayError(f"{what}: Google Drive answered {status} {reason}: {message}")
        if isinstance(exc, gexc.RefreshError):
            if getattr(exc, "retryable", False):
                return TransientRelayError(f"{what}: refreshing the Drive token failed for now: {exc}")
            return AuthenticationError(f"the Google Drive authorization for {self.address} expired or was "
                                       f"revoked ({_short(exc)}): run `{self.fix}`")
        if isinstance(exc, gexc.TransportError):
            return TransientRelayError(f"{what}: {exc}")
        if isinstance(exc, (OSError, ConnectionError, TimeoutError)) or type(exc).__module__.startswith(
                ("httplib2", "http.client", "ssl")):
            return TransientRelayError(f"{what}: {type(exc).__name__}: {exc}")
        return PermanentRelayError(f"{what}: {type(exc).__name__}: {exc}")

    @property
    def max_retries(self) -> int:
        return self.retry.max_retries

    def _call(self, fn: Callable[[], T], what: str, landed: Callable[[], T | None] | None = None) -> T:
        """``fn()`` under the shared retry policy; ``landed()`` returns what a failed try
        that acted anyway made (its answer lost), or None."""
        found: list = []

        def once(_attempt: int) -> T:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - mapped to the taxonomy
                raise self._map(exc, what) from None

        def did_land() -> bool:
            got = landed() if landed is not None else None
            if got is not None:
                found.append(got)
            return got is not None

        result = retry.call(once, policy=self.retry, what=what, landed=did_land if landed is not None else None)
        return found[-1] if result is retry.LANDED else result

    # -- folders -----------------------------------------------------------------------------
    def _children(self, parent: str, extra: str = "") -> Iterator[dict]:
        q = f"{_q(parent)} in parents and trashed = false" + (f" and {extra}" if extra else "")
        token = None
        while True:
            kw = dict(q=q, fields=LIST_FIELDS, pageSize=PAGE_SIZE, supportsAllDrives=True,
                      includeItemsFromAllDrives=True)
            if self.app_data:
                kw["spaces"] = "appDataFolder"
            if token:
                kw["pageToken"] = token
            page = self._call(lambda: self._service().files().list(**kw).execute(num_retries=0),
                              f"listing of {self.address}")
            if page.get("incompleteSearch"):
                raise TransientRelayError(f"Google Drive gave an incomplete listing of {self.address}")
            yield from page.get("files", [])
            token = page.get("nextPageToken")
            if not token:
                return

    def _resolve_folder(self, create: bool = True) -> str | None:
        """The relay folder's id from its path (created when missing, unless not ``create``)."""
        current = self.start_id or ("appDataFolder" if self.app_data else "root")
        if self.start_id and self.start_id != "appDataFolder":
            meta = self._call(lambda: self._service().files().get(
                fileId=current, fields="id,mimeType,trashed", supportsAllDrives=True).execute(num_retries=0),
                f"folder {current}")
            if meta.get("mimeType") != FOLDER_MIME or meta.get("trashed"):
                raise RelayError(f"{self.address}: {current} is not a folder (or is in the trash)")
        for name in self.path:
            found = self._folder(current, name, create)
            if found is None:
                return None
            current = found
        return current

    def _recover_folder(self) -> bool:
        """The cached relay folder id is gone: look its path up again (another client may have
        made it anew). True when another folder now holds that path; never creates one."""
        try:
            found = self._resolve_folder(create=False)
        except RelayObjectMissing:
            return False
        if found is None or found == self.folder_id:
            return False
        log.warning("%s: the relay folder (id %s) is gone; using the folder now at that path (id %s)",
                    self.address, self.folder_id, found)
        self.folder_id = found
        with self._lock:
            self._ids.clear()
        return True

    def _folder(self, parent: str, name: str, create: bool = True) -> str | None:
        """The child folder ``name`` of ``parent``, created when missing; two clients creating
        it at once agree on the oldest and the other removes its own (while empty)."""
        extra = f"name = {_q(name)} and mimeType = {_q(FOLDER_MIME)}"
        found = sorted((_File.of(r) for r in self._children(parent, extra) if r.get("name") == name),
                       key=_File.order)
        if found:
            return found[0].id
        if not create:
            return None
        body = {"name": name, "mimeType": FOLDER_MIME, "parents": [parent]}
        mine = self._call(lambda: self._service().files().create(body=body, fields=FILE_FIELDS,
                                                                 supportsAllDrives=True).execute(num_retries=0),
                          f"folder {name} on {self.address}")
        found = sorted((_File.of(r) for r in self._children(parent, extra) if r.get("name") == name),
                       key=_File.order)
        if found and found[0].id != mine["id"]:
            if not any(True for _ in self._children(mine["id"])):
                self._delete_id(mine["id"], f"folder {name}")
            return found[0].id
        log.info("%s: created folder %s", self.address, name)
        return mine["id"]

    def _folder_gone(self) -> bool:
        try:
            meta = self._call(lambda: self._service().files().get(
                fileId=self.folder_id, fields="id,trashed", supportsAllDrives=True).execute(num_retries=0),
                f"folder of {self.address}")
        except RelayObjectMissing:
            return True
        return bool(meta.get("trashed"))

    # -- lookups -----------------------------------------------------------------------------
    def _copies(self, name: str) -> list[_File]:
        """Every file named ``name`` in the relay folder, the object first."""
        files = [_File.of(r) for r in self._children(self.folder_id, f"name = {_q(name)}")
                 if r.get("name") == name and r.get("mimeType") != FOLDER_MIME]
        files.sort(key=_File.order)
        with self._lock:
            if files:
                self._ids[name] = files[0].id
            else:
                self._ids.pop(name, None)
        return files

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        best = self._listing()
        if not best and self._folder_gone():
            if not self._recover_folder():
                raise RelayError(f"the relay folder of {self.address} (id {self.folder_id}) is gone or in the trash")
            best = self._listing()
        with self._lock:
            self._ids = {n: f.id for n, f in best.items()}
        return iter([best[n].info() for n in sorted(best) if n.startswith(prefix) and _valid(n)])

    def _listing(self) -> dict[str, "_File"]:
        """name -> the object (the oldest file of that name) in the relay folder."""
        best: dict[str, _File] = {}
        for r in self._children(self.folder_id):
            if r.get("mimeType") == FOLDER_MIME:
                continue
            f = _File.of(r)
            if f.name in best and best[f.name].order() <= f.order():
                continue
            best[f.name] = f
        return best

    def stat(self, name: str) -> ObjectInfo | None:
        check_name(name)
        files = self._copies(name)
        return files[0].info() if files else None

    def _id(self, name: str) -> str:
        with self._lock:
            fid = self._ids.get(name)
        if fid is None:
            files = self._copies(name)
            if not files:
                raise RelayObjectMissing(f"relay object {name} is missing on {self.address}")
            fid = files[0].id
        return fid

    def _with_id(self, name: str, fn: Callable[[str], T]) -> T:
        """``fn(file id)``; a cached id that is gone (404) is looked up once more."""
        with self._lock:
            cached = self._ids.get(name)
        fid = self._id(name)
        try:
            return fn(fid)
        except RelayObjectMissing:
            if cached is None:
                raise
            with self._lock:
                self._ids.pop(name, None)
            log.debug("%s: cached id of %s is gone; looking it up again", self.address, name)
            return fn(self._id(name))

    # -- reading -----------------------------------------------------------------------------
    def get(self, name: str) -> BinaryIO:
        check_name(name)
        return self._with_id(name, lambda fid: _Download(self, name, fid))

    # -- writing -----------------------------------------------------------------------------
    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False, size: int | None = None) -> int:
        check_name(name)
        spool = None
        if size is None:  # the size is needed up front: count it into a spool
            spool = tempfile.SpooledTemporaryFile(max_size=SIMPLE_MAX)
            while block := _read_source(stream, MiB, name):
                spool.write(block)
            size = spool.tell()
            spool.seek(0)
            stream = spool
        if size <= SIMPLE_MAX and spool is None:  # in memory: it can be sent again below
            stream = io.BytesIO(_read_source(stream, size, name))
        try:
            copies = self._copies(name)
            if create_only and copies:
                raise ObjectExists(f"relay object {name} already exists on {self.address}")
            if copies and not create_only:
                try:
                    self._send(name, stream, size, copies[0].id)
                except RelayObjectMissing:  # deleted since the lookup: the put creates it again
                    if size > SIMPLE_MAX:
                        raise TransientRelayError(f"relay object {name} was deleted while being replaced on "
                                                  f"{self.address}; it is sent again next cycle") from None
                    stream.seek(0)
                    self._send(name, stream, size, None)
                for other in copies[1:]:
                    self._delete_id(other.id, f"relay object {name} (a copy)")
                return size
            try:
                mine = self._send(name, stream, size, None)
            except RelayObjectMissing:  # the relay folder itself is gone
                if not self._folder_gone() or size > SIMPLE_MAX or not self._recover_folder():
                    raise RelayError(f"cannot store relay object {name}: the relay folder of {self.address} "
                                     f"(id {self.folder_id}) is gone or in the trash") from None
                stream.seek(0)
                mine = self._send(name, stream, size, None)
            if create_only:
                copies = self._copies(name)
                if mine.id not in {c.id for c in copies}:
                    copies = sorted(copies + [mine], key=_File.order)
                if copies[0].id != mine.id:
                    self._delete_id(mine.id, f"relay object {name} (lost a create race)")
                    with self._lock:
                        self._ids[name] = copies[0].id
                    raise ObjectExists(f"relay object {name} was created by another client at the same time "
                                       f"on {self.address}")
            return size
        finally:
            if spool is not None:
                spool.close()

    def _send(self, name: str, stream: BinaryIO, size: int, file_id: str | None) -> _File:
        what = f"relay object {name}"
        if size <= SIMPLE_MAX:
            data = _read_source(stream, size, name)
            if len(data) < size:
                raise SourceError(f"the data to send as {what} ended at byte {len(data)} of {size}")
            return self._send_small(name, data, file_id)
        return self._send_resumable(name, _Window(stream, size, name), file_id)

    def _request(self, name: str, media, file_id: str | None):
        files = self._service().files()
        if file_id is None:
            return files.create(body={"name": name, "parents": [self.folder_id]}, media_body=media,
                                fields=FILE_FIELDS, supportsAllDrives=True)
        return files.update(fileId=file_id, body={}, media_body=media, fields=FILE_FIELDS, supportsAllDrives=True)

    def _send_small(self, name: str, data: bytes, file_id: str | None) -> _File:
        from googleapiclient.http import MediaIoBaseUpload

        digest = hashlib.md5(data).hexdigest()
        started = time.time()

        def once() -> _File:
            media = MediaIoBaseUpload(io.BytesIO(data), OBJECT_MIME, resumable=False)
            return _File.of(self._request(name, media, file_id).execute(num_retries=0))

        def landed() -> _File | None:  # a create whose answer was lost left a file with our bytes
            if file_id is not None:
                return None  # an update is idempotent: sent again
            for f in self._copies(name):
                if f.md5 == digest and f.size == len(data) and _stamp(f.modified, "0") >= started - 60:
                    return f
            return None

        f = self._call(once, f"relay object {name}", landed)
        with self._lock:
            self._ids.setdefault(name, f.id)
        return f

    def _send_resumable(self, name: str, window: _Window, file_id: str | None) -> _File:
        media = _upload_class()(window, OBJECT_MIME, chunksize=self.chunk_size, resumable=True)
        request = self._request(name, media, file_id)
        what = f"relay object {name}"
        failures = 0
        response = None
        try:
            while response is None:
                try:
                    _status, response = request.next_chunk(num_retries=0)
                    failures = 0
                except Exception as exc:  # noqa: BLE001
                    err = self._map(exc, what)
                    if not isinstance(err, TransientRelayError):
                        raise err from None
                    if failures >= self.retry.max_retries:
                        raise TransientRelayError(f"{err} (gave up after {failures + 1} attempts)") from None
                    delay = self.retry.delay(failures, getattr(err, "retry_after", None))
                    log.warning("%s; resuming the upload at byte %d in %.1f s", err, request.resumable_progress,
                                delay)
                    self.retry.sleep(delay)
                    failures += 1
                finally:
                    if request.resumable_uri and request.resumable_uri not in self._sessions:
                        self._remember(request.resumable_uri, name)
        except BaseException:
            if request.resumable_uri:
                self._cancel(request.resumable_uri)
            raise
        self._forget(request.resumable_uri)
        f = _File.of(response)
        with self._lock:
            self._ids.setdefault(name, f.id)
        return f

    # -- upload sessions (kept so that a killed process's are cancelled) ---------------------
    def _sessions_path(self) -> Path | None:
        return self.state_dir / SESSIONS_NAME if self.state_dir is not None else None

    def _load_sessions(self) -> dict[str, list]:
        path = self._sessions_path()
        try:
            return json.loads(path.read_text()) if path is not None else {}
        except (OSError, ValueError):
            return {}

    def _store_sessions(self, sessions: dict) -> None:
        path = self._sessions_path()
        if path is None:
            return
        try:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(sessions, f)
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("cannot keep the upload sessions in %s: %s", path, exc)

    def _remember(self, uri: str, name: str) -> None:
        with self._lock:
            self._sessions[uri] = (name, time.time())
            stored = self._load_sessions()
            stored[uri] = [name, time.time()]
            self._store_sessions(stored)

    def _forget(self, uri: str | None) -> None:
        with self._lock:
            self._sessions.pop(uri, None)
            stored = self._load_sessions()
            if stored.pop(uri, None) is not None:
                self._store_sessions(stored)

    def _cancel(self, uri: str) -> None:
        """End an upload session (Drive answers 499); what it received is dropped."""
        try:
            self._service()._http.request(uri, "DELETE")
        except Exception as exc:  # noqa: BLE001 - a session expires on its own within a week
            log.debug("cannot cancel upload session: %s", exc)
        self._forget(uri)

    def abort_incomplete(self, prefix: str) -> int:
        with self._lock:
            known = {uri: v[0] for uri, v in self._load_sessions().items()}
            known.update({uri: v[0] for uri, v in self._sessions.items()})
        removed = 0
        for uri, name in known.items():
            if name.startswith(prefix):
                self._cancel(uri)
                removed += 1
        return removed

    # -- deleting ----------------------------------------------------------------------------
    def _delete_id(self, fid: str, what: str) -> None:
        try:
            self._call(lambda: self._service().files().delete(fileId=fid, supportsAllDrives=True)
                       .execute(num_retries=0), what)
        except RelayObjectMissing:
            pass

    def delete(self, name: str) -> None:
        check_name(name)
        for f in self._copies(name):
            self._delete_id(f.id, f"relay object {name}")
        with self._lock:
            self._ids.pop(name, None)

    def usage(self) -> Usage:
        about = self._call(lambda: self._service().about().get(fields="storageQuota").execute(num_retries=0),
                           f"storage quota of {self.address}")
        q = about.get("storageQuota") or {}
        used = int(q["usage"]) if q.get("usage") is not None else None
        limit = int(q["limit"]) if q.get("limit") is not None else None
        return Usage(used=used, available=(max(0, limit - used) if limit is not None and used is not None else None))

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(atomic_create=False, atomic_replace=True, list_after_write=True,
                            max_object_size=5 * (1 << 40))


def _valid(name: str) -> bool:
    try:
        check_name(name)
        return True
    except EscaleError:
        return False


def _reason(exc) -> tuple[str, str]:
    try:
        err = json.loads(exc.content.decode("utf-8", "replace")).get("error") or {}
    except (ValueError, AttributeError):
        return "", str(getattr(exc, "reason", "") or "")
    if isinstance(err, str):
        return err, err
    errors = err.get("errors") or [{}]
    return str(errors[0].get("reason") or err.get("status") or ""), str(err.get("message") or "")


def _seconds(value) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _short(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    return str(args[0]) if args else type(exc).__name__


_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)/(\d+)|\*/(\d+))$")


class _Download(io.RawIOBase):
    """An object read in ranged pieces; a broken piece is asked again from the byte reached."""

    def __init__(self, relay: GoogleDrive, name: str, file_id: str):
        super().__init__()
        self.relay, self.name, self.file_id = relay, name, file_id
        self.pos = 0
        self.total: int | None = None
        self.buf, self.off = b"", 0
        self.md5 = hashlib.md5()
        self.expected: str | None = None
        self._fill()  # the first piece now: a missing object is an error of get()

    def readable(self) -> bool:
        return True

    def _piece(self) -> tuple[bytes, int]:
        from googleapiclient.errors import HttpError

        service = self.relay._service()
        request = service.files().get_media(fileId=self.file_id, supportsAllDrives=True)
        end = self.pos + self.relay.chunk_size - 1
        resp, content = service._http.request(request.uri, "GET", headers={"Range": f"bytes={self.pos}-{end}"})
        if resp.status == 416:
            return b"", self.pos
        if resp.status not in (200, 206):
            raise HttpError(resp, content, uri=request.uri)
        crange = resp.get("content-range", "")
        if resp.status == 206:
            m = _CONTENT_RANGE.match(crange.strip())
            if not m:
                raise TransientRelayError(f"relay object {self.name}: unusable Content-Range {crange!r}")
            if m.group(1) is not None and int(m.group(1)) != self.pos:
                raise TransientRelayError(f"relay object {self.name}: asked byte {self.pos}, got {m.group(1)}")
            total = int(m.group(3) or m.group(4))
        else:  # 200: the whole object
            total = len(content)
            content = content[self.pos:]
        return content, total

    def _fill(self) -> None:
        what = f"relay object {self.name}"
        content, total = self.relay._call(self._piece, what)
        if self.total is None:
            self.total = total
            if total > len(content) + self.pos:  # more than one piece: check the whole at the end
                meta = self.relay._call(lambda: self.relay._service().files().get(
                    fileId=self.file_id, fields="md5Checksum,size", supportsAllDrives=True).execute(num_retries=0),
                    what)
                self.expected = meta.get("md5Checksum")
        elif total != self.total:
            raise RelayError(f"{what} changed while being read (size {self.total}, now {total})")
        self.buf = content
        self.pos += len(content)
        self.md5.update(content)
        if self.pos >= self.total and self.expected and self.md5.hexdigest() != self.expected:
            raise RelayError(f"{what} changed while being read (its MD5 differs)")

    def readinto(self, b) -> int:
        if not self.buf:
            if self.total is None or self.pos >= self.total:
                return 0
            self._fill()
            if not self.buf:
                raise RelayError(f"relay object {self.name} ended at byte {self.pos} of {self.total}")
        n = min(len(b), len(self.buf) - self.off)
        b[:n] = self.buf[self.off:self.off + n]
        self.off += n
        if self.off >= len(self.buf):
            self.buf, self.off = b"", 0
        return n
