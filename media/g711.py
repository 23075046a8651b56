"""ITU-T G.711 μ-law and A-law, by numpy lookup tables.

The tables are built once at import from the reference algorithm (the one in
Sun's g711.c and CPython's audioop), so decode and encode are a single fancy
index each: no per-sample Python work.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["alaw_decode", "alaw_encode", "ulaw_decode", "ulaw_encode"]

_BIAS = 0x84
_ULAW_CLIP = 8159  # 14-bit magnitude clip


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & 0x0F) << 3) + _BIAS
    t <<= (u & 0x70) >> 4
    return np.where(u & 0x80, _BIAS - t, t - _BIAS).astype(np.int16)


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _segment(magnitude: npt.NDArray[np.int32], seg_end: list[int]) -> npt.NDArray[np.int32]:
    """Index of the first segment end >= magnitude (8 when beyond the last)."""
    return np.searchsorted(np.array(seg_end, np.int32), magnitude, side="left").astype(np.int32)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14-bit
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_BIAS >> 2)
    seg = _segment(mag, [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0x0F))
    codes = (uval ^ mask).astype(np.uint8)
    return np.roll(codes, -32768)  # index by the uint16 view of the sample


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = _segment(mag, [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    aval = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> shift) & 0x0F))
    codes = (aval ^ mask).astype(np.uint8)
    return np.roll(codes, -32768)


_ULAW_DEC = _build_ulaw_decode()
_ALAW_DEC = _build_alaw_decode()
_ULAW_ENC = _build_ulaw_encode()
_ALAW_ENC = _build_alaw_encode()


def _as_index(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint16]:
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        raise TypeError(f"G.711 encode expects int16 PCM, got {arr.dtype}")
    return arr.reshape(-1).view(np.uint16)


def ulaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """μ-law bytes to int16 PCM (one sample per byte)."""
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)]


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """int16 PCM to μ-law bytes."""
    return _ULAW_ENC[_as_index(pcm)].tobytes()


def alaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """A-law bytes to int16 PCM (one sample per byte)."""
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """int16 PCM to A-law bytes."""
    return _ALAW_ENC[_as_index(pcm)].tobytes()
