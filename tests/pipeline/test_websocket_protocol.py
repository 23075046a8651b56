"""`/ws/call` protocol errors, the call limit and graceful shutdown, on an in-process
`Bridge` with in-test backends (the protocol does not depend on the models)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from bridge.app import Bridge
from tests.fakes.bridge_process import (
    CallRecord,
    in_process_bridge,
    until,
    ws_call,
    ws_expect_close,
)
from tests.fakes.pipeline import silence, tone

MAX_FRAME = 4096


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    async with in_process_bridge(
        max_concurrent_calls=2, ws_max_frame_bytes=MAX_FRAME, shutdown_grace_s=3.0
    ) as b:
        yield b


def url(b: Bridge) -> str:
    return f"ws://127.0.0.1:{b.port}/ws/call"


PCM_META = json.dumps({"codec": "pcm", "sample_rate": 16000, "mode": "conversation"})


def assert_refused(record: CallRecord, code: int, stage: str, words: str) -> None:
    assert record.close_code == code, record
    assert len(record.events) == 1, record.events
    event = record.events[0]
    assert event["type"] == "error" and event["stage"] == stage
    assert words in event["message"], event


@pytest.mark.parametrize(
    ("frames", "code", "words"),
    [
        (["{not json"], 1008, "not valid JSON"),
        (["[1, 2]"], 1008, "JSON object"),
        ([json.dumps({"codec": "speex"})], 1003, "unknown codec 'speex'"),
        ([json.dumps({"sample_rate": 16000})], 1008, "codec"),
        ([json.dumps({"codec": "g711_ulaw", "sample_rate": 16000})], 1008, "8000"),
        ([json.dumps({"codec": "pcm", "mode": "karaoke"})], 1008, "mode"),
        ([json.dumps({"codec": "pcm", "tts_engine": "coqui"})], 1008, "coqui"),
        ([b"\x00\x01" * 160], 1008, "JSON metadata"),
        ([PCM_META, b"\x00" * (MAX_FRAME + 2)], 1008, "WS_MAX_FRAME_BYTES"),
        ([PCM_META, b"\x00" * 640, "hello"], 1003, "text frame"),
        (["[" * 100000], 1008, "metadata is too large"),
        (["[" * 2000 + "]" * 2000], 1008, "nested too deeply"),
        ([json.dumps({"codec": "pcm", "pad": " " * 5000})], 1008, "metadata is too large"),
    ],
    ids=[
        "bad-json",
        "not-object",
        "unknown-codec",
        "missing-codec",
        "g711-rate",
        "bad-mode",
        "absent-tts-engine",
        "binary-first",
        "oversized-frame",
        "text-instead-of-binary",
        "nested-json-100k",
        "nested-json-under-cap",
        "metadata-over-4k",
    ],
)
async def test_protocol_errors(bridge: Bridge, frames: list[Any], code: int, words: str) -> None:
    record = await ws_expect_close(url(bridge), frames)
    assert_refused(record, code, "protocol", words)
    await until(lambda: bridge.calls.active == 0, 5.0)


def utterance_chunks() -> list[bytes]:
    pcm = np.concatenate([silence(0.2), tone(0.6), silence(0.5)])
    return [pcm[i : i + 320].tobytes() for i in range(0, pcm.size, 320)]


async def test_bad_connections_leave_a_good_call_alone(bridge: Bridge) -> None:
    good = asyncio.create_task(ws_call(url(bridge), PCM_META, utterance_chunks(), bytes(640)))
    await asyncio.sleep(0.2)
    for frames in (["{oops"], [json.dumps({"codec": "gsm"})], [PCM_META, "text"]):
        await ws_expect_close(url(bridge), frames)
    record = await good
    assert record.types()[0] == "transcript"
    assert record.types()[-1] == "metrics"
    assert record.wavs
    assert "error" not in record.types()


async def test_over_the_call_limit_closes_1013(bridge: Bridge) -> None:
    holders = [
        asyncio.create_task(
            ws_call(url(bridge), PCM_META, [], bytes(640), until="never", within_s=3)
        )
        for _ in range(2)
    ]
    await until(lambda: bridge.calls.active == 2, 5.0)
    record = await ws_expect_close(url(bridge), [PCM_META])
    assert_refused(record, 1013, "capacity", "MAX_CONCURRENT_CALLS")
    for holder in holders:
        with pytest.raises(TimeoutError):
            await holder
    await until(lambda: bridge.calls.active == 0, 5.0)
    assert (
        bridge.metrics.registry.get_sample_value(
            "pipeline_calls_rejected_total", {"door": "websocket", "reason": "full"}
        )
        == 1
    )


async def test_shutdown_closes_calls_with_1001(bridge: Bridge) -> None:
    call = asyncio.create_task(
        ws_call(url(bridge), PCM_META, [], bytes(640), until="never", within_s=10)
    )
    await until(lambda: bridge.calls.active == 1, 5.0)
    started = time.monotonic()
    await bridge.stop()
    assert time.monotonic() - started < bridge.settings.shutdown_grace_s
    record = await call
    assert record.close_code == 1001
    assert bridge.calls.active == 0


async def test_metrics_and_health_endpoints(bridge: Bridge) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{bridge.port}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
        async with session.get(f"http://127.0.0.1:{bridge.port}/healthz") as r:
            assert r.status == 200
        async with session.get(f"http://127.0.0.1:{bridge.port}/readyz") as r:
            assert r.status == 200
            body = await r.json()
    assert "pipeline_calls_active 0.0" in text
    assert body["ready"] is True and body["backends"]["asr"]["backend"] == "fake-asr"


async def test_readyz_is_503_when_a_backend_is_down(bridge: Bridge) -> None:
    import aiohttp

    backends: Any = bridge.backends

    async def down() -> bool:
        return False

    backends.llm.ready = down
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{bridge.port}/readyz") as r:
            assert r.status == 503
            body = await r.json()
    assert body["backends"]["llm"]["ready"] is False
    assert body["backends"]["asr"]["ready"] is True
