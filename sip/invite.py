"""INVITE and dialog handling: initial INVITEs, 2xx until ACK, CANCEL, BYE, re-INVITE, INFO.

`InviteHandler` gets requests from `sip.router.RequestRouter` once they are matched to a
fresh server transaction, checks offers, asks the `CallApplication`, keeps one `_CallState`
per dialog and tells the application when each accepted call ends (exactly once). Every
application callback runs as a task of its `TaskSet`, so a slow or failing one never holds
up the router or another call.

Before an initial INVITE reaches the application it must pass, in order: the server is
running and the application accepts calls (else 503 with Retry-After: drain); digest
authentication when the guard has an authenticator (401 challenge, 403 after repeated
failures); its Call-ID is not that of a live dialog or an INVITE still in progress (else
482 Loop Detected, and the first call is left alone); its source has fewer than the
bound of INVITEs not yet answered or ACKed (else 503). In-dialog requests of a dialog so
admitted need no new challenge: they are matched by Call-ID and both tags.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sip.api import CallApplication, CallInfo, Direction, MediaAnswer, MediaOffer, SipReject
from sip.dialog import DialogId, SipDialog, route_set_of
from sip.guard import RETRY_AFTER_S, SipGuard
from sip.message import (
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    format_hostport,
    new_tag,
    response_to,
    tag_of,
)
from sip.router import ACCEPT, ALLOW, Outbound, TxnKey, reply, respond, txn_key
from sip.sdp import (
    NoCommonCodec,
    SdpError,
    SessionDescription,
    build_answer,
    media_offer,
    negotiate,
    negotiate_direction,
    parse_sdp,
)
from sip.tasks import TaskSet
from sip.transaction import (
    InviteServerTransaction,
    NonInviteServerTransaction,
    Scheduler,
    TimerConfig,
    TwoXxRetransmitter,
)
from sip.transport import Source

log = logging.getLogger("sip.uas")

_FORWARDED_HEADERS = ("User-Agent", "Contact", "P-Asserted-Identity", "Subject", "Call-Info")


class Core(Outbound, Protocol):
    """What INVITE handling needs from the UAS: sending, addresses, timers."""

    timers: TimerConfig
    scheduler: Scheduler

    def contact(self, host: str, source: Source) -> str:
        """Our Contact header value for a dialog reached through `source`."""
        ...

    def warning(self, text: str) -> str:
        """A Warning header value (code 399) carrying `text`."""
        ...

    async def send_request(self, dialog: SipDialog, request: SipRequest) -> SipResponse | None:
        """Send an in-dialog request through a client transaction."""
        ...


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


class InviteHandler:
    """INVITE server transactions' user: calls, dialogs and the application callbacks."""

    def __init__(self, app: CallApplication, core: Core, guard: SipGuard | None = None) -> None:
        self.app = app
        self.core = core
        self.guard = guard or SipGuard()
        self.running = False
        self.tasks = TaskSet("sip-uas", log)
        self._pending: dict[TxnKey, _PendingInvite] = {}
        self._pending_calls: dict[str, TxnKey] = {}  # Call-ID -> its INVITE in progress
        self.unacked: dict[str, set[object]] = {}  # source IP -> pending keys, early dialogs
        self._calls: dict[DialogId, _CallState] = {}
        self._by_remote: dict[tuple[str, str], DialogId] = {}  # (Call-ID, from-tag)
        self._live: set[str] = set()  # call-ids accepted by on_invite, not yet terminated

    @property
    def dialogs(self) -> list[SipDialog]:
        """The dialogs alive now."""
        return [state.dialog for state in self._calls.values()]

    # ----------------------------------------------------------------- shutdown

    async def shutdown(self, timeout_s: float, stop_waiting: Callable[[], None]) -> None:
        """Refuse INVITEs in progress (503), BYE every dialog (bounded by `timeout_s`; then
        `stop_waiting` gives up on unanswered BYEs) and end every call."""
        self.running = False
        for pending in list(self._pending.values()):
            if pending.task is not None:
                pending.task.cancel()
            if not pending.txn.final_sent:
                respond(pending.txn, 503, "Service Unavailable", pending.to_tag)
        byes = [
            asyncio.create_task(state.dialog.bye_now("shutdown")) for state in self._calls.values()
        ]
        if byes:
            _, late = await asyncio.wait(byes, timeout=timeout_s)
            stop_waiting()
            if late:
                await asyncio.wait(late, timeout=1.0)
        for state in list(self._calls.values()):
            state.dialog.abandon()
            self.dialog_ended(state.dialog, "shutdown")

    # ------------------------------------------------------------------ INVITE

    def is_duplicate_invite(self, request: SipRequest) -> bool:
        """An initial INVITE of a call we already answered (its transaction has ended)."""
        dialog_id = self._by_remote.get((request.call_id, tag_of(request.get("From"))))
        state = self._calls.get(dialog_id) if dialog_id is not None else None
        return state is not None and request.cseq.number <= state.invite_cseq

    def accepting_calls(self) -> bool:
        """False while shutting down or while the application refuses new calls."""
        return self.running and self.app.accepting_calls()

    def on_invite(self, request: SipRequest, txn: InviteServerTransaction, source: Source) -> None:
        """A new initial INVITE (100 Trying sent): admit it, then answer it in a task."""
        if not self._admit(request, txn, source):
            return
        key = txn_key(request, "INVITE")
        pending = _PendingInvite(request, txn, new_tag(), source)
        self._pending[key] = pending
        self._pending_calls[request.call_id] = key
        self._hold(source.addr[0], key)
        pending.task = self._spawn(self._run_invite(pending), request.call_id, "INVITE")

    def _admit(self, request: SipRequest, txn: InviteServerTransaction, source: Source) -> bool:
        """The checks before an initial INVITE makes state; answers and returns False."""
        ip = source.addr[0]
        busy = [("Retry-After", str(RETRY_AFTER_S))]
        if not self.accepting_calls():
            respond(txn, 503, "Service Unavailable", new_tag(), busy)
            return False
        auth = self.guard.auth
        if auth is not None:
            result = auth.verify(
                "INVITE", request.get("Authorization"), ip, request_uri=request.uri
            )
            if result.outcome == "challenge":
                challenge = [("WWW-Authenticate", value) for value in result.www_authenticate]
                respond(txn, 401, "Unauthorized", new_tag(), challenge)
                return False
            if result.outcome == "forbidden":
                log.warning("call_id=%s %s: too many failed authentications", request.call_id, ip)
                respond(txn, 403, "Forbidden", new_tag())
                return False
        if self._call_id_in_use(request.call_id):
            log.warning(
                "call_id=%s INVITE from %s reuses a live Call-ID: 482",
                request.call_id,
                format_hostport(*source.addr),
            )
            respond(txn, 482, "Loop Detected", new_tag())
            return False
        if len(self.unacked.get(ip, ())) >= self.guard.max_unacked_invites_per_source:
            self.guard.note(ip, "over the bound of unanswered or un-ACKed INVITEs: 503")
            respond(txn, 503, "Service Unavailable", new_tag(), busy)
            return False
        return True

    def _call_id_in_use(self, call_id: str) -> bool:
        """A live dialog, or an INVITE not yet finally answered, has this Call-ID."""
        if call_id in self._live:
            return True
        key = self._pending_calls.get(call_id)
        pending = self._pending.get(key) if key is not None else None
        return pending is not None and not pending.txn.final_sent

    def _hold(self, ip: str, token: object) -> None:
        self.unacked.setdefault(ip, set()).add(token)

    def _release(self, ip: str, token: object) -> None:
        held = self.unacked.get(ip)
        if held is not None:
            held.discard(token)
            if not held:
                del self.unacked[ip]

    def _drop_pending(self, key: TxnKey) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        if self._pending_calls.get(pending.request.call_id) == key:
            del self._pending_calls[pending.request.call_id]
        self._release(pending.source.addr[0], key)

    def forget_pending(self, key: TxnKey) -> None:
        """The INVITE transaction `key` has ended."""
        self._drop_pending(key)

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
            respond(txn, 420, "Bad Extension", to_tag, [("Unsupported", ", ".join(unsupported))])
            return None
        content_type = (request.get("Content-Type") or "").split(";")[0].strip().lower()
        if not request.body:
            warning = self.core.warning("SDP offer required")
            respond(txn, 488, "Not Acceptable Here", to_tag, [("Warning", warning)])
            return None
        if content_type != "application/sdp":
            respond(txn, 415, "Unsupported Media Type", to_tag, [("Accept", ACCEPT)])
            return None
        try:
            sd = parse_sdp(request.body)
            offer = media_offer(sd)
            negotiate(offer, self.app.supported_codecs())
        except NoCommonCodec as exc:
            log.info("call_id=%s 488: %s", request.call_id, exc.detail)
            respond(txn, 488, exc.reason, to_tag, [("Warning", self.core.warning(exc.detail))])
            return None
        except SdpError as exc:
            log.info("call_id=%s bad SDP: %s", request.call_id, exc)
            warning = self.core.warning(str(exc))
            respond(txn, 400, "Bad Request (bad SDP)", to_tag, [("Warning", warning)])
            return None
        return sd, offer

    async def _run_invite(self, pending: _PendingInvite) -> None:
        try:
            await self._answer_invite(pending)
        except Exception:
            log.exception("call_id=%s INVITE handling failed", pending.request.call_id)
            if not pending.txn.final_sent:
                respond(pending.txn, 500, "Server Internal Error", pending.to_tag)
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
                respond(txn, exc.status, exc.reason, to_tag)
            return
        except Exception:
            log.exception("call_id=%s on_invite failed", call_id)
            if not pending.cancelled:
                respond(txn, 500, "Server Internal Error", to_tag)
            return
        self._live.add(call_id)
        if pending.cancelled or not self.running:
            if not txn.final_sent:
                respond(txn, 503, "Service Unavailable", to_tag)
            self._terminated(call_id, "cancelled" if pending.cancelled else "shutdown")
            return
        dialog = self._new_dialog(request, source, info, to_tag, sd)
        state = _CallState(dialog, invite_cseq=request.cseq.number, last_answer=answer)
        self._calls[dialog.id] = state
        self._by_remote[(dialog.call_id, dialog.id.remote_tag)] = dialog.id
        self._drop_pending(txn_key(request, "INVITE"))
        self._hold(source.addr[0], dialog.id)
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
            route_set=route_set_of(request.get_all("Record-Route")),
            remote_cseq=request.cseq.number,
            source=source,
            host=self,
            ack_wait_s=self.core.timers.timeout,
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
        answered = replace(answer, direction=direction)
        body = build_answer(
            answered, dialog.session_id, dialog.session_version, offer=dialog.offer_sdp
        )
        if state.last_sdp is not None and body != state.last_sdp:
            # RFC 3264 §8: a changed session description gets a higher o= version
            dialog.session_version += 1
            body = build_answer(
                answered, dialog.session_id, dialog.session_version, offer=dialog.offer_sdp
            )
        state.last_sdp = body
        state.last_direction = direction
        response = response_to(
            request,
            200,
            "OK",
            to_tag=dialog.id.local_tag,
            headers=[
                ("Contact", self.core.contact(dialog.info.local_host, source)),
                ("Allow", ALLOW),
                ("Content-Type", "application/sdp"),
            ],
            body=body,
        )
        txn.respond(response)
        state.retransmitter = TwoXxRetransmitter(
            response,
            lambda r: self.core.send(r, source, request.call_id),
            self.core.scheduler,
            self.core.timers,
            lambda: self._no_ack(state),
        )

    def _no_ack(self, state: _CallState) -> None:
        dialog = state.dialog
        log.warning("call_id=%s no ACK for our 2xx within 64*T1: tearing down", dialog.call_id)
        dialog.acked.set()
        self._spawn(dialog.bye_now("no ACK"), dialog.call_id, "BYE")

    def on_ack(self, request: SipRequest) -> None:
        """The ACK of our 2xx: stop retransmitting; the first confirms the dialog."""
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
        self._release(dialog.source.addr[0], dialog.id)
        if dialog.confirm():
            log.info("call_id=%s established", dialog.call_id)
            self._spawn(self.app.on_established(dialog), dialog.call_id, "on_established")

    def pending_tag(self, key: TxnKey) -> str | None:
        """Our To-tag for the initial INVITE `key` still awaiting its final response."""
        pending = self._pending.get(key)
        return pending.to_tag if pending is not None else None

    def on_cancel(
        self, request: SipRequest, key: TxnKey, invite_txn: InviteServerTransaction
    ) -> None:
        """CANCEL (200 sent): 487 to the INVITE unless its final response already went out.
        A cancelled re-INVITE gets its 487 and the dialog stays as it was (RFC 3261 §9.2)."""
        if invite_txn.final_sent:
            return  # too late: the final response already went out
        pending = self._pending.get(key)
        if pending is None:
            state = self._calls.get(self._dialog_id(invite_txn.request))
            if state is not None and tag_of(invite_txn.request.get("To")):
                log.info("call_id=%s re-INVITE cancelled by caller", request.call_id)
                respond(invite_txn, 487, "Request Terminated", state.dialog.id.local_tag)
                state.dialog.reinvite_pending = False
            return
        log.info("call_id=%s cancelled by caller", request.call_id)
        pending.cancelled = True
        respond(pending.txn, 487, "Request Terminated", pending.to_tag)
        self._drop_pending(key)

    # --------------------------------------------------------------- in dialog

    def _dialog_id(self, request: SipRequest) -> DialogId:
        return DialogId(request.call_id, tag_of(request.get("To")), tag_of(request.get("From")))

    def dialog_for(self, request: SipRequest) -> SipDialog | None:
        """The dialog an in-dialog request belongs to, if we have it."""
        state = self._calls.get(self._dialog_id(request))
        return state.dialog if state is not None else None

    def on_bye(
        self, request: SipRequest, txn: NonInviteServerTransaction, dialog: SipDialog
    ) -> None:
        """BYE from the caller: 200, and the call is over."""
        reply(txn, 200, "OK")
        log.info("call_id=%s BYE from caller", dialog.call_id)
        dialog.terminate()
        dialog.acked.set()
        self.dialog_ended(dialog, "bye")

    def on_info(
        self, request: SipRequest, txn: NonInviteServerTransaction, dialog: SipDialog
    ) -> None:
        """INFO: the application sees it, then 200 (500 if it failed)."""
        self._spawn(self._run_info(dialog, request, txn), dialog.call_id, "on_info")

    async def _run_info(
        self, dialog: SipDialog, request: SipRequest, txn: NonInviteServerTransaction
    ) -> None:
        try:
            await self.app.on_info(dialog, request.get("Content-Type") or "", request.body)
        except Exception:
            log.exception("call_id=%s on_info failed", request.call_id)
            reply(txn, 500, "Server Internal Error")
            return
        reply(txn, 200, "OK")

    def on_reinvite(
        self, request: SipRequest, txn: InviteServerTransaction, source: Source
    ) -> None:
        """A re-INVITE (100 Trying sent): refused at once or answered in a task."""
        to_tag = tag_of(request.get("To"))
        state = self._calls.get(self._dialog_id(request))
        if state is None:
            respond(txn, 481, "Call/Transaction Does Not Exist", to_tag)
            return
        dialog = state.dialog
        if not dialog.check_cseq(request):
            respond(txn, 500, "Server Internal Error (CSeq out of order)", to_tag)
            return
        if dialog.our_reinvite_pending:
            respond(txn, 491, "Request Pending", to_tag)
            return
        if dialog.reinvite_pending or dialog.state == "early":
            # RFC 3261 §14.2: an INVITE of theirs is still in progress
            retry = str(secrets.randbelow(10) + 1)
            respond(txn, 500, "Server Internal Error", to_tag, [("Retry-After", retry)])
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
                respond(txn, 500, "Server Internal Error", state.dialog.id.local_tag)
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
            respond(txn, exc.status, exc.reason, to_tag)
            return
        except Exception:
            log.exception("call_id=%s on_reinvite failed", dialog.call_id)
            dialog.reinvite_pending = False
            respond(txn, 500, "Server Internal Error", to_tag)
            return
        if dialog.state == "terminated":
            respond(txn, 481, "Call/Transaction Does Not Exist", to_tag)
            return
        if txn.final_sent:
            log.info("call_id=%s re-INVITE was cancelled; answer not sent", dialog.call_id)
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
        return await self.core.send_request(dialog, request)

    def dialog_ended(self, dialog: SipDialog, reason: str) -> None:
        """Forget the dialog and tell the application (once per accepted call)."""
        dialog.terminate()
        state = self._calls.pop(dialog.id, None)
        self._by_remote.pop((dialog.call_id, dialog.id.remote_tag), None)
        self._release(dialog.source.addr[0], dialog.id)
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

    def _spawn(
        self, coro: Coroutine[Any, Any, None], call_id: str, what: str
    ) -> asyncio.Task[None]:
        """A task of the handler's set, named after the call; a failure is logged."""
        return self.tasks.spawn(coro, f"{what} call_id={call_id}")

    def _call_info(self, request: SipRequest, source: Source) -> CallInfo:
        headers = {name: value for name in _FORWARDED_HEADERS if (value := request.get(name))}
        return CallInfo(
            call_id=request.call_id,
            from_uri=_uri_of(request.get("From")),
            to_uri=_uri_of(request.get("To")),
            remote_addr=source.addr,
            local_host=self.core.advertised_host(source),
            transport=source.transport,
            headers=headers,
        )


def _uri_of(value: str | None) -> str:
    try:
        return NameAddr.parse(value or "").uri
    except SipParseError:
        return value or ""
