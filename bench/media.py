"""Median cost per 20 ms frame of the media hot paths, against the spec's 5 ms decode+resample budget.

Inbound:  RTP parse -> jitter buffer (push, pop, decode) -> resample to 16 kHz -> energy VAD
Outbound: resample 22050 Hz TTS audio -> codec rate -> encode -> RTP build

Run: .venv/bin/python bench/media.py [--seconds 60] [--repeats 3]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode  # noqa: E402
from media.jitter import JitterBuffer  # noqa: E402
from media.opus import OpusDecoder, OpusEncoder  # noqa: E402
from media.resample import StreamResampler  # noqa: E402
from media.rtp import RtpPacket, parse_rtp  # noqa: E402
from media.vad import EnergyVAD  # noqa: E402

BUDGET_US = 5000.0  # spec §3: codec decode + resample < 5 ms
Pcm = npt.NDArray[np.int16]


def speechlike(rate: int, seconds: float, seed: int = 7) -> Pcm:
    """Syllable-rate modulated noise plus a voiced tone: exercises VAD state changes too."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    envelope = np.clip(np.sin(2 * np.pi * 0.4 * t), 0, None) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    voiced = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 420 * t)
    noise = rng.normal(0, 0.3, t.size)
    return (np.clip(envelope * (voiced + noise), -1, 1) * 12000).astype(np.int16)


def _median_us(samples_ns: list[int]) -> float:
    return statistics.median(samples_ns) / 1000.0


def inbound(
    name: str,
    clock_rate: int,
    payload_type: int,
    encode: Callable[[Pcm], bytes],
    make_decoder: Callable[[], tuple[Callable[[bytes], Pcm], Callable[[Pcm | None], Pcm] | None]],
    seconds: float,
) -> float:
    frame = clock_rate // 50
    pcm = speechlike(clock_rate, seconds)
    wires = [
        RtpPacket(payload_type, i & 0xFFFF, i * frame, 0xC0FFEE, encode(pcm[i * frame : (i + 1) * frame])).serialize()
        for i in range(len(pcm) // frame)
    ]
    decode, conceal = make_decoder()
    jitter = JitterBuffer(clock_rate, frame, 60, decode=decode, conceal=conceal)
    resampler = StreamResampler(clock_rate, 16000)
    vad = EnergyVAD()
    times: list[int] = []
    clock = time.perf_counter_ns
    for wire in wires:
        t0 = clock()
        jitter.push(parse_rtp(wire))
        vad.process(resampler.process(jitter.pop()))
        times.append(clock() - t0)
    return _median_us(times[50:])


def outbound(
    name: str, codec_rate: int, payload_type: int, encode: Callable[[Pcm], bytes], seconds: float
) -> float:
    tts_rate = 22050
    chunk = tts_rate // 50  # 441 samples = 20 ms
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
            ts += frame
        times.append(clock() - t0)
    return _median_us(times[50:])


def _g711(decode: Callable[[bytes], Pcm]) -> Callable[[], tuple[Callable[[bytes], Pcm], None]]:
    return lambda: (decode, None)


def _opus_decoder() -> tuple[Callable[[bytes], Pcm], Callable[[Pcm | None], Pcm]]:
    dec = OpusDecoder()
    return dec.decode, lambda _last: dec.conceal()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per run (default 60)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path; best median kept")
    args = parser.parse_args()

    opus_encoder = OpusEncoder(bitrate=32000)
    opus_payloads = opus_encoder.encode
    rows: list[tuple[str, float]] = []
    paths: list[tuple[str, Callable[[], float]]] = [
        (
            "inbound PCMU 8k -> 16k",
            lambda: inbound("PCMU", 8000, 0, ulaw_encode, _g711(ulaw_decode), args.seconds),
        ),
        (
            "inbound PCMA 8k -> 16k",
            lambda: inbound("PCMA", 8000, 8, alaw_encode, _g711(alaw_decode), args.seconds),
        ),
        (
            "inbound Opus 48k -> 16k",
            lambda: inbound("Opus", 48000, 111, opus_payloads, _opus_decoder, args.seconds),
        ),
        ("outbound 22.05k -> PCMU", lambda: outbound("PCMU", 8000, 0, ulaw_encode, args.seconds)),
        ("outbound 22.05k -> PCMA", lambda: outbound("PCMA", 8000, 8, alaw_encode, args.seconds)),
        (
            "outbound 22.05k -> Opus",
            lambda: outbound("Opus", 48000, 111, OpusEncoder(bitrate=32000).encode, args.seconds),
        ),
    ]
    for label, run in paths:
        rows.append((label, min(run() for _ in range(args.repeats))))

    print(f"media hot paths: median per 20 ms frame, {args.seconds:g} s of audio, best of {args.repeats}")
    print(f"{'path':<26} {'median µs/frame':>16} {'of 5 ms budget':>15}")
    for label, us in rows:
        print(f"{label:<26} {us:>16.1f} {us / BUDGET_US:>14.2%}")


if __name__ == "__main__":
    main()
