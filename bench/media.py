"""Median cost per 20 ms frame of the media hot paths, against the spec's 5 ms budget.

Inbound:  RTP parse -> jitter buffer (push, pop, decode) -> resample to 16 kHz -> energy VAD
Outbound: resample 22050 Hz TTS audio -> codec rate -> encode -> RTP build

Run: .venv/bin/python bench/media.py [--seconds 60] [--repeats 3] [--resamplers]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

# This file is bench/media.py: without this, `import media` would find the file, not the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from media.codecs import AudioCodec, codec_for
from media.jitter import JitterBuffer
from media.resample import StreamResampler
from media.rtp import RtpPacket, parse_rtp
from media.vad import EnergyVAD

BUDGET_US = 5000.0  # spec §3: codec decode + resample < 5 ms
Pcm = npt.NDArray[np.int16]


def speechlike(rate: int, seconds: float, seed: int = 7) -> Pcm:
    """Syllable-rate modulated noise plus a voiced tone: exercises VAD state changes too."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    envelope = np.clip(np.sin(2 * np.pi * 0.4 * t), 0, None) * (
        0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    )
    voiced = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 420 * t)
    noise = rng.normal(0, 0.3, t.size)
    return (np.clip(envelope * (voiced + noise), -1, 1) * 12000).astype(np.int16)


def _median_us(samples_ns: list[int]) -> float:
    return statistics.median(samples_ns) / 1000.0


def inbound(codec: AudioCodec, seconds: float) -> float:
    frame = codec.frame_samples
    pcm_frame = codec.pcm_rate // 50
    pcm = speechlike(codec.pcm_rate, seconds)
    encoder = codec.encoder()
    wires = [
        RtpPacket(
            codec.payload_type,
            i & 0xFFFF,
            i * frame,
            0xC0FFEE,
            encoder.encode(pcm[i * pcm_frame : (i + 1) * pcm_frame]),
        ).serialize()
        for i in range(len(pcm) // pcm_frame)
    ]
    jitter = JitterBuffer(
        codec.clock_rate, frame, 60, decoder=codec.decoder(), pcm_frame_samples=pcm_frame
    )
    resampler = StreamResampler(codec.pcm_rate, 16000)
    vad = EnergyVAD()
    times: list[int] = []
    clock = time.perf_counter_ns
    for wire in wires:
        t0 = clock()
        jitter.push(parse_rtp(wire))
        vad.process(resampler.process(jitter.pop()))
        times.append(clock() - t0)
    return _median_us(times[50:])


def outbound(codec: AudioCodec, seconds: float) -> float:
    tts_rate = 22050
    chunk = tts_rate // 50  # 441 samples = 20 ms
    codec_rate, payload_type = codec.pcm_rate, codec.payload_type
    encode = codec.encoder().encode
    frame = codec_rate // 50
    pcm = speechlike(tts_rate, seconds)
    resampler = StreamResampler(tts_rate, codec_rate)
    pending = np.zeros(0, np.int16)
    seq = ts = 0
    times: list[int] = []
    clock = time.perf_counter_ns
    for start in range(0, len(pcm) - chunk + 1, chunk):
        t0 = clock()
        out = resampler.process(pcm[start : start + chunk])
        pending = np.concatenate((pending, out)) if pending.size else out
        while pending.size >= frame:
            RtpPacket(payload_type, seq & 0xFFFF, ts, 0xC0FFEE, encode(pending[:frame])).serialize()
            pending = pending[frame:]
            seq += 1
            ts += codec.frame_samples
        times.append(clock() - t0)
    return _median_us(times[50:])


RESAMPLE_PAIRS = [(8000, 16000), (48000, 16000), (16000, 8000), (22050, 8000), (22050, 48000)]


def _stream_out(process: Callable[[Pcm], Pcm], pcm: Pcm, rate: int) -> tuple[Pcm, list[int]]:
    n = rate // 50
    outs = [process(pcm[i : i + n]) for i in range(0, len(pcm) - n + 1, n)]
    return np.concatenate(outs), [len(o) for o in outs]


def _tone(freq: float, rate: int) -> Pcm:
    t = np.arange(rate) / rate
    return (np.sin(2 * np.pi * freq * t) * 16384).astype(np.int16)


def _spectrum_db(y: Pcm, rate: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    seg = y[rate // 4 : rate // 4 + rate // 2].astype(np.float64)
    win = np.hanning(len(seg))
    mag = np.abs(np.fft.rfft(seg * win)) / (win.sum() / 2) / 16384
    db: npt.NDArray[np.float64] = 20 * np.log10(mag + 1e-12)
    freqs: npt.NDArray[np.float64] = np.fft.rfftfreq(len(seg), 1 / rate).astype(np.float64)
    return db, freqs


def resampler_row(
    label: str, make: Callable[[int, int], Callable[[Pcm], Pcm]], in_rate: int, out_rate: int
) -> str:
    """Latency (worst output shortfall vs real time), 1 kHz level, worst alias, cost per frame."""
    frame_out = out_rate // 50
    _, counts = _stream_out(make(in_rate, out_rate), _tone(440, in_rate), in_rate)
    cumulative = np.cumsum(counts)
    shortfall = max(frame_out * (k + 1) - int(c) for k, c in enumerate(cumulative))
    delay_ms = 1000 * shortfall / out_rate
    if label == "polyphase":  # soxr trims its filter delay; ours is in the output
        delay_ms += 1000 * StreamResampler(in_rate, out_rate).delay_s
    y, _ = _stream_out(make(in_rate, out_rate), _tone(1000, in_rate), in_rate)
    db, freqs = _spectrum_db(y, out_rate)
    level = db[np.abs(freqs - 1000) < 10].max()
    probe = min(0.7 * out_rate if out_rate < in_rate else 0.42 * in_rate, 0.45 * in_rate)
    y, _ = _stream_out(make(in_rate, out_rate), _tone(probe, in_rate), in_rate)
    db, freqs = _spectrum_db(y, out_rate)
    alias = db[np.abs(freqs - probe) > 100].max()
    process = make(in_rate, out_rate)
    chunk = _tone(440, in_rate)[: in_rate // 50]
    times = []
    for _ in range(1000):
        t0 = time.perf_counter_ns()
        process(chunk)
        times.append(time.perf_counter_ns() - t0)
    return (
        f"{label:<12} {in_rate:>6} -> {out_rate:<6} {delay_ms:>9.1f}"
        f" {level:>+8.2f} {alias:>10.1f} {_median_us(times[100:]):>8.1f}"
    )


def _ours(in_rate: int, out_rate: int) -> Callable[[Pcm], Pcm]:
    return StreamResampler(in_rate, out_rate).process


def _soxr(quality: str, vr: bool) -> Callable[[int, int], Callable[[Pcm], Pcm]]:
    def make(in_rate: int, out_rate: int) -> Callable[[Pcm], Pcm]:
        stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality, vr=vr)
        return stream.resample_chunk

    return make


def resampler_table() -> None:
    """Compare the streaming resampler with soxr's stream modes at 20 ms chunks."""
    print("\nstreaming resamplers at 20 ms chunks (tone at -6 dBFS)")
    header = f"{'engine':<12} {'rates':<16} {'delay ms':>9} {'1 kHz dB':>8}"
    print(f"{header} {'alias dBc':>10} {'µs/frame':>8}")
    engines: list[tuple[str, Callable[[int, int], Callable[[Pcm], Pcm]]]] = [
        ("polyphase", _ours),
        ("soxr vr", _soxr("HQ", True)),
        ("soxr HQ", _soxr("HQ", False)),
        ("soxr QQ", _soxr("QQ", False)),
    ]
    for label, make in engines:
        for in_rate, out_rate in RESAMPLE_PAIRS:
            print(resampler_row(label, make, in_rate, out_rate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per run (default 60)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path; best median kept")
    parser.add_argument(
        "--resamplers", action="store_true", help="also compare streaming resampler engines"
    )
    args = parser.parse_args()

    def best(run: Callable[[AudioCodec, float], float], codec: AudioCodec) -> float:
        return min(run(codec, args.seconds) for _ in range(args.repeats))

    labels = {"pcmu": "PCMU", "pcma": "PCMA", "opus": "Opus"}
    codecs = [(label, codec_for(name)) for name, label in labels.items()]
    rows: list[tuple[str, float]] = [
        (f"inbound {label} {c.pcm_rate // 1000}k -> 16k", best(inbound, c)) for label, c in codecs
    ]
    rows += [(f"outbound 22.05k -> {label}", best(outbound, c)) for label, c in codecs]

    print(
        f"media hot paths: median per 20 ms frame, {args.seconds:g} s audio, best of {args.repeats}"
    )
    print(f"{'path':<26} {'median µs/frame':>16} {'of 5 ms budget':>15}")
    for label, us in rows:
        print(f"{label:<26} {us:>16.1f} {us / BUDGET_US:>14.2%}")
    if args.resamplers:
        resampler_table()


if __name__ == "__main__":
    main()
