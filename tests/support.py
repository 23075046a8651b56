"""Shared test helpers: speech fixtures made at test time, word error rate, free ports."""

from __future__ import annotations

import functools
import io
import re
import socket
import subprocess
import wave

import numpy as np
import numpy.typing as npt
import soxr

SENTENCE = "The quick brown fox jumps over the lazy dog."


@functools.lru_cache(maxsize=32)
def _espeak_wav(text: str, voice: str, words_per_minute: int) -> tuple[bytes, int]:
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", text],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    with wave.open(io.BytesIO(out)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


def espeak_pcm(
    text: str = SENTENCE, rate: int = 16000, voice: str = "en-us", words_per_minute: int = 150
) -> npt.NDArray[np.int16]:
    """Speak `text` with espeak-ng and return mono int16 PCM at `rate`."""
    raw, native_rate = _espeak_wav(text, voice, words_per_minute)
    pcm = np.frombuffer(raw, dtype=np.int16)
    if native_rate != rate:
        pcm = soxr.resample(pcm, native_rate, rate).astype(np.int16)
    return pcm.copy()


def with_silence(
    pcm: npt.NDArray[np.int16], rate: int, before_s: float = 1.0, after_s: float = 1.0
) -> npt.NDArray[np.int16]:
    """Pad speech with digital silence on both sides."""
    return np.concatenate(
        [
            np.zeros(int(before_s * rate), np.int16),
            pcm,
            np.zeros(int(after_s * rate), np.int16),
        ]
    )


def wav_bytes(pcm: npt.NDArray[np.int16], rate: int) -> bytes:
    """Mono 16-bit WAV file bytes."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over words divided by the reference length."""
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)] / max(1, len(ref))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
