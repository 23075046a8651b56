"""Hostile media input at the SIP door (issue 12, findings 1-6, media side).

Drives `SipDoor` through the `CallApplication` calls the UAS would make, with raw UDP
sockets playing the caller and, on another loopback address (127.0.0.2), an attacker.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from typing import Any

import numpy as np
import pytest

from bridge.config import TTS_ENGINES
from bridge.contract import CallOptions, parse_call_options
from bridge.tools.echo import EchoCalls
from media.dtmf import build_telephone_event
from media.g711 import ulaw_encode
from media.rtp import RtpPacket
from sip import resolve
from sip.api import CallInfo, Codec, Direction, MediaOffer, SipReject
from tests.sipdoor.helpers import media_door, udp_socket
from tests.sipdoor.test_rtp_door import FakeDialog, _receive, _receive_at_least, _tone

pytestmark = pytest.mark.timeout(30)

PCMU = Codec("PCMU", 0, 8000)
EVENTS = Codec("telephone-event", 101, 8000, fmtp="0-16")
ATTACKER = "127.0.0.2"


def _info(call_id: str, source: str = "127.0.0.1") -> CallInfo:
    return CallInfo(call_id, "sip:a@x", "sip:b@y", (source, 5060), "127.0.0.1", "udp")


def calls_options(call_id: str) -> CallOptions:
    return parse_call_options({}, TTS_ENGINES, door="sip", default_engine="piper", call_id=call_id)


def _attacker_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ATTACKER, 0))
    sock.setblocking(False)
    return sock


def _loud_packet(seq: int, ssrc: int = 7) -> bytes:
    payload = ulaw_encode(_tone(0.02, 8000))
    return RtpPacket(0, seq, 8000 + seq * 160, ssrc, payload).serialize()


class SlowNameTap:
    """An RTP transport that records each destination; a destination that is a name costs
    50 ms, as the kernel's resolver does inside a blocking `sendto()`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.targets: list[Any] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.targets.append(addr)
        if addr is not None and not resolve.is_ip(addr[0]):
            time.sleep(0.05)
            addr = ("127.0.0.1", addr[1])
        self.inner.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _slow_lookup(host: str, **_: Any) -> str:
    await asyncio.sleep(0.05)  # a slow DNS server: the loop keeps running meanwhile
    if host == "slow.example":
        return "127.0.0.1"
    raise resolve.ResolveError(f"cannot resolve {host!r}")


async def test_sdp_host_name_is_resolved_once_off_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resolve, "resolve_host", _slow_lookup)
    other = udp_socket()
    try:
        async with media_door() as (door, _, sock):
            port = sock.getsockname()[1]
            await door.on_invite(_info("dns"), MediaOffer("slow.example", port, (PCMU,)))
            tap = SlowNameTap(door.active["dns"].session.transport)
            door.active["dns"].session.transport = tap  # type: ignore[assignment]
            await door.on_established(FakeDialog(_info("dns")))
            other_port = other.getsockname()[1]
            await door.on_invite(_info("bystander"), MediaOffer("127.0.0.1", other_port, (PCMU,)))
            await door.on_established(FakeDialog(_info("bystander")))
            heard = await _receive(other, 1.0)
            assert len(heard) >= 40  # the bystander keeps its 50 packets a second
            assert door.clock.resyncs <= 1 and door.clock.late_ticks <= 10
            assert tap.targets and {t[0] for t in tap.targets} == {"127.0.0.1"}
            assert len(await _receive(sock, 0.2)) >= 5  # the call's RTP went to the IP
    finally:
        other.close()


async def test_unresolvable_sdp_host_is_488(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve, "resolve_host", _slow_lookup)
    async with media_door() as (door, calls, _):
        with pytest.raises(SipReject) as rejected:
            await door.on_invite(_info("nx"), MediaOffer("nx.example", 4000, (PCMU,)))
        assert rejected.value.status == 488
        assert door.active == {} and calls.active == {}
        dialog = FakeDialog(_info("ok"))
        await door.on_invite(_info("ok"), MediaOffer("127.0.0.1", 4000, (PCMU,)))
        await door.on_established(dialog)
        with pytest.raises(SipReject) as rejected:  # a re-INVITE to a name that does not exist
            await door.on_reinvite(dialog, MediaOffer("nx.example", 4000, (PCMU,)))
        assert rejected.value.status == 488


async def test_an_attacker_sending_first_is_never_latched() -> None:
    attacker = _attacker_socket()
    try:
        async with media_door(EchoCalls(chunk_ms=100)) as (door, calls, sock):
            port = sock.getsockname()[1]
            answer = await door.on_invite(_info("c1"), MediaOffer("127.0.0.1", port, (PCMU,)))
            target = ("127.0.0.1", answer.port)
            for seq in range(20):  # the attacker races the caller to the new port
                attacker.sendto(_loud_packet(seq, ssrc=666), target)
            await asyncio.sleep(0.05)
            await door.on_established(FakeDialog(_info("c1")))
            for seq in range(20):  # and keeps sending, interleaved with the caller
                attacker.sendto(_loud_packet(100 + seq, ssrc=666), target)
                sock.sendto(_loud_packet(seq), target)
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            session = door.active["c1"].session
            assert session.send_target == ("127.0.0.1", port)
            assert session.stats.foreign >= 40
            assert await _receive(attacker, 0.3) == []  # never hears the bot or the echo
            (call,) = calls.calls.values()
            # only the caller's 20 frames (400 ms, plus at most 5 concealed after it) reached
            # the call, not the attacker's 40
            loud = [f for f in call.received if np.abs(f).max() > 2000]
            assert 15 <= len(loud) <= 26, len(loud)
            heard = [p for _, p in await _receive_at_least(sock, 10)]
            assert len(heard) >= 10  # the real caller hears the bridge
    finally:
        attacker.close()


async def test_nat_caller_is_heard_from_its_signalling_address() -> None:
    """SDP names a private address we cannot reach; media comes from the signalling IP
    (another port): that is latched, and a third address is not."""
    attacker = _attacker_socket()
    try:
        async with media_door() as (door, _, sock):
            answer = await door.on_invite(_info("nat"), MediaOffer("10.1.2.3", 7078, (PCMU,)))
            await door.on_established(FakeDialog(_info("nat")))
            target = ("127.0.0.1", answer.port)
            attacker.sendto(_loud_packet(1), target)
            await asyncio.sleep(0.05)
            sock.sendto(_loud_packet(2), target)
            heard = await _receive_at_least(sock, 5)
            assert len(heard) >= 5
            session = door.active["nat"].session
            assert session.send_target == sock.getsockname()
            assert session.stats.foreign == 1
            assert await _receive(attacker, 0.2) == []
    finally:
        attacker.close()


async def test_recvonly_offer_naming_a_third_party_gets_no_packets() -> None:
    victim = _attacker_socket()
    try:
        async with media_door() as (door, _, _sock):
            victim_port = victim.getsockname()[1]
            offer = MediaOffer(ATTACKER, victim_port, (PCMU,), direction="recvonly")
            await door.on_invite(_info("refl"), offer)
            await door.on_established(FakeDialog(_info("refl")))
            assert await _receive(victim, 0.5) == []
    finally:
        victim.close()


async def test_rtp_ports_are_random() -> None:
    async with media_door() as (door, _, _sock):
        ports = []
        for i in range(20):
            answer = await door.on_invite(_info(f"p{i}"), MediaOffer("127.0.0.1", 4000, (PCMU,)))
            ports.append(answer.port)
        assert all(p % 2 == 0 for p in ports)
        assert len(set(ports)) == 20
        steps = [b - a for a, b in itertools.pairwise(ports)]
        assert sum(step == 2 for step in steps) < 5, ports


async def test_max_call_duration_ends_the_call_with_a_bye() -> None:
    async with media_door(max_call_duration_s=1.0) as (door, _, sock):
        port = sock.getsockname()[1]
        dialog = FakeDialog(_info("long"))
        await door.on_invite(_info("long"), MediaOffer("127.0.0.1", port, (PCMU,)))
        await door.on_established(dialog)
        for seq in range(100):  # a caller that talks the whole time
            sock.sendto(_loud_packet(seq), ("127.0.0.1", door.active["long"].session.local_port))
            await asyncio.sleep(0.02)
            if dialog.hangups:
                break
        assert len(dialog.hangups) == 1


async def test_a_silent_call_on_hold_is_ended_after_the_hold_timeout() -> None:
    async with media_door(rtp_hold_timeout_s=1.0) as (door, _, sock):
        port = sock.getsockname()[1]
        held: tuple[tuple[str, Direction], ...] = (("held", "recvonly"), ("mute", "inactive"))
        for call_id, direction in held:
            dialog = FakeDialog(_info(call_id))
            offer = MediaOffer("127.0.0.1", port, (PCMU,), direction=direction)
            await door.on_invite(_info(call_id), offer)
            await door.on_established(dialog)
            await asyncio.sleep(0.6)
            assert dialog.hangups == []
            await asyncio.sleep(1.2)
            assert len(dialog.hangups) == 1, call_id


async def test_the_pipeline_opens_at_ack_not_at_invite() -> None:
    calls = EchoCalls(max_calls=1)
    async with media_door(calls) as (door, _, sock):
        port = sock.getsockname()[1]
        await door.on_invite(_info("a"), MediaOffer("127.0.0.1", port, (PCMU,)))
        assert calls.active == {}  # no pipeline before the ACK
        with pytest.raises(SipReject) as rejected:  # but the slot is held: full is 503
            await door.on_invite(_info("b"), MediaOffer("127.0.0.1", port, (PCMU,)))
        assert rejected.value.status == 503
        await door.on_terminated("a", "no ACK")  # never ACKed: nothing opened, nothing leaks
        assert door.active == {} and calls.calls == {}
        await door.on_invite(_info("c"), MediaOffer("127.0.0.1", port, (PCMU,)))
        await door.on_established(FakeDialog(_info("c")))
        assert list(calls.active) == ["c"]


async def test_first_rtp_opens_the_pipeline_before_the_ack() -> None:
    calls = EchoCalls(echo=False)
    async with media_door(calls) as (door, _, sock):
        port = sock.getsockname()[1]
        answer = await door.on_invite(_info("early"), MediaOffer("127.0.0.1", port, (PCMU,)))
        assert calls.active == {}
        sock.sendto(_loud_packet(1), ("127.0.0.1", answer.port))
        for _ in range(100):
            if calls.active:
                break
            await asyncio.sleep(0.01)
        assert list(calls.active) == ["early"]
        await door.on_established(FakeDialog(_info("early")))
        assert list(calls.calls) == ["early"]  # opened once


async def test_duplicate_call_id_never_touches_the_first_call() -> None:
    calls = EchoCalls(echo=False)
    async with media_door(calls) as (door, _, sock):
        port = sock.getsockname()[1]
        await door.on_invite(_info("dup"), MediaOffer("127.0.0.1", port, (PCMU,)))
        await door.on_established(FakeDialog(_info("dup")))
        first = door.active["dup"]
        with pytest.raises(SipReject) as rejected:
            await door.on_invite(_info("dup"), MediaOffer("127.0.0.1", port + 2, (PCMU,)))
        assert rejected.value.status == 482
        assert door.active["dup"] is first and len(calls.calls) == 1
        assert len(await _receive_at_least(sock, 5)) >= 5  # the first call's media goes on
        await door.on_terminated("dup", "bye")
        assert door.active == {} and calls.active == {}


async def test_a_digit_in_the_first_packet_reaches_the_pipeline() -> None:
    """The first RTP packet opens the pipeline; a digit it carries is not lost meanwhile."""
    calls = EchoCalls(echo=False)
    async with media_door(calls) as (door, _, sock):
        port = sock.getsockname()[1]
        answer = await door.on_invite(_info("d"), MediaOffer("127.0.0.1", port, (PCMU, EVENTS)))
        event = build_telephone_event("7", end=True, duration=800)
        sock.sendto(RtpPacket(101, 1, 160, 5, event).serialize(), ("127.0.0.1", answer.port))
        for _ in range(100):
            if calls.active:
                break
            await asyncio.sleep(0.01)
        assert calls.calls["d"].digits == ["7"]


async def test_a_pipeline_full_at_the_ack_ends_the_call_with_a_bye() -> None:
    calls = EchoCalls(max_calls=1, echo=False)
    async with media_door(calls) as (door, _, sock):
        port = sock.getsockname()[1]
        await door.on_invite(_info("late"), MediaOffer("127.0.0.1", port, (PCMU,)))
        # between the INVITE and the ACK another door takes the last slot
        filler = await calls.open(
            calls_options("filler"),
            door.active["late"].sink,
        )
        dialog = FakeDialog(_info("late"))
        await door.on_established(dialog)
        for _ in range(100):
            if dialog.hangups:
                break
            await asyncio.sleep(0.01)
        assert len(dialog.hangups) == 1
        assert list(calls.active) == ["filler"]
        await filler.close()


async def test_only_a_reinvite_moves_the_media_address() -> None:
    moved = udp_socket()
    try:
        async with media_door() as (door, _, sock):
            port = sock.getsockname()[1]
            dialog = FakeDialog(_info("mv"))
            answer = await door.on_invite(_info("mv"), MediaOffer("127.0.0.1", port, (PCMU,)))
            await door.on_established(dialog)
            sock.sendto(_loud_packet(1), ("127.0.0.1", answer.port))
            await asyncio.sleep(0.05)
            session = door.active["mv"].session
            moved.sendto(_loud_packet(2, ssrc=9), ("127.0.0.1", answer.port))
            await asyncio.sleep(0.05)
            assert session.send_target == sock.getsockname()  # same IP, other port: refused
            assert session.stats.foreign == 1
            new = moved.getsockname()
            await door.on_reinvite(dialog, MediaOffer(new[0], new[1], (PCMU,)))
            assert session.send_target == new
            assert len(await _receive_at_least(moved, 5)) >= 5
    finally:
        moved.close()


async def test_an_ipv4_caller_seen_through_a_dual_stack_socket_is_accepted() -> None:
    async with media_door() as (door, _, sock):
        port = sock.getsockname()[1]
        await door.on_invite(_info("v6"), MediaOffer("127.0.0.1", port, (PCMU,)))
        session = door.active["v6"].session
        session.datagram_received(_loud_packet(1), ("::ffff:127.0.0.2", port))
        assert session.stats.foreign == 1
        session.datagram_received(_loud_packet(2), ("::ffff:127.0.0.1", port))
        assert session.stats.received == 1
        assert session.send_target == ("::ffff:127.0.0.1", port)
