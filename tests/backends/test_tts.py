"""The `/synthesize` service over real HTTP with real Piper, the HttpTTS client, and the
Coqui engine's start-up failure line."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
import soxr
from aiohttp import web

from bridge.backends import EmbeddedASR, HttpTTS
from bridge.services.tts_server import OUTPUT_RATE, to_output_rate
from tests.backends.helpers import error_from
from tests.fakes.backend_servers import routes, serve
from tests.fakes.processes import ROOT, Server
from tests.support import free_port, word_error_rate

SENTENCE = "Thank you for calling, how can I help you today?"


@pytest.mark.slow
async def test_service_speaks_a_wav_the_asr_understands(
    piper_service: Server, embedded_asr: EmbeddedASR
) -> None:
    async with httpx.AsyncClient(base_url=piper_service.url, timeout=30) as client:
        health = await client.get("/healthz")
        response = await client.post("/synthesize", json={"text": SENTENCE})
    assert health.json() == {"status": "ok", "engine": "piper"}
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(response.content)) as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == 22050
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert 1.0 < len(pcm) / 22050 < 8.0
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 500
    heard = await embedded_asr.transcribe(soxr.resample(pcm, 22050, 16000).astype(np.int16))
    assert word_error_rate(SENTENCE, heard.text) <= 0.2, heard.text


@pytest.mark.slow
async def test_service_falls_back_to_the_shipped_voice(piper_service: Server) -> None:
    async with httpx.AsyncClient(base_url=piper_service.url, timeout=30) as client:
        configured = await client.post(
            "/synthesize", json={"text": "Hello.", "voice": "en_US-lessac-medium"}
        )
        unknown = await client.post("/synthesize", json={"text": "Hello.", "voice": "xx_YY-none"})
    assert configured.status_code == 200
    assert unknown.status_code == 422 and "unknown voice" in unknown.json()["detail"]
    log = piper_service.log()
    assert "'en_US-lessac-medium' not found locally; using the shipped en_US-joe-medium" in log


class _FakeVoice:
    class config:
        sample_rate = 22050


def _voice_dir(tmp_path: Path, names: list[str]) -> Path:
    for name in names:
        (tmp_path / f"{name}.onnx").write_bytes(b"onnx")
        (tmp_path / f"{name}.onnx.json").write_text("{}")
    (tmp_path / "stray.onnx").write_bytes(b"no config next to it")
    return tmp_path


@pytest.fixture
def fake_piper(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """PiperEngine without ONNX: every load is recorded, speech is a short tone."""
    from bridge.services import tts_server

    loads: list[Path] = []

    def load(path: Path, threads: int = 2) -> _FakeVoice:
        loads.append(path)
        return _FakeVoice()

    monkeypatch.setattr(tts_server, "load_voice", load)
    monkeypatch.setattr(tts_server, "speak", lambda voice, text: np.full(2205, 500, np.int16))
    return loads


@pytest.mark.parametrize(
    "voice",
    [
        "../../etc/passwd",
        "/tmp/evil.onnx",
        "voices/../a",
        "a.onnx",
        "stray",
        "xx_YY-none",
        "",
        "a" * 300,
        "en US",
    ],
)
def test_synthesize_accepts_only_configured_voice_names(
    tmp_path: Path, fake_piper: list[Path], voice: str
) -> None:
    from fastapi.testclient import TestClient

    from bridge.services.tts_server import PiperEngine, create_app

    engine = PiperEngine("alto", str(_voice_dir(tmp_path, ["alto", "bass"])))
    with TestClient(create_app(engine)) as client:
        for good in ("alto", "bass", None):
            assert (
                client.post("/synthesize", json={"text": "Hi.", "voice": good}).status_code == 200
            )
        response = client.post("/synthesize", json={"text": "Hi.", "voice": voice})
    if voice == "":
        assert response.status_code == 200  # empty = the default voice
        return
    assert response.status_code == 422, response.text
    assert str(tmp_path) not in response.text and "etc" not in response.json()["detail"]
    assert all(p.parent == tmp_path for p in fake_piper)


def test_loaded_voices_are_bounded(tmp_path: Path, fake_piper: list[Path]) -> None:
    from bridge.services.tts_server import MAX_LOADED_VOICES, PiperEngine

    names = [f"v{i}" for i in range(MAX_LOADED_VOICES + 3)]
    engine = PiperEngine("v0", str(_voice_dir(tmp_path, names)))
    for name in names * 2:
        engine.synthesize("Hi.", name)
    assert len(engine._loaded) == MAX_LOADED_VOICES
    engine.synthesize("Hi.", names[-1])  # the most recent one is still loaded
    assert fake_piper[-1] == tmp_path / f"{names[-1]}.onnx"
    loads = len(fake_piper)
    engine.synthesize("Hi.", names[-1])
    assert len(fake_piper) == loads


def test_synthesis_failure_detail_is_plain(tmp_path: Path, fake_piper: list[Path]) -> None:
    from fastapi.testclient import TestClient

    from bridge.services import tts_server

    engine = tts_server.PiperEngine("alto", str(_voice_dir(tmp_path, ["alto"])))

    def broken(voice: object, text: str) -> None:
        raise RuntimeError(f"onnx failed reading {tmp_path}/alto.onnx")

    tts_server.speak = broken  # type: ignore[assignment]  # restored by fake_piper's monkeypatch
    with TestClient(tts_server.create_app(engine), raise_server_exceptions=False) as client:
        response = client.post("/synthesize", json={"text": "Hi."})
    assert response.status_code == 500
    assert response.json() == {"detail": "synthesis failed"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"text": ""}, 422),
        ({"text": "   \n"}, 422),
        ({"voice": "en_US-joe-medium"}, 422),
        ({"text": 42}, 422),
        ({"text": "word " * 500}, 413),
    ],
)
async def test_service_rejects_bad_text(piper_service: Server, body: object, status: int) -> None:
    async with httpx.AsyncClient(base_url=piper_service.url, timeout=30) as client:
        response = await client.post("/synthesize", json=body)
    assert response.status_code == status
    assert response.json()["detail"]


@pytest.mark.slow
async def test_http_tts_client_against_the_service(piper_service: Server) -> None:
    tts = HttpTTS("piper", piper_service.url, voice="en_US-joe-medium", timeout_s=30)
    try:
        assert await tts.ready()
        audio = await tts.synthesize("Your order has shipped.")
    finally:
        await tts.aclose()
    assert audio.sample_rate == 22050
    assert audio.pcm.dtype == np.int16
    assert audio.duration_s > 0.5


def test_output_is_resampled_to_22050() -> None:
    rate = 16000
    tone = (np.sin(2 * np.pi * 440 * np.arange(rate) / rate) * 10000).astype(np.int16)
    out = to_output_rate(tone, rate)
    assert abs(len(out) - OUTPUT_RATE) <= 2
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    assert abs(np.argmax(spectrum) * OUTPUT_RATE / len(out) - 440) < 2


def _wav_8bit() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(22050)
        wav.writeframes(bytes(100))
    return buf.getvalue()


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response()


@pytest.mark.parametrize(
    ("handler", "kind"),
    [
        (lambda request: web.Response(status=500, text="boom"), "http"),
        (lambda request: web.Response(body=b"RIFF\x00\x00", content_type="audio/wav"), "malformed"),
        (
            lambda request: web.Response(body=b"<html>hi</html>", content_type="audio/wav"),
            "malformed",
        ),
        (lambda request: web.Response(body=_wav_8bit(), content_type="audio/wav"), "malformed"),
        (_slow, "timeout"),
    ],
)
async def test_http_tts_failures_raise_typed_errors(handler: object, kind: str) -> None:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        result = handler(request)  # type: ignore[operator]
        return await result if asyncio.iscoroutine(result) else result

    async with serve(routes(web.post("/synthesize", wrapped))) as url:
        tts = HttpTTS("coqui", url, timeout_s=0.5)
        error = await error_from(tts, lambda: tts.synthesize("Hello."))
    assert (error.kind, error.backend, error.url) == (kind, "coqui", f"{url}/synthesize")


async def test_http_tts_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    tts = HttpTTS("coqui", url, timeout_s=2)
    error = await error_from(tts, lambda: tts.synthesize("Hello."), ready_after=False)
    assert error.kind == "connect"


def _coqui_start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge.services.tts_server",
            "--engine",
            "coqui",
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_coqui_without_a_model_fails_with_one_line() -> None:
    done = _coqui_start({"COQUI_MODEL_PATH": ""})
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "tts_server: coqui engine unavailable: no tts_models/en/ljspeech/vits model at "
        "COQUI_MODEL_PATH (unset); point it at a folder holding model_file.pth and config.json"
    ]


def test_coqui_without_the_package_fails_with_one_line(tmp_path: Path) -> None:
    try:
        import TTS  # noqa: F401

        pytest.skip("optional: coqui-tts is installed here")
    except ImportError:
        pass
    (tmp_path / "model_file.pth").write_bytes(b"\0")
    (tmp_path / "config.json").write_text("{}")
    done = _coqui_start({"COQUI_MODEL_PATH": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "tts_server: coqui engine unavailable: the coqui-tts package is not installed "
        "(pip install 'voicebridge[coqui]')"
    ]
