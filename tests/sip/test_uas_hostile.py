"""Issue 12 findings 6 and 8, issue 13 SIP lifecycle: duplicate Call-IDs, where our
in-dialog requests go, CANCEL of a re-INVITE, a stop that bounds itself."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from sip.access import AddressFilter
from sip.guard import SipGuard
from sip.message import SipRequest, SipResponse, parse_message
from sip.uas import UserAgentServer
from tests.sip.client import Call, SipClient, answered_call, sdp_offer
from tests.sip.conftest import FAST
from tests.sip.fakeapp import RecordingApp


def _with_header(text: str, name: str, value: str) -> str:
    """`text` (a request) with its `name` header replaced by, or given, `value`."""
    head, body = text.split("\r\n\r\n", 1)
    lines = [line for line in head.split("\r\n") if not line.startswith(f"{name}:")]
    lines.insert(1, f"{name}: {value}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


async def _answer_200(client: SipClient, wait_s: float = 5.0) -> SipRequest:
    """The next request to `client` (skipping retransmitted responses), answered 200."""
    async with asyncio.timeout(wait_s):
        while True:
            message = await client.recv(wait_s)
            if isinstance(message, SipRequest):
                break
    client.send(_ok(message))
    return message


async def _establish(call: Call, app: RecordingApp, invite: str) -> SipResponse:
    """Send `invite` (a variant of `call.invite()`), ACK its 200, wait for the app."""
    ok = await call.establish(invite=invite)
    await app.wait_for(lambda: len(app.established) >= 1)
    return ok


def _ok(request: SipRequest) -> str:
    lines = ["SIP/2.0 200 OK"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        lines += [f"{name}: {value}" for value in request.get_all(name)]
    return "\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n"


# ------------------------------------------------------------- duplicate Call-ID


async def test_second_invite_with_live_call_id_gets_482(
    uas: UserAgentServer, app: RecordingApp
) -> None:
    async with SipClient(uas.local_port) as client:
        first = await answered_call(client, app)
        intruder = Call(client)
        intruder.call_id = first.call_id  # same Call-ID, other From-tag and branch
        client.send(intruder.invite())
        await client.expect(482, call_id=first.call_id)
        client.send(intruder.request("ACK", branch=intruder.invite_branch))
        assert len(app.invites) == 1
        assert len(uas.dialogs) == 1 and uas.dialogs[0].state == "confirmed"
        first.cseq = 2
        client.send(first.request("BYE"))
        await client.expect(200, call_id=first.call_id)
    await app.wait_for(lambda: app.terminated == [(first.call_id, "bye")])


async def test_invite_reusing_a_pending_call_id_gets_482(
    uas: UserAgentServer, app: RecordingApp
) -> None:
    app.invite_delay_s = 0.5
    async with SipClient(uas.local_port) as client:
        first = Call(client)
        client.send(first.invite())
        await app.wait_for(lambda: len(app.invites) == 1)
        second = Call(client)
        second.call_id = first.call_id
        client.send(second.invite())
        finals: dict[str, int] = {}  # From-tag -> first final status
        while len(finals) < 2:
            message = await client.recv()
            if isinstance(message, SipResponse) and message.status >= 200:
                from_tag = (message.get("From") or "").split("tag=")[1]
                finals.setdefault(from_tag, message.status)
        assert list(finals.items()) == [(second.from_tag, 482), (first.from_tag, 200)]
        assert len(app.invites) == 1


async def test_late_retransmission_still_ignored_not_482(
    uas: UserAgentServer, app: RecordingApp
) -> None:
    async with SipClient(uas.local_port) as client:
        call = Call(client)
        await call.establish()
        await asyncio.sleep(FAST.timeout + 0.2)  # the INVITE transaction has ended
        call.to_tag = ""  # the initial INVITE, exactly as first sent
        client.send(call.invite())
        assert await client.silence(0.4)
    assert len(app.invites) == 1


# ------------------------------------------------------- where our BYE goes


async def test_bye_ignores_a_contact_outside_the_caller(
    uas: UserAgentServer, app: RecordingApp
) -> None:
    async with SipClient(uas.local_port) as client:
        call = Call(client)
        contact = "<sip:x@10.255.255.1:5099;transport=tcp>"
        await _establish(call, app, _with_header(call.invite(), "Contact", contact))
        assert len(app.established) == 1
        hangup = asyncio.create_task(app.established[0].hangup())
        bye = await _answer_200(client, 3.0)  # reached us, where the caller signalled from
        assert bye.method == "BYE" and bye.uri == "sip:x@10.255.255.1:5099;transport=tcp"
        await asyncio.wait_for(hangup, 3)
    assert uas.tcp_connections == 0  # no connection attempt towards 10.255.255.1
    await app.wait_for(lambda: len(app.terminated) == 1)


async def test_contact_admitted_by_allow_list_is_used(app: RecordingApp) -> None:
    guard = SipGuard(allow=AddressFilter.parse("127.0.0.0/8"))
    uas = UserAgentServer(app, "127.0.0.1", 0, timers=FAST, stop_timeout_s=0.3, guard=guard)
    await uas.start()
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.2", 0))
    other.setblocking(False)
    try:
        async with SipClient(uas.local_port) as client:
            call = Call(client)
            contact = f"<sip:x@127.0.0.2:{other.getsockname()[1]}>"
            await _establish(call, app, _with_header(call.invite(), "Contact", contact))
            hangup = asyncio.create_task(app.established[0].hangup())
            loop = asyncio.get_running_loop()
            data = await asyncio.wait_for(loop.sock_recv(other, 65535), 3.0)
            bye = parse_message(data)
            assert isinstance(bye, SipRequest) and bye.method == "BYE"
            hangup.cancel()
    finally:
        other.close()
        await uas.stop()


async def test_bye_follows_loose_record_route(uas: UserAgentServer, app: RecordingApp) -> None:
    async with SipClient(uas.local_port) as client, SipClient(uas.local_port) as proxy:
        call = Call(client)
        route = f"<sip:127.0.0.1:{proxy.local_port};lr>"
        ok = await _establish(call, app, _with_header(call.invite(), "Record-Route", route))
        assert ok.get("Record-Route") == route
        hangup = asyncio.create_task(app.established[0].hangup())
        bye = await _answer_200(proxy, 3.0)
        assert bye.method == "BYE"
        assert bye.get_all("Route") == [route]
        assert bye.uri == f"sip:tester@127.0.0.1:{client.local_port};transport=udp"
        await asyncio.wait_for(hangup, 3)
        assert await client.silence(0.2)  # nothing went to the Contact directly


async def test_slow_contact_name_does_not_stall_the_loop(
    uas: UserAgentServer, app: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    lookups: list[str] = []

    async def slow_getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        lookups.append(host)
        await asyncio.sleep(2.0)
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("203.0.113.5", 0))]

    monkeypatch.setattr(loop, "getaddrinfo", slow_getaddrinfo)
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with SipClient(uas.local_port) as client:
        call = Call(client)
        await _establish(
            call,
            app,
            _with_header(call.invite(), "Contact", "<sip:x@slow.example.invalid>"),
        )
        ticker = asyncio.create_task(tick())
        hangup = asyncio.create_task(app.established[0].hangup())
        bye = await _answer_200(client, 6.0)  # the caller's source: not port 5060 of a name
        await asyncio.wait_for(hangup, 3)
        ticker.cancel()
    assert bye.method == "BYE"
    assert lookups == ["slow.example.invalid"]
    assert len(gaps) > 20 and max(gaps) < 0.5  # the loop kept ticking during the lookup


# ------------------------------------------------------- CANCEL of a re-INVITE


async def test_cancel_of_reinvite_gets_487_and_dialog_stays(
    uas: UserAgentServer, app: RecordingApp
) -> None:
    async with SipClient(uas.local_port) as client:
        call = await answered_call(client, app)
        app.reinvite_delay_s = 0.5
        call.cseq = 2
        branch = "z9hG4bKreinv" + call.call_id[:8]
        client.send(call.request("INVITE", branch=branch, body=sdp_offer(direction="sendonly")))
        await app.wait_for(lambda: len(app.reinvites) == 1)
        client.send(call.request("CANCEL", branch=branch, cseq=2))
        seen: dict[str, int] = {}
        while len(seen) < 2:
            message = await client.recv()
            if isinstance(message, SipResponse) and message.status >= 200:
                seen[message.cseq.method] = message.status
        assert seen == {"CANCEL": 200, "INVITE": 487}
        client.send(call.request("ACK", branch=branch, cseq=2))
        assert await client.silence(0.8)  # no late 200 after the app answered
        assert uas.dialogs[0].state == "confirmed"
        call.cseq = 3
        client.send(call.request("BYE"))
        await client.expect(200, call_id=call.call_id)
    await app.wait_for(lambda: app.terminated == [(call.call_id, "bye")])


# ------------------------------------------------------------- bounded stop


async def test_stop_bounds_itself_and_closes_sockets(app: RecordingApp) -> None:
    """Nobody answers the BYEs and the application's on_terminated hangs: stop() still
    returns within about its own timeout (Bridge.stop must not need to cancel it)."""
    server = UserAgentServer(app, "127.0.0.1", 0, timers=FAST, stop_timeout_s=1.0)
    app.terminate_delay_s = 30.0
    await server.start()
    port = server.local_port
    async with SipClient(port) as client:
        for _ in range(3):
            await Call(client).establish()
        await app.wait_for(lambda: len(app.established) == 3)
        started = time.monotonic()
        await server.stop()  # nobody answers the BYEs; no outer timeout needed
        assert time.monotonic() - started < 1.0 + 0.6
    assert server.dialogs == []
    assert sorted(reason for _, reason in app.terminated) == ["shutdown"] * 3
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", port))  # the UDP socket is closed


def test_route_set_and_strict_routing() -> None:
    from sip.api import CallInfo
    from sip.dialog import DialogId, SipDialog, route_set_of
    from sip.transport import Source

    routes = route_set_of(["<sip:p1.example;lr>, <sip:p2.example;lr>", "<sip:p3.example>"])
    assert routes == ["<sip:p1.example;lr>", "<sip:p2.example;lr>", "<sip:p3.example>"]
    info = CallInfo("c", "sip:a@x", "sip:b@y", ("127.0.0.1", 5060), "127.0.0.1", "udp")

    def dialog(route_set: list[str]) -> SipDialog:
        return SipDialog(
            id=DialogId("c", "l", "r"),
            info=info,
            local_uri="<sip:b@y>;tag=l",
            remote_uri="<sip:a@x>;tag=r",
            remote_target="sip:a@10.1.1.1:5070",
            route_set=route_set,
            remote_cseq=1,
            source=Source("udp", ("127.0.0.1", 5060)),
            host=None,  # type: ignore[arg-type]
        )

    loose = dialog(routes[:2]).new_request("BYE")
    assert loose.uri == "sip:a@10.1.1.1:5070"
    assert loose.get_all("Route") == routes[:2]
    strict = dialog(["<sip:p3.example;maddr=1.2.3.4>", "<sip:p4.example;lr>"])
    bye = strict.new_request("BYE")
    assert bye.uri.startswith("sip:p3.example")
    assert bye.get_all("Route") == ["<sip:p4.example;lr>", "<sip:a@10.1.1.1:5070>"]
    assert dialog(routes).destination().host == "p1.example"
