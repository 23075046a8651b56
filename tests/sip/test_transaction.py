"""Transaction timers with a controllable clock (RFC 3261 §17, §13.3.1.4)."""

from __future__ import annotations

import asyncio
import itertools

from sip.message import SipRequest, SipResponse, parse_message, response_to
from sip.transaction import (
    InviteServerTransaction,
    ManualScheduler,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    TimerConfig,
    TwoXxRetransmitter,
)

T = TimerConfig()  # T1 0.5 s, T2 4 s, T4 5 s

INVITE = (
    "INVITE sip:bot@h SIP/2.0\r\nVia: SIP/2.0/UDP c:5060;branch=z9hG4bK1\r\n"
    "From: <sip:a@c>;tag=f\r\nTo: <sip:bot@h>\r\nCall-ID: tx1\r\nCSeq: 1 INVITE\r\n"
    "Content-Length: 0\r\n\r\n"
)


def request(method: str = "INVITE") -> SipRequest:
    msg = parse_message(INVITE.replace("INVITE", method).encode())
    assert isinstance(msg, SipRequest)
    return msg


class Recorder:
    def __init__(self, clock: ManualScheduler) -> None:
        self.clock = clock
        self.sent: list[tuple[float, int]] = []
        self.terminated = 0

    def send(self, response: SipResponse) -> None:
        self.sent.append((round(self.clock.now(), 3), response.status))

    def done(self, _: object) -> None:
        self.terminated += 1


def answered_invite(
    status: int, reason: str, reliable: bool = False
) -> tuple[ManualScheduler, Recorder, InviteServerTransaction]:
    """An INVITE server transaction that has just sent a final `status`."""
    clock = ManualScheduler()
    rec = Recorder(clock)
    txn = InviteServerTransaction(request(), rec.send, clock, T, reliable, rec.done)
    txn.respond(response_to(request(), status, reason, to_tag="x"))
    return clock, rec, txn


def test_2xx_retransmission_schedule_and_give_up() -> None:
    clock = ManualScheduler()
    rec = Recorder(clock)
    gave_up: list[float] = []
    ok = response_to(request(), 200, "OK", to_tag="t")
    TwoXxRetransmitter(ok, rec.send, clock, T, lambda: gave_up.append(clock.now()))
    clock.advance(40)
    times = [t for t, _ in rec.sent]
    # T1, then doubling, capped at T2: 0.5, 1.5, 3.5, 7.5, 11.5, ... (intervals .5 1 2 4 4 ...)
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    intervals = [b - a for a, b in itertools.pairwise(times)]
    assert max(intervals) == T.t2
    assert gave_up == [64 * T.t1]
    assert times[-1] < 32.0
    assert clock.pending == 0


def test_2xx_retransmission_stops_on_ack() -> None:
    clock = ManualScheduler()
    rec = Recorder(clock)
    gave_up: list[float] = []
    r = TwoXxRetransmitter(
        response_to(request(), 200, "OK"), rec.send, clock, T, lambda: gave_up.append(1)
    )
    clock.advance(2.0)
    r.stop()
    clock.advance(60)
    assert [t for t, _ in rec.sent] == [0.5, 1.5] and gave_up == []


def test_invite_non_2xx_timer_g_then_h() -> None:
    clock = ManualScheduler()
    rec = Recorder(clock)
    txn = InviteServerTransaction(request(), rec.send, clock, T, False, rec.done)
    txn.respond(response_to(request(), 100, "Trying"))
    txn.receive_request(request())  # retransmitted INVITE: the 100 again
    txn.respond(response_to(request(), 486, "Busy Here", to_tag="x"))
    clock.advance(40)
    assert rec.sent[:3] == [(0.0, 100), (0.0, 100), (0.0, 486)]
    g_times = [t for t, s in rec.sent[3:]]
    assert g_times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]  # timer G
    assert txn.state == "terminated" and txn.ack_timed_out and rec.terminated == 1  # timer H
    assert g_times[-1] < 32.0


def test_invite_ack_stops_g_and_timer_i_absorbs() -> None:
    clock, rec, txn = answered_invite(487, "Request Terminated")
    clock.advance(0.6)
    txn.receive_request(request("ACK"))
    assert txn.state == "confirmed"
    clock.advance(1.0)
    txn.receive_request(request("ACK"))  # absorbed by timer I
    sent_before = len(rec.sent)
    clock.advance(T.t4)
    assert txn.state == "terminated" and not txn.ack_timed_out
    assert len(rec.sent) == sent_before == 2  # the 487 and one timer G retransmission


def test_invite_over_tcp_has_no_timer_g() -> None:
    clock, rec, txn = answered_invite(503, "Service Unavailable", reliable=True)
    clock.advance(40)
    assert rec.sent == [(0.0, 503)] and txn.state == "terminated"


def test_non_invite_timer_j() -> None:
    clock = ManualScheduler()
    rec = Recorder(clock)
    bye = request("BYE")
    txn = NonInviteServerTransaction(bye, rec.send, clock, T, False, rec.done)
    txn.receive_request(bye)  # nothing to resend yet
    txn.respond(response_to(bye, 200, "OK"))
    clock.advance(10)
    txn.receive_request(bye)  # retransmission: the 200 again
    assert rec.sent == [(0.0, 200), (10.0, 200)]
    clock.advance(64 * T.t1 - 10 - 0.01)
    assert rec.terminated == 0
    clock.advance(0.02)
    assert rec.terminated == 1 and txn.state == "terminated"


async def test_client_bye_timer_e_and_f() -> None:
    clock = ManualScheduler()
    sent: list[float] = []
    bye = request("BYE")
    txn = NonInviteClientTransaction(bye, lambda r: sent.append(clock.now()), clock, T, False)
    clock.advance(40)
    await asyncio.sleep(0)
    assert sent[:5] == [0.0, 0.5, 1.5, 3.5, 7.5]  # timer E, capped at T2
    assert txn.result.done() and txn.result.result() is None  # timer F


async def test_client_bye_answered() -> None:
    clock = ManualScheduler()
    bye = request("BYE")
    txn = NonInviteClientTransaction(bye, lambda r: None, clock, T, False)
    clock.advance(0.6)
    txn.receive_response(response_to(bye, 200, "OK"))
    result = await txn.result
    assert result is not None and result.status == 200
    assert clock.pending == 0
