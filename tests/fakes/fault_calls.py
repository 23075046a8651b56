"""Pieces shared by `tests/faults/test_fallback_sip.py` and `bench/faults.py` (issue 13):
the fault matrix, a TTS double whose fallback phrases are tones of their own pitch, a SIP
caller's ear (every bot RTP packet, timestamped, with its RMS and pitch) and a tap on the
SIP door's events, and a WebSocket caller that streams real-time PCM.

The TTS double answers the two fallback texts (`FALLBACK_REPEAT_TEXT`,
`FALLBACK_TROUBLE_TEXT`) with a 1000 Hz and a 600 Hz tone and anything else (the reply)
with a 220 Hz tone, so a caller can tell from the RTP alone *which* audio it hears.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
from aiohttp import web

from bridge.config import Settings
from media.codecs import codec_for
from media.wav import write_wav
from tests.sipdoor.helpers import rtp_range
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]

STAGES = ("asr", "llm", "tts")
FAULT_NAMES = ("down", "blackhole", "slow", "reset", "truncate")
MID_STREAM = {"reset", "truncate"}

REPLY_HZ = 220.0
TROUBLE_HZ = 600.0
REPEAT_HZ = 1000.0
TTS_RATE = 22050
CLIP_S = 0.6
SPEECH_RMS = 300.0
"""A bot packet louder than this (int16 RMS) is voiced, not comfort silence."""
PITCH_TOLERANCE_HZ = 80.0


def sip_fault_settings(budget_s: float, **overrides: Any) -> Settings:
    """Settings of an in-process bridge with the SIP door on loopback ports and every stage
    budget at `budget_s` (speculative ASR off, so each turn is one ASR request)."""
    low, high = rtp_range()
    values: dict[str, Any] = {
        "gateway_host": "127.0.0.1",
        "gateway_port": free_port(),
        "sip_enabled": True,
        "sip_host": "127.0.0.1",
        "sip_port": free_port(),
        "rtp_port_min": low,
        "rtp_port_max": high,
        "asr_timeout_s": budget_s,
        "llm_first_token_timeout_s": budget_s,
        "tts_timeout_s": budget_s,
        "asr_speculative_silence_ms": 0,
        "shutdown_grace_s": 2.0,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def fault_params(stage: str, fault: str, budget_s: float) -> dict[str, float]:
    """The `FaultProxy.set` parameters of `fault` on `stage` (as the WebSocket test)."""
    table: dict[str, dict[str, float]] = {
        "down": {},
        "blackhole": {},
        "slow": {"delay_s": 3 * budget_s},
        "reset": {"after_bytes": 60},
        "truncate": {"after_bytes": 60},
    }
    params = table[fault]
    if stage == "llm" and fault in MID_STREAM:
        params = {"after_bytes": 400}  # headers and the first token lines, then cut
    return params


def fallback_hz(stage: str) -> float:
    """The pitch of the fallback a failure of `stage` plays (ASR: repeat, else trouble)."""
    return REPEAT_HZ if stage == "asr" else TROUBLE_HZ


def _tone_wav(hz: float) -> bytes:
    t = np.arange(int(TTS_RATE * CLIP_S)) / TTS_RATE
    return write_wav((np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16), TTS_RATE)


def tts_app(settings: Settings, latency_ms: float) -> web.Application:
    """A `/synthesize` service (HttpTTS's wire format) whose clips differ by pitch: the
    repeat fallback 1000 Hz, the trouble fallback 600 Hz, anything else 220 Hz."""
    clips = {
        settings.fallback_repeat_text: _tone_wav(REPEAT_HZ),
        settings.fallback_trouble_text: _tone_wav(TROUBLE_HZ),
    }
    reply = _tone_wav(REPLY_HZ)

    async def synthesize(request: web.Request) -> web.Response:
        text = str((await request.json()).get("text", ""))
        await asyncio.sleep(latency_ms / 1000)
        return web.Response(body=clips.get(text, reply), content_type="audio/wav")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.add_routes([web.post("/synthesize", synthesize), web.get("/healthz", ok)])
    return app


def load_soak() -> Any:
    """`bench/soak.py` (a script) as a module, for its SIP `Caller` (as `test_drain`)."""
    if "bench_soak" in sys.modules:
        return sys.modules["bench_soak"]
    spec = importlib.util.spec_from_file_location("bench_soak", REPO / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_soak"] = module
    spec.loader.exec_module(module)
    return module


def tone_frames(seconds: float = 0.6, hz: float = 440.0) -> list[bytes]:
    """A -10 dBFS 8 kHz tone (loud enough for the energy VAD) as 20 ms PCMU payloads."""
    t = np.arange(int(seconds * 8000)) / 8000
    pcm = (32768.0 * 10 ** (-10 / 20) * np.sqrt(2) * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    encoder = codec_for("pcmu").encoder()
    return [encoder.encode(pcm[i : i + 160]) for i in range(0, pcm.size - 159, 160)]


def pitch(pcm: npt.NDArray[np.float64], rate: int = 8000) -> float:
    """The dominant frequency of one packet (5 Hz bins)."""
    n = 1600
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size), n))
    return float(np.argmax(spectrum[1:]) + 1) * rate / n


@dataclass
class Heard:
    """One bot RTP packet at the caller."""

    at: float
    rms: float
    hz: float


@dataclass
class SipEar:
    """A `bench/soak.py` SIP caller that also keeps every bot PCMU packet it hears."""

    caller: Any
    heard: list[Heard] = field(default_factory=list)

    @classmethod
    def dial(cls, sip_port: int, speech: list[bytes]) -> SipEar:
        """A caller (not yet open) whose RTP handler records into the ear."""
        caller = load_soak().Caller(sip_port, speech)
        ear = cls(caller)
        decoder = codec_for("pcmu").decoder()
        original = caller._on_rtp

        def on_rtp(data: bytes) -> None:
            original(data)
            if len(data) <= 12 or data[1] & 0x7F != 0:
                return
            skip = 12 + 4 * (data[0] & 0x0F)
            if data[0] & 0x10 and len(data) >= skip + 4:  # header extension
                skip += 4 + 4 * struct.unpack("!H", data[skip + 2 : skip + 4])[0]
            pcm = np.asarray(decoder.decode(data[skip:]), np.float64)
            rms = float(np.sqrt(np.mean(pcm * pcm))) if pcm.size else 0.0
            hz = pitch(pcm) if rms >= SPEECH_RMS else 0.0
            ear.heard.append(Heard(time.monotonic(), rms, hz))

        caller._on_rtp = on_rtp  # bound into the RTP endpoint by `open()`
        return ear

    def first(self, after: float, hz: float | None = None) -> float | None:
        """When the first voiced packet (of pitch `hz`, if given) came after `after`."""
        for packet in self.heard:
            if packet.at <= after or packet.rms < SPEECH_RMS:
                continue
            if hz is None or abs(packet.hz - hz) <= PITCH_TOLERANCE_HZ:
                return packet.at
        return None

    async def wait_first(
        self, after: float, hz: float | None = None, within_s: float = 10.0
    ) -> float | None:
        """`first(after, hz)`, waiting up to `within_s` for it."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if (found := self.first(after, hz)) is not None:
                return found
            await asyncio.sleep(0.01)
        return self.first(after, hz)

    async def wait_quiet(self, quiet_s: float = 0.3, within_s: float = 10.0) -> None:
        """Until no voiced packet has come for `quiet_s` (the bot has stopped talking)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            voiced = [p.at for p in self.heard if p.rms >= SPEECH_RMS]
            if not voiced or time.monotonic() - voiced[-1] >= quiet_s:
                return
            await asyncio.sleep(0.02)


@dataclass
class EventTap:
    """What the SIP door's sinks were sent (SIP has no event channel: `_Sink.send_event`
    only logs), recorded per SIP Call-ID with the time it was sent."""

    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    def of(self, call_id: str, kind: str, after: float = 0.0) -> list[dict[str, Any]]:
        return [e for t, c, e in self.events if c == call_id and e["type"] == kind and t > after]

    async def wait(
        self, call_id: str, kind: str, after: float = 0.0, within_s: float = 10.0
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if found := self.of(call_id, kind, after):
                return found[0]
            await asyncio.sleep(0.01)
        found = self.of(call_id, kind, after)
        return found[0] if found else None


@contextmanager
def tap_sip_events() -> Iterator[EventTap]:
    """Record every event the SIP door's sinks get, while the block runs."""
    from bridge.doors import sip

    tap = EventTap()
    original = sip._Sink.send_event

    async def send_event(self: Any, event: Any) -> None:
        tap.events.append((time.monotonic(), self._call_id, dict(event)))
        await original(self, event)

    sip._Sink.send_event = send_event  # type: ignore[method-assign]
    try:
        yield tap
    finally:
        sip._Sink.send_event = original  # type: ignore[method-assign]


# ----------------------------------------------------------------------- WebSocket

WS_CHUNK = 320  # 20 ms of 16 kHz PCM


def _pcm16k_tone(seconds: float, hz: float = 440.0) -> npt.NDArray[np.int16]:
    t = np.arange(int(seconds * 16000)) / 16000
    return (32768.0 * 10 ** (-10 / 20) * np.sqrt(2) * np.sin(2 * np.pi * hz * t)).astype(np.int16)


@dataclass
class WsCaller:
    """A WebSocket caller (`/ws/call`, 16 kHz PCM) at real time; keeps what it receives."""

    ws: aiohttp.ClientWebSocketResponse
    frames: list[tuple[float, str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queue: list[bytes] = []
        self._spoken = asyncio.Event()

    @staticmethod
    def meta(mode: str) -> str:
        return json.dumps({"codec": "pcm", "sample_rate": 16000, "mode": mode})

    async def say(self, seconds: float = 0.6) -> float:
        """Speak `seconds` of tone at real time; when the last chunk went out."""
        self._spoken.clear()
        pcm = _pcm16k_tone(seconds)
        self._queue.extend(pcm[i : i + WS_CHUNK].tobytes() for i in range(0, pcm.size, WS_CHUNK))
        await self._spoken.wait()
        return time.monotonic()

    async def first(self, kind: str, after: float, within_s: float = 10.0) -> float | None:
        """When the first frame of `kind` ("wav" or an event type) came after `after`."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for at, k, _ in self.frames:
                if k == kind and at > after:
                    return at
            await asyncio.sleep(0.01)
        return None

    async def run(self) -> None:
        async def send() -> None:
            start, i = time.monotonic(), 0
            quiet = bytes(WS_CHUNK * 2)
            while not self.ws.closed:
                await self.ws.send_bytes(self._queue.pop(0) if self._queue else quiet)
                if not self._queue:
                    self._spoken.set()
                i += 1
                await asyncio.sleep(max(0.0, start + i * 0.02 - time.monotonic()))

        async def receive() -> None:
            async for msg in self.ws:
                now = time.monotonic()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(msg.data)
                    self.frames.append((now, str(event["type"]), event))
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self.frames.append((now, "wav", msg.data))

        await asyncio.gather(send(), receive())
