"""The listener: caller frames → VAD → utterances, with the barge-in gate and arrival clock.

`feed()` queues caller audio without ever blocking (the oldest frame is dropped when the
queue is full). `run()` takes frames in order, tells the VAD whether the bot is speaking
(`VAD.set_barge_in`: BARGE_IN is on and the sink is still playing bot audio, so echo
must not interrupt it), runs the VAD and reports what it
found: a speech start loud enough to interrupt the bot (barge-in), a pause (speculative
ASR) and each finished utterance together with the wall time at which its last speech frame
arrived, looked up from a per-frame arrival clock (end-to-end timing starts there).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bridge.config import Settings
from bridge.contract import CALLER_RATE
from bridge.metrics import Metrics
from bridge.pipeline.output import CallLog
from media.vad import (
    VAD,
    EnergyVAD,
    Segmentation,
    SileroVAD,
    SpeechPaused,
    SpeechStarted,
    UtteranceEnded,
)

__all__ = ["FEED_QUEUE_FRAMES", "Listener", "make_vad"]

FEED_QUEUE_FRAMES = 500
"""Caller frames buffered per call before the oldest are dropped (10 s of 20 ms frames)."""

_ARRIVAL_FRAMES = 1600
"""Most frames of arrival clock kept (> the longest utterance); a lookup forgets the older."""

_Item = tuple[npt.NDArray[np.int16] | str, float]


def make_vad(settings: Settings) -> VAD:
    """The VAD chosen by VAD_ENGINE, with the spec §5 and barge-in parameters."""
    common: Segmentation = {
        "min_speech_ms": settings.vad_min_speech_ms,
        "silence_timeout_ms": settings.vad_silence_timeout_ms,
        "pre_speech_ms": settings.vad_pre_speech_ms,
        "pause_ms": settings.asr_speculative_silence_ms,
        "barge_in_threshold_db": settings.barge_in_threshold_db,
        "barge_in_min_speech_ms": settings.barge_in_min_speech_ms,
    }
    if settings.vad_engine == "silero":
        return SileroVAD(CALLER_RATE, **common)
    return EnergyVAD(CALLER_RATE, threshold_db=settings.vad_speech_threshold_db, **common)


@dataclass(eq=False)
class Listener:
    """Frames → VAD → events for one call; the callbacks are the call's."""

    vad: VAD
    metrics: Metrics
    log: CallLog
    barge_in_active: Callable[[], bool]
    on_dtmf: Callable[[str], Awaitable[None]]
    on_barge_in: Callable[[], None]
    on_pause: Callable[[SpeechPaused], None]
    on_utterance: Callable[[UtteranceEnded, float], None]
    dropped_frames: int = field(default=0, init=False)
    """Caller frames dropped because the queue was full."""
    speech_started_at_s: float | None = field(default=None, init=False)
    """Stream position (seconds of caller audio processed) of the last VAD speech start."""
    _samples: int = field(default=0, init=False)
    _frames: asyncio.Queue[_Item] = field(
        default_factory=lambda: asyncio.Queue(FEED_QUEUE_FRAMES), init=False
    )
    _arrivals: deque[tuple[int, float]] = field(
        default_factory=lambda: deque(maxlen=_ARRIVAL_FRAMES), init=False
    )

    @property
    def stream_time_s(self) -> float:
        """Seconds of caller audio the VAD has processed so far."""
        return self._samples / CALLER_RATE

    @property
    def arrival_clock_frames(self) -> int:
        """Frames the arrival clock remembers."""
        return len(self._arrivals)

    def feed(self, pcm: npt.NDArray[np.int16]) -> None:
        """Queue caller audio with its arrival time."""
        self._put((pcm, time.monotonic()))

    def dtmf(self, digit: str) -> None:
        """Queue a DTMF digit, in order with the audio."""
        self._put((digit, time.monotonic()))

    def _put(self, item: _Item) -> None:
        try:
            self._frames.put_nowait(item)
        except asyncio.QueueFull:
            self._frames.get_nowait()
            self._frames.put_nowait(item)
            self.dropped_frames += 1
            self.metrics.audio_chunks_dropped.inc()
            if self.dropped_frames in (1, 100) or self.dropped_frames % 1000 == 0:
                self.log.warning("input queue full: %d frames dropped", self.dropped_frames)

    async def run(self) -> None:
        """Process queued frames until cancelled."""
        while True:
            item, arrival = await self._frames.get()
            if isinstance(item, str):
                await self.on_dtmf(item)
                continue
            self.metrics.audio_chunks.inc()
            self._samples += item.size
            self._arrivals.append((self._samples, arrival))
            speaking = self.barge_in_active()
            self.vad.set_barge_in(speaking)
            try:
                events = self.vad.process(item)
            except Exception:
                self.log.exception("VAD failed on a frame; frame skipped")
                continue
            for event in events:
                if isinstance(event, SpeechStarted):
                    self.speech_started_at_s = self.stream_time_s
                    if speaking and event.interrupts:
                        self.on_barge_in()
                elif isinstance(event, SpeechPaused):
                    self.on_pause(event)
                elif isinstance(event, UtteranceEnded):
                    self.metrics.speech_segments.inc()
                    self.on_utterance(event, self._arrival_of(event.speech_end_s))

    def _arrival_of(self, stream_s: float) -> float:
        """Wall time at which the frame holding stream time `stream_s` was fed.

        Utterances end in stream order, so the frames before this one are never looked up
        again and are forgotten here: the clock holds only the frames since the last
        utterance's end, and the work per frame stays the same however old the call is.
        """
        sample = int(stream_s * CALLER_RATE)
        arrivals = self._arrivals
        passed: float | None = None
        while arrivals and arrivals[0][0] < sample:
            passed = arrivals.popleft()[1]
        if arrivals:
            return arrivals[0][1]
        return passed if passed is not None else time.monotonic()
