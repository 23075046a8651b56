"""Speculative ASR (`ASR_SPECULATIVE_SILENCE_MS`, 0 = off): transcribe on a pause.

When a confirmed utterance has had that much trailing silence the VAD emits `SpeechPaused`
and, only if an ASR pool slot is free at that moment, the call transcribes the utterance so
far. If the caller stays quiet until `UtteranceEnded` and the final audio matches what was
transcribed (same samples through the last speech frame), the turn uses that transcript, or
awaits it while it is still running, instead of transcribing again (*hit*); otherwise the
speculation is cancelled and discarded (*miss*). A pause that finds the pool busy is
*skipped*. `asr_ms` still runs from the start of the turn (end of utterance) to the
transcript being available.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bridge.backends.base import ASR, Transcript
from bridge.contract import CALLER_RATE
from bridge.metrics import Metrics
from bridge.pipeline.output import CallLog
from bridge.pipeline.pools import hold
from media.vad import SpeechPaused, UtteranceEnded
from sip.tasks import TaskSet

__all__ = ["Guess", "Speculation", "SpeculativeResult"]

SpeculativeResult = Transcript | Exception | None
"""A speculative transcription's outcome; None when it found the ASR pool busy."""

Guess = asyncio.Task[SpeculativeResult]
"""A speculative transcription in flight (or finished) for one utterance."""


@dataclass
class _Attempt:
    """A transcription started on a pause, and the audio it was started on."""

    pcm: npt.NDArray[np.int16]
    audio_start_s: float
    speech_end_s: float
    task: Guess

    def matches(self, event: UtteranceEnded) -> bool:
        """True when `event` is this utterance with the same samples through its last
        speech frame (only the trailing silence may differ)."""
        if event.audio_start_s != self.audio_start_s or event.speech_end_s != self.speech_end_s:
            return False
        n = round((event.speech_end_s - event.audio_start_s) * CALLER_RATE)
        if self.pcm.size < n or event.pcm.size < n:
            return False
        return bool(np.array_equal(self.pcm[:n], event.pcm[:n]))


@dataclass(eq=False)
class Speculation:
    """One call's speculative ASR: started on pauses, kept or discarded at the utterance."""

    asr: ASR
    pool: asyncio.Semaphore
    metrics: Metrics
    log: CallLog
    tasks: TaskSet
    stream_time_s: Callable[[], float]
    hits: int = field(default=0, init=False)
    """Turns whose transcript came from a speculative transcription."""
    misses: int = field(default=0, init=False)
    """Speculative transcriptions discarded because the caller spoke again."""
    skipped: int = field(default=0, init=False)
    """Pauses with no speculation because the ASR pool had no free slot."""
    _current: _Attempt | None = field(default=None, init=False)

    def on_pause(self, event: SpeechPaused) -> None:
        """Start transcribing the utterance so far, if an ASR slot is free right now."""
        previous, self._current = self._current, None
        if previous is not None:
            self._discard(previous, "the caller spoke again")
        if self.pool.locked():
            self._skip(event.time_s)
            return
        task = self.tasks.spawn(self._transcribe(event.pcm), "speculative-asr")
        self._current = _Attempt(event.pcm, event.audio_start_s, event.speech_end_s, task)
        self.log.debug(
            "speculative asr started at %.2fs on %.2fs of audio",
            event.time_s,
            event.pcm.size / CALLER_RATE,
        )

    def take(self, event: UtteranceEnded) -> Guess | None:
        """The speculation for this finished utterance if its audio matches, else None
        (a speculation on different audio is discarded)."""
        attempt, self._current = self._current, None
        if attempt is None:
            return None
        if attempt.matches(event):
            return attempt.task
        self._discard(attempt, "the final utterance differs")
        return None

    async def transcript(self, guess: Guess | None, pcm: npt.NDArray[np.int16]) -> Transcript:
        """The utterance's transcript: the speculative one when there is one, else a new one."""
        if guess is not None and not guess.cancelled():
            outcome = await asyncio.shield(guess)
            if outcome is not None:
                self.hits += 1
                self.metrics.asr_speculation.labels(outcome="hit").inc()
                self.log.debug("speculative asr used")
                if isinstance(outcome, Exception):
                    raise outcome
                return outcome
        return await hold(self.pool, functools.partial(self.asr.transcribe, pcm))

    def _skip(self, time_s: float) -> None:
        self.skipped += 1
        self.metrics.asr_speculation.labels(outcome="skipped").inc()
        self.log.debug("speculative asr skipped at %.2fs: asr pool busy", time_s)

    def _discard(self, attempt: _Attempt, why: str) -> None:
        attempt.task.cancel()
        self.misses += 1
        self.metrics.asr_speculation.labels(outcome="miss").inc()
        self.log.debug("speculative asr discarded: %s", why)

    async def _transcribe(self, pcm: npt.NDArray[np.int16]) -> SpeculativeResult:
        """Transcribe `pcm` in a slot that is free now; never wait behind other requests.

        The outcome (transcript or error) is returned, not raised: it becomes the turn's
        ASR outcome only if the utterance ends as it was when this started. A discard
        cancels this task, not the backend's work: that keeps its slot (`hold`) until the
        ASR has really finished, so the pool never sends the turn behind a busy backend
        while counting it free.
        """
        if self.pool.locked():
            self._skip(self.stream_time_s())
            return None
        try:
            return await hold(self.pool, functools.partial(self.asr.transcribe, pcm))
        except Exception as exc:
            return exc
