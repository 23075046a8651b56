"""Opus through PyAV's libopus: round trip, concealment, stereo-signalled streams, bad packets."""

from __future__ import annotations

import fractions

import numpy as np
import pytest
from av import AudioFrame, CodecContext

from media.opus import OPUS_FRAME_SAMPLES, OpusDecoder, OpusEncoder, OpusError

RATE = 48000


def _tone(seconds: float, freq: float = 440.0, amp: float = 10000) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * freq * t) * amp).astype(np.int16)


def _frames(pcm: np.ndarray) -> list[np.ndarray]:
    return [pcm[i : i + OPUS_FRAME_SAMPLES] for i in range(0, len(pcm), OPUS_FRAME_SAMPLES)]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def _best_corr(a: np.ndarray, b: np.ndarray, max_lag: int = 1000) -> tuple[float, int]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    best = (-1.0, 0)
    for lag in range(0, max_lag, 4):
        x, y = a64[: len(a64) - lag], b64[lag : lag + len(a64) - lag]
        n = min(len(x), len(y))
        c = float(np.dot(x[:n], y[:n]) / (np.linalg.norm(x[:n]) * np.linalg.norm(y[:n]) + 1e-9))
        best = max(best, (c, lag))
    return best


def test_round_trip_one_packet_per_frame_and_tone_survives() -> None:
    enc, dec = OpusEncoder(bitrate=32000), OpusDecoder()
    src = _tone(1.0)
    packets = [enc.encode(f) for f in _frames(src)]
    assert all(0 < len(p) < 200 for p in packets)
    out = [dec.decode(p) for p in packets]
    assert all(o.dtype == np.int16 and o.shape == (OPUS_FRAME_SAMPLES,) for o in out)
    pcm = np.concatenate(out)
    corr, _ = _best_corr(src[RATE // 4 :], pcm[RATE // 4 :])
    assert corr > 0.95
    assert abs(20 * np.log10(_rms(pcm[RATE // 4 :]) / _rms(src[RATE // 4 :]))) < 1.0


def test_conceal_fills_a_lost_packet_with_plausible_audio() -> None:
    enc, dec = OpusEncoder(), OpusDecoder()
    frames = _frames(_tone(0.6))
    packets = [enc.encode(f) for f in frames]
    out = []
    for i, p in enumerate(packets):
        out.append(dec.conceal() if i == 20 else dec.decode(p))
    concealed = out[20]
    assert concealed.shape == (OPUS_FRAME_SAMPLES,)
    # Real PLC continues the tone: clearly not silence, near the original level.
    assert _rms(concealed) > 0.3 * _rms(frames[20])
    assert all(o.shape == (OPUS_FRAME_SAMPLES,) for o in out[21:])


def test_conceal_before_any_packet_is_silence() -> None:
    silence = OpusDecoder().conceal()
    assert silence.shape == (OPUS_FRAME_SAMPLES,)
    assert not silence.any()


def test_stereo_signalled_stream_decodes_to_mono() -> None:
    codec = CodecContext.create("libopus", "w")
    codec.bit_rate, codec.format, codec.layout = 64000, "s16", "stereo"
    codec.sample_rate, codec.time_base = RATE, fractions.Fraction(1, RATE)
    dec = OpusDecoder()
    tone = _tone(0.2)
    for i, f in enumerate(_frames(tone)):
        stereo = np.stack([f, f], axis=1).reshape(1, -1)
        frame = AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = RATE, i * OPUS_FRAME_SAMPLES
        for packet in codec.encode(frame):
            assert dec.decode(bytes(packet)).shape == (OPUS_FRAME_SAMPLES,)


def test_garbage_raises_opus_error_and_decoder_keeps_working() -> None:
    enc, dec = OpusEncoder(), OpusDecoder()
    good = enc.encode(_tone(0.02))
    with pytest.raises(OpusError):
        dec.decode(b"\xff\xff\xff")
    with pytest.raises(OpusError):
        dec.decode(b"")
    assert dec.decode(good).shape == (OPUS_FRAME_SAMPLES,)


def test_encoder_rejects_wrong_frame_size() -> None:
    with pytest.raises(OpusError):
        OpusEncoder().encode(np.zeros(480, np.int16))
