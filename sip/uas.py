"""The user-agent server: sockets, request routing and INVITE/dialog handling put together.

One `UserAgentServer` owns a UDP socket and a TCP listener on the same port. What arrives
goes to `sip.router.RequestRouter` (parse, match transactions, stateless answers), which
hands calls to `sip.invite.InviteHandler` (INVITE, ACK, CANCEL, BYE, re-INVITE, INFO and
the `CallApplication` callbacks). Every datagram or TCP message is handled inside a
try/except that logs with its Call-ID, so one bad message or one failing application
callback never harms the server or another call. This module also sends: responses by the
Via rules, and our in-dialog requests (BYE) with their Via.

In-dialog requests go where RFC 3261 §12.2.1.1 says (the first Route of a Record-Route
set, else the remote target), but only to an address we would take requests from: the
next hop's host, resolved without blocking (`sip.resolve.Resolver`, cached, under a
timeout), must be the signalling source's IP or be admitted by the guard's allow list.
Otherwise the request goes back where the caller signalled from, on the transport it
used (which is also what works for a caller behind NAT). So neither a Contact nor
`;transport=tcp` can make us send to, or open a TCP connection to, a third party.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from sip.api import CallApplication
from sip.dialog import SipDialog, Target
from sip.guard import SipGuard
from sip.invite import InviteHandler
from sip.message import SipRequest, SipResponse, format_hostport, new_branch
from sip.resolve import ResolveError, Resolver
from sip.router import RequestRouter, sanitize
from sip.transaction import AsyncioScheduler, Scheduler, TimerConfig
from sip.transport import Source, TcpConnection, TransportLayer

__all__ = ["UserAgentServer"]

log = logging.getLogger("sip.uas")


class UserAgentServer:
    """A SIP UAS over UDP and TCP that accepts calls for `app` (see `sip.api`)."""

    def __init__(
        self,
        app: CallApplication,
        host: str,
        port: int,
        public_host: str = "",
        udp: bool = True,
        tcp: bool = True,
        timers: TimerConfig | None = None,
        scheduler: Scheduler | None = None,
        user_agent: str = "voicebridge",
        stop_timeout_s: float = 5.0,
        guard: SipGuard | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        if not (udp or tcp):
            raise ValueError("enable at least one of UDP and TCP")
        self.app = app
        self.host, self.port, self.public_host = host, port, public_host
        self.user_agent = user_agent
        self.timers = timers or TimerConfig()
        self.scheduler: Scheduler = scheduler or AsyncioScheduler()
        self.stop_timeout_s = stop_timeout_s
        self.guard = guard or SipGuard()
        self.resolver = resolver or Resolver(timeout_s=2.0)
        self._enabled = (udp, tcp)
        self._calls = InviteHandler(app, self, self.guard)
        self._router = RequestRouter(self._calls, self, self.scheduler, self.timers, self.guard)
        self._transports = TransportLayer(self._router.on_bytes)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the sockets."""
        await self._transports.start(self.host, self.port, *self._enabled)
        self._calls.running = True
        log.info(
            "call_id=- SIP UAS listening on %s udp=%s tcp=%s",
            self.host,
            self._transports.udp_port or "-",
            self._transports.tcp_port or "-",
        )

    async def stop(self) -> None:
        """Refuse new INVITEs, BYE every dialog, end every call and close the sockets, all
        within about `stop_timeout_s` (BYEs get 60% of it, application callbacks the
        rest): the caller never needs to cancel it. Sockets close even if it is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_timeout_s
        try:
            await self._calls.shutdown(
                self.stop_timeout_s * 0.6, self._router.close_client_transactions
            )
            self._router.close()
            if not await self._calls.tasks.wait(max(0.05, deadline - loop.time())):
                await self._calls.tasks.cancel_all()
        finally:
            self._router.close()
            await self._transports.close()
            await self.resolver.close()

    @property
    def transactions(self) -> int:
        """Server transactions open now (INVITE and non-INVITE)."""
        return len(self._router.invite_txns) + len(self._router.other_txns)

    @property
    def transactions_by_source(self) -> dict[str, int]:
        """Open server transactions per source IP."""
        return dict(self._router.txns_by_source)

    @property
    def unacked_invites(self) -> dict[str, int]:
        """Per source IP: initial INVITEs without a final response or without an ACK."""
        return {ip: len(held) for ip, held in self._calls.unacked.items()}

    @property
    def tcp_connections(self) -> int:
        """TCP connections open now (accepted and ours)."""
        return self._transports.connection_count

    @property
    def local_port(self) -> int:
        """The bound port (UDP's; TCP's when UDP is off). Useful after binding port 0."""
        return self._transports.udp_port or self._transports.tcp_port

    @property
    def udp_port(self) -> int:
        """The bound UDP port (0 when UDP is off)."""
        return self._transports.udp_port

    @property
    def tcp_port(self) -> int:
        """The bound TCP port (0 when TCP is off)."""
        return self._transports.tcp_port

    @property
    def dialogs(self) -> list[SipDialog]:
        """The dialogs alive now."""
        return self._calls.dialogs

    # ------------------------------------------------------------------ sending

    def send(
        self, response: SipResponse, source: Source, call_id: str, *, anonymous: bool = False
    ) -> None:
        """Send `response` towards `source` by the Via rules; failures are only logged.
        `anonymous`: without our Server header."""
        if not anonymous and response.get("Server") is None:
            response.add("Server", self.user_agent)
        try:
            self._transports.send_response(response, source)
        except (OSError, ValueError) as exc:
            log.info("call_id=%s cannot send %s: %s", call_id, response.status, exc)

    async def next_hop(self, dialog: SipDialog) -> Target:
        """Where an in-dialog request of `dialog` goes, resolved and checked (see the
        module docstring): an IP address, never a name."""
        target = dialog.destination()
        source = dialog.source
        try:
            ip = await self.resolver.resolve(target.host)
        except ResolveError as exc:
            log.info("call_id=%s next hop %s: %s", dialog.call_id, target.host, exc)
        else:
            if _same_ip(ip, source.addr[0]) or (
                self.guard.allow is not None and self.guard.allow.allows(ip)
            ):
                return Target(target.transport, ip, target.port)
            log.info(
                "call_id=%s next hop %s is neither the caller nor admitted: using %s",
                dialog.call_id,
                format_hostport(ip, target.port),
                format_hostport(*source.addr),
            )
        return Target(source.transport, *source.addr)

    async def send_request(self, dialog: SipDialog, request: SipRequest) -> SipResponse | None:
        """Send an in-dialog request through a client transaction (Timer E/F)."""
        branch = new_branch()
        local_host = self.advertised_host(dialog.source)
        request.add("User-Agent", self.user_agent)
        try:
            target = await self.next_hop(dialog)
            if target.transport == "tcp":
                conn: TcpConnection | None = dialog.source.conn
                if conn is None or conn.closed:
                    conn = await self._transports.tcp_connection((target.host, target.port))
                via = f"SIP/2.0/TCP {format_hostport(local_host, self.tcp_port)};branch={branch}"
                request.add("Via", via, first=True)
                tcp = conn

                def send(r: SipRequest) -> None:
                    tcp.send(r.to_bytes())

                reliable = True
            else:
                addr = (target.host, target.port)
                via = (
                    f"SIP/2.0/UDP {format_hostport(local_host, self.udp_port)}"
                    f";branch={branch};rport"
                )
                request.add("Via", via, first=True)

                def send(r: SipRequest) -> None:
                    self._transports.send_udp(r.to_bytes(), addr)

                reliable = False
        except (OSError, TimeoutError) as exc:
            log.info("call_id=%s cannot reach its next hop: %s", dialog.call_id, exc)
            return None
        return await self._router.send_request(request, branch, send, reliable)

    # ---------------------------------------------------------------- addresses

    def advertised_host(self, source: Source) -> str:
        """The address we tell the caller (Contact, SDP, Via): `public_host`, the bound
        address, or the local address of the route towards the caller."""
        if self.public_host:
            return self.public_host
        if self.host not in ("", "0.0.0.0", "::"):
            return self.host
        if source.conn is not None:
            return source.conn.local_addr[0]
        family = socket.AF_INET6 if ":" in source.addr[0] else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(source.addr)  # no packet is sent; the kernel picks the route
                return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"

    def contact(self, host: str, source: Source) -> str:
        """Our Contact for a dialog reached through `source` (TCP says so)."""
        if source.transport == "tcp":
            return f"<sip:{format_hostport(host, self.tcp_port)};transport=tcp>"
        return f"<sip:{format_hostport(host, self.udp_port)}>"

    def warning(self, text: str) -> str:
        """A Warning header value (code 399) carrying `text`."""
        return f'399 {self.public_host or "voicebridge"} "{sanitize(text)}"'


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return False
