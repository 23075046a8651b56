"""Name resolution that never blocks the event loop, for hosts a remote party chose.

An SDP `c=` line, a Contact or a Route may carry a host name. Resolving it with a blocking
call (`sendto()` to a name, `socket.getaddrinfo`) on the loop stalls every call at once,
so a host is resolved here: an IP literal comes back as it is, a name goes through
`loop.getaddrinfo` (run in the loop's executor) under a timeout. `Resolver` adds a small
bounded TTL cache, remembers failures for a shorter while, and shares one lookup among
concurrent callers, so a name is looked up at most once per TTL and a flood of names
cannot queue unbounded work on the executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sip.transport import is_ip

__all__ = ["ResolveError", "Resolver", "is_ip", "resolve_host"]

MAX_HOST_CHARS = 253


class ResolveError(ValueError):
    """A host could not be resolved (unknown, timed out, malformed or refused)."""


def _literal(host: str) -> str | None:
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return text if is_ip(text) else None


async def resolve_host(host: str, *, timeout_s: float = 2.0, family: int = socket.AF_UNSPEC) -> str:
    """The first address of `host`: an IP literal at once, a name via the loop's
    `getaddrinfo` within `timeout_s`. Raises `ResolveError` on any failure."""
    literal = _literal(host)
    if literal is not None:
        return literal
    name = host.strip().rstrip(".")
    if not name or len(name) > MAX_HOST_CHARS or any(c.isspace() for c in name):
        raise ResolveError(f"not a host name: {host!r}")
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(name, None, family=family, type=socket.SOCK_DGRAM),
            timeout_s,
        )
    except TimeoutError:
        raise ResolveError(f"resolving {name!r} timed out after {timeout_s:g} s") from None
    except (OSError, UnicodeError, ValueError) as exc:
        raise ResolveError(f"cannot resolve {name!r}: {exc}") from None
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = sockaddr[0]
        if isinstance(address, str):
            return address
    raise ResolveError(f"no address for {name!r}")


@dataclass(eq=False, kw_only=True)
class Resolver:
    """`resolve_host` behind a bounded TTL cache shared by all calls of one process."""

    max_entries: int = 1024
    ttl_s: float = 60.0
    negative_ttl_s: float = 10.0
    timeout_s: float = 2.0
    max_in_flight: int = 64
    family: int = socket.AF_UNSPEC
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.max_entries < 1 or self.max_in_flight < 1:
            raise ValueError("max_entries and max_in_flight must be >= 1")
        # name -> (expiry, address or the error to raise again)
        self._cache: OrderedDict[str, tuple[float, str | ResolveError]] = OrderedDict()
        self._in_flight: dict[str, asyncio.Task[str]] = {}

    async def resolve(self, host: str) -> str:
        """The address of `host`, from the cache when fresh; raises `ResolveError`."""
        literal = _literal(host)
        if literal is not None:
            return literal
        key = host.strip().rstrip(".").lower()
        cached = self._cache.get(key)
        if cached is not None:
            expiry, value = cached
            if self.clock() < expiry:
                self._cache.move_to_end(key)
                if isinstance(value, ResolveError):
                    raise ResolveError(str(value))
                return value
            del self._cache[key]
        task = self._in_flight.get(key)
        if task is None:
            if len(self._in_flight) >= self.max_in_flight:
                raise ResolveError(f"too many name lookups in flight; not resolving {key!r}")
            task = asyncio.get_running_loop().create_task(self._lookup(key))
            self._in_flight[key] = task
            task.add_done_callback(self._forget_task)
        # shield: one caller giving up must not cancel the lookup the others wait on.
        return await asyncio.shield(task)

    def _forget_task(self, task: asyncio.Task[str]) -> None:
        for key, pending in list(self._in_flight.items()):
            if pending is task:
                del self._in_flight[key]
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not logged

    async def _lookup(self, key: str) -> str:
        try:
            address = await resolve_host(key, timeout_s=self.timeout_s, family=self.family)
        except ResolveError as exc:
            self._store(key, exc, self.negative_ttl_s)
            raise
        self._store(key, address, self.ttl_s)
        return address

    def _store(self, key: str, value: str | ResolveError, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        self._cache[key] = (self.clock() + ttl_s, value)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    def clear(self) -> None:
        """Forget every cached answer (lookups in flight finish normally)."""
        self._cache.clear()

    async def close(self) -> None:
        """Cancel lookups in flight and wait for them to end."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ResolveError):
                await task

    def __len__(self) -> int:
        """How many answers the cache holds now."""
        return len(self._cache)
