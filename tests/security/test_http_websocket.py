"""`/ws/call` abuse (issue 12, finding 9): audio faster than real time, a client that never
reads, on an in-process `Bridge` with in-test backends."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import numpy as np
import pytest

from bridge.app import Bridge
from tests.fakes.bridge_process import (
    in_process_bridge,
    until,
    ws_call,
    ws_expect_close,
    ws_frame,
    ws_upgrade_request,
)
from tests.fakes.pipeline import FakeBackends, FakeTTS, silence, tone

pytestmark = pytest.mark.timeout(40)

META = json.dumps({"codec": "pcm", "sample_rate": 16000})


def active_gauge(bridge: Bridge) -> float | None:
    return bridge.metrics.registry.get_sample_value("pipeline_calls_active")


async def test_sixty_seconds_of_audio_in_one_second_is_refused() -> None:
    frame = bytes(4000)  # 125 ms of 16 kHz PCM
    flood: list[str | bytes] = [META, *[frame] * 480]  # 60 s of audio, as fast as possible
    async with in_process_bridge() as b:
        started = time.monotonic()
        record = await ws_expect_close(f"ws://127.0.0.1:{b.port}/ws/call", flood)
        assert time.monotonic() - started < 10
        assert record.close_code == 1008, record
        errors = [e for e in record.events if e["type"] == "error"]
        assert errors and errors[0]["stage"] == "protocol"
        assert "faster than real time" in errors[0]["message"]
        await until(lambda: b.calls.active == 0, 10)
        assert b.backends.asr.calls <= 3  # type: ignore[attr-defined]


async def test_a_caller_paced_at_real_time_is_not_refused() -> None:
    chunks = [
        c.tobytes()
        for c in np.array_split(
            np.concatenate(
                [silence(0.3), tone(0.6), silence(0.6), silence(1.5), tone(0.6), silence(0.6)]
            ),
            210,
        )
    ]
    async with in_process_bridge() as b:
        record = await ws_call(
            f"ws://127.0.0.1:{b.port}/ws/call", META, chunks, bytes(640), count=2, within_s=20
        )
    assert "error" not in record.types(), record.events
    assert record.types().count("metrics") == 2


def test_input_pacer_allows_a_burst_then_one_and_a_half_times_real_time() -> None:
    from bridge.doors.websocket import InputPacer

    pacer = InputPacer(rate=1.5, burst_s=2.0, now=0.0)
    assert pacer.admit(2.0, now=0.0)  # start-up burst
    assert not pacer.admit(0.1, now=0.0)
    pacer = InputPacer(rate=1.5, burst_s=2.0, now=0.0)
    for i in range(1, 600):  # 60 s at real time, in 100 ms frames
        assert pacer.admit(0.1, now=i * 0.1)
    for i in range(600, 700):  # then 1.4x real time: still fine
        assert pacer.admit(0.14, now=i * 0.1)
    assert not all(pacer.admit(0.2, now=i * 0.1) for i in range(700, 800))  # 2x is not


async def _raw_ws_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client with a tiny receive buffer that we never read from."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    writer.write(ws_upgrade_request(f"127.0.0.1:{port}"))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def test_a_client_that_never_reads_is_closed_and_its_call_freed() -> None:
    backends = FakeBackends(tts_piper=FakeTTS(seconds_per_sentence=120.0))  # 5.3 MB a WAV
    async with in_process_bridge(backends, ws_send_timeout_s=0.5) as b:
        _, writer = await _raw_ws_client(b.port)
        writer.write(ws_frame(0x1, META.encode()))
        speech = np.concatenate([silence(0.2), tone(0.6), silence(0.6)]).tobytes()

        async def stream() -> None:  # a caller that keeps talking but never reads
            i = 0
            while not writer.is_closing():
                chunk = speech[i : i + 640] if i < len(speech) else bytes(640)
                writer.write(ws_frame(0x2, chunk))
                i += 640
                await asyncio.sleep(0.02)

        sender = asyncio.create_task(stream())
        try:
            await until(lambda: backends.asr.calls >= 1, 10)
            # the bot answers, the client reads nothing: the call must end by itself
            await until(lambda: b.calls.active == 0, 20)
            assert active_gauge(b) == 0
        finally:
            sender.cancel()
            writer.close()
        assert (
            b.metrics.registry.get_sample_value(
                "pipeline_errors_total", {"stage": "protocol", "error_type": "send_timeout"}
            )
            == 1
        )
