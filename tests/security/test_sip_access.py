"""SIP admission (issue 12): ALLOW_FROM, digest authentication of INVITE, drain (issue 13)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator

import pytest

from sip.auth import DigestAuthenticator, digest_response
from sip.guard import SipGuard
from sip.message import SipResponse
from sip.uas import UserAgentServer
from tests.sip.client import Call, SipClient, answered_call
from tests.sip.conftest import FAST
from tests.sip.fakeapp import RecordingApp

REALM = "voicebridge"


async def _server(app: RecordingApp, guard: SipGuard) -> UserAgentServer:
    server = UserAgentServer(app, "127.0.0.1", 0, timers=FAST, stop_timeout_s=0.3, guard=guard)
    await server.start()
    return server


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
async def uas(app: RecordingApp) -> AsyncIterator[UserAgentServer]:
    server = await _server(app, SipGuard())
    yield server
    await server.stop()


@pytest.fixture
async def outsider_uas(app: RecordingApp) -> AsyncIterator[UserAgentServer]:
    """A UAS whose allow list does not hold 127.0.0.1 (the tests' source)."""
    server = await _server(app, SipGuard.build(allow_from="10.0.0.0/8,192.168.0.0/16"))
    yield server
    await server.stop()


@pytest.fixture
async def auth_uas(app: RecordingApp) -> AsyncIterator[UserAgentServer]:
    """A UAS that demands digest credentials of alice:secret on INVITE."""
    guard = SipGuard(auth=DigestAuthenticator(REALM, {"alice": "secret"}, max_failures=3))
    server = await _server(app, guard)
    yield server
    await server.stop()


@pytest.mark.parametrize("method", ["OPTIONS", "REGISTER", "INVITE", "SUBSCRIBE", "BYE"])
async def test_outside_source_gets_only_403(
    outsider_uas: UserAgentServer, app: RecordingApp, method: str
) -> None:
    async with SipClient(outsider_uas.local_port) as client:
        call = Call(client)
        body = call.invite().split("\r\n\r\n", 1)[1] if method == "INVITE" else ""
        client.send(call.request(method, body=body))
        refused = await client.expect(403)
        assert refused.get("Server") is None
        assert refused.get("Allow") is None
        assert await client.silence(0.3)  # no 100 Trying, nothing else
    assert app.invites == []
    assert outsider_uas.transactions == 0  # a refused source makes no state


async def test_outside_source_gets_silence_for_garbage_and_ack(
    outsider_uas: UserAgentServer,
) -> None:
    async with SipClient(outsider_uas.local_port) as client:
        client.send(b"\x16\x03\x01 not sip at all\r\n\r\n")
        client.send(Call(client).request("ACK"))
        client.send(b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n")
        assert await client.silence(0.5)


async def test_admitted_source_still_served(app: RecordingApp) -> None:
    server = await _server(app, SipGuard.build(allow_from="127.0.0.0/8"))
    try:
        async with SipClient(server.local_port) as client:
            await Call(client).establish()
        await app.wait_for(lambda: len(app.established) == 1)
    finally:
        await server.stop()


def _authorization(challenge: str, uri: str, password: str = "secret") -> str:
    fields = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge))
    algorithm = fields["algorithm"]
    hash_name = {"SHA-256": "sha256", "MD5": "md5"}[algorithm]
    ha1 = hashlib.new(hash_name, f"alice:{REALM}:{password}".encode()).hexdigest()
    response = digest_response(
        algorithm, ha1, "INVITE", uri, fields["nonce"], qop="auth", nc="00000001", cnonce="c0ffee"
    )
    return (
        f'Authorization: Digest username="alice", realm="{REALM}", nonce="{fields["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm={algorithm}, qop=auth, '
        f'nc=00000001, cnonce="c0ffee"'
    )


async def _challenge(client: SipClient, call: Call) -> SipResponse:
    client.send(call.invite())
    challenge = await client.expect(401, call_id=call.call_id)
    client.send(call.request("ACK", branch=call.invite_branch, cseq=call.cseq))
    return challenge


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
async def test_invite_challenged_then_admitted(
    auth_uas: UserAgentServer, app: RecordingApp, algorithm: str
) -> None:
    async with SipClient(auth_uas.local_port) as client:
        call = Call(client)
        challenge = await _challenge(client, call)
        offered = challenge.get_all("WWW-Authenticate")
        assert [re.search(r"algorithm=([\w-]+)", v).group(1) for v in offered] == [  # type: ignore[union-attr]
            "SHA-256",
            "MD5",
        ]
        assert app.invites == []
        chosen = next(v for v in offered if f"algorithm={algorithm}" in v)
        uri = f"sip:bot@127.0.0.1:{client.port}"
        call.cseq = 2
        call.invite_branch = "z9hG4bKretry" + call.call_id[:8]
        sdp = call.invite().split("\r\n\r\n", 1)[1]
        client.send(
            call.request(
                "INVITE", branch=call.invite_branch, body=sdp, extra=_authorization(chosen, uri)
            )
        )
        ok = await client.expect(200, call_id=call.call_id)
        call.to_tag = ok.get("To", "").split("tag=")[1]  # type: ignore[union-attr]
        client.send(call.ack())
        await app.wait_for(lambda: len(app.established) == 1)
        # in-dialog requests of the authenticated dialog: no new challenge
        call.cseq = 3
        client.send(call.request("INVITE", body=sdp))
        await client.expect(200, call_id=call.call_id)
        client.send(call.ack())
        call.cseq = 4
        client.send(call.request("BYE"))
        await client.expect(200, call_id=call.call_id)
    await app.wait_for(lambda: app.terminated == [(call.call_id, "bye")])
    assert len(app.invites) == 1


async def test_repeated_failures_get_403(auth_uas: UserAgentServer, app: RecordingApp) -> None:
    async with SipClient(auth_uas.local_port) as client:
        statuses = []
        for attempt in range(4):
            call = Call(client)
            challenge = await _challenge(client, call)
            chosen = challenge.get_all("WWW-Authenticate")[0]
            uri = f"sip:bot@127.0.0.1:{client.port}"
            call.cseq = 2
            sdp = call.invite().split("\r\n\r\n", 1)[1]
            bad = _authorization(chosen, uri, password=f"guess{attempt}")
            client.send(call.request("INVITE", body=sdp, extra=bad))
            reply = await client.recv()
            while isinstance(reply, SipResponse) and reply.status < 200:
                reply = await client.recv()
            assert isinstance(reply, SipResponse)
            statuses.append(reply.status)
            if reply.status == 403:
                break
        assert statuses[-1] == 403
        assert set(statuses[:-1]) <= {401}
        # the source stays out: even a fresh INVITE now gets 403, not a challenge
        client.send(Call(client).invite())
        assert (await client.expect(403)).status == 403
    assert app.invites == []


async def test_not_accepting_calls_refuses_invite_and_options(
    uas: UserAgentServer, app: RecordingApp
) -> None:
    async with SipClient(uas.local_port) as client:
        live = await answered_call(client, app)
        app.accepting = False  # draining
        call = Call(client)
        client.send(call.invite())
        busy = await client.expect(503, call_id=call.call_id)
        assert busy.get("Retry-After")
        probe = Call(client)
        client.send(probe.request("OPTIONS"))
        assert (await client.expect(503, call_id=probe.call_id)).get("Retry-After")
        # the call already up keeps working
        live.cseq = 2
        client.send(live.request("INFO", body="Signal=5\r\n", content_type="application/dtmf"))
        await client.expect(200, call_id=live.call_id)
        live.cseq = 3
        client.send(live.request("BYE"))
        await client.expect(200, call_id=live.call_id)
        app.accepting = True
        client.send(probe.request("OPTIONS", cseq=2))
        await client.expect(200, call_id=probe.call_id)
    assert len(app.invites) == 1


async def test_403_goes_to_the_source_whatever_the_via_says(
    outsider_uas: UserAgentServer,
) -> None:
    async with SipClient(outsider_uas.local_port) as client:
        call = Call(client)
        lying = call.request("OPTIONS").replace(
            client.via("x").split(";branch")[0] + ";branch=", "SIP/2.0/UDP 127.0.0.1:9;branch="
        )
        lying = lying.replace(";rport", "", 1)
        assert "127.0.0.1:9;branch=" in lying and ";rport" not in lying.split("\r\n")[1]
        client.send(lying)
        await client.expect(403)
