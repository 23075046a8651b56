"""The SIP door's media without SIP signalling: a raw UDP socket plays the caller.

Drives `SipDoor` through the `sip.api.CallApplication` calls the UAS would make, with a fake
dialog, and checks the RTP it sends (pacing, sequence, timestamp, marker, SSRC), the audio it
feeds the call, hold, barge-in, the inactivity timeout and RTP port exhaustion.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from bridge.backends.base import Audio
from bridge.doors.sip import SipDoor
from bridge.tools.echo import EchoCalls
from media.dtmf import build_telephone_event
from media.g711 import ulaw_decode, ulaw_encode
from media.opus import OpusEncoder
from media.rtp import RtpPacket, parse_rtp
from sip.api import CallInfo, Codec, MediaOffer, SipReject
from tests.sipdoor.helpers import door_settings, media_door, udp_socket

pytestmark = pytest.mark.timeout(30)

PCMU = Codec("PCMU", 0, 8000)
OPUS = Codec("opus", 111, 48000, 2)
EVENTS = Codec("telephone-event", 101, 8000, fmtp="0-16")
G729 = Codec("G729", 18, 8000)


@dataclass
class FakeDialog:
    info: CallInfo
    hangups: list[float] = field(default_factory=list)

    async def hangup(self) -> None:
        self.hangups.append(time.monotonic())


def _info(call_id: str) -> CallInfo:
    return CallInfo(call_id, "sip:a@x", "sip:b@y", ("127.0.0.1", 5060), "127.0.0.1", "udp")


async def _receive(sock: socket.socket, seconds: float) -> list[tuple[float, RtpPacket]]:
    """Every packet that arrives within `seconds`."""
    return await _receive_at_least(sock, sys.maxsize, seconds)


async def _receive_at_least(
    sock: socket.socket, count: int, within_s: float = 3.0
) -> list[tuple[float, RtpPacket]]:
    """Packets until `count` have arrived (or `within_s` passed: a generous bound for a busy
    machine; the test then fails on the count)."""
    loop = asyncio.get_running_loop()
    out: list[tuple[float, RtpPacket]] = []
    end = loop.time() + within_s
    while len(out) < count and (left := end - loop.time()) > 0:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 2048), left)
        except TimeoutError:
            break
        out.append((loop.time(), parse_rtp(data)))
    return out


async def _drain(sock: socket.socket) -> None:
    """Throw away the packets already in flight."""
    await asyncio.sleep(0.05)
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return


async def _open(
    door: SipDoor,
    sock: socket.socket,
    codecs: tuple[Codec, ...] = (PCMU, EVENTS),
    call_id: str = "c1",
) -> tuple[FakeDialog, int]:
    port = sock.getsockname()[1]
    answer = await door.on_invite(_info(call_id), MediaOffer("127.0.0.1", port, codecs))
    dialog = FakeDialog(_info(call_id))
    await door.on_established(dialog)
    return dialog, answer.port


def _tone(seconds: float, rate: int, hz: float = 440.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


async def test_paced_rtp_out_is_well_formed() -> None:
    async with media_door() as (door, calls, sock):
        dialog, _ = await _open(door, sock)
        (call,) = calls.calls.values()
        await call.sink.send_audio(Audio(_tone(0.3, 16000), 16000))
        first = await _receive(sock, 0.6)
        await call.sink.send_audio(Audio(_tone(0.2, 22050), 22050))  # a second talkspurt
        second = await _receive(sock, 0.4)
        packets = first + second
        assert len({p.ssrc for _, p in packets}) == 1
        seqs = [p.sequence for _, p in packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
        stamps = [p.timestamp for _, p in packets]
        assert all((b - a) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(stamps))
        # comfort silence between the turns; marker on the first packet and each talkspurt
        loud = [np.abs(ulaw_decode(p.payload).astype(int)).max() > 1000 for _, p in packets]
        starts = [i for i, v in enumerate(loud) if v and (i == 0 or not loud[i - 1])]
        assert len(starts) == 2
        markers = [i for i, (_, p) in enumerate(packets) if p.marker]
        assert markers == [0, *starts] or markers == starts
        assert sum(loud) == 15 + 10  # 300 ms and 200 ms of tone, 20 ms a packet
        # paced: 20 ms apart on average, no burst
        times = np.array([t for t, _ in packets])
        gaps = np.diff(times)
        assert abs(float(np.mean(gaps)) - 0.020) < 0.002
        assert float(np.percentile(gaps, 5)) > 0.010
        assert not dialog.hangups


async def test_caller_audio_dtmf_garbage_and_barge_in() -> None:
    async with media_door() as (door, calls, sock):
        _, rtp_port = await _open(door, sock)
        (call,) = calls.calls.values()
        tone = _tone(1.0, 8000)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(50):
            payload = ulaw_encode(tone[i * 160 : (i + 1) * 160])
            sock.sendto(
                RtpPacket(0, 100 + i, 8000 + i * 160, 7, payload).serialize(),
                ("127.0.0.1", rtp_port),
            )
            if i == 10:  # garbage from the caller's own address: counted, dropped
                sock.sendto(b"\x00garbage", ("127.0.0.1", rtp_port))
                sock.sendto(b"\x80\x7f", ("127.0.0.1", rtp_port))
            if i == 20:  # a digit, end packet repeated
                for _ in range(3):
                    event = build_telephone_event("5", end=True, duration=800)
                    sock.sendto(
                        RtpPacket(101, 1000, 12345, 7, event).serialize(), ("127.0.0.1", rtp_port)
                    )
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
        await asyncio.sleep(0.3)
        session = call.sink.session  # type: ignore[attr-defined]
        assert call.digits == ["5"]
        assert session.stats.malformed == 2
        # the bridge heard one second of tone at 16 kHz, at the right level
        audio = call.audio
        loud = audio[np.abs(audio) > 2000]
        assert 0.9 * 16000 < len(audio) and len(loud) > 0.5 * 16000
        rms = float(np.sqrt(np.mean(audio[4000:12000].astype(float) ** 2)))
        assert abs(20 * np.log10(rms / (0.3 * 32767 / np.sqrt(2)))) < 1.0
        # barge-in drops what is queued
        await call.sink.send_audio(Audio(_tone(2.0, 8000), 8000))
        assert session.queued_ms >= 1900
        call.sink.clear_audio()
        assert session.queued_ms == 0


async def test_hold_stops_sending_and_unhold_resumes() -> None:
    async with media_door() as (door, _, sock):
        dialog, _ = await _open(door, sock)
        port = sock.getsockname()[1]
        assert len(await _receive_at_least(sock, 7)) >= 7
        answer = await door.on_reinvite(
            dialog, MediaOffer("127.0.0.1", port, (PCMU, EVENTS), direction="sendonly")
        )
        assert (
            answer.port
            == (
                await door.on_reinvite(
                    dialog, MediaOffer("127.0.0.1", port, (PCMU, EVENTS), direction="inactive")
                )
            ).port
        )
        await _drain(sock)
        assert await _receive(sock, 0.3) == []
        await door.on_reinvite(dialog, MediaOffer("127.0.0.1", port, (PCMU, EVENTS)))
        assert len(await _receive_at_least(sock, 7)) >= 7
        # RFC 2543 hold: c=0.0.0.0 in a sendrecv offer
        await door.on_reinvite(dialog, MediaOffer("0.0.0.0", port, (PCMU, EVENTS)))
        await _drain(sock)
        assert await _receive(sock, 0.2) == []
        await door.on_reinvite(dialog, MediaOffer("127.0.0.1", port, (PCMU, EVENTS)))
        assert len(await _receive_at_least(sock, 7)) >= 7
        with pytest.raises(SipReject) as rejected:  # nothing we can speak
            await door.on_reinvite(dialog, MediaOffer("127.0.0.1", port, (G729,)))
        assert rejected.value.status == 488
        # a codec change: same SSRC, the new payload type, a marker on its first packet
        before = await _receive(sock, 0.1)
        answer = await door.on_reinvite(dialog, MediaOffer("127.0.0.1", port, (OPUS, EVENTS)))
        assert answer.codec == OPUS
        after = [p for _, p in await _receive_at_least(sock, 12) if p.payload_type == 111]
        assert len(after) >= 7 and after[0].marker
        assert after[0].ssrc == before[-1][1].ssrc


async def test_rtp_inactivity_sends_bye() -> None:
    async with media_door(EchoCalls(), rtp_timeout_s=0.5) as (door, calls, sock):
        dialog, _ = await _open(door, sock)
        await asyncio.sleep(1.0)
        assert len(dialog.hangups) == 1
        await door.on_terminated("c1", "bye")  # the UAS reports the BYE transaction's end
        (call,) = calls.calls.values()
        assert call.closed_reason == "bye"
        assert door.active == {}


async def test_opus_call_round_trip() -> None:
    async with media_door(EchoCalls(chunk_ms=100)) as (door, calls, sock):
        _, rtp_port = await _open(door, sock, codecs=(OPUS, EVENTS))
        encoder = OpusEncoder()
        tone = _tone(1.0, 48000)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(50):
            payload = encoder.encode(tone[i * 960 : (i + 1) * 960])
            sock.sendto(RtpPacket(111, i, i * 960, 9, payload).serialize(), ("127.0.0.1", rtp_port))
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
        back = await _receive(sock, 0.6)
        (call,) = calls.calls.values()
        assert len(call.audio) >= 0.9 * 16000
        assert {p.payload_type for _, p in back} == {111}
        assert {p.timestamp - back[0][1].timestamp for _, p in back[:3]} == {0, 960, 1920}


async def test_no_free_rtp_port_is_503_and_the_call_is_released() -> None:
    settings = door_settings()
    low = settings.rtp_port_min + (settings.rtp_port_min & 1)
    settings = settings.model_copy(update={"rtp_port_min": low, "rtp_port_max": low + 3})
    blockers = []
    for port in (low, low + 2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", port))
        blockers.append(s)
    calls = EchoCalls()
    door = SipDoor(settings, calls)
    try:
        with pytest.raises(SipReject) as rejected:
            await door.on_invite(_info("c9"), MediaOffer("127.0.0.1", 4000, (PCMU,)))
        assert rejected.value.status == 503
        assert calls.active == {}
        blockers.pop().close()
        answer = await door.on_invite(_info("c10"), MediaOffer("127.0.0.1", 4000, (PCMU,)))
        assert answer.port == low + 2
    finally:
        await door.close()
        for s in blockers:
            s.close()


async def test_sip_info_digits() -> None:
    async with media_door() as (door, calls, sock):
        dialog, _ = await _open(door, sock)
        await door.on_info(dialog, "application/dtmf-relay", b"Signal=7\r\nDuration=160\r\n")
        await door.on_info(dialog, "application/dtmf", b"#")
        await door.on_info(dialog, "application/dtmf-relay", b"Signal=hello\r\n")
        await door.on_info(dialog, "text/plain", b"9")
        (call,) = calls.calls.values()
        assert call.digits == ["7", "#"]


class GreetingCalls(EchoCalls):
    """Calls that queue a greeting the moment they open (before the RTP socket exists)."""

    async def open(self, options: Any, sink: Any) -> Any:
        call = await super().open(options, sink)
        await sink.send_audio(Audio(_tone(0.2, 16000), 16000))
        return call


async def test_greeting_queued_at_open_is_played() -> None:
    async with media_door(GreetingCalls(echo=False)) as (door, _, sock):
        await _open(door, sock)
        packets = [p for _, p in await _receive(sock, 0.5)]
        loud = [np.abs(ulaw_decode(p.payload).astype(int)).max() > 1000 for p in packets]
        assert sum(loud) == 10


async def test_pipeline_hangup_lets_the_goodbye_play_shutdown_does_not() -> None:
    sock2 = udp_socket()
    try:
        async with media_door() as (door, calls, sock):
            dialog, _ = await _open(door, sock, call_id="bye1")
            dialog2, _ = await _open(door, sock2, call_id="bye2")
            one, two = calls.calls["bye1"], calls.calls["bye2"]
            for call in (one, two):
                await call.sink.send_audio(Audio(_tone(0.5, 8000), 8000))
            started = time.monotonic()
            await asyncio.gather(one.sink.hangup("goodbye"), two.sink.hangup("shutdown"))
            assert dialog.hangups[0] - started >= 0.4  # after the 0.5 s goodbye played out
            assert dialog2.hangups[0] - started < 0.1
    finally:
        sock2.close()


async def test_unspecified_remote_sends_nothing_until_rtp_arrives() -> None:
    async with media_door() as (door, _, sock):
        answer = await door.on_invite(_info("h0"), MediaOffer("0.0.0.0", 0, (PCMU,)))
        await door.on_established(FakeDialog(_info("h0")))
        assert await _receive(sock, 0.2) == []
        packet = RtpPacket(0, 1, 160, 5, ulaw_encode(np.zeros(160, np.int16)))
        sock.sendto(packet.serialize(), ("127.0.0.1", answer.port))
        assert len(await _receive(sock, 0.2)) >= 7  # latched onto our socket
