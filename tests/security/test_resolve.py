"""Name resolution off the event loop: literals, timeouts, the bounded TTL cache."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from sip.resolve import ResolveError, Resolver, is_ip, resolve_host

pytestmark = pytest.mark.timeout(30)


class CountingLookup:
    """Stands in for loop.getaddrinfo: counts calls, optionally sleeps or fails."""

    def __init__(self, address: str = "192.0.2.10", delay_s: float = 0.0, fail: bool = False):
        self.address = address
        self.delay_s = delay_s
        self.fail = fail
        self.calls: list[str] = []

    async def __call__(self, host: str, port: Any, **kwargs: Any) -> list[Any]:
        self.calls.append(host)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (self.address, 0))]


def patch_lookup(monkeypatch: pytest.MonkeyPatch, lookup: CountingLookup) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", lookup)


def test_is_ip() -> None:
    assert is_ip("10.0.0.1") and is_ip("::1") and is_ip("[2001:db8::1]")
    assert not is_ip("example.com") and not is_ip("") and not is_ip("10.0.0.1:5060")


@pytest.mark.parametrize(
    ("host", "expected"),
    [("192.0.2.1", "192.0.2.1"), ("::1", "::1"), ("[2001:db8::5]", "2001:db8::5")],
)
async def test_ip_literal_does_no_lookup(
    monkeypatch: pytest.MonkeyPatch, host: str, expected: str
) -> None:
    lookup = CountingLookup()
    patch_lookup(monkeypatch, lookup)
    assert await resolve_host(host) == expected
    assert await Resolver().resolve(host) == expected
    assert lookup.calls == []


async def test_localhost_resolves() -> None:
    address = await resolve_host("localhost")
    assert address in {"127.0.0.1", "::1"}


async def test_unresolvable_name_raises_within_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(ResolveError):
        await resolve_host("nonexistent.invalid", timeout_s=2.0)
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize("host", ["", "   ", "a b", "x" * 300, "bad..label", "."])
async def test_malformed_names_raise_resolve_error(host: str) -> None:
    with pytest.raises(ResolveError):
        await resolve_host(host, timeout_s=1.0)


async def test_resolve_error_is_a_value_error() -> None:
    assert issubclass(ResolveError, ValueError)


async def test_slow_lookup_times_out_without_blocking_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    patch_lookup(monkeypatch, CountingLookup(delay_s=10.0))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    start = time.monotonic()
    try:
        with pytest.raises(ResolveError, match="timed out"):
            await resolve_host("slow.example", timeout_s=0.3)
    finally:
        task.cancel()
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 1.0
    assert ticks >= 10  # the other task kept running the whole time


async def test_real_blocking_resolver_stays_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A getaddrinfo that blocks its thread (as a slow DNS server does) never stalls the
    loop: loop.getaddrinfo runs it in the executor."""

    def slow_getaddrinfo(*args: Any, **kwargs: Any) -> list[Any]:
        time.sleep(0.5)
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.44", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    try:
        with pytest.raises(ResolveError):
            await resolve_host("blocking.example", timeout_s=0.2)
        assert await resolve_host("blocking.example", timeout_s=2.0) == "192.0.2.44"
    finally:
        task.cancel()
    assert gaps and max(gaps) < 0.3  # the lookup thread sleeps 0.5 s


async def test_cache_looks_up_once_per_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup = CountingLookup()
    patch_lookup(monkeypatch, lookup)
    now = [0.0]
    resolver = Resolver(ttl_s=60, clock=lambda: now[0])
    for _ in range(5):
        assert await resolver.resolve("pbx.example") == "192.0.2.10"
    assert await resolver.resolve("PBX.example.") == "192.0.2.10"
    assert lookup.calls == ["pbx.example"]
    now[0] = 61
    await resolver.resolve("pbx.example")
    assert len(lookup.calls) == 2


async def test_concurrent_callers_share_one_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup = CountingLookup(delay_s=0.05)
    patch_lookup(monkeypatch, lookup)
    resolver = Resolver()
    results = await asyncio.gather(*(resolver.resolve("pbx.example") for _ in range(20)))
    assert set(results) == {"192.0.2.10"}
    assert lookup.calls == ["pbx.example"]


async def test_one_caller_cancelled_does_not_cancel_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    patch_lookup(monkeypatch, CountingLookup(delay_s=0.1))
    resolver = Resolver()
    first = asyncio.create_task(resolver.resolve("pbx.example"))
    second = asyncio.create_task(resolver.resolve("pbx.example"))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == "192.0.2.10"


async def test_failures_are_cached_briefly(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup = CountingLookup(fail=True)
    patch_lookup(monkeypatch, lookup)
    now = [0.0]
    resolver = Resolver(negative_ttl_s=10, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(ResolveError):
            await resolver.resolve("gone.example")
    assert len(lookup.calls) == 1
    now[0] = 11
    with pytest.raises(ResolveError):
        await resolver.resolve("gone.example")
    assert len(lookup.calls) == 2


async def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_lookup(monkeypatch, CountingLookup())
    resolver = Resolver(max_entries=8)
    for i in range(50):
        await resolver.resolve(f"h{i}.example")
    assert len(resolver) == 8


async def test_lookups_in_flight_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_lookup(monkeypatch, CountingLookup(delay_s=0.2))
    resolver = Resolver(max_in_flight=2)
    pending = [asyncio.create_task(resolver.resolve(f"h{i}.example")) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(ResolveError, match="too many"):
        await resolver.resolve("h3.example")
    assert await asyncio.gather(*pending) == ["192.0.2.10"] * 2
    await resolver.close()


async def test_close_cancels_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_lookup(monkeypatch, CountingLookup(delay_s=10))
    resolver = Resolver()
    waiter = asyncio.create_task(resolver.resolve("slow.example"))
    await asyncio.sleep(0.01)
    await resolver.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter
