"""The user-agent server's upward interface: what the SIP door implements and calls.

`sip.uas.UserAgentServer` does the signalling (transactions, dialogs, SDP negotiation) and
hands each call to a `CallApplication`; the application answers with media addresses and
gets told when the dialog ends. No audio crosses this boundary.

Codecs: `sip/` knows no audio, so the application says what it can carry
(`CallApplication.supported_codecs()`, asked afresh for every offer). The UAS rejects an
offer with nothing in that set (488, with a Warning) before the application sees it; the
application picks its codec with the same rule, `sip.sdp.negotiate(offer, supported,
prefer=codec in use)`, for the initial INVITE and re-INVITEs alike.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal, Protocol

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]

SupportedCodecs = Collection[tuple[str, int, int]]
"""What an application carries: `(encoding name lower-cased, clock rate, channels)`."""


@dataclass(frozen=True)
class Codec:
    """One negotiated RTP payload format."""

    name: str  # "PCMU", "PCMA", "opus", "telephone-event"
    payload_type: int
    clock_rate: int
    channels: int = 1
    fmtp: str = ""


@dataclass(frozen=True)
class MediaOffer:
    """The caller's audio stream as its SDP describes it (address, port, codecs in order)."""

    address: str
    port: int
    codecs: tuple[Codec, ...]
    direction: Direction = "sendrecv"
    ptime_ms: int = 20


@dataclass(frozen=True)
class MediaAnswer:
    """What the application accepts: the chosen codec, DTMF codec if any, our RTP address."""

    address: str
    port: int
    codec: Codec
    dtmf: Codec | None = None
    direction: Direction = "sendrecv"


@dataclass(frozen=True)
class CallInfo:
    """The signalling facts of one accepted INVITE."""

    call_id: str
    from_uri: str
    to_uri: str
    remote_addr: tuple[str, int]
    local_host: str  # the address the caller reached us on, for SDP
    transport: Literal["udp", "tcp"]
    headers: dict[str, str] = field(default_factory=dict)


class SipReject(Exception):
    """Raised by the application to refuse an INVITE with a final status (488, 503, ...)."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}")


class Dialog(Protocol):
    """An established call as the application sees it."""

    info: CallInfo

    async def hangup(self) -> None:
        """Send BYE (the bridge ends the call). Idempotent."""
        ...


class CallApplication(Protocol):
    """Implemented by bridge/doors/sip.py."""

    def supported_codecs(self) -> SupportedCodecs:
        """The codecs this application can carry now; the UAS answers 488 to an offer
        with none of them."""
        ...

    def accepting_calls(self) -> bool:
        """False while the application takes no new call (draining, full): a new INVITE
        then gets 503 with Retry-After and OPTIONS gets 503, so a dispatcher probing with
        OPTIONS takes this server out of rotation; in-dialog requests go on as before."""
        ...

    async def on_invite(self, info: CallInfo, offer: MediaOffer) -> MediaAnswer:
        """A new INVITE: allocate media and return the answer, or raise `SipReject`.
        The offer holds at least one supported codec; `sip.sdp.negotiate` picks it."""
        ...

    async def on_established(self, dialog: Dialog) -> None:
        """The ACK for our 2xx arrived: media may flow both ways."""
        ...

    async def on_reinvite(self, dialog: Dialog, offer: MediaOffer) -> MediaAnswer:
        """A re-INVITE (hold/unhold, codec change, new address); raise `SipReject` to refuse."""
        ...

    async def on_info(self, dialog: Dialog, content_type: str, body: bytes) -> None:
        """An INFO request (e.g. application/dtmf-relay)."""
        ...

    async def on_terminated(self, call_id: str, reason: str) -> None:
        """The call is over for any reason: BYE either way, CANCEL, no ACK, transport error.
        Called exactly once for every call `on_invite` accepted."""
        ...
