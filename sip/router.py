"""Request routing: messages from the transports matched to transactions and dispatched.

`RequestRouter` applies the `sip.guard.SipGuard` first (per-source rate: drop; source
outside the allow list: stateless 403 or silence; state bounds: stateless 503), parses
what the transports deliver, answers what needs no call state (400 to a malformed request,
OPTIONS, 405, 481, 501), absorbs retransmissions in the matching server transaction, hands
responses to our client transactions, and gives INVITE, ACK, CANCEL, BYE and INFO to the
INVITE/dialog handler (`sip.invite.InviteHandler`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from sip.dialog import SipDialog
from sip.guard import RETRY_AFTER_S, SipGuard
from sip.message import (
    BRANCH_COOKIE,
    SipParseError,
    SipRequest,
    SipResponse,
    Via,
    format_hostport,
    new_tag,
    parse_message,
    response_to,
    tag_of,
)
from sip.transaction import (
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Scheduler,
    TimerConfig,
)
from sip.transport import Source, annotate_via

log = logging.getLogger("sip.uas")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"
ACCEPT = "application/sdp"
EXTENSIONS = ""  # the Supported header: no extensions (no 100rel, no timer)
NOT_ALLOWED = frozenset(
    {"REGISTER", "SUBSCRIBE", "NOTIFY", "PUBLISH", "MESSAGE", "REFER", "UPDATE", "PRACK"}
)

TxnKey = tuple[str, ...]
Headers = list[tuple[str, str]]
_Txn = TypeVar("_Txn", InviteServerTransaction, NonInviteServerTransaction)


def txn_key(request: SipRequest, method: str) -> TxnKey:
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


def sanitize(text: str, limit: int = 80) -> str:
    """`text` made safe for a quoted header value (Warning, reason phrase)."""
    return "".join(ch if 32 <= ord(ch) < 127 and ch != '"' else "?" for ch in text)[:limit]


def respond(
    txn: InviteServerTransaction,
    status: int,
    reason: str,
    to_tag: str,
    headers: Headers | None = None,
) -> None:
    """Answer an INVITE transaction with our To-tag."""
    txn.respond(response_to(txn.request, status, reason, to_tag=to_tag, headers=headers or []))


def reply(
    txn: NonInviteServerTransaction,
    status: int,
    reason: str,
    headers: Headers | None = None,
    to_tag: str | None = None,
) -> None:
    """Answer a non-INVITE transaction; a final response gets a fresh To-tag unless given."""
    if to_tag is None:
        to_tag = "" if status < 200 else new_tag()
    txn.respond(response_to(txn.request, status, reason, to_tag=to_tag, headers=headers or []))


def options_response(request: SipRequest) -> SipResponse:
    """200 to OPTIONS: what we allow, accept and support."""
    return response_to(
        request,
        200,
        "OK",
        to_tag=new_tag(),
        headers=[
            ("Allow", ALLOW),
            ("Accept", ACCEPT),
            ("Accept-Encoding", "identity"),
            ("Supported", EXTENSIONS),
        ],
    )


class Outbound(Protocol):
    """How responses leave, and the address we advertise (implemented by the UAS)."""

    def send(
        self, response: SipResponse, source: Source, call_id: str, *, anonymous: bool = False
    ) -> None:
        """Send `response` towards `source` (Via rules); failures are logged, not raised.
        `anonymous`: no Server header (a refused source learns nothing about us)."""
        ...

    def advertised_host(self, source: Source) -> str:
        """The address we tell the peer behind `source` (Contact, SDP, Via, Warning)."""
        ...


class CallHandling(Protocol):
    """What the router hands on: implemented by `sip.invite.InviteHandler`."""

    def is_duplicate_invite(self, request: SipRequest) -> bool:
        """An initial INVITE of a call already answered (its transaction has ended)."""
        ...

    def on_invite(self, request: SipRequest, txn: InviteServerTransaction, source: Source) -> None:
        """A new initial INVITE; 100 Trying has gone out."""
        ...

    def on_reinvite(
        self, request: SipRequest, txn: InviteServerTransaction, source: Source
    ) -> None:
        """A new INVITE with a To-tag; 100 Trying has gone out."""
        ...

    def on_ack(self, request: SipRequest) -> None:
        """An ACK no INVITE transaction absorbed: the ACK of our 2xx."""
        ...

    def pending_tag(self, key: TxnKey) -> str | None:
        """Our To-tag for the initial INVITE `key` still awaiting its final response."""
        ...

    def on_cancel(
        self, request: SipRequest, key: TxnKey, invite_txn: InviteServerTransaction
    ) -> None:
        """CANCEL of the INVITE transaction `key` (initial or re-INVITE), after our 200."""
        ...

    def accepting_calls(self) -> bool:
        """False while new calls are refused (drain): OPTIONS then gets 503."""
        ...

    def dialog_for(self, request: SipRequest) -> SipDialog | None:
        """The dialog an in-dialog request belongs to (None: answer 481)."""
        ...

    def on_bye(
        self, request: SipRequest, txn: NonInviteServerTransaction, dialog: SipDialog
    ) -> None:
        """BYE from the caller, in order (CSeq checked)."""
        ...

    def on_info(
        self, request: SipRequest, txn: NonInviteServerTransaction, dialog: SipDialog
    ) -> None:
        """INFO in a dialog, in order (CSeq checked)."""
        ...

    def forget_pending(self, key: TxnKey) -> None:
        """The INVITE transaction `key` has ended."""
        ...


class RequestRouter:
    """Matches messages to transactions, answers the stateless cases, dispatches the rest."""

    def __init__(
        self,
        calls: CallHandling,
        out: Outbound,
        scheduler: Scheduler,
        timers: TimerConfig,
        guard: SipGuard | None = None,
    ) -> None:
        self.calls = calls
        self.out = out
        self.scheduler = scheduler
        self.timers = timers
        self.guard = guard or SipGuard()
        self.invite_txns: dict[TxnKey, InviteServerTransaction] = {}
        self.other_txns: dict[TxnKey, NonInviteServerTransaction] = {}
        self.client_txns: dict[str, NonInviteClientTransaction] = {}
        self.txns_by_source: dict[str, int] = {}  # open server transactions per source IP

    def on_bytes(self, data: bytes, source: Source) -> None:
        """One datagram or TCP message; nothing in it can harm the server or another call."""
        try:
            self._handle(data, source)
        except Exception:
            log.exception(
                "call_id=%s unhandled error on %s message from %s",
                guess_call_id(data),
                source.transport,
                format_hostport(*source.addr),
            )

    def close(self) -> None:
        """Stop every server transaction's timers and forget them (shutdown)."""
        for invite_txn in self.invite_txns.values():
            invite_txn.close()
        for other_txn in self.other_txns.values():
            other_txn.close()
        self.invite_txns.clear()
        self.other_txns.clear()
        self.txns_by_source.clear()

    def close_client_transactions(self) -> None:
        """Stop waiting for answers to our requests (shutdown: timer F not awaited)."""
        for client_txn in list(self.client_txns.values()):
            client_txn.close()

    async def send_request(
        self,
        request: SipRequest,
        branch: str,
        send: Callable[[SipRequest], None],
        reliable: bool,
    ) -> SipResponse | None:
        """Send our request through a client transaction (timers E/F) matched by `branch`;
        the final response, or None on timeout."""
        txn = NonInviteClientTransaction(request, send, self.scheduler, self.timers, reliable)
        self.client_txns[branch] = txn
        try:
            return await txn.result
        finally:
            self.client_txns.pop(branch, None)

    def _handle(self, data: bytes, source: Source) -> None:
        ip = source.addr[0]
        if not self.guard.within_rate(ip):
            return
        admitted = self.guard.admits(ip)
        try:
            message = parse_message(data, stream=source.transport == "tcp")
        except SipParseError as exc:
            if admitted:
                self._answer_malformed(exc, source)
            else:
                self.guard.refused += 1
            return
        if not admitted:
            self.guard.refused += 1
            if isinstance(message, SipRequest) and message.method != "ACK":
                self._stateless(message, source, 403, "Forbidden", anonymous=True)
            return
        if isinstance(message, SipResponse):
            self._on_response(message)
            return
        annotate_via(message, source.addr[0], source.addr[1])
        self._on_request(message, source)

    def _stateless(
        self,
        request: SipRequest,
        source: Source,
        status: int,
        reason: str,
        headers: Headers | None = None,
        *,
        anonymous: bool = False,
    ) -> None:
        """Answer without a transaction, to the exact address `request` came from."""
        response = response_to(request, status, reason, to_tag=new_tag(), headers=headers or [])
        for index, (name, value) in enumerate(response.headers):
            if name.lower() == "via":
                # the top Via names the source's address and port, whatever the request said
                response.headers[index] = (name, _via_to(value, source))
                break
        self.out.send(response, source, request.call_id, anonymous=anonymous)

    def _room_for(self, request: SipRequest, source: Source) -> bool:
        """Whether `source` may open one more server transaction; answers 503 if not."""
        ip = source.addr[0]
        held = self.txns_by_source.get(ip, 0)
        total = len(self.invite_txns) + len(self.other_txns)
        if held < self.guard.max_transactions_per_source and total < self.guard.max_transactions:
            return True
        self.guard.note(ip, "over the server transaction bounds: 503")
        self._stateless(
            request, source, 503, "Service Unavailable", [("Retry-After", str(RETRY_AFTER_S))]
        )
        return False

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
        reason = sanitize(exc.reason)
        response = response_to(
            partial,
            400,
            f"Bad Request ({reason})",
            headers=[("Warning", f'399 {self.out.advertised_host(source)} "{reason}"')],
        )
        self.out.send(response, source, call_id)

    def _on_response(self, response: SipResponse) -> None:
        vias = response.vias
        txn = self.client_txns.get(vias[0].branch) if vias else None
        if txn is None:
            log.debug("call_id=%s stray response %s", response.call_id, response.status)
            return
        txn.receive_response(response)

    def _on_request(self, request: SipRequest, source: Source) -> None:
        method = request.method
        if method == "ACK":
            invite_txn = self.invite_txns.get(txn_key(request, "INVITE"))
            if invite_txn is not None and invite_txn.state in ("completed", "confirmed"):
                invite_txn.receive_request(request)
            else:
                self.calls.on_ack(request)
            return
        key = txn_key(request, method)
        if method == "INVITE":
            self._on_invite(request, source, key)
            return
        other = self.other_txns.get(key)
        if other is not None:
            other.receive_request(request)
            return
        if not self._room_for(request, source):
            return
        txn = self._server_txn(NonInviteServerTransaction, request, source, key, self._forget_other)
        self.other_txns[key] = txn
        if method == "CANCEL":
            self._on_cancel(request, txn)
        elif tag_of(request.get("To")):
            self._on_in_dialog(request, txn)
        elif method in ("BYE", "INFO"):
            reply(txn, 481, "Call/Transaction Does Not Exist")
        else:
            self._answer_other(request, txn)

    def _on_invite(self, request: SipRequest, source: Source, key: TxnKey) -> None:
        existing = self.invite_txns.get(key)
        if existing is not None:
            existing.receive_request(request)  # retransmission: absorbed
            return
        in_dialog = bool(tag_of(request.get("To")))
        if not in_dialog and self.calls.is_duplicate_invite(request):
            log.info("call_id=%s late INVITE retransmission ignored", request.call_id)
            return
        if not self._room_for(request, source):
            return
        txn = self._server_txn(InviteServerTransaction, request, source, key, self._forget_invite)
        self.invite_txns[key] = txn
        txn.respond(response_to(request, 100, "Trying"))
        if in_dialog:
            self.calls.on_reinvite(request, txn, source)
        else:
            self.calls.on_invite(request, txn, source)

    def _on_cancel(self, request: SipRequest, txn: NonInviteServerTransaction) -> None:
        key = txn_key(request, "INVITE")
        invite_txn = self.invite_txns.get(key)
        if invite_txn is None:
            reply(txn, 481, "Call/Transaction Does Not Exist")
            return
        # RFC 3261 §9.2: the 200 to CANCEL carries the To-tag of the INVITE's responses
        cancel_tag = self.calls.pending_tag(key)
        if cancel_tag is None and invite_txn.last_response is not None:
            cancel_tag = tag_of(invite_txn.last_response.get("To"))
        reply(txn, 200, "OK", to_tag=cancel_tag or None)
        self.calls.on_cancel(request, key, invite_txn)

    def _on_in_dialog(self, request: SipRequest, txn: NonInviteServerTransaction) -> None:
        dialog = self.calls.dialog_for(request)
        if dialog is None:
            reply(txn, 481, "Call/Transaction Does Not Exist")
        elif not dialog.check_cseq(request):
            reply(txn, 500, "Server Internal Error (CSeq out of order)")
        elif request.method == "BYE":
            self.calls.on_bye(request, txn, dialog)
        elif request.method == "INFO":
            self.calls.on_info(request, txn, dialog)
        else:
            self._answer_other(request, txn)

    def _answer_other(self, request: SipRequest, txn: NonInviteServerTransaction) -> None:
        """OPTIONS, and methods we do not take (405) or do not know (501)."""
        if request.method == "OPTIONS" and not self.calls.accepting_calls():
            # a dispatcher's probe: take us out of rotation while we drain
            reply(txn, 503, "Service Unavailable", [("Retry-After", str(RETRY_AFTER_S))])
        elif request.method == "OPTIONS":
            txn.respond(options_response(request))
        elif request.method in NOT_ALLOWED:
            reply(txn, 405, "Method Not Allowed", [("Allow", ALLOW)])
        else:
            reply(txn, 501, "Not Implemented", [("Allow", ALLOW)])

    def _server_txn(
        self,
        kind: type[_Txn],
        request: SipRequest,
        source: Source,
        key: TxnKey,
        forget: Callable[[TxnKey], None],
    ) -> _Txn:
        """A new server transaction for `request`, counted against its source;
        `forget(key)` runs when it terminates."""
        ip = source.addr[0]
        self.txns_by_source[ip] = self.txns_by_source.get(ip, 0) + 1

        def ended(_txn: object) -> None:
            left = self.txns_by_source.get(ip, 0) - 1
            if left > 0:
                self.txns_by_source[ip] = left
            else:
                self.txns_by_source.pop(ip, None)
            forget(key)

        return kind(
            request,
            lambda r: self.out.send(r, source, request.call_id),
            self.scheduler,
            self.timers,
            source.transport == "tcp",
            ended,
        )

    def _forget_other(self, key: TxnKey) -> None:
        self.other_txns.pop(key, None)

    def _forget_invite(self, key: TxnKey) -> None:
        self.invite_txns.pop(key, None)
        self.calls.forget_pending(key)


def guess_call_id(data: bytes) -> str:
    """The Call-ID of a message that may not parse, for the log ("-" when none)."""
    for line in data[:8192].split(b"\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in (b"call-id", b"i"):
            return value.strip().decode("utf-8", "replace")[:100]
    return "-"


def _via_to(value: str, source: Source) -> str:
    """`value` (a top Via) with received/rport naming `source` exactly."""
    try:
        via = Via.parse(value)
    except ValueError:
        return value
    via.params["received"] = source.addr[0]
    via.params["rport"] = str(source.addr[1])
    return str(via)
