"""Helpers for the SIP door tests: the SIPp runner module, door fixtures, audio measures."""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import random
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from bridge.config import Settings, load_settings
from bridge.doors.sip import SipDoor, SipService, start_sip
from bridge.tools.echo import EchoCalls
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
SIPP_DIR = REPO / "sipp"


def load_runner() -> ModuleType:
    """`sipp/run` (a script without .py) as a module."""
    if "sipp_run" in sys.modules:
        return sys.modules["sipp_run"]
    loader = importlib.machinery.SourceFileLoader("sipp_run", str(SIPP_DIR / "run"))
    spec = importlib.util.spec_from_loader("sipp_run", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sipp_run"] = module
    loader.exec_module(module)
    return module


def rtp_range() -> tuple[int, int]:
    """A random 1000-port RTP range, so parallel test runs rarely meet."""
    base = random.randrange(20000, 59000, 2)
    return base, base + 999


def door_settings(**overrides: Any) -> Settings:
    """Settings for a door on 127.0.0.1 with a free SIP port and a random RTP range."""
    low, high = rtp_range()
    values: dict[str, Any] = {
        "sip_host": "127.0.0.1",
        "sip_port": free_port(),
        "rtp_port_min": low,
        "rtp_port_max": high,
        "jitter_playout_ms": 60,
        "rtp_timeout_s": 30.0,
    }
    values.update(overrides)
    return load_settings(**values)


@asynccontextmanager
async def media_door(
    calls: EchoCalls | None = None, **overrides: Any
) -> AsyncIterator[tuple[SipDoor, EchoCalls, socket.socket]]:
    """A `SipDoor` driven without a UAS (settings from `door_settings(**overrides)`, a silent
    echo manager unless `calls` is given) and a caller-side UDP socket; both closed after."""
    calls = calls if calls is not None else EchoCalls(echo=False)
    door = SipDoor(door_settings(**overrides), calls)
    sock = udp_socket()
    try:
        yield door, calls, sock
    finally:
        await door.close()
        sock.close()


@dataclass
class EchoDoor:
    """A running SIP door wired to an echo call manager."""

    service: SipService
    calls: EchoCalls

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.service.port}"


@asynccontextmanager
async def echo_door(max_calls: int = 1000, **overrides: Any) -> AsyncIterator[EchoDoor]:
    """Start an echo door for one test; stop it (BYE, sockets closed) afterwards."""
    calls = EchoCalls(max_calls=max_calls)
    service = await start_sip(door_settings(**overrides), calls)
    try:
        yield EchoDoor(service, calls)
    finally:
        await asyncio.wait_for(service.stop(), 15)


async def run_sipp(target: str, **kwargs: Any) -> Any:
    """Run `sipp/run`'s `run()` in a thread (the door shares this event loop)."""
    runner = load_runner()
    kwargs.setdefault("local_ip", "127.0.0.1")
    kwargs.setdefault("timeout_s", 60)
    cfg = runner.RunConfig(target=target, **kwargs)
    return await asyncio.to_thread(runner.run, cfg)


async def sipp_clean(target: str, calls: int, **kwargs: Any) -> Any:
    """`calls` SIPp calls at once (`run_sipp`); every one must complete, none fail, nothing
    unexpected arrive."""
    result = await run_sipp(target, calls=calls, concurrency=calls, **kwargs)
    assert (result.calls_completed, result.calls_failed, result.unexpected) == (calls, 0, 0)
    return result


def frame_rms_db(
    pcm: npt.NDArray[np.int16], rate: int, frame_ms: int = 10
) -> npt.NDArray[np.float64]:
    """dBFS of each `frame_ms` frame."""
    n = rate * frame_ms // 1000
    frames = len(pcm) // n
    x = pcm[: frames * n].astype(np.float64).reshape(frames, n) / 32768.0
    return 10 * np.log10(np.mean(x * x, axis=1) + 1e-12)


def speech_span(pcm: npt.NDArray[np.int16], rate: int, floor_db: float = -45.0) -> tuple[int, int]:
    """First and last sample of the frames louder than `floor_db` (10 ms frames)."""
    loud = np.flatnonzero(frame_rms_db(pcm, rate) > floor_db)
    if loud.size == 0:
        return 0, 0
    n = rate // 100
    return int(loud[0] * n), int((loud[-1] + 1) * n)


def speech_stats(pcm: npt.NDArray[np.int16], rate: int) -> tuple[float, float]:
    """(duration in seconds, RMS in dBFS) of the speech span."""
    start, end = speech_span(pcm, rate)
    if end <= start:
        return 0.0, -120.0
    x = pcm[start:end].astype(np.float64) / 32768.0
    return (end - start) / rate, float(10 * np.log10(np.mean(x * x) + 1e-12))


def udp_socket() -> socket.socket:
    """A non-blocking UDP socket on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock
