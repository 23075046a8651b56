"""Backend concurrency: the ASR/LLM/TTS pools every call of one bridge shares."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from bridge.backends.base import ASR, LLM, TTS
from bridge.config import Settings

__all__ = ["BackendSet", "Pools", "backend_concurrency"]


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

    The configured pool size, capped by what the backend itself can run in parallel: its
    `max_concurrency` attribute when it has one, else 1 for an in-process (`embedded://`)
    model, which runs on a single worker thread. Requests beyond that wait in the pool's
    semaphore, where the stage timing sees them, instead of inside the backend, where they
    would eat into its timeout.
    """
    limit = getattr(backend, "max_concurrency", None)
    if isinstance(limit, int) and limit > 0:
        return min(configured, limit)
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
