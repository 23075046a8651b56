"""WAV (RIFF) read and write for 16-bit PCM, mono out.

A small RIFF walker rather than the stdlib `wave` module, because TTS servers and
ffmpeg pipes send things `wave` rejects on Python 3.11: WAVE_FORMAT_EXTENSIBLE
headers and streamed files whose size fields are 0 or 0xFFFFFFFF.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

__all__ = ["read_wav", "write_wav"]

_PCM = 0x0001
_EXTENSIBLE = 0xFFFE
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


def read_wav(data: bytes) -> tuple[npt.NDArray[np.int16], int]:
    """Parse a 16-bit PCM WAV file; return (mono int16 samples, sample rate).

    Multi-channel audio is downmixed by averaging. Anything that is not 16-bit
    integer PCM raises `ValueError` naming what was found.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file: missing RIFF/WAVE header")
    pos = 12
    fmt: tuple[int, int] | None = None
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(data[body : body + size])
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("WAV data chunk before fmt chunk")
            end = len(data) if size in _UNKNOWN_SIZES else min(len(data), body + size)
            return _samples(data[body:end], *fmt)
        pos = body + size + (size & 1)
    raise ValueError("WAV file has no data chunk" if fmt else "WAV file has no fmt chunk")


def _parse_fmt(body: bytes) -> tuple[int, int]:
    if len(body) < 16:
        raise ValueError("WAV fmt chunk too short")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE and len(body) >= 26:
        (tag,) = struct.unpack_from("<H", body, 24)  # first two bytes of the SubFormat GUID
    if tag != _PCM:
        raise ValueError(f"unsupported WAV encoding (format tag {tag:#06x}); need integer PCM")
    if bits != 16:
        raise ValueError(f"unsupported WAV sample width {bits} bits; need 16-bit PCM")
    if channels < 1 or rate < 1:
        raise ValueError(f"invalid WAV header: {channels} channels at {rate} Hz")
    return channels, rate


def _samples(raw: bytes, channels: int, rate: int) -> tuple[npt.NDArray[np.int16], int]:
    frame_bytes = channels * 2
    usable = len(raw) - len(raw) % frame_bytes
    pcm = np.frombuffer(raw[:usable], dtype="<i2")
    if channels == 1:
        return pcm.astype(np.int16), rate
    mixed = pcm.reshape(-1, channels).astype(np.int32).sum(axis=1) // channels
    return mixed.astype(np.int16), rate


def write_wav(pcm: npt.NDArray[np.int16], sample_rate: int) -> bytes:
    """Mono 16-bit PCM WAV file bytes."""
    samples = np.asarray(pcm, dtype="<i2").reshape(-1).tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(samples),
        b"WAVE",
        b"fmt ",
        16,
        _PCM,
        1,
        sample_rate,
        sample_rate * 2,
        2,
        16,
        b"data",
        len(samples),
    )
    return header + samples
