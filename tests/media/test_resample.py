"""Streaming and one-shot resampling: level, aliasing, per-frame output, flush."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from media.resample import StreamResampler, resample

PAIRS = [
    (8000, 16000),
    (48000, 16000),
    (16000, 8000),
    (22050, 8000),
    (22050, 48000),
    (24000, 16000),
]


def _tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 16384) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * amp).astype(np.int16)


def _stream(res: StreamResampler, pcm: np.ndarray, rate: int) -> tuple[np.ndarray, list[int]]:
    n = rate // 50
    outs = [res.process(pcm[i : i + n]) for i in range(0, len(pcm), n)]
    return np.concatenate([*outs, res.flush()]), [len(o) for o in outs]


def _spectrum_db(y: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude spectrum in dBFS over a steady 0.5 s window (Hann, amplitude-corrected)."""
    seg = y[rate // 4 : rate // 4 + rate // 2].astype(np.float64)
    win = np.hanning(len(seg))
    mag = np.abs(np.fft.rfft(seg * win)) / (win.sum() / 2) / 32768
    return 20 * np.log10(mag + 1e-12), np.fft.rfftfreq(len(seg), 1 / rate)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_1khz_tone_level_within_half_db(in_rate: int, out_rate: int) -> None:
    y, _ = _stream(StreamResampler(in_rate, out_rate), _tone(1000, in_rate), in_rate)
    db, freqs = _spectrum_db(y, out_rate)
    level = db[np.abs(freqs - 1000) < 10].max()
    assert abs(level - 20 * np.log10(0.5)) < 0.5
    assert db[np.abs(freqs - 1000) > 100].max() < level - 50  # no spurs either


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_aliasing_products_below_minus_50_db(in_rate: int, out_rate: int) -> None:
    # Downsampling: a tone above the output Nyquist must not fold back.
    # Upsampling: a tone near the input Nyquist must not leave an image above it.
    freq = 0.7 * out_rate if out_rate < in_rate else 0.42 * in_rate
    freq = min(freq, 0.45 * in_rate)
    y, _ = _stream(StreamResampler(in_rate, out_rate), _tone(freq, in_rate), in_rate)
    db, freqs = _spectrum_db(y, out_rate)
    others = np.abs(freqs - freq) > 100
    assert db[others].max() < 20 * np.log10(0.5) - 50


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_one_output_frame_per_input_frame_from_the_first(in_rate: int, out_rate: int) -> None:
    res = StreamResampler(in_rate, out_rate)
    assert res.engine == "polyphase"
    y, counts = _stream(res, _tone(440, in_rate, 2.0), in_rate)
    assert counts == [out_rate // 50] * 100
    assert abs(len(y) - (2 * out_rate + res.delay_s * out_rate)) <= 2  # flush returns the tail


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_delay_is_small_and_as_reported(in_rate: int, out_rate: int) -> None:
    res = StreamResampler(in_rate, out_rate)
    assert 0 < res.delay_s < 0.002
    impulse = np.zeros(in_rate // 5, np.int16)
    impulse[in_rate // 10] = 20000
    y, _ = _stream(res, impulse, in_rate)
    peak_s = np.argmax(np.abs(y.astype(np.int32))) / out_rate
    assert abs(peak_s - (0.1 + res.delay_s)) <= 1.5 / min(in_rate, out_rate)


def test_equal_rates_are_identity() -> None:
    pcm = _tone(1000, 16000, 0.1)
    res = StreamResampler(16000, 16000)
    np.testing.assert_array_equal(res.process(pcm), pcm)
    assert res.flush().size == 0
    np.testing.assert_array_equal(resample(pcm, 8000, 8000), pcm)


def test_flush_resets_for_a_new_stream() -> None:
    res = StreamResampler(8000, 16000)
    first, _ = _stream(res, _tone(1000, 8000, 0.5), 8000)
    second, _ = _stream(res, _tone(1000, 8000, 0.5), 8000)
    np.testing.assert_array_equal(first, second)


def test_unusual_rate_pair_falls_back_to_soxr() -> None:
    res = StreamResampler(8000, 44099)
    assert res.engine == "soxr-vr"
    y, counts = _stream(res, _tone(1000, 8000, 0.5), 8000)
    assert all(c == 44099 // 50 or abs(c - 44099 / 50) < 2 for c in counts[2:])
    assert abs(len(y) - 44099 / 2) <= 2


def test_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        StreamResampler(0, 16000)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_whole_buffer_resample_keeps_level(in_rate: int, out_rate: int) -> None:
    y = resample(_tone(1000, in_rate), in_rate, out_rate)
    assert y.dtype == np.int16
    assert len(y) == out_rate
    db, freqs = _spectrum_db(y, out_rate)
    assert abs(db[np.abs(freqs - 1000) < 10].max() - 20 * np.log10(0.5)) < 0.5


@settings(max_examples=30, deadline=None)
@given(arrays(np.int16, st.integers(0, 3000)), st.sampled_from(PAIRS))
def test_output_length_tracks_rate_ratio_for_any_chunking(
    pcm: np.ndarray, pair: tuple[int, int]
) -> None:
    in_rate, out_rate = pair
    res = StreamResampler(in_rate, out_rate)
    chunks = np.array_split(pcm, 7)
    expected = len(pcm) * out_rate / in_rate + res.delay_s * out_rate
    total = sum(len(res.process(c)) for c in chunks) + len(res.flush())
    assert abs(total - expected) <= 2
