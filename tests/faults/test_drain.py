"""Deploys that drop no call: SIGTERM to a real `voicebridge serve` with live SIP calls.

The bridge runs as a process on stub backends (`tests.fakes.stub_backends`, served from
this test's loop) with SIP on; the callers are `bench/soak.py`'s UACs sending PCMU RTP
every 20 ms. On SIGTERM the bridge must admit nothing (INVITE 503 with
Retry-After, OPTIONS 503, `/readyz` 503), let every call finish the turn it is in (the
caller hears the reply), leave a caller who hangs up alone, send BYE to the rest once
`DRAIN_TIMEOUT_S` is over (not before), and exit 0. A second SIGTERM ends the drain at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.backend_servers import serve
from tests.fakes.fault_calls import load_soak
from tests.fakes.processes import serve_env, stop_process
from tests.fakes.stub_backends import stub_app, stub_env
from tests.sipdoor.helpers import rtp_range
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
CALLS = int(os.environ.get("DRAIN_TEST_CALLS", "10"))
"""Live calls at SIGTERM (the acceptance run uses 50: `DRAIN_TEST_CALLS=50`)."""


soak = load_soak()


@dataclass
class Served:
    """A running bridge process and where it listens."""

    process: subprocess.Popen[bytes]
    http: str
    sip_port: int
    log: Path


@asynccontextmanager
async def bridge(tmp_path: Path, **env: str) -> AsyncIterator[Served]:
    """`voicebridge serve` with SIP on stub backends; killed at the end if still running."""
    # an LLM that takes 600 ms to its first token: SIGTERM lands inside every turn
    async with serve(stub_app(200, 600, 20, 300)) as stubs:
        http_port, sip_port = free_port(), free_port()
        log = tmp_path / "bridge.log"
        process = soak._spawn(
            [sys.executable, "-m", "bridge", "serve"],
            tmp_path,  # no developer .env
            {
                **serve_env(http_port, sip_port, rtp_range(), base=os.environ),
                **stub_env(stubs),
                # the stubs serve any number at once: no call's turn queues behind another's
                "ASR_POOL_SIZE": str(CALLS),
                "LLM_POOL_SIZE": str(CALLS),
                "TTS_POOL_SIZE": str(CALLS),
                **env,
            },
            log,
        )
        served = Served(process, f"http://127.0.0.1:{http_port}", sip_port, log)
        try:
            async with httpx.AsyncClient() as http:
                deadline = time.monotonic() + 60
                while True:
                    assert process.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    try:
                        if (await http.get(served.http + "/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.2)
            yield served
        finally:
            if process.poll() is None:
                await asyncio.to_thread(stop_process, process, 5)


async def _exit_code(process: subprocess.Popen[bytes], within_s: float) -> int:
    return await asyncio.to_thread(process.wait, within_s)


async def _callers(sip_port: int, count: int) -> list[Any]:
    speech = soak.speech_frames("Hello, I would like to check my account balance please.")
    callers = [soak.Caller(sip_port, speech) for _ in range(count)]
    for caller in callers:
        await caller.open()
    statuses = await asyncio.gather(*(c.invite() for c in callers))
    assert statuses == [200] * count
    return callers


@pytest.mark.timeout(120)
async def test_sigterm_drains_live_sip_calls_then_byes_the_rest_and_exits_0(
    tmp_path: Path,
) -> None:
    drain_s = 5.0 if CALLS <= 10 else 10.0
    async with bridge(tmp_path, DRAIN_TIMEOUT_S=str(drain_s), SHUTDOWN_GRACE_S="4") as b:
        callers = await _callers(b.sip_port, CALLS)
        prober = soak.Caller(b.sip_port, [])
        await prober.open()
        try:
            turns = [c.say() for c in callers]
            # the sentence is over and the VAD has ended the utterance: each turn is in
            # progress (ASR 200 ms, then an LLM that takes 600 ms to its first token)
            spoke_until = max(t.spoke_until for t in turns)
            await asyncio.sleep(max(0.0, spoke_until - time.monotonic()) + 0.45)
            assert not any(t.answered_at for t in turns), "the reply came before SIGTERM"
            b.process.send_signal(signal.SIGTERM)
            sigterm = time.monotonic()
            await asyncio.sleep(0.3)

            # nothing new is admitted, and a proxy sees why
            assert await prober.invite() == 503
            assert prober.retry_after is not None and int(prober.retry_after) > 0
            assert (await prober.options()).status == 503
            async with httpx.AsyncClient() as http:
                assert (await http.get(b.http + "/readyz")).status_code == 503

            # a caller who hangs up during the drain (after the answer) is simply gone
            leaver = callers[0]
            async with asyncio.timeout(drain_s):
                await turns[0].answered.wait()
            assert await leaver.bye() == 200

            # the rest: BYE from the bridge once DRAIN_TIMEOUT_S is over, not before
            stayers = callers[1:]
            async with asyncio.timeout(drain_s + 10):
                await asyncio.gather(*(c.bye_received.wait() for c in stayers))
            assert not leaver.bye_received.is_set()
            for caller, turn in zip(callers, turns, strict=True):
                assert turn.answered_at is not None, f"{caller.call_id}: the turn was cut"
                assert turn.answered_at < sigterm + drain_s
            byes = [c.bye_at - sigterm for c in stayers]
            assert min(byes) >= drain_s - 0.5, byes
            assert max(byes) <= drain_s + 4, byes
            assert await _exit_code(b.process, 20) == 0
        finally:
            for caller in [*callers, prober]:
                caller.close()
    log = b.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert "draining" in log


@pytest.mark.timeout(90)
async def test_a_second_sigterm_ends_the_drain_at_once(tmp_path: Path) -> None:
    async with bridge(tmp_path, DRAIN_TIMEOUT_S="120", SHUTDOWN_GRACE_S="4") as b:
        callers = await _callers(b.sip_port, 3)
        try:
            b.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            assert not any(c.bye_received.is_set() for c in callers)  # still draining
            b.process.send_signal(signal.SIGTERM)
            second = time.monotonic()
            async with asyncio.timeout(10):
                await asyncio.gather(*(c.bye_received.wait() for c in callers))
            assert max(c.bye_at - second for c in callers) < 3.0
            assert await _exit_code(b.process, 15) == 0
            assert time.monotonic() - second < 8.0
        finally:
            for caller in callers:
                caller.close()
