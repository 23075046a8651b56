"""The one codec registry: every RTP audio codec is one class registered here.

Shaped like aiortc's `codecs/`: a codec describes its payload format (as SDP names it)
and makes a stateful `Decoder` (payload to PCM, plus loss concealment) and `Encoder`
(one 20 ms PCM frame to payload). Doors look codecs up by registry name (`codec_for`)
or by what SDP negotiated (`codec_for_rtp`); `supported()` is what a door may offer.

A codec's PCM rate may differ from its RTP clock (G.722: clock 8000, PCM 16 kHz,
RFC 3551 §4.5.2), so both are attributes and `frame_samples` counts RTP clock units.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from media.opus import OPUS_RATE, OpusDecoder, OpusEncoder

__all__ = [
    "FRAME_MS",
    "G711",
    "AudioCodec",
    "Decoder",
    "Encoder",
    "Opus",
    "Pcm",
    "RtpCodec",
    "UnsupportedCodec",
    "codec_for",
    "codec_for_rtp",
    "register",
    "supported",
    "unregister",
]

Pcm = npt.NDArray[np.int16]
FRAME_MS = 20
"""Every codec here works in 20 ms frames."""


class UnsupportedCodec(ValueError):
    """No codec of that name (or RTP encoding/clock/channels) is registered."""


class Decoder(Protocol):
    """Payloads of one stream to mono int16 PCM at the codec's `pcm_rate`; remembers its
    last frame so that it can conceal a missing one."""

    def decode(self, payload: bytes) -> Pcm:
        """Decode one payload; raise `ValueError` if it cannot be decoded."""
        ...

    def conceal(self) -> Pcm | None:
        """One frame standing in for a missing one (None: nothing to repeat, play silence)."""
        ...


class Encoder(Protocol):
    """20 ms frames of mono int16 PCM at the codec's `pcm_rate` to payloads."""

    def encode(self, frame: Pcm) -> bytes:
        """Encode one 20 ms frame."""
        ...


class AudioCodec(Protocol):
    """One RTP audio payload format and the means to decode and encode it."""

    name: str
    """Registry key, lower case (e.g. "pcmu")."""
    encoding_name: str
    """As SDP's rtpmap spells it (e.g. "PCMU", "opus")."""
    clock_rate: int
    """RTP timestamp rate."""
    channels: int
    """Channels as SDP states them (opus: 2)."""
    payload_type: int
    """Default payload type (static, or a dynamic one to offer)."""
    pcm_rate: int
    """Rate of the PCM it decodes to and encodes from."""

    @property
    def frame_samples(self) -> int:
        """RTP timestamp units per 20 ms frame."""
        ...

    def decoder(self) -> Decoder:
        """A fresh decoder for one stream."""
        ...

    def encoder(self) -> Encoder:
        """A fresh encoder for one stream."""
        ...


class RtpCodec:
    """Convenience base: class attributes describe the format; `frame_samples` follows."""

    name: str
    encoding_name: str
    clock_rate: int
    channels: int = 1
    payload_type: int
    pcm_rate: int

    @property
    def frame_samples(self) -> int:
        """RTP timestamp units per 20 ms frame."""
        return self.clock_rate * FRAME_MS // 1000

    def decoder(self) -> Decoder:
        """A fresh decoder for one stream."""
        raise NotImplementedError

    def encoder(self) -> Encoder:
        """A fresh encoder for one stream."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<codec {self.encoding_name}/{self.clock_rate}/{self.channels}>"


# ------------------------------------------------------------------- G.711


class _TableDecode(Protocol):
    def __call__(self, data: bytes, /) -> Pcm: ...


class _TableEncode(Protocol):
    def __call__(self, pcm: Pcm, /) -> bytes: ...


class _G711Decoder:
    """G.711 decode; concealment repeats the last frame, halving it each time."""

    def __init__(self, decode: _TableDecode) -> None:
        self._decode = decode
        self._last: Pcm | None = None

    def decode(self, payload: bytes) -> Pcm:
        pcm = self._decode(payload)
        self._last = pcm
        return pcm

    def conceal(self) -> Pcm | None:
        if self._last is None:
            return None
        self._last = (self._last >> 1).astype(np.int16)
        return self._last


class _G711Encoder:
    def __init__(self, encode: _TableEncode) -> None:
        self._encode = encode

    def encode(self, frame: Pcm) -> bytes:
        return self._encode(frame)


class G711(RtpCodec):
    """ITU-T G.711 at 8 kHz: μ-law (PCMU, static PT 0) or A-law (PCMA, static PT 8)."""

    clock_rate = pcm_rate = 8000

    def __init__(self, alaw: bool) -> None:
        self.name, self.encoding_name = ("pcma", "PCMA") if alaw else ("pcmu", "PCMU")
        self.payload_type = 8 if alaw else 0
        self._decode = alaw_decode if alaw else ulaw_decode
        self._encode = alaw_encode if alaw else ulaw_encode

    def decoder(self) -> Decoder:
        return _G711Decoder(self._decode)

    def encoder(self) -> Encoder:
        return _G711Encoder(self._encode)


# -------------------------------------------------------------------- Opus


class Opus(RtpCodec):
    """Opus (RFC 7587): 48 kHz clock, signalled as 2 channels, decoded to mono; libopus PLC."""

    name, encoding_name, clock_rate, channels = "opus", "opus", OPUS_RATE, 2
    payload_type, pcm_rate = 111, OPUS_RATE

    def decoder(self) -> Decoder:
        return OpusDecoder(channels=1)

    def encoder(self) -> Encoder:
        return OpusEncoder()


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, AudioCodec] = {}


def register(codec: AudioCodec) -> None:
    """Add (or replace) a codec under `codec.name`."""
    _REGISTRY[codec.name.lower()] = codec


def unregister(name: str) -> None:
    """Remove a codec (tests); unknown names are ignored."""
    _REGISTRY.pop(name.lower(), None)


def codec_for(name: str) -> AudioCodec:
    """The codec registered as `name` (case-insensitive); raises `UnsupportedCodec`."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise UnsupportedCodec(f"no codec named {name!r}") from None


def codec_for_rtp(encoding_name: str, clock_rate: int, channels: int) -> AudioCodec:
    """The codec for an SDP rtpmap (encoding name case-insensitive); raises `UnsupportedCodec`."""
    wanted = (encoding_name.lower(), clock_rate, channels)
    for codec in _REGISTRY.values():
        if (codec.encoding_name.lower(), codec.clock_rate, codec.channels) == wanted:
            return codec
    raise UnsupportedCodec(f"no codec for {encoding_name}/{clock_rate}/{channels}")


def supported() -> tuple[AudioCodec, ...]:
    """Every registered codec, in registration order."""
    return tuple(_REGISTRY.values())


for _codec in (G711(alaw=False), G711(alaw=True), Opus()):
    register(_codec)
