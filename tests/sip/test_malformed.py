"""Malformed input gets 400 (when it can be answered) or silence, and never harms the next call."""

from __future__ import annotations

import asyncio
import os

import pytest

from sip.message import SipResponse
from sip.uas import UserAgentServer
from tests.sip.client import Call, SipClient, answered_call
from tests.sip.fakeapp import RecordingApp

pytestmark = pytest.mark.timeout(60)


def _drop_header(text: str, name: str) -> str:
    return "".join(
        line
        for line in text.splitlines(keepends=True)
        if not line.lower().startswith(name.lower() + ":")
    )


def _set_length(text: str, value: str) -> str:
    head, _, body = text.partition("\r\n\r\n")
    head = "\r\n".join(
        f"Content-Length: {value}" if line.startswith("Content-Length:") else line
        for line in head.split("\r\n")
    )
    return head + "\r\n\r\n" + body


def _malformed(call: Call) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected: "400", "silence" or "either")."""
    invite = call.invite()
    big = "X-Padding: " + "a" * 60000 + "\r\n"
    cases: dict[str, tuple[str | bytes, str]] = {
        "truncated": (invite[: len(invite) // 3], "either"),
        "truncated body": (invite[:-40], "400"),
        "no Call-ID": (_drop_header(invite, "Call-ID"), "silence"),
        "no CSeq": (_drop_header(invite, "CSeq"), "silence"),
        "no Via": (_drop_header(invite, "Via"), "silence"),
        "no From": (_drop_header(invite, "From"), "400"),
        "no To": (_drop_header(invite, "To"), "400"),
        "Content-Length abc": (_set_length(invite, "abc"), "400"),
        "Content-Length -5": (_set_length(invite, "-5"), "400"),
        "Content-Length huge": (_set_length(invite, "99999999999"), "400"),
        "binary junk": (os.urandom(700), "silence"),
        "junk after start line": (b"INVITE sip:x SIP/2.0\r\n\x00\xff\xfe\r\n\r\n", "silence"),
        "empty": (b"\r\n\r\n", "silence"),
        "60 KiB header": (invite.replace("Max-Forwards: 70\r\n", big), "400"),
        "bad CSeq": (invite.replace("CSeq: 1 INVITE", "CSeq: one INVITE"), "silence"),
        "CSeq method mismatch": (invite.replace("CSeq: 1 INVITE", "CSeq: 1 BYE"), "400"),
        "bad Via": (invite.replace("Via: SIP/2.0/UDP", "Via: garbage"), "silence"),
        "bad From": (invite.replace('From: "Tester" <sip', 'From: "Tester <sip'), "400"),
        "response without Via": (b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n", "silence"),
        "bad SDP": (invite.replace("v=0", "v=9"), "400"),
    }
    out: dict[str, tuple[bytes, str]] = {}
    for name, (data, expected) in cases.items():
        out[name] = (data.encode() if isinstance(data, str) else data, expected)
    return out


async def test_malformed_udp_then_valid_call(uas: UserAgentServer, app: RecordingApp) -> None:
    async with SipClient(uas.local_port) as client:
        for name, (data, expected) in _malformed(Call(client)).items():
            client.send(data)
            try:
                reply = await client.recv(wait_s=0.25)
            except TimeoutError:
                assert expected in ("silence", "either"), (
                    f"{name}: expected {expected}, got silence"
                )
                continue
            assert expected in ("400", "either"), f"{name}: unexpected {reply.start_line()}"
            if isinstance(reply, SipResponse) and reply.status == 100:
                reply = await client.recv(wait_s=1.0)  # e.g. a bad SDP is refused after 100
            assert isinstance(reply, SipResponse) and reply.status == 400, name
            assert reply.get("Warning") or "(" in reply.reason, name
        assert app.invites == []
        await answered_call(client, app)


async def test_malformed_tcp_then_valid_call(uas: UserAgentServer, app: RecordingApp) -> None:
    cases = {
        "no Content-Length": (lambda c: _drop_header(c.invite(), "Content-Length"), True),
        "Content-Length abc": (lambda c: _set_length(c.invite(), "abc"), True),
        "64 KiB header": (
            lambda c: c.invite().replace("Max-Forwards: 70\r\n", "X-Pad: " + "a" * 65536 + "\r\n"),
            False,
        ),
        "binary junk": (lambda c: os.urandom(3000).replace(b"\r\n\r\n", b"") + b"\r\n\r\n", False),
    }
    for name, (build, answered) in cases.items():
        async with SipClient(uas.local_port, "tcp") as client:
            data = build(Call(client))
            client.send(data)
            replies = []
            try:
                while True:
                    replies.append(await client.recv(wait_s=2.0))
            except ConnectionError:
                pass  # the UAS closed the connection: framing was lost
            statuses = [r.status for r in replies if isinstance(r, SipResponse)]
            assert statuses == ([400] if answered else []), name
    async with SipClient(uas.local_port, "tcp") as client:
        await answered_call(client, app)


async def test_mutated_invites_never_break_the_server(
    uas: UserAgentServer, app: RecordingApp
) -> None:
    """Random byte edits of a valid INVITE: whatever happens, the next call works."""
    import random

    rng = random.Random(4)
    # the mutants answered 200 are never ACKed: lift the per-source bound on those
    uas.guard.max_unacked_invites_per_source = 1000
    async with SipClient(uas.local_port) as client:
        for _ in range(150):
            data = bytearray(Call(client).invite().encode())
            for _ in range(rng.randint(1, 6)):
                pos = rng.randrange(len(data))
                data[pos : pos + rng.randint(0, 3)] = bytes(
                    rng.randrange(256) for _ in range(rng.randint(0, 3))
                )
            client.send(bytes(data))
        await asyncio.sleep(0.5)
        while not client.raw.empty():
            client.raw.get_nowait()
        accepted = len(app.invites)
        assert accepted < 150  # most mutations must have been refused
        call = Call(client)
        await call.establish()
        await app.wait_for(lambda: len(app.invites) == accepted + 1 and len(app.established) >= 1)
