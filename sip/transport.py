"""UDP and TCP transports (RFC 3261 §18) and response routing per the top Via (RFC 3581).

The transports only move bytes: a UDP datagram or a Content-Length-framed TCP message is
handed to the `MessageHandler` with its `Source`; parsing belongs to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sip.message import MAX_BODY_BYTES, MAX_HEAD_BYTES, SipMessage, Via, format_hostport
from sip.tasks import TaskSet

log = logging.getLogger("sip.transport")

TransportName = Literal["udp", "tcp"]
DEFAULT_PORT = 5060
TCP_IDLE_TIMEOUT_S = 300.0
TCP_MAX_CONNECTIONS = 2000
_SHARED_PORT_TRIES = 20
"""Port 0: how many OS-picked numbers to try for one shared UDP+TCP port."""
TCP_MAX_CONNECTIONS_PER_SOURCE = 200
"""Not lower: SIPp over TCP (`-t tn`) opens one connection per call, so `-l 100` from one
address holds about 100, plus those still closing."""
TCP_MAX_WRITE_BUFFER = 256 * 1024
UDP_RECV_BUFFER = 4 * 1024 * 1024


@dataclass(frozen=True)
class Source:
    """Where a message came from, and so how to answer it."""

    transport: TransportName
    addr: tuple[str, int]
    conn: TcpConnection | None = None


MessageHandler = Callable[[bytes, Source], None]


def is_ip(host: str) -> bool:
    """True for an IPv4/IPv6 literal."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def annotate_via(message: SipMessage, source_ip: str, source_port: int) -> None:
    """Add `received` when the sent-by host differs from the source address, and fill an
    empty `rport` (RFC 3261 §18.2.1, RFC 3581 §4). Leaves a bad Via untouched."""
    for i, (name, value) in enumerate(message.headers):
        if name.lower() != "via":
            continue
        try:
            via = Via.parse(value)
        except ValueError:
            return
        if via.wants_rport:
            via.params["rport"] = str(source_port)
            via.params["received"] = source_ip
        elif via.host != source_ip:
            via.params["received"] = source_ip
        message.headers[i] = (name, str(via))
        return


def response_destination(via: Via, reliable: bool = False) -> tuple[str, int]:
    """Where a response to a request with top Via `via` goes: over UDP the received/rport
    values when present, else sent-by; over a new TCP connection `received` (or the
    sent-by host) with the sent-by port (RFC 3261 §18.2.2), never the client's
    ephemeral rport."""
    host = via.received or via.host
    if reliable:
        return host, via.port or DEFAULT_PORT
    port = via.rport or via.port or DEFAULT_PORT
    return host, port


class TcpConnection:
    """One SIP-over-TCP connection, framed by Content-Length."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: MessageHandler,
        on_close: Callable[[TcpConnection], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._on_close = on_close
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1]))
        local = writer.get_extra_info("sockname") or ("127.0.0.1", 0)
        self.local_addr: tuple[str, int] = (str(local[0]), int(local[1]))
        self.closed = False
        self.task: asyncio.Task[None] = asyncio.create_task(self._read_loop())

    def send(self, data: bytes) -> None:
        """Queue bytes on the connection. Raises ConnectionError when it is closed, or
        when the peer has left over TCP_MAX_WRITE_BUFFER bytes unread (the connection
        is then closed: a peer that never reads must not grow our memory)."""
        if self.closed or self._writer.is_closing():
            raise ConnectionError("TCP connection closed")
        buffered = self._writer.transport.get_write_buffer_size()
        if buffered > TCP_MAX_WRITE_BUFFER:
            log.warning(
                "call_id=- tcp %s: peer not reading (%d bytes unsent), closing",
                format_hostport(*self.peer),
                buffered,
            )
            self.close(abort=True)
            raise ConnectionError("TCP peer not reading; connection closed")
        self._writer.write(data)

    async def _read_loop(self) -> None:
        source = Source("tcp", self.peer, self)
        try:
            while True:
                head = await self._read_head()
                if head is None:
                    return
                length = _content_length(head)
                if length is None or length > MAX_BODY_BYTES:
                    # framing lost: let the handler answer 400 from the head, then close
                    self._handler(head, source)
                    return
                body = await asyncio.wait_for(self._reader.readexactly(length), 30.0)
                self._handler(head + body, source)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except asyncio.LimitOverrunError:
            log.info(
                "call_id=- tcp %s: header section over %d bytes, closing", self.peer, MAX_HEAD_BYTES
            )
        except Exception:
            log.exception("call_id=- tcp %s: read loop failed", self.peer)
        finally:
            self.close()

    async def _read_head(self) -> bytes | None:
        while True:
            # keep-alive CRLFs (RFC 5626 §3.5.1): a double CRLF ping gets a single CRLF pong
            first = await asyncio.wait_for(self._reader.readexactly(1), TCP_IDLE_TIMEOUT_S)
            if first == b"\r":
                nxt = await asyncio.wait_for(self._reader.readexactly(1), TCP_IDLE_TIMEOUT_S)
                if nxt != b"\n":
                    first += nxt
                else:
                    peek = await asyncio.wait_for(self._reader.readexactly(2), TCP_IDLE_TIMEOUT_S)
                    if peek == b"\r\n":
                        with contextlib.suppress(ConnectionError):
                            self.send(b"\r\n")
                        continue
                    first = peek
            elif first == b"\n":
                continue
            rest = await asyncio.wait_for(self._reader.readuntil(b"\r\n\r\n"), 30.0)
            return first + rest

    def close(self, abort: bool = False) -> None:
        """Close the socket (idempotent); `abort` drops unsent data instead of flushing it."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            if abort:
                self._writer.transport.abort()
            else:
                self._writer.close()
        self._on_close(self)


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in (b"content-length", b"l"):
            text = value.strip()
            return int(text) if text.isdigit() and len(text) <= 9 else None
    return None


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: MessageHandler) -> None:
        self._handler = handler

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._handler(data, Source("udp", (str(addr[0]), int(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        log.debug("call_id=- udp error: %s", exc)


class TransportLayer:
    """The UDP socket and TCP listener of one UAS, plus outgoing TCP connections."""

    def __init__(self, handler: MessageHandler) -> None:
        self._handler = handler
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._connections: dict[tuple[str, int], TcpConnection] = {}
        self._sends = TaskSet("sip-transport", log)  # responses waiting for a TCP connection
        self.udp_port = 0
        self.tcp_port = 0
        self.max_per_source = TCP_MAX_CONNECTIONS_PER_SOURCE

    async def start(self, host: str, port: int, udp: bool, tcp: bool) -> None:
        """Bind UDP and/or TCP on host:port. Port 0: the OS picks, and both share one number
        (SIP's one port for both transports): a number whose TCP side is taken is given back
        and another tried, a few times, before TCP takes a port of its own."""
        for attempt in range(_SHARED_PORT_TRIES if port == 0 and udp and tcp else 1):
            if udp:
                await self._bind_udp(host, port)
            if not tcp:
                return
            try:
                self._tcp_server = await asyncio.start_server(
                    self._accept, host, port or self.udp_port, limit=MAX_HEAD_BYTES
                )
                break
            except OSError:
                if port:
                    raise
                if udp and attempt + 1 < _SHARED_PORT_TRIES:
                    assert self._udp is not None
                    self._udp.close()
                    continue
                self._tcp_server = await asyncio.start_server(
                    self._accept, host, 0, limit=MAX_HEAD_BYTES
                )
                break
        if tcp and self._tcp_server is not None:
            self.tcp_port = int(self._tcp_server.sockets[0].getsockname()[1])

    async def _bind_udp(self, host: str, port: int) -> None:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _UdpProtocol(self._handler), local_addr=(host, port)
        )
        self._udp = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # absorb call bursts (capped by rmem_max)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECV_BUFFER)
        self.udp_port = int(transport.get_extra_info("sockname")[1])

    @property
    def connection_count(self) -> int:
        """TCP connections open now (accepted and ours)."""
        return len(self._connections)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        ip = str(peer[0])
        from_peer = sum(1 for c in self._connections.values() if c.peer[0] == ip)
        if len(self._connections) >= TCP_MAX_CONNECTIONS or from_peer >= self.max_per_source:
            log.warning(
                "call_id=- tcp %s: %d connections open, %d from it"
                " (the cap: %d, %d per source), refusing",
                format_hostport(ip, int(peer[1])),
                len(self._connections),
                from_peer,
                TCP_MAX_CONNECTIONS,
                self.max_per_source,
            )
            writer.close()
            return
        conn = TcpConnection(reader, writer, self._handler, self._forget)
        self._connections[conn.peer] = conn

    def _forget(self, conn: TcpConnection) -> None:
        if self._connections.get(conn.peer) is conn:
            del self._connections[conn.peer]

    def send_udp(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram (raises ConnectionError when UDP is not running)."""
        if self._udp is None or self._udp.is_closing():
            raise ConnectionError("UDP transport not running")
        self._udp.sendto(data, addr)

    async def tcp_connection(self, addr: tuple[str, int]) -> TcpConnection:
        """An open connection to addr: reused if we have one, else a new one."""
        conn = self._connections.get(addr)
        if conn is not None and not conn.closed:
            return conn
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(addr[0], addr[1], limit=MAX_HEAD_BYTES), 5.0
        )
        conn = TcpConnection(reader, writer, self._handler, self._forget)
        self._connections[addr] = conn
        return conn

    def send_response(self, message: SipMessage, source: Source) -> None:
        """Route a response per its top Via: on the request's TCP connection while open,
        else to received/rport/sent-by."""
        data = message.to_bytes()
        if source.transport == "tcp":
            if source.conn is not None and not source.conn.closed:
                source.conn.send(data)
                return
            vias = message.get_all("Via")
            if vias:
                dest = response_destination(Via.parse(vias[0]), reliable=True)
                self._sends.spawn(self._send_tcp_later(data, dest), "tcp-response")
            return
        vias = message.get_all("Via")
        dest = response_destination(Via.parse(vias[0])) if vias else source.addr
        if not is_ip(dest[0]):
            dest = source.addr  # never block on DNS for a response
        self.send_udp(data, dest)

    async def _send_tcp_later(self, data: bytes, dest: tuple[str, int]) -> None:
        try:
            conn = await self.tcp_connection(dest)
            conn.send(data)
        except (OSError, TimeoutError) as exc:
            log.info("call_id=- tcp response to %s failed: %s", format_hostport(*dest), exc)

    async def close(self) -> None:
        """Close every socket (and give up on responses still waiting for a connection)."""
        await self._sends.cancel_all()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp_server is not None:
            self._tcp_server.close()
        for conn in list(self._connections.values()):
            conn.close()
        tasks = [c.task for c in self._connections.values()]
        self._connections.clear()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._tcp_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp_server.wait_closed(), 2.0)
            self._tcp_server = None
