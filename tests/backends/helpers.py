"""Helpers for the HTTP backend client tests: drain a token stream, catch the typed error."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import pytest

from bridge.backends import BackendError


class Client(Protocol):
    """What every backend client has: a readiness probe and a close."""

    async def ready(self) -> bool: ...

    async def aclose(self) -> None: ...


async def drain(stream: AsyncIterator[str], into: list[str] | None = None) -> None:
    """Consume a token stream, keeping the tokens in `into`."""
    async for token in stream:
        if into is not None:
            into.append(token)


async def error_from(
    client: Client, use: Callable[[], Awaitable[object]], ready_after: bool | None = None
) -> BackendError:
    """The BackendError that `use()` raises (the test fails if none does); with `ready_after`,
    `ready()` must then say so; the client is closed either way."""
    try:
        with pytest.raises(BackendError) as caught:
            await use()
        if ready_after is not None:
            assert bool(await client.ready()) == ready_after
    finally:
        await client.aclose()
    return caught.value
