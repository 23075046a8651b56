"""SIPp speaks to the real pipeline through the SIP door; the bot's RTP answer is heard.

Real embedded ASR (faster-whisper tiny.en) and TTS (Piper); the LLM is the in-test server
that speaks Ollama's exact `/api/chat` wire format, so the reply text is known. The RTP the
door sends back to SIPp is recorded at the socket, decoded and transcribed by the same ASR.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.backends import build_backends
from bridge.doors.sip import start_sip
from bridge.metrics import Metrics
from bridge.pipeline.manager import CallManager
from media.g711 import ulaw_decode
from media.resample import resample
from media.rtp import parse_rtp
from tests.fakes.backend_servers import OllamaDouble, serve
from tests.sipdoor.helpers import door_settings, run_sipp
from tests.support import espeak_pcm, wav_bytes, with_silence, word_error_rate

pytestmark = pytest.mark.timeout(120)

REPLY = "Your order has shipped and will arrive tomorrow."


class Tap:
    """Wraps an RTP socket's transport and keeps a copy of every datagram sent."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append(data)
        self.inner.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_sipp_caller_hears_the_bot_reply(tmp_path: Path) -> None:
    wav = tmp_path / "question.wav"
    question = with_silence(espeak_pcm("Where is my order?", rate=8000), 8000, 0.3, 0.3)
    wav.write_bytes(wav_bytes(question, 8000))
    ollama = OllamaDouble(tokens=[w + " " for w in REPLY.split()])
    async with serve(ollama.app()) as url:
        settings = door_settings(
            llm_backend="ollama", ollama_url=url, asr_backend="embedded", tts_backend="embedded"
        )
        backends = build_backends(settings)
        await backends.warmup()
        metrics = Metrics()
        manager = CallManager(settings, backends, metrics)
        service = await start_sip(settings, manager, metrics)
        try:
            sipp = asyncio.ensure_future(
                run_sipp(
                    f"127.0.0.1:{service.port}",
                    scenario="speech",
                    calls=1,
                    concurrency=1,
                    wav=wav,
                    hold_ms=9000,
                )
            )
            for _ in range(300):
                if service.door.active:
                    break
                await asyncio.sleep(0.01)
            (call,) = service.door.active.values()
            tap = Tap(call.session.transport)
            call.session.transport = tap  # type: ignore[assignment]
            result = await sipp
            assert (result.calls_completed, result.calls_failed) == (1, 0)
            assert ollama.requests, "the LLM was never asked: the caller was not heard"
            # the RTP the bridge sent: decode, keep it at 16 kHz, transcribe
            packets = [parse_rtp(d) for d in tap.sent]
            assert {p.payload_type for p in packets} == {0}
            pcm8k = np.concatenate([ulaw_decode(p.payload) for p in packets])
            heard = await backends.asr.transcribe(resample(pcm8k, 8000, 16000))
            assert heard.text.strip(), "the bot's RTP was silent"
            assert word_error_rate(REPLY, heard.text) <= 0.35, heard.text
            print(f"caller heard: {heard.text!r}")
            received = metrics.registry.get_sample_value(
                "rtp_packets_received_total", {"door": "sip"}
            )
            assert received is not None and received > 50
        finally:
            await service.stop()
            await manager.shutdown(2.0)
            await backends.aclose()
