"""SIP message parse and serialize (RFC 3261 §7, §20, §25), tolerant where the RFC allows.

Compact header names, folded lines, repeated and comma-joined headers and any header-name
case are accepted. Header values are kept as text; helpers parse Via, name-addr, URIs and
CSeq on demand. Every failure is a `SipParseError` carrying whatever could be read, so the
caller can still answer 400 when Via, Call-ID and CSeq survived.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 65535
MAX_HEAD_BYTES = 16384
MAX_HEADER_LINE_BYTES = 8192
MAX_HEADERS = 128
MAX_BODY_BYTES = 32768
BRANCH_COOKIE = "z9hG4bK"

COMPACT = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}
_CANONICAL = {
    n.lower(): n
    for n in (
        *COMPACT.values(),
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Authorization",
        "CSeq",
        "Call-Info",
        "Content-Disposition",
        "Content-Language",
        "Date",
        "Error-Info",
        "Expires",
        "In-Reply-To",
        "Max-Forwards",
        "MIME-Version",
        "Min-Expires",
        "Organization",
        "P-Asserted-Identity",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "Server",
        "Timestamp",
        "Unsupported",
        "User-Agent",
        "Warning",
        "WWW-Authenticate",
    )
}
# Headers whose comma-joined values are separate entries (RFC 3261 §7.3.1).
_LIST_HEADERS = frozenset({"via", "route", "record-route", "contact"})
_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~\-]+$")
_REQUEST_LINE = re.compile(r"^([A-Za-z0-9.!%*_+`'~\-]+) (\S+) SIP/2\.0$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 ([1-6][0-9][0-9]) ?(.*)$")


class SipParseError(ValueError):
    """A message that cannot be used as-is. `partial` holds what was readable, if anything."""

    def __init__(self, reason: str, partial: SipMessage | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial


def canonical_name(name: str) -> str:
    """The long, conventionally cased form of a header name (compact forms expanded)."""
    lower = name.strip().lower()
    if len(lower) == 1 and lower in COMPACT:
        return COMPACT[lower]
    return _CANONICAL.get(lower, name.strip())


def split_list(value: str) -> list[str]:
    """Split a comma-joined header value, never inside quotes or angle brackets."""
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    angle = 0
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            angle += 1
        elif not quoted and ch == ">":
            angle = max(0, angle - 1)
        elif ch == "," and not quoted and angle == 0:
            out.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    out.append("".join(current).strip())
    return [v for v in out if v]


@dataclass
class SipMessage:
    """Headers (in order, names canonical) and a body, common to requests and responses."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (any case, compact forms accepted)."""
        key = canonical_name(name).lower()
        for n, v in self.headers:
            if n.lower() == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """All values of `name`, in order."""
        key = canonical_name(name).lower()
        return [v for n, v in self.headers if n.lower() == key]

    def set(self, name: str, value: str) -> None:
        """Replace every `name` header by one with `value` (at the first one's place)."""
        name = canonical_name(name)
        key = name.lower()
        for i, (n, _) in enumerate(self.headers):
            if n.lower() == key:
                self.headers[i] = (name, value)
                self.headers[i + 1 :] = [h for h in self.headers[i + 1 :] if h[0].lower() != key]
                return
        self.headers.append((name, value))

    def add(self, name: str, value: str, first: bool = False) -> None:
        """Append (or prepend) one header."""
        entry = (canonical_name(name), value)
        if first:
            self.headers.insert(0, entry)
        else:
            self.headers.append(entry)

    def remove(self, name: str) -> None:
        """Drop every `name` header."""
        key = canonical_name(name).lower()
        self.headers = [h for h in self.headers if h[0].lower() != key]

    @property
    def call_id(self) -> str:
        """The Call-ID, or "" when missing."""
        return (self.get("Call-ID") or "").strip()

    @property
    def cseq(self) -> CSeq:
        """The parsed CSeq header (raises SipParseError when missing or bad)."""
        return CSeq.parse(self.get("CSeq") or "")

    @property
    def vias(self) -> list[Via]:
        """Every Via, top first."""
        return [Via.parse(v) for v in self.get_all("Via")]

    def start_line(self) -> str:
        """The first line (overridden)."""
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialize, writing Content-Length from the body."""
        lines = [self.start_line()]
        for n, v in self.headers:
            if n.lower() != "content-length":
                lines.append(f"{n}: {v}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass
class SipRequest(SipMessage):
    """A SIP request."""

    method: str = ""
    uri: str = ""

    def start_line(self) -> str:
        """`METHOD uri SIP/2.0`."""
        return f"{self.method} {self.uri} SIP/2.0"


@dataclass
class SipResponse(SipMessage):
    """A SIP response."""

    status: int = 200
    reason: str = "OK"

    def start_line(self) -> str:
        """`SIP/2.0 code reason`."""
        return f"SIP/2.0 {self.status} {self.reason}"


@dataclass(frozen=True)
class CSeq:
    """A parsed CSeq header."""

    number: int
    method: str

    @classmethod
    def parse(cls, value: str) -> CSeq:
        """Parse `123 INVITE` (raises SipParseError)."""
        parts = value.split()
        if len(parts) != 2 or not parts[0].isdigit() or not _TOKEN.match(parts[1]):
            raise SipParseError(f"bad CSeq: {value[:60]!r}")
        number = int(parts[0])
        if number >= 2**31:
            raise SipParseError("CSeq number out of range")
        return cls(number, parts[1].upper())

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def _parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        params[name.strip().lower()] = value.strip() if sep else None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def split_hostport(text: str) -> tuple[str, int | None]:
    """Split `host[:port]`, `[v6]:port` (raises SipParseError)."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"bad host: {text[:60]!r}")
        host, rest = text[1:end], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise SipParseError(f"bad host: {text[:60]!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = ""
    if not host or any(c.isspace() for c in host):
        raise SipParseError(f"bad host: {text[:60]!r}")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SipParseError(f"bad port: {text[:60]!r}")
    return host, int(port_text)


def format_hostport(host: str, port: int | None) -> str:
    """`host[:port]`, bracketing IPv6 literals."""
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return h if port is None else f"{h}:{port}"


@dataclass
class Via:
    """One Via entry: `SIP/2.0/UDP host:port;branch=...;received=...;rport=...`."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> Via:
        """Parse one Via value (not comma-joined; raises SipParseError)."""
        proto, _, rest = value.strip().partition(" ")
        parts = [p.strip() for p in proto.split("/")]
        rest = rest.strip()
        if len(parts) != 3 or parts[0].upper() != "SIP" or not rest:
            # tolerate "SIP / 2.0 / UDP host" spacing
            m = re.match(r"^\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)\s+(.*)$", value)
            if not m:
                raise SipParseError(f"bad Via: {value[:60]!r}")
            transport, rest = m.group(1), m.group(2)
        else:
            transport = parts[2]
        sent_by, _, param_text = rest.partition(";")
        host, port = split_hostport(sent_by)
        return cls(transport.upper(), host, port, _parse_params(param_text))

    @property
    def branch(self) -> str:
        """The branch parameter ("" when absent)."""
        return self.params.get("branch") or ""

    @property
    def received(self) -> str | None:
        """The received parameter."""
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The filled rport value (None when absent or requested but empty)."""
        value = self.params.get("rport")
        return int(value) if value and value.isdigit() else None

    @property
    def wants_rport(self) -> bool:
        """True when the rport parameter is present (RFC 3581)."""
        return "rport" in self.params

    def __str__(self) -> str:
        return (
            f"SIP/2.0/{self.transport} {format_hostport(self.host, self.port)}"
            f"{_format_params(self.params)}"
        )


@dataclass
class SipUri:
    """A sip:/sips: URI (`user@host:port;params`); the headers part is kept raw."""

    scheme: str
    user: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Parse a SIP URI (raises SipParseError)."""
        text = text.strip()
        scheme, sep, rest = text.partition(":")
        if not sep or scheme.lower() not in ("sip", "sips", "tel"):
            raise SipParseError(f"bad URI: {text[:60]!r}")
        rest, _, headers = rest.partition("?")
        user = ""
        if "@" in rest:
            user, _, rest = rest.rpartition("@")
        hostport, _, param_text = rest.partition(";")
        if scheme.lower() == "tel":
            return cls("tel", "", hostport, None, _parse_params(param_text), headers)
        host, port = split_hostport(hostport)
        return cls(scheme.lower(), user, host, port, _parse_params(param_text), headers)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        hdrs = f"?{self.headers}" if self.headers else ""
        if self.scheme == "tel":
            return f"tel:{self.host}{_format_params(self.params)}{hdrs}"
        return (
            f"{self.scheme}:{user}{format_hostport(self.host, self.port)}"
            f"{_format_params(self.params)}{hdrs}"
        )


@dataclass
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI, header parameters."""

    uri: str
    display: str = ""
    params: dict[str, str | None] = field(default_factory=dict)
    bracketed: bool = True

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        """Parse `"Name" <uri>;tag=x` or a bare `uri;tag=x` (raises SipParseError)."""
        value = value.strip()
        lt = _find_unquoted(value, "<")
        if lt >= 0:
            gt = value.find(">", lt)
            if gt < 0:
                raise SipParseError(f"unterminated <uri>: {value[:60]!r}")
            display = value[:lt].strip()
            if display.startswith('"') and display.endswith('"') and len(display) >= 2:
                display = display[1:-1]
            uri = value[lt + 1 : gt].strip()
            params = _parse_params(value[gt + 1 :])
            bracketed = True
        else:
            uri, _, param_text = value.partition(";")
            uri = uri.strip()
            display, params, bracketed = "", _parse_params(param_text), False
        if not uri or ":" not in uri or any(c in uri for c in ' \t"<>'):
            raise SipParseError(f"bad name-addr: {value[:60]!r}")
        return cls(uri, display, params, bracketed)

    @property
    def tag(self) -> str:
        """The tag parameter ("" when absent)."""
        return self.params.get("tag") or ""

    def __str__(self) -> str:
        display = f'"{self.display}" ' if self.display else ""
        return f"{display}<{self.uri}>{_format_params(self.params)}"


def _find_unquoted(text: str, char: str) -> int:
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == char and not quoted:
            return i
    return -1


def tag_of(value: str | None) -> str:
    """The tag parameter of a From/To value, "" when absent or unparsable."""
    if not value:
        return ""
    try:
        return NameAddr.parse(value).tag
    except SipParseError:
        return ""


def new_tag() -> str:
    """A fresh random tag."""
    return secrets.token_hex(6)


def new_branch() -> str:
    """A fresh RFC 3261 branch (with the magic cookie)."""
    return BRANCH_COOKIE + secrets.token_hex(8)


def _unfold(lines: Iterable[str]) -> Iterator[str]:
    current: str | None = None
    for line in lines:
        if line[:1] in (" ", "\t") and current is not None:
            current += " " + line.strip()
            continue
        if current is not None:
            yield current
        current = line
    if current is not None:
        yield current


def parse_message(data: bytes, *, stream: bool = False) -> SipRequest | SipResponse:
    """Parse one SIP message.

    With `stream=False` (UDP) a missing Content-Length means "the rest of the datagram";
    with `stream=True` (TCP framing already cut the message) Content-Length is required."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError("message too large")
    data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    sep_len = 4
    if end < 0:
        end = data.find(b"\n\n")
        sep_len = 2
    truncated = end < 0
    head_bytes = data if truncated else data[:end]
    body = b"" if truncated else data[end + sep_len :]
    head = head_bytes.decode("utf-8", errors="replace")
    raw_lines = head.replace("\r\n", "\n").split("\n")
    if truncated:
        raw_lines = raw_lines[:-1]  # the last line may be cut in the middle
    if not raw_lines or not raw_lines[0].strip():
        raise SipParseError("empty message")
    first = raw_lines[0].strip()
    msg: SipRequest | SipResponse
    if m := _STATUS_LINE.match(first):
        msg = SipResponse(status=int(m.group(1)), reason=m.group(2).strip())
    elif m := _REQUEST_LINE.match(first):
        msg = SipRequest(method=m.group(1).upper(), uri=m.group(2))
    else:
        raise SipParseError(f"bad start line: {first[:60]!r}")
    errors: list[str] = []
    if "\ufffd" in first:
        errors.append("start line is not UTF-8")
    if len(head_bytes) > MAX_HEAD_BYTES:
        errors.append("headers too large")
    for line in _unfold(raw_lines[1:]):
        if len(line) > MAX_HEADER_LINE_BYTES:
            errors.append("header line too long")
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _TOKEN.match(name):
            errors.append(f"bad header line: {line[:40]!r}")
            continue
        if len(msg.headers) >= MAX_HEADERS:
            errors.append("too many headers")
            break
        canon = canonical_name(name)
        value = value.strip()
        if canon.lower() in _LIST_HEADERS and value != "*":
            for item in split_list(value):
                msg.headers.append((canon, item))
        else:
            msg.headers.append((canon, value))
    if truncated:
        errors.append("truncated message (no end of headers)")
    length_values = msg.get_all("Content-Length")
    length: int | None = None
    if length_values:
        text = length_values[0].strip()
        if not text.isdigit() or len(text) > 9 or any(v.strip() != text for v in length_values):
            errors.append(f"bad Content-Length: {text[:20]!r}")
        else:
            length = int(text)
            if length > MAX_BODY_BYTES:
                errors.append("Content-Length too large")
            elif length > len(body):
                errors.append("body shorter than Content-Length")
            else:
                body = body[:length]
    elif stream:
        errors.append("missing Content-Length")
    msg.body = body
    errors += _missing_mandatory(msg)
    if errors:
        raise SipParseError(errors[0], msg)
    return msg


def _missing_mandatory(msg: SipMessage) -> list[str]:
    errors = [f"missing {h}" for h in ("Via", "Call-ID", "CSeq", "From", "To") if not msg.get(h)]
    if errors:
        return errors
    try:
        cseq = msg.cseq
        vias = msg.vias
        NameAddr.parse(msg.get("From") or "")
        NameAddr.parse(msg.get("To") or "")
    except SipParseError as exc:
        return [exc.reason]
    if isinstance(msg, SipRequest) and cseq.method != msg.method:
        return ["CSeq method does not match the request method"]
    if not vias:
        return ["missing Via"]
    return []


def response_to(
    request: SipRequest,
    status: int,
    reason: str,
    *,
    to_tag: str = "",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipResponse:
    """A response copying Via, From, To (adding `to_tag` if it has none), Call-ID, CSeq
    and Record-Route (for 1xx/2xx) from `request` (RFC 3261 §8.2.6)."""
    resp = SipResponse(status=status, reason=reason)
    for name, value in request.headers:
        lower = name.lower()
        if lower == "via" or lower in ("from", "call-id", "cseq"):
            resp.headers.append((name, value))
        elif lower == "to":
            if to_tag and not tag_of(value):
                value = f"{value};tag={to_tag}"
            resp.headers.append((name, value))
        elif lower == "record-route" and 100 < status < 300:
            resp.headers.append((name, value))
    resp.headers.extend(headers)
    resp.body = body
    return resp
