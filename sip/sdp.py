"""SDP (RFC 4566) parse/build and the offer/answer rules (RFC 3264) for one audio stream."""

from __future__ import annotations

from dataclasses import dataclass, field

from sip.api import Codec, Direction, MediaAnswer, MediaOffer, SipReject, SupportedCodecs

DIRECTIONS: tuple[Direction, ...] = ("sendrecv", "sendonly", "recvonly", "inactive")

# RFC 3551 static payload types that may appear without an rtpmap line.
STATIC_PAYLOADS: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    18: ("G729", 8000, 1),
}

RTP_PROFILES = frozenset({"RTP/AVP", "RTP/AVPF"})
MAX_SDP_BYTES = 16384


class SdpError(ValueError):
    """The body is not SDP we can read (the UAS answers 400 or 488)."""


class NoCommonCodec(SipReject):
    """Nothing in the offer is a codec we support: answer 488."""

    def __init__(self, detail: str = "no common codec") -> None:
        super().__init__(488, "Not Acceptable Here")
        self.detail = detail


@dataclass
class MediaDescription:
    """One m= section."""

    media: str
    port: int
    proto: str
    formats: list[str]
    connection: str = ""
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    def attribute(self, name: str) -> str | None:
        """The value of the first a=name line (empty string for flags), or None."""
        for key, value in self.attributes:
            if key == name:
                return value if value is not None else ""
        return None


@dataclass
class SessionDescription:
    """A parsed SDP body: session-level fields and media sections in order."""

    origin: str = ""
    session_name: str = "-"
    connection: str = ""
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    def audio_index(self) -> int | None:
        """Index of the first usable audio stream (port != 0, RTP profile)."""
        for i, m in enumerate(self.media):
            if m.media == "audio" and m.port != 0 and m.proto.upper() in RTP_PROFILES:
                return i
        return None


def _connection_address(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad c= line: {value!r}")
    return parts[2].split("/")[0]


def parse_sdp(body: bytes | str) -> SessionDescription:
    """Parse an SDP body; tolerant of LF line ends and unknown lines, strict on m=/c=."""
    if isinstance(body, bytes):
        if len(body) > MAX_SDP_BYTES:
            raise SdpError("SDP too large")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SdpError("SDP is not UTF-8") from exc
    else:
        text = body
    sd = SessionDescription()
    seen_version = False
    current: MediaDescription | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"bad SDP line: {line[:40]!r}")
        kind, value = line[0], line[2:]
        if kind == "v":
            if value.strip() != "0":
                raise SdpError(f"unsupported SDP version {value!r}")
            seen_version = True
        elif kind == "o" and current is None:
            sd.origin = value
        elif kind == "s" and current is None:
            sd.session_name = value
        elif kind == "c":
            address = _connection_address(value)
            if current is None:
                sd.connection = address
            else:
                current.connection = address
        elif kind == "m":
            parts = value.split()
            if len(parts) < 4:
                raise SdpError(f"bad m= line: {value!r}")
            try:
                port = int(parts[1].split("/")[0])
            except ValueError as exc:
                raise SdpError(f"bad m= port: {parts[1]!r}") from exc
            if not 0 <= port <= 65535:
                raise SdpError(f"bad m= port: {port}")
            current = MediaDescription(parts[0].lower(), port, parts[2], parts[3:])
            sd.media.append(current)
        elif kind == "a":
            name, sep, attr_value = value.partition(":")
            entry = (name.strip(), attr_value.strip() if sep else None)
            (sd.attributes if current is None else current.attributes).append(entry)
    if not seen_version:
        raise SdpError("missing v= line")
    return sd


def _direction(attrs: list[tuple[str, str | None]]) -> Direction | None:
    for name, _ in attrs:
        for d in DIRECTIONS:
            if name == d:
                return d
    return None


def media_offer(sd: SessionDescription) -> MediaOffer:
    """The first usable audio stream of `sd` as a `MediaOffer`."""
    index = sd.audio_index()
    if index is None:
        raise NoCommonCodec("no RTP audio stream in offer")
    m = sd.media[index]
    address = m.connection or sd.connection
    if not address:
        raise SdpError("no c= address for the audio stream")
    rtpmaps: dict[int, tuple[str, int, int]] = {}
    fmtps: dict[int, str] = {}
    ptime = 20
    for name, value in m.attributes:
        if name == "rtpmap" and value:
            pt_text, _, enc = value.partition(" ")
            parts = enc.strip().split("/")
            try:
                rate = int(parts[1]) if len(parts) > 1 else 8000
                channels = int(parts[2]) if len(parts) > 2 and parts[2] else 1
                rtpmaps[int(pt_text)] = (parts[0], rate, channels)
            except ValueError:
                continue  # one bad rtpmap spoils only that format
        elif name == "fmtp" and value:
            pt_text, _, params = value.partition(" ")
            if pt_text.isdigit():
                fmtps[int(pt_text)] = params.strip()
        elif name == "ptime" and value:
            try:
                ptime = max(10, min(120, int(float(value))))
            except (ValueError, OverflowError):
                pass
    codecs: list[Codec] = []
    for fmt in m.formats:
        if not fmt.isdigit():
            continue
        pt = int(fmt)
        desc = rtpmaps.get(pt) or STATIC_PAYLOADS.get(pt)
        if desc is None:
            continue
        name, rate, channels = desc
        codecs.append(Codec(name, pt, rate, channels, fmtps.get(pt, "")))
    direction = _direction(m.attributes) or _direction(sd.attributes) or "sendrecv"
    if address in ("0.0.0.0", "::") and direction == "sendrecv":
        direction = "sendonly"  # RFC 2543 hold: the caller does not want our audio
    return MediaOffer(address, m.port, tuple(codecs), direction, ptime)


def parse_offer(body: bytes | str) -> MediaOffer:
    """Parse an SDP offer body into the caller's audio stream (raises SdpError/NoCommonCodec)."""
    return media_offer(parse_sdp(body))


def _same_format(a: Codec, b: Codec) -> bool:
    return (
        a.name.lower() == b.name.lower()
        and a.clock_rate == b.clock_rate
        and a.payload_type == b.payload_type
    )


def negotiate(
    offer: MediaOffer,
    supported: SupportedCodecs,
    prefer: Codec | None = None,
) -> tuple[Codec, Codec | None]:
    """The codec to answer `offer` with, plus telephone-event when it is offered at that
    codec's clock rate (RFC 4733 §2.1; otherwise the answer carries no DTMF).

    `supported` holds `(encoding name lower-cased, clock rate, channels)` of what the
    application can carry; the first offered codec in it wins (the caller's order decides).
    `prefer`, the codec in use (re-INVITE), is kept while the offer still contains it.
    Used alike for the initial INVITE and for re-INVITEs. Raises `NoCommonCodec` (a
    `SipReject` with status 488) when nothing matches."""
    chosen: Codec | None = None
    if prefer is not None:
        chosen = next((c for c in offer.codecs if _same_format(c, prefer)), None)
    if chosen is None:
        chosen = next(
            (c for c in offer.codecs if (c.name.lower(), c.clock_rate, c.channels) in supported),
            None,
        )
    if chosen is None:
        names = ", ".join(f"{c.name}/{c.clock_rate}" for c in offer.codecs) or "none"
        raise NoCommonCodec(f"no common codec (offered: {names})")
    dtmf = next(
        (
            c
            for c in offer.codecs
            if c.name.lower() == "telephone-event" and c.clock_rate == chosen.clock_rate
        ),
        None,
    )
    return chosen, dtmf


def negotiate_direction(offered: Direction, wanted: Direction = "sendrecv") -> Direction:
    """RFC 3264 §6.1: the answer's direction, given the offer's and what we would like."""
    we_send = wanted in ("sendrecv", "sendonly") and offered in ("sendrecv", "recvonly")
    we_recv = wanted in ("sendrecv", "recvonly") and offered in ("sendrecv", "sendonly")
    if we_send and we_recv:
        return "sendrecv"
    if we_send:
        return "sendonly"
    if we_recv:
        return "recvonly"
    return "inactive"


def _ip_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _rtpmap(codec: Codec) -> str:
    suffix = f"/{codec.channels}" if codec.channels != 1 else ""
    return f"a=rtpmap:{codec.payload_type} {codec.name}/{codec.clock_rate}{suffix}"


def build_answer(
    answer: MediaAnswer,
    session_id: int,
    session_version: int = 1,
    offer: SessionDescription | None = None,
    offer_direction: Direction | None = None,
    ptime_ms: int = 20,
) -> bytes:
    """The SDP answer for `answer`.

    With `offer`, every other m= line of the offer is mirrored and rejected (port 0), as
    RFC 3264 §6 requires, and the audio stream keeps the offer's transport (RTP/AVP or
    RTP/AVPF). With `offer_direction`, the direction is mirrored (§6.1)."""
    direction = answer.direction
    if offer_direction is not None:
        direction = negotiate_direction(offer_direction, answer.direction)
    ip = _ip_type(answer.address)
    lines = [
        "v=0",
        f"o=voicebridge {session_id} {session_version} IN {ip} {answer.address}",
        "s=voicebridge",
        f"c=IN {ip} {answer.address}",
        "t=0 0",
    ]
    audio = [_rtpmap(answer.codec)]
    if answer.codec.fmtp:
        audio.append(f"a=fmtp:{answer.codec.payload_type} {answer.codec.fmtp}")
    formats = [str(answer.codec.payload_type)]
    if answer.dtmf is not None:
        formats.append(str(answer.dtmf.payload_type))
        audio.append(_rtpmap(answer.dtmf))
        audio.append(f"a=fmtp:{answer.dtmf.payload_type} {answer.dtmf.fmtp or '0-16'}")
    audio_index = offer.audio_index() if offer is not None else None
    proto = "RTP/AVP"
    if offer is not None and audio_index is not None:
        proto = offer.media[audio_index].proto
    audio_section = [
        f"m=audio {answer.port} {proto} {' '.join(formats)}",
        *audio,
        f"a=ptime:{ptime_ms}",
        f"a={direction}",
    ]
    if offer is None or audio_index is None:
        lines += audio_section
    else:
        for i, m in enumerate(offer.media):
            if i == audio_index:
                lines += audio_section
            else:
                lines.append(f"m={m.media} 0 {m.proto} {' '.join(m.formats[:1]) or '0'}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
