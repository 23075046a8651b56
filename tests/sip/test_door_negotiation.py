"""The SIP door negotiates with `sip.sdp.negotiate` on INVITE and re-INVITE alike.

Drives `bridge.doors.sip.SipDoor` through the `CallApplication` calls the UAS makes, with a
fake dialog: telephone-event is answered only at the chosen codec's clock rate (RFC 4733
§2.1) on both paths, the codec in use is kept while still offered, and the supported set
is the media codec registry's, read when the offer arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bridge.doors.sip import SipDoor
from bridge.tools.echo import EchoCalls
from media import codecs
from sip.api import CallInfo, Codec, MediaOffer, SipReject
from tests.sipdoor.helpers import door_settings, udp_socket

pytestmark = pytest.mark.timeout(30)

PCMU = Codec("PCMU", 0, 8000)
OPUS = Codec("opus", 111, 48000, 2)
EVENTS_8K = Codec("telephone-event", 101, 8000, fmtp="0-16")
EVENTS_48K = Codec("telephone-event", 102, 48000, fmtp="0-16")
G729 = Codec("G729", 18, 8000)


@dataclass
class FakeDialog:
    info: CallInfo

    async def hangup(self) -> None:
        pass


def _info(call_id: str) -> CallInfo:
    return CallInfo(call_id, "sip:a@x", "sip:b@y", ("127.0.0.1", 5060), "127.0.0.1", "udp")


async def test_reinvite_answers_telephone_event_only_at_the_codec_rate() -> None:
    door = SipDoor(door_settings(), EchoCalls(echo=False))
    sock = udp_socket()
    port = sock.getsockname()[1]
    try:
        first = await door.on_invite(_info("n1"), MediaOffer("127.0.0.1", port, (OPUS, EVENTS_8K)))
        assert first.codec == OPUS and first.dtmf is None
        dialog = FakeDialog(_info("n1"))
        await door.on_established(dialog)
        # the codec in use is still offered: kept, but telephone-event/8000 cannot go with it
        kept = await door.on_reinvite(dialog, MediaOffer("127.0.0.1", port, (OPUS, EVENTS_8K)))
        assert kept.codec == OPUS and kept.dtmf is None
        both = (PCMU, EVENTS_8K, OPUS, EVENTS_48K)
        kept = await door.on_reinvite(dialog, MediaOffer("127.0.0.1", port, both))
        assert kept.codec == OPUS and kept.dtmf == EVENTS_48K  # kept although PCMU is first
        changed = await door.on_reinvite(
            dialog, MediaOffer("127.0.0.1", port, (PCMU, EVENTS_48K, EVENTS_8K))
        )
        assert changed.codec == PCMU and changed.dtmf == EVENTS_8K
        with pytest.raises(SipReject) as rejected:
            await door.on_reinvite(dialog, MediaOffer("127.0.0.1", port, (G729, EVENTS_8K)))
        assert rejected.value.status == 488
    finally:
        await door.close()
        sock.close()


async def test_door_supported_set_is_the_codec_registry() -> None:
    door = SipDoor(door_settings(), EchoCalls(echo=False))
    try:
        assert set(door.supported_codecs()) == {
            (c.encoding_name.lower(), c.clock_rate, c.channels) for c in codecs.supported()
        }
        assert ("pcmu", 8000, 1) in door.supported_codecs()
    finally:
        await door.close()
