"""SIP message parsing and serialization."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.message import (
    CSeq,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    parse_message,
    response_to,
    split_list,
)

INVITE = (
    "INVITE sip:bot@example.com SIP/2.0\r\n"
    "v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKaaa, "
    "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKbbb;received=10.0.0.9\r\n"
    "VIA: SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKccc;rport\r\n"
    'f: "Smith, John" <sip:john@example.com>;tag=abc\r\n'
    "t: <sip:bot@example.com>\r\n"
    "i: call-1@example.com\r\n"
    "cseq: 7 INVITE\r\n"
    'm: <sip:john@10.0.0.1:5060;transport=udp>, "A, B" <sip:ab@x.com>\r\n'
    "Subject: hello\r\n"
    "  world,\r\n"
    "\tagain\r\n"
    "c: application/sdp\r\n"
    "l: 5\r\n"
    "\r\n"
    "v=0\r\n"
)


def test_compact_folded_comma_joined_case() -> None:
    msg = parse_message(INVITE.encode())
    assert isinstance(msg, SipRequest)
    assert msg.method == "INVITE" and msg.uri == "sip:bot@example.com"
    assert msg.call_id == "call-1@example.com"
    assert msg.cseq == CSeq(7, "INVITE")
    vias = msg.vias
    assert [v.branch for v in vias] == ["z9hG4bKaaa", "z9hG4bKbbb", "z9hG4bKccc"]
    assert vias[1].transport == "TCP" and vias[1].received == "10.0.0.9" and vias[1].port is None
    assert vias[2].host == "2001:db8::1" and vias[2].port == 5070 and vias[2].wants_rport
    assert msg.get("FROM") == msg.get("f") == '"Smith, John" <sip:john@example.com>;tag=abc'
    assert NameAddr.parse(msg.get("From") or "").display == "Smith, John"
    assert len(msg.get_all("Contact")) == 2
    assert msg.get("Subject") == "hello world, again"
    assert msg.get("Content-Type") == "application/sdp"
    assert msg.body == b"v=0\r\n"


def test_body_trimmed_to_content_length_on_udp() -> None:
    msg = parse_message(INVITE.encode() + b"trailing junk")
    assert msg.body == b"v=0\r\n"


def test_missing_content_length_udp_vs_stream() -> None:
    text = INVITE.replace("l: 5\r\n", "")
    assert parse_message(text.encode()).body == b"v=0\r\n"
    with pytest.raises(SipParseError, match="missing Content-Length"):
        parse_message(text.encode(), stream=True)


def test_lf_only_line_endings() -> None:
    msg = parse_message(INVITE.replace("\r\n", "\n").replace("l: 5", "l: 4").encode())
    assert msg.call_id == "call-1@example.com"


def test_response_parse() -> None:
    raw = (
        "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
        "To: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_message(raw.encode())
    assert isinstance(msg, SipResponse) and msg.status == 180 and msg.reason == "Ringing"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: t.replace("i: call-1@example.com\r\n", ""), "missing Call-ID"),
        (lambda t: t.replace("cseq: 7 INVITE", "cseq: x INVITE"), "bad CSeq"),
        (lambda t: t.replace("cseq: 7 INVITE", "cseq: 7 BYE"), "CSeq method"),
        (lambda t: t.replace("l: 5", "l: five"), "bad Content-Length"),
        (lambda t: t.replace("l: 5", "l: 50"), "body shorter"),
        (lambda t: t.replace("l: 5", "l: 999999"), "too large"),
        (lambda t: t[:100], "truncated"),
        (lambda t: t.replace("Subject: hello", "Subject: " + "x" * 9000), "too long"),
        (
            lambda t: t.replace("INVITE sip:bot@example.com SIP/2.0", "INVITE sip:bot SIP/3.0"),
            "start line",
        ),
    ],
)
def test_errors_are_typed_with_reason(mutate: object, reason: str) -> None:
    assert callable(mutate)
    with pytest.raises(SipParseError, match=reason):
        parse_message(mutate(INVITE).encode())


def test_error_keeps_partial_message_for_a_400() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(INVITE.replace("l: 5", "l: abc").encode())
    partial = info.value.partial
    assert isinstance(partial, SipRequest) and partial.call_id == "call-1@example.com"
    bad = response_to(partial, 400, "Bad Request")
    assert len(bad.get_all("Via")) == 3 and bad.get("CSeq") == "7 INVITE"


def test_split_list_respects_quotes_and_brackets() -> None:
    assert split_list('"a, b" <sip:x;p=1,2>, <sip:y>, sip:z') == [
        '"a, b" <sip:x;p=1,2>',
        "<sip:y>",
        "sip:z",
    ]


def test_uri_and_name_addr() -> None:
    uri = SipUri.parse("sip:alice@[2001:db8::2]:5080;transport=tcp;lr?subject=x")
    assert (uri.user, uri.host, uri.port) == ("alice", "2001:db8::2", 5080)
    assert uri.params == {"transport": "tcp", "lr": None}
    assert str(uri) == "sip:alice@[2001:db8::2]:5080;transport=tcp;lr?subject=x"
    bare = NameAddr.parse("sip:bob@example.com;tag=99")
    assert bare.uri == "sip:bob@example.com" and bare.tag == "99"
    with pytest.raises(SipParseError):
        NameAddr.parse('"unterminated <sip:x@y>')


def test_via_str_round_trip() -> None:
    via = Via.parse("SIP / 2.0 / udp host.example:5062 ; branch=z9hG4bKx ;rport")
    assert via.transport == "UDP" and via.port == 5062 and via.wants_rport and via.rport is None
    assert Via.parse(str(via)) == via


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=12)
_value = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=","),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["INVITE", "BYE", "OPTIONS", "INFO", "X-CUSTOM"]),
    user=_token,
    extra=st.lists(
        st.tuples(st.sampled_from(["X-A", "Subject", "User-Agent"]), _value), max_size=5
    ),
    vias=st.lists(_token, min_size=1, max_size=4),
    body=st.binary(max_size=300),
    cseq=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_serialize_parse_round_trip(
    method: str,
    user: str,
    extra: list[tuple[str, str]],
    vias: list[str],
    body: bytes,
    cseq: int,
) -> None:
    msg = SipRequest(method=method, uri=f"sip:{user}@example.com")
    for i, host in enumerate(vias):
        msg.add("Via", f"SIP/2.0/UDP {host}:{5060 + i};branch=z9hG4bK{i}{user}")
    msg.add("From", f"<sip:{user}@example.com>;tag=1")
    msg.add("To", "<sip:bot@example.com>")
    msg.add("Call-ID", f"{user}@host")
    msg.add("CSeq", f"{cseq} {method}")
    for name, value in extra:
        msg.add(name, value.strip() or "x")
    msg.body = body
    wire = msg.to_bytes()
    parsed = parse_message(wire)
    assert isinstance(parsed, SipRequest)
    assert parsed.method == method and parsed.body == body
    assert [(n, v) for n, v in parsed.headers if n != "Content-Length"] == msg.headers
    assert parsed.to_bytes() == wire


VALID = INVITE.encode()


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=2000),
        st.tuples(
            st.integers(0, len(VALID)), st.integers(0, len(VALID)), st.binary(max_size=40)
        ).map(lambda t: VALID[: min(t[0], t[1])] + t[2] + VALID[max(t[0], t[1]) :]),
    )
)
def test_parser_only_ever_raises_sip_parse_error(data: bytes) -> None:
    for stream in (False, True):
        try:
            parse_message(data, stream=stream)
        except SipParseError:
            pass
