"""SIP digest authentication for the UAS (RFC 3261 §22, RFC 7616 digest, RFC 8760 SHA-256).

The bridge challenges an INVITE with `401` and one `WWW-Authenticate` per algorithm,
SHA-256 first, then MD5 (RFC 8760: most preferred first), each with `qop="auth"`.
Nonces are stateless: a timestamp and an HMAC over timestamp, realm and source IP with a
per-process secret, so they expire after `nonce_ttl_s`, work only from the address they
were issued to, and cost no memory. A correct answer to an expired nonce gets a fresh
challenge with `stale=true` (RFC 7616 §3.3) so the client retries without asking the user.
The `max_failures`-th failed attempt from one source inside `failure_window_s` is
answered `403`, and so is every request from it while that many failures lie inside the
window; attempts made while refused count too, so a guesser that keeps going stays out
(the source table is an LRU bounded by `max_sources`). A stale nonce is not a failure.
Unknown users and wrong passwords look the same from outside, so extensions cannot be
enumerated.

Replay inside a nonce's lifetime, from the same source, is not detected (that would need
per-nonce state); INVITE retransmissions are absorbed by the transaction layer first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ALGORITHMS",
    "AuthResult",
    "DigestAuthenticator",
    "digest_response",
    "parse_authorization",
    "parse_users",
]

ALGORITHMS: tuple[str, ...] = ("SHA-256", "MD5")
"""Offered algorithms, most preferred first (RFC 8760)."""

_HASHES: dict[str, str] = {"SHA-256": "sha256", "MD5": "md5"}
_HA1_PREFIXES: dict[str, str] = {"md5": "MD5", "sha256": "SHA-256"}
_HEX_CHARS = {"MD5": 32, "SHA-256": 64}

MAX_HEADER_CHARS = 4096
MAX_PARAMS = 32
MAX_USERS = 10000
_NONCE_TIME = struct.Struct(">q")
_NONCE_MAC_BYTES = 16
_NC = re.compile(r"[0-9A-Fa-f]{8}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(r"[0-9a-f]+")


def _b(text: str) -> bytes:
    # surrogatepass: a header decoded with surrogateescape still encodes, never raises.
    return text.encode("utf-8", "surrogatepass")


def _h(algorithm: str, data: str) -> str:
    return hashlib.new(_HASHES[algorithm], _b(data)).hexdigest()


def digest_response(
    algorithm: str,
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    *,
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
) -> str:
    """The `response` value: KD(HA1, nonce:nc:cnonce:qop:HA2) with qop=auth, or the
    RFC 2069 form KD(HA1, nonce:HA2) without qop; HA2 = H(method:uri)."""
    ha2 = _h(algorithm, f"{method}:{uri}")
    if qop is None:
        return _h(algorithm, f"{ha1}:{nonce}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def parse_authorization(header: str | None) -> dict[str, str] | None:
    """The parameters of a `Digest` credentials header, names lower-cased, quoted
    strings unescaped; None for anything else (other scheme, bad syntax, duplicates,
    too long). Never raises."""
    if header is None or len(header) > MAX_HEADER_CHARS:
        return None
    text = header.strip()
    scheme = _TOKEN.match(text)
    if scheme is None or scheme.group().lower() != "digest":
        return None
    pos = scheme.end()
    if pos < len(text) and text[pos] not in " \t":
        return None
    params: dict[str, str] = {}
    length = len(text)
    while True:
        while pos < length and text[pos] in " \t,":
            pos += 1
        if pos >= length:
            break
        name_match = _TOKEN.match(text, pos)
        if name_match is None:
            return None
        name = name_match.group().lower()
        pos = name_match.end()
        while pos < length and text[pos] in " \t":
            pos += 1
        if pos >= length or text[pos] != "=":
            return None
        pos += 1
        while pos < length and text[pos] in " \t":
            pos += 1
        if pos < length and text[pos] == '"':
            pos += 1
            chars: list[str] = []
            while True:
                if pos >= length:
                    return None  # unterminated quoted string
                char = text[pos]
                if char == "\\" and pos + 1 < length:
                    chars.append(text[pos + 1])
                    pos += 2
                elif char == '"':
                    pos += 1
                    break
                else:
                    chars.append(char)
                    pos += 1
            value = "".join(chars)
        else:
            value_match = _TOKEN.match(text, pos)
            if value_match is None:
                return None
            value = value_match.group()
            pos = value_match.end()
        if name in params or len(params) >= MAX_PARAMS:
            return None
        params[name] = value
        while pos < length and text[pos] in " \t":
            pos += 1
        if pos < length and text[pos] != ",":
            return None
    return params or None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class _Credential:
    password: str | None = None
    ha1: str | None = None
    ha1_algorithm: str | None = None

    def ha1_for(self, algorithm: str, user: str, realm: str) -> str | None:
        if self.password is not None:
            return _h(algorithm, f"{user}:{realm}:{self.password}")
        return self.ha1 if self.ha1_algorithm == algorithm else None


def _credential(user: str, value: str) -> _Credential:
    prefix, sep, rest = value.partition(":")
    algorithm = _HA1_PREFIXES.get(prefix.lower()) if sep else None
    if algorithm is not None:
        digest = rest.strip().lower()
        if len(digest) == _HEX_CHARS[algorithm] and _HEX.fullmatch(digest):
            return _Credential(ha1=digest, ha1_algorithm=algorithm)
    if not value:
        raise ValueError(f"SIP auth user {user!r} has an empty password")
    return _Credential(password=value)


def parse_users(text: str) -> dict[str, str]:
    """Parse `SIP_AUTH_USERS`: comma-separated `user:password` or `user:md5:<32 hex>` /
    `user:sha256:<64 hex>` (HA1 = H(user:realm:password)). A password may hold colons and
    spaces but no comma; a value that starts with `md5:`/`sha256:` followed by hex of the
    right length is an HA1. Raises `ValueError` naming the bad entry's user (never the
    password)."""
    users: dict[str, str] = {}
    for index, raw in enumerate(text.split(",")):
        entry = raw.strip()
        if not entry:
            continue
        user, sep, value = entry.partition(":")
        user = user.strip()
        if not sep or not user or not value:
            label = repr(user) if user else f"#{index + 1}"
            raise ValueError(f"SIP_AUTH_USERS entry {label} is not user:password or user:HA1")
        if user in users:
            raise ValueError(f"SIP_AUTH_USERS names user {user!r} twice")
        users[user] = value
    return users


AuthOutcome = Literal["ok", "challenge", "forbidden"]


@dataclass(frozen=True)
class AuthResult:
    """What to do with a request: `ok` (pass it on, `user` authenticated), `challenge`
    (answer 401 with `www_authenticate`, `stale` when only the nonce had expired) or
    `forbidden` (answer 403: too many failures from this source)."""

    outcome: AuthOutcome
    user: str | None = None
    stale: bool = False
    www_authenticate: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the request is authenticated."""
        return self.outcome == "ok"

    @property
    def status_code(self) -> int | None:
        """401 for a challenge, 403 when forbidden, None when ok."""
        return {"challenge": 401, "forbidden": 403}.get(self.outcome)


class DigestAuthenticator:
    """Challenge and verify SIP requests with digest credentials for one realm."""

    def __init__(
        self,
        realm: str,
        users: Mapping[str, str],
        *,
        nonce_ttl_s: float = 300,
        max_failures: int = 5,
        failure_window_s: float = 60,
        max_sources: int = 10000,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not realm or '"' in realm or "\\" in realm:
            raise ValueError(f"bad SIP auth realm {realm!r}")
        if not users:
            raise ValueError("digest authentication needs at least one user")
        if len(users) > MAX_USERS:
            raise ValueError(f"more than {MAX_USERS} SIP auth users")
        if max_failures < 1 or max_sources < 1 or nonce_ttl_s <= 0:
            raise ValueError("max_failures, max_sources and nonce_ttl_s must be positive")
        self.realm = realm
        self._users = {user: _credential(user, value) for user, value in users.items()}
        # Offer only algorithms every user can answer, so no user is stuck with one its
        # HA1 cannot satisfy while the client picks the first offered.
        self.algorithms: tuple[str, ...] = tuple(
            alg
            for alg in ALGORITHMS
            if all(c.password is not None or c.ha1_algorithm == alg for c in self._users.values())
        )
        if not self.algorithms:
            raise ValueError("SIP auth users' HA1s share no algorithm; give passwords instead")
        self.nonce_ttl_s = float(nonce_ttl_s)
        self.max_failures = max_failures
        self.failure_window_s = float(failure_window_s)
        self.max_sources = max_sources
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._dummy = _Credential(password=secrets.token_hex(16))

    # --- nonces ---------------------------------------------------------------------

    def _mac(self, stamp: bytes, source_ip: str) -> bytes:
        message = stamp + b"\0" + _b(self.realm) + b"\0" + _b(source_ip)
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_NONCE_MAC_BYTES]

    def make_nonce(self, source_ip: str) -> str:
        """A fresh nonce bound to `source_ip` and to now."""
        stamp = _NONCE_TIME.pack(int(self._clock() * 1000))
        raw = stamp + self._mac(stamp, source_ip)
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def _nonce_state(self, nonce: str, source_ip: str) -> Literal["fresh", "stale", "bad"]:
        try:
            raw = base64.urlsafe_b64decode(_b(nonce) + b"=" * (-len(nonce) % 4))
        except ValueError:
            return "bad"
        if len(raw) != _NONCE_TIME.size + _NONCE_MAC_BYTES:
            return "bad"
        if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != nonce:
            return "bad"  # only the exact text we issued, not a variant that decodes alike
        stamp, mac = raw[: _NONCE_TIME.size], raw[_NONCE_TIME.size :]
        if not hmac.compare_digest(mac, self._mac(stamp, source_ip)):
            return "bad"
        age_s = self._clock() - _NONCE_TIME.unpack(stamp)[0] / 1000
        if age_s < -1.0:
            return "bad"
        return "fresh" if age_s <= self.nonce_ttl_s else "stale"

    # --- challenge and verify -------------------------------------------------------

    def challenge(self, source_ip: str, *, stale: bool = False) -> list[str]:
        """`WWW-Authenticate` values for a 401, most preferred algorithm first."""
        nonce = self.make_nonce(source_ip)
        tail = ", stale=true" if stale else ""
        return [
            f"Digest realm={_quote(self.realm)}, nonce={_quote(nonce)}, "
            f'algorithm={alg}, qop="auth"{tail}'
            for alg in self.algorithms
        ]

    def _challenge(self, source_ip: str, *, stale: bool = False) -> AuthResult:
        return AuthResult(
            "challenge", stale=stale, www_authenticate=tuple(self.challenge(source_ip, stale=stale))
        )

    def verify(
        self,
        method: str,
        authorization: str | None,
        source_ip: str,
        *,
        request_uri: str | None = None,
    ) -> AuthResult:
        """Check a request's `Authorization` header (None when absent). When given,
        `request_uri` must equal the credentials' `uri` (RFC 3261 §22.4). Never raises."""
        if self._blocked(source_ip):
            if authorization is not None:
                self._record_failure(source_ip)
            return AuthResult("forbidden")
        if authorization is None:
            return self._challenge(source_ip)
        result = self._check(method, authorization, source_ip, request_uri)
        if result is None:
            return self._fail(source_ip)
        if result.ok:
            self._failures.pop(source_ip, None)
        return result

    def _check(
        self, method: str, authorization: str, source_ip: str, request_uri: str | None
    ) -> AuthResult | None:
        """The result for well-formed credentials; None for a failed attempt."""
        params = parse_authorization(authorization)
        if params is None:
            return None
        user = params.get("username")
        nonce = params.get("nonce")
        uri = params.get("uri")
        response = params.get("response")
        if user is None or nonce is None or uri is None or response is None:
            return None
        if params.get("realm") != self.realm:
            return None
        if request_uri is not None and uri.strip() != request_uri.strip():
            return None
        algorithm = next(
            (a for a in self.algorithms if a.lower() == params.get("algorithm", "MD5").lower()),
            None,
        )
        if algorithm is None:
            return None
        qop = params.get("qop")
        nc = params.get("nc", "")
        cnonce = params.get("cnonce", "")
        if qop is not None and (qop.lower() != "auth" or not _NC.fullmatch(nc) or not cnonce):
            return None
        state = self._nonce_state(nonce, source_ip)
        if state == "bad":
            return None
        credential = self._users.get(user)
        # An unknown user costs the same hashing as a known one.
        ha1 = (credential or self._dummy).ha1_for(algorithm, user, self.realm)
        if ha1 is None:
            return None
        expected = digest_response(
            algorithm,
            ha1,
            method,
            uri,
            nonce,
            qop=None if qop is None else "auth",
            nc=nc,
            cnonce=cnonce,
        )
        if not hmac.compare_digest(_b(expected), _b(response.lower())) or credential is None:
            return None
        if state == "stale":
            return self._challenge(source_ip, stale=True)
        return AuthResult("ok", user=user)

    # --- failures per source --------------------------------------------------------

    def _window(self, source_ip: str) -> deque[float] | None:
        window = self._failures.get(source_ip)
        if window is None:
            return None
        cutoff = self._clock() - self.failure_window_s
        while window and window[0] <= cutoff:
            window.popleft()
        if not window:
            del self._failures[source_ip]
            return None
        return window

    def _blocked(self, source_ip: str) -> bool:
        window = self._window(source_ip)
        return window is not None and len(window) >= self.max_failures

    def _record_failure(self, source_ip: str) -> int:
        window = self._window(source_ip)
        if window is None:
            if len(self._failures) >= self.max_sources:
                self._failures.popitem(last=False)
            window = deque(maxlen=self.max_failures)
            self._failures[source_ip] = window
        else:
            self._failures.move_to_end(source_ip)
        window.append(self._clock())
        return len(window)

    def _fail(self, source_ip: str) -> AuthResult:
        if self._record_failure(source_ip) >= self.max_failures:
            return AuthResult("forbidden")
        return self._challenge(source_ip)

    def failures(self, source_ip: str) -> int:
        """Failed attempts from `source_ip` inside the window (for logs and tests)."""
        window = self._window(source_ip)
        return 0 if window is None else len(window)
