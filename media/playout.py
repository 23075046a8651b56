"""The one bot-audio playout: speech in at any rate, fixed 20 ms frames out, and its pacing.

`Playout` resamples each pushed sentence once to the door's rate and cuts it into frames
(the last one zero-padded); the door pops one frame per tick. `PacingClock` is the tick
schedule every door uses: absolute deadlines (`deadline += period`, so sleep overshoot
never accumulates), a few late frames are caught up back to back, and beyond
`MAX_CATCH_UP` it resynchronises to now instead of bursting. Both are pure: no asyncio.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from media.resample import resample

__all__ = ["FRAME_MS", "MAX_CATCH_UP", "PacingClock", "Pcm", "Playout"]

Pcm = npt.NDArray[np.int16]
FRAME_MS = 20
MAX_CATCH_UP = 3
"""Missed frames a clock still runs back to back; beyond this it resynchronises."""


class Playout:
    """A queue of bot speech as frames of `frame_ms` at `rate`."""

    def __init__(self, rate: int, frame_ms: int = FRAME_MS) -> None:
        if rate <= 0 or frame_ms <= 0:
            raise ValueError("rate and frame_ms must be positive")
        self.rate = rate
        self.frame_ms = frame_ms
        self.frame_samples = rate * frame_ms // 1000
        self._frames: deque[Pcm] = deque()

    def push(self, pcm: Pcm, rate: int) -> None:
        """Queue one sentence: resampled once to `self.rate`, cut into frames, last padded."""
        pcm = np.asarray(pcm, dtype=np.int16).reshape(-1)
        if pcm.size == 0:
            return
        if rate != self.rate:
            pcm = resample(pcm, rate, self.rate)
        n = self.frame_samples
        whole = len(pcm) // n * n
        self._frames.extend(pcm[i : i + n] for i in range(0, whole, n))
        if whole < len(pcm):
            last = np.zeros(n, np.int16)
            last[: len(pcm) - whole] = pcm[whole:]
            self._frames.append(last)

    def pop(self) -> Pcm | None:
        """The next frame, or None when nothing is queued."""
        return self._frames.popleft() if self._frames else None

    def clear(self) -> None:
        """Barge-in: drop everything queued."""
        self._frames.clear()

    @property
    def queued_ms(self) -> int:
        """Speech waiting to be played."""
        return len(self._frames) * self.frame_ms

    @property
    def drained(self) -> bool:
        """Nothing is queued."""
        return not self._frames


class PacingClock:
    """Absolute frame deadlines on a monotonic clock (seconds), with bounded catch-up.

    `start(now)` makes `now` the first frame's deadline; `advance()` moves to the next
    deadline and returns it (sleep until then); `catch_up(now)`, called on waking, returns
    how many frames the schedule skipped because it was more than `max_catch_up` behind
    (0 otherwise: late frames follow back to back)."""

    def __init__(self, period_s: float = FRAME_MS / 1000, max_catch_up: int = MAX_CATCH_UP) -> None:
        self.period_s = period_s
        self.max_catch_up = max_catch_up
        self.deadline: float | None = None
        self.resyncs = 0
        """Times the schedule jumped to now."""
        self.late_ticks = 0
        """Frames that woke behind their deadline (but within the catch-up bound)."""

    @property
    def started(self) -> bool:
        """`start` was called."""
        return self.deadline is not None

    def start(self, now: float) -> None:
        """Anchor the schedule: the current frame is due at `now`."""
        self.deadline = now

    def advance(self) -> float:
        """The next frame's deadline (starting the schedule at 0.0 if it was not)."""
        self.deadline = (self.deadline or 0.0) + self.period_s
        return self.deadline

    def catch_up(self, now: float) -> int:
        """Frames skipped to resynchronise at `now` (0 when on time or only a little late)."""
        if self.deadline is None:
            self.deadline = now
            return 0
        behind = int((now - self.deadline) / self.period_s)
        if behind > self.max_catch_up:
            self.deadline += behind * self.period_s
            self.resyncs += 1
            return behind
        if behind > 0:
            self.late_ticks += 1
        return 0
