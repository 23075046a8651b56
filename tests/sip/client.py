"""A raw SIP test client over UDP or TCP: sends text, collects parsed messages."""

from __future__ import annotations

import asyncio
import secrets

from sip.message import SipParseError, SipRequest, SipResponse, parse_message
from tests.sip.fakeapp import RecordingApp

SDP_OFFER = (
    "v=0\r\n"
    "o=test 1 1 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 6000 RTP/AVP {formats}\r\n"
    "{rtpmaps}"
    "a=sendrecv\r\n"
)
RTPMAPS = {
    0: "a=rtpmap:0 PCMU/8000\r\n",
    8: "a=rtpmap:8 PCMA/8000\r\n",
    18: "a=rtpmap:18 G729/8000\r\n",
    101: "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n",
    111: "a=rtpmap:111 opus/48000/2\r\n",
}


def sdp_offer(payloads: tuple[int, ...] = (0, 8, 101), direction: str = "sendrecv") -> str:
    """An SDP offer with the given payload types."""
    body = SDP_OFFER.format(
        formats=" ".join(map(str, payloads)), rtpmaps="".join(RTPMAPS[p] for p in payloads)
    )
    return body.replace("a=sendrecv", f"a={direction}")


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait(data)


class SipClient:
    """Talks to a UAS at 127.0.0.1:port over "udp" or "tcp"."""

    def __init__(self, port: int, transport: str = "udp", local_host: str = "127.0.0.1") -> None:
        self.port = port
        self.transport = transport
        self.local_host = local_host
        self.raw: asyncio.Queue[bytes] = asyncio.Queue()
        self.local_port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SipClient:
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self.raw), local_addr=(self.local_host, 0)
            )
            self.local_port = self._udp.get_extra_info("sockname")[1]
        else:
            reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.local_port = self._writer.get_extra_info("sockname")[1]
            self._reader_task = asyncio.create_task(self._read_tcp(reader))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def _read_tcp(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() in (b"content-length", b"l"):
                        length = int(value.strip())
                body = await reader.readexactly(length)
                self.raw.put_nowait(head + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.raw.put_nowait(b"")  # connection closed marker

    def send(self, data: bytes | str) -> None:
        """Send raw bytes to the UAS."""
        if isinstance(data, str):
            data = data.encode()
        if self._udp is not None:
            self._udp.sendto(data, ("127.0.0.1", self.port))
        else:
            assert self._writer is not None
            self._writer.write(data)

    async def recv(self, wait_s: float = 3.0) -> SipRequest | SipResponse:
        """The next message (raises TimeoutError)."""
        data = await asyncio.wait_for(self.raw.get(), wait_s)
        if not data:
            raise ConnectionError("closed")
        try:
            return parse_message(data)
        except SipParseError as exc:  # e.g. our 400 to a request that had no From
            if exc.partial is None:
                raise
            assert isinstance(exc.partial, SipRequest | SipResponse)
            return exc.partial

    async def expect(self, status: int, wait_s: float = 3.0, call_id: str = "") -> SipResponse:
        """Skip provisional responses (and, with `call_id`, other calls' messages) until a
        response with `status`."""
        while True:
            msg = await self.recv(wait_s)
            if call_id and msg.call_id != call_id:
                continue
            if isinstance(msg, SipResponse) and msg.status == status:
                return msg
            if isinstance(msg, SipResponse) and msg.status < 200 and status >= 200:
                continue
            raise AssertionError(f"expected {status}, got {msg.start_line()}")

    async def silence(self, seconds: float = 0.3) -> bool:
        """True when nothing arrives for `seconds`."""
        try:
            await asyncio.wait_for(self.raw.get(), seconds)
        except TimeoutError:
            return True
        return False

    def via(self, branch: str) -> str:
        proto = "UDP" if self.transport == "udp" else "TCP"
        return f"SIP/2.0/{proto} 127.0.0.1:{self.local_port};branch={branch};rport"


class Call:
    """One outgoing call's identifiers and request builders."""

    def __init__(self, client: SipClient) -> None:
        self.client = client
        self.call_id = f"{secrets.token_hex(8)}@test"
        self.from_tag = secrets.token_hex(4)
        self.to_tag = ""
        self.cseq = 1
        self.invite_branch = "z9hG4bK" + secrets.token_hex(8)

    def request(
        self,
        method: str,
        *,
        branch: str | None = None,
        cseq: int | None = None,
        body: str = "",
        content_type: str = "application/sdp",
        extra: str = "",
    ) -> str:
        """The text of a request in this call."""
        c = self.client
        to = f"<sip:bot@127.0.0.1:{c.port}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            f"{method} sip:bot@127.0.0.1:{c.port} SIP/2.0",
            f"Via: {c.via(branch or 'z9hG4bK' + secrets.token_hex(8))}",
            "Max-Forwards: 70",
            f'From: "Tester" <sip:tester@127.0.0.1:{c.local_port}>;tag={self.from_tag}',
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq if cseq is None else cseq} {method}",
            f"Contact: <sip:tester@127.0.0.1:{c.local_port};transport={c.transport}>",
        ]
        if extra:
            lines.append(extra.rstrip("\r\n"))
        if body:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def invite(self, payloads: tuple[int, ...] = (0, 8, 101), direction: str = "sendrecv") -> str:
        """The initial INVITE (fixed branch, so it can be retransmitted or cancelled)."""
        return self.request(
            "INVITE", branch=self.invite_branch, body=sdp_offer(payloads, direction)
        )

    def ack(self) -> str:
        """The ACK for a 2xx (new branch, same CSeq number)."""
        return self.request("ACK", cseq=self.cseq)

    async def establish(
        self, payloads: tuple[int, ...] = (0, 8, 101), *, invite: str | None = None
    ) -> SipResponse:
        """INVITE (`self.invite(payloads)`, or the variant `invite` of it) → 100 → 200 → ACK."""
        self.client.send(self.invite(payloads) if invite is None else invite)
        ok = await self.client.expect(200, call_id=self.call_id)
        self.to_tag = ok.get("To", "").split("tag=")[1]  # type: ignore[union-attr]
        self.client.send(self.ack())
        return ok


async def answered_call(client: SipClient, app: RecordingApp) -> Call:
    """A new call through `client`, established (INVITE → 200 → ACK) and the one call that
    `app` has seen established."""
    call = Call(client)
    await call.establish()
    await app.wait_for(lambda: len(app.established) == 1)
    return call
