"""An S3-compatible object store used as the relay (``s3://bucket/prefix``).

Works with AWS S3 and S3-compatible servers (SeaweedFS, MinIO, Ceph, Garage,
Backblaze, Wasabi, moto…) through boto3. Every relay object is the S3 object
``prefix/name`` in ``bucket``.

Options (declared in :attr:`S3.options`, registered by the configuration, which passes
them parsed as keywords; Python callers may pass text or values):

``endpoint``       URL of a non-AWS server, e.g. ``http://127.0.0.1:8333``; path-style
                   addressing is then used (``http://host/bucket/key``), which every
                   S3-compatible server understands.
``region``         region name (default: the AWS chain's, or ``us-east-1`` with an endpoint).
``profile``        a profile of ``~/.aws/config`` / ``~/.aws/credentials``.
``user``/``password``  the access key id and secret key (config spelling: ``access key``,
                   ``secret key``); when absent, boto3's standard chain is used
                   (environment, shared files, instance role). Secrets are never logged.
``create_bucket``  create the bucket when it does not exist (default: no, an error).
``part_size``      size of multipart upload parts (default 8 MiB, 5 MiB … 5 GiB).
``verify_ssl``     no, yes or a CA bundle file; ``max_retries``: retries of a failed request.

How the relay interface maps onto S3:

- **list**: paginated ListObjectsV2 under the prefix; names are relative to it.
- **get**: a streamed GetObject read in blocks; a connection lost mid-body is resumed
  with a ranged GET pinned to the object's ETag (``If-Match``), so a retry never splices
  two versions. An object of 16 MiB or more is read with four ranged GETs at once
  (:mod:`escale.relay.ranged`), each pinned the same way (and its answer's ETag compared,
  for servers that ignore ``If-Match``). **get_range**: one ranged GetObject.
- **put**: an object up to one part is a single PutObject; a larger one is a multipart
  upload read from the stream one part at a time (at most a few parts in memory, see
  :func:`_concurrency`), aborted if anything fails. A put is atomic: a reader sees the
  old object or the complete new one.
- **create_only** uses ``If-None-Match: *`` (PutObject or CompleteMultipartUpload). Some
  S3-compatible servers ignore that header silently (rclone serve s3, older MinIO/Ceph…),
  so the first create-only put of a relay probes it: it writes a probe key twice with
  the header and expects the second write to fail with 412 (or 409). Where the header is
  not honoured, create-only falls back to *HEAD (present: ObjectExists), PUT, wait
  ``SETTLE`` seconds, HEAD again and compare the ETag with the one our PUT returned*
  (someone else's: ObjectExists). Of two clients racing, the one whose object was
  replaced learns it. The window left: both succeed, and the second one's object
  stands, only if the second client's HEAD came before the first one's PUT while its PUT
  came after the first one's read-back — its HEAD-to-PUT gap would have to exceed the
  first one's PUT-to-read-back gap (one second or more). escale uses create-only only for
  the repository header, written once by the first client to connect.
- **delete**: DeleteObject; a missing object is fine.
- **abort_incomplete(prefix)**: lists the multipart uploads under the prefix and aborts
  them (the uploads a killed pusher left behind; they are invisible to listings but
  cost storage).
- **usage**: S3 does not report space; unknown.

Listings carry a modification time with one-second resolution, while escale caches
small objects by ``(size, mtime)``: so that a same-size rewrite within one second is
still seen, the reported ``mtime`` is the LastModified second plus a fraction derived
from the ETag (below one second, identical in ``list`` and ``stat``).

Retries: botocore's own retries are **off** (``total_max_attempts = 1``); every S3 request
goes through escale's shared wrapper (:mod:`escale.relay.retry`) instead, so that
``max retries`` means the same on every backend and never multiplies (botocore's retries
inside escale's would give up to (n+1)² attempts), and so that the outcome of a
non-idempotent request whose answer was lost is checked by the code that knows what it
sent. Transient (retried): throttling (503 SlowDown, 429, Throttling…), 500/502/503/504,
408/RequestTimeout, connection errors, resets and read timeouts (not TLS errors).
Default ``max retries`` is 9 here (10 attempts, as botocore's standard mode had), with
the wrapper's exponential back-off and jitter (up to 30 s), honouring ``Retry-After``.
Connect timeout 10 s, read timeout 60 s. A retried request whose first attempt did land:
PutObject, UploadPart, DeleteObject and GETs are idempotent; a create-only PutObject
refused with 412 on a retry compares the stored object with its own bytes; a repeated
CompleteMultipartUpload (NoSuchUpload, or 412) is recognised by the object's multipart
ETag; a retried CreateMultipartUpload may leave an empty upload behind, removed by
``abort_incomplete``.

Errors: a missing bucket is a RelayError that offers ``create bucket = yes``; refused
credentials (InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied, any 401/403) are an
AuthenticationError "authentication failed for s3://bucket/prefix"; a full bucket or
exceeded quota (QuotaExceeded, XMinioStorageFull, 507…) is QuotaExceeded; anything else is
a RelayError naming the relay object. Messages never contain the secret key.

Length: one backend's whole contract (listing, conditional and multipart writes,
error mapping, its options) against one API; splitting it would scatter one protocol.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
import time
import uuid
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Iterator, Mapping
from urllib.parse import urlsplit

from ..errors import (AuthenticationError, ConfigError, EscaleError, ObjectExists, QuotaExceeded, RelayError,
                      RelayObjectMissing, SourceError, TransientRelayError)
from ..values import parse_bool, parse_size, parse_verify_ssl
from .base import PROBE_MARK, Capabilities, ObjectInfo, Relay, RelayOption, Usage, check_name
from .ranged import Parallel, ParallelRead
from .options import MAX_RETRIES, VERIFY_SSL
from .split import MAX_OBJECT_SIZE
from . import retry

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * (1 << 30)
MAX_PARTS = 10_000
#: memory budget of the parts a multipart upload keeps in flight (3 parts of the default size: one
#: more request in flight than 2 × 16 MiB, and 8 MiB less memory: a 1 GiB push stays under 100 MiB)
INFLIGHT_BUDGET = 24 * MiB
MAX_CONCURRENCY = 4
READ_BLOCK = MiB
#: retries of one request (the wrapper's; botocore's own are off): 10 attempts in all
DEFAULT_RETRIES = 9
#: throttling and server-side codes that may pass (any 5xx but 501 and 507 is transient too)
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
                   "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
                   "BandwidthLimitExceeded", "RequestTimeout", "RequestTimeoutException", "InternalError",
                   "ServiceUnavailable", "PriorRequestNotComplete", "503", "500", "502", "504", "429", "408"}
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60
#: resumptions of one download after its connection broke mid-body
MAX_RESUMES = 8
#: seconds between the PUT and the read-back of a create-only put without server support
SETTLE = 1.0

AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
              "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidSecurity", "AllAccessDisabled",
              "AccountProblem", "InvalidClientTokenId", "UnrecognizedClientException", "403", "401"}
QUOTA_CODES = {"QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "StorageFull",
               "InsufficientStorage", "storage_cap_exceeded", "TooManyBuckets",
               "XAmzQuotaExceeded", "UserQuotaExceeded", "BucketQuotaExceeded"}
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
PRECONDITION_CODES = {"PreconditionFailed", "412"}
CONFLICT_CODES = {"ConditionalRequestConflict", "OperationAborted", "409"}

# botocore's DEBUG log shows request headers; keep it quiet unless asked for explicitly
for _name in ("botocore", "boto3", "s3transfer"):
    _lg = logging.getLogger(_name)
    if _lg.level == logging.NOTSET:
        _lg.setLevel(logging.WARNING)


#: a bucket name as S3-compatible servers accept it (AWS is stricter: 3 to 63 characters)
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{2,254}")


def parse_endpoint(text: str) -> str:
    """``endpoint``: an http(s) URL without query or credentials, no trailing '/'."""
    t = text.strip()
    try:
        parts = urlsplit(t)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL, e.g. http://127.0.0.1:8333")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("an endpoint is scheme://host[:port][/path], without query or credentials")
    return t.rstrip("/")


def _parse_word(what: str):
    def parse(text: str) -> str:
        t = text.strip()
        if not re.fullmatch(r"[A-Za-z0-9._-]+", t):
            raise ValueError(f"a {what} is a single word of letters, digits, '.', '_' or '-'")
        return t
    return parse


def parse_part_size(text: str) -> int:
    """``part size``: a size within S3's limits for a multipart part."""
    n = parse_size(text)
    if not MIN_PART_SIZE <= n <= MAX_PART_SIZE:
        raise ValueError("a part size is between 5MiB and 5GiB (S3's limits)")
    return n


def _as_bool(value, option: str) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    try:
        return parse_bool(str(value))
    except ValueError as exc:
        raise ConfigError(str(exc), option=option) from None


def _as_part_size(value) -> int:
    if value in (None, ""):
        return DEFAULT_PART_SIZE
    try:
        return parse_part_size(f"{value}B" if isinstance(value, int) else str(value))
    except ValueError as exc:
        raise ConfigError(str(exc), option="part size") from None


def _concurrency(part_size: int) -> int:
    """Parts uploaded at once: up to 4, within a 32 MiB budget (at least one)."""
    return max(1, min(MAX_CONCURRENCY, INFLIGHT_BUDGET // part_size))


def _read_full(stream: BinaryIO, n: int) -> bytearray:
    """Exactly ``n`` bytes, or fewer only at the end of the stream, read into one buffer.

    Filling a single preallocated buffer (``readinto`` where the stream has it) keeps one
    part in memory once, not once in pieces and again joined.
    """
    buf = bytearray(n)
    got = 0
    with memoryview(buf) as view:
        readinto = getattr(stream, "readinto", None)
        while got < n:
            if readinto is not None:
                k = readinto(view[got:])
            else:
                chunk = stream.read(n - got)
                k = len(chunk) if chunk else 0
                view[got:got + k] = chunk or b""
            if not k:
                break
            got += k
    if got < n:
        del buf[got:]
    return buf


def _read_source(stream: BinaryIO, n: int, name: str) -> bytearray:
    """Up to ``n`` bytes of the data to send; a local read error is a SourceError (a file
    error, retried next cycle), never a relay failure."""
    try:
        return _read_full(stream, n)
    except OSError as exc:
        raise SourceError(f"cannot read the data to send as relay object {name}: "
                          f"{exc.strerror or exc}") from exc


def _etag(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"')


def _mtime(last_modified, etag: str | None) -> float:
    """LastModified's whole second plus an ETag-derived fraction (see the module doc)."""
    seconds = int(last_modified.timestamp()) if last_modified is not None else 0
    if not etag:
        return float(seconds)
    return seconds + (zlib.crc32(etag.encode()) % 1_000_000) / 1_000_000


def _code(exc) -> tuple[str, int | None, str]:
    """(error code, HTTP status, message) of a botocore ClientError."""
    resp = getattr(exc, "response", None) or {}
    err = resp.get("Error") or {}
    status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return str(err.get("Code") or status or ""), status, str(err.get("Message") or "")


def _multipart_etag(parts: list[dict]) -> str:
    """The ETag S3 gives a completed multipart object (md5 of the part md5s, '-N')."""
    digests = b"".join(bytes.fromhex(_etag(p["ETag"]) or "") for p in parts)
    return f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"


class S3(Relay):
    schemes = ("s3",)
    options = (
        RelayOption("endpoint", ("endpoint", "endpoint url", "s3 endpoint"), parse_endpoint,
                    doc="http(s)://host[:port] of an S3-compatible server (SeaweedFS, MinIO, Ceph, Garage…); "
                        "path-style addressing is then used; default: AWS S3"),
        RelayOption("region", ("region", "region name", "aws region"), _parse_word("region"),
                    doc="region name, e.g. eu-west-3; default: the AWS chain's, else us-east-1"),
        RelayOption("profile", ("profile", "aws profile"), _parse_word("profile name"),
                    doc="a profile of ~/.aws/config and ~/.aws/credentials"),
        RelayOption("create_bucket", ("create bucket",), parse_bool,
                    doc="create the bucket when it does not exist (default no: a missing bucket is an error)"),
        RelayOption("part_size", ("part size", "multipart part size"), parse_part_size,
                    doc="size of the parts of a multipart upload, 5MiB to 5GiB (default 8MiB)"),
        VERIFY_SSL,
        MAX_RETRIES,
        MAX_OBJECT_SIZE,
    )

    @classmethod
    def check_config(cls, address: str, *, user: str | None, password: str | None,
                     options: Mapping[str, object]) -> None:
        """An s3 address names a bucket and has no port, and credentials come in pairs."""
        rest = address.strip().split("://", 1)[-1]
        bucket, _, port = rest.split("/", 1)[0].partition(":")
        if not bucket:
            raise ConfigError(f"relay address '{address.strip()}' has no bucket; write s3://bucket or "
                              "s3://bucket/prefix", option="relay address")
        if not BUCKET_RE.fullmatch(bucket):
            raise ConfigError(f"'{bucket}' is not a bucket name (3 to 255 lowercase letters, digits, '.', '-' "
                              "or '_')", option="relay address")
        if port:
            raise ConfigError("an s3 address is s3://bucket/prefix, without a port; put the server's host and "
                              "port in 'endpoint', e.g. endpoint = http://host:8333", option="relay address")
        if options.get("port") is not None:
            raise ConfigError("an s3 relay has no port; put it in 'endpoint', e.g. http://host:8333",
                              option="port")
        if (user is None) != (password is None):
            missing = "secret key" if password is None else "access key"
            raise ConfigError(f"'{missing}' is missing: give both 'access key' and 'secret key', or neither "
                              "to use the AWS credential chain (environment, ~/.aws, instance role)",
                              option=missing)

    def __init__(self, address: str, user: str | None = None, password: str | None = None, *,
                 endpoint: str | None = None, region: str | None = None, profile: str | None = None,
                 create_bucket=False, part_size=None, verify_ssl=None, max_retries=None,
                 access_key: str | None = None, secret_key: str | None = None, **_ignored):
        super().__init__(address)
        rest = address[len("s3://"):] if address.lower().startswith("s3://") else address
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"relay address '{address}' has no bucket; write s3://bucket/prefix",
                              option="relay address")
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = prefix + "/" if prefix else ""
        self.endpoint = (endpoint or "").strip() or None
        self.region = (region or "").strip() or None
        self.profile = (profile or "").strip() or None
        self.access_key = access_key or user or None
        self.secret_key = secret_key or password or None
        if (self.access_key is None) != (self.secret_key is None):
            raise ConfigError("give both 'access key' and 'secret key', or neither to use the AWS "
                              "credential chain", option="access key" if self.access_key is None else "secret key")
        self.create_bucket = _as_bool(create_bucket, "create bucket")
        self.part_size = _as_part_size(part_size)
        try:  # the one parser WebDAV uses too: strict booleans, or an existing CA bundle
            self.verify = None if verify_ssl in (None, "") else parse_verify_ssl(verify_ssl)
        except ValueError as exc:
            raise ConfigError(str(exc), option="verify ssl") from None
        self.retry = retry.RetryPolicy.from_option(max_retries, default=DEFAULT_RETRIES)
        #: large objects are read with several ranged GETs at once (escale.relay.ranged)
        self.parallel = Parallel()
        self._client = None
        self._conditional: bool | None = None  # does the server honour If-None-Match: *?
        self._client_lock = threading.Lock()
        self._probe_lock = threading.Lock()

    # -- connection ------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return self.endpoint or "AWS S3"

    def _make_client(self):
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ProfileNotFound
        except ImportError as exc:  # boto3 is a dependency; this only happens in a broken install
            raise ConfigError(f"the s3 relay needs boto3 ({exc}); pip install boto3",
                              option="relay address") from None
        try:
            session = boto3.session.Session(profile_name=self.profile, aws_access_key_id=self.access_key,
                                            aws_secret_access_key=self.secret_key)
        except ProfileNotFound:
            raise ConfigError(f"AWS profile '{self.profile}' not found (~/.aws/config, ~/.aws/credentials)",
                              option="profile") from None
        except BotoCoreError as exc:
            raise ConfigError(f"cannot set up AWS credentials: {exc}", option="profile") from None
        region = self.region or session.region_name or ("us-east-1" if self.endpoint else None)
        cfg = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if self.endpoint else "auto"},
            retries={"mode": "standard", "total_max_attempts": 1},  # escale's wrapper retries
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            max_pool_connections=MAX_CONCURRENCY + 4,
            tcp_keepalive=True,
            # CRC trailers are not understood by every S3-compatible server; escale checks
            # every file's digest end to end anyway
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        kwargs = {"config": cfg}
        if self.endpoint:
            kwargs["endpoint_url"] = self.endpoint
        if self.verify is not None:
            kwargs["verify"] = self.verify
        try:
            return session.client("s3", **kwargs)
        except (BotoCoreError, ValueError) as exc:
            raise ConfigError(f"cannot use S3 endpoint '{self.endpoint}': {exc}", option="endpoint") from None

    @property
    def client(self):
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def open(self) -> None:
        try:
            self._call(f"bucket '{self.bucket}'",
                       lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1))
        except Exception as exc:  # noqa: BLE001 - mapped below
            err = self._error(exc, f"bucket '{self.bucket}'")
            if not (self.create_bucket and self._is_missing_bucket(exc)):
                raise err from None
            self._create_bucket()
            return
        self._warn_if_versioned()

    def _warn_if_versioned(self) -> None:
        """A versioned bucket keeps every deleted or replaced relay object as a noncurrent
        version: it still costs storage and counts against the provider's quota, while
        escale's own quota (from listings) sees it gone. Say so once, at connection."""
        try:
            status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
        except Exception:  # noqa: BLE001 - not every server answers it; nothing to warn about then
            log.debug("%s: cannot read the versioning of bucket %s", self.where, self.bucket)
            return
        if status in ("Enabled", "Suspended"):
            log.warning("bucket '%s' on %s has versioning %s: objects escale deletes stay as noncurrent "
                        "versions and keep counting against the provider's quota; add a lifecycle rule "
                        "that expires noncurrent versions (see docs/relays.md)", self.bucket, self.where,
                        status.lower())

    def _is_missing_bucket(self, exc) -> bool:
        return _code(exc)[0] == "NoSuchBucket"

    def _create_bucket(self) -> None:
        kwargs = {"Bucket": self.bucket}
        region = self.client.meta.region_name
        if region and region != "us-east-1" and not self.endpoint:
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._call(f"bucket '{self.bucket}'", lambda: self.client.create_bucket(**kwargs))
            log.info("created bucket '%s' on %s", self.bucket, self.where)
        except Exception as exc:  # noqa: BLE001
            code = _code(exc)[0]
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error(exc, f"bucket '{self.bucket}'", creating=True) from None

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real error
                log.debug("error while closing the S3 client", exc_info=True)

    # -- errors ----------------------------------------------------------------------------
    def _error(self, exc: BaseException, what: str, *, creating: bool = False) -> EscaleError:
        """The escale error for a boto3/botocore failure about ``what``."""
        from botocore.exceptions import (ClientError, ConnectionError as BotoConnectionError, NoCredentialsError,
                                         PartialCredentialsError)

        if isinstance(exc, EscaleError):
            return exc
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return AuthenticationError(f"authentication failed for {self.address}: no usable credentials; "
                                       "set 'access key' and 'secret key', or configure the AWS credential chain")
        if isinstance(exc, ClientError):
            code, status, message = _code(exc)
            detail = f"{code}{': ' + message if message and message != code else ''}"
            if code == "EntityTooLarge" or status == 413:  # one object too large: no amount of waiting helps
                return RelayError(f"{what} on {self.address}: the storage takes no object this large ({detail}); "
                                  "set 'max object size' below its limit (docs/relays.md)")
            if code in QUOTA_CODES or status == 507:
                return QuotaExceeded(f"{what} on {self.address}: the storage refused it for lack of room ({detail})")
            if code == "NoSuchBucket":
                if creating:
                    return RelayError(f"cannot create bucket '{self.bucket}' on {self.where}: {detail}")
                return RelayError(f"bucket '{self.bucket}' does not exist on {self.where}; create it, or set "
                                  "'create bucket = yes' to let escale create it")
            if code in AUTH_CODES or status in (401, 403):
                return AuthenticationError(f"authentication failed for {self.address} ({self.where}): {detail}; "
                                           "check 'access key' and 'secret key' (or the AWS profile)")
            return RelayError(f"{what} on {self.address}: S3 error {detail}")
        if isinstance(exc, BotoConnectionError):
            return RelayError(f"cannot reach {self.where} for {self.address}: {exc}")
        if isinstance(exc, TransientRelayError):
            return exc
        return RelayError(f"{what} on {self.address}: {type(exc).__name__}: {exc}")

    def _transient(self, exc: BaseException, what: str) -> TransientRelayError | None:
        """The TransientRelayError for a failure that may pass, else None (see the module doc)."""
        from botocore.exceptions import (ClientError, ConnectionError as BotoConnectionError, HTTPClientError,
                                         IncompleteReadError, ResponseStreamingError, SSLError)

        if isinstance(exc, SSLError):
            return None
        if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError,
                            ConnectionError, TimeoutError)):
            reason = f"cannot reach {self.where}: {exc}"
            return retry.transient(f"{what} on {self.address}: {reason}", reason=reason)
        if isinstance(exc, ClientError):
            code, status, message = _code(exc)
            if code in QUOTA_CODES or status in (501, 507) or code in ("NotImplemented", "501"):
                return None
            if code in TRANSIENT_CODES or status in (408, 429) or (status is not None and status >= 500):
                headers = ((getattr(exc, "response", None) or {}).get("ResponseMetadata") or {}).get(
                    "HTTPHeaders") or {}
                try:
                    after = float(headers.get("retry-after", "")) if headers.get("retry-after") else None
                except ValueError:
                    after = None
                reason = f"S3 error {code}{': ' + message if message and message != code else ''}"
                return retry.transient(f"{what} on {self.address}: {reason}", after, reason)
        return None

    def _call(self, what: str, fn, *, landed=None, recheck: tuple = ()):
        """``fn()`` (one S3 request) under the shared retry policy. Transient failures are
        retried; any other exception is raised as it is (callers read its code)."""
        def once(_attempt: int):
            try:
                return fn()
            except EscaleError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified, else raised unchanged
                t = self._transient(exc, what)
                if t is None:
                    raise
                raise t from exc

        return retry.call(once, policy=self.retry, what=f"{what} on {self.address}", landed=landed,
                          recheck=recheck)

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    # -- reading ---------------------------------------------------------------------------
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            for page in self._pages(prefix):
                for obj in page.get("Contents", ()):
                    name = obj["Key"][len(self.prefix):]
                    if not name or name.endswith("/") or name.startswith(PROBE_MARK):
                        continue
                    try:
                        check_name(name)
                    except EscaleError:
                        log.debug("ignoring S3 key %r: not a relay object name", obj["Key"])
                        continue
                    etag = _etag(obj.get("ETag"))
                    yield ObjectInfo(name, int(obj.get("Size", 0)), _mtime(obj.get("LastModified"), etag), etag)
        except EscaleError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, f"listing '{self.prefix + prefix}'") from None

    def _pages(self, prefix: str) -> Iterator[dict]:
        """ListObjectsV2 pages, each request retried on its own (a listing never restarts)."""
        kwargs = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:
            page = self._call(f"listing '{self.prefix + prefix}'", lambda: self.client.list_objects_v2(**kwargs))
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    def stat(self, name: str) -> ObjectInfo | None:
        key = self._key(name)
        try:
            r = self._call(f"relay object {name}", lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        except Exception as exc:  # noqa: BLE001
            if _code(exc)[0] in MISSING_CODES:
                return None
            raise self._error(exc, f"relay object {name}") from None
        etag = _etag(r.get("ETag"))
        return ObjectInfo(name, int(r.get("ContentLength", 0)), _mtime(r.get("LastModified"), etag), etag)

    def get(self, name: str) -> BinaryIO:
        key = self._key(name)
        try:
            r = self._call(f"relay object {name}", lambda: self.client.get_object(Bucket=self.bucket, Key=key))
        except Exception as exc:  # noqa: BLE001
            if _code(exc)[0] in MISSING_CODES:
                raise RelayObjectMissing(f"relay object {name} is missing") from None
            raise self._error(exc, f"relay object {name}") from None
        body = _Download(self, name, key, r)
        etag = _etag(r.get("ETag"))
        if self.parallel.applies(body.length, etag):  # a large object: more ranged GETs at once
            return ParallelRead(self, name, body.length, etag, body, self.parallel)
        return body

    def get_range(self, name: str, start: int, length: int, *, version: str | None = None) -> BinaryIO:
        if start < 0 or length < 0:
            raise ValueError("a range starts at 0 or later and has a length of 0 or more")
        key = self._key(name)
        kwargs = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={start}-{start + max(length, 1) - 1}"}
        if version is not None:
            kwargs["IfMatch"] = f'"{version}"'
        try:
            r = self._call(f"relay object {name}", lambda: self.client.get_object(**kwargs))
        except Exception as exc:  # noqa: BLE001
            code, status, _msg = _code(exc)
            if code in MISSING_CODES:
                raise RelayObjectMissing(f"relay object {name} is missing") from None
            if code in PRECONDITION_CODES:
                raise RelayError(f"relay object {name} changed while being read") from None
            if code == "InvalidRange" or status == 416:  # past the end (the object exists)
                return io.BytesIO(b"")
            raise self._error(exc, f"relay object {name}") from None
        if version is not None and _etag(r.get("ETag")) not in (None, version):  # If-Match ignored (rclone)
            r["Body"].close()
            raise RelayError(f"relay object {name} changed while being read")
        if length == 0:
            r["Body"].close()
            return io.BytesIO(b"")
        content_range = r.get("ContentRange") or ""
        if not content_range.startswith(f"bytes {start}-"):  # Range ignored: the whole object came
            body = _Download(self, name, key, r)
            return _skip(body, start, length)
        return _Download(self, name, key, r, start=start)

    # -- writing ---------------------------------------------------------------------------
    def put(self, name: str, stream: BinaryIO, *, create_only: bool = False, size: int | None = None) -> int:
        key = self._key(name)
        head = [_read_source(stream, self.part_size, name)]  # in a list so that no frame keeps it alive
        conditional = self._supports_conditional() if create_only else False
        if create_only and not conditional and self.stat(name) is not None:
            raise ObjectExists(f"relay object {name} already exists")
        if len(head[0]) < self.part_size:
            data = head.pop()
            size, etag = len(data), self._put_small(name, key, data, create_only and conditional)
        else:
            size, etag = self._put_multipart(name, key, head, stream, create_only and conditional)
        if create_only and not conditional:
            # no server-side check: read back after a while; the name is whoever's wrote last
            time.sleep(SETTLE)
            after = self.stat(name)
            if after is None or (etag is not None and after.etag != etag):
                raise ObjectExists(f"relay object {name} was created by another client at the same time")
        return size

    def _put_small(self, name: str, key: str, data: bytes, if_absent: bool) -> str | None:
        kwargs = {"Bucket": self.bucket, "Key": key, "Body": data}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"

        def once() -> str | None:
            try:
                return _etag(self.client.put_object(**kwargs).get("ETag"))
            except Exception as exc:  # noqa: BLE001
                code = _code(exc)[0]
                if if_absent and code in PRECONDITION_CODES:
                    raise ObjectExists(f"relay object {name} already exists") from None
                if if_absent and code in CONFLICT_CODES:  # a concurrent conditional write is in flight
                    raise retry.transient(f"relay object {name} is being created by another client",
                                          reason=f"S3 error {code} (a concurrent create)") from None
                raise

        try:
            # a create whose answer was lost, retried, finds the name taken: by our own bytes?
            r = self._call(f"relay object {name}", once, recheck=(ObjectExists,),
                           landed=(lambda: self._holds(name, data)) if if_absent else None)
        except EscaleError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, f"relay object {name}") from None
        if r is retry.LANDED:
            log.info("relay object %s: an earlier try of this create stored it", name)
            return _etag(hashlib.md5(data).hexdigest())
        return r

    def _put_multipart(self, name: str, key: str, head: list[bytes], stream: BinaryIO,
                       if_absent: bool) -> tuple[int, str]:
        what = f"relay object {name}"
        try:
            upload_id = self._call(what, lambda: self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key))["UploadId"]
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, what) from None
        parts: list[dict] = []
        total = 0

        def send(number: int, data: bytes) -> dict:
            r = self._call(f"{what} part {number}", lambda: self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data))
            return {"PartNumber": number, "ETag": r["ETag"]}

        try:
            width = _concurrency(self.part_size)
            with ThreadPoolExecutor(width, thread_name_prefix="s3-part") as pool:
                pending: deque = deque()
                number, data = 1, head.pop()
                while data:
                    if number > MAX_PARTS:
                        raise RelayError(f"{what} is larger than {MAX_PARTS} parts of {self.part_size} bytes; "
                                         "raise 'part size'")
                    pending.append(pool.submit(send, number, data))
                    total += len(data)
                    number += 1
                    data = b""
                    while len(pending) >= width:
                        parts.append(pending.popleft().result())
                    data = _read_source(stream, self.part_size, name)
                while pending:
                    parts.append(pending.popleft().result())
            expected = _multipart_etag(parts)
            kwargs = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "MultipartUpload": {"Parts": parts}}
            if if_absent:
                kwargs["IfNoneMatch"] = "*"
            def complete() -> str | None:
                try:
                    return _etag(self.client.complete_multipart_upload(**kwargs).get("ETag")) or expected
                except Exception as exc:  # noqa: BLE001
                    code = _code(exc)[0]
                    if if_absent and code in PRECONDITION_CODES | CONFLICT_CODES:
                        raise ObjectExists(f"{what} already exists") from None
                    if code == "NoSuchUpload":
                        raise RelayObjectMissing(f"{what}: the multipart upload is gone") from None
                    raise

            def landed() -> bool:  # a completion whose answer was lost: the object is ours
                info = self.stat(name)
                if info is None or info.size != total:
                    return False
                if info.etag == expected:
                    return True
                # a server whose multipart ETag is not S3's (rclone serve s3): read it back and
                # compare each part's MD5 with the ETag the server gave that part
                return self._holds_parts(name, parts)

            # a first try's lost answer shows as 412 (create) or NoSuchUpload on the retry
            etag = self._call(what, complete, landed=landed, recheck=(ObjectExists, RelayObjectMissing))
            return total, (expected if etag is retry.LANDED else etag)
        except BaseException as exc:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - abort_incomplete() cleans it up later
                log.warning("could not abort the multipart upload of %s; it is removed at the next start", what)
            if isinstance(exc, Exception):
                raise self._error(exc, what) from None
            raise

    def _holds_parts(self, name: str, parts: list[dict]) -> bool:
        """Whether object ``name`` is the concatenation of ``parts`` (each part's MD5 is its ETag)."""
        try:
            with self.get(name) as f:
                for p in parts:
                    h, left = hashlib.md5(), self.part_size
                    while left > 0 and (block := f.read(min(READ_BLOCK, left))):
                        h.update(block)
                        left -= len(block)
                    if h.hexdigest() != _etag(p["ETag"]):
                        return False
                return not f.read(1)
        except RelayObjectMissing:
            return False

    def _holds(self, name: str, data: bytes) -> bool:
        """Whether the object ``name`` has exactly the bytes ``data`` (the outcome check of a
        create whose answer may have been lost). Identical bytes written by someone else
        are indistinguishable from ours, and harmless: the object is what we wanted."""
        info = self.stat(name)
        if info is None or info.size != len(data):
            return False
        if info.etag == hashlib.md5(data).hexdigest():
            return True
        with self.get(name) as f:  # an ETag that is not the MD5 (SSE-KMS, some servers)
            return f.read() == bytes(data)

    def _supports_conditional(self) -> bool:
        """Whether the server honours ``If-None-Match: *`` (probed once per relay)."""
        with self._probe_lock:
            if self._conditional is None:
                self._conditional = self._probe_conditional()
            return self._conditional

    def _probe_conditional(self) -> bool:
        key = f"{self.prefix}{PROBE_MARK}{uuid.uuid4().hex}"
        try:
            try:
                self._call("probe of conditional writes", lambda: self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=b"1", IfNoneMatch="*"))
            except Exception as exc:  # noqa: BLE001
                code, status, _ = _code(exc)
                if code in PRECONDITION_CODES:
                    supported = True  # a retry after our first write landed: the header was checked
                elif code in ("NotImplemented", "501", "InvalidArgument", "400") or status in (400, 501):
                    supported = False
                else:
                    raise self._error(exc, "probe of conditional writes") from None
            else:
                try:
                    self._call("probe of conditional writes", lambda: self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=b"2", IfNoneMatch="*"))
                    supported = False  # the header was silently ignored
                except Exception as exc:  # noqa: BLE001
                    code = _code(exc)[0]
                    if code in PRECONDITION_CODES | CONFLICT_CODES:
                        supported = True
                    else:
                        raise self._error(exc, "probe of conditional writes") from None
        finally:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except Exception:  # noqa: BLE001 - hidden from listings anyway
                log.debug("could not delete probe object %s", key)
        if supported:
            log.debug("%s honours If-None-Match: create-if-absent is atomic", self.where)
        else:
            log.warning("%s ignores conditional writes (If-None-Match): creating the repository header "
                        "falls back to check-then-write, which two clients starting at the same moment "
                        "could race", self.where)
        return supported

    def delete(self, name: str) -> None:
        try:
            key = self._key(name)
            self._call(f"relay object {name}", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))
        except Exception as exc:  # noqa: BLE001
            if _code(exc)[0] in MISSING_CODES:
                return
            raise self._error(exc, f"relay object {name}") from None

    def abort_incomplete(self, prefix: str) -> int:
        removed = 0
        try:
            for page in self._upload_pages(prefix):
                for up in page.get("Uploads", ()):
                    if not up["Key"].startswith(self.prefix + prefix):
                        continue
                    try:
                        self._call(f"interrupted upload of '{up['Key']}'", lambda: self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]))
                        removed += 1
                    except Exception as exc:  # noqa: BLE001
                        if _code(exc)[0] != "NoSuchUpload":
                            raise
        except Exception as exc:  # noqa: BLE001
            code = _code(exc)[0]
            if code in ("NotImplemented", "501"):
                log.debug("%s cannot list multipart uploads", self.where)
                return removed
            if code == "NoSuchUpload":  # rclone serve s3, while its bucket never had one: none
                return removed
            raise self._error(exc, f"interrupted uploads under '{self.prefix + prefix}'") from None
        return removed

    def _upload_pages(self, prefix: str) -> Iterator[dict]:
        """ListMultipartUploads pages, each request retried on its own."""
        kwargs = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:
            page = self._call(f"interrupted uploads under '{self.prefix + prefix}'",
                              lambda: self.client.list_multipart_uploads(**kwargs))
            yield page
            if not page.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    def usage(self) -> Usage:
        return Usage()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(atomic_create=self._conditional is not False,
                            max_object_size=self.part_size * MAX_PARTS, ranged_reads=True)


def _skip(stream: BinaryIO, start: int, length: int) -> BinaryIO:
    """``length`` bytes of ``stream`` from ``start`` (a server that ignored a Range header)."""
    from .base import _Window

    left = start
    try:
        while left > 0 and (n := len(stream.read(min(left, READ_BLOCK)))):
            left -= n
    except BaseException:
        stream.close()
        raise
    return _Window(stream, length)


class _Download(io.RawIOBase):
    """A GetObject body read in blocks; resumes with a ranged GET if the connection breaks."""

    def __init__(self, relay: S3, name: str, key: str, response: dict, start: int = 0):
        super().__init__()
        self.relay, self.name, self.key = relay, name, key
        self.body = response["Body"]
        self.start = start  # where this body begins in the object (a ranged GET)
        self.length = int(response.get("ContentLength", 0))
        self.etag = response.get("ETag")
        self.pos = 0
        self.resumes = 0

    def readable(self) -> bool:
        return True

    def _resume(self, cause: BaseException) -> None:
        self.resumes += 1
        if self.resumes > MAX_RESUMES:
            raise RelayError(f"reading relay object {self.name} from {self.relay.address} failed "
                             f"{MAX_RESUMES} times: {cause}") from None
        log.debug("resuming %s at byte %d after %r", self.name, self.pos, cause)
        try:
            self.body.close()
        except Exception:  # noqa: BLE001
            pass
        policy = self.relay.retry
        policy.sleep(min(2.0, policy.delay(self.resumes - 1)))
        kwargs = {"Bucket": self.relay.bucket, "Key": self.key,
                  "Range": f"bytes={self.start + self.pos}-{self.start + self.length - 1}"}
        if self.etag:
            kwargs["IfMatch"] = self.etag
        try:
            r = self.relay._call(f"relay object {self.name}", lambda: self.relay.client.get_object(**kwargs))
        except Exception as exc:  # noqa: BLE001
            code = _code(exc)[0]
            if code in MISSING_CODES:
                raise RelayObjectMissing(f"relay object {self.name} vanished while being read") from None
            if code in PRECONDITION_CODES:
                raise RelayError(f"relay object {self.name} changed while being read") from None
            raise self.relay._error(exc, f"relay object {self.name}") from None
        self.body = r["Body"]

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed relay object")
        if size is None or size < 0:
            chunks = []
            while block := self.read(READ_BLOCK):
                chunks.append(block)
            return b"".join(chunks)
        if size == 0 or self.pos >= self.length:
            return b""
        size = min(size, self.length - self.pos)
        while True:
            try:
                data = self.body.read(size)
                if not data:
                    raise EOFError(f"the connection ended at byte {self.pos} of {self.length}")
            except EscaleError:
                raise
            except Exception as exc:  # noqa: BLE001 - connection reset, timeout, short body
                self._resume(exc)
                continue
            self.pos += len(data)
            return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if not self.closed:
            try:
                self.body.close()
            except Exception:  # noqa: BLE001
                pass
        super().close()
