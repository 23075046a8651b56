"""Dialogs (RFC 3261 §12): identity, CSeq checks, route set, in-dialog requests, BYE."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import Literal, Protocol

from sip.api import CallInfo
from sip.message import NameAddr, SipParseError, SipRequest, SipResponse, SipUri, split_list
from sip.sdp import SessionDescription
from sip.transport import DEFAULT_PORT, Source, TransportName

log = logging.getLogger("sip.dialog")

DialogState = Literal["early", "confirmed", "terminated"]
"""early: our 2xx went out, no ACK yet; confirmed: the ACK came; terminated: BYE or end."""


@dataclass(frozen=True)
class DialogId:
    """Call-ID plus our tag and theirs."""

    call_id: str
    local_tag: str
    remote_tag: str


class DialogHost(Protocol):
    """What a dialog needs from the UAS core."""

    async def send_request(self, dialog: SipDialog, request: SipRequest) -> SipResponse | None:
        """Send an in-dialog request through a client transaction; the final response or
        None on timeout/transport failure."""
        ...

    def dialog_ended(self, dialog: SipDialog, reason: str) -> None:
        """Forget the dialog and tell the application (once)."""
        ...


@dataclass
class Target:
    """Where in-dialog requests go."""

    transport: TransportName
    host: str
    port: int


@dataclass
class SipDialog:
    """One call's dialog, UAS side. Implements `sip.api.Dialog`."""

    id: DialogId
    info: CallInfo
    local_uri: str  # our To header value, with our tag
    remote_uri: str  # their From header value, with their tag
    remote_target: str  # their Contact URI
    route_set: list[str]
    remote_cseq: int
    source: Source  # where the INVITE came from (TCP: the connection to reuse)
    host: DialogHost
    local_cseq: int = field(default_factory=lambda: secrets.randbelow(10000) + 1)
    _state: DialogState = field(default="early", init=False)
    session_id: int = field(default_factory=lambda: secrets.randbelow(2**31))
    session_version: int = 1
    offer_sdp: SessionDescription | None = None
    reinvite_pending: bool = False  # a re-INVITE of theirs awaits its final response or ACK
    our_reinvite_pending: bool = False  # we never send re-INVITEs today; kept for 491 glare
    ack_wait_s: float = 32.0  # 64*T1: how long hangup() waits for the ACK of our 2xx
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    _hangup: asyncio.Task[None] | None = None

    @property
    def call_id(self) -> str:
        """The dialog's Call-ID."""
        return self.id.call_id

    @property
    def state(self) -> DialogState:
        """Where the dialog is; only `confirm()` and `terminate()` move it."""
        return self._state

    def confirm(self) -> bool:
        """The ACK for our first 2xx arrived: early -> confirmed. True only on that move
        (a later ACK, or one after the end, changes nothing)."""
        if self._state != "early":
            return False
        self._state = "confirmed"
        return True

    def terminate(self) -> bool:
        """The dialog is over (BYE either way, no ACK, shutdown). True if it was not yet."""
        if self._state == "terminated":
            return False
        self._state = "terminated"
        return True

    def check_cseq(self, request: SipRequest) -> bool:
        """RFC 3261 §12.2.2: False when the request is out of order (answer 500)."""
        number = request.cseq.number
        if request.method in ("ACK", "CANCEL"):
            return True
        if number < self.remote_cseq:
            return False
        self.remote_cseq = number
        return True

    def update_target(self, request: SipRequest) -> None:
        """A target-refresh request (re-INVITE) may carry a new Contact."""
        contact = request.get("Contact")
        if contact:
            try:
                self.remote_target = NameAddr.parse(contact).uri
            except SipParseError:
                pass

    def destination(self) -> Target:
        """Next hop for in-dialog requests (RFC 3261 §12.2.1.1): the first route of the
        route set, else the remote target; the transport from the URI, else the one the
        call arrived on. The host may be a name: the UAS resolves and checks it."""
        uri_text = self.route_set[0] if self.route_set else self.remote_target
        uri = _uri(uri_text)
        if uri is None:
            return Target(self.source.transport, *self.source.addr)
        transport_param = (uri.params.get("transport") or "").lower()
        transport: TransportName = (
            "tcp"
            if transport_param == "tcp"
            else "udp"
            if transport_param == "udp"
            else self.source.transport
        )
        return Target(transport, uri.host, uri.port or DEFAULT_PORT)

    def new_request(self, method: str) -> SipRequest:
        """An in-dialog request (no Via yet: the UAS adds it for the chosen transport).
        RFC 3261 §12.2.1.1: with a loose-routing first route (`;lr`) the Request-URI is
        the remote target and the route set the Route headers; with a strict router the
        Request-URI is that route's URI and the remote target goes last in Route."""
        self.local_cseq += 1
        routes = list(self.route_set)
        request_uri = self.remote_target
        first = _uri(routes[0]) if routes else None
        if first is not None and "lr" not in first.params:
            first.params.pop("method", None)  # not allowed in a Request-URI (§19.1.1)
            first.headers = ""
            request_uri = str(first)
            routes = [*routes[1:], f"<{self.remote_target}>"]
        req = SipRequest(method=method, uri=request_uri)
        for route in routes:
            req.add("Route", route)
        req.add("Max-Forwards", "70")
        req.add("From", self.local_uri)
        req.add("To", self.remote_uri)
        req.add("Call-ID", self.call_id)
        req.add("CSeq", f"{self.local_cseq} {method}")
        return req

    async def hangup(self) -> None:
        """Send BYE (the bridge ends the call). Idempotent; waits for the ACK first when
        our 2xx is still unacknowledged (RFC 3261 §15)."""
        await self._bye(True, "hangup")

    async def bye_now(self, reason: str = "shutdown") -> None:
        """Send BYE without waiting for an ACK (shutdown, or the ACK never came)."""
        await self._bye(False, reason)

    async def _bye(self, wait_for_ack: bool, reason: str) -> None:
        if self.state == "terminated" and self._hangup is None:
            return
        if self._hangup is None:
            self._hangup = asyncio.create_task(self._send_bye(wait_for_ack, reason))
        await asyncio.shield(self._hangup)

    def abandon(self) -> None:
        """Stop a BYE still in progress (server shutdown after its grace period)."""
        if self._hangup is not None and not self._hangup.done():
            self._hangup.cancel()

    async def _send_bye(self, wait_for_ack: bool, reason: str) -> None:
        if wait_for_ack and not self.acked.is_set():
            try:
                await asyncio.wait_for(self.acked.wait(), self.ack_wait_s)
            except TimeoutError:
                pass
        if not self.terminate():
            return
        log.info("call_id=%s sending BYE", self.call_id)
        response = await self.host.send_request(self, self.new_request("BYE"))
        status = response.status if response is not None else 0
        log.info("call_id=%s BYE answered %s", self.call_id, status or "(no answer)")
        self.host.dialog_ended(self, reason)


def route_set_of(record_routes: list[str]) -> list[str]:
    """The UAS route set from a request's Record-Route values, in order (§12.1.1), one
    entry per route even when a header joins several with commas."""
    return [entry for value in record_routes for entry in split_list(value)]


def _uri(text: str) -> SipUri | None:
    try:
        return SipUri.parse(NameAddr.parse(text).uri if "<" in text else text)
    except SipParseError:
        return None
