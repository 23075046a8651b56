"""The codec registry: lookups, registration order, and each codec's decoder/encoder."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from media import codecs
from media.codecs import UnsupportedCodec, codec_for, codec_for_rtp, supported
from media.g711 import alaw_encode, ulaw_decode, ulaw_encode


def _tone(rate: int, samples: int, hz: float = 440.0) -> np.ndarray:
    return (np.sin(2 * np.pi * hz * np.arange(samples) / rate) * 8000).astype(np.int16)


def test_builtin_codecs_in_registration_order() -> None:
    described = [
        (c.name, c.encoding_name, c.clock_rate, c.channels, c.payload_type, c.pcm_rate)
        for c in supported()
    ]
    assert described[:3] == [
        ("pcmu", "PCMU", 8000, 1, 0, 8000),
        ("pcma", "PCMA", 8000, 1, 8, 8000),
        ("opus", "opus", 48000, 2, 111, 48000),
    ]
    assert [c.frame_samples for c in supported()[:3]] == [160, 160, 960]


def test_lookups_are_case_insensitive_and_strict() -> None:
    assert codec_for("PCMU") is codec_for("pcmu")
    assert codec_for_rtp("OPUS", 48000, 2) is codec_for("opus")
    assert codec_for_rtp("pcma", 8000, 1) is codec_for("pcma")
    for args in (("opus", 48000, 1), ("PCMU", 16000, 1), ("G729", 8000, 1)):
        with pytest.raises(UnsupportedCodec):
            codec_for_rtp(*args)
    with pytest.raises(UnsupportedCodec):
        codec_for("g722")
    assert issubclass(UnsupportedCodec, ValueError)


class _G722Shape(codecs.RtpCodec):
    """The shape G.722 will have: SDP clock 8000, PCM at 16 kHz (RFC 3551 §4.5.2)."""

    name, encoding_name, clock_rate, payload_type, pcm_rate = "g722-test", "G722", 8000, 9, 16000


@pytest.fixture
def g722_shape() -> Iterator[_G722Shape]:
    codec = _G722Shape()
    codecs.register(codec)
    try:
        yield codec
    finally:
        codecs.unregister(codec.name)


def test_register_and_unregister(g722_shape: _G722Shape) -> None:
    assert supported()[-1] is g722_shape
    assert codec_for_rtp("g722", 8000, 1) is g722_shape
    assert g722_shape.frame_samples == 160  # RTP units, not the 320 PCM samples
    codecs.unregister(g722_shape.name)
    assert g722_shape not in supported()
    with pytest.raises(UnsupportedCodec):
        codec_for("g722-test")


@pytest.mark.parametrize(("name", "encode"), [("pcmu", ulaw_encode), ("pcma", alaw_encode)])
def test_g711_codec_matches_the_tables(name: str, encode: object) -> None:
    codec = codec_for(name)
    frame = _tone(8000, 160)
    payload = codec.encoder().encode(frame)
    assert payload == encode(frame)  # type: ignore[operator]
    pcm = codec.decoder().decode(payload)
    assert pcm.dtype == np.int16 and pcm.shape == (160,)
    assert np.max(np.abs(pcm.astype(int) - frame)) < 300


def test_g711_conceal_fades_the_last_frame_and_is_none_before_any() -> None:
    decoder = codec_for("pcmu").decoder()
    assert decoder.conceal() is None
    pcm = decoder.decode(ulaw_encode(_tone(8000, 160)))
    first = decoder.conceal()
    assert first is not None
    np.testing.assert_array_equal(first, pcm >> 1)
    second = decoder.conceal()
    assert second is not None
    np.testing.assert_array_equal(second, (pcm >> 1) >> 1)
    np.testing.assert_array_equal(decoder.decode(ulaw_encode(pcm)), ulaw_decode(ulaw_encode(pcm)))


def test_opus_codec_round_trip_and_plc() -> None:
    codec = codec_for("opus")
    encoder, decoder = codec.encoder(), codec.decoder()
    tone = _tone(48000, 48000, 300.0)
    frames = [decoder.decode(encoder.encode(tone[i : i + 960])) for i in range(0, 48000, 960)]
    assert all(f.shape == (960,) and f.dtype == np.int16 for f in frames)
    concealed = decoder.conceal()
    assert concealed is not None
    assert np.sqrt(np.mean(concealed.astype(np.float64) ** 2)) > 1000  # libopus PLC, not silence
    with pytest.raises(ValueError):
        decoder.decode(b"")
