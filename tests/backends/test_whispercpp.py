"""WhisperCppASR against an in-test server speaking whisper.cpp's `/inference` format."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bridge.backends import WhisperCppASR
from tests.backends.helpers import error_from
from tests.fakes.backend_servers import WhisperCppDouble, serve
from tests.support import free_port

PCM = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440) * 8000).astype(np.int16)


async def test_posts_multipart_wav_and_returns_text() -> None:
    double = WhisperCppDouble()
    async with serve(double.app()) as url:
        asr = WhisperCppASR(url, timeout_s=5, pool_size=2)
        try:
            transcript = await asr.transcribe(PCM)
            assert await asr.ready()
        finally:
            await asr.aclose()
    assert transcript.text == "The quick brown fox jumps over the lazy dog."
    (request,) = double.requests
    assert request["content_type"] == "multipart/form-data"
    assert request["fields"] == {"response_format": "json", "temperature": "0"}
    upload = request["file"]
    assert upload["name"] == "file"
    assert upload["filename"].endswith(".wav")
    assert upload["content_type"] == "audio/wav"
    pcm, rate = upload["pcm_rate"]
    assert rate == 16000
    np.testing.assert_array_equal(pcm, PCM)


async def test_pool_size_bounds_concurrent_requests() -> None:
    double = WhisperCppDouble(delay_s=0.2)
    async with serve(double.app()) as url:
        asr = WhisperCppASR(url, timeout_s=5, pool_size=2)
        try:
            results = await asyncio.gather(*(asr.transcribe(PCM) for _ in range(6)))
        finally:
            await asr.aclose()
    assert len(results) == 6
    assert double.max_in_flight == 2


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("slow", "timeout"),
        ("http500", "http"),
        ("error_json", "http"),
        ("garbage", "malformed"),
        ("no_text", "malformed"),
        ("truncated", "malformed"),
    ],
)
async def test_failures_raise_typed_errors(mode: str, kind: str) -> None:
    double = WhisperCppDouble(mode=mode)
    async with serve(double.app()) as url:
        asr = WhisperCppASR(url, timeout_s=0.5, pool_size=1)
        error = await error_from(asr, lambda: asr.transcribe(PCM))
    assert (error.kind, error.backend, error.url) == (kind, "whisper.cpp", f"{url}/inference")
    assert url in str(error)


async def test_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    asr = WhisperCppASR(url, timeout_s=2)
    error = await error_from(asr, lambda: asr.transcribe(PCM), ready_after=False)
    assert (error.kind, error.url) == ("connect", f"{url}/inference")
