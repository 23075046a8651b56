"""A tiny in-test `CallApplication` that records every callback."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sip.api import CallInfo, Dialog, MediaAnswer, MediaOffer, SipReject, SupportedCodecs
from sip.sdp import negotiate

# What the SIP door carries by default (it reads its set from media.codecs at call time).
SUPPORTED: frozenset[tuple[str, int, int]] = frozenset(
    {("pcmu", 8000, 1), ("pcma", 8000, 1), ("opus", 48000, 2)}
)


@dataclass
class RecordingApp:
    """Answers every INVITE on a dummy RTP port and records what happened."""

    rtp_port: int = 40000
    supported: SupportedCodecs = SUPPORTED
    reject: SipReject | None = None
    invite_delay_s: float = 0.0
    reinvite_delay_s: float = 0.0
    accepting: bool = True
    terminate_delay_s: float = 0.0
    invites: list[tuple[CallInfo, MediaOffer]] = field(default_factory=list)
    established: list[Dialog] = field(default_factory=list)
    reinvites: list[MediaOffer] = field(default_factory=list)
    infos: list[tuple[str, bytes]] = field(default_factory=list)
    terminated: list[tuple[str, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _poke(self) -> None:
        self.changed.set()

    def supported_codecs(self) -> SupportedCodecs:
        return self.supported

    def accepting_calls(self) -> bool:
        return self.accepting

    async def on_invite(self, info: CallInfo, offer: MediaOffer) -> MediaAnswer:
        self.invites.append((info, offer))
        self._poke()
        if self.invite_delay_s:
            await asyncio.sleep(self.invite_delay_s)
        if self.reject is not None:
            raise self.reject
        codec, dtmf = negotiate(offer, self.supported)
        return MediaAnswer(info.local_host, self.rtp_port, codec, dtmf)

    async def on_established(self, dialog: Dialog) -> None:
        self.established.append(dialog)
        self._poke()

    async def on_reinvite(self, dialog: Dialog, offer: MediaOffer) -> MediaAnswer:
        self.reinvites.append(offer)
        self._poke()
        if self.reinvite_delay_s:
            await asyncio.sleep(self.reinvite_delay_s)
        codec, dtmf = negotiate(offer, self.supported)
        return MediaAnswer(dialog.info.local_host, self.rtp_port, codec, dtmf)

    async def on_info(self, dialog: Dialog, content_type: str, body: bytes) -> None:
        self.infos.append((content_type, body))
        self._poke()

    async def on_terminated(self, call_id: str, reason: str) -> None:
        self.terminated.append((call_id, reason))
        self._poke()
        if self.terminate_delay_s:
            await asyncio.sleep(self.terminate_delay_s)

    async def wait_for(self, predicate: object, wait_s: float = 5.0) -> None:
        """Wait until `predicate()` is true."""
        assert callable(predicate)
        async with asyncio.timeout(wait_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()
