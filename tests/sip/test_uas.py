"""The UAS over real UDP and TCP sockets on loopback, driven by a raw SIP client."""

from __future__ import annotations

import asyncio

import pytest

from sip.api import SipReject
from sip.message import SipRequest, SipResponse, Via, tag_of
from sip.transaction import TimerConfig
from sip.uas import UserAgentServer
from tests.sip.client import Call, SipClient, answered_call, sdp_offer
from tests.sip.fakeapp import RecordingApp

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_invite_ok_ack_bye(uas: UserAgentServer, app: RecordingApp, transport: str) -> None:
    async with SipClient(uas.local_port, transport) as client:
        call = Call(client)
        client.send(call.invite())
        trying = await client.recv()
        assert isinstance(trying, SipResponse) and trying.status == 100
        ok = await client.expect(200)
        body = ok.body.decode()
        assert "m=audio 40000 RTP/AVP 0 101" in body
        assert "a=rtpmap:101 telephone-event/8000" in body and "a=ptime:20" in body
        assert ok.get("Content-Type") == "application/sdp"
        contact = ok.get("Contact") or ""
        assert ("transport=tcp" in contact) == (transport == "tcp")
        call.to_tag = (ok.get("To") or "").split("tag=")[1]
        client.send(call.ack())
        await app.wait_for(lambda: len(app.established) == 1)
        info, offer = app.invites[0]
        assert info.transport == transport and info.call_id == call.call_id
        assert [c.name for c in offer.codecs] == ["PCMU", "PCMA", "telephone-event"]
        call.cseq += 1
        client.send(call.request("BYE"))
        await client.expect(200)
        await app.wait_for(lambda: app.terminated == [(call.call_id, "bye")])
        assert uas.dialogs == []


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_bridge_hangs_up(uas: UserAgentServer, app: RecordingApp, transport: str) -> None:
    async with SipClient(uas.local_port, transport) as client:
        call = await answered_call(client, app)
        hangup = asyncio.create_task(app.established[0].hangup())
        bye = await client.recv()
        assert isinstance(bye, SipRequest) and bye.method == "BYE"
        assert bye.get("Call-ID") == call.call_id
        assert f"tag={call.from_tag}" in (bye.get("To") or "")
        client.send(_response_to(bye, 200, "OK"))
        await asyncio.wait_for(hangup, 3)
        await app.established[0].hangup()  # idempotent
        assert app.terminated == [(call.call_id, "hangup")]


def _response_to(request: SipRequest, status: int, reason: str) -> bytes:
    from sip.message import response_to

    return response_to(request, status, reason).to_bytes()


async def test_bye_retransmitted_until_answered(uas: UserAgentServer, app: RecordingApp) -> None:
    async with SipClient(uas.local_port) as client:
        await answered_call(client, app)
        hangup = asyncio.create_task(app.established[0].hangup())
        first = await client.recv()
        second = await client.recv()  # timer E retransmission, same branch
        assert isinstance(first, SipRequest) and isinstance(second, SipRequest)
        assert first.vias[0].branch == second.vias[0].branch
        client.send(_response_to(second, 200, "OK"))
        await asyncio.wait_for(hangup, 3)


async def test_cancel_gets_200_and_487(uas: UserAgentServer, app: RecordingApp) -> None:
    app.invite_delay_s = 0.5
    async with SipClient(uas.local_port) as client:
        call = Call(client)
        client.send(call.invite())
        await app.wait_for(lambda: len(app.invites) == 1)
        client.send(call.request("CANCEL", branch=call.invite_branch, cseq=1))
        seen: dict[str, int] = {}
        tags: dict[str, str] = {}
        while len(seen) < 2:
            msg = await client.recv()
            assert isinstance(msg, SipResponse)
            if msg.status >= 200:
                seen[msg.cseq.method] = msg.status
                tags[msg.cseq.method] = tag_of(msg.get("To"))
        assert seen == {"CANCEL": 200, "INVITE": 487}
        assert tags["CANCEL"] and tags["CANCEL"] == tags["INVITE"]
        client.send(call.request("ACK", branch=call.invite_branch, cseq=1))
        await app.wait_for(lambda: app.terminated == [(call.call_id, "cancelled")])
        assert app.established == []


async def test_options_answered_with_allow(uas: UserAgentServer) -> None:
    async with SipClient(uas.local_port) as client:
        client.send(Call(client).request("OPTIONS"))
        ok = await client.expect(200)
        allow = ok.get("Allow") or ""
        assert {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS"} <= {
            m.strip() for m in allow.split(",")
        }
        assert ok.get("Accept") == "application/sdp"


async def test_unknown_dialog_gets_481(uas: UserAgentServer) -> None:
    async with SipClient(uas.local_port) as client:
        call = Call(client)
        call.to_tag = "nosuchtag"
        client.send(call.request("BYE"))
        await client.expect(481)
        client.send(
            call.request("INFO", body="Signal=1\r\n", content_type="application/dtmf-relay")
        )
        await client.expect(481)


async def test_retransmitted_invite_reaches_app_once(
    uas: UserAgentServer, app: RecordingApp
) -> None:
    app.invite_delay_s = 0.3
    async with SipClient(uas.local_port) as client:
        call = Call(client)
        client.send(call.invite())
        await client.expect(100)
        client.send(call.invite())  # retransmission while the app thinks: 100 again
        await client.expect(100)
        ok = await client.expect(200)
        client.send(call.invite())  # retransmission after the 2xx: the 2xx again
        again = await client.expect(200)
        assert again.body == ok.body
        call.to_tag = (ok.get("To") or "").split("tag=")[1]
        client.send(call.ack())
        await app.wait_for(lambda: len(app.established) == 1)
        assert len(app.invites) == 1


async def test_no_common_codec_is_488(uas: UserAgentServer, app: RecordingApp) -> None:
    async with SipClient(uas.local_port) as client:
        call = Call(client)
        client.send(call.invite(payloads=(18,)))
        rejected = await client.expect(488)
        assert "G729" in (rejected.get("Warning") or "")
        client.send(call.request("ACK", branch=call.invite_branch, cseq=1))
        assert app.invites == []


async def test_application_rejects(uas: UserAgentServer, app: RecordingApp) -> None:
    app.reject = SipReject(503, "Service Unavailable")
    async with SipClient(uas.local_port) as client:
        call = Call(client)
        client.send(call.invite())
        rejected = await client.expect(503)
        assert "tag=" in (rejected.get("To") or "")
        # no ACK: timer G retransmits the 503
        again = await client.expect(503)
        assert again.get("To") == rejected.get("To")
        client.send(call.request("ACK", branch=call.invite_branch, cseq=1))
        assert await client.silence(0.3)
        assert app.terminated == []


async def test_unknown_method_and_register(uas: UserAgentServer) -> None:
    async with SipClient(uas.local_port) as client:
        client.send(Call(client).request("FROBNICATE"))
        await client.expect(501)
        client.send(Call(client).request("REGISTER"))
        refused = await client.expect(405)
        assert "INVITE" in (refused.get("Allow") or "")


async def test_info_reaches_app(uas: UserAgentServer, app: RecordingApp) -> None:
    async with SipClient(uas.local_port) as client:
        call = Call(client)
        await call.establish()
        call.cseq += 1
        body = "Signal=5\r\nDuration=160\r\n"
        client.send(call.request("INFO", body=body, content_type="application/dtmf-relay"))
        await client.expect(200)
        assert app.infos == [("application/dtmf-relay", body.encode())]


async def _held_call(client: SipClient, payload_type: int) -> tuple[Call, SipResponse, SipResponse]:
    """An established call, then a sendonly re-INVITE (CSeq 2) offering `payload_type`:
    the call, the 200 to the INVITE and the 200 to the re-INVITE."""
    call = Call(client)
    first = await call.establish()
    call.cseq = 2
    client.send(call.request("INVITE", body=sdp_offer((payload_type, 101), "sendonly")))
    return call, first, await client.expect(200)


async def test_reinvite_hold_and_cseq_order(uas: UserAgentServer, app: RecordingApp) -> None:
    async with SipClient(uas.local_port) as client:
        call, first, ok = await _held_call(client, 8)
        body = ok.body.decode()
        assert "a=recvonly" in body and "RTP/AVP 8 101" in body
        assert " 2 IN IP4" in body and " 1 IN IP4" in first.body.decode()  # o= version bumped
        client.send(call.ack())
        assert app.reinvites[0].direction == "sendonly"
        client.send(call.request("INFO", cseq=1, body="x", content_type="text/plain"))
        await client.expect(500)  # lower CSeq than the last one seen


def _o_version(body: bytes) -> str:
    origin = next(line for line in body.decode().split("\r\n") if line.startswith("o="))
    return origin.split()[2]


async def test_offerless_reinvite_keeps_hold_and_version(
    uas: UserAgentServer, app: RecordingApp
) -> None:
    async with SipClient(uas.local_port) as client:
        call, first, held = await _held_call(client, 0)
        client.send(call.ack())
        assert "a=recvonly" in held.body.decode()
        assert _o_version(held.body) == str(int(_o_version(first.body)) + 1)
        call.cseq = 3
        client.send(call.request("INVITE"))  # offerless session refresh while on hold
        refresh = await client.expect(200)
        client.send(call.ack())
        assert "a=recvonly" in refresh.body.decode()
        assert refresh.body == held.body  # unchanged SDP: same o= version (RFC 3264 §8)
        call.cseq = 4
        client.send(call.request("INVITE", body=sdp_offer((0, 101))))  # resume
        resumed = await client.expect(200)
        client.send(call.ack())
        assert "a=sendrecv" in resumed.body.decode()
        assert _o_version(resumed.body) == str(int(_o_version(held.body)) + 1)
        call.cseq = 5
        client.send(call.request("INVITE", body=sdp_offer((0, 101))))  # same offer again
        same = await client.expect(200)
        client.send(call.ack())
        assert same.body == resumed.body


async def test_reinvite_while_one_pending_is_refused(
    uas: UserAgentServer, app: RecordingApp
) -> None:
    async with SipClient(uas.local_port) as client:
        call = await answered_call(client, app)
        call.cseq = 2
        client.send(call.request("INVITE", body=sdp_offer((0,))))
        await client.expect(200)  # not ACKed yet: still pending
        call.cseq = 3
        client.send(call.request("INVITE", body=sdp_offer((8,))))
        refused = await client.expect(500)
        assert refused.get("Retry-After")


async def test_response_via_gets_received_and_rport(uas: UserAgentServer) -> None:
    async with SipClient(uas.local_port) as client:
        call = Call(client)
        client.send(
            call.request("OPTIONS").replace(
                "127.0.0.1:" + str(client.local_port) + ";branch", "192.0.2.7:5999;branch", 1
            )
        )
        ok = await client.expect(200)  # reached us although sent-by is elsewhere: rport
        via = Via.parse(ok.get("Via") or "")
        assert via.received == "127.0.0.1" and via.rport == client.local_port


async def test_missing_ack_tears_down(app: RecordingApp) -> None:
    timers = TimerConfig(t1=0.02, t2=0.08, t4=0.1)
    server = UserAgentServer(app, "127.0.0.1", 0, tcp=False, timers=timers)
    await server.start()
    try:
        async with SipClient(server.local_port) as client:
            call = Call(client)
            client.send(call.invite())
            await client.expect(200)
            retransmissions = 0
            while True:
                msg = await client.recv()
                if isinstance(msg, SipResponse) and msg.status == 200:
                    retransmissions += 1
                    continue
                assert isinstance(msg, SipRequest) and msg.method == "BYE"
                client.send(_response_to(msg, 200, "OK"))
                break
            # 64*T1 = 1.28 s at T1 doubling to T2=80 ms: 20 ms, 40 ms, then every 80 ms
            assert 12 <= retransmissions <= 18
            await app.wait_for(lambda: app.terminated == [(call.call_id, "no ACK")])
            assert app.established == []
    finally:
        await server.stop()


async def test_stop_sends_bye(app: RecordingApp) -> None:
    server = UserAgentServer(app, "127.0.0.1", 0, stop_timeout_s=2.0)
    await server.start()
    async with SipClient(server.local_port) as client:
        call = await answered_call(client, app)

        async def answer_bye() -> None:
            msg = await client.recv()
            assert isinstance(msg, SipRequest) and msg.method == "BYE"
            client.send(_response_to(msg, 200, "OK"))

        responder = asyncio.create_task(answer_bye())
        await server.stop()
        await asyncio.wait_for(responder, 2)
        await app.wait_for(lambda: app.terminated == [(call.call_id, "shutdown")])


async def test_tcp_keepalive_ping_then_call(uas: UserAgentServer, app: RecordingApp) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", uas.tcp_port)
    try:
        writer.write(b"\r\n\r\n")  # RFC 5626 ping
        assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
    finally:
        writer.close()
    async with SipClient(uas.local_port, "tcp") as client:
        client.send("\r\n")  # a lone CRLF before a message is ignored
        await answered_call(client, app)


async def test_stop_is_bounded_when_nobody_answers(app: RecordingApp) -> None:
    server = UserAgentServer(app, "127.0.0.1", 0, stop_timeout_s=0.3)
    await server.start()
    async with SipClient(server.local_port) as client:
        call = Call(client)
        client.send(call.invite())
        await client.expect(200)  # never ACKed: a hangup now waits for the ACK
        dialog = server.dialogs[0]
        pending_hangup = asyncio.create_task(dialog.hangup())
        await asyncio.sleep(0.05)
        async with asyncio.timeout(3):
            await server.stop()
        assert app.terminated == [(call.call_id, "shutdown")]
        pending_hangup.cancel()
