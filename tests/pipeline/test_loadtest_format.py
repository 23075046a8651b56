"""The load tester's pure parts: the summary block, percentiles, durations, encoding."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from bridge.tools.loadtest import encode_chunks, format_summary, parse_duration, percentile


def test_summary_block_is_the_spec_format() -> None:
    text = format_summary(47, 0, [138, 140, 215], [245, 300, 410], [167, 200, 289], [562, 600, 891])
    lines = text.splitlines()
    assert lines[0] == "Calls completed: 47"
    assert lines[1] == "Errors: 0"
    assert lines[2] == "ASR latency   p50=140ms  p95=208ms  p99=214ms"
    assert lines[3].startswith("LLM latency   p50=300ms  p95=")
    assert lines[4].startswith("TTS latency   p50=200ms  p95=")
    assert lines[5].startswith("E2E latency   p50=600ms  p95=")
    assert len(lines) == 6


def test_summary_without_samples() -> None:
    lines = format_summary(0, 3, [], [], [], []).splitlines()
    assert lines[1] == "Errors: 3"
    assert lines[3] == "LLM latency   p50=n/a  p95=n/a  p99=n/a"


def test_percentile_interpolates() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60), ("2m", 120), ("1m30s", 90), ("500ms", 0.5), ("10", 10), ("1h", 3600)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ten", "10x", "5s garbage"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("codec", "chunk_bytes"),
    [("pcm", 640), ("g711_ulaw", 160), ("g711_alaw", 160), ("opus", None)],
)
def test_encode_chunks_are_20_ms(codec: str, chunk_bytes: int | None) -> None:
    pcm = (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16)  # 1 s at 16 kHz
    chunks = encode_chunks(pcm, 16000, codec)
    assert len(chunks) == 50
    if chunk_bytes is not None:
        assert {len(c) for c in chunks} == {chunk_bytes}
    else:
        assert all(0 < len(c) < 400 for c in chunks)
