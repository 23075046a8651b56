"""The caller always hears something (issue 13), over the real SIP door: a SIP caller whose
call's ASR, LLM or TTS link fails through the fault proxy hears the fallback phrase in its
RTP within the stage's budget, the dialog stays up (no BYE), and its next turn is
transcribed and answered once the link is back.

The bridge runs in-process with SIP on and the real HTTP clients (`WhisperCppASR`,
`OllamaLLM`, `HttpTTS`), each through its own `FaultProxy`: ASR and LLM to the wire-exact
stub backends, TTS to a `/synthesize` double whose fallback phrases are tones of their own
pitch (`tests.fakes.fault_calls`), so the check is on what the caller hears: voiced PCMU
packets (RMS above comfort silence) at the fallback's pitch. The caller is `bench/soak.py`'s
UAC (INVITE with PCMU SDP, ACK, RTP every 20 ms, BYE) saying a 0.6 s tone; the stub ASR
transcribes anything as "What time does the store open tomorrow?". SIP has no event
channel, so the door's events (error, transcript, metrics) are read by wrapping its sink.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.backends.asr import WhisperCppASR
from bridge.backends.llm import OllamaLLM
from bridge.backends.tts import HttpTTS
from tests.fakes.backend_servers import serve
from tests.fakes.fault_calls import (
    FAULT_NAMES,
    REPLY_HZ,
    STAGES,
    EventTap,
    SipEar,
    fallback_hz,
    fault_params,
    sip_fault_settings,
    tap_sip_events,
    tone_frames,
    tts_app,
)
from tests.fakes.faultproxy import FaultProxy
from tests.fakes.stub_backends import stub_app
from tests.faults.test_fallback_websocket import ProxiedBackends

pytestmark = pytest.mark.timeout(60)

BUDGET_S = 1.0
VAD_TIMEOUT_S = 0.3  # VAD_SILENCE_TIMEOUT_MS: the utterance ends this long after speech
JITTER_S = 0.06  # JITTER_PLAYOUT_MS: caller audio waits this long in the door
MARGIN_S = 1.5  # for this loaded 2-core machine (as the WebSocket test)


@dataclass
class Rig:
    bridge: Bridge
    proxies: dict[str, FaultProxy]
    events: EventTap
    sip_port: int


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    settings = sip_fault_settings(BUDGET_S, jitter_playout_ms=int(JITTER_S * 1000))
    async with AsyncExitStack() as stack:
        stubs = await stack.enter_async_context(serve(stub_app(10, 10, 5, 10)))
        tts = await stack.enter_async_context(serve(tts_app(settings, 10)))
        upstream = {"asr": stubs, "llm": stubs, "tts": tts}
        proxies = {
            stage: await stack.enter_async_context(
                FaultProxy("127.0.0.1", int(upstream[stage].rsplit(":", 1)[1]))
            )
            for stage in STAGES
        }
        backends = ProxiedBackends(
            WhisperCppASR(proxies["asr"].url, timeout_s=5.0),
            OllamaLLM(proxies["llm"].url, "stub", timeout_s=5.0),
            HttpTTS("piper", proxies["tts"].url, timeout_s=5.0),
        )
        events = stack.enter_context(tap_sip_events())
        bridge = Bridge(settings, backends)
        await bridge.start()
        try:
            yield Rig(bridge, proxies, events, settings.sip_port)
        finally:
            await bridge.stop()


@pytest.mark.parametrize("fault", FAULT_NAMES)
@pytest.mark.parametrize("stage", STAGES)
async def test_sip_caller_hears_the_fallback_in_time_and_the_call_goes_on(
    rig: Rig, stage: str, fault: str
) -> None:
    ear = SipEar.dial(rig.sip_port, tone_frames(0.6))
    caller: Any = ear.caller
    await caller.open()
    try:
        assert await caller.invite() == 200
        call_id = caller.call_id
        await asyncio.sleep(0.3)

        # the faulty turn: the fallback's pitch at the caller, within the budget
        rig.proxies[stage].set(fault, **fault_params(stage, fault, BUDGET_S))  # type: ignore[arg-type]
        turn = caller.say()
        await asyncio.sleep(max(0.0, turn.spoke_until - time.monotonic()))
        spoke = turn.spoke_until
        heard = await ear.wait_first(spoke, fallback_hz(stage), within_s=BUDGET_S + 8.0)
        error = await rig.events.wait(call_id, "error", within_s=5.0)
        rig.proxies[stage].set("pass")
        assert heard is not None, f"no fallback heard: {rig.events.events}"
        heard_s = heard - spoke
        if stage != "asr":  # the reply ends (its metrics) once the fallback is queued
            assert await rig.events.wait(call_id, "metrics", after=spoke) is not None
        await ear.wait_quiet()

        # the next turn, the link back: transcribed, answered in the reply's voice, measured
        mark = time.monotonic()
        turn = caller.say()
        await asyncio.sleep(max(0.0, turn.spoke_until - time.monotonic()))
        transcript = await rig.events.wait(call_id, "transcript", after=mark)
        reply = await ear.wait_first(turn.spoke_until, REPLY_HZ)
        done = await rig.events.wait(call_id, "metrics", after=mark)

        assert not caller.bye_received.is_set(), "the bridge hung up"
        assert rig.bridge.calls.active == 1
        assert await caller.bye() == 200
    finally:
        caller.close()

    assert error is not None and error["stage"] == stage, rig.events.events
    assert "http" not in error["message"] and "127.0.0.1" not in error["message"]
    # stages before the faulty one take a few ms on the stub backends
    assert heard_s < JITTER_S + VAD_TIMEOUT_S + BUDGET_S + 0.3 + MARGIN_S, heard_s
    assert transcript is not None and "store" in transcript["text"], rig.events.events
    assert reply is not None, "no reply heard on the next turn"
    assert done is not None and done["tts_ms"] is not None, done
