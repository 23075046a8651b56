"""`build_backends` picks the implementations the settings name."""

from __future__ import annotations

from bridge.backends import (
    EmbeddedASR,
    EmbeddedLLM,
    EmbeddedPiperTTS,
    HttpTTS,
    OllamaLLM,
    OpenAICompatLLM,
    WhisperCppASR,
    build_backends,
)
from bridge.config import load_settings
from tests.fakes.backend_servers import OllamaDouble, WhisperCppDouble, serve
from tests.support import free_port


async def test_defaults_are_the_embedded_trio() -> None:
    backends = build_backends(load_settings(_env_file=None))
    try:
        assert isinstance(backends.asr, EmbeddedASR)
        assert isinstance(backends.llm, EmbeddedLLM)
        assert isinstance(backends.tts["piper"], EmbeddedPiperTTS)
        coqui = backends.tts["coqui"]
        assert isinstance(coqui, HttpTTS)
        assert coqui.endpoint == "http://coqui:5200/synthesize"
    finally:
        await backends.aclose()


async def test_http_backends_from_settings() -> None:
    whisper, ollama = WhisperCppDouble(), OllamaDouble()
    dead = f"http://127.0.0.1:{free_port()}"
    async with serve(whisper.app()) as whisper_url, serve(ollama.app()) as ollama_url:
        settings = load_settings(
            _env_file=None,
            asr_backend="whispercpp",
            llm_backend="ollama",
            tts_backend="http",
            whisper_url=whisper_url,
            ollama_url=ollama_url,
            ollama_model="llama3.2:3b",
            llm_max_tokens=33,
            piper_url=dead,
            coqui_url=dead,
        )
        backends = build_backends(settings)
        try:
            assert isinstance(backends.asr, WhisperCppASR)
            assert isinstance(backends.llm, OllamaLLM)
            assert backends.llm.max_tokens == 33
            piper = backends.tts["piper"]
            assert isinstance(piper, HttpTTS)
            assert piper.voice == settings.piper_voice
            await backends.warmup()
            assert await backends.ready() == {
                "asr": True,
                "llm": True,
                "tts.piper": False,
                "tts.coqui": False,
            }
        finally:
            await backends.aclose()


async def test_openai_backend_from_settings() -> None:
    settings = load_settings(
        _env_file=None, llm_backend="openai", openai_url="http://gpu:8000/v1/", openai_model="m"
    )
    backends = build_backends(settings)
    try:
        assert isinstance(backends.llm, OpenAICompatLLM)
        assert backends.llm.endpoint == "http://gpu:8000/v1/chat/completions"
    finally:
        await backends.aclose()
