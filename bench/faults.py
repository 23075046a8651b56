"""Backend faults (issue 13): what the faulted caller hears, and what a bystander feels.

    .venv/bin/python bench/faults.py [--turns 5] [--budget 1.0]

For each of ASR, LLM and TTS × down, blackhole, slow (3 × budget), reset and truncate
(`tests.fakes.faultproxy.FaultProxy`), a fresh in-process `Bridge` with SIP on and the real
HTTP clients, on stub backends at the spec's latencies (ASR 200 ms, LLM 150 ms to the first
token then 10 ms a token, TTS 200 ms; TTS is `tests.fakes.fault_calls.tts_app`, whose
fallback phrases are tones of their own pitch, so the caller's RTP tells which audio it
hears). Stage budgets are `--budget` (1 s, not the 8 s default, so "slow" takes 3 s).

- The faulted call is a SIP caller (`bench/soak.py`'s UAC, PCMU RTP every 20 ms) saying a
  0.6 s tone: fallback latency is the end of its speech to the first voiced RTP packet at
  the fallback's pitch; then the link goes back to `pass` and its next turn must be
  transcribed and answered (the reply's pitch) with no BYE.
- The bystander is a WebSocket call that the fault should not touch: for LLM and TTS faults
  a `transcribe_only` call (latency: end of speech to the transcript event); for ASR faults
  a conversation call (latency: end of speech to the first WAV frame) while WHISPER_URL
  lists two servers, the faulted one (through the proxy) and a healthy one: the shared
  backend's breaker moves every request to the healthy server once it opens (so the faulted
  call itself may be answered by the healthy server: "failover" in the table). Its turns
  are timed `--turns` times before the fault and `--turns` times during it.

The table: backend, fault, fallback latency, call up, next turn ok, the bystander's turn
latency p50 without and with the fault, the delta, and bystander turns that got an error.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    WsCaller,
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

ASR_MS, LLM_FIRST_MS, LLM_TOKEN_MS, TTS_MS = 200, 150, 10, 200


@dataclass
class Row:
    stage: str
    fault: str
    fallback_ms: float | None = None
    failover: bool = False
    call_up: bool = False
    next_ok: bool = False
    base: list[float] = field(default_factory=list)
    during: list[float] = field(default_factory=list)
    bystander_errors: int = 0

    @staticmethod
    def p50(values: list[float]) -> float:
        return statistics.median(values) * 1000 if values else float("nan")

    def text(self) -> str:
        if self.fallback_ms is not None:
            heard = f"{self.fallback_ms:.0f}"
        else:
            heard = "failover" if self.failover else "NONE"
        base, during = self.p50(self.base), self.p50(self.during)
        return (
            f"{self.stage:<4} {self.fault:<9} {heard:>9} {'yes' if self.call_up else 'NO':>7}"
            f" {'yes' if self.next_ok else 'NO':>9} {base:>8.0f} {during:>8.0f}"
            f" {during - base:>+7.0f} {self.bystander_errors:>7}"
        )


HEADER = (
    f"{'back':<4} {'fault':<9} {'fallback':>9} {'call up':>7} {'next turn':>9}"
    f" {'bys p50':>8} {'faulted':>8} {'delta':>7} {'bys err':>7}\n"
    f"{'':<4} {'':<9} {'ms':>9} {'':>7} {'ok':>9} {'ms':>8} {'p50 ms':>8} {'ms':>7} {'':>7}"
)


async def _bystander_turn(caller: WsCaller, kind: str) -> tuple[float | None, bool]:
    """One turn: (latency from the end of speech to the first `kind`, got an error)."""
    spoke = await caller.say()
    at = await caller.first(kind, spoke, within_s=8.0)
    errored = any(k == "error" and t > spoke for t, k, _ in caller.frames)
    if kind == "wav":  # let the turn end before the next one
        await caller.first("metrics", spoke, within_s=8.0)
    await asyncio.sleep(0.4)
    return (None if at is None else at - spoke), errored


async def _faulted_call(
    ear: SipEar, events: EventTap, stage: str, row: Row, budget_s: float
) -> None:
    caller: Any = ear.caller
    turn = caller.say()
    await asyncio.sleep(max(0.0, turn.spoke_until - time.monotonic()))
    heard = await ear.wait_first(turn.spoke_until, fallback_hz(stage), within_s=budget_s + 6.0)
    if heard is not None:
        row.fallback_ms = (heard - turn.spoke_until) * 1000
    else:
        row.failover = (
            await events.wait(caller.call_id, "transcript", after=turn.spoke_until, within_s=0)
            is not None
        )
    await ear.wait_quiet()


async def run_case(stage: str, fault: str, turns: int, budget_s: float) -> Row:
    row = Row(stage, fault)
    settings = sip_fault_settings(budget_s, log_level="WARNING")
    async with AsyncExitStack() as stack:
        stubs = await stack.enter_async_context(
            serve(stub_app(ASR_MS, LLM_FIRST_MS, LLM_TOKEN_MS, TTS_MS))
        )
        healthy_asr = await stack.enter_async_context(
            serve(stub_app(ASR_MS, LLM_FIRST_MS, LLM_TOKEN_MS, TTS_MS))
        )
        tts = await stack.enter_async_context(serve(tts_app(settings, TTS_MS)))
        upstream = {"asr": stubs, "llm": stubs, "tts": tts}
        proxies = {
            s: await stack.enter_async_context(
                FaultProxy("127.0.0.1", int(upstream[s].rsplit(":", 1)[1]))
            )
            for s in STAGES
        }
        asr_url = proxies["asr"].url + (f",{healthy_asr}" if stage == "asr" else "")
        backends = ProxiedBackends(
            WhisperCppASR(asr_url, timeout_s=5.0),
            OllamaLLM(proxies["llm"].url, "stub", timeout_s=5.0),
            HttpTTS("piper", proxies["tts"].url, timeout_s=5.0),
        )
        events = stack.enter_context(tap_sip_events())
        bridge = Bridge(settings, backends)
        await bridge.start()
        stack.push_async_callback(bridge.stop)
        session = await stack.enter_async_context(aiohttp.ClientSession())

        mode, kind = (
            ("conversation", "wav") if stage == "asr" else ("transcribe_only", "transcript")
        )
        ws = await stack.enter_async_context(
            session.ws_connect(f"ws://127.0.0.1:{bridge.port}/ws/call")
        )
        await ws.send_str(WsCaller.meta(mode))
        bystander = WsCaller(ws)
        running = asyncio.create_task(bystander.run())

        ear = SipEar.dial(settings.sip_port, tone_frames(0.6))
        caller: Any = ear.caller
        await caller.open()
        try:
            if await caller.invite() != 200:
                return row
            await asyncio.sleep(0.3)
            for _ in range(turns):
                latency, _errored = await _bystander_turn(bystander, kind)
                if latency is not None:
                    row.base.append(latency)

            proxies[stage].set(fault, **fault_params(stage, fault, budget_s))  # type: ignore[arg-type]
            faulted = asyncio.create_task(_faulted_call(ear, events, stage, row, budget_s))
            for _ in range(turns):
                latency, errored = await _bystander_turn(bystander, kind)
                row.bystander_errors += errored
                if latency is not None:
                    row.during.append(latency)
            await faulted
            proxies[stage].set("pass")

            mark = time.monotonic()
            turn = caller.say()
            await asyncio.sleep(max(0.0, turn.spoke_until - time.monotonic()))
            transcript = await events.wait(caller.call_id, "transcript", after=mark)
            reply = await ear.wait_first(turn.spoke_until, REPLY_HZ)
            row.next_ok = transcript is not None and reply is not None
            row.call_up = not caller.bye_received.is_set() and bridge.calls.active == 2
            if not caller.bye_received.is_set():
                await caller.bye()
        finally:
            caller.close()
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    return row


async def main_async(args: argparse.Namespace) -> list[Row]:
    print(
        f"faults: stubs ASR {ASR_MS} ms, LLM {LLM_FIRST_MS} ms + {LLM_TOKEN_MS} ms/token,"
        f" TTS {TTS_MS} ms; budgets {args.budget:g} s; bystander {args.turns} turns before"
        " and during each fault",
        flush=True,
    )
    print(HEADER, flush=True)
    rows = []
    for stage in STAGES:
        for fault in FAULT_NAMES:
            row = await run_case(stage, fault, args.turns, args.budget)
            rows.append(row)
            print(row.text(), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faults.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=5, help="bystander turns per phase")
    parser.add_argument("--budget", type=float, default=1.0, help="each stage's budget (s)")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
