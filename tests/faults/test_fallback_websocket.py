"""The caller always hears something (issue 13): a WebSocket call whose ASR, LLM or TTS
link fails through the fault proxy gets the fallback phrase as a WAV frame within the
stage's budget, stays up, and its next turn works once the link is back.

The bridge runs in-process with the real HTTP clients (`WhisperCppASR`, `OllamaLLM`,
`HttpTTS`), each talking to the wire-exact stub backends through its own `FaultProxy`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import pytest

from bridge.app import Bridge
from bridge.backends.asr import WhisperCppASR
from bridge.backends.base import TTS
from bridge.backends.llm import OllamaLLM
from bridge.backends.tts import HttpTTS
from tests.fakes.backend_servers import serve
from tests.fakes.bridge_process import in_process_bridge
from tests.fakes.fault_calls import WsCaller
from tests.fakes.faultproxy import FaultProxy
from tests.fakes.pipeline import silence, tone
from tests.fakes.stub_backends import stub_app

BUDGET_S = 1.0
VAD_TIMEOUT_S = 0.3  # VAD_SILENCE_TIMEOUT_MS: the utterance ends this long after speech
MARGIN_S = 1.5  # for this loaded 2-core machine
CHUNK = 320  # 20 ms of 16 kHz PCM
META = json.dumps({"codec": "pcm", "sample_rate": 16000, "mode": "conversation"})

FAULTS: dict[str, dict[str, Any]] = {
    "down": {},
    "blackhole": {},
    "slow": {"delay_s": 3 * BUDGET_S},
    "reset": {"after_bytes": 60},
    "truncate": {"after_bytes": 60},
}
MID_STREAM = {"reset", "truncate"}  # the LLM's stream is cut after its first lines


@dataclass
class ProxiedBackends:
    """ASR, LLM and TTS clients, each through its own proxy to the stub backends."""

    asr: WhisperCppASR
    llm: OllamaLLM
    piper: HttpTTS
    extra: list[Any] = field(default_factory=list)

    @property
    def tts(self) -> Mapping[str, TTS]:
        return {"piper": self.piper}

    async def warmup(self) -> None:
        return None

    async def aclose(self) -> None:
        for backend in (self.asr, self.llm, self.piper):
            await backend.aclose()


@dataclass
class Rig:
    bridge: Bridge
    proxies: dict[str, FaultProxy]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(serve(stub_app(10, 10, 5, 10)))
        port = int(url.rsplit(":", 1)[1])
        proxies = {
            stage: await stack.enter_async_context(FaultProxy("127.0.0.1", port))
            for stage in ("asr", "llm", "tts")
        }
        backends = ProxiedBackends(
            WhisperCppASR(proxies["asr"].url, timeout_s=5.0),
            OllamaLLM(proxies["llm"].url, "stub", timeout_s=5.0),
            HttpTTS("piper", proxies["tts"].url, timeout_s=5.0),
        )
        bridge = await stack.enter_async_context(
            in_process_bridge(
                backends,
                asr_timeout_s=BUDGET_S,
                llm_first_token_timeout_s=BUDGET_S,
                tts_timeout_s=BUDGET_S,
                asr_speculative_silence_ms=0,
            )
        )
        yield Rig(bridge, proxies)


@dataclass
class Caller(WsCaller):
    """The shared real-time WebSocket caller, speaking the test's own tone and finding
    frames by index."""

    speech_sent_at: float = 0.0

    async def say(self, seconds: float = 0.6) -> float:
        """Speak `seconds` of tone at real time (then silence keeps flowing)."""
        self._spoken.clear()
        self._queue.extend(_chunks(np.concatenate([tone(seconds), silence(0.02)])))
        await self._spoken.wait()
        self.speech_sent_at = time.monotonic()
        return self.speech_sent_at

    async def wait_for(self, kind: str, after: int = 0, within_s: float = 10.0) -> int:
        """Index of the first frame of `kind` ("wav" or an event type) from `after` on."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for i, (_, k, _) in enumerate(self.frames[after:], after):
                if k == kind:
                    return i
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {kind!r} after frame {after}: {[k for _, k, _ in self.frames]}")


def _chunks(pcm: np.ndarray[Any, Any]) -> list[bytes]:
    return [pcm[i : i + CHUNK].tobytes() for i in range(0, pcm.size, CHUNK)]


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("stage", ["asr", "llm", "tts"])
async def test_fault_plays_the_fallback_in_time_and_the_call_goes_on(
    rig: Rig, stage: str, fault: str
) -> None:
    params = dict(FAULTS[fault])
    if stage == "llm" and fault in MID_STREAM:
        params["after_bytes"] = 400  # headers and the first token lines, then cut
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://127.0.0.1:{rig.bridge.port}/ws/call") as ws,
    ):
        await ws.send_str(META)
        caller = Caller(ws)
        running = asyncio.create_task(caller.run())
        try:
            await asyncio.sleep(0.3)
            rig.proxies[stage].set(fault, **params)  # type: ignore[arg-type]
            await caller.say()
            error = await caller.wait_for("error", within_s=BUDGET_S + 8.0)
            fallback = await caller.wait_for("wav", after=error)
            heard_s = caller.frames[fallback][0] - caller.speech_sent_at
            event = caller.frames[error][2]
            rig.proxies[stage].set("pass")
            if stage != "asr":
                await caller.wait_for("metrics", after=error)
            # the next turn: transcript, spoken reply, metrics
            mark = len(caller.frames)
            await caller.say()
            transcript = await caller.wait_for("transcript", after=mark)
            await caller.wait_for("wav", after=transcript)
            done = await caller.wait_for("metrics", after=transcript)
            assert not ws.closed
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    assert event["stage"] == stage
    assert "http" not in event["message"] and "127.0.0.1" not in event["message"]
    # stages before the faulty one take a few ms on the stub backends
    assert heard_s < VAD_TIMEOUT_S + BUDGET_S + 0.3 + MARGIN_S, heard_s
    assert caller.frames[done][2]["tts_ms"] is not None
