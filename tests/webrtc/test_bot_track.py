"""The WebRTC outbound track on the shared playout: any rate in, paced 20 ms frames out."""

from __future__ import annotations

import time

import numpy as np

from bridge.doors import webrtc


async def test_bot_track_resamples_queues_and_paces() -> None:
    track = webrtc.BotAudioTrack()
    t = np.arange(22050) / 22050
    track.push((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16), 22050)  # 1 s at 22.05 kHz
    assert track.queued_ms == 1000 and track.queued_samples == 48000
    start = time.monotonic()
    frames = [await track.recv() for _ in range(11)]
    elapsed = time.monotonic() - start
    assert [f.pts for f in frames] == [i * 960 for i in range(11)]
    assert elapsed >= 0.19  # 10 periods after the first frame: paced, not burst
    assert track.queued_ms == 1000 - 11 * 20
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    assert abs(np.fft.rfftfreq(len(pcm), 1 / 48000)[np.argmax(spectrum)] - 440) < 10
    track.stop()
