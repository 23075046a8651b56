"""WAV read/write: round trip, stdlib interop, downmix, and clear errors on bad files."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from media.wav import read_wav, write_wav
from tests.support import wav_bytes


@given(arrays(np.int16, st.integers(0, 2000)), st.sampled_from([8000, 16000, 22050, 48000]))
def test_write_then_read_is_identity(pcm: np.ndarray, rate: int) -> None:
    out, out_rate = read_wav(write_wav(pcm, rate))
    assert out_rate == rate
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, pcm)


def test_reads_stdlib_wave_and_stdlib_reads_ours() -> None:
    pcm = (np.sin(np.arange(1600) / 5) * 9000).astype(np.int16)
    out, rate = read_wav(wav_bytes(pcm, 16000))
    assert rate == 16000
    np.testing.assert_array_equal(out, pcm)
    with wave.open(io.BytesIO(write_wav(pcm, 22050))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        np.testing.assert_array_equal(np.frombuffer(w.readframes(w.getnframes()), "<i2"), pcm)


def _stereo(left: np.ndarray, right: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.stack([left, right], axis=1).astype("<i2").tobytes())
    return buf.getvalue()


def test_stereo_is_downmixed_by_average() -> None:
    left = np.array([1000, -2000, 32767, -32768], np.int16)
    right = np.array([3000, 2000, 32767, -32768], np.int16)
    out, rate = read_wav(_stereo(left, right, 44100))
    assert rate == 44100
    np.testing.assert_array_equal(out, [2000, 0, 32767, -32768])


def test_extensible_header_and_streamed_size_fields() -> None:
    pcm = np.arange(-50, 50, dtype=np.int16)
    fmt = struct.pack(
        "<HHIIHHHHI16s", 0xFFFE, 1, 8000, 16000, 2, 16, 22, 16, 4, b"\x01\x00" + b"\0" * 14
    )
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST\x03\x00\x00\x00abc\x00"
    body += b"data" + struct.pack("<I", 0xFFFFFFFF) + pcm.tobytes()
    out, rate = read_wav(b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + body)
    assert rate == 8000
    np.testing.assert_array_equal(out, pcm)


def test_truncated_data_keeps_whole_samples() -> None:
    data = write_wav(np.array([1, 2, 3], np.int16), 8000)
    out, _ = read_wav(data[:-1])
    np.testing.assert_array_equal(out, [1, 2])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "RIFF"),
        (b"RIFF\x00\x00\x00\x00AVI ", "RIFF"),
        (b"RIFF\x04\x00\x00\x00WAVE", "fmt"),
        (write_wav(np.zeros(4, np.int16), 8000)[:36], "data"),
    ],
)
def test_malformed_files_raise_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_wav(data)


def test_float_and_8bit_are_refused_with_reason() -> None:
    good = bytearray(write_wav(np.zeros(4, np.int16), 8000))
    float_wav = good.copy()
    struct.pack_into("<HHIIHH", float_wav, 20, 3, 1, 8000, 32000, 4, 32)
    with pytest.raises(ValueError, match="format tag 0x0003"):
        read_wav(bytes(float_wav))
    u8 = good.copy()
    struct.pack_into("<HHIIHH", u8, 20, 1, 1, 8000, 8000, 1, 8)
    with pytest.raises(ValueError, match="8 bits"):
        read_wav(bytes(u8))
