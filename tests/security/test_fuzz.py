"""Hypothesis fuzzing: arbitrary input reaches only the documented outcomes."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from sip.access import AddressFilter
from sip.auth import DigestAuthenticator, parse_authorization
from sip.ratelimit import SourceRateLimiter

FUZZ = settings(max_examples=400, deadline=None, database=None)

AUTH = DigestAuthenticator("r", {"alice": "pw"}, max_failures=10**9, clock=lambda: 5.0)

_param = st.tuples(
    st.sampled_from(
        [
            "username",
            "realm",
            "nonce",
            "uri",
            "response",
            "qop",
            "nc",
            "cnonce",
            "algorithm",
            "opaque",
            "x",
        ]
    ),
    st.text(max_size=40),
    st.booleans(),
)


@st.composite
def digest_like(draw: st.DrawFn) -> str:
    parts = []
    for name, value, quoted in draw(st.lists(_param, max_size=12)):
        text = '"' + value.replace('"', '\\"') + '"' if quoted else value
        parts.append(f"{name}={text}")
    sep = draw(st.sampled_from([", ", ",", " , ", " "]))
    return draw(st.sampled_from(["Digest ", "digest ", "Digest", "", "Basic "])) + sep.join(parts)


@FUZZ
@given(st.one_of(st.text(max_size=300), digest_like()))
def test_authorization_parser_never_raises(header: str) -> None:
    params = parse_authorization(header)
    assert params is None or all(
        isinstance(k, str) and isinstance(v, str) for k, v in params.items()
    )
    result = AUTH.verify("INVITE", header, "10.0.0.1", request_uri="sip:x")
    assert result.outcome in {"challenge", "forbidden"}
    assert result.status_code in {401, 403}


@FUZZ
@given(st.binary(max_size=300), st.text(max_size=20), st.text(max_size=45))
def test_verify_with_decoded_bytes_never_raises(raw: bytes, method: str, source: str) -> None:
    header = raw.decode("utf-8", "surrogateescape")
    result = AUTH.verify(method, header, source)
    assert result.outcome in {"challenge", "forbidden"}
    assert all(v.startswith("Digest ") for v in AUTH.challenge(source))


@FUZZ
@given(st.one_of(st.text(max_size=200), st.lists(st.text(max_size=50), max_size=8)))
def test_address_filter_parse_raises_only_value_error(text: str | list[str]) -> None:
    try:
        f = AddressFilter.parse(text)
    except ValueError as exc:
        assert "allow list" in str(exc)
        return
    for network in f.networks:
        assert isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network)


@FUZZ
@given(st.one_of(st.text(max_size=60), st.ip_addresses().map(str)))
def test_address_filter_allows_never_raises(ip: str) -> None:
    f = AddressFilter.default()
    assert f.allows(ip) in {True, False}


@FUZZ
@given(st.ip_addresses())
def test_address_filter_agrees_with_ipaddress(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    f = AddressFilter.parse("10.0.0.0/8,2001:db8::/32")
    expected = address in ipaddress.ip_network("10.0.0.0/8") or address in ipaddress.ip_network(
        "2001:db8::/32"
    )
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        expected = address.ipv4_mapped in ipaddress.ip_network("10.0.0.0/8")
    assert f.allows(str(address)) == expected


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=8), st.floats(0, 5)), max_size=200))
def test_rate_limiter_table_stays_bounded(calls: list[tuple[str, float]]) -> None:
    now = [0.0]
    limiter = SourceRateLimiter(5, 3, max_sources=16, clock=lambda: now[0])
    for source, step in calls:
        now[0] += step
        limiter.allow(source)
        assert len(limiter) <= 16
