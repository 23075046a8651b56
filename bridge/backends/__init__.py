"""The ASR, LLM and TTS backends, and `build_backends()`, which picks them from the settings.

`ASR_BACKEND=embedded|whispercpp`, `LLM_BACKEND=embedded|ollama|openai`,
`TTS_BACKEND=embedded|http`. The embedded trio is the default and needs no server and no
download; the HTTP ones are the spec's production servers. Each HTTP URL setting may list
several servers, comma-separated; every server has its own circuit breaker
(`BREAKER_FAILURES`, `BREAKER_COOLDOWN_S`), see `bridge.backends._http` and docs/backends.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.backends._http import BreakerOptions
from bridge.backends.asr import EmbeddedASR, WhisperCppASR
from bridge.backends.base import (
    ASR,
    LLM,
    TTS,
    Audio,
    BackendError,
    ErrorKind,
    Message,
    Transcript,
)
from bridge.backends.llm import EmbeddedLLM, OllamaLLM, OpenAICompatLLM
from bridge.backends.tts import EmbeddedPiperTTS, HttpTTS
from bridge.config import Settings

__all__ = [
    "ASR",
    "LLM",
    "TTS",
    "Audio",
    "BackendError",
    "Backends",
    "EmbeddedASR",
    "EmbeddedLLM",
    "EmbeddedPiperTTS",
    "ErrorKind",
    "HttpTTS",
    "Message",
    "OllamaLLM",
    "OpenAICompatLLM",
    "Transcript",
    "WhisperCppASR",
    "build_backends",
]

log = logging.getLogger(__name__)


@dataclass
class Backends:
    """The backends one bridge process uses; `tts` is keyed by engine ("piper", "coqui")."""

    asr: ASR
    llm: LLM
    tts: Mapping[str, TTS]

    def _all(self) -> list[Any]:
        return [self.asr, self.llm, *self.tts.values()]

    async def warmup(self) -> None:
        """Load the embedded models now rather than on the first call.

        A backend that fails to load is logged and left to fail again, with its
        `BackendError`, when a call uses it.
        """
        for backend in self._all():
            warmup = getattr(backend, "warmup", None)
            if warmup is None:
                continue
            try:
                await warmup()
            except BackendError as exc:
                log.warning("warm-up failed: %s", exc)

    async def ready(self) -> dict[str, bool]:
        """Each backend's readiness, keyed "asr", "llm", "tts.<engine>" (for /readyz)."""
        names = ["asr", "llm", *(f"tts.{engine}" for engine in self.tts)]
        results = await asyncio.gather(*(backend.ready() for backend in self._all()))
        return dict(zip(names, results, strict=True))

    def watch(self, callback: Callable[[str, bool], None]) -> None:
        """Call `callback(key, up)` now and whenever a backend's breakers flip it (keys as
        in /readyz: "asr", "llm", "tts_<engine>"); a backend without breakers is always up."""
        keys = ["asr", "llm", *(f"tts_{engine}" for engine in self.tts)]
        for key, backend in zip(keys, self._all(), strict=True):
            watch = getattr(backend, "watch", None)
            if watch is None:
                callback(key, True)
            else:
                watch(functools.partial(callback, key))

    async def aclose(self) -> None:
        """Close every backend's connections and worker threads."""
        await asyncio.gather(*(backend.aclose() for backend in self._all()))


def build_backends(settings: Settings) -> Backends:
    """Make the backends the settings ask for. Nothing is loaded or connected yet."""
    timeout = settings.backend_timeout_s
    threads = settings.inference_threads
    breaker: BreakerOptions = {
        "breaker_failures": settings.breaker_failures,
        "breaker_cooldown_s": settings.breaker_cooldown_s,
    }
    asr: ASR
    if settings.asr_backend == "whispercpp":
        asr = WhisperCppASR(settings.whisper_url, timeout, settings.asr_pool_size, **breaker)
    else:
        asr = EmbeddedASR(settings.embedded_asr_model, threads=threads, timeout_s=timeout)
    llm: LLM
    if settings.llm_backend == "ollama":
        llm = OllamaLLM(
            settings.ollama_url,
            settings.ollama_model,
            settings.llm_max_tokens,
            timeout,
            settings.llm_pool_size,
            **breaker,
        )
    elif settings.llm_backend == "openai":
        llm = OpenAICompatLLM(
            settings.openai_url,
            settings.openai_model,
            settings.openai_api_key,
            settings.llm_max_tokens,
            timeout,
            settings.llm_pool_size,
            **breaker,
        )
    else:
        llm = EmbeddedLLM(
            settings.embedded_llm_model,
            settings.llm_max_tokens,
            threads=threads,
            timeout_s=timeout,
        )
    coqui = HttpTTS("coqui", settings.coqui_url, None, timeout, settings.tts_pool_size, **breaker)
    piper: TTS
    if settings.tts_backend == "http":
        piper = HttpTTS(
            "piper",
            settings.piper_url,
            settings.piper_voice,
            timeout,
            settings.tts_pool_size,
            **breaker,
        )
    else:
        piper = EmbeddedPiperTTS(settings.piper_voice, threads=threads, timeout_s=timeout)
    return Backends(asr=asr, llm=llm, tts={"piper": piper, "coqui": coqui})
