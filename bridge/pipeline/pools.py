"""Backend concurrency: the ASR/LLM/TTS pools every call of one bridge shares."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from bridge.backends.base import ASR, LLM, TTS
from bridge.config import Settings

__all__ = ["BackendSet", "Pools", "backend_concurrency", "hold"]

T = TypeVar("T")


class BackendSet(Protocol):
    """What a call needs from `bridge.backends.Backends`."""

    @property
    def asr(self) -> ASR:
        """Speech to text."""
        ...

    @property
    def llm(self) -> LLM:
        """The reply's language model."""
        ...

    @property
    def tts(self) -> Mapping[str, TTS]:
        """Text to speech, by engine name (`piper`, `coqui`)."""
        ...


def backend_concurrency(backend: object, configured: int) -> int:
    """How many requests to let through to `backend` at once.

    The configured pool size per server (an HTTP backend may list several: `servers`),
    capped by what the backend itself can run in parallel: its `max_concurrency` attribute
    when it has one, else 1 for an in-process (`embedded://`) model, which runs on a single
    worker thread. Requests beyond that wait in the pool's semaphore, where the stage timing
    sees them, instead of inside the backend, where they would eat into its timeout.
    """
    servers = getattr(backend, "servers", None)
    per_server = configured * (len(servers) if isinstance(servers, list | tuple) and servers else 1)
    limit = getattr(backend, "max_concurrency", None)
    if isinstance(limit, int) and limit > 0:
        return min(per_server, limit)
    if str(getattr(backend, "url", "")).startswith("embedded://"):
        return 1
    return configured


@dataclass(frozen=True)
class Pools:
    """Backend concurrency limits shared by every call of one bridge (TTS per engine)."""

    asr: asyncio.Semaphore
    llm: asyncio.Semaphore
    tts: Mapping[str, asyncio.Semaphore]

    @classmethod
    def from_settings(cls, settings: Settings, backends: BackendSet) -> Pools:
        """Semaphores sized by ASR_POOL_SIZE, LLM_POOL_SIZE and TTS_POOL_SIZE, each capped
        by `backend_concurrency`."""
        return cls(
            asyncio.Semaphore(backend_concurrency(backends.asr, settings.asr_pool_size)),
            asyncio.Semaphore(backend_concurrency(backends.llm, settings.llm_pool_size)),
            {
                engine: asyncio.Semaphore(backend_concurrency(tts, settings.tts_pool_size))
                for engine, tts in backends.tts.items()
            },
        )


async def hold(pool: asyncio.Semaphore, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work()` in a slot of `pool`, keeping the slot until the work really ends.

    The work runs as its own task: a caller that stops waiting (barge-in, a discarded
    speculation, a stage budget) gets its `CancelledError` at once, while the slot stays
    taken until the backend has finished (an HTTP request until its response or the
    backend's own timeout, an embedded model until its worker returns), so the pool never
    counts a backend free while it is still busy.
    """
    await pool.acquire()
    try:
        task = asyncio.ensure_future(work())
    except BaseException:
        pool.release()
        raise
    _running.add(task)
    task.add_done_callback(_finished(pool))
    return await asyncio.shield(task)


def _finished(pool: asyncio.Semaphore) -> Callable[[asyncio.Future[Any]], None]:
    def done(task: asyncio.Future[Any]) -> None:
        _running.discard(task)
        pool.release()
        if not task.cancelled():
            task.exception()  # retrieved: a caller that stopped waiting must not log it

    return done


_running: set[asyncio.Future[Any]] = set()
"""Work whose caller stopped waiting, kept referenced until it ends."""
