"""Bot-audio playout (any rate in, fixed frames out) and the pacing schedule every door uses."""

from __future__ import annotations

import numpy as np
import pytest

from media.playout import MAX_CATCH_UP, PacingClock, Playout


def test_push_cuts_frames_and_pads_the_last() -> None:
    playout = Playout(8000)
    assert playout.drained and playout.queued_ms == 0 and playout.pop() is None
    playout.push(np.arange(1, 401, dtype=np.int16), 8000)  # 50 ms
    assert playout.queued_ms == 60 and not playout.drained
    frames = [playout.pop() for _ in range(3)]
    assert all(f is not None and f.shape == (160,) and f.dtype == np.int16 for f in frames)
    whole = np.concatenate([f for f in frames if f is not None])
    np.testing.assert_array_equal(whole[:400], np.arange(1, 401))
    assert not whole[400:].any()  # zero padding
    assert playout.pop() is None and playout.drained


def test_push_resamples_once_per_sentence() -> None:
    playout = Playout(48000)
    t = np.arange(22050) / 22050
    playout.push((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16), 22050)  # 1 s
    assert playout.queued_ms == 1000
    frames = []
    while (frame := playout.pop()) is not None:
        frames.append(frame)
    out = np.concatenate(frames)
    assert len(out) == 48000
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    assert abs(np.fft.rfftfreq(len(out), 1 / 48000)[np.argmax(spectrum)] - 440) < 2


def test_clear_and_empty_input() -> None:
    playout = Playout(16000, frame_ms=10)
    playout.push(np.zeros(0, np.int16), 8000)
    assert playout.drained
    playout.push(np.ones(1000, np.int16), 16000)
    assert playout.queued_ms == 70
    playout.clear()
    assert playout.drained and playout.pop() is None
    with pytest.raises(ValueError):
        Playout(0)


def test_pacing_deadlines_are_absolute() -> None:
    clock = PacingClock(0.02)
    assert not clock.started
    clock.start(100.0)
    deadlines = [clock.advance() for _ in range(50)]
    assert deadlines[-1] == pytest.approx(101.0)  # no accumulated overshoot
    assert clock.catch_up(101.005) == 0 and clock.late_ticks == 0


def test_pacing_catches_up_a_little_and_resyncs_beyond() -> None:
    clock = PacingClock(0.02)
    clock.start(0.0)
    deadline = clock.advance()
    assert clock.catch_up(deadline + MAX_CATCH_UP * 0.02 + 0.001) == 0  # run late frames
    assert clock.late_ticks == 1 and clock.resyncs == 0
    deadline = clock.advance()
    skipped = clock.catch_up(deadline + 0.201)  # a 10-frame stall
    assert skipped == 10 and clock.resyncs == 1
    assert clock.advance() == pytest.approx(deadline + 0.22)  # no burst afterwards
