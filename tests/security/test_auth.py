"""SIP digest authentication: RFC 7616 vectors, round trips, failures, nonces, garbage."""

from __future__ import annotations

import hashlib
import re

import pytest

from sip.auth import (
    AuthResult,
    DigestAuthenticator,
    digest_response,
    parse_authorization,
    parse_users,
)

REALM = "bridge.example"
URI = "sip:bot@10.0.0.5"
IP = "10.0.0.7"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def h(algorithm: str, text: str) -> str:
    name = {"MD5": "md5", "SHA-256": "sha256"}[algorithm]
    return hashlib.new(name, text.encode()).hexdigest()


def answer(
    challenge: str,
    *,
    user: str = "alice",
    password: str = "secret",
    method: str = "INVITE",
    uri: str = URI,
    cnonce: str = "0a4f113b",
    nc: str = "00000001",
    realm: str | None = None,
) -> str:
    """An Authorization header computed here from RFC 7616 §3.4.1 formulas, not by sip.auth."""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.removeprefix("Digest ")))
    algorithm = params["algorithm"]
    realm = realm if realm is not None else params["realm"]
    ha1 = h(algorithm, f"{user}:{realm}:{password}")
    ha2 = h(algorithm, f"{method}:{uri}")
    response = h(algorithm, f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{params["nonce"]}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm}, qop=auth, nc={nc}, cnonce="{cnonce}"'
    )


def make(clock: FakeClock | None = None, **kwargs: object) -> DigestAuthenticator:
    return DigestAuthenticator(
        REALM,
        {"alice": "secret"},
        clock=clock or FakeClock(),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_vectors(algorithm: str, expected: str) -> None:
    ha1 = h(algorithm, "Mufasa:http-auth@example.org:Circle of Life")
    got = digest_response(
        algorithm,
        ha1,
        "GET",
        "/dir/index.html",
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        qop="auth",
        nc="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert got == expected


def test_challenge_offers_sha256_then_md5() -> None:
    values = make().challenge(IP)
    assert len(values) == 2
    assert "algorithm=SHA-256" in values[0] and "algorithm=MD5" in values[1]
    for value in values:
        assert value.startswith("Digest ")
        assert f'realm="{REALM}"' in value and 'qop="auth"' in value and "stale" not in value
    assert "stale=true" in make().challenge(IP, stale=True)[0]


@pytest.mark.parametrize("index", [0, 1])
def test_round_trip_each_algorithm(index: int) -> None:
    auth = make()
    first = auth.verify("INVITE", None, IP)
    assert first.outcome == "challenge" and first.status_code == 401
    header = answer(first.www_authenticate[index])
    result = auth.verify("INVITE", header, IP, request_uri=URI)
    assert result == AuthResult("ok", user="alice")
    assert result.ok and result.status_code is None


def test_round_trip_without_qop_rfc2069_form() -> None:
    auth = make()
    nonce = re.search(r'nonce="([^"]+)"', auth.challenge(IP)[1])
    assert nonce
    ha1 = h("MD5", f"alice:{REALM}:secret")
    response = h("MD5", f"{ha1}:{nonce.group(1)}:{h('MD5', f'INVITE:{URI}')}")
    header = (
        f'Digest username="alice", realm="{REALM}", nonce="{nonce.group(1)}", uri="{URI}", '
        f'response="{response}"'
    )
    assert auth.verify("INVITE", header, IP).ok


@pytest.mark.parametrize("prefix", ["md5", "sha256"])
def test_ha1_users(prefix: str) -> None:
    algorithm = {"md5": "MD5", "sha256": "SHA-256"}[prefix]
    ha1 = h(algorithm, f"bob:{REALM}:hunter2")
    auth = DigestAuthenticator(REALM, {"bob": f"{prefix}:{ha1}"}, clock=FakeClock())
    values = auth.challenge(IP)
    assert len(values) == 1 and f"algorithm={algorithm}" in values[0]
    assert auth.verify("INVITE", answer(values[0], user="bob", password="hunter2"), IP).ok


def test_ha1_users_without_shared_algorithm_rejected() -> None:
    md5 = h("MD5", "a")
    sha = h("SHA-256", "b")
    with pytest.raises(ValueError, match="share no algorithm"):
        DigestAuthenticator(REALM, {"a": f"md5:{md5}", "b": f"sha256:{sha}"})


def test_wrong_password_401_then_403_after_max_failures() -> None:
    clock = FakeClock()
    auth = make(clock, max_failures=3, failure_window_s=60)
    for attempt in range(1, 3):
        header = answer(auth.challenge(IP)[0], password="wrong")
        result = auth.verify("INVITE", header, IP)
        assert result.outcome == "challenge", attempt
        assert auth.failures(IP) == attempt
    header = answer(auth.challenge(IP)[0], password="wrong")
    assert auth.verify("INVITE", header, IP).status_code == 403
    # While refused, even the right password and a bare request get 403.
    good = answer(auth.challenge(IP)[0])
    assert auth.verify("INVITE", good, IP).outcome == "forbidden"
    assert auth.verify("INVITE", None, IP).outcome == "forbidden"
    # Another source is unaffected.
    assert auth.verify("INVITE", answer(auth.challenge("10.0.0.8")[0]), "10.0.0.8").ok
    # Once the window has passed, the source may try again and succeed.
    clock.now += 61
    assert auth.verify("INVITE", None, IP).outcome == "challenge"
    assert auth.verify("INVITE", answer(auth.challenge(IP)[0]), IP).ok
    assert auth.failures(IP) == 0


def test_unknown_user_looks_like_wrong_password() -> None:
    auth = make(max_failures=5)
    wrong_user = auth.verify("INVITE", answer(auth.challenge(IP)[0], user="mallory"), IP)
    wrong_pass = auth.verify("INVITE", answer(auth.challenge(IP)[0], password="x"), IP)
    assert wrong_user.outcome == wrong_pass.outcome == "challenge"
    assert not wrong_user.stale and not wrong_pass.stale
    assert auth.failures(IP) == 2


def test_failure_table_is_bounded() -> None:
    auth = make(max_failures=5, max_sources=100)
    for i in range(1000):
        auth.verify("INVITE", "Digest garbage", f"10.1.{i // 256}.{i % 256}")
    assert len(auth._failures) <= 100


def test_nonce_from_another_source_rejected() -> None:
    auth = make()
    header = answer(auth.challenge("10.0.0.99")[0])
    result = auth.verify("INVITE", header, IP)
    assert result.outcome == "challenge" and not result.stale
    assert auth.failures(IP) == 1


def test_nonce_from_another_process_secret_rejected() -> None:
    other = make(secret=b"x" * 32)
    auth = make(secret=b"y" * 32)
    assert auth.verify("INVITE", answer(other.challenge(IP)[0]), IP).outcome == "challenge"


def test_expired_nonce_gives_stale_challenge() -> None:
    clock = FakeClock()
    auth = make(clock, nonce_ttl_s=300)
    header = answer(auth.challenge(IP)[0])
    clock.now += 301
    result = auth.verify("INVITE", header, IP)
    assert result.outcome == "challenge" and result.stale
    assert all("stale=true" in v for v in result.www_authenticate)
    assert auth.failures(IP) == 0
    # The fresh nonce in that stale challenge works.
    assert auth.verify("INVITE", answer(result.www_authenticate[0]), IP).ok


def test_expired_nonce_with_wrong_password_is_not_stale() -> None:
    clock = FakeClock()
    auth = make(clock)
    header = answer(auth.challenge(IP)[0], password="nope")
    clock.now += 400
    result = auth.verify("INVITE", header, IP)
    assert result.outcome == "challenge" and not result.stale


def test_nonce_still_valid_just_before_ttl() -> None:
    clock = FakeClock()
    auth = make(clock, nonce_ttl_s=300)
    header = answer(auth.challenge(IP)[0])
    clock.now += 299
    assert auth.verify("INVITE", header, IP).ok


@pytest.mark.parametrize(
    "mutate",
    [
        lambda hdr: hdr.replace(f'uri="{URI}"', 'uri="sip:other@10.0.0.5"'),
        lambda hdr: hdr.replace("nc=00000001", "nc=1"),
        lambda hdr: hdr.replace('cnonce="0a4f113b"', 'cnonce=""'),
        lambda hdr: hdr.replace("qop=auth", "qop=auth-int"),
        lambda hdr: hdr.replace("algorithm=SHA-256", "algorithm=SHA-512-256"),
        lambda hdr: hdr.replace("algorithm=SHA-256", "algorithm=MD5"),
        lambda hdr: hdr.replace("Digest ", "Basic "),
        lambda hdr: hdr + ', nonce="again"',
    ],
)
def test_tampered_credentials_fail(mutate: object) -> None:
    auth = make()
    header = answer(auth.challenge(IP)[0])
    result = auth.verify("INVITE", mutate(header), IP, request_uri=URI)  # type: ignore[operator]
    assert result.outcome == "challenge"


def test_uri_must_match_request_uri() -> None:
    auth = make()
    header = answer(auth.challenge(IP)[0])
    assert auth.verify("INVITE", header, IP, request_uri="sip:someone@else").outcome == "challenge"


def test_method_is_part_of_the_digest() -> None:
    auth = make()
    header = answer(auth.challenge(IP)[0], method="REGISTER")
    assert auth.verify("INVITE", header, IP).outcome == "challenge"


def test_wrong_realm_fails() -> None:
    auth = make()
    header = answer(auth.challenge(IP)[0], realm="other.realm")
    assert auth.verify("INVITE", header, IP).outcome == "challenge"


def test_unknown_params_and_odd_spacing_accepted() -> None:
    auth = make()
    header = answer(auth.challenge(IP)[0])
    header = header.replace(", ", " ,  ") + ', opaque="x,y", future-param=token'
    header = header.replace("Digest ", "DIGEST   ")
    assert auth.verify("INVITE", header, IP).ok


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Digest",
        "Digest ",
        "Digest username",
        'Digest username="alice',
        'Digest username="alice" realm="x"',
        "Digest =x",
        "Digest a=b=c",
        'Digest username="a", username="b"',
        "Digest " + ", ".join(f"p{i}=v" for i in range(100)),
        "Digest " + "x" * 10000,
        "Digestusername=a",
        'Digest username="\\',
        "Digest \x00=\x00",
        "Digest username=\udcff",
        "Bearer abc",
    ],
)
def test_garbage_headers_get_a_challenge(header: str) -> None:
    auth = make(max_failures=100)
    result = auth.verify("INVITE", header, IP)
    assert result.outcome == "challenge"
    assert result.www_authenticate


def test_parse_authorization_quoted_strings() -> None:
    params = parse_authorization(
        'Digest username="al\\"ice", realm="a, b", nonce=abc, uri="sip:x;y=z", qop=auth'
    )
    assert params == {
        "username": 'al"ice',
        "realm": "a, b",
        "nonce": "abc",
        "uri": "sip:x;y=z",
        "qop": "auth",
    }
    assert parse_authorization(None) is None
    assert parse_authorization("Digest a=b,,, c=d,") == {"a": "b", "c": "d"}


def test_parse_users() -> None:
    md5 = "a" * 32
    users = parse_users(f" alice:secret , bob:md5:{md5},carol:pa:ss word ,")
    assert users == {"alice": "secret", "bob": f"md5:{md5}", "carol": "pa:ss word"}
    for bad in ("alice", ":pw", "alice:", "a:1,a:2"):
        with pytest.raises(ValueError):
            parse_users(bad)


def test_parse_users_error_never_shows_the_password() -> None:
    with pytest.raises(ValueError) as info:
        parse_users("alice:s3cr3t,alice:other")
    assert "s3cr3t" not in str(info.value) and "other" not in str(info.value)


def test_md5_prefix_with_bad_hex_is_a_password() -> None:
    auth = DigestAuthenticator(REALM, {"alice": "md5:notahash"}, clock=FakeClock())
    assert auth.verify("INVITE", answer(auth.challenge(IP)[0], password="md5:notahash"), IP).ok


def test_bad_configuration_rejected() -> None:
    with pytest.raises(ValueError):
        DigestAuthenticator(REALM, {})
    with pytest.raises(ValueError):
        DigestAuthenticator('a"b', {"a": "b"})
