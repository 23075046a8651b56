"""SourceRateLimiter: token buckets per source with a fake clock, bounded table."""

from __future__ import annotations

import pytest

from sip.ratelimit import SourceRateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    clock = FakeClock()
    limiter = SourceRateLimiter(10, 5, clock=clock)
    assert [limiter.allow("a") for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.1  # one token back
    assert limiter.allow("a")
    assert not limiter.allow("a")
    clock.now += 10  # refill caps at burst
    assert sum(limiter.allow("a") for _ in range(10)) == 5


def test_sources_are_independent() -> None:
    clock = FakeClock()
    limiter = SourceRateLimiter(1, 2, clock=clock)
    assert limiter.allow("a") and limiter.allow("a") and not limiter.allow("a")
    assert limiter.allow("b") and limiter.allow("b")


def test_steady_rate() -> None:
    clock = FakeClock()
    limiter = SourceRateLimiter(100, 1, clock=clock)
    allowed = 0
    for _ in range(10000):  # 10 s of requests at 1 kHz, ten times the rate
        clock.now += 0.001
        allowed += limiter.allow("x")
    assert 999 <= allowed <= 1001


def test_table_bounded_evicts_least_recently_seen() -> None:
    clock = FakeClock()
    limiter = SourceRateLimiter(1, 1, max_sources=3, clock=clock)
    for ip in ("a", "b", "c"):
        assert limiter.allow(ip)
    assert not limiter.allow("a")  # a is now the most recent
    assert limiter.allow("d")  # evicts b
    assert len(limiter) == 3
    assert not limiter.allow("a")  # a kept its empty bucket
    assert limiter.allow("b")  # b was forgotten: a full bucket again
    for i in range(10000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 3


def test_clock_going_back_does_not_mint_tokens() -> None:
    clock = FakeClock()
    clock.now = 100.0
    limiter = SourceRateLimiter(1, 1, clock=clock)
    assert limiter.allow("a")
    clock.now = 50.0
    assert not limiter.allow("a")
    clock.now = 100.5
    assert not limiter.allow("a")
    clock.now = 101.0
    assert limiter.allow("a")


@pytest.mark.parametrize(("rate", "burst", "size"), [(0, 1, 1), (1, 0.5, 1), (1, 1, 0)])
def test_bad_arguments(rate: float, burst: float, size: int) -> None:
    with pytest.raises(ValueError):
        SourceRateLimiter(rate, burst, max_sources=size)
