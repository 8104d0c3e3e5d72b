"""A WebDAV collection used as the relay (``https://host[:port]/path``, ``http://…``,
``webdav://…`` = https, ``webdavs://…`` = https).

Which library does what, and why
--------------------------------
Every request goes through **one** :class:`requests.Session` (one connection pool, so
connections are reused; Basic auth, TLS verification and the client certificate are set
once). ``requests`` is used directly because the relay needs what no WebDAV client
library here gives:

- streamed PUT bodies of unknown length (chunked) or known length, and streamed GET
  bodies that resume with ``Range`` after a reset, so memory stays constant; ranged GETs
  (``get_range``), three at once for a large object (:mod:`escale.relay.ranged`);
- conditional and WebDAV-specific headers (``If-None-Match: *``, ``Overwrite: F``,
  ``Depth: 1``, ``If-Range``) and a precise reading of every status code;
- PROPFIND responses parsed incrementally (``iterparse`` on the response stream) with
  the size, modification time and ETag of each member, so a listing never needs one
  request per object.

**webdavclient3 is not used** (nor a dependency any more): its
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
- **Streaming.** The body is :class:`escale.relay.body.PutBody`, as on FTP and SFTP. A
  seekable source (a file, a BytesIO) is sent with its Content-Length in 1 MiB blocks; a
  non-seekable one of announced size with that Content-Length; one of unknown size is
  read ahead up to 8 MiB (then it is small, sent with a length and replayable) or sent
  chunked, after which the temporary's stored size is checked against what was sent
  before it takes the real name (some PHP-based servers silently store nothing of a
  chunked body). A source that fails to read, or gives another length than announced,
  is the caller's SourceError, never a relay failure. Downloads are read from the
  response as it arrives, in the caller's block size.
- **Create-if-absent** (``create_only``) is probed once per relay (lazily, at the first
  such put): MOVE with ``Overwrite: F`` onto an existing name must fail with 412, and
  PUT with ``If-None-Match: *`` must fail with 412. The temporary + ``MOVE Overwrite: F``
  path is preferred where honoured (wsgidav, Apache, rclone): the object appears whole
  and only if absent. Where only ``If-None-Match`` is honoured, the put goes straight to
  the final name with it. Where neither is, a stat precedes the move (not atomic; a
  warning says so).
- **Layouts** (:mod:`escale.relay.layout`): a relay this backend creates is *flat*, every
  object one file of the relay collection (``u%2F<cid>%2F7``, quoted once more on the
  wire: ``u%252F…``) beside the empty guard files, so one ``PROPFIND Depth: 1`` lists it on
  every server (Apache refuses ``Depth: infinity`` by default; sabre/dav, so Nextcloud,
  answers it as ``Depth: 1``) and a put needs no MKCOL. :meth:`open` is one ``Depth: 1``
  of the relay collection: it exists, its layout, and (flat) the first listing when that
  comes within a second with nothing written in between. A relay made before 2026-12
  (collections ``u/``, ``m/``…) stays *nested*, listed as below.
- **Listings** of a nested relay are one ``PROPFIND Depth: infinity`` of the relay folder where the server
  answers it (wsgidav, rclone, Apache with ``DavDepthInfinity On``); a server that refuses
  it (Apache by default: 403 ``propfind-finite-depth``) is remembered for the process and
  walked with one ``Depth: 1`` per collection, as is one that answers it only in part
  (sabre/dav, so Nextcloud, by default answers ``Depth: 1``: see :meth:`WebDAV._from_tree`).
  ``getlastmodified`` has a
  one-second resolution, so an object rewritten within a second with the same size would
  look unchanged; :class:`ObjectInfo.mtime` is therefore the server time plus a fraction
  of a second derived from the (normalised) ETag: it changes whenever the server's
  entity tag does. ETags are normalised (``W/`` and quotes dropped: Apache gives weak
  ETags for about a second after a write, wsgidav omits quotes in PROPFIND).
- **Empty collections are pruned** (nested layout) after a delete, below the first level only: in
  escale's layout a first-level collection (``u/``, ``a/``, …) is shared by every
  writer, while deeper ones (``u/<cid>/``, ``b/<cid>/<seq>/``) have one writer — the one
  that deletes — so a prune never races with someone else's put.
- **Errors.** 5xx (but 501/505/507), 408, 423, 429, timeouts, connection resets and
  unreadable multistatus answers are transient: each request is retried by the shared
  wrapper (:mod:`escale.relay.retry`: ``max retries`` times, default 5, exponential
  back-off with jitter, honouring ``Retry-After``). A MOVE and a create-if-absent PUT
  are not idempotent: before one is resent, and when a resent one is refused (412, or
  403/404 for a source already moved), the outcome is checked. A request body that was partly sent and cannot be replayed (a stream
  larger than 8 MiB that is not seekable) is not retried: the put fails with RelayError
  and the caller retries next cycle. 401/403 raise AuthenticationError ("authentication
  failed for <relay>"), 507 raises QuotaExceeded, anything else RelayError naming the
  object and the status. Passwords are never logged: the address kept and shown has its
  password removed, and credentials travel only in the Authorization header.

Length: one backend's whole contract (PROPFIND parsing, locks and conditional
writes, chunked uploads, retries, server quirks) against one protocol; splitting it
would scatter one wire protocol across files.
"""
from __future__ import annotations

import datetime
import email.utils
import hashlib
import io
import logging
import math
import os
import posixpath
import re
import time
import unicodedata
import uuid
import xml.etree.ElementTree as ET
from importlib import import_module
from typing import BinaryIO, Iterator
from urllib.parse import quote, unquote, urlsplit

from ..errors import (AuthenticationError, ConfigError, ObjectExists, QuotaExceeded, RelayError,
                      RelayObjectMissing, SourceError)
from ..values import parse_verify_ssl
from . import layout as layouts
from . import retry
from .address import redact, split_network_address
from .base import (PROBE_MARK, STALE_TMP_SECONDS, TMP_MARK, Capabilities, ObjectInfo, Relay, Usage,
                   check_name)
from .body import PutBody
from .layout import FLAT, GUARDS, LAYOUT
from .options import MAX_RETRIES, TLS
from .ranged import Parallel, ParallelRead
from .split import MAX_OBJECT_SIZE


class _Lazy:
    """A module imported on first attribute use, so a repository on another relay never
    pays for requests and urllib3 (about 50 ms and 10 MiB at start-up). The import system's
    own per-module lock makes the first use from several threads safe (the stdlib's
    LazyLoader is not thread-safe before Python 3.12)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(import_module(self._name), attr)


requests = _Lazy("requests")
urllib3 = _Lazy("urllib3")


def _transport_errors() -> tuple[type[BaseException], ...]:
    return (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError)


log = logging.getLogger(__name__)

BLOCK = 1 << 20
DEFAULT_TIMEOUT = 60.0
DAV = "{DAV:}"
_PROPFIND_BODY = (b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
                  b"<D:resourcetype/><D:getcontentlength/><D:getlastmodified/><D:getetag/>"
                  b"</D:prop></D:propfind>")
_QUOTA_BODY = (b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
               b"<D:quota-available-bytes/><D:quota-used-bytes/></D:prop></D:propfind>")


def _href_path(href: str) -> str:
    """The decoded path of a multistatus href: absolute path or full URL. A path never has
    a query here: some servers leave '?' unescaped in names."""
    href = href.strip()
    if not href.startswith("/"):
        parts = urlsplit(href, allow_fragments=False)
        href = href[len(f"{parts.scheme}://{parts.netloc}"):] if parts.scheme and parts.netloc else href
    return unquote(href)


def _status_ok(line: str) -> bool:
    """Whether a multistatus ``HTTP/1.1 200 OK`` line is a success (2xx)."""
    m = re.match(r"\s*HTTP/\S+\s+(\d{3})", line)
    return bool(m) and m.group(1).startswith("2")


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
    """One ``<D:response>`` of a multistatus. ``ok`` is False when the server reports an
    error for that resource (a 403/404 status, or no property it could read): such an
    entry is no object, but it still shows that its collection is not empty."""

    __slots__ = ("path", "collection", "size", "mtime", "etag", "props", "ok")

    def __init__(self, path: str, collection: bool, size: int, mtime: float, etag: str | None, props: dict,
                 ok: bool = True):
        self.path, self.collection, self.size, self.mtime, self.etag = path, collection, size, mtime, etag
        self.props, self.ok = props, ok


class _Refused(Exception):
    """The server refused a PROPFIND's depth (the caller falls back to ``Depth: 1``)."""

    def __init__(self, status: int, finite: bool):
        super().__init__(status)
        self.status, self.finite = status, finite


#: answers to ``PROPFIND Depth: infinity`` that mean "not this depth" (RFC 4918 9.1: 403 with
#: propfind-finite-depth; others answer 400, 405, 501, or 507 for too large an answer)
_DEPTH_REFUSALS = (400, 403, 405, 501, 507)
#: servers (scheme://host:port) that list one collection per request, and why: found once per process
_FINITE_DEPTH: dict[str, str] = {}
_REFUSED = object()
_MEMBER = ("", None)


def _payload(body: PutBody):
    """What to hand to requests for one try of a PUT: the bytes kept in memory, a stream of
    known length (sent with Content-Length), or chunks when the length is unknown."""
    if body.data is not None:
        body.count, body.started = len(body.data), True
        return body.data
    if body.length is not None:
        return _Sized(body.blocks(), body.length)
    return body.blocks()


class _Sized:
    """An iterable body with a length, so requests sends Content-Length and streams it."""

    def __init__(self, it, length: int):
        self._it, self._len = it, length

    def __iter__(self):
        return self._it

    def __len__(self) -> int:
        return self._len


class _Download(io.RawIOBase):
    """The body of a GET, read as it arrives; resumes with Range after a transport error."""

    def __init__(self, relay: "WebDAV", name: str, response: requests.Response, start: int = 0,
                 end: int | None = None, path: str | None = None):
        self.relay, self.name, self.response = relay, name, response
        #: the object's path under the relay folder (its name, or in a flat relay its file name)
        self.path = name if path is None else path
        #: this body is bytes [start, end) of the object (a ranged GET; end None: to its end)
        self.start, self.end = start, end
        self.offset = 0
        self.etag = normalise_etag(response.headers.get("ETag"))
        self.strong = bool(response.headers.get("ETag")) and not response.headers["ETag"].startswith("W/")
        self.resumes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        want = len(b) if self.end is None else min(len(b), self.end - self.start - self.offset)
        if want <= 0:
            return 0
        while True:
            try:
                data = self.response.raw.read(want, decode_content=True)
            except (urllib3.exceptions.HTTPError, OSError, requests.RequestException) as exc:
                self._resume(exc)
                continue
            n = len(data)
            b[:n] = data
            self.offset += n
            return n

    def _resume(self, exc: Exception) -> None:
        self.response.close()
        policy = self.relay.retry
        if self.resumes >= policy.max_retries:
            raise RelayError(f"reading relay object {self.name} from {self.relay.address} failed: "
                             f"{_describe(exc)}") from exc
        delay = policy.delay(self.resumes)
        self.resumes += 1
        log.warning("%s: reading %s broke at byte %d (%s); resuming in %.1f s", self.relay.address, self.name,
                    self.offset, _describe(exc), delay)
        policy.sleep(delay)
        at = self.start + self.offset
        headers = {"Range": f"bytes={at}-{'' if self.end is None else self.end - 1}", "Accept-Encoding": "identity"}
        if self.etag and self.strong:
            headers["If-Range"] = f'"{self.etag}"'
        r = self.relay._request("GET", self.relay._url(self.path), self.name, headers=headers, stream=True)
        if r.status_code == 404:
            r.close()
            raise RelayObjectMissing(f"relay object {self.name} is missing (deleted while being read)")
        etag = normalise_etag(r.headers.get("ETag"))
        if self.etag and etag and etag != self.etag:
            r.close()
            raise RelayError(f"relay object {self.name} changed while being read")
        if r.status_code == 206:
            start = r.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start != str(at):
                r.close()
                raise RelayError(f"relay object {self.name}: the server resumed at the wrong offset")
        elif r.status_code == 200:  # Range ignored: skip what we already have
            skip = at
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
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when.tzinfo is None:  # "-0000" (RFC 5322: UTC, source zone unknown) gives a naive datetime
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def _version_stamp(lastmod: float, etag: str | None) -> float:
    """The server's mtime (whole seconds) plus a fraction of a second taken from the ETag."""
    if not etag:
        return lastmod
    frac = int.from_bytes(hashlib.sha1(etag.encode()).digest()[:4], "big") / 2**32
    return math.floor(lastmod) + round(frac * 0.999, 6)


class WebDAV(Relay):
    schemes = ("http", "https", "webdav", "webdavs")
    options = (*TLS, MAX_RETRIES, MAX_OBJECT_SIZE, LAYOUT)

    def __init__(self, address: str, user: str | None = None, password: str | None = None,
                 verify_ssl: str | bool | None = None, certfile: str | None = None, keyfile: str | None = None,
                 max_retries: str | int | None = None, port: str | int | None = None,
                 timeout: str | float | None = None, layout: str | None = None, **options):
        try:
            net = split_network_address(address)
        except ConfigError as exc:
            raise ConfigError(f"{exc.detail}; a WebDAV address is https://host[:port]/path",
                              option="relay address") from None
        scheme = net.scheme
        if scheme not in self.schemes:
            raise ConfigError(f"'{redact(address.strip())}' is not a WebDAV address (https://host[:port]/path)",
                              option="relay address")
        self.http_scheme = "http" if scheme == "http" else "https"
        try:
            self.port = net.port or (int(port) if port not in (None, "") else None)
        except (TypeError, ValueError):
            raise ConfigError(f"bad port {port!r}", option="port") from None
        if user is None and net.user:
            user = net.user
        if password is None and net.password:
            password = net.password
        netloc = net.netloc(self.port, with_user=False)
        path = net.decoded_path
        self.base_path = "/" + path + "/" if path else "/"
        self.base_url = f"{self.http_scheme}://{netloc}{quote(self.base_path)}"
        # the address as written, less any password in it: what logs and errors show
        shown = f"{scheme}://" + net.netloc(self.port) + ("/" + net.path.strip("/") if path else "")
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
        self.retry = retry.RetryPolicy.from_option(max_retries)
        #: large objects are read with several ranged GETs at once (escale.relay.ranged)
        self.parallel = Parallel()
        t = timeout if timeout not in (None, "") else os.environ.get("ESCALE_WEBDAV_TIMEOUT")
        try:
            t = float(t) if t not in (None, "") else DEFAULT_TIMEOUT
            if t <= 0:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"WebDAV timeout must be a number of seconds > 0, not {t!r}") from None
        self.timeout = (min(10.0, t), t)
        #: the layout a new relay gets; an existing relay's own is found from its root listing
        self.new_layout = layouts.new_layout(layout)
        self._layout: str | None = None
        #: the root listing of open() (flat layout): the first listing reuses it while nothing
        #: was written since and it is under a second old (start-up: one request, not two)
        self._opening: tuple[float, list] | None = None
        for k in options:
            log.debug("%s: option %s is not used by the WebDAV relay", self.address, k)
        self._session: requests.Session | None = None
        self._known: set[str] = set()  # collections known to exist ("" is the base)
        self._href_base: str | None = None  # the base's path as the server's hrefs spell it
        self._create_mode: str | None = None  # "move", "if-none-match" or "check"
        self._probed: dict[str, bool] = {}

    @property
    def max_retries(self) -> int:
        return self.retry.max_retries

    @max_retries.setter
    def max_retries(self, n: int) -> None:
        self.retry.max_retries = n

    @staticmethod
    def _parse_verify(value) -> bool | str:
        try:
            return parse_verify_ssl(value)
        except ValueError as exc:
            raise ConfigError(str(exc), option="verify ssl") from None

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
        hint = ""
        if r.status_code == 413:  # Apache's LimitRequestBody, a proxy's body limit (Cloudflare: 100 MB)
            hint = ("; the server takes no object this large: set 'max object size' below its limit "
                    "(docs/relays.md)")
        return RelayError(f"{method} {what or '/'} on {self.address} failed: HTTP {r.status_code} {r.reason or ''}"
                          .rstrip() + hint)

    def _request(self, method: str, url: str, what: str, *, headers: dict | None = None, body: PutBody | None = None,
                 data: bytes | None = None, stream: bool = False, done=None,
                 passthrough: tuple[int, ...] = ()) -> requests.Response | None:
        """Send one request, retried by :func:`escale.relay.retry.call` on transient failures;
        returns any other response.

        401/403 raise AuthenticationError and 507 QuotaExceeded; the caller reads the rest.
        ``r.attempts`` tells how many tries it took (a retried MOVE may find its work done).
        ``done()``, given for a request that is not idempotent, is asked before each retry
        whether the failed try did act after all (its answer lost): then nothing is sent
        again and None is returned. (A MOVE resent after its source was moved makes
        ``rclone serve webdav`` delete the destination.)
        """
        r = retry.call(lambda attempt: self._attempt(method, url, what, attempt, headers=headers, body=body,
                                                     data=data, stream=stream, passthrough=passthrough),
                       policy=self.retry, what=f"{method} {what or '/'} on {self.address}", landed=done,
                       replayable=(lambda: body.replayable) if body is not None else None)
        return None if r is retry.LANDED else r

    def _attempt(self, method: str, url: str, what: str, attempt: int, *, headers: dict | None = None,
                 body: PutBody | None = None, data: bytes | None = None, stream: bool = False,
                 passthrough: tuple[int, ...] = ()) -> requests.Response:
        """One try of a request: a transient failure is raised as TransientRelayError (with
        the server's Retry-After), anything else but auth and quota (unless in
        ``passthrough``) is returned."""
        payload = _payload(body) if body is not None else data
        try:
            r = self.session.request(method, url, headers=headers, data=payload, stream=stream,
                                     timeout=self.timeout, verify=self.verify, allow_redirects=False)
        except SourceError:
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            if body is not None and body.error is not None:  # the local read failed, wrapped by requests
                raise body.error from exc
            raise self._transport_failure(method, what, exc) from exc
            raise RelayError(f"TLS connection to {self.address} failed: {_tls_reason(exc)}") from exc
        except _transport_errors() as exc:
            reason = _describe(exc)
            raise retry.transient(f"{method} {what or '/'} on {self.address} failed: {reason}",
                                  reason=reason) from exc
        except requests.RequestException as exc:
            raise RelayError(f"{method} {what or '/'} on {self.address} failed: {_describe(exc)}") from exc
        status = r.status_code
        # a retried MOVE whose first try moved the source may get 403 (rclone) for the
        # missing source: the caller checks the outcome
        lost_move = status == 403 and method == "MOVE" and attempt > 0
        if status in (401, 403) and not lost_move and status not in passthrough:
            r.close()
            raise AuthenticationError(f"authentication failed for {self.address}"
                                      f" (HTTP {status} on {method} {what or '/'})")
        if status == 507 and status not in passthrough:
            r.close()
            raise QuotaExceeded(f"relay {self.address} is full (HTTP 507 Insufficient Storage) "
                                f"while writing {what or '/'}")
        if not _retryable(status):
            r.attempts = attempt + 1
            return r
        reason = f"HTTP {status} {r.reason or ''}".rstrip()
        retry_after = self._retry_after(r)
        r.close()
        raise retry.transient(f"{method} {what or '/'} on {self.address} failed: {reason}", retry_after, reason)

    def _transport_failure(self, method: str, what: str, exc: BaseException) -> RelayError:
        """What a request that got no answer is: a TLS failure is final, a network one transient."""
        if isinstance(exc, requests.exceptions.SSLError):
            return RelayError(f"TLS connection to {self.address} failed: {_tls_reason(exc)}")
        if isinstance(exc, _transport_errors()):
            reason = _describe(exc)
            return retry.transient(f"{method} {what or '/'} on {self.address} failed: {reason}", reason=reason)
        return RelayError(f"{method} {what or '/'} on {self.address} failed: {_describe(exc)}")

    def _propfind(self, name: str, depth: str, collection: bool = True, body: bytes = _PROPFIND_BODY,
                  refused: tuple[int, ...] = ()) -> list[_Entry] | None:
        """The entries of a PROPFIND (parsed as the body arrives), or None on 404. An answer
        cut or garbled on the way is transient: the whole PROPFIND is retried. A status in
        ``refused`` raises _Refused (the caller has another way)."""
        url = self._url(name, collection)
        headers = {"Depth": depth, "Content-Type": 'application/xml; charset="utf-8"',
                   "Accept-Encoding": "identity"}

        def once(attempt: int) -> list[_Entry] | None:
            r = self._attempt("PROPFIND", url, name, attempt, headers=headers, data=body, stream=True,
                              passthrough=refused)
            try:
                if r.status_code == 404:
                    return None
                if r.status_code in refused:
                    raise _Refused(r.status_code, b"propfind-finite-depth" in r.raw.read(1 << 16))
                if r.status_code != 207:
                    raise self._status_error("PROPFIND", name, r)
                try:
                    return list(self._parse_multistatus(r.raw))
                except (ET.ParseError, urllib3.exceptions.HTTPError, OSError) as exc:
                    reason = f"unreadable answer ({_describe(exc)})"
                    raise retry.transient(f"PROPFIND {name or '/'} on {self.address}: {reason}",
                                          reason=reason) from exc
            finally:
                r.close()

        return retry.call(once, policy=self.retry, what=f"PROPFIND {name or '/'} on {self.address}")

    def _parse_multistatus(self, raw) -> Iterator[_Entry]:
        raw.decode_content = True
        for _event, el in ET.iterparse(raw, events=("end",)):
            if el.tag != DAV + "response":
                continue
            href = el.findtext(DAV + "href") or ""
            path = _href_path(href)
            status = el.findtext(DAV + "status")  # a status for the whole resource (RFC 4918 14.24)
            ok = status is None or _status_ok(status)
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
            # a resource without one readable property (every propstat 403/404…) is not an object
            ok = ok and bool(props)
            yield _Entry(path, collection, size, _http_date(lm.text if lm is not None else None), etag,
                         {k: (v.text or "").strip() for k, v in props.items()}, ok)

    def _rel(self, path: str) -> str | None:
        """An href path as a name relative to the base, or None when outside it.

        The base is matched as configured and as the server spelled it in its answer to
        the first PROPFIND (a reverse proxy may strip or add a path prefix), folder by
        folder in Unicode NFC (some servers answer in NFD); the rest is the name as the
        server gives it."""
        parts = path.split("/")
        for base in self._bases:
            head = base.strip("/").split("/") if base.strip("/") else []
            got = [p for p in parts[: len(head) + 1] if p][: len(head)]
            lead = len(head) + 1 + (0 if path.startswith("/") else -1)  # parts before the name
            if [unicodedata.normalize("NFC", p) for p in got] == head and len(got) == len(head):
                return "/".join(parts[lead:]).strip("/")
        return None

    @property
    def _bases(self) -> tuple[str, ...]:
        mine = unicodedata.normalize("NFC", self.base_path)
        return (mine,) if self._href_base in (None, mine) else (mine, self._href_base)

    def _unmapped(self, entries: list[_Entry], col: str, tree: bool = False) -> RelayError:
        inside = col + "/" if col else ""
        bad = next(e.path for e in entries if (rel := self._rel(e.path)) is None
                   or (tree and rel != col and not rel.startswith(inside)))
        return RelayError(f"PROPFIND {col or '/'} on {self.address}: the server named a member '{bad}', which "
                          f"is not under the relay folder '{self.base_path}' (a proxy rewriting paths?); "
                          "refusing to guess")

    # -- collections -----------------------------------------------------------------------
    def _mkcol(self, folder: str) -> None:
        """Make sure the collection ``folder`` ('' = the base) exists, creating parents."""
        if folder in self._known:
            return
        r = self._make_collection(folder)
        if r.status_code in (200, 201, 204, 405):
            pass
        elif r.status_code == 409 and folder:
            self._mkcol(posixpath.dirname(folder))
            r = self._make_collection(folder)
            if r.status_code not in (200, 201, 204, 405):
                raise self._status_error("MKCOL", folder + "/", r)
        else:
            raise self._status_error("MKCOL", folder + "/", r)
        while True:
            self._known.add(folder)
            if not folder:
                break
            folder = posixpath.dirname(folder)

    def _make_collection(self, folder: str) -> requests.Response:
        """One MKCOL. Apache answers 403 to a MKCOL that loses a race with another one
        creating the same collection (mkdir finds it made): a 403 is a refusal only when
        the collection is not there afterwards."""
        r = self._request("MKCOL", self._url(folder, True), folder + "/", passthrough=(403,))
        r.close()
        if r.status_code == 403:
            entries = self._propfind(folder, "0")
            if not entries or not any(e.collection for e in entries):
                raise AuthenticationError(f"authentication failed for {self.address} (HTTP 403 on MKCOL "
                                          f"{folder}/)")
            r.status_code = 405  # it exists (made by a concurrent put)
        return r

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
        """One ``PROPFIND Depth: 1`` of the relay folder: it exists (made if not), how the
        server spells its path, and the relay's layout (escale/relay/layout.py); in a flat
        relay that answer is also the first listing."""
        entries = self._propfind("", "1")
        if entries is None:
            self._make_base()
            entries = self._propfind("", "1")
            if entries is None:
                raise RelayError(f"relay folder {self.address} could not be created")
        cols = [e for e in entries if e.collection and e.ok]
        if not cols:
            raise RelayError(f"relay address {self.address} is not a WebDAV collection (folder)")
        # the folder itself: the shortest href (its members' hrefs extend it)
        own = unicodedata.normalize("NFC", min(cols, key=lambda e: len(e.path.rstrip("/"))).path)
        self._href_base = own if own.endswith("/") else own + "/"
        if self._href_base != unicodedata.normalize("NFC", self.base_path):
            log.info("%s: the server names this folder '%s' in its answers", self.address, self._href_base)
        self._known.add("")
        self._layout = self._find_layout(entries)
        self._opening = (time.monotonic(), entries) if self._layout == FLAT else None

    def _find_layout(self, entries: list[_Entry]) -> str:
        """The layout the root listing shows; a new relay takes ``layout`` (flat by default)
        and, flat, gets its guard files (empty files where an older client makes folders)."""
        folders, files = set(), set()
        for e in entries:
            rel = self._rel(e.path)
            if rel is None:
                raise self._unmapped(entries, "")
            if not rel or "/" in rel or rel.startswith((TMP_MARK, PROBE_MARK)):
                continue
            (folders if e.collection else files).add(rel)
        found = layouts.detect(self.address, folders, files)
        if found is None:
            found = self.new_layout
            if found == FLAT:
                for g in sorted(GUARDS - files):
                    r = self._request("PUT", self._url(g), g, data=b"",
                                      headers={"Content-Type": "application/octet-stream"})
                    r.close()
                    if r.status_code not in (200, 201, 204):
                        raise self._status_error("PUT", g, r)
                log.info("%s: a new relay: flat layout (one listing per cycle)", self.address)
        return found

    @property
    def layout(self) -> str | None:
        return self._layout

    def _path(self, name: str) -> str:
        """The path of object ``name`` under the relay folder, in this relay's layout."""
        return layouts.object_path(self.address, self._layout, name)

    def _wrote(self) -> None:
        """Something was written or removed: open()'s listing is not reused."""
        self._opening = None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _walk(self, folder: str, prefix: str = "", temporaries: bool = False) -> Iterator[tuple[str, _Entry]]:
        """(name, entry) of every non-collection under ``folder`` whose name starts with
        ``prefix``: one ``PROPFIND Depth: infinity`` where the server answers it, else one
        ``Depth: 1`` per collection (:meth:`_walk_collections`). A flat relay: one
        ``Depth: 1`` of the relay folder (:meth:`_walk_flat`)."""
        if self._layout == FLAT:
            yield from self._walk_flat(temporaries)
            return
        if self._server_key() not in _FINITE_DEPTH:
            tree = self._propfind_tree(folder)
            if tree is not _REFUSED:
                yield from self._from_tree(folder, prefix, temporaries, tree)
                return
        yield from self._walk_collections(folder, prefix, temporaries)

    def _walk_flat(self, temporaries: bool = False) -> Iterator[tuple[str, _Entry]]:
        """(file name, entry) of every file of a flat relay's folder: the objects' (guard
        files included), or with ``temporaries`` the hidden ones too; one ``Depth: 1``."""
        opening, self._opening = self._opening, None
        if opening is not None and time.monotonic() - opening[0] < 1.0:
            entries = opening[1]
        else:
            entries = self._propfind("", "1")
            if entries is None:
                raise RelayError(f"relay folder {self.address} is missing")
        files = []
        for e in entries:
            rel = self._rel(e.path)
            if rel is None:
                raise self._unmapped(entries, "")
            if not rel:
                continue
            if "/" in rel:  # a member of a member: a Depth 1 answer has none
                raise self._unmapped(entries, "", tree=True)
            if not e.ok:
                log.warning("%s: the server reports an error for '%s' in the listing; skipped", self.address, rel)
                continue
            if e.collection:
                if rel in GUARDS:
                    raise layouts.mixed(self.address, rel)
                continue
            hidden = rel.startswith((TMP_MARK, PROBE_MARK))
            if hidden and e.mtime and time.time() - e.mtime > STALE_TMP_SECONDS:
                self._delete_quietly(rel)  # a killed writer's, found by any listing
                continue
            if temporaries or not hidden:
                files.append((rel, e))
        files.sort()
        yield from files

    def _server_key(self) -> str:
        return self.base_url[: len(self.base_url) - len(quote(self.base_path))]

    def _propfind_tree(self, folder: str):
        """The entries of ``PROPFIND Depth: infinity`` on ``folder`` (None: it is missing), or
        _REFUSED when the server refuses that depth: Apache by default (403 with a
        ``propfind-finite-depth`` precondition), wsgidav when configured so, others with 400,
        405, 501 or 507. The refusal is remembered for this server for the process, and said
        once. A 403 that was really an authentication failure shows again at once, on the
        first ``Depth: 1`` request."""
        try:
            return self._propfind(folder, "infinity", refused=_DEPTH_REFUSALS)
        except _Refused as exc:
            self._finite_depth(f"it refuses 'Depth: infinity' (HTTP {exc.status}"
                               f"{', propfind-finite-depth' if exc.finite else ''})")
            return _REFUSED

    def _finite_depth(self, why: str) -> None:
        key = self._server_key()
        if key not in _FINITE_DEPTH:
            _FINITE_DEPTH[key] = why
            log.info("%s: the server lists one collection per request: %s (Apache: 'DavDepthInfinity On' "
                     "lists the relay in one request)", self.address, why)

    def _from_tree(self, folder: str, prefix: str, temporaries: bool, entries: list[_Entry] | None
                   ) -> Iterator[tuple[str, _Entry]]:
        """The walk's answer, read from one ``Depth: infinity`` answer.

        A server may also answer such a request as if it were ``Depth: 1`` (sabre/dav, so
        Nextcloud and ownCloud, unless told otherwise) or stop at some depth: the
        collections at the answer's deepest level would then look empty, and the listing
        would be short. They are listed again one by one (in a complete answer they are
        empty collections, rare in escale's layout: a writer prunes its own); if one of them
        holds anything, the server cut the answer, and it is walked from now on."""
        if entries is None:
            if folder == "":
                raise RelayError(f"relay folder {self.address} is missing")
            return
        inside = folder + "/" if folder else ""
        files: list[tuple[str, _Entry]] = []
        cols: dict[str, int] = {}
        deepest = 0

        def entered(col: str) -> bool:
            return col == folder or (col + "/").startswith(prefix) or prefix.startswith(col + "/")

        for e in entries:
            rel = self._rel(e.path)
            if rel is None or not (rel == folder or rel.startswith(inside)):
                raise self._unmapped(entries, folder, tree=True)
            if rel == folder:
                continue
            depth = rel[len(inside):].count("/") + 1
            deepest = max(deepest, depth)
            parent = rel.rpartition("/")[0]
            if not e.ok:
                if entered(parent):
                    log.warning("%s: the server reports an error for '%s' in the listing; skipped",
                                self.address, rel)
                continue
            if e.collection:
                cols[rel] = depth
                continue
            if depth == 1 and not folder and (rel in GUARDS or "%2F" in rel):
                raise layouts.mixed(self.address, rel, nested=True)
            if not entered(parent):
                continue
            if self._listed(rel, e, prefix, temporaries):
                files.append((rel, e))
        self._known.add(folder)
        self._known.update(cols)
        files.sort()
        yield from files
        cut = False
        for col in sorted(c for c, d in cols.items() if d == deepest and entered(c)):
            for item in self._walk_collections(col, prefix, temporaries, members=True):
                if item is _MEMBER:
                    cut = True
                else:
                    yield item
        if cut:
            self._finite_depth("it answers 'Depth: infinity' only in part")

    def _listed(self, rel: str, e: _Entry, prefix: str, temporaries: bool) -> bool:
        """Whether a listed object belongs in a listing of ``prefix``; a killed writer's stale
        temporary is removed on sight (both walks share this rule)."""
        base = rel.rpartition("/")[2]
        if base.startswith((TMP_MARK, PROBE_MARK)):
            if e.mtime and time.time() - e.mtime > STALE_TMP_SECONDS:
                self._delete_quietly(rel)
                return False
            if not temporaries:
                return False
        return rel.startswith(prefix) or (temporaries and base.startswith(TMP_MARK))

    def _walk_collections(self, folder: str, prefix: str = "", temporaries: bool = False, members: bool = False
                          ) -> Iterator[tuple[str, _Entry]]:
        """(name, entry) of every non-collection under ``folder``, depth first, one PROPFIND
        (Depth 1) per collection; only collections that can hold ``prefix`` are entered.
        ``members``: also yield _MEMBER once ``folder`` shows anything in it."""
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
                if rel is None:  # never list "nothing" because the hrefs could not be read
                    raise self._unmapped(entries, col)
                if rel == col:
                    continue
                if members and col == folder:
                    members = False
                    yield _MEMBER
                if not e.ok:
                    log.warning("%s: the server reports an error for '%s' in the listing; skipped",
                                self.address, rel)
                    continue
                if e.collection:
                    if (rel + "/").startswith(prefix) or prefix.startswith(rel + "/"):
                        subs.append(rel)
                    continue
                if not col and (rel in GUARDS or "%2F" in rel):
                    raise layouts.mixed(self.address, rel, nested=True)
                if self._listed(rel, e, prefix, temporaries):
                    files.append((rel, e))
            self._known.add(col)
            files.sort()
            yield from files
            stack.extend(sorted(subs, reverse=True))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if self._layout == FLAT:
            found = []
            for rel, e in self._walk_flat():
                name = layouts.decode(rel)
                if name is not None and name.startswith(prefix):
                    found.append(ObjectInfo(name, e.size, _version_stamp(e.mtime, e.etag), e.etag))
            found.sort(key=lambda i: i.name)
            yield from found
            return
        folder = prefix.rpartition("/")[0]
        if folder:
            check_name(folder)
        for name, e in self._walk(folder, prefix):
            yield ObjectInfo(name, e.size, _version_stamp(e.mtime, e.etag), e.etag)

    def raw_usage(self, prefix: str = "") -> int:
        """Bytes of every object, temporaries included (what the server really holds)."""
        if self._layout == FLAT:
            return sum(e.size for rel, e in self._walk_flat(temporaries=True)
                       if (layouts.decode(rel) or "").startswith(prefix) or rel.startswith(TMP_MARK))
        folder = prefix.rpartition("/")[0]
        return sum(e.size for _name, e in self._walk(folder, prefix, temporaries=True))

    def stat(self, name: str) -> ObjectInfo | None:
        e = self._stat_path(self._path(name))
        return None if e is None else ObjectInfo(name, e.size, _version_stamp(e.mtime, e.etag), e.etag)

    def _stat_path(self, path: str) -> _Entry | None:
        """The entry of the file at ``path`` (under the relay folder), None when there is none."""
        entries = self._propfind(path, "0", collection=False)
        if not entries:
            return None
        e = entries[0]
        return None if e.collection or not e.ok else e

    def get(self, name: str) -> BinaryIO:
        path = self._path(name)
        r = self._request("GET", self._url(path), name, headers={"Accept-Encoding": "identity"},
                          stream=True)
        if r.status_code == 404:
            r.close()
            raise RelayObjectMissing(f"relay object {name} is missing")
        if r.status_code != 200:
            r.close()
            raise self._status_error("GET", name, r)
        body = _Download(self, name, r, path=path)
        try:
            length = int(r.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        # several ranged GETs at once for a large object, when the server says it serves
        # ranges and gives an ETag to pin them to (each answer's ETag is compared)
        if (length > 0 and body.etag and r.headers.get("Accept-Ranges", "").lower() == "bytes"
                and "Content-Encoding" not in r.headers and self.parallel.applies(length, body.etag)):
            return ParallelRead(self, name, length, body.etag, body, self.parallel)
        return io.BufferedReader(body, BLOCK)

    def get_range(self, name: str, start: int, length: int, *, version: str | None = None) -> BinaryIO:
        if start < 0 or length < 0:
            raise ValueError("a range starts at 0 or later and has a length of 0 or more")
        # the version is checked on the answer's ETag, not with If-Match: Apache gives a weak
        # ETag for a file changed within the last second, which If-Match never matches
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={start}-{start + max(length, 1) - 1}"}
        path = self._path(name)
        r = self._request("GET", self._url(path), name, headers=headers, stream=True)
        if r.status_code == 404:
            r.close()
            raise RelayObjectMissing(f"relay object {name} is missing")
        if version is not None:
            etag = normalise_etag(r.headers.get("ETag"))
            if etag is None:  # no ETag on a GET: ask a listing
                info = self.stat(name)
                etag = None if info is None else info.version
            if etag != version:
                r.close()
                raise RelayError(f"relay object {name} changed while being read")
        if r.status_code == 416 or length == 0:  # past the end (the object exists)
            r.close()
            return io.BytesIO(b"")
        if r.status_code == 206:
            first = r.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if first != str(start):
                r.close()
                raise RelayError(f"relay object {name}: the server answered a range at the wrong offset")
            return io.BufferedReader(_Download(self, name, r, start, start + length, path=path), BLOCK)
        if r.status_code != 200:
            r.close()
            raise self._status_error("GET", name, r)
        body = _Download(self, name, r, 0, start + length, path=path)  # Range ignored: skip to the start
        skip = start
        try:
            while skip > 0 and (n := body.readinto(bytearray(min(skip, BLOCK)))):
                skip -= n
        except BaseException:
            body.close()
            raise
        return io.BufferedReader(body, BLOCK)

    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False, size: int | None = None) -> int:
        path = self._path(name)
        folder, _, base = path.rpartition("/")
        body = PutBody(stream, size, name)
        self._wrote()
        self._mkcol(folder)
        mode = self._create_strategy() if create_only else None
        if mode == "if-none-match":
            # straight to the final name; a retry refused with 412 whose first try's answer
            # was lost finds its own object (checked by the retry wrapper)
            self._put_to(path, body, {"If-None-Match": "*"}, landed=lambda: self._holds(name, body), create=True)
            return body.length if body.length is not None else body.count
        tmp = (folder + "/" if folder else "") + f"{TMP_MARK}{base}.{uuid.uuid4().hex}"
        moved = False
        try:
            self._put_to(tmp, body)
            if body.length is None:
                # a chunked upload: some servers (PHP behind some front ends) silently store
                # an empty or short file; check before it takes the real name
                e = self._stat_path(tmp)
                if e is None or e.size != body.count:
                    raise RelayError(f"PUT {name} on {self.address}: the server kept "
                                     f"{'nothing' if e is None else f'{e.size} bytes'} of {body.count} sent "
                                     "(does it accept chunked uploads?)")
            if mode == "check" and self._stat_path(path) is not None:
                raise ObjectExists(f"relay object {name} already exists")
            # a MOVE whose answer was lost, retried, finds the temporary gone: it is ours
            # when the name holds our bytes (a create) or at least exists (a replace)
            self._move(tmp, path, overwrite=not create_only,
                       landed=(lambda: self._stat_path(tmp) is None and self._holds(name, body))
                       if create_only else None)
            moved = True
        finally:
            if not moved:
                self._delete_quietly(tmp)
        return body.count

    def _put_to(self, name: str, body: PutBody, headers: dict | None = None, landed=None,
                create: bool = False) -> requests.Response | None:
        """PUT ``body`` to ``name`` (retried; a folder gone since is made again once).
        ``create``: the headers make it create-if-absent, and 412 is ObjectExists."""
        h = {"Content-Type": "application/octet-stream"}
        h.update(headers or {})
        url = self._url(name)
        remade = False

        def once(attempt: int) -> requests.Response:
            nonlocal remade
            while True:
                r = self._attempt("PUT", url, name, attempt, headers=h, body=body)
                r.close()
                if r.status_code in (200, 201, 204):
                    return r
                if r.status_code == 412 and create:
                    raise ObjectExists(f"relay object {name} already exists")
                if r.status_code == 409 and not remade:
                    # the folder went away (removed by hand?): make it again, now or next time
                    folder = name.rpartition("/")[0]
                    self._forget_collection(folder)
                    if body.replayable:
                        remade = True
                        self._mkcol(folder)
                        continue
                raise self._status_error("PUT", name, r)

        r = retry.call(once, policy=self.retry, what=f"PUT {name} on {self.address}", landed=landed,
                       recheck=(ObjectExists,) if create else (), replayable=lambda: body.replayable)
        return None if r is retry.LANDED else r

    def _holds(self, name: str, body: PutBody) -> bool:
        """Whether ``name`` holds exactly the bytes of ``body`` (the outcome check of a
        create whose answer was lost). Identical bytes from someone else cannot be told
        from ours, and are harmless: the object is what we meant to write."""
        want = body.digest()
        return want is not None and retry.holds(self.get, name, want)

    def _move(self, src: str, dst: str, overwrite: bool, landed=None) -> None:
        """MOVE ``src`` (a temporary of ours alone) to ``dst``. Not idempotent: a retry is
        not sent once ``landed()`` (by default: the source gone, the destination there)
        says the first try acted, and a retry refused with 412 or 403/404 is checked the
        same way before it is reported."""
        def moved() -> bool:
            return self._stat_path(src) is None and self._stat_path(dst) is not None

        headers = {"Destination": self._url(dst), "Overwrite": "T" if overwrite else "F"}

        def once(attempt: int) -> None:
            r = self._attempt("MOVE", self._url(src), dst, attempt, headers=headers)
            r.close()
            if r.status_code in (200, 201, 204):
                return
            if r.status_code == 412 and not overwrite:
                raise ObjectExists(f"relay object {dst} already exists")
            if r.status_code in (403, 404) and attempt > 0:
                raise RelayObjectMissing(f"MOVE {dst} on {self.address}: the source {src} is gone (HTTP "
                                         f"{r.status_code})")
            raise self._status_error("MOVE", dst, r)

        retry.call(once, policy=self.retry, what=f"MOVE {dst} on {self.address}", landed=landed or moved,
                   recheck=(ObjectExists, RelayObjectMissing))

    def _delete_quietly(self, name: str) -> None:
        try:
            r = self._request("DELETE", self._url(name), name)
            r.close()
        except RelayError as exc:
            log.debug("%s: could not remove %s: %s", self.address, name, exc)

    def delete(self, name: str) -> None:
        path = self._path(name)
        self._wrote()
        r = self._request("DELETE", self._url(path), name)
        r.close()
        if r.status_code not in (200, 204, 404):
            raise self._status_error("DELETE", name, r)
        if self._layout != FLAT:
            self._prune(name.rpartition("/")[0])

    def _prune(self, folder: str) -> None:
        """Remove ``folder`` and its parents while empty, stopping above the first level."""
        while "/" in folder:
            entries = self._propfind(folder, "1")
            if entries is None:
                self._forget_collection(folder)
            elif not self._only_itself(entries, folder):
                return  # a member, an error entry or an href we cannot place: never delete
            else:
                r = self._request("DELETE", self._url(folder, True), folder + "/")
                r.close()
                self._forget_collection(folder)
                if r.status_code not in (200, 204, 404):
                    return
            folder = folder.rpartition("/")[0]

    def _only_itself(self, entries: list[_Entry], folder: str) -> bool:
        """Whether a Depth 1 PROPFIND of ``folder`` shows it empty: exactly one answer, and
        that answer is the folder itself. A DELETE of a collection removes everything in
        it, so anything else (a member, a per-resource error, an href that does not map
        to a name) keeps the folder."""
        if len(entries) != 1:
            return False
        (e,) = entries
        return e.ok and e.collection and self._rel(e.path) == folder

    def abort_incomplete(self, prefix: str) -> int:
        flat = self._layout == FLAT
        folder = "" if flat else prefix.rpartition("/")[0]
        if folder:
            check_name(folder)
        removed = 0
        for rel, _e in list(self._walk(folder, prefix, temporaries=True)):
            d, _, base = rel.rpartition("/")
            if not base.startswith(TMP_MARK):
                continue
            target = (d + "/" if d else "") + base[len(TMP_MARK):].rsplit(".", 1)[0]
            target = (layouts.decode(target) or "") if flat else target
            if target and target.startswith(prefix):
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
                n = int(entries[0].props.get(DAV + key, "").strip())
            except ValueError:
                return None
            # negative: Nextcloud/ownCloud's -1 not computed, -2 unknown, -3 unlimited
            return n if n >= 0 else None

        return Usage(used=num("quota-used-bytes"), available=num("quota-available-bytes"))

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(atomic_create=self._create_mode != "check", ranged_reads=True)

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
            self._probed["move_overwrite_f"] = r.status_code == 412
            r = self._request("PUT", self._url(p), p, data=b"probe 3", headers={"If-None-Match": "*"})
            r.close()
            self._probed["if_none_match"] = r.status_code == 412
        finally:
            self._delete_quietly(p)
            self._delete_quietly(q)
        if self._probed["move_overwrite_f"]:
            mode = "move"
        elif self._probed["if_none_match"]:
            mode = "if-none-match"
        else:
            mode = "check"
            log.warning("%s: the server honours neither 'Overwrite: F' nor 'If-None-Match: *'; "
                        "creating an object only if absent is not atomic there", self.address)
        log.debug("%s: create-if-absent by %s (%s)", self.address, mode, self._probed)
        return mode


def _tls_reason(exc: Exception) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        m = re.search(r"certificate verify failed: ([^(]+?)\s*\(_ssl", text)
        return ("certificate verify failed" + (f" ({m.group(1)})" if m else "")
                + "; set 'verify ssl' to the CA bundle that signed the server's certificate")
    m = re.search(r"\[SSL: ([A-Z_]+)\]", text)
    return f"TLS error {m.group(1)}" if m else _describe(exc)
