"""Hypothesis fuzzing of everything a remote peer feeds a parser: SIP messages, SDP, RTP,
the jitter buffer, and the WebSocket door's first (metadata) frame. Each must reach only
its documented outcomes: a parsed value or its own error, never another exception."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.app import Bridge
from media.codecs import codec_for
from media.jitter import JitterBuffer
from media.rtp import RtpError, RtpPacket, parse_rtp
from sip.api import SipReject
from sip.message import SipParseError, SipRequest, SipResponse, parse_message
from sip.sdp import SdpError, parse_offer, parse_sdp
from tests.fakes.bridge_process import loopback_settings
from tests.fakes.pipeline import FakeBackends

FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

SIP_LINES = [
    "INVITE sip:bot@127.0.0.1 SIP/2.0",
    "SIP/2.0 200 OK",
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport",
    "From: <sip:a@b>;tag=1",
    "To: <sip:bot@127.0.0.1>",
    "Call-ID: x",
    "CSeq: 1 INVITE",
    "Content-Length: 5",
    "Content-Length: -1",
    "Contact: <sip:a@[::1]:99999;transport=tcp>",
    "Max-Forwards: 70",
    " folded continuation",
    "v: SIP/2.0/TCP h",
    "",
]
SDP_LINES = [
    "v=0",
    "o=- 1 1 IN IP4 10.0.0.1",
    "s=-",
    "c=IN IP4 10.0.0.1",
    "c=IN IP6 ::1",
    "c=IN IP4 example.com",
    "t=0 0",
    "m=audio 4000 RTP/AVP 0 8 101",
    "m=audio 0 RTP/AVP 0",
    "m=audio 70000 RTP/SAVP 96",
    "m=video 5000 RTP/AVP 96",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:96 opus/48000/2",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=recvonly",
    "a=inactive",
    "a=rtcp:4001",
]


def _lines(pool: list[str]) -> st.SearchStrategy[str]:
    line = st.one_of(st.sampled_from(pool), st.text(max_size=30))
    return st.lists(line, max_size=14).map("\r\n".join)


@FUZZ
@given(st.one_of(st.binary(max_size=600), _lines(SIP_LINES).map(str.encode)))
def test_sip_parser_raises_only_its_own_error(data: bytes) -> None:
    for stream in (False, True):
        try:
            message = parse_message(data, stream=stream)
        except SipParseError:
            continue
        assert isinstance(message, SipRequest | SipResponse)


@FUZZ
@given(st.one_of(st.binary(max_size=600), _lines(SDP_LINES).map(str.encode)))
def test_sdp_parsers_raise_only_their_own_errors(data: bytes) -> None:
    try:
        parse_sdp(data)
    except SdpError:
        pass
    try:
        parse_offer(data)
    except (SdpError, SipReject):
        pass


_rtp_header = st.builds(
    lambda b0, b1, seq, ts, ssrc, rest: struct.pack("!BBHII", b0, b1, seq, ts, ssrc) + rest,
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=80),
)


@FUZZ
@given(st.one_of(st.binary(max_size=200), _rtp_header))
def test_rtp_parser_raises_only_rtp_error(data: bytes) -> None:
    try:
        packet = parse_rtp(data)
    except RtpError:
        return
    assert isinstance(packet, RtpPacket)


FRAME = 160
_packet = st.builds(
    RtpPacket,
    st.just(0),
    st.one_of(st.integers(0, 0xFFFF), st.integers(0, 40)),
    st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(0, 40).map(lambda i: i * FRAME)),
    st.sampled_from([0x1234, 0x1234, 0x1234, 0x9999]),
    st.one_of(st.binary(min_size=FRAME, max_size=FRAME), st.binary(max_size=400)),
)
# Each step: push a packet (optionally as a non-audio mark) or let the clock tick.
_step = st.one_of(
    st.tuples(st.just("push"), _packet),
    st.tuples(st.just("mark"), _packet),
    st.tuples(st.just("pop"), st.none()),
)


@FUZZ
@given(st.lists(_step, max_size=400))
def test_jitter_buffer_survives_any_packet_sequence(steps: list[tuple[str, Any]]) -> None:
    jb = JitterBuffer(8000, FRAME, 60, decoder=codec_for("pcmu").decoder(), max_packets=50)
    for kind, packet in steps:
        if kind == "push":
            jb.push(packet)
        elif kind == "mark":
            jb.mark_received(packet)
        else:
            frame = jb.pop()
            assert frame.shape == (FRAME,) and frame.dtype.name == "int16"
        assert len(jb._buffer) <= jb.max_packets
    assert jb.pop().shape == (FRAME,)


# --------------------------------------------------------- WebSocket metadata


class _Errors(logging.Handler):
    """Collects every ERROR log record (aiohttp logs an unhandled handler exception)."""

    def __init__(self, into: list[Any]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(f"{record.name}: {record.getMessage()} {record.exc_info!r:.300}")


class _DoorThread:
    """An in-process `Bridge` (fake backends) on its own event loop thread, so Hypothesis
    can drive it from a plain test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.errors: list[dict[str, Any]] = []
        self.bridge = Bridge(loopback_settings(max_concurrent_calls=50), FakeBackends())
        self.loop.set_exception_handler(lambda loop, ctx: self.errors.append(ctx))
        self.handler = _Errors(self.errors)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.bridge.port}/ws/call"


@pytest.fixture(scope="module")
def door() -> Iterator[_DoorThread]:
    running = _DoorThread()
    running.thread.start()
    logging.getLogger().addHandler(running.handler)
    running.run(running.bridge.start())
    try:
        yield running
    finally:
        running.run(running.bridge.stop())
        running.loop.call_soon_threadsafe(running.loop.stop)
        running.thread.join(10)
        logging.getLogger().removeHandler(running.handler)


async def _first_frame(url: str, text: str) -> tuple[list[Any], int | None]:
    """Send `text` as the metadata; what came back within 1 s (events) and the close code
    (None: the door took it as a call and is waiting for audio)."""
    events: list[Any] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_str(text)
            try:
                async with asyncio.timeout(1.0):
                    while True:
                        msg = await ws.receive()
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            events.append(json.loads(msg.data))
                        elif msg.type != aiohttp.WSMsgType.BINARY:
                            break
            except TimeoutError:
                return events, None
            return events, ws.close_code


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
_meta = st.fixed_dictionaries(
    {},
    optional={
        "codec": st.sampled_from(["pcm", "g711_ulaw", "opus", "gsm"]) | _json,
        "sample_rate": st.sampled_from([8000, 16000, 48000, 0, -1]) | _json,
        "mode": st.sampled_from(["conversation", "echo", "x"]) | _json,
        "tts_engine": st.sampled_from(["piper", "coqui"]) | _json,
    },
)
_metadata_text = st.one_of(
    st.text(max_size=200),
    _json.map(json.dumps),
    _meta.map(json.dumps),
    st.integers(1, 200_000).map(lambda n: "[" * n),
    st.integers(1, 200_000).map(lambda n: '{"a":' * n),
    st.integers(60_000, 300_000).map(lambda n: json.dumps({"codec": "pcm", "x": "y" * n})),
)


@settings(max_examples=120, deadline=None, database=None)
@given(_metadata_text)
def test_websocket_metadata_gets_an_error_or_a_call(door: _DoorThread, text: str) -> None:
    door.errors.clear()
    events, code = door.run(_first_frame(door.url, text))
    if code is not None:  # refused: one error event, then a policy/unsupported close
        assert code in (1003, 1008, 1009), (code, events, text[:80])
        assert events and events[0]["type"] == "error", (code, events, text[:80])
    assert not door.errors, door.errors
