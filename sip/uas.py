"""The user-agent server: transactions, dialogs and SDP negotiation, handing calls upward.

One `UserAgentServer` owns a UDP socket and a TCP listener on the same port. Every datagram
or TCP message is handled inside a try/except that logs with its Call-ID, so one bad message
or one failing application callback never harms the server or another call.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from sip.api import CallApplication, CallInfo, Direction, MediaAnswer, MediaOffer, SipReject
from sip.dialog import DialogId, SipDialog
from sip.message import (
    BRANCH_COOKIE,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    format_hostport,
    new_branch,
    new_tag,
    parse_message,
    response_to,
    tag_of,
)
from sip.sdp import (
    NoCommonCodec,
    SdpError,
    SessionDescription,
    build_answer,
    choose_codec,
    media_offer,
    negotiate_direction,
    parse_sdp,
)
from sip.transaction import (
    AsyncioScheduler,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Scheduler,
    TimerConfig,
    TwoXxRetransmitter,
)
from sip.transport import Source, TransportLayer, annotate_via, is_ip

log = logging.getLogger("sip.uas")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"
ACCEPT = "application/sdp"
SUPPORTED = ""  # no extensions (no 100rel, no timer)
NOT_ALLOWED = frozenset(
    {"REGISTER", "SUBSCRIBE", "NOTIFY", "PUBLISH", "MESSAGE", "REFER", "UPDATE", "PRACK"}
)
_FORWARDED_HEADERS = ("User-Agent", "Contact", "P-Asserted-Identity", "Subject", "Call-Info")

TxnKey = tuple[str, ...]


def _txn_key(request: SipRequest, method: str) -> TxnKey:
    """RFC 3261 §17.2.3 matching: branch + sent-by + method (ACK matches INVITE)."""
    via = request.vias[0]
    sent_by = format_hostport(via.host, via.port)
    if via.branch.startswith(BRANCH_COOKIE):
        return (via.branch, sent_by, method)
    # RFC 2543 peers: fall back to the dialog-ish identity of the request
    return (
        request.call_id,
        str(request.cseq.number),
        tag_of(request.get("From")),
        str(via),
        method,
    )


def _sanitize(text: str, limit: int = 80) -> str:
    return "".join(ch if 32 <= ord(ch) < 127 and ch != '"' else "?" for ch in text)[:limit]


@dataclass
class _PendingInvite:
    """An initial INVITE between 100 Trying and its final response."""

    request: SipRequest
    txn: InviteServerTransaction
    to_tag: str
    source: Source
    cancelled: bool = False
    task: asyncio.Task[None] | None = None


@dataclass
class _CallState:
    """Per-dialog UAS bookkeeping beside the dialog itself."""

    dialog: SipDialog
    retransmitter: TwoXxRetransmitter | None = None
    invite_cseq: int = 0
    last_answer: MediaAnswer | None = None
    last_direction: Direction = "sendrecv"
    last_sdp: bytes | None = None
    established: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


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
    ) -> None:
        if not (udp or tcp):
            raise ValueError("enable at least one of UDP and TCP")
        self.app = app
        self.host = host
        self.port = port
        self.public_host = public_host
        self.user_agent = user_agent
        self.timers = timers or TimerConfig()
        self.stop_timeout_s = stop_timeout_s
        self._udp_enabled = udp
        self._tcp_enabled = tcp
        self._scheduler: Scheduler = scheduler or AsyncioScheduler()
        self._transports = TransportLayer(self._on_bytes)
        self._invite_txns: dict[TxnKey, InviteServerTransaction] = {}
        self._other_txns: dict[TxnKey, NonInviteServerTransaction] = {}
        self._client_txns: dict[str, NonInviteClientTransaction] = {}
        self._pending: dict[TxnKey, _PendingInvite] = {}
        self._calls: dict[DialogId, _CallState] = {}
        self._by_remote: dict[tuple[str, str], DialogId] = {}  # (Call-ID, from-tag)
        self._live: set[str] = set()  # call-ids accepted by on_invite, not yet terminated
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the sockets."""
        await self._transports.start(self.host, self.port, self._udp_enabled, self._tcp_enabled)
        self._running = True
        log.info(
            "call_id=- SIP UAS listening on %s udp=%s tcp=%s",
            self.host,
            self._transports.udp_port or "-",
            self._transports.tcp_port or "-",
        )

    async def stop(self) -> None:
        """BYE every established dialog (bounded by `stop_timeout_s`), then close sockets."""
        self._running = False
        for pending in list(self._pending.values()):
            if pending.task is not None:
                pending.task.cancel()
            if not pending.txn.final_sent:
                self._respond(pending.txn, 503, "Service Unavailable", pending.to_tag)
        byes = [
            asyncio.create_task(state.dialog.bye_now("shutdown")) for state in self._calls.values()
        ]
        if byes:
            _, late = await asyncio.wait(byes, timeout=self.stop_timeout_s)
            for client_txn in list(self._client_txns.values()):
                client_txn.close()  # unanswered BYEs: stop waiting for timer F
            if late:
                await asyncio.wait(late, timeout=1.0)
        for state in list(self._calls.values()):
            state.dialog.abandon()
            self.dialog_ended(state.dialog, "shutdown")
        for invite_txn in self._invite_txns.values():
            invite_txn.close()
        for other_txn in self._other_txns.values():
            other_txn.close()
        self._invite_txns.clear()
        self._other_txns.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.stop_timeout_s)
            for task in list(self._tasks):
                task.cancel()
        await self._transports.close()

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
        return [state.dialog for state in self._calls.values()]

    # ------------------------------------------------------------------ receive

    def _on_bytes(self, data: bytes, source: Source) -> None:
        try:
            self._handle(data, source)
        except Exception:
            log.exception(
                "call_id=%s unhandled error on %s message from %s",
                _guess_call_id(data),
                source.transport,
                format_hostport(*source.addr),
            )

    def _handle(self, data: bytes, source: Source) -> None:
        try:
            message = parse_message(data, stream=source.transport == "tcp")
        except SipParseError as exc:
            self._answer_malformed(exc, source)
            return
        if isinstance(message, SipResponse):
            self._on_response(message)
            return
        annotate_via(message, source.addr[0], source.addr[1])
        self._on_request(message, source)

    def _answer_malformed(self, exc: SipParseError, source: Source) -> None:
        partial = exc.partial
        call_id = partial.call_id if partial is not None else "-"
        log.info(
            "call_id=%s malformed message from %s: %s",
            call_id or "-",
            format_hostport(*source.addr),
            exc.reason,
        )
        if not isinstance(partial, SipRequest) or partial.method == "ACK" or not call_id:
            return
        try:
            partial.cseq  # noqa: B018 - raises when unusable
            if not partial.vias:
                return
        except SipParseError:
            return
        annotate_via(partial, source.addr[0], source.addr[1])
        reason = _sanitize(exc.reason)
        response = response_to(
            partial,
            400,
            f"Bad Request ({reason})",
            headers=[("Warning", f'399 {self._advertised_host(source)} "{reason}"')],
        )
        self._send(response, source, call_id)

    def _on_response(self, response: SipResponse) -> None:
        vias = response.vias
        txn = self._client_txns.get(vias[0].branch) if vias else None
        if txn is None:
            log.debug("call_id=%s stray response %s", response.call_id, response.status)
            return
        txn.receive_response(response)

    def _on_request(self, request: SipRequest, source: Source) -> None:
        method = request.method
        if method == "ACK":
            invite_txn = self._invite_txns.get(_txn_key(request, "INVITE"))
            if invite_txn is not None and invite_txn.state in ("completed", "confirmed"):
                invite_txn.receive_request(request)
            else:
                self._on_ack(request)
            return
        if method == "INVITE":
            key = _txn_key(request, "INVITE")
            existing = self._invite_txns.get(key)
            if existing is not None:
                existing.receive_request(request)  # retransmission: absorbed
                return
            self._on_invite(request, source, key)
            return
        key = _txn_key(request, method)
        other = self._other_txns.get(key)
        if other is not None:
            other.receive_request(request)
            return
        txn = NonInviteServerTransaction(
            request,
            lambda r: self._send(r, source, request.call_id),
            self._scheduler,
            self.timers,
            source.transport == "tcp",
            lambda t: self._forget_other(key),
        )
        self._other_txns[key] = txn
        if method == "CANCEL":
            self._on_cancel(request, txn)
        elif tag_of(request.get("To")):
            self._on_in_dialog(request, txn, source)
        elif method == "OPTIONS":
            txn.respond(self._options_response(request))
        elif method in NOT_ALLOWED:
            self._reply(txn, 405, "Method Not Allowed", [("Allow", ALLOW)])
        elif method in ("BYE", "INFO"):
            self._reply(txn, 481, "Call/Transaction Does Not Exist")
        else:
            self._reply(txn, 501, "Not Implemented", [("Allow", ALLOW)])

    # ------------------------------------------------------------------ INVITE

    def _on_invite(self, request: SipRequest, source: Source, key: TxnKey) -> None:
        to_tag = tag_of(request.get("To"))
        if not to_tag and self._is_duplicate_invite(request):
            log.info("call_id=%s late INVITE retransmission ignored", request.call_id)
            return
        txn = InviteServerTransaction(
            request,
            lambda r: self._send(r, source, request.call_id),
            self._scheduler,
            self.timers,
            source.transport == "tcp",
            lambda t: self._forget_invite(key),
        )
        self._invite_txns[key] = txn
        txn.respond(response_to(request, 100, "Trying"))
        if to_tag:
            self._on_reinvite(request, txn, source)
            return
        if not self._running:
            self._respond(txn, 503, "Service Unavailable", new_tag())
            return
        pending = _PendingInvite(request, txn, new_tag(), source)
        self._pending[key] = pending
        pending.task = self._spawn(self._run_invite(pending), request.call_id, "INVITE")

    def _is_duplicate_invite(self, request: SipRequest) -> bool:
        """An initial INVITE of a call we already answered (its transaction has ended)."""
        dialog_id = self._by_remote.get((request.call_id, tag_of(request.get("From"))))
        state = self._calls.get(dialog_id) if dialog_id is not None else None
        return state is not None and request.cseq.number <= state.invite_cseq

    def _precheck_offer(
        self, request: SipRequest, txn: InviteServerTransaction, to_tag: str
    ) -> tuple[SessionDescription, MediaOffer] | None:
        """Checks common to INVITE and re-INVITE; answers and returns None on failure."""
        unsupported = [
            opt
            for value in request.get_all("Require")
            for opt in (o.strip() for o in value.split(","))
            if opt
        ]
        if unsupported:
            self._respond(
                txn, 420, "Bad Extension", to_tag, [("Unsupported", ", ".join(unsupported))]
            )
            return None
        content_type = (request.get("Content-Type") or "").split(";")[0].strip().lower()
        if not request.body:
            self._respond(
                txn,
                488,
                "Not Acceptable Here",
                to_tag,
                [("Warning", self._warning("SDP offer required"))],
            )
            return None
        if content_type != "application/sdp":
            self._respond(txn, 415, "Unsupported Media Type", to_tag, [("Accept", ACCEPT)])
            return None
        try:
            sd = parse_sdp(request.body)
            offer = media_offer(sd)
            choose_codec(offer)
        except NoCommonCodec as exc:
            log.info("call_id=%s 488: %s", request.call_id, exc.detail)
            self._respond(txn, 488, exc.reason, to_tag, [("Warning", self._warning(exc.detail))])
            return None
        except SdpError as exc:
            log.info("call_id=%s bad SDP: %s", request.call_id, exc)
            self._respond(
                txn, 400, "Bad Request (bad SDP)", to_tag, [("Warning", self._warning(str(exc)))]
            )
            return None
        return sd, offer

    async def _run_invite(self, pending: _PendingInvite) -> None:
        try:
            await self._answer_invite(pending)
        except Exception:
            log.exception("call_id=%s INVITE handling failed", pending.request.call_id)
            if not pending.txn.final_sent:
                self._respond(pending.txn, 500, "Server Internal Error", pending.to_tag)
            raise

    async def _answer_invite(self, pending: _PendingInvite) -> None:
        request, txn, to_tag, source = pending.request, pending.txn, pending.to_tag, pending.source
        call_id = request.call_id
        checked = self._precheck_offer(request, txn, to_tag)
        if checked is None:
            return
        sd, offer = checked
        info = self._call_info(request, source)
        try:
            answer = await self.app.on_invite(info, offer)
        except SipReject as exc:
            log.info("call_id=%s rejected by application: %s %s", call_id, exc.status, exc.reason)
            if not pending.cancelled:
                self._respond(txn, exc.status, exc.reason, to_tag)
            return
        except Exception:
            log.exception("call_id=%s on_invite failed", call_id)
            if not pending.cancelled:
                self._respond(txn, 500, "Server Internal Error", to_tag)
            return
        self._live.add(call_id)
        if pending.cancelled or not self._running:
            if not txn.final_sent:
                self._respond(txn, 503, "Service Unavailable", to_tag)
            self._terminated(call_id, "cancelled" if pending.cancelled else "shutdown")
            return
        dialog = self._new_dialog(request, source, info, to_tag, sd)
        state = _CallState(dialog, invite_cseq=request.cseq.number, last_answer=answer)
        self._calls[dialog.id] = state
        self._by_remote[(dialog.call_id, dialog.id.remote_tag)] = dialog.id
        self._pending.pop(_txn_key(request, "INVITE"), None)
        self._send_2xx(state, request, txn, source, answer, offer.direction)
        log.info(
            "call_id=%s answered 200: %s/%d to %s:%d",
            call_id,
            answer.codec.name,
            answer.codec.clock_rate,
            offer.address,
            offer.port,
        )

    def _new_dialog(
        self,
        request: SipRequest,
        source: Source,
        info: CallInfo,
        to_tag: str,
        sd: SessionDescription,
    ) -> SipDialog:
        from_value = request.get("From") or ""
        to_value = request.get("To") or ""
        contact = request.get("Contact") or ""
        try:
            remote_target = NameAddr.parse(contact).uri
        except SipParseError:
            remote_target = f"sip:{format_hostport(*source.addr)}"
        dialog = SipDialog(
            id=DialogId(request.call_id, to_tag, tag_of(from_value)),
            info=info,
            local_uri=f"{to_value};tag={to_tag}",
            remote_uri=from_value,
            remote_target=remote_target,
            route_set=request.get_all("Record-Route"),
            remote_cseq=request.cseq.number,
            source=source,
            host=self,
            ack_wait_s=self.timers.timeout,
        )
        dialog.offer_sdp = sd
        return dialog

    def _send_2xx(
        self,
        state: _CallState,
        request: SipRequest,
        txn: InviteServerTransaction,
        source: Source,
        answer: MediaAnswer,
        offered_direction: Direction | None,
    ) -> None:
        """Send a 2xx carrying our SDP; `offered_direction` None sends `answer`'s own
        direction (our offer in a 2xx to an offerless re-INVITE)."""
        dialog = state.dialog
        direction = answer.direction
        if offered_direction is not None:
            direction = negotiate_direction(offered_direction, answer.direction)
        body = build_answer(
            replace(answer, direction=direction),
            dialog.session_id,
            dialog.session_version,
            offer=dialog.offer_sdp,
        )
        if state.last_sdp is not None and body != state.last_sdp:
            # RFC 3264 §8: a changed session description gets a higher o= version
            dialog.session_version += 1
            body = build_answer(
                replace(answer, direction=direction),
                dialog.session_id,
                dialog.session_version,
                offer=dialog.offer_sdp,
            )
        state.last_sdp = body
        state.last_direction = direction
        response = response_to(
            request,
            200,
            "OK",
            to_tag=dialog.id.local_tag,
            headers=[
                ("Contact", self._contact(dialog.info.local_host, source)),
                ("Allow", ALLOW),
                ("Content-Type", "application/sdp"),
            ],
            body=body,
        )
        txn.respond(response)
        state.retransmitter = TwoXxRetransmitter(
            response,
            lambda r: self._send(r, source, request.call_id),
            self._scheduler,
            self.timers,
            lambda: self._no_ack(state),
        )

    def _no_ack(self, state: _CallState) -> None:
        dialog = state.dialog
        log.warning("call_id=%s no ACK for our 2xx within 64*T1: tearing down", dialog.call_id)
        state.dialog.acked.set()
        self._spawn(dialog.bye_now("no ACK"), dialog.call_id, "BYE")

    def _on_ack(self, request: SipRequest) -> None:
        state = self._calls.get(self._dialog_id(request))
        if state is None:
            log.debug("call_id=%s ACK for no dialog dropped", request.call_id)
            return
        if request.cseq.number != state.invite_cseq:
            return
        if state.retransmitter is not None:
            state.retransmitter.stop()
        dialog = state.dialog
        dialog.reinvite_pending = False
        dialog.acked.set()
        if not state.established and dialog.state == "early":
            state.established = True
            dialog.state = "confirmed"
            log.info("call_id=%s established", dialog.call_id)
            self._spawn(self.app.on_established(dialog), dialog.call_id, "on_established")

    def _on_cancel(self, request: SipRequest, txn: NonInviteServerTransaction) -> None:
        key = _txn_key(request, "INVITE")
        pending = self._pending.get(key)
        invite_txn = self._invite_txns.get(key)
        if invite_txn is None:
            self._reply(txn, 481, "Call/Transaction Does Not Exist")
            return
        # RFC 3261 §9.2: the 200 to CANCEL carries the To-tag of the INVITE's responses
        if pending is not None:
            cancel_tag = pending.to_tag
        elif invite_txn.last_response is not None:
            cancel_tag = tag_of(invite_txn.last_response.get("To"))
        else:
            cancel_tag = ""
        self._reply(txn, 200, "OK", to_tag=cancel_tag or None)
        if pending is None or invite_txn.final_sent:
            return  # too late: the final response already went out
        log.info("call_id=%s cancelled by caller", request.call_id)
        pending.cancelled = True
        self._respond(invite_txn, 487, "Request Terminated", pending.to_tag)
        self._pending.pop(key, None)

    # --------------------------------------------------------------- in dialog

    def _dialog_id(self, request: SipRequest) -> DialogId:
        return DialogId(request.call_id, tag_of(request.get("To")), tag_of(request.get("From")))

    def _on_in_dialog(
        self, request: SipRequest, txn: NonInviteServerTransaction, source: Source
    ) -> None:
        state = self._calls.get(self._dialog_id(request))
        if state is None:
            self._reply(txn, 481, "Call/Transaction Does Not Exist")
            return
        dialog = state.dialog
        if not dialog.check_cseq(request):
            self._reply(txn, 500, "Server Internal Error (CSeq out of order)")
            return
        method = request.method
        if method == "BYE":
            self._reply(txn, 200, "OK")
            log.info("call_id=%s BYE from caller", dialog.call_id)
            dialog.state = "terminated"
            dialog.acked.set()
            self.dialog_ended(dialog, "bye")
        elif method == "OPTIONS":
            txn.respond(self._options_response(request))
        elif method == "INFO":
            self._spawn(self._run_info(state, request, txn), dialog.call_id, "on_info")
        elif method in NOT_ALLOWED:
            self._reply(txn, 405, "Method Not Allowed", [("Allow", ALLOW)])
        else:
            self._reply(txn, 501, "Not Implemented", [("Allow", ALLOW)])

    async def _run_info(
        self, state: _CallState, request: SipRequest, txn: NonInviteServerTransaction
    ) -> None:
        try:
            await self.app.on_info(state.dialog, request.get("Content-Type") or "", request.body)
        except Exception:
            log.exception("call_id=%s on_info failed", request.call_id)
            self._reply(txn, 500, "Server Internal Error")
            return
        self._reply(txn, 200, "OK")

    def _on_reinvite(
        self, request: SipRequest, txn: InviteServerTransaction, source: Source
    ) -> None:
        to_tag = tag_of(request.get("To"))
        state = self._calls.get(self._dialog_id(request))
        if state is None:
            self._respond(txn, 481, "Call/Transaction Does Not Exist", to_tag)
            return
        dialog = state.dialog
        if not dialog.check_cseq(request):
            self._respond(txn, 500, "Server Internal Error (CSeq out of order)", to_tag)
            return
        if dialog.our_reinvite_pending:
            self._respond(txn, 491, "Request Pending", to_tag)
            return
        if dialog.reinvite_pending or dialog.state == "early":
            # RFC 3261 §14.2: an INVITE of theirs is still in progress
            retry = str(secrets.randbelow(10) + 1)
            self._respond(txn, 500, "Server Internal Error", to_tag, [("Retry-After", retry)])
            return
        dialog.reinvite_pending = True
        dialog.update_target(request)
        self._spawn(self._run_reinvite(state, request, txn, source), dialog.call_id, "re-INVITE")

    async def _run_reinvite(
        self, state: _CallState, request: SipRequest, txn: InviteServerTransaction, source: Source
    ) -> None:
        try:
            await self._answer_reinvite(state, request, txn, source)
        except Exception:
            state.dialog.reinvite_pending = False
            if not txn.final_sent:
                self._respond(txn, 500, "Server Internal Error", state.dialog.id.local_tag)
            raise

    async def _answer_reinvite(
        self, state: _CallState, request: SipRequest, txn: InviteServerTransaction, source: Source
    ) -> None:
        dialog = state.dialog
        to_tag = dialog.id.local_tag
        if not request.body and state.last_answer is not None:
            # offerless re-INVITE (session refresh): offer what we have, unchanged
            state.invite_cseq = request.cseq.number
            current = replace(state.last_answer, direction=state.last_direction)
            self._send_2xx(state, request, txn, source, current, None)
            return
        checked = self._precheck_offer(request, txn, to_tag)
        if checked is None:
            dialog.reinvite_pending = False
            return
        sd, offer = checked
        try:
            answer = await self.app.on_reinvite(dialog, offer)
        except SipReject as exc:
            dialog.reinvite_pending = False
            self._respond(txn, exc.status, exc.reason, to_tag)
            return
        except Exception:
            log.exception("call_id=%s on_reinvite failed", dialog.call_id)
            dialog.reinvite_pending = False
            self._respond(txn, 500, "Server Internal Error", to_tag)
            return
        if dialog.state == "terminated":
            self._respond(txn, 481, "Call/Transaction Does Not Exist", to_tag)
            return
        dialog.offer_sdp = sd
        state.last_answer = answer
        state.invite_cseq = request.cseq.number
        self._send_2xx(state, request, txn, source, answer, offer.direction)
        log.info(
            "call_id=%s re-INVITE answered: %s %s",
            dialog.call_id,
            answer.codec.name,
            offer.direction,
        )

    # ------------------------------------------------------------ DialogHost

    async def send_request(self, dialog: SipDialog, request: SipRequest) -> SipResponse | None:
        """Send an in-dialog request through a client transaction (Timer E/F)."""
        target = dialog.destination()
        branch = new_branch()
        local_host = self._advertised_host(dialog.source)
        request.add("User-Agent", self.user_agent)
        try:
            if target.transport == "tcp":
                conn = dialog.source.conn
                if conn is None or conn.closed:
                    conn = await self._transports.tcp_connection(
                        (await self._resolve(target.host), target.port)
                    )
                via = f"SIP/2.0/TCP {format_hostport(local_host, self.tcp_port)};branch={branch}"
                request.add("Via", via, first=True)
                tcp = conn

                def send(r: SipRequest) -> None:
                    tcp.send(r.to_bytes())

                reliable = True
            else:
                addr = (await self._resolve(target.host), target.port)
                via = (
                    f"SIP/2.0/UDP {format_hostport(local_host, self.udp_port)}"
                    f";branch={branch};rport"
                )
                request.add("Via", via, first=True)

                def send(r: SipRequest) -> None:
                    self._transports.send_udp(r.to_bytes(), addr)

                reliable = False
        except (OSError, TimeoutError) as exc:
            log.info("call_id=%s cannot reach %s: %s", dialog.call_id, target, exc)
            return None
        txn = NonInviteClientTransaction(request, send, self._scheduler, self.timers, reliable)
        self._client_txns[branch] = txn
        try:
            return await txn.result
        finally:
            self._client_txns.pop(branch, None)

    def dialog_ended(self, dialog: SipDialog, reason: str) -> None:
        """Forget the dialog and tell the application (once per accepted call)."""
        dialog.state = "terminated"
        state = self._calls.pop(dialog.id, None)
        self._by_remote.pop((dialog.call_id, dialog.id.remote_tag), None)
        if state is not None and state.retransmitter is not None:
            state.retransmitter.stop()
        self._terminated(dialog.call_id, reason)

    def _terminated(self, call_id: str, reason: str) -> None:
        if call_id not in self._live:
            return
        self._live.discard(call_id)
        log.info("call_id=%s terminated: %s", call_id, reason)
        self._spawn(self.app.on_terminated(call_id, reason), call_id, "on_terminated")

    # ----------------------------------------------------------------- helpers

    def _spawn(self, coro: Coroutine[Any, Any, Any], call_id: str, what: str) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("call_id=%s %s failed", call_id, what)

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _forget_other(self, key: TxnKey) -> None:
        self._other_txns.pop(key, None)

    def _forget_invite(self, key: TxnKey) -> None:
        self._invite_txns.pop(key, None)
        self._pending.pop(key, None)

    def _send(self, response: SipResponse, source: Source, call_id: str) -> None:
        if response.get("Server") is None:
            response.add("Server", self.user_agent)
        try:
            self._transports.send_response(response, source)
        except (OSError, ValueError) as exc:
            log.info("call_id=%s cannot send %s: %s", call_id, response.status, exc)

    def _respond(
        self,
        txn: InviteServerTransaction,
        status: int,
        reason: str,
        to_tag: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        txn.respond(response_to(txn.request, status, reason, to_tag=to_tag, headers=headers or []))

    def _reply(
        self,
        txn: NonInviteServerTransaction,
        status: int,
        reason: str,
        headers: list[tuple[str, str]] | None = None,
        to_tag: str | None = None,
    ) -> None:
        if to_tag is None:
            to_tag = "" if status < 200 else new_tag()
        txn.respond(response_to(txn.request, status, reason, to_tag=to_tag, headers=headers or []))

    def _options_response(self, request: SipRequest) -> SipResponse:
        return response_to(
            request,
            200,
            "OK",
            to_tag=new_tag(),
            headers=[
                ("Allow", ALLOW),
                ("Accept", ACCEPT),
                ("Accept-Encoding", "identity"),
                ("Supported", SUPPORTED),
            ],
        )

    def _warning(self, text: str) -> str:
        return f'399 {self.public_host or "voicebridge"} "{_sanitize(text)}"'

    def _call_info(self, request: SipRequest, source: Source) -> CallInfo:
        headers = {name: value for name in _FORWARDED_HEADERS if (value := request.get(name))}
        return CallInfo(
            call_id=request.call_id,
            from_uri=_uri_of(request.get("From")),
            to_uri=_uri_of(request.get("To")),
            remote_addr=source.addr,
            local_host=self._advertised_host(source),
            transport=source.transport,
            headers=headers,
        )

    def _advertised_host(self, source: Source) -> str:
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

    def _contact(self, host: str, source: Source) -> str:
        if source.transport == "tcp":
            return f"<sip:{format_hostport(host, self.tcp_port)};transport=tcp>"
        return f"<sip:{format_hostport(host, self.udp_port)}>"

    async def _resolve(self, host: str) -> str:
        if is_ip(host):
            return host.strip("[]")
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        return str(infos[0][4][0])


def _uri_of(value: str | None) -> str:
    try:
        return NameAddr.parse(value or "").uri
    except SipParseError:
        return value or ""


def _guess_call_id(data: bytes) -> str:
    for line in data[:8192].split(b"\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in (b"call-id", b"i"):
            return value.strip().decode("utf-8", "replace")[:100]
    return "-"
