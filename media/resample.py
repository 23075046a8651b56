"""Sample-rate conversion with soxr: a streaming resampler per direction and a one-shot helper.

soxr's constant-rate engines (QQ excepted) process in large blocks and, fed 20 ms
chunks, emit output only every 60–100 ms; QQ emits every frame but is a cubic
interpolator with no anti-alias filter (aliases at -6 dB). soxr's variable-rate
engine (`vr=True`) emits output for every 20 ms chunk after the first and keeps
aliasing near -95 dB, at a fixed delay of 10–30 ms depending on the rate pair
(figures and the command that measures them are in docs/media.md).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

__all__ = ["StreamResampler", "resample"]

_EMPTY = np.zeros(0, np.int16)


class StreamResampler:
    """Resample a stream of int16 mono chunks from `in_rate` to `out_rate`.

    Each `process` call returns whatever output is ready: after a warm-up of at
    most two 20 ms chunks (the filter delay), exactly one frame's worth (e.g. 320
    samples at 16 kHz) per chunk.
    Identity when the rates are equal.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = self._new_stream()

    def _new_stream(self) -> soxr.ResampleStream | None:
        if self.in_rate == self.out_rate:
            return None
        return soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="int16", vr=True)

    def process(self, pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        """Feed one chunk; return the output that is ready."""
        if self._stream is None:
            return np.asarray(pcm, dtype=np.int16)
        return self._stream.resample_chunk(np.ascontiguousarray(pcm, dtype=np.int16))

    def flush(self) -> npt.NDArray[np.int16]:
        """Return the samples still held in the filter and reset for a new stream."""
        if self._stream is None:
            return _EMPTY.copy()
        tail = self._stream.resample_chunk(_EMPTY, last=True)
        self._stream = self._new_stream()
        return tail

    def reset(self) -> None:
        """Drop buffered state (e.g. at a stream discontinuity)."""
        self._stream = self._new_stream()


def resample(pcm: npt.NDArray[np.int16], in_rate: int, out_rate: int) -> npt.NDArray[np.int16]:
    """Resample a whole int16 buffer (soxr HQ, no delay: output length = n * out/in)."""
    arr = np.ascontiguousarray(pcm, dtype=np.int16)
    if in_rate == out_rate or arr.size == 0:
        return arr.copy()
    return soxr.resample(arr, in_rate, out_rate, quality="HQ")
