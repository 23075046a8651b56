"""TCP resource limits and response routing of `sip.transport` over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket

import pytest

import sip.transport
from sip.message import SipResponse, Via, parse_message
from sip.transport import response_destination
from sip.uas import UserAgentServer
from tests.sip.client import Call, SipClient
from tests.sip.fakeapp import RecordingApp

pytestmark = pytest.mark.timeout(30)


def _options(port: int, local_port: int) -> bytes:
    branch = "z9hG4bK" + secrets.token_hex(8)
    return (
        f"OPTIONS sip:bot@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:{local_port};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:flood@127.0.0.1>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:bot@127.0.0.1:{port}>\r\n"
        f"Call-ID: {secrets.token_hex(8)}@flood\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def _closed_by_peer(reader: asyncio.StreamReader, wait_s: float = 3.0) -> bool:
    """True when the other side closes (EOF or reset) within `wait_s`."""
    try:
        async with asyncio.timeout(wait_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def _call_succeeds(uas: UserAgentServer, app: RecordingApp, transport: str) -> None:
    before = len(app.established)
    async with SipClient(uas.local_port, transport) as client:
        await Call(client).establish()
        await app.wait_for(lambda: len(app.established) == before + 1)


async def test_tcp_peer_that_never_reads_is_disconnected(
    uas: UserAgentServer, app: RecordingApp, caplog: pytest.LogCaptureFixture
) -> None:
    # a tiny receive window on our side, so the UAS's writes pile up in its own buffer
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", uas.tcp_port))
    _reader, writer = await asyncio.open_connection(sock=sock)
    local_port = sock.getsockname()[1]
    closed = False
    with caplog.at_level(logging.WARNING, logger="sip.transport"):
        try:
            async with asyncio.timeout(20):
                while not closed:
                    writer.write(b"".join(_options(uas.tcp_port, local_port) for _ in range(200)))
                    await writer.drain()
                    closed = not any(peer[1] == local_port for peer in uas._transports._connections)
        except ConnectionError:
            closed = True
        finally:
            writer.close()
    assert closed
    assert any("peer not reading" in r.getMessage() for r in caplog.records)
    await _call_succeeds(uas, app, "udp")
    await _call_succeeds(uas, app, "tcp")


async def test_idle_tcp_connection_is_closed(
    uas: UserAgentServer, app: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sip.transport, "TCP_IDLE_TIMEOUT_S", 0.3)
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", uas.tcp_port)
    half_reader, half = await asyncio.open_connection("127.0.0.1", uas.tcp_port)
    try:
        half.write(b"\r\n")  # half a keep-alive ping, then nothing
        assert await _closed_by_peer(silent_reader)
        assert await _closed_by_peer(half_reader)
    finally:
        silent.close()
        half.close()
    await _call_succeeds(uas, app, "tcp")


async def test_tcp_connection_cap(
    uas: UserAgentServer,
    app: RecordingApp,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(sip.transport, "TCP_MAX_CONNECTIONS", 2)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", uas.tcp_port)
            held.append((reader, writer))
            writer.write(b"\r\n\r\n")  # a ping proves the UAS took the connection
            assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
        with caplog.at_level(logging.WARNING, logger="sip.transport"):
            reader, writer = await asyncio.open_connection("127.0.0.1", uas.tcp_port)
            held.append((reader, writer))
            assert await _closed_by_peer(reader)
        assert any("the cap" in r.getMessage() for r in caplog.records)
        await _call_succeeds(uas, app, "udp")
    finally:
        for _, writer in held:
            writer.close()
    for reader, _ in held:  # the UAS closes its side: the slots are free again
        assert await _closed_by_peer(reader)
    await _call_succeeds(uas, app, "tcp")


@pytest.mark.parametrize(
    ("via", "reliable", "dest"),
    [
        ("SIP/2.0/TCP 192.0.2.1:5070;branch=z9hG4bKa;rport=40001;received=198.51.100.2", True,
         ("198.51.100.2", 5070)),
        ("SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKa;rport=40001;received=198.51.100.2", True,
         ("198.51.100.2", 5060)),
        ("SIP/2.0/TCP 192.0.2.1:5070;branch=z9hG4bKa", True, ("192.0.2.1", 5070)),
        ("SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKa;rport=40001;received=198.51.100.2", False,
         ("198.51.100.2", 40001)),
        ("SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKa", False, ("192.0.2.1", 5070)),
    ],
)  # fmt: skip
def test_response_destination(via: str, reliable: bool, dest: tuple[str, int]) -> None:
    assert response_destination(Via.parse(via), reliable=reliable) == dest


async def test_tcp_response_after_close_goes_to_sent_by_port(
    uas: UserAgentServer, app: RecordingApp
) -> None:
    app.invite_delay_s = 0.5
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                received.put_nowait(head + await reader.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(accept, "127.0.0.1", 0)
    listen_port = listener.sockets[0].getsockname()[1]
    try:
        client = SipClient(uas.tcp_port, "tcp")
        async with client:
            call = Call(client)
            client.local_port = listen_port  # Via sent-by: our listening port
            client.send(call.invite())
            await client.expect(100)
        # the request's connection is gone; the 200 must come to sent-by, not to rport
        async with asyncio.timeout(5):
            while True:
                msg = parse_message(await received.get())
                if isinstance(msg, SipResponse) and msg.status == 200:
                    break
        assert msg.call_id == call.call_id
    finally:
        listener.close()
        await asyncio.wait_for(listener.wait_closed(), 2)
