"""Opus decode and encode through PyAV's libopus, 48 kHz mono PCM, 20 ms frames.

RTP Opus (RFC 7587) always uses a 48 kHz clock and signals two channels; a
stereo stream is downmixed to mono by libopus itself.

Packet-loss concealment: FFmpeg's decode API has no "missing packet" call (an
empty packet means end of stream), so `conceal()` feeds libopus a packet that
is only a TOC byte (the previous packet's configuration, code 0, one frame of
length 0). libopus treats a zero-length frame as lost and runs its real PLC
(RFC 6716 §4.4 / opus_decode_frame with len <= 1), producing one frame of
concealment for the previous packet's frame duration.
"""

from __future__ import annotations

import fractions
from typing import cast

import numpy as np
import numpy.typing as npt
from av import AudioFrame, CodecContext, Packet
from av.audio.codeccontext import AudioCodecContext

__all__ = ["OPUS_FRAME_SAMPLES", "OPUS_RATE", "OpusDecoder", "OpusEncoder", "OpusError"]

OPUS_RATE = 48000
OPUS_FRAME_SAMPLES = 960  # 20 ms at 48 kHz
_TIME_BASE = fractions.Fraction(1, OPUS_RATE)


class OpusError(ValueError):
    """libopus rejected a packet or a frame."""


class OpusDecoder:
    """Decode Opus packets to mono int16 PCM at 48 kHz."""

    def __init__(self, channels: int = 1) -> None:
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        self.channels = channels
        self._codec = self._open()
        self._toc: int | None = None

    def _open(self) -> AudioCodecContext:
        codec = cast(AudioCodecContext, CodecContext.create("libopus", "r"))
        codec.format = "s16"
        codec.layout = "mono" if self.channels == 1 else "stereo"
        codec.sample_rate = OPUS_RATE
        return codec

    def _run(self, packet: bytes) -> npt.NDArray[np.int16]:
        try:
            frames = self._codec.decode(Packet(packet))
        except Exception as exc:  # PyAV raises av.error.* (InvalidDataError, ...)
            self._codec = self._open()  # a failed decode can leave the context unusable
            raise OpusError(f"cannot decode Opus packet of {len(packet)} bytes: {exc}") from exc
        if not frames:
            return np.zeros(0, np.int16)
        pcm = [f.to_ndarray().reshape(-1) for f in frames]
        out = pcm[0] if len(pcm) == 1 else np.concatenate(pcm)
        return out.astype(np.int16, copy=False)

    def decode(self, payload: bytes) -> npt.NDArray[np.int16]:
        """Decode one RTP payload (one Opus packet); raise `OpusError` if it is invalid."""
        if not payload:
            raise OpusError("empty Opus packet")
        out = self._run(payload)
        self._toc = payload[0] & 0xFC
        return out

    def conceal(self) -> npt.NDArray[np.int16]:
        """One frame of libopus packet-loss concealment (20 ms of silence before any packet)."""
        if self._toc is None:
            return np.zeros(OPUS_FRAME_SAMPLES * self.channels, np.int16)
        return self._run(bytes((self._toc,)))

    def reset(self) -> None:
        """Start a fresh decoder (new stream)."""
        self._codec = self._open()
        self._toc = None


class OpusEncoder:
    """Encode 20 ms frames of mono int16 48 kHz PCM to Opus packets (VoIP application)."""

    def __init__(self, bitrate: int = 32000, application: str = "voip") -> None:
        self.bitrate = bitrate
        self._application = application
        self._codec = self._open()
        self._pts = 0

    def _open(self) -> AudioCodecContext:
        codec = cast(AudioCodecContext, CodecContext.create("libopus", "w"))
        codec.bit_rate = self.bitrate
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = OPUS_RATE
        codec.time_base = _TIME_BASE
        codec.options = {"application": self._application}
        return codec

    def encode(self, pcm48k_20ms: npt.NDArray[np.int16]) -> bytes:
        """Encode exactly 960 samples (20 ms at 48 kHz) into one Opus packet."""
        pcm = np.ascontiguousarray(pcm48k_20ms, dtype=np.int16).reshape(1, -1)
        if pcm.shape[1] != OPUS_FRAME_SAMPLES:
            raise OpusError(f"Opus encoder needs {OPUS_FRAME_SAMPLES} samples, got {pcm.shape[1]}")
        frame = AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = OPUS_RATE
        frame.pts = self._pts
        self._pts += OPUS_FRAME_SAMPLES
        packets = self._codec.encode(frame)
        if len(packets) != 1:
            raise OpusError(f"libopus returned {len(packets)} packets for one 20 ms frame")
        return bytes(packets[0])
