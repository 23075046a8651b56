"""The WebRTC door against a real aiortc peer (the browser tests use Chromium).

The pipeline side is a recording `CallOpener`: these tests check the door (signalling, media
conversion, events, hang-up, limits) and the page it is served with (`bridge.web_page`);
tests/webrtc/test_browser.py runs the real app with the real pipeline behind a real browser.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest
from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from bridge import web_page
from bridge.backends.base import Audio
from bridge.config import load_settings
from bridge.contract import CallOptions, MetricsEvent
from bridge.doors import webrtc
from bridge.pipeline.manager import refusal
from tests.fakes.calls import RecordingCalls
from tests.support import free_port

pytestmark = pytest.mark.timeout(60)


class Tone(MediaStreamTrack):
    """A 48 kHz mono sine, 20 ms frames paced in real time (the caller's 'microphone')."""

    kind = "audio"

    def __init__(self, hz: float) -> None:
        super().__init__()
        self.hz = hz
        self._pts = 0
        self._t0: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        self._t0 = now if self._t0 is None else self._t0
        await asyncio.sleep(max(0.0, self._t0 + self._pts / 48000 - now))
        t = (np.arange(960) + self._pts) / 48000
        pcm = (8000 * np.sin(2 * np.pi * self.hz * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = (
            48000,
            self._pts,
            fractions.Fraction(1, 48000),
        )
        self._pts += 960
        return frame


def rms_db(pcm: npt.NDArray[Any]) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) / 32768))


def dominant_hz(pcm: npt.NDArray[np.int16], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])


@dataclass
class Server:
    url: str
    calls: RecordingCalls
    door: webrtc.WebRtcDoor


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    calls = RecordingCalls(limit=1)
    app = web.Application()
    door = webrtc.register(app, calls, load_settings())
    web_page.register(app, web_root=tmp_path / "dist")
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Server(f"http://127.0.0.1:{port}", calls, door)
    finally:
        await runner.cleanup()
    assert not door.sessions, "app shutdown left WebRTC sessions open"


@dataclass
class Client:
    """A browser stand-in: sends a tone, opens the "events" channel, records what comes back."""

    pc: RTCPeerConnection
    channel: Any
    events: asyncio.Queue[Any]
    received: list[npt.NDArray[np.int16]]
    answer: dict[str, Any]


async def connect(url: str, tts_engine: str = "piper") -> Client:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(Tone(440.0))
    channel = pc.createDataChannel("events")
    events: asyncio.Queue[Any] = asyncio.Queue()
    received: list[npt.NDArray[np.int16]] = []
    opened = asyncio.Event()
    channel.on("open", opened.set)
    channel.on("message", lambda m: events.put_nowait(json.loads(m)))

    async def pump(track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            received.append(webrtc._mono_int16(frame))

    tasks = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(pump(track))))
    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "type": "offer", "tts_engine": tts_engine}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/webrtc/offer", json=body) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    await asyncio.wait_for(opened.wait(), 15)
    return Client(pc, channel, events, received, answer)


async def wait_until(predicate: Any, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_media_events_and_caller_hangup(server: Server, ice_ip: str) -> None:
    client = await connect(server.url)
    try:
        (call,) = server.calls.calls
        assert call.options == CallOptions(
            door="webrtc", mode="conversation", tts_engine="piper", call_id=client.answer["call_id"]
        )
        # caller audio: 48 kHz Opus in, mono 16 kHz out, same tone
        await wait_until(lambda: call.samples >= 16000)
        heard = np.concatenate(call.chunks)[-16000:]
        assert abs(dominant_hz(heard, 16000) - 440.0) < 5
        # sent at -15 dBFS; aiortc's encoder up-mixes mono to stereo at -3 dB
        assert -21 < rms_db(heard) < -14

        # events: exactly the pipeline's JSON on the data channel
        event: MetricsEvent = {
            "type": "metrics",
            "asr_ms": 140,
            "llm_ms": 210,
            "tts_ms": 180,
            "total_ms": 640,
            "llm_first_token_ms": 95,
            "interrupted": False,
        }
        await call.sink.send_event(event)
        assert await asyncio.wait_for(client.events.get(), 5) == event

        # bot audio: a 22.05 kHz sentence comes out as 48 kHz audio on the track
        t = np.arange(22050) / 22050
        tone = (10000 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.int16)
        before = len(client.received)
        await call.sink.send_audio(Audio(tone, 22050))
        await wait_until(
            lambda: any(np.abs(f).max() > 5000 for f in client.received[before:]), within_s=5
        )
        await asyncio.sleep(0.5)
        loud = np.concatenate([f for f in client.received[before:] if np.abs(f).max() > 5000])
        assert abs(dominant_hz(loud, 48000) - 1000.0) < 10

        # DTMF from the page; malformed messages are ignored
        for junk in ("nonsense", "{}", '{"type":"dtmf","digit":"xy"}', b"\xff\xfe"):
            client.channel.send(junk)
        client.channel.send(json.dumps({"type": "dtmf", "digit": "7"}))
        await wait_until(lambda: call.digits == ["7"])

        # the page hangs up
        client.channel.send(json.dumps({"type": "hangup"}))
        await asyncio.wait_for(call.closed.wait(), 5)
        assert call.reason == "caller hung up"
        await wait_until(lambda: not server.door.sessions)
    finally:
        await client.pc.close()


async def test_bridge_hangup_reaches_the_page(server: Server, ice_ip: str) -> None:
    client = await connect(server.url)
    try:
        (call,) = server.calls.calls
        await call.sink.hangup("shutdown")
        assert await asyncio.wait_for(client.events.get(), 5) == {
            "type": "hangup",
            "reason": "shutdown",
        }
        assert call.closed.is_set() and call.reason == "shutdown"
        assert call.sink.pc.connectionState == "closed"
        assert not server.door.sessions
    finally:
        await client.pc.close()


async def test_closing_the_peer_connection_ends_the_call(server: Server, ice_ip: str) -> None:
    client = await connect(server.url)
    (call,) = server.calls.calls
    await client.pc.close()
    await asyncio.wait_for(call.closed.wait(), 40)  # DTLS close_notify, else ICE consent
    await wait_until(lambda: not server.door.sessions)


async def test_clear_audio_drops_queued_speech() -> None:
    track = webrtc.BotAudioTrack()
    track.push(np.full(48000, 1000, np.int16))
    first = await track.recv()
    assert first.sample_rate == 48000 and first.samples == 960
    assert first.time_base == fractions.Fraction(1, 48000)
    assert np.all(first.to_ndarray() == 1000)
    track.clear()
    assert track.queued_samples == 0
    second = await track.recv()
    assert second.pts == 960 and not second.to_ndarray().any()
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


def test_caller_audio_downmixes_and_resamples() -> None:
    converter = webrtc.CallerAudio()
    t = np.arange(48000) / 48000
    left = (8000 * np.sin(2 * np.pi * 300.0 * t)).astype(np.int16)
    stereo = np.stack([left, left], axis=1).reshape(1, -1)  # packed s16, like aiortc's Opus
    out = []
    for i in range(50):
        frame = AudioFrame.from_ndarray(
            np.ascontiguousarray(stereo[:, i * 1920 : (i + 1) * 1920]),
            format="s16",
            layout="stereo",
        )
        frame.sample_rate = 48000
        out.append(converter.convert(frame))
    pcm = np.concatenate(out)
    assert 15000 <= len(pcm) <= 16000
    assert abs(dominant_hz(pcm, 16000) - 300.0) < 5
    assert abs(rms_db(pcm[1000:]) - rms_db(left)) < 0.5
    mono = AudioFrame.from_ndarray(left[:960].reshape(1, -1), format="s16", layout="mono")
    assert np.array_equal(webrtc._mono_int16(mono), left[:960])
    assert np.array_equal(webrtc._mono_int16(frame), left[49 * 960 : 50 * 960])
    planar = AudioFrame.from_ndarray(
        np.ones((2, 960), np.float32) * 0.5, format="fltp", layout="stereo"
    )
    planar.sample_rate = 16000
    assert np.all(webrtc.CallerAudio().convert(planar) == 16384)


async def post(url: str, data: Any, raw: bool = False) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        kwargs = {"data": data} if raw else {"json": data}
        async with http.post(f"{url}/webrtc/offer", **kwargs) as resp:
            return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "must be JSON"),
        ([1, 2], "JSON object"),
        ({"type": "offer"}, "missing 'sdp'"),
        ({"sdp": "v=0", "type": "answer"}, "'type' must be 'offer'"),
        ({"sdp": "v=0", "tts_engine": "festival"}, "'tts_engine'"),
        ({"sdp": "v=0", "mode": ["x"]}, "'mode'"),
    ],
)
async def test_bad_offers_get_400(server: Server, body: Any, message: str) -> None:
    status, reply = await post(server.url, body, raw=isinstance(body, bytes))
    assert status == 400 and message in reply["error"]
    assert not server.calls.calls


@pytest.mark.parametrize(
    ("sdp", "message"),
    [
        ("v=0\r\nthis is not sdp\r\n", "no audio m-line"),
        ("v=0\r\nm=audio port UDP/TLS/RTP/SAVPF 111\r\n", "cannot negotiate"),
    ],
)
async def test_unusable_sdp_gets_400_and_closes_its_call(
    server: Server, sdp: str, message: str
) -> None:
    status, reply = await post(server.url, {"sdp": sdp, "type": "offer"})
    assert status == 400 and message in reply["error"]
    (call,) = server.calls.calls
    # closed as refused (counted in pipeline_calls_rejected_total, not as an admitted call)
    assert call.closed.is_set() and call.reason == refusal("bad_request")
    assert not server.door.sessions


async def test_call_limit_gets_503(server: Server, ice_ip: str) -> None:
    client = await connect(server.url)
    try:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        status, reply = await post(server.url, {"sdp": pc.localDescription.sdp, "type": "offer"})
        await pc.close()
        assert status == 503 and "too many calls" in reply["error"]
    finally:
        await client.pc.close()


async def test_over_the_limit_no_peer_connection_is_built(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 9: the call limit is checked before any RTCPeerConnection exists."""
    server.calls.limit = 0
    built: list[object] = []
    real = webrtc.RTCPeerConnection

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(webrtc, "RTCPeerConnection", counting)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/webrtc/offer", json={"sdp": "v=0"}) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"]
            assert "too many calls" in (await resp.json())["error"]
    assert built == [] and not server.door.sessions


async def test_bad_sdp_error_carries_no_exception_text(server: Server) -> None:
    sdp = "v=0\r\nm=audio port UDP/TLS/RTP/SAVPF 111\r\n"
    status, reply = await post(server.url, {"sdp": sdp, "type": "offer"})
    assert status == 400
    assert reply["error"] == "cannot negotiate this SDP offer (see the bridge log)"


async def test_unavailable_engine_gets_400(server: Server) -> None:
    server.calls.refuse = ValueError("tts_engine 'coqui' is not available (available: piper)")
    status, reply = await post(server.url, {"sdp": "v=0", "tts_engine": "coqui"})
    assert status == 400 and reply["error"].startswith("tts_engine 'coqui' is not available")


async def test_unconnected_call_times_out(server: Server) -> None:
    server.door.connect_timeout_s = 0.3
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    status, _ = await post(server.url, {"sdp": pc.localDescription.sdp, "type": "offer"})
    await pc.close()  # never applies the answer
    assert status == 200
    (call,) = server.calls.calls
    await asyncio.wait_for(call.closed.wait(), 5)
    assert call.reason in ("connect timeout", "connection closed", "connection failed")


async def test_static_page(server: Server, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/") as resp:
            assert resp.status == 503 and "make web" in await resp.text()
        (tmp_path / "dist" / "assets").mkdir(parents=True)
        (tmp_path / "dist" / "index.html").write_text("<html>page</html>")
        (tmp_path / "dist" / "assets" / "app-1.js").write_text("console.log(1)")
        (tmp_path / "secret.txt").write_text("no")
        async with http.get(f"{server.url}/") as resp:
            assert resp.status == 200 and await resp.text() == "<html>page</html>"
        async with http.get(f"{server.url}/assets/app-1.js") as resp:
            assert resp.status == 200 and "immutable" in resp.headers["Cache-Control"]
        for path in (
            "/assets/missing.js",
            "/assets/..%2F..%2Fsecret.txt",
            "/assets/%2e%2e/index.html",
        ):
            async with http.get(f"{server.url}{path}") as resp:
                assert resp.status == 404, path
        async with http.get(f"{server.url}/webrtc/config") as resp:
            assert await resp.json() == {
                "iceServers": [],
                "ttsEngines": ["piper", "coqui"],
                "defaultTtsEngine": "piper",
            }


def test_ice_servers_setting() -> None:
    servers = webrtc.ice_servers(
        ["stun:stun.example.org:3478", "turn:alice:s3cret@turn.example.org:3478"]
    )
    assert servers[0].urls == "stun:stun.example.org:3478" and servers[0].username is None
    assert (servers[1].urls, servers[1].username, servers[1].credential) == (
        "turn:turn.example.org:3478",
        "alice",
        "s3cret",
    )
    door = webrtc.WebRtcDoor(RecordingCalls(), load_settings(ice_servers=[]))
    assert door.configuration().iceServers == []
