"""Per-identity rate limits on a fake clock, and the loopback-or-TLS listening rule."""

from __future__ import annotations

import pytest

from controller.errors import ConfigError
from controller.security.errors import RateLimitedError
from controller.security.listen import check_listen, host_of, is_loopback
from controller.security.ratelimit import Rate, RateLimiter
from tests.fixtures.clock import FakeClock


def test_a_burst_then_the_refill_rate() -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter(Rate(per_second=2.0, burst=3.0), clock=clock)
    assert [limiter.try_acquire("agent:i-1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.try_acquire("agent:i-1") == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.try_acquire("agent:i-1") == 0.0
    assert limiter.try_acquire("agent:i-1") > 0
    clock.advance(100)  # refills to the burst, no further
    assert [limiter.try_acquire("agent:i-1") for _ in range(4)][-1] > 0


def test_one_identity_flooding_does_not_spend_anothers_tokens() -> None:
    limiter = RateLimiter(Rate(per_second=1.0, burst=2.0), clock=FakeClock(1000.0))
    for _ in range(100):
        limiter.try_acquire("agent:flood")
    assert limiter.try_acquire("agent:quiet") == 0.0
    assert limiter.try_acquire("agent:quiet") == 0.0


def test_refusal_carries_a_retry_hint() -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter(Rate(per_second=4.0, burst=1.0), clock=clock)
    limiter.acquire("operator:alice")
    with pytest.raises(RateLimitedError, match=r"retry in 0\.25 s") as caught:
        limiter.acquire("operator:alice")
    assert caught.value.retry_after == pytest.approx(0.25)
    assert caught.value.reason == "rate_limited"


def test_memory_is_bounded_by_least_recently_used_identity() -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter(Rate(per_second=0.001, burst=1.0), clock=clock, max_identities=3)
    limiter.try_acquire("a")
    for key in ("b", "c", "d"):
        limiter.try_acquire(key)
    assert len(limiter) == 3
    assert limiter.try_acquire("a") == 0.0  # forgotten: back with a full bucket
    assert limiter.try_acquire("d") > 0  # still remembered: empty


def test_a_clock_going_backwards_grants_nothing_extra() -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter(Rate(per_second=1.0, burst=1.0), clock=clock)
    limiter.try_acquire("a")
    clock.advance(-50)
    assert limiter.try_acquire("a") > 0


@pytest.mark.parametrize(("per_second", "burst"), [(0, 1), (-1, 5), (1, 0.5)])
def test_nonsense_rates_are_refused(per_second: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        Rate(per_second, burst)


@pytest.mark.parametrize(
    ("address", "host"),
    [("127.0.0.1:7070", "127.0.0.1"), ("[::1]:7070", "::1"), ("host:1", "host"), (":7070", "")],
)
def test_host_of(address: str, host: str) -> None:
    assert host_of(address) == host


@pytest.mark.parametrize(
    "address", ["127.0.0.1:7070", "127.9.9.9:1", "[::1]:7070", "localhost:7070", "unix:/run/c.sock"]
)
def test_loopback_may_serve_plaintext_silently(address: str) -> None:
    assert is_loopback(address)
    assert check_listen(address, tls_configured=False, insecure=False) is None


@pytest.mark.parametrize(
    "address", ["0.0.0.0:7070", "[::]:7070", ":7070", "10.0.0.5:7070", "ctl.example.com:7070"]
)
def test_elsewhere_plaintext_is_refused_unless_insecure(address: str) -> None:
    assert not is_loopback(address)
    with pytest.raises(ConfigError, match=r"refusing to serve .* without TLS"):
        check_listen(address, tls_configured=False, insecure=False)
    warning = check_listen(address, tls_configured=False, insecure=True)
    assert warning is not None
    assert "INSECURE" in warning
    assert address in warning
    assert check_listen(address, tls_configured=True, insecure=False) is None
