"""SDP parsing, codec choice and answer building (RFC 4566 / RFC 3264)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.api import Codec, MediaAnswer, SipReject
from sip.sdp import (
    NoCommonCodec,
    SdpError,
    build_answer,
    negotiate,
    negotiate_direction,
    parse_offer,
    parse_sdp,
)
from tests.sip.fakeapp import SUPPORTED

OFFER = """v=0
o=alice 2890844526 2890844526 IN IP4 host.example.com
s=-
c=IN IP4 192.0.2.10
t=0 0
m=audio 49170 RTP/AVP {formats}
{attrs}m=video 51372 RTP/AVP 31
a=rtpmap:31 H261/90000
"""

ATTRS = {
    "0": "",  # static payload type, no rtpmap needed
    "8": "a=rtpmap:8 PCMA/8000\n",
    "18": "a=rtpmap:18 G729/8000\n",
    "96": "a=rtpmap:96 opus/48000/2\na=fmtp:96 useinbandfec=1\n",
    "101": "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\n",
    "102": "a=rtpmap:102 telephone-event/48000\n",
}


def offer(*formats: str, extra: str = "") -> str:
    attrs = "".join(ATTRS[f] for f in formats) + extra
    return OFFER.format(formats=" ".join(formats), attrs=attrs)


@pytest.mark.parametrize(
    ("formats", "name", "rate", "channels", "dtmf"),
    [
        (("0", "101"), "PCMU", 8000, 1, 101),
        (("8", "0"), "PCMA", 8000, 1, None),
        (("18", "96", "102", "101"), "opus", 48000, 2, 102),
        (("96", "101"), "opus", 48000, 2, None),  # telephone-event/8000 cannot go with opus
        (("96", "101", "102"), "opus", 48000, 2, 102),
        (("18", "8", "101"), "PCMA", 8000, 1, 101),
    ],
)
def test_choose_first_supported_codec(
    formats: tuple[str, ...], name: str, rate: int, channels: int, dtmf: int | None
) -> None:
    media = parse_offer(offer(*formats))
    assert media.address == "192.0.2.10" and media.port == 49170
    codec, event = negotiate(media, SUPPORTED)
    assert (codec.name, codec.clock_rate, codec.channels) == (name, rate, channels)
    assert (event.payload_type if event else None) == dtmf
    if name == "opus":
        assert codec.fmtp == "useinbandfec=1"


def test_nothing_in_common_is_488() -> None:
    with pytest.raises(NoCommonCodec) as info:
        negotiate(parse_offer(offer("18", "101")), SUPPORTED)
    assert isinstance(info.value, SipReject) and info.value.status == 488


def test_supported_set_comes_from_the_caller() -> None:
    media = parse_offer(offer("0", "8", "101"))
    codec, dtmf = negotiate(media, {("pcma", 8000, 1)})
    assert codec.name == "PCMA" and dtmf is not None and dtmf.payload_type == 101
    with pytest.raises(NoCommonCodec):
        negotiate(media, {("opus", 48000, 2)})
    assert negotiate(parse_offer(offer("18")), {("g729", 8000, 1)})[0].name == "G729"


@pytest.mark.parametrize(
    ("formats", "prefer", "name", "dtmf"),
    [
        (("0", "96", "101"), Codec("opus", 96, 48000, 2), "opus", None),  # no DTMF at 8 kHz
        (("0", "96", "101", "102"), Codec("opus", 96, 48000, 2), "opus", 102),
        (("8", "0", "101"), Codec("PCMU", 0, 8000), "PCMU", 101),
        (("8", "0"), Codec("opus", 96, 48000, 2), "PCMA", None),  # no longer offered
        (("8", "0"), Codec("PCMU", 5, 8000), "PCMA", None),  # other payload type: a change
    ],
)
def test_codec_in_use_is_kept_while_offered(
    formats: tuple[str, ...], prefer: Codec, name: str, dtmf: int | None
) -> None:
    codec, event = negotiate(parse_offer(offer(*formats)), SUPPORTED, prefer=prefer)
    assert codec.name == name
    assert (event.payload_type if event else None) == dtmf


@pytest.mark.parametrize(
    ("offered", "answered"),
    [
        ("sendrecv", "sendrecv"),
        ("sendonly", "recvonly"),
        ("recvonly", "sendonly"),
        ("inactive", "inactive"),
    ],
)
def test_direction_mirrored(offered: str, answered: str) -> None:
    media = parse_offer(offer("0", extra=f"a={offered}\n"))
    assert media.direction == offered
    codec, _ = negotiate(media, SUPPORTED)
    body = build_answer(
        MediaAnswer("198.51.100.1", 30000, codec),
        1,
        offer=parse_sdp(offer("0")),
        offer_direction=media.direction,
    ).decode()
    assert f"a={answered}\r\n" in body
    assert negotiate_direction(media.direction) == answered


def test_session_level_direction_and_old_hold() -> None:
    text = offer("0").replace("t=0 0\n", "t=0 0\na=sendonly\n")
    assert parse_offer(text).direction == "sendonly"
    held = offer("0").replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0")
    assert parse_offer(held).direction == "sendonly"


def test_answer_rejects_other_streams_and_has_ptime() -> None:
    sd = parse_sdp(offer("96", "102"))
    media = parse_offer(offer("96", "102"))
    codec, dtmf = negotiate(media, SUPPORTED)
    body = build_answer(MediaAnswer("198.51.100.1", 30000, codec, dtmf), 42, 3, offer=sd).decode()
    lines = body.split("\r\n")
    assert "o=voicebridge 42 3 IN IP4 198.51.100.1" in lines
    assert "c=IN IP4 198.51.100.1" in lines
    assert "m=audio 30000 RTP/AVP 96 102" in lines
    assert "a=rtpmap:96 opus/48000/2" in lines and "a=fmtp:96 useinbandfec=1" in lines
    assert "a=rtpmap:102 telephone-event/48000" in lines and "a=fmtp:102 0-16" in lines
    assert "a=ptime:20" in lines
    assert "m=video 0 RTP/AVP 31" in lines  # rejected, same position
    assert lines.index("m=video 0 RTP/AVP 31") > lines.index("m=audio 30000 RTP/AVP 96 102")
    assert parse_offer(body).codecs[0] == Codec("opus", 96, 48000, 2, "useinbandfec=1")


def test_opus_answer_without_matching_telephone_event_has_no_dtmf() -> None:
    sd = parse_sdp(offer("96", "101"))
    codec, dtmf = negotiate(parse_offer(offer("96", "101")), SUPPORTED)
    assert dtmf is None
    body = build_answer(MediaAnswer("198.51.100.1", 30000, codec, dtmf), 1, offer=sd).decode()
    assert "m=audio 30000 RTP/AVP 96\r\n" in body
    assert "telephone-event" not in body


@pytest.mark.parametrize("proto", ["RTP/AVP", "RTP/AVPF"])
def test_answer_keeps_offered_transport(proto: str) -> None:
    text = offer("0", "101").replace("m=audio 49170 RTP/AVP", f"m=audio 49170 {proto}")
    codec, dtmf = negotiate(parse_offer(text), SUPPORTED)
    body = build_answer(
        MediaAnswer("198.51.100.1", 30000, codec, dtmf), 1, offer=parse_sdp(text)
    ).decode()
    assert f"m=audio 30000 {proto} 0 101\r\n" in body
    assert "m=video 0 RTP/AVP 31\r\n" in body


def test_answer_without_offer_is_rtp_avp() -> None:
    body = build_answer(MediaAnswer("198.51.100.1", 30000, Codec("PCMU", 0, 8000)), 1).decode()
    assert "m=audio 30000 RTP/AVP 0\r\n" in body


def test_ipv6_answer() -> None:
    body = build_answer(MediaAnswer("2001:db8::5", 4000, Codec("PCMU", 0, 8000)), 1).decode()
    assert "c=IN IP6 2001:db8::5" in body


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "v=1\nm=audio 1 RTP/AVP 0\n",
        "v=0\nc=IN IP4\nm=audio 1 RTP/AVP 0\n",
        "v=0\nm=audio port RTP/AVP 0\n",
        "v=0\nm=audio 99999 RTP/AVP 0\nc=IN IP4 1.2.3.4\n",
        "not sdp at all",
    ],
)
def test_bad_sdp_raises(bad: str) -> None:
    with pytest.raises(SdpError):
        parse_offer(bad)


def test_no_audio_or_srtp_only_is_488() -> None:
    video_only = "v=0\nc=IN IP4 1.2.3.4\nm=video 5000 RTP/AVP 31\n"
    srtp = "v=0\nc=IN IP4 1.2.3.4\nm=audio 5000 RTP/SAVP 0\n"
    for text in (video_only, srtp):
        with pytest.raises(NoCommonCodec):
            parse_offer(text)


_LINE = st.one_of(
    st.sampled_from(
        ["v=0", "c=IN IP4 1.2.3.4", "m=audio 4000 RTP/AVP 0 8 96", "a=sendonly", "t=0 0"]
    ),
    st.builds(
        lambda k, v: f"{k}={v}",
        st.sampled_from("vocmat"),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=30),
    ),
    st.builds(
        lambda k, v: f"a={k}:{v}",
        st.sampled_from(["rtpmap", "fmtp", "ptime"]),
        st.text(max_size=20),
    ),
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_LINE, max_size=12), raw=st.binary(max_size=200))
def test_sdp_parser_only_raises_its_own_errors(lines: list[str], raw: bytes) -> None:
    for body in ("\n".join(lines).encode(), raw):
        try:
            negotiate(parse_offer(body), SUPPORTED)
        except (SdpError, NoCommonCodec):
            pass


@pytest.mark.parametrize(("value", "expected"), [("30", 30), ("inf", 20), ("nan", 20), ("5", 10)])
def test_ptime_read_and_clamped(value: str, expected: int) -> None:
    assert parse_offer(offer("0", extra=f"a=ptime:{value}\n")).ptime_ms == expected
