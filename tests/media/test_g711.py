"""G.711 against the reference (CPython 3.11 audioop) on every code and every sample."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_CODES = bytes(range(256))
ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)


def test_ulaw_decode_matches_reference_on_all_codes() -> None:
    ref = np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), np.int16)
    np.testing.assert_array_equal(ulaw_decode(ALL_CODES), ref)


def test_alaw_decode_matches_reference_on_all_codes() -> None:
    ref = np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), np.int16)
    np.testing.assert_array_equal(alaw_decode(ALL_CODES), ref)


def test_ulaw_encode_matches_reference_on_all_samples() -> None:
    assert ulaw_encode(ALL_PCM) == audioop.lin2ulaw(ALL_PCM.tobytes(), 2)


def test_alaw_encode_matches_reference_on_all_samples() -> None:
    assert alaw_encode(ALL_PCM) == audioop.lin2alaw(ALL_PCM.tobytes(), 2)


def test_decode_types_and_empty_input() -> None:
    assert ulaw_decode(b"").dtype == np.int16
    assert alaw_decode(b"\xd5" * 160).shape == (160,)
    assert ulaw_encode(np.zeros(0, np.int16)) == b""


def test_encode_rejects_non_int16() -> None:
    with pytest.raises(TypeError):
        ulaw_encode(np.zeros(160, np.float32))


@given(st.binary(max_size=400))
def test_alaw_encode_inverts_decode(codes: bytes) -> None:
    assert alaw_encode(alaw_decode(codes)) == codes


@given(st.binary(max_size=400))
def test_ulaw_encode_inverts_decode_except_negative_zero(codes: bytes) -> None:
    # 0x7F is μ-law's "negative zero"; it decodes to 0, which encodes as 0xFF.
    expected = codes.replace(b"\x7f", b"\xff")
    assert ulaw_encode(ulaw_decode(codes)) == expected


@given(arrays(np.int16, st.integers(0, 320)))
def test_roundtrip_error_bounded_by_segment_step(pcm: np.ndarray) -> None:
    x = pcm.astype(np.int32)
    for enc, dec in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
        err = np.abs(dec(enc(pcm)).astype(np.int32) - x)
        # Quantisation step grows with magnitude: at most 1/16 of it plus the smallest step.
        assert np.all(err <= np.abs(x) // 16 + 16)
