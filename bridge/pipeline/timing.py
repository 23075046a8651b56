"""Stage timing, written once: `timed(stage)` for ASR, LLM and TTS, and a turn's timings.

Stage times include the wait for a pool slot, since that is what the caller feels.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from bridge.backends.base import BackendError
from bridge.contract import Event
from bridge.metrics import Metrics

__all__ = ["StageTimer", "TurnTimes", "ms", "timed", "within"]

T = TypeVar("T")

Stage = Literal["asr", "llm", "tts"]


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds."""
    return round(seconds * 1000.0)


class StageTimer:
    """Wall time of one run of a stage, from construction; `done()` observes it once in
    `pipeline_stage_duration_seconds{stage}` and gives the milliseconds."""

    def __init__(self, stage: Stage, metrics: Metrics) -> None:
        self.stage = stage
        self._metrics = metrics
        self._start = time.monotonic()

    def elapsed_s(self) -> float:
        """Seconds since the stage started (not observed)."""
        return time.monotonic() - self._start

    def done(self) -> int:
        """The stage finished: observe its duration and return it in milliseconds."""
        seconds = self.elapsed_s()
        self._metrics.stage(self.stage, seconds)
        return ms(seconds)


def timed(stage: Stage, metrics: Metrics) -> StageTimer:
    """Start timing one run of `stage` (asr, llm, tts)."""
    return StageTimer(stage, metrics)


async def within(budget_s: float, work: Awaitable[T], backend: object, what: str) -> T:
    """`await work`, or raise a `BackendError` of kind `timeout` for `backend` once
    `budget_s` (the stage budget still left) has passed; `work` is then cancelled."""
    try:
        async with asyncio.timeout(max(0.0, budget_s)):
            return await work
    except TimeoutError:
        raise BackendError(
            str(getattr(backend, "name", type(backend).__name__)),
            str(getattr(backend, "url", "")),
            "timeout",
            f"no {what} within the {budget_s:g} s budget",
        ) from None


@dataclass
class TurnTimes:
    """Timings of one turn, filled in as the stages finish; becomes the `metrics` event."""

    last_frame_arrival: float
    """Monotonic time the utterance's last speech frame reached `Call.feed()`."""
    asr_ms: int = 0
    llm_ms: int | None = None
    llm_first_token_ms: int | None = None
    tts_ms: int | None = None
    total_ms: int | None = None
    reply_parts: list[str] = field(default_factory=list)

    def end_to_end(self, metrics: Metrics | None = None) -> int:
        """Set `total_ms` from the last speech frame's arrival to now (observed in
        `pipeline_e2e_duration_seconds` when `metrics` is given)."""
        seconds = time.monotonic() - self.last_frame_arrival
        if metrics is not None:
            metrics.e2e_duration.observe(seconds)
        self.total_ms = ms(seconds)
        return self.total_ms

    def event(self, interrupted: bool) -> Event:
        """The turn's `metrics` event (spec §4.1 field names, plus two extras)."""
        return {
            "type": "metrics",
            "asr_ms": self.asr_ms,
            "llm_ms": self.llm_ms,
            "tts_ms": self.tts_ms,
            "total_ms": self.total_ms,
            "llm_first_token_ms": self.llm_first_token_ms,
            "interrupted": interrupted,
        }
