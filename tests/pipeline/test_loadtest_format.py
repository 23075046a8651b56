"""The load tester and `voicebridge call`: the summary block, percentiles, durations,
encoding; against a server, an ASR error that must end the call once, and a door's close
code and reason that must reach the caller's screen."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import WSMsgType, web

from bridge.cli import main
from bridge.config import Settings
from bridge.doors import websocket
from bridge.metrics import Metrics
from bridge.tools import call_client
from bridge.tools.call_client import CallFailed
from bridge.tools.loadtest import (
    encode_chunks,
    format_summary,
    parse_duration,
    percentile,
    run_load,
)
from media.wav import write_wav
from tests.fakes.backend_servers import serve
from tests.fakes.calls import RecordingCalls


def test_summary_block_is_the_spec_format() -> None:
    text = format_summary(47, 0, [138, 140, 215], [245, 300, 410], [167, 200, 289], [562, 600, 891])
    lines = text.splitlines()
    assert lines[0] == "Calls completed: 47"
    assert lines[1] == "Errors: 0"
    assert lines[2] == "ASR latency   p50=140ms  p95=208ms  p99=214ms"
    assert lines[3].startswith("LLM latency   p50=300ms  p95=")
    assert lines[4].startswith("TTS latency   p50=200ms  p95=")
    assert lines[5].startswith("E2E latency   p50=600ms  p95=")
    assert len(lines) == 6


def test_summary_without_samples() -> None:
    lines = format_summary(0, 3, [], [], [], []).splitlines()
    assert lines[1] == "Errors: 3"
    assert lines[3] == "LLM latency   p50=n/a  p95=n/a  p99=n/a"


def test_percentile_interpolates() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60), ("2m", 120), ("1m30s", 90), ("500ms", 0.5), ("10", 10), ("1h", 3600)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ten", "10x", "5s garbage"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("codec", "chunk_bytes"),
    [("pcm", 640), ("g711_ulaw", 160), ("g711_alaw", 160), ("opus", None)],
)
def test_encode_chunks_are_20_ms(codec: str, chunk_bytes: int | None) -> None:
    pcm = (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16)  # 1 s at 16 kHz
    chunks = encode_chunks(pcm, 16000, codec)
    assert len(chunks) == 50
    if chunk_bytes is not None:
        assert {len(c) for c in chunks} == {chunk_bytes}
    else:
        assert all(0 < len(c) < 400 for c in chunks)


# --- the tools against a server: an ASR error ends the call once; close codes come through


def _asr_error_app() -> web.Application:
    """A `/ws/call` that answers the caller's speech with an ASR `error` event and no
    transcript, as the bridge does when ASR fails, then keeps the line open."""

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # metadata
        sent = False
        async for msg in ws:
            if msg.type == WSMsgType.BINARY and not sent:
                sent = True
                await asyncio.sleep(0.3)
                await ws.send_json({"type": "error", "stage": "asr", "message": "timeout"})
        return ws

    app = web.Application()
    app.router.add_get("/ws/call", handle)
    return app


async def test_an_asr_error_ends_the_call_at_once_and_counts_once(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(write_wav(np.zeros(8000, np.int16), 16000))
    async with serve(_asr_error_app()) as base:
        started = time.monotonic()
        async with asyncio.timeout(30):  # the bug waited the clip + 60 s
            result = await run_load(base.replace("http", "ws") + "/ws/call", 1, 0.1, tmp_path)
    assert time.monotonic() - started < 20
    assert result.errors == 1, result.error_messages
    assert result.error_messages == ["asr: timeout"]
    assert result.calls_completed == 0


@pytest.fixture
async def door_url() -> AsyncIterator[str]:
    """The real WebSocket door (`bridge.doors.websocket`) in front of a recording opener."""
    settings = Settings(_env_file=None, sip_enabled=False)  # type: ignore[call-arg]
    app = web.Application()
    websocket.register(app, RecordingCalls(), settings, Metrics())
    async with serve(app) as base:
        yield base.replace("http", "ws") + websocket.PATH


async def test_call_reports_the_servers_close_code_and_reason(door_url: str) -> None:
    pcm = np.zeros(4000, np.int16)  # 4 kHz PCM: the door refuses the metadata (1008)
    with pytest.raises(CallFailed) as info:
        await call_client.call(door_url, pcm, 4000, timeout_s=20)
    assert info.value.code == 1008
    assert "sample_rate" in info.value.reason
    assert info.value.error.startswith("protocol: invalid metadata")
    assert "1008" in str(info.value) and "sample_rate" in str(info.value)


async def test_voicebridge_call_prints_the_close_and_exits_1(
    door_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = tmp_path / "low.wav"
    wav.write_bytes(write_wav(np.zeros(4000, np.int16), 4000))
    code = await asyncio.to_thread(main, ["call", door_url, str(wav), "--timeout", "20"])
    err = capsys.readouterr().err
    assert code == 1
    assert "voicebridge call: the server closed the call (1008 invalid metadata" in err
    assert "error event: protocol: invalid metadata" in err
