"""A WebDAV collection used as the relay (``https://host[:port]/path``, ``http://…``,
``webdav://…`` = https, ``webdavs://…`` = https).

Which library does what, and why
--------------------------------
Every request goes through **one** :class:`requests.Session` (one connection pool, so
connections are reused; Basic auth, TLS verification and the client certificate are set
once). ``requests`` is used directly because the relay needs what no WebDAV client
library here gives:

- streamed PUT bodies of unknown length (chunked) or known length, and streamed GET
  bodies that resume with ``Range`` after a reset, so memory stays constant;
- conditional and WebDAV-specific headers (``If-None-Match: *``, ``Overwrite: F``,
  ``Depth: 1``, ``If-Range``) and a precise reading of every status code;
- PROPFIND responses parsed incrementally (``iterparse`` on the response stream) with
  the size, modification time and ETag of each member, so a listing never needs one
  request per object.

**webdavclient3 is not used** (it stays a declared dependency for the design card): its
existence checks are HEAD requests, which Apache mod_dav answers with 404 for
collections unless mod_autoindex is enabled, so ``mkdir``/``upload``/``list`` fail on a
stock Apache; ``disable_check`` fixes that only by making ``check()`` always true; with a
path in the host name ``list()`` returns the folder itself; ``info()`` costs one request
per object and returns raw (weak/unquoted) ETags; uploads cannot carry conditional
headers; and it has no retry policy or status-to-error mapping.
``xml.etree.ElementTree`` (standard library) parses the multistatus bodies.

How the relay contract is met
-----------------------------
- **No half-written object under a final name.** Some servers (wsgidav) write a PUT
  straight into the target file, so a reader could see a partial object and an
  interrupted upload would leave one behind. Every put therefore goes to a hidden
  temporary ``<folder>/.escale-put-<name>.<random>`` first and is then moved into place
  with MOVE (a rename on the server). The writer's :meth:`abort_incomplete` removes its
  temporaries after a crash; listings hide them and delete those older than 6 hours.
- **Streaming.** A seekable source (a file, a BytesIO) is sent with its Content-Length in
  1 MiB blocks; a non-seekable one is read ahead up to 8 MiB (then it is small, sent with
  a length and replayable) or sent chunked, after which the temporary's stored size is
  checked against what was sent before it takes the real name (some PHP-based servers
  silently store nothing of a chunked body). Downloads are read from the response as it
  arrives, in the caller's block size.
- **Create-if-absent** (``create_only``) is probed once per relay (lazily, at the first
  such put): MOVE with ``Overwrite: F`` onto an existing name must fail with 412, and
  PUT with ``If-None-Match: *`` must fail with 412. The temporary + ``MOVE Overwrite: F``
  path is preferred where honoured (wsgidav, Apache, rclone): the object appears whole
  and only if absent. Where only ``If-None-Match`` is honoured, the put goes straight to
  the final name with it. Where neither is, a stat precedes the move (not atomic; a
  warning says so).
- **Listings** walk collections with ``PROPFIND Depth: 1`` (servers refuse
  ``Depth: infinity``: Apache answers 403 by default). ``getlastmodified`` has a
  one-second resolution, so an object rewritten within a second with the same size would
  look unchanged; :class:`ObjectInfo.mtime` is therefore the server time plus a fraction
  of a second derived from the (normalised) ETag: it changes whenever the server's
  entity tag does. ETags are normalised (``W/`` and quotes dropped: Apache gives weak
  ETags for about a second after a write, wsgidav omits quotes in PROPFIND).
- **Empty collections are pruned** after a delete, below the first level only: in
  escale's layout a first-level collection (``u/``, ``a/``, …) is shared by every
  writer, while deeper ones (``u/<cid>/``, ``b/<cid>/<seq>/``) have one writer — the one
  that deletes — so a prune never races with someone else's put.
- **Errors.** 5xx (but 501/505), 423, 429, timeouts and connection resets are retried
  ``max retries`` times (default 5) with exponential backoff and jitter, honouring
  ``Retry-After``. A request body that was partly sent and cannot be replayed (a stream
  larger than 8 MiB that is not seekable) is not retried: the put fails with RelayError
  and the caller retries next cycle. 401/403 raise AuthenticationError ("authentication
  failed for <relay>"), 507 raises QuotaExceeded, anything else RelayError naming the
  object and the status. Passwords are never logged: the address kept and shown has its
  password removed, and credentials travel only in the Authorization header.
"""
from __future__ import annotations

import email.utils
import hashlib
import io
import logging
import math
import os
import posixpath
import random
import re
import time
import uuid
import xml.etree.ElementTree as ET
from typing import BinaryIO, Iterator
from urllib.parse import quote, unquote, urlsplit

import requests
import urllib3

from ..errors import (AuthenticationError, ConfigError, ObjectExists, QuotaExceeded, RelayError,
                      RelayObjectMissing)
from .base import ObjectInfo, Relay, Usage, check_name

log = logging.getLogger(__name__)

TMP_MARK = ".escale-put-"
PROBE_MARK = ".escale-probe-"
#: temporaries older than this are leftovers of a killed writer
STALE_TMP_SECONDS = 6 * 3600
BLOCK = 1 << 20
#: a non-seekable body up to this size is held in memory so that its put can be retried
REPLAY_BUFFER = 8 << 20
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 5
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
RETRY_AFTER_MAX = 120.0
DAV = "{DAV:}"
_PROPFIND_BODY = (b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
                  b"<D:resourcetype/><D:getcontentlength/><D:getlastmodified/><D:getetag/>"
                  b"</D:prop></D:propfind>")
_QUOTA_BODY = (b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
               b"<D:quota-available-bytes/><D:quota-used-bytes/></D:prop></D:propfind>")
_TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                     urllib3.exceptions.HTTPError)
_TRUE = ("yes", "true", "on", "1")
_FALSE = ("no", "false", "off", "0")


def _retryable(status: int) -> bool:
    return status in (408, 423, 429) or (500 <= status < 600 and status not in (501, 505, 507))


def normalise_etag(etag: str | None) -> str | None:
    """The entity tag without ``W/`` and quotes, so PROPFIND and GET values compare."""
    if not etag:
        return None
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"') or None


class _Entry:
    __slots__ = ("path", "collection", "size", "mtime", "etag", "props")

    def __init__(self, path: str, collection: bool, size: int, mtime: float, etag: str | None, props: dict):
        self.path, self.collection, self.size, self.mtime, self.etag = path, collection, size, mtime, etag
        self.props = props


class _BodyError(RelayError):
    """The source stream failed or changed length while being sent (never retried)."""


class _Body:
    """One PUT body, streamed in blocks: known length when the source can tell, else chunked.

    A seekable source (a file, a BytesIO) can be sent again from its start on a retry; a
    non-seekable one is read ahead up to REPLAY_BUFFER bytes: if it ends there, it is
    kept in memory and replayable too, otherwise it is sent once, chunked.
    """

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.count = 0
        self.started = False
        self.data: bytes | None = None
        self.prefix = b""
        self.length: int | None = None
        self.start = 0
        self.seekable = False
        try:
            if stream.seekable():
                self.start = stream.tell()
                end = stream.seek(0, io.SEEK_END)
                stream.seek(self.start)
                self.length, self.seekable = end - self.start, True
        except (AttributeError, OSError, ValueError):
            self.seekable = False
        if not self.seekable:
            head = self._read_upto(REPLAY_BUFFER + 1)
            if len(head) <= REPLAY_BUFFER:
                self.data, self.length = head, len(head)
            else:
                self.prefix = head
        if self.seekable and self.length is not None and self.length <= BLOCK:
            self.data = self._read_upto(self.length + 1)
            if len(self.data) != self.length:
                raise _BodyError(f"source stream gave {len(self.data)} bytes, expected {self.length}")
            self.seekable = False

    def _read_upto(self, n: int) -> bytes:
        try:
            return _read_upto(self.stream, n)
        except OSError as exc:
            raise _BodyError(f"cannot read the data to send: {exc}") from exc

    @property
    def replayable(self) -> bool:
        return self.data is not None or self.seekable or not self.started

    def payload(self):
        """What to hand to requests for one attempt."""
        self.count = 0
        if self.data is not None:
            self.count = len(self.data)
            self.started = True
            return self.data
        if self.seekable:
            self.stream.seek(self.start)
            return _Sized(self._blocks(self.length), self.length)
        return self._chunks()

    def _blocks(self, length: int):
        self.started = True
        left = length
        while left > 0:
            try:
                data = self.stream.read(min(BLOCK, left))
            except OSError as exc:
                raise _BodyError(f"cannot read the data to send: {exc}") from exc
            if not data:
                raise _BodyError(f"source stream ended {left} bytes early")
            left -= len(data)
            self.count += len(data)
            yield data

    def _chunks(self):
        self.started = True
        if self.prefix:
            self.count += len(self.prefix)
            yield self.prefix
            self.prefix = b""
        while True:
            try:
                data = self.stream.read(BLOCK)
            except OSError as exc:
                raise _BodyError(f"cannot read the data to send: {exc}") from exc
            if not data:
                return
            self.count += len(data)
            yield data


class _Sized:
    """An iterable body with a length, so requests sends Content-Length and streams it."""

    def __init__(self, it, length: int):
        self._it, self._len = it, length

    def __iter__(self):
        return self._it

    def __len__(self) -> int:
        return self._len


def _read_upto(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        data = stream.read(min(left, BLOCK))
        if not data:
            break
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


class _Download(io.RawIOBase):
    """The body of a GET, read as it arrives; resumes with Range after a transport error."""

    def __init__(self, relay: "WebDAV", name: str, response: requests.Response):
        self.relay, self.name, self.response = relay, name, response
        self.offset = 0
        self.etag = normalise_etag(response.headers.get("ETag"))
        self.strong = bool(response.headers.get("ETag")) and not response.headers["ETag"].startswith("W/")
        self.resumes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while True:
            try:
                data = self.response.raw.read(len(b), decode_content=True)
            except (urllib3.exceptions.HTTPError, OSError, requests.RequestException) as exc:
                self._resume(exc)
                continue
            n = len(data)
            b[:n] = data
            self.offset += n
            return n

    def _resume(self, exc: Exception) -> None:
        self.response.close()
        if self.resumes >= self.relay.max_retries:
            raise RelayError(f"reading relay object {self.name} from {self.relay.address} failed: "
                             f"{_describe(exc)}") from exc
        delay = self.relay._backoff(self.resumes, None)
        self.resumes += 1
        log.warning("%s: reading %s broke at byte %d (%s); resuming in %.1f s", self.relay.address, self.name,
                    self.offset, _describe(exc), delay)
        time.sleep(delay)
        headers = {"Range": f"bytes={self.offset}-", "Accept-Encoding": "identity"}
        if self.etag and self.strong:
            headers["If-Range"] = f'"{self.etag}"'
        r = self.relay._request("GET", self.relay._url(self.name), self.name, headers=headers, stream=True)
        if r.status_code == 404:
            r.close()
            raise RelayObjectMissing(f"relay object {self.name} is missing (deleted while being read)")
        etag = normalise_etag(r.headers.get("ETag"))
        if self.etag and etag and etag != self.etag:
            r.close()
            raise RelayError(f"relay object {self.name} changed while being read")
        if r.status_code == 206:
            start = r.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start != str(self.offset):
                r.close()
                raise RelayError(f"relay object {self.name}: the server resumed at the wrong offset")
        elif r.status_code == 200:  # Range ignored: skip what we already have
            skip = self.offset
            while skip:
                data = r.raw.read(min(skip, BLOCK), decode_content=True)
                if not data:
                    r.close()
                    raise RelayError(f"relay object {self.name} is shorter than before")
                skip -= len(data)
        else:
            r.close()
            raise self.relay._status_error("GET", self.name, r)
        self.response = r

    def close(self) -> None:
        if not self.closed:
            self.response.close()
        super().close()


def _describe(exc: BaseException) -> str:
    """A short reason for a transport failure (requests and urllib3 nest them deeply)."""
    if isinstance(exc, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError)):
        return "no answer in time (timeout)"
    if isinstance(exc, (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)):
        return "cannot connect: timeout"
    seen, todo = set(), [exc]
    while todo:  # the innermost OS-level error says it best
        e = todo.pop()
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror and not isinstance(e, urllib3.exceptions.HTTPError):
            prefix = "cannot connect: " if isinstance(e, ConnectionRefusedError) else ""
            return prefix + e.strerror.lower()
        todo.extend([getattr(e, "reason", None), e.__cause__, e.__context__,
                     *(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))])
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "…"


def _http_date(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.0


def _version_stamp(lastmod: float, etag: str | None) -> float:
    """The server's mtime (whole seconds) plus a fraction of a second taken from the ETag."""
    if not etag:
        return lastmod
    frac = int.from_bytes(hashlib.sha1(etag.encode()).digest()[:4], "big") / 2**32
    return math.floor(lastmod) + round(frac * 0.999, 6)


class WebDAV(Relay):
    schemes = ("http", "https", "webdav", "webdavs")

    def __init__(self, address: str, user: str | None = None, password: str | None = None,
                 verify_ssl: str | bool | None = None, certfile: str | None = None, keyfile: str | None = None,
                 max_retries: str | int | None = None, port: str | int | None = None,
                 timeout: str | float | None = None, **options):
        parts = urlsplit(address.strip())
        scheme = parts.scheme.lower()
        if scheme not in self.schemes or not parts.hostname:
            raise ConfigError(f"'{address}' is not a WebDAV address (https://host[:port]/path)",
                              option="relay address")
        self.http_scheme = "http" if scheme == "http" else "https"
        host = parts.hostname
        try:
            addr_port = parts.port
        except ValueError:
            raise ConfigError(f"bad port in relay address '{address}'", option="relay address") from None
        self.port = addr_port or (int(port) if port not in (None, "") else None)
        if user is None and parts.username:
            user = unquote(parts.username)
        if password is None and parts.password:
            password = unquote(parts.password)
        netloc = f"[{host}]" if ":" in host else host
        if self.port:
            netloc += f":{self.port}"
        path = unquote(parts.path).strip("/")
        self.base_path = "/" + path + "/" if path else "/"
        self.base_url = f"{self.http_scheme}://{netloc}{quote(self.base_path)}"
        # the address as written, less any password in it: what logs and errors show
        shown = f"{scheme}://" + (f"{parts.username}@" if parts.username else "") + netloc + parts.path
        super().__init__(shown)
        self.user = user
        self._auth = (user or "", password or "") if (user or password) else None
        self.verify = self._parse_verify(verify_ssl)
        if self.verify is False and self.http_scheme == "https":
            log.warning("%s: TLS certificate verification is off ('verify ssl = no')", self.address)
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        if keyfile and not certfile:
            raise ConfigError("'keyfile' needs 'certfile' (the client certificate)", option="keyfile")
        certfile = os.path.expanduser(certfile) if certfile else None
        keyfile = os.path.expanduser(keyfile) if keyfile else None
        for opt, f in (("certfile", certfile), ("keyfile", keyfile)):
            if f and not os.path.isfile(f):
                raise ConfigError(f"{opt} {f} does not exist", option=opt)
        self.cert = (certfile, keyfile) if keyfile else certfile
        try:
            self.max_retries = DEFAULT_RETRIES if max_retries in (None, "") else int(max_retries)
            if self.max_retries < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"'max retries' must be a whole number >= 0, not {max_retries!r}",
                              option="max retries") from None
        t = timeout if timeout not in (None, "") else os.environ.get("ESCALE_WEBDAV_TIMEOUT")
        try:
            t = float(t) if t not in (None, "") else DEFAULT_TIMEOUT
            if t <= 0:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"WebDAV timeout must be a number of seconds > 0, not {t!r}") from None
        self.timeout = (min(10.0, t), t)
        for k in options:
            if k not in ("ssl_version",):
                log.debug("%s: option %s is not used by the WebDAV relay", self.address, k)
        self._session: requests.Session | None = None
        self._known: set[str] = set()  # collections known to exist ("" is the base)
        self._create_mode: str | None = None  # "move", "if-none-match" or "check"
        self.capabilities: dict[str, bool] = {}

    @staticmethod
    def _parse_verify(value) -> bool | str:
        if value is None or value is True or value == "":
            return True
        if value is False:
            return False
        text = str(value).strip()
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        path = os.path.expanduser(text)
        if not os.path.exists(path):
            raise ConfigError(f"'verify ssl' is neither yes/no nor an existing CA bundle: {text}",
                              option="verify ssl")
        return path

    # -- plumbing --------------------------------------------------------------------------
    @property
    def session(self) -> requests.Session:
        if self._session is None:
            s = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            s.auth = self._auth
            s.cert = self.cert
            from .. import __version__

            s.headers["User-Agent"] = f"escale/{__version__}"
            self._session = s
        return self._session

    def _url(self, name: str, collection: bool = False) -> str:
        if not name:
            return self.base_url
        return self.base_url + quote(name, safe="/") + ("/" if collection else "")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        d = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** attempt)
        d = d / 2 + random.uniform(0, d / 2)
        if retry_after is not None:
            d = max(d, min(retry_after, RETRY_AFTER_MAX))
        return d

    @staticmethod
    def _retry_after(r: requests.Response) -> float | None:
        v = r.headers.get("Retry-After")
        if not v:
            return None
        try:
            return max(0.0, float(v))
        except ValueError:
            when = _http_date(v)
            return max(0.0, when - time.time()) if when else None

    def _status_error(self, method: str, what: str, r: requests.Response) -> RelayError:
        return RelayError(f"{method} {what or '/'} on {self.address} failed: HTTP {r.status_code} {r.reason or ''}"
                          .rstrip())

    def _request(self, method: str, url: str, what: str, *, headers: dict | None = None, body: _Body | None = None,
                 data: bytes | None = None, stream: bool = False) -> requests.Response:
        """Send one request, retrying transient failures; returns any other response.

        401/403 raise AuthenticationError and 507 QuotaExceeded; the caller reads the rest.
        ``r.attempts`` tells how many tries it took (a retried MOVE may find its work done).
        """
        attempt = 0
        while True:
            retry_after = None
            payload = body.payload() if body is not None else data
            try:
                r = self.session.request(method, url, headers=headers, data=payload, stream=stream,
                                         timeout=self.timeout, verify=self.verify, allow_redirects=False)
            except _BodyError:
                raise
            except requests.exceptions.SSLError as exc:
                raise RelayError(f"TLS connection to {self.address} failed: {_tls_reason(exc)}") from exc
            except _TRANSPORT_ERRORS as exc:
                reason = _describe(exc)
            except requests.RequestException as exc:
                raise RelayError(f"{method} {what or '/'} on {self.address} failed: {_describe(exc)}") from exc
            else:
                status = r.status_code
                if status in (401, 403):
                    r.close()
                    raise AuthenticationError(f"authentication failed for {self.address}"
                                              f" (HTTP {status} on {method} {what or '/'})")
                if status == 507:
                    r.close()
                    raise QuotaExceeded(f"relay {self.address} is full (HTTP 507 Insufficient Storage) "
                                        f"while writing {what or '/'}")
                if not _retryable(status):
                    r.attempts = attempt + 1
                    return r
                reason = f"HTTP {status} {r.reason or ''}".rstrip()
                retry_after = self._retry_after(r)
                r.close()
            if attempt >= self.max_retries:
                raise RelayError(f"{method} {what or '/'} on {self.address} failed after {attempt + 1} "
                                 f"attempt(s): {reason}")
            if body is not None and not body.replayable:
                raise RelayError(f"{method} {what or '/'} on {self.address} failed: {reason} (the data could "
                                 "not be sent again; the next cycle retries)")
            delay = self._backoff(attempt, retry_after)
            attempt += 1
            log.warning("%s: %s %s: %s; retry %d/%d in %.1f s", self.address, method, what or "/", reason,
                        attempt, self.max_retries, delay)
            time.sleep(delay)

    def _propfind(self, name: str, depth: str, collection: bool = True, body: bytes = _PROPFIND_BODY
                  ) -> list[_Entry] | None:
        """The entries of a PROPFIND (parsed as the body arrives), or None on 404."""
        url = self._url(name, collection)
        headers = {"Depth": depth, "Content-Type": 'application/xml; charset="utf-8"',
                   "Accept-Encoding": "identity"}
        attempt = 0
        while True:
            r = self._request("PROPFIND", url, name, headers=headers, data=body, stream=True)
            try:
                if r.status_code == 404:
                    return None
                if r.status_code != 207:
                    raise self._status_error("PROPFIND", name, r)
                try:
                    return list(self._parse_multistatus(r.raw))
                except (ET.ParseError, urllib3.exceptions.HTTPError, OSError) as exc:
                    if attempt >= self.max_retries:
                        raise RelayError(f"PROPFIND {name or '/'} on {self.address}: unreadable answer "
                                         f"({_describe(exc)})") from exc
                    delay = self._backoff(attempt, None)
                    attempt += 1
                    log.warning("%s: PROPFIND %s: %s; retry %d/%d in %.1f s", self.address, name or "/",
                                _describe(exc), attempt, self.max_retries, delay)
                    time.sleep(delay)
            finally:
                r.close()

    def _parse_multistatus(self, raw) -> Iterator[_Entry]:
        raw.decode_content = True
        for _event, el in ET.iterparse(raw, events=("end",)):
            if el.tag != DAV + "response":
                continue
            href = el.findtext(DAV + "href") or ""
            path = unquote(urlsplit(href.strip()).path)
            props: dict = {}
            for ps in el.findall(DAV + "propstat"):
                st = ps.findtext(DAV + "status") or ""
                if " 200 " not in st + " ":
                    continue
                prop = ps.find(DAV + "prop")
                if prop is None:
                    continue
                for p in prop:
                    props[p.tag] = p
            rt = props.get(DAV + "resourcetype")
            collection = rt is not None and rt.find(DAV + "collection") is not None
            try:
                size = int((props[DAV + "getcontentlength"].text or "0").strip()) \
                    if DAV + "getcontentlength" in props else 0
            except ValueError:
                size = 0
            lm = props.get(DAV + "getlastmodified")
            etag_el = props.get(DAV + "getetag")
            etag = normalise_etag(etag_el.text if etag_el is not None else None)
            el.clear()
            yield _Entry(path, collection, size, _http_date(lm.text if lm is not None else None), etag,
                         {k: (v.text or "").strip() for k, v in props.items()})

    def _rel(self, path: str) -> str | None:
        """An href path as a name relative to the base, or None when outside it."""
        if not path.startswith(self.base_path):
            if path + "/" == self.base_path:
                return ""
            return None
        return path[len(self.base_path):].strip("/")

    # -- collections -----------------------------------------------------------------------
    def _mkcol(self, folder: str) -> None:
        """Make sure the collection ``folder`` ('' = the base) exists, creating parents."""
        if folder in self._known:
            return
        r = self._request("MKCOL", self._url(folder, True), folder + "/")
        r.close()
        if r.status_code in (200, 201, 204, 405):
            pass
        elif r.status_code == 409 and folder:
            self._mkcol(posixpath.dirname(folder))
            r = self._request("MKCOL", self._url(folder, True), folder + "/")
            r.close()
            if r.status_code not in (200, 201, 204, 405):
                raise self._status_error("MKCOL", folder + "/", r)
        else:
            raise self._status_error("MKCOL", folder + "/", r)
        while True:
            self._known.add(folder)
            if not folder:
                break
            folder = posixpath.dirname(folder)

    def _forget_collection(self, folder: str) -> None:
        self._known = {k for k in self._known if k != folder and not k.startswith(folder + "/")}

    def _make_base(self) -> None:
        """Create the base collection and any missing ancestors on the server."""
        parts = [p for p in self.base_path.split("/") if p]
        root = self.base_url[: len(self.base_url) - len(quote(self.base_path))]
        missing = []
        # find the deepest existing ancestor, then create downwards
        for i in range(len(parts), 0, -1):
            url = root + quote("/" + "/".join(parts[:i]) + "/")
            r = self._request("MKCOL", url, "/" + "/".join(parts[:i]) + "/")
            r.close()
            if r.status_code in (200, 201, 204, 405):
                break
            if r.status_code != 409:
                raise self._status_error("MKCOL", "/" + "/".join(parts[:i]) + "/", r)
            missing.append(i)
        for i in reversed(missing):
            url = root + quote("/" + "/".join(parts[:i]) + "/")
            r = self._request("MKCOL", url, "/" + "/".join(parts[:i]) + "/")
            r.close()
            if r.status_code not in (200, 201, 204, 405):
                raise self._status_error("MKCOL", "/" + "/".join(parts[:i]) + "/", r)
        self._known.add("")

    # -- the relay interface ---------------------------------------------------------------
    def open(self) -> None:
        entries = self._propfind("", "0")
        if entries is None:
            self._make_base()
            entries = self._propfind("", "0")
            if entries is None:
                raise RelayError(f"relay folder {self.address} could not be created")
        if not any(e.collection for e in entries):
            raise RelayError(f"relay address {self.address} is not a WebDAV collection (folder)")
        self._known.add("")

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _walk(self, folder: str, prefix: str = "", temporaries: bool = False) -> Iterator[tuple[str, _Entry]]:
        """(name, entry) of every non-collection under ``folder``, depth first, one PROPFIND
        (Depth 1) per collection; only collections that can hold ``prefix`` are entered."""
        stack = [folder]
        first = True
        while stack:
            col = stack.pop()
            entries = self._propfind(col, "1")
            if entries is None:
                if first and col == "":
                    raise RelayError(f"relay folder {self.address} is missing")
                first = False
                continue
            first = False
            files, subs = [], []
            for e in entries:
                rel = self._rel(e.path)
                if rel is None or rel == col:
                    continue
                if e.collection:
                    if (rel + "/").startswith(prefix) or prefix.startswith(rel + "/"):
                        subs.append(rel)
                    continue
                base = rel.rpartition("/")[2]
                if base.startswith((TMP_MARK, PROBE_MARK)):
                    if e.mtime and time.time() - e.mtime > STALE_TMP_SECONDS:  # a killed writer's
                        self._delete_quietly(rel)
                        continue
                    if not temporaries:
                        continue
                if rel.startswith(prefix) or (temporaries and base.startswith(TMP_MARK)):
                    files.append((rel, e))
            self._known.add(col)
            files.sort()
            yield from files
            stack.extend(sorted(subs, reverse=True))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        folder = prefix.rpartition("/")[0]
        if folder:
            check_name(folder)
        for name, e in self._walk(folder, prefix):
            yield ObjectInfo(name, e.size, _version_stamp(e.mtime, e.etag), e.etag)

    def raw_usage(self, prefix: str = "") -> int:
        """Bytes of every object, temporaries included (what the server really holds)."""
        folder = prefix.rpartition("/")[0]
        return sum(e.size for _name, e in self._walk(folder, prefix, temporaries=True))

    def stat(self, name: str) -> ObjectInfo | None:
        entries = self._propfind(check_name(name), "0", collection=False)
        if not entries:
            return None
        e = entries[0]
        if e.collection:
            return None
        return ObjectInfo(name, e.size, _version_stamp(e.mtime, e.etag), e.etag)

    def get(self, name: str) -> BinaryIO:
        r = self._request("GET", self._url(check_name(name)), name, headers={"Accept-Encoding": "identity"},
                          stream=True)
        if r.status_code == 404:
            r.close()
            raise RelayObjectMissing(f"relay object {name} is missing")
        if r.status_code != 200:
            r.close()
            raise self._status_error("GET", name, r)
        return io.BufferedReader(_Download(self, name, r), BLOCK)

    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False) -> int:
        check_name(name)
        folder, _, base = name.rpartition("/")
        body = _Body(stream)
        self._mkcol(folder)
        mode = self._create_strategy() if create_only else None
        if mode == "if-none-match":
            r = self._put_to(name, body, {"If-None-Match": "*"})
            if r.status_code == 412:
                raise ObjectExists(f"relay object {name} already exists")
            return body.count
        tmp = (folder + "/" if folder else "") + f"{TMP_MARK}{base}.{uuid.uuid4().hex}"
        moved = False
        try:
            self._put_to(tmp, body)
            if body.length is None:
                # a chunked upload: some servers (PHP behind some front ends) silently store
                # an empty or short file; check before it takes the real name
                (e,) = self._propfind(tmp, "0", collection=False) or [None]
                if e is None or e.size != body.count:
                    raise RelayError(f"PUT {name} on {self.address}: the server kept "
                                     f"{'nothing' if e is None else f'{e.size} bytes'} of {body.count} sent "
                                     "(does it accept chunked uploads?)")
            if mode == "check" and self.stat(name) is not None:
                raise ObjectExists(f"relay object {name} already exists")
            self._move(tmp, name, overwrite=not create_only)
            moved = True
        finally:
            if not moved:
                self._delete_quietly(tmp)
        return body.count

    def _put_to(self, name: str, body: _Body, headers: dict | None = None) -> requests.Response:
        h = {"Content-Type": "application/octet-stream"}
        h.update(headers or {})
        for again in (False, True):
            r = self._request("PUT", self._url(name), name, headers=h, body=body)
            r.close()
            if r.status_code in (200, 201, 204):
                return r
            if r.status_code == 412 and "If-None-Match" in h:
                return r
            if r.status_code == 409:
                # the folder went away (removed by hand?): make it again, now or next time
                folder = name.rpartition("/")[0]
                self._forget_collection(folder)
                if not again and body.replayable:
                    self._mkcol(folder)
                    continue
            raise self._status_error("PUT", name, r)
        raise self._status_error("PUT", name, r)

    def _move(self, src: str, dst: str, overwrite: bool) -> None:
        r = self._request("MOVE", self._url(src), dst,
                          headers={"Destination": self._url(dst), "Overwrite": "T" if overwrite else "F"})
        r.close()
        if r.status_code in (200, 201, 204):
            return
        if r.status_code == 412 and not overwrite:
            raise ObjectExists(f"relay object {dst} already exists")
        if r.status_code == 404 and getattr(r, "attempts", 1) > 1 and self.stat(dst) is not None:
            return  # an earlier try did move it; only its answer was lost
        raise self._status_error("MOVE", dst, r)

    def _delete_quietly(self, name: str) -> None:
        try:
            r = self._request("DELETE", self._url(name), name)
            r.close()
        except RelayError as exc:
            log.debug("%s: could not remove %s: %s", self.address, name, exc)

    def delete(self, name: str) -> None:
        check_name(name)
        r = self._request("DELETE", self._url(name), name)
        r.close()
        if r.status_code not in (200, 204, 404):
            raise self._status_error("DELETE", name, r)
        self._prune(name.rpartition("/")[0])

    def _prune(self, folder: str) -> None:
        """Remove ``folder`` and its parents while empty, stopping above the first level."""
        while "/" in folder:
            entries = self._propfind(folder, "1")
            if entries is None:
                self._forget_collection(folder)
            elif any(self._rel(e.path) not in (folder, None) for e in entries):
                return
            else:
                r = self._request("DELETE", self._url(folder, True), folder + "/")
                r.close()
                self._forget_collection(folder)
                if r.status_code not in (200, 204, 404):
                    return
            folder = folder.rpartition("/")[0]

    def abort_incomplete(self, prefix: str) -> int:
        folder = prefix.rpartition("/")[0]
        if folder:
            check_name(folder)
        removed = 0
        for rel, _e in list(self._walk(folder, prefix, temporaries=True)):
            d, _, base = rel.rpartition("/")
            if not base.startswith(TMP_MARK):
                continue
            target = (d + "/" if d else "") + base[len(TMP_MARK):].rsplit(".", 1)[0]
            if target.startswith(prefix):
                r = self._request("DELETE", self._url(rel), rel)
                r.close()
                if r.status_code in (200, 204):
                    removed += 1
        return removed

    def usage(self) -> Usage:
        entries = self._propfind("", "0", body=_QUOTA_BODY)
        if not entries:
            return Usage()

        def num(key: str) -> int | None:
            try:
                return int(entries[0].props.get(DAV + key, "").strip())
            except ValueError:
                return None

        return Usage(used=num("quota-used-bytes"), available=num("quota-available-bytes"))

    # -- create-if-absent ------------------------------------------------------------------
    def _create_strategy(self) -> str:
        if self._create_mode is None:
            self._create_mode = self._probe()
        return self._create_mode

    def _probe(self) -> str:
        """Find out once how this server can create an object only if absent."""
        p = f"{PROBE_MARK}{uuid.uuid4().hex}"
        q = p + ".2"
        try:
            for n, data in ((p, b"probe 1"), (q, b"probe 2")):
                r = self._request("PUT", self._url(n), n, data=data)
                r.close()
                if r.status_code not in (200, 201, 204):
                    raise self._status_error("PUT", n, r)
            r = self._request("MOVE", self._url(q), p, headers={"Destination": self._url(p), "Overwrite": "F"})
            r.close()
            self.capabilities["move_overwrite_f"] = r.status_code == 412
            r = self._request("PUT", self._url(p), p, data=b"probe 3", headers={"If-None-Match": "*"})
            r.close()
            self.capabilities["if_none_match"] = r.status_code == 412
        finally:
            self._delete_quietly(p)
            self._delete_quietly(q)
        if self.capabilities["move_overwrite_f"]:
            mode = "move"
        elif self.capabilities["if_none_match"]:
            mode = "if-none-match"
        else:
            mode = "check"
            log.warning("%s: the server honours neither 'Overwrite: F' nor 'If-None-Match: *'; "
                        "creating an object only if absent is not atomic there", self.address)
        log.debug("%s: create-if-absent by %s (%s)", self.address, mode, self.capabilities)
        return mode


def _tls_reason(exc: Exception) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        m = re.search(r"certificate verify failed: ([^(]+?)\s*\(_ssl", text)
        return ("certificate verify failed" + (f" ({m.group(1)})" if m else "")
                + "; set 'verify ssl' to the CA bundle that signed the server's certificate")
    m = re.search(r"\[SSL: ([A-Z_]+)\]", text)
    return f"TLS error {m.group(1)}" if m else _describe(exc)
