"""The SIP door against real SIPp: speech, DTMF, CANCEL, TCP, 503, garbage RTP, 50 calls."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.sipdoor.helpers import REPO, echo_door, run_sipp, sipp_clean, speech_stats
from tests.support import espeak_pcm, free_port, wav_bytes, with_silence

pytestmark = pytest.mark.timeout(90)

SENTENCE = "Please check the status of my order."


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8 kHz speech WAV with a little silence around it."""
    pcm = with_silence(espeak_pcm(SENTENCE, rate=8000), 8000, 0.3, 0.5)
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    path.write_bytes(wav_bytes(pcm, 8000))
    return path


def _source_stats(path: Path) -> tuple[float, float]:
    import wave

    import numpy as np

    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return speech_stats(pcm, 8000)


@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
async def test_speech_call_reaches_the_call_and_is_echoed(speech_wav: Path, codec: str) -> None:
    media_port = free_port(socket.SOCK_DGRAM)
    async with echo_door() as door:
        result = await sipp_clean(
            door.target, 1, scenario="speech", codec=codec, wav=speech_wav, media_port=media_port
        )
        assert result.exit_code == 0
        (call,) = door.calls.calls.values()
        assert call.closed_reason == "bye"
        session = call.sink.session  # type: ignore[attr-defined]
        assert session.codec_info.name == codec.upper()
        assert session.send_target == ("127.0.0.1", media_port)  # back to SIPp's RTP port
        assert session.stats.malformed == 0 and session.stats.foreign == 0
        # the bridge heard the WAV: same speech length (±60 ms) and level (±1 dB)
        sent_s, sent_db = _source_stats(speech_wav)
        got_s, got_db = speech_stats(call.audio, 16000)
        print(
            f"{codec}: sent {sent_s:.3f} s {sent_db:.2f} dBFS, got {got_s:.3f} s {got_db:.2f} dBFS"
        )
        assert abs(got_s - sent_s) <= 0.06, (got_s, sent_s)
        assert abs(got_db - sent_db) <= 1.0, (got_db, sent_db)
        # and echoed it back as RTP to SIPp while the call lasted
        assert session.stats.audio_sent >= int(sent_s / 0.02) - 25
        assert "invite" in result.response_ms and "bye" in result.response_ms


@pytest.mark.parametrize("pcaps", ["shipped", "generated"])
async def test_dtmf_1_pound_gives_exactly_two_digits(pcaps: str) -> None:
    # "shipped": SIPp's own dtmf_2833_1.pcap / dtmf_2833_pound.pcap from Debian's package;
    # "generated": the equivalent captures sipp/rtppcap.py writes where they are missing
    dirs = None if pcaps == "shipped" else ()
    extra = {} if dirs is None else {"pcap_dirs": dirs}
    async with echo_door() as door:
        await sipp_clean(door.target, 1, scenario="dtmf", hold_ms=800, **extra)
        (call,) = door.calls.calls.values()
        assert call.digits == ["1", "#"]


async def test_cancel_before_answer_frees_the_call() -> None:
    async with echo_door() as door:
        sip_door = door.service.door
        resolve = sip_door._resolve
        entered: list[str] = []

        async def slow_resolve(call_id: str, host: str, **kwargs: Any) -> str:
            entered.append(call_id)
            await asyncio.sleep(1.0)  # the call is still being set up when CANCEL arrives
            return await resolve(call_id, host, **kwargs)

        sip_door._resolve = slow_resolve  # type: ignore[method-assign]
        await sipp_clean(door.target, 1, scenario="cancel")  # 487 to the INVITE, 200 to CANCEL
        for _ in range(50):
            if not sip_door.active:
                break
            await asyncio.sleep(0.05)
        assert len(entered) == 1  # the CANCEL really arrived mid-setup
        assert sip_door.active == {}
        assert door.calls.calls == {}  # the pipeline opens at ACK: a CANCELled call never has one


async def test_tcp_transport(speech_wav: Path) -> None:
    async with echo_door() as door:
        await sipp_clean(
            door.target, 2, scenario="speech", transport="tcp", wav=speech_wav, hold_ms=1500
        )
        assert len(door.calls.calls) == 2
        assert all(c.sink.info.transport == "tcp" for c in door.calls.calls.values())  # type: ignore[attr-defined]
        assert all(len(c.audio) > 16000 for c in door.calls.calls.values())


async def test_over_capacity_gets_503() -> None:
    async with echo_door(max_calls=1) as door:
        result = await run_sipp(
            door.target, scenario="load", calls=2, concurrency=2, rate=20, hold_ms=1500
        )
        assert result.calls_completed == 1 and result.calls_failed == 1
        # the slot is checked at the INVITE, without opening a call (UAS or door: 503)
        assert door.calls.rejected == 0 and len(door.calls.calls) == 1


async def test_garbage_rtp_is_counted_and_the_call_goes_on(speech_wav: Path) -> None:
    async with echo_door() as door:
        sipp = asyncio.ensure_future(sipp_clean(door.target, 1, scenario="speech", wav=speech_wav))
        for _ in range(200):
            if door.service.door.active:
                break
            await asyncio.sleep(0.02)
        (sip_call,) = door.service.door.active.values()
        port = sip_call.session.local_port
        junk = [b"", b"\x00", b"\xff" * 11, bytes(range(256)), b"\x80" + b"\x00" * 5, b"GET /"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(60):
                s.sendto(junk[i % len(junk)], ("127.0.0.1", port))
                await asyncio.sleep(0.005)
        await sipp  # every call completed
        stats = sip_call.session.stats
        assert stats.malformed + stats.foreign == 60
        sent_s, _ = _source_stats(speech_wav)
        got_s, _ = speech_stats(sip_call.handle.audio, 16000)  # type: ignore[union-attr]
        assert abs(got_s - sent_s) <= 0.06


async def test_fifty_concurrent_calls(speech_wav: Path) -> None:
    async with echo_door() as door:
        await sipp_clean(door.target, 50, scenario="load", rate=100, wav=speech_wav, hold_ms=3000)
        assert door.calls.peak == 50
        assert all(c.closed_reason == "bye" for c in door.calls.calls.values())
        assert all(len(c.audio) > 16000 for c in door.calls.calls.values())


async def test_runner_command_line_prints_the_summary() -> None:
    async with echo_door() as door:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "sipp" / "run"),
            "--target",
            door.target,
            "--scenario",
            "dtmf",
            "--calls",
            "1",
            "--concurrency",
            "1",
            "--codec",
            "pcma",
            "--transport",
            "tcp",
            "--local-ip",
            "127.0.0.1",
            "--hold-ms",
            "500",
            "--timeout",
            "30",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode()
        assert proc.returncode == 0, text
        assert "Calls completed: 1\nCalls failed: 0\n" in text
        assert "Retransmissions: 0" in text and "Unexpected messages: 0" in text
        assert re.search(r"SIP INVITE\s+response\s+p50=\d+ms\s+p95=\d+ms\s+p99=\d+ms", text)
        (call,) = door.calls.calls.values()
        assert call.sink.session.codec_info.name == "PCMA"  # type: ignore[attr-defined]
        assert call.digits == ["1", "#"]
