"""The one retry policy of every relay backend: back-off, ``max retries``, lost answers.

Why one place: every backend used to carry its own loop, with its own delays and its
own idea of which calls may be sent twice. Here a backend only says *what* failed in a
way that may pass (it raises :class:`~escale.errors.TransientRelayError`, with
``retry_after`` when the server asked for a pause) and, for a call that is not
idempotent, *how to tell whether a failed try acted anyway* (its answer lost on the
way back). Everything else — counting, delays, logging, the final message — is here.

How a backend uses it::

    from . import retry

    class MyRelay(Relay):
        options = (MAX_RETRIES, ...)      # from escale/relay/options.py, shared by every backend

        def __init__(self, address, *, max_retries=None, **_):
            self.retry = retry.RetryPolicy.from_option(max_retries)   # ConfigError on bad input

        def delete(self, name):
            # idempotent: just retried
            retry.call(lambda attempt: self._delete_once(name), policy=self.retry,
                       what=f"delete {name} on {self.address}")

        def _create(self, tmp, name, digest):
            # not idempotent: before a retry, and when a retry is refused with ObjectExists,
            # ask whether an earlier try did it (the name holds exactly our bytes)
            r = retry.call(lambda attempt: self._rename_noreplace(tmp, name), policy=self.retry,
                           what=f"create {name}", landed=lambda: self._holds(name, digest),
                           recheck=(ObjectExists,))
            if r is retry.LANDED: ...   # an earlier try did the work; its answer was lost

Rules the wrapper enforces:

- Only :class:`TransientRelayError` is retried (a backend maps timeouts, resets, 5xx,
  throttling, stale handles to it). Everything else — ObjectExists, not found, auth,
  quota, permanent errors, the caller's own SourceError — is raised at once.
- Delays grow exponentially (``base`` × 2^attempt, capped) with "equal jitter" (half
  fixed, half random), so clients that failed together do not retry together; a
  server's ``Retry-After`` is honoured (up to ``retry_after_max``).
- ``max retries`` (default 5) extra attempts, then the last transient error is reported
  as a TransientRelayError saying how many attempts were made; the next cycle tries again.
- ``landed()`` is asked after a transient failure, before resending: if the failed try
  did act, nothing is sent again and :data:`LANDED` is returned (a resent MOVE whose
  source is gone makes ``rclone serve webdav`` delete its destination). It is asked
  too when a *retried* call fails with an error in ``recheck``: a create-if-absent
  whose answer was lost finds "its" name taken (ObjectExists), a delete or move finds
  its object gone (RelayObjectMissing). The outcome check decides; the error is
  reported only when the work is not ours.
- ``replayable()`` False (a body already partly sent that cannot be read again) stops
  the retries with the transient error: the next cycle sends it again.
"""
from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, TypeVar

from ..errors import ConfigError, RelayObjectMissing, TransientRelayError
from .options import MAX_RETRIES, parse_retries

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_RETRIES = 5
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
RETRY_AFTER_MAX = 120.0


class _Landed:
    """The result of a call whose failed try acted anyway (see the module doc)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "LANDED"

    def __bool__(self) -> bool:
        return True


#: returned by :func:`call` when ``landed()`` said an earlier, unanswered try did the work
LANDED = _Landed()


#: the option every backend declares for its retries (one declaration: escale/relay/options.py)
MAX_RETRIES_OPTION = MAX_RETRIES


@dataclass
class RetryPolicy:
    """How often and how long to wait; ``sleep`` is what waits (tests may shorten it)."""

    max_retries: int = DEFAULT_RETRIES
    base: float = BACKOFF_BASE
    cap: float = BACKOFF_MAX
    retry_after_max: float = RETRY_AFTER_MAX
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    @classmethod
    def from_option(cls, value, default: int = DEFAULT_RETRIES, **kw) -> "RetryPolicy":
        """The policy for a ``max retries`` value as the configuration or a caller gives it
        (None or '' = the default); a bad value is a ConfigError naming the option."""
        if value in (None, ""):
            return cls(max_retries=default, **kw)
        if isinstance(value, bool):
            value = str(value)
        try:
            n = value if isinstance(value, int) and value >= 0 else parse_retries(str(value))
        except ValueError as exc:
            raise ConfigError(str(exc), option="max retries") from None
        return cls(max_retries=n, **kw)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        d = min(self.cap, self.base * 2 ** attempt)
        d = d / 2 + random.uniform(0, d / 2)
        if retry_after is not None and retry_after > 0:
            d = max(d, min(retry_after, self.retry_after_max))
        return d


def call(fn: Callable[[int], T], *, policy: RetryPolicy, what: str,
         landed: Callable[[], bool] | None = None, recheck: tuple[type[BaseException], ...] = (),
         replayable: Callable[[], bool] | None = None) -> T:
    """``fn(attempt)``, retried on TransientRelayError under ``policy`` (see the module doc).

    ``what`` names the call in logs and in the final error ("PUT b/x on https://…").
    Returns what ``fn`` returns, or :data:`LANDED` when ``landed()`` found that a failed
    try did the work.
    """
    attempt = 0
    while True:
        try:
            return fn(attempt)
        except TransientRelayError as exc:
            failure = exc
        except recheck as exc:
            # a retried call refused because an earlier, unanswered try already acted?
            if attempt > 0 and landed is not None and landed():
                log.info("%s: %s, but an earlier try whose answer was lost did it", what, _reason(exc))
                return LANDED  # type: ignore[return-value]
            raise
        reason = _reason(failure)
        if landed is not None and landed():
            log.info("%s: %s, but the server did it; not sending it again", what, reason)
            return LANDED  # type: ignore[return-value]
        if attempt >= policy.max_retries:
            raise TransientRelayError(f"{what} failed after {attempt + 1} attempt(s): {reason}") from failure
        if replayable is not None and not replayable():
            raise TransientRelayError(f"{what} failed: {reason} (the data could not be sent again; the next "
                                      "cycle retries)") from failure
        wait = policy.delay(attempt, getattr(failure, "retry_after", None))
        attempt += 1
        log.warning("%s: %s; retry %d/%d in %.1f s", what, reason, attempt, policy.max_retries, wait)
        policy.sleep(wait)


def transient(message: str, retry_after: float | None = None, reason: str | None = None) -> TransientRelayError:
    """A TransientRelayError carrying the pause the server asked for (seconds) and a
    short ``reason`` ("HTTP 503 Service Unavailable") for the retry log and final message."""
    exc = TransientRelayError(message)
    exc.retry_after = retry_after  # type: ignore[attr-defined]
    exc.reason = reason  # type: ignore[attr-defined]
    return exc


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc)


def sha256_of(stream: BinaryIO, block: int = 1 << 20) -> tuple[str, int]:
    """(hex SHA-256, byte count) of a stream read to its end."""
    h, n = hashlib.sha256(), 0
    while data := stream.read(block):
        h.update(data)
        n += len(data)
    return h.hexdigest(), n


def holds(get: Callable[[str], BinaryIO], name: str, digest: str, size: int | None = None) -> bool:
    """Whether object ``name`` holds exactly the bytes of SHA-256 ``digest`` (the outcome
    check of a create whose answer was lost). Identical bytes from someone else cannot
    be told from ours, and are harmless: the object is what we meant to write."""
    try:
        with get(name) as f:
            got, n = sha256_of(f)
    except RelayObjectMissing:
        return False
    return got == digest and (size is None or n == size)
