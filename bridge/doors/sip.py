"""The SIP door: the `sip.api.CallApplication` that turns SIP/RTP callers into calls.

INVITE → the call manager opens a call (over `MAX_CONCURRENT_CALLS` the INVITE gets 503),
the first offered codec we support is chosen (488 when none), and an RTP socket is bound on
an even port of `RTP_PORT_MIN..RTP_PORT_MAX`. From then on `bridge.doors.rtp_session` moves
the media: caller RTP → jitter buffer → decode → 16 kHz → `call.feed`, telephone-events →
`call.dtmf`, and the bot's audio → 20 ms RTP paced by the door's `MediaClock`. The call ends
with the dialog (BYE either way, CANCEL, no ACK), on RTP inactivity (`RTP_TIMEOUT_S`, we send
BYE), or when the pipeline hangs up (we send BYE).

`start_sip(settings, calls, metrics)` starts the door and its UAS; the app calls it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from bridge.backends.base import Audio
from bridge.config import TTS_ENGINES, Settings
from bridge.contract import (
    CallHandle,
    CallLimitExceeded,
    CallOpener,
    Event,
    parse_call_options,
)
from bridge.doors.rtp_session import MediaClock, Pcm, RtpSession, bind_rtp_port
from bridge.metrics import Metrics
from bridge.pipeline.manager import DuplicateCallId, RejectReason
from media import codecs as media_codecs
from media.codecs import UnsupportedCodec
from sip.api import CallInfo, Dialog, Direction, MediaAnswer, MediaOffer, SipReject
from sip.auth import parse_users
from sip.guard import MAX_UNACKED_INVITES_PER_SOURCE, SipGuard
from sip.resolve import ResolveError, Resolver
from sip.sdp import NoCommonCodec, negotiate, negotiate_direction
from sip.tasks import TaskSet
from sip.uas import UserAgentServer

__all__ = ["SipDoor", "SipService", "start_sip"]

log = logging.getLogger("bridge.doors.sip")

_MAX_EARLY_DIGITS = 16
_RESOLVE_TIMEOUT_S = 2.0
"""How long an SDP host name may take to resolve before the offer gets 488."""

DRAIN_LIMIT_S = 10.0
"""How long a pipeline hangup waits for queued bot audio to play before the BYE."""

_HANG_UP_NOW = frozenset(
    {"shutdown", "rtp timeout", "media error", "hold timeout", "max call duration", "call refused"}
)


_UNSPECIFIED = ("0.0.0.0", "::")


def _our_direction(offer: MediaOffer) -> Direction:
    """Our media direction for a re-INVITE's offer (RFC 3264 §6.1); an unspecified address
    or port 0 is the old way to put a call on hold (RFC 2543): we stop sending."""
    direction = negotiate_direction(offer.direction)
    if offer.port == 0 or offer.address in _UNSPECIFIED:
        return "recvonly" if direction in ("sendrecv", "recvonly") else "inactive"
    return direction


class _Sink:
    """The door side of one call (`bridge.contract.CallSink`)."""

    def __init__(self, door: SipDoor, info: CallInfo) -> None:
        self._door = door
        self._call_id = info.call_id
        self.info = info
        self._session: RtpSession | None = None
        self._early: list[Audio] = []  # bot audio sent before the RTP socket existed
        self.events = 0

    @property
    def session(self) -> RtpSession | None:
        """The call's RTP session, once `on_invite` has bound it."""
        return self._session

    def attach(self, session: RtpSession) -> None:
        """Bind the RTP session; audio queued before now goes to it."""
        self._session = session
        for audio in self._early:
            session.enqueue(audio)
        self._early.clear()

    async def send_event(self, event: Event) -> None:
        """SIP has no event channel: events are only logged at debug level."""
        self.events += 1
        log.debug("call_id=%s event %s", self._call_id, event.get("type"))

    async def send_audio(self, audio: Audio) -> None:
        """Resample, cut in 20 ms frames and queue; the media clock paces them out."""
        if self._session is not None:
            self._session.enqueue(audio)
        else:
            self._early.append(audio)

    def clear_audio(self) -> None:
        """Barge-in: drop queued bot audio."""
        self._early.clear()
        if self._session is not None:
            self._session.clear()

    def playing_until(self) -> float:
        """Now plus the bot audio still queued for the media clock (and not yet bound)."""
        queued_s = sum(audio.duration_s for audio in self._early)
        if self._session is not None:
            queued_s += self._session.queued_ms / 1000.0
        return time.monotonic() + queued_s

    async def hangup(self, reason: str) -> None:
        """The bridge ends the call: BYE through the dialog once the queued audio has played
        (a goodbye is not cut off; not on shutdown), or at the ACK if it has not come yet."""
        await self._door.end_call(self._call_id, reason)


@dataclass(eq=False)
class _SipCall:
    """One SIP call at the door. The pipeline call (`handle`) opens at the ACK or at the
    first valid RTP packet, whichever comes first; until then caller media is not fed."""

    call_id: str
    info: CallInfo
    sink: _Sink
    session: RtpSession
    handle: CallHandle | None = None
    dialog: Dialog | None = None
    ending: bool = False
    tasks: TaskSet = field(default_factory=lambda: TaskSet("sip-call", log))
    opening: asyncio.Task[bool] | None = None
    timer: asyncio.TimerHandle | None = None
    """MAX_CALL_DURATION_S."""
    early_digits: list[str] = field(default_factory=list)

    def feed(self, pcm: Pcm) -> None:
        """Caller audio for the pipeline (none is played out before it opens)."""
        if self.handle is not None:
            self.handle.feed(pcm)

    def dtmf(self, digit: str) -> None:
        """A caller digit for the pipeline; the first RTP packet may carry one before the
        pipeline has opened: kept (a few) until it has."""
        if self.handle is not None:
            self.handle.dtmf(digit)
        elif len(self.early_digits) < _MAX_EARLY_DIGITS:
            self.early_digits.append(digit)

    def opened(self, handle: CallHandle) -> None:
        """The pipeline call is open: digits that came first go to it now."""
        self.handle = handle
        for digit in self.early_digits:
            handle.dtmf(digit)
        self.early_digits.clear()


class SipDoor:
    """Implements `sip.api.CallApplication` on top of a call manager."""

    def __init__(
        self,
        settings: Settings,
        calls: CallOpener,
        metrics: Metrics | None = None,
        *,
        rtp_host: str | None = None,
        comfort_silence: bool = True,
    ) -> None:
        self.settings = settings
        self.calls = calls
        self.metrics = metrics
        self.rtp_host = rtp_host or settings.sip_host
        self.comfort_silence = comfort_silence
        self.clock = MediaClock()
        self.active: dict[str, _SipCall] = {}
        self.rejected = 0
        self.resolver = Resolver(timeout_s=_RESOLVE_TIMEOUT_S)
        """Resolves SDP host names once per offer, off the loop (finding: blocking DNS)."""
        self._counted: dict[str, tuple[int, ...]] = {}
        self.clock.on_second = self._report

    # ------------------------------------------------------------ CallApplication

    def supported_codecs(self) -> frozenset[tuple[str, int, int]]:
        """What the media codec registry carries now, as `sip.sdp.negotiate` wants it."""
        return frozenset(
            (c.encoding_name.lower(), c.clock_rate, c.channels) for c in media_codecs.supported()
        )

    def accepting_calls(self) -> bool:
        """The call manager admits calls (not draining) and is not full (`_has_room`):
        otherwise the UAS answers a new INVITE and OPTIONS with 503 + Retry-After, so a
        dispatcher probing with OPTIONS takes this bridge out of rotation."""
        return self._has_room()

    async def on_invite(self, info: CallInfo, offer: MediaOffer) -> MediaAnswer:
        """Check the call limit, choose the codec, resolve the SDP host, bind a random RTP
        port, answer. The pipeline call opens later (`_open`): at the ACK or first RTP."""
        if info.call_id in self.active:  # RFC 3261 §8.2.2.2: never overwrite a live call
            self._refuse(info.call_id, "duplicate", 482, "Loop Detected")
        try:
            codec, dtmf = negotiate(offer, self.supported_codecs())
        except NoCommonCodec:  # 488
            self._count_rejected("no_codec")
            raise
        if not self._has_room():
            self._refuse(info.call_id, "full", 503, "Service Unavailable")
        address = await self._resolve(info.call_id, offer.address)
        if info.call_id in self.active:  # a duplicate arrived while we resolved
            self._refuse(info.call_id, "duplicate", 482, "Loop Detected")
        sink = _Sink(self, info)
        try:
            transport, protocol, port = await bind_rtp_port(
                self.rtp_host, self.settings.rtp_port_min, self.settings.rtp_port_max
            )
        except OSError as exc:
            log.error("call_id=%s no RTP port: %s", info.call_id, exc)
            self._refuse(info.call_id, "no_port", 503, "Service Unavailable")
        if info.call_id in self.active:
            transport.close()
            self._refuse(info.call_id, "duplicate", 482, "Loop Detected")
        try:
            session = RtpSession(
                transport,
                protocol,
                port,
                codec,
                dtmf,
                (address, offer.port),
                playout_ms=self.settings.jitter_playout_ms,
                timeout_s=self.settings.rtp_timeout_s,
                hold_timeout_s=self.settings.rtp_hold_timeout_s,
                signalling_ip=info.remote_addr[0],
                on_audio=lambda pcm: call.feed(pcm),
                on_dtmf=lambda digit: call.dtmf(digit),
                on_end=lambda reason: self._spawn_end(info.call_id, reason),
                on_first_media=lambda: self._start_media(call),
                comfort_silence=self.comfort_silence,
            )
        except UnsupportedCodec as exc:
            transport.close()
            self._count_rejected("no_codec")
            raise SipReject(488, "Not Acceptable Here") from exc
        # an initial offer without an address is not hold: we send once RTP shows the way
        session.set_direction(negotiate_direction(offer.direction))
        sink.attach(session)
        call = _SipCall(info.call_id, info, sink, session)
        call.timer = asyncio.get_running_loop().call_later(
            self.settings.max_call_duration_s,
            self._spawn_end,
            info.call_id,
            "max call duration",
        )
        self.active[info.call_id] = call
        log.info(
            "call_id=%s RTP %s/%d on port %d, caller %s:%d",
            info.call_id,
            codec.name,
            codec.clock_rate,
            port,
            offer.address,
            offer.port,
        )
        address = self.settings.sip_public_host or info.local_host
        return MediaAnswer(address, port, codec, dtmf, "sendrecv")

    async def on_established(self, dialog: Dialog) -> None:
        """ACK arrived: start the media clock and open the pipeline call (if the first RTP
        packet has not already); a refused open (full, duplicate) hangs up."""
        call = self.active.get(dialog.info.call_id)
        if call is None:
            await dialog.hangup()
            return
        call.dialog = dialog
        if call.ending:  # the pipeline hung up (or the call was refused) before the ACK
            await dialog.hangup()
            return
        await asyncio.shield(self._start_media(call))

    def _start_media(self, call: _SipCall) -> asyncio.Task[bool]:
        """Tick the call's media and open its pipeline call, once (ACK or first RTP)."""
        if call.opening is None:
            self.clock.add(call.session)
            call.opening = asyncio.get_running_loop().create_task(
                self._open(call), name=f"sip-open-{call.call_id}"
            )
        return call.opening

    async def _open(self, call: _SipCall) -> bool:
        """Open the pipeline call; a refusal ends the SIP call (BYE)."""
        options = parse_call_options(
            {},
            TTS_ENGINES,
            door="sip",
            default_engine=self.settings.default_tts_engine,
            call_id=call.call_id,
        )
        try:
            handle = await self.calls.open(options, call.sink)
        except (CallLimitExceeded, DuplicateCallId, ValueError) as exc:
            self.rejected += 1  # counted by the call manager
            log.info("call_id=%s pipeline refused the call: %s", call.call_id, exc)
            self._spawn_end(call.call_id, "call refused")
            return False
        if self.active.get(call.call_id) is not call:  # the dialog ended while opening
            await handle.close("ended before the pipeline opened")
            return False
        call.opened(handle)
        return True

    def _has_room(self) -> bool:
        """Whether a new INVITE may take a call slot, asked without opening a call: the
        manager's `accepting`, its open calls plus ours not opened yet, against its limit."""
        calls: Any = self.calls
        if not getattr(calls, "accepting", True):
            return False
        opened = getattr(calls, "active", 0)
        opened = opened if isinstance(opened, int) else len(opened)
        waiting = sum(1 for call in self.active.values() if call.handle is None)
        limit = getattr(calls, "max_calls", self.settings.max_concurrent_calls)
        return bool(opened + waiting < limit)

    def _refuse(self, call_id: str, reason: RejectReason, status: int, text: str) -> NoReturn:
        self._count_rejected(reason)
        log.info("call_id=%s %d: %s", call_id, status, reason)
        raise SipReject(status, text)

    async def _resolve(self, call_id: str, host: str, *, new_call: bool = True) -> str:
        """The SDP host as an IP (names resolved once, asynchronously); 488 if it is not
        (a refused call when `new_call`)."""
        if host in _UNSPECIFIED or not host:
            return host or "0.0.0.0"
        try:
            return await self.resolver.resolve(host)
        except ResolveError as exc:
            log.info("call_id=%s 488: SDP host: %s", call_id, exc)
            if new_call:
                self._count_rejected("bad_request")
            raise SipReject(488, "Not Acceptable Here") from None

    async def on_reinvite(self, dialog: Dialog, offer: MediaOffer) -> MediaAnswer:
        """Hold/unhold or a new address; the codec stays what it was if still offered."""
        call = self.active.get(dialog.info.call_id)
        if call is None:
            raise SipReject(481, "Call/Transaction Does Not Exist")
        # the codec in use is kept while still offered; else a codec change, or 488
        codec, dtmf = negotiate(offer, self.supported_codecs(), prefer=call.session.codec_info)
        # resolved before anything changes
        remote_ip = await self._resolve(call.call_id, offer.address, new_call=False)
        try:
            call.session.change_codec(codec, dtmf)
        except UnsupportedCodec as exc:
            raise SipReject(488, "Not Acceptable Here") from exc
        if offer.port and remote_ip not in _UNSPECIFIED:
            call.session.update_remote((remote_ip, offer.port))
        direction = _our_direction(offer)
        call.session.set_direction(direction)
        log.info(
            "call_id=%s re-INVITE: %s/%d, direction %s",
            call.call_id,
            codec.name,
            codec.clock_rate,
            direction,
        )
        address = self.settings.sip_public_host or dialog.info.local_host
        return MediaAnswer(address, call.session.local_port, codec, dtmf, "sendrecv")

    async def on_info(self, dialog: Dialog, content_type: str, body: bytes) -> None:
        """SIP INFO application/dtmf-relay (`Signal=5`) and application/dtmf (`5`)."""
        call = self.active.get(dialog.info.call_id)
        if call is None:
            return
        kind = content_type.split(";")[0].strip().lower()
        digit = ""
        text = body.decode("utf-8", "replace")
        if kind == "application/dtmf-relay":
            for line in text.splitlines():
                name, _, value = line.partition("=")
                if name.strip().lower() == "signal":
                    digit = value.strip()
        elif kind == "application/dtmf":
            digit = text.strip()
        if len(digit) == 1 and digit.upper() in "0123456789*#ABCD":
            call.dtmf(digit.upper())

    async def on_terminated(self, call_id: str, reason: str) -> None:
        """The dialog is over: stop the media and close the call (an INVITE never ACKed
        opened no pipeline call: nothing to close)."""
        call = self.active.pop(call_id, None)
        if call is None:
            return
        call.ending = True
        if call.timer is not None:
            call.timer.cancel()
        self.clock.discard(call.session)
        self._count(call)
        self._counted.pop(call_id, None)
        call.session.close()
        for task in call.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        log.info(
            "call_id=%s ended (%s): rtp in=%d out=%d malformed=%d foreign=%d",
            call_id,
            reason,
            call.session.stats.received,
            call.session.stats.sent,
            call.session.stats.malformed,
            call.session.stats.foreign,
        )
        if call.handle is None:
            return  # never opened, or `_open` still running: it closes what it opens
        try:
            await call.handle.close(reason)
        except Exception:
            log.exception("call_id=%s close failed", call_id)

    # ---------------------------------------------------------------- door side

    async def end_call(self, call_id: str, reason: str) -> None:
        """Hang up from our side (pipeline hangup, RTP timeout): BYE, then on_terminated.

        A pipeline hangup first lets the queued bot audio play out (at most
        `DRAIN_LIMIT_S`); shutdown, RTP timeout and media errors hang up at once."""
        call = self.active.get(call_id)
        if call is None or call.ending:
            return
        call.ending = True
        log.info("call_id=%s hanging up: %s", call_id, reason)
        if reason not in _HANG_UP_NOW and call.dialog is not None:
            await call.session.drained(DRAIN_LIMIT_S)
        call.session.clear()
        if call.dialog is not None:
            await call.dialog.hangup()

    def _spawn_end(self, call_id: str, reason: str) -> None:
        call = self.active.get(call_id)
        if call is None:
            return
        call.tasks.spawn(self.end_call(call_id, reason), f"end-{call_id}")

    def _count(self, call: _SipCall) -> None:
        """Add what a call's RTP counters gained since the last report to the door metrics."""
        if self.metrics is None:
            return
        stats = call.session.stats
        jitter = call.session.jitter_stats
        now = (stats.received, jitter.lost, jitter.late, stats.malformed, stats.foreign)
        before = self._counted.get(call.call_id, (0, 0, 0, 0, 0))
        received, lost, late, malformed, foreign = (
            max(0, a - b) for a, b in zip(now, before, strict=True)
        )
        self._counted[call.call_id] = now
        m = self.metrics
        if received:
            m.rtp_packets_received.labels(door="sip").inc(received)
        if lost:
            m.rtp_packets_lost.labels(door="sip").inc(lost)
        if late:
            m.rtp_packets_late.labels(door="sip").inc(late)
        if malformed:
            m.errors.labels(stage="rtp", error_type="malformed").inc(malformed)
        if foreign:
            m.errors.labels(stage="rtp", error_type="foreign_source").inc(foreign)

    def _count_rejected(self, reason: RejectReason) -> None:
        """A call refused before the call manager saw it."""
        self.rejected += 1
        if self.metrics is not None:
            self.metrics.calls_rejected.labels(door="sip", reason=reason).inc()

    def _report(self) -> None:
        """Once a second: RTP counters and the summed jitter-buffer depth."""
        if self.metrics is None:
            return
        depth = 0
        for call in self.active.values():
            self._count(call)
            depth += call.session.jitter_stats.depth
        self.metrics.jitter_buffer_depth.labels(door="sip").set(depth)

    async def close(self) -> None:
        """Stop the media clock and close every socket (after the UAS has stopped)."""
        for call_id in list(self.active):
            await self.on_terminated(call_id, "shutdown")
        await self.clock.stop()
        await self.resolver.close()


class SipService:
    """The running SIP door: the UAS plus the door; `stop()` ends every call."""

    def __init__(self, door: SipDoor, uas: UserAgentServer) -> None:
        self.door = door
        self.uas = uas

    @property
    def port(self) -> int:
        """The bound SIP port."""
        return self.uas.local_port

    async def stop(self) -> None:
        """BYE every call, close the SIP sockets and the RTP sockets."""
        try:
            await self.uas.stop()
        finally:
            await self.door.close()


async def start_sip(
    settings: Settings,
    calls: CallOpener,
    metrics: Metrics | None = None,
    *,
    udp: bool = True,
    tcp: bool = True,
    comfort_silence: bool = True,
) -> SipService:
    """Start the SIP door on `SIP_HOST:SIP_PORT` (port 0 picks a free one)."""
    door = SipDoor(settings, calls, metrics, comfort_silence=comfort_silence)
    guard = SipGuard.build(
        allow_from=settings.allow_from,
        auth_users=parse_users(settings.sip_auth_users),
        realm=settings.sip_auth_realm,
        max_requests_per_s=settings.sip_max_requests_per_s,
        # one source's un-ACKed INVITEs hold call slots: never more than half of them, so
        # a flood from one address cannot refuse everybody else
        max_unacked_invites_per_source=min(
            MAX_UNACKED_INVITES_PER_SOURCE, max(1, settings.max_concurrent_calls // 2)
        ),
    )
    uas = UserAgentServer(
        door,
        settings.sip_host,
        settings.sip_port,
        public_host=settings.sip_public_host,
        udp=udp,
        tcp=tcp,
        guard=guard,
        # Bridge.stop gives SIP what is left of SHUTDOWN_GRACE_S after the calls' 60%
        stop_timeout_s=max(1.0, settings.shutdown_grace_s * 0.35),
    )
    await uas.start()
    return SipService(door, uas)
