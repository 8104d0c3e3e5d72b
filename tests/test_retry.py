"""The shared retry wrapper (escale/relay/retry.py): its policy on plain functions, and that
every backend uses it (the same ``max retries`` option and the same policy object).
The backends' lost-answer cases run against real servers in tests/test_relay_contract.py."""
from __future__ import annotations

import pytest

from escale.errors import (AuthenticationError, ConfigError, ObjectExists, RelayObjectMissing,
                           TransientRelayError)
from escale.relay import S3, LocalMount, WebDAV, retry


class Recorder:
    """A policy whose waits are recorded instead of slept."""

    def __init__(self, **kw):
        self.waits: list[float] = []
        self.policy = retry.RetryPolicy(sleep=self.waits.append, **kw)


def flaky(failures: int, result="ok", exc=None):
    """A call that fails ``failures`` times with a transient error, then returns ``result``."""
    calls: list[int] = []

    def fn(attempt: int):
        calls.append(attempt)
        if len(calls) <= failures:
            raise exc or retry.transient("boom", reason="HTTP 503")
        return result

    fn.calls = calls
    return fn


def test_transient_failures_are_retried_with_growing_jittered_delays() -> None:
    rec = Recorder(max_retries=5, base=1.0, cap=8.0)
    fn = flaky(4)
    assert retry.call(fn, policy=rec.policy, what="GET x") == "ok"
    assert fn.calls == [0, 1, 2, 3, 4]
    # equal jitter: between half and all of base * 2^attempt, capped
    for attempt, wait in enumerate(rec.waits):
        full = min(8.0, 2 ** attempt)
        assert full / 2 <= wait <= full


def test_retry_after_is_honoured_and_capped() -> None:
    rec = Recorder(max_retries=2, base=0.01, retry_after_max=7.0)
    fn = flaky(2, exc=retry.transient("slow down", retry_after=5.0))
    retry.call(fn, policy=rec.policy, what="PUT x")
    assert all(w >= 5.0 for w in rec.waits)
    rec = Recorder(max_retries=1, base=0.01, retry_after_max=7.0)
    retry.call(flaky(1, exc=retry.transient("slow down", retry_after=3600)), policy=rec.policy, what="PUT x")
    assert rec.waits and rec.waits[0] <= 7.0


def test_gives_up_after_max_retries_saying_how_many_attempts() -> None:
    rec = Recorder(max_retries=2)
    fn = flaky(10)
    with pytest.raises(TransientRelayError, match=r"GET x failed after 3 attempt\(s\): HTTP 503"):
        retry.call(fn, policy=rec.policy, what="GET x")
    assert fn.calls == [0, 1, 2] and len(rec.waits) == 2
    with pytest.raises(TransientRelayError, match=r"after 1 attempt\(s\)"):
        retry.call(flaky(1), policy=Recorder(max_retries=0).policy, what="GET x")


@pytest.mark.parametrize("exc", [AuthenticationError("no"), ObjectExists("taken"), RelayObjectMissing("gone"),
                                 ValueError("a bug")])
def test_only_transient_errors_are_retried(exc) -> None:
    rec = Recorder()
    fn = flaky(1, exc=exc)
    with pytest.raises(type(exc)):
        retry.call(fn, policy=rec.policy, what="x")
    assert fn.calls == [0] and rec.waits == []


def test_a_call_that_landed_is_not_sent_again() -> None:
    """The first try acted (its answer was lost): nothing is resent, LANDED is returned."""
    rec = Recorder()
    fn = flaky(1)
    assert retry.call(fn, policy=rec.policy, what="MOVE x", landed=lambda: True) is retry.LANDED
    assert fn.calls == [0] and rec.waits == []
    fn = flaky(1)
    assert retry.call(fn, policy=rec.policy, what="MOVE x", landed=lambda: False) == "ok"
    assert fn.calls == [0, 1]


def test_a_retried_create_refused_as_existing_checks_its_outcome() -> None:
    """Try 1 stored the object but its answer was lost; try 2 is refused (exists): the
    object is ours when the outcome check says so, someone else's otherwise."""
    stored: list[bytes] = []

    def create(attempt: int) -> str:
        if stored:
            raise ObjectExists("h/header already exists")
        stored.append(b"mine")
        raise retry.transient("reset after the server acted")

    checks: list[bool] = []

    def ours() -> bool:  # the outcome check: the name holds our bytes
        checks.append(stored == [b"mine"])
        return checks[-1] and len(checks) > 1  # after the lost answer: resend (not known yet); then ours

    out = retry.call(create, policy=Recorder().policy, what="PUT h/header", recheck=(ObjectExists,), landed=ours)
    assert out is retry.LANDED and checks == [True, True]
    # someone else's object: refused on the first try, never rechecked
    with pytest.raises(ObjectExists):
        retry.call(lambda a: (_ for _ in ()).throw(ObjectExists("taken")), policy=Recorder().policy,
                   what="PUT h/header", recheck=(ObjectExists,), landed=lambda: True)


def test_a_retried_create_finding_another_clients_object_is_exists() -> None:
    tries: list[int] = []

    def create(attempt: int) -> None:
        tries.append(attempt)
        if attempt == 0:
            raise retry.transient("timeout; the request never arrived")
        raise ObjectExists("h/header already exists")

    with pytest.raises(ObjectExists):
        retry.call(create, policy=Recorder().policy, what="PUT h/header", recheck=(ObjectExists,),
                   landed=lambda: False)
    assert tries == [0, 1]


def test_a_body_that_cannot_be_sent_again_stops_the_retries() -> None:
    fn = flaky(1)
    with pytest.raises(TransientRelayError, match="could not be sent again"):
        retry.call(fn, policy=Recorder().policy, what="PUT big", replayable=lambda: False)
    assert fn.calls == [0]


@pytest.mark.parametrize("value", ["many", "-1", "1.5"])
def test_max_retries_option_is_checked(value) -> None:
    with pytest.raises(ConfigError, match="max retries"):
        retry.RetryPolicy.from_option(value)
    with pytest.raises(ValueError, match="whole number"):  # the declared option's parser
        retry.MAX_RETRIES_OPTION.parse(value)
    assert retry.RetryPolicy.from_option("0").max_retries == 0
    assert retry.RetryPolicy.from_option(None).max_retries == retry.DEFAULT_RETRIES


def test_every_backend_uses_the_shared_policy(tmp_path) -> None:
    relays = [LocalMount(f"file://{tmp_path}/r", max_retries="2"), WebDAV("http://127.0.0.1:9/dav", max_retries="2"),
              S3("s3://bucket/x", endpoint="http://127.0.0.1:9", user="a", password="b", max_retries="2")]
    for relay in relays:
        assert isinstance(relay.retry, retry.RetryPolicy) and relay.retry.max_retries == 2
        assert retry.MAX_RETRIES_OPTION in type(relay).options
    assert S3("s3://bucket/x").retry.max_retries == 9  # S3's default: botocore's 10 attempts


def test_a_refused_connection_is_retried_then_reported(tmp_path) -> None:
    """A real refused connection (nothing listens) is transient on WebDAV and S3: retried
    max retries times, then reported as a RelayError naming the relay."""
    from servers_s3 import free_port

    port = free_port()
    for relay in (WebDAV(f"http://127.0.0.1:{port}/dav", max_retries="2"),
                  S3("s3://bucket/x", endpoint=f"http://127.0.0.1:{port}", user="a", password="b", max_retries="2")):
        rec = Recorder(max_retries=2, base=0.001)
        relay.retry = rec.policy
        with pytest.raises(TransientRelayError, match=r"after 3 attempt\(s\)"):
            # a WebDAV relay's first request is its open (one PROPFIND finds the layout)
            relay.open() if isinstance(relay, WebDAV) else relay.stat("u/x")
        assert len(rec.waits) == 2
        relay.close()
