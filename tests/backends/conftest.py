"""Session-wide backends and servers: each model loads once per test session."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Protocol, TypeVar

import pytest

from bridge.backends import EmbeddedASR, EmbeddedLLM, EmbeddedPiperTTS
from tests.fakes.processes import Server, start_tts_service, stop_server


class _Loadable(Protocol):
    async def warmup(self) -> None: ...

    async def aclose(self) -> None: ...


B = TypeVar("B", bound=_Loadable)


def _loaded(backend: B) -> Iterator[B]:
    """`backend` warmed up for the session, closed at its end."""
    asyncio.run(backend.warmup())
    yield backend
    asyncio.run(backend.aclose())


@pytest.fixture(scope="session")
def embedded_asr() -> Iterator[EmbeddedASR]:
    """The shipped Whisper tiny.en, loaded once."""
    yield from _loaded(EmbeddedASR(threads=2, timeout_s=60))


@pytest.fixture(scope="session")
def embedded_llm() -> Iterator[EmbeddedLLM]:
    """The shipped SmolLM2-135M-Instruct, loaded once."""
    yield from _loaded(EmbeddedLLM(max_tokens=40, threads=2, timeout_s=30))


@pytest.fixture(scope="session")
def embedded_piper() -> Iterator[EmbeddedPiperTTS]:
    """The shipped en_US-joe-medium Piper voice, loaded once."""
    yield from _loaded(EmbeddedPiperTTS(threads=2, timeout_s=30))


@pytest.fixture(scope="session")
def piper_service() -> Iterator[Server]:
    """`python -m bridge.services.tts_server --engine piper` on a loopback port, with PIPER_VOICE
    naming a voice that is not installed here (so it falls back to the shipped one)."""
    server = start_tts_service(
        {"PIPER_VOICE": "en_US-lessac-medium", "PIPER_VOICE_DIR": "", "TTS_MAX_CHARS": "2000"}
    )
    yield server
    stop_server(server)
