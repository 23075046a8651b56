"""One call through the pipeline: a thin coordinator that owns the call's tasks.

A `Call` is transport-independent: a door feeds it 16 kHz caller PCM (`feed`) and receives
events and bot audio through its `CallSink`. Per call there are two long-lived tasks, both
in the call's `TaskSet` and cancelled (and waited for) by `close()`:

- the *reader* runs the `Listener` (frames → VAD → utterances, barge-in gate); a pause
  starts a speculative transcription (`Speculation`) and each finished utterance is queued;
- the *turn* task takes utterances one at a time: ASR (the speculative transcript when it
  matches) → `transcript` event → in conversation mode a `Reply` (LLM → sentences → TTS →
  sink) that barge-in cancels → the turn's `metrics` event.

ASR has a budget (`ASR_TIMEOUT_S`, from the end of the utterance, pool wait included); a
failed or late transcription is an `error` event and, in conversation mode, the "repeat"
fallback phrase (`fallbacks.Fallbacks`) through the sink.

Backend concurrency is bounded by the `Pools` shared by all calls. Whether the bot is still
speaking comes from the sink (`CallSink.playing_until()`).

End-to-end time (`total_ms`, `pipeline_e2e_duration_seconds`) runs from the *arrival* of the
caller's last speech frame — the wall time at which the door called `feed()` with the
samples the VAD marks as the end of speech — to the moment the first sentence of bot audio
is handed to the sink. With real-time input this is about `VAD_SILENCE_TIMEOUT_MS` more than
the time from end-of-utterance detection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

import numpy as np
import numpy.typing as npt

from bridge.backends.base import Audio
from bridge.config import Settings
from bridge.contract import CALLER_RATE, CallOptions, CallSink
from bridge.metrics import Metrics
from bridge.pipeline.fallbacks import FallbackKind, Fallbacks
from bridge.pipeline.listener import Listener, make_vad
from bridge.pipeline.output import CallLog, Output
from bridge.pipeline.pools import BackendSet, Pools
from bridge.pipeline.reply import Conversation, Reply, Voice
from bridge.pipeline.speculation import Guess, Speculation
from bridge.pipeline.timing import TurnTimes, timed, within
from media.vad import VAD, UtteranceEnded
from sip.tasks import TaskSet

__all__ = ["UTTERANCE_QUEUE", "Call"]

log = logging.getLogger("bridge.call")

T = TypeVar("T")

UTTERANCE_QUEUE = 4
"""Finished utterances waiting for the turn task before the oldest is dropped."""


class _Part(Generic[T]):
    """A read-only attribute of the call that one of its parts keeps."""

    def __init__(self, part: str, attr: str, doc: str) -> None:
        self._part, self._attr, self.__doc__ = part, attr, doc

    def __get__(self, call: object, owner: type | None = None) -> T:
        return cast(T, getattr(getattr(call, self._part), self._attr))


@dataclass
class _Utterance:
    pcm: npt.NDArray[np.int16]
    last_frame_arrival: float  # monotonic time the last speech frame reached feed()
    speculation: Guess | None = None


class Call:
    """One call's pipeline; implements `bridge.contract.CallHandle`."""

    def __init__(
        self,
        options: CallOptions,
        sink: CallSink,
        settings: Settings,
        backends: BackendSet,
        metrics: Metrics,
        pools: Pools,
        on_closed: Callable[[Call], None] | None = None,
        vad: VAD | None = None,
        fallbacks: Fallbacks | None = None,
    ) -> None:
        self.call_id = options.call_id
        self.options = options
        self.sink = sink
        tts = backends.tts.get(options.tts_engine) if options.mode == "conversation" else None
        tts_pool = pools.tts.get(options.tts_engine)
        if options.mode == "conversation" and tts is None:
            raise ValueError(
                f"tts_engine {options.tts_engine!r} is not available "
                f"(available: {', '.join(sorted(backends.tts)) or 'none'})"
            )
        self._metrics = metrics
        self._on_closed = on_closed
        self.log = CallLog(log, {"call_id": self.call_id})
        self._tasks = TaskSet(f"call-{self.call_id}", self.log)
        self._out = Output(sink, metrics, self.log, options.tts_engine)
        self._fallbacks = fallbacks if fallbacks is not None else Fallbacks.from_settings(settings)
        self._asr_budget_s = settings.asr_timeout_s
        self._asr = backends.asr
        self._voice = (
            Voice(
                backends.llm,
                pools.llm,
                tts,
                tts_pool,
                self._out,
                metrics,
                self.log,
                first_token_budget_s=settings.llm_first_token_timeout_s,
                tts_budget_s=settings.tts_timeout_s,
                fallback=self._fallback_audio,
            )
            if tts is not None and tts_pool is not None
            else None
        )
        self._speculation = Speculation(
            backends.asr,
            pools.asr,
            metrics,
            self.log,
            self._tasks,
            lambda: self.stream_time_s,
        )
        self._listener = Listener(
            vad if vad is not None else make_vad(settings),
            metrics,
            self.log,
            barge_in_active=lambda: settings.barge_in and self.bot_speaking(),
            on_dtmf=lambda digit: self._out.send({"type": "dtmf", "digit": digit}),
            on_barge_in=self._barge_in,
            on_pause=self._speculation.on_pause,
            on_utterance=self._on_utterance,
        )
        self._utterances: asyncio.Queue[_Utterance] = asyncio.Queue(UTTERANCE_QUEUE)
        self._conversation = Conversation(settings.llm_system_prompt, settings.history_messages)
        self._reply: Reply | None = None
        self._closed = False
        self._started = False

    # --- CallHandle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the call's reader and turn tasks (the CallManager does this)."""
        if self._started:
            return
        self._started = True
        self._tasks.spawn(self._listener.run(), "reader")
        self._tasks.spawn(self._turn_loop(), "turns")
        self.log.info(
            "call started door=%s mode=%s tts=%s",
            self.options.door,
            self.options.mode,
            self.options.tts_engine,
        )

    def feed(self, pcm16k: npt.NDArray[np.int16]) -> None:
        """Queue caller audio (mono int16, 16 kHz); never blocks, drops the oldest when full."""
        if self._closed:
            return
        try:
            pcm = np.asarray(pcm16k).reshape(-1)
            if pcm.dtype != np.int16:
                pcm = np.clip(pcm, -32768, 32767).astype(np.int16)
        except (TypeError, ValueError):
            self.log.warning("ignored caller audio that is not numeric PCM")
            return
        if pcm.size:
            self._listener.feed(pcm)

    def dtmf(self, digit: str) -> None:
        """Report a caller DTMF digit as a `dtmf` event, in order with the audio."""
        if not self._closed and digit:
            self._listener.dtmf(str(digit)[:1])

    async def close(self, reason: str = "hangup") -> None:
        """End the call: cancel every task it owns and wait for them. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._tasks.cancel_all()
        self.log.info(
            "call ended reason=%s dropped_frames=%d speculation hits=%d misses=%d skipped=%d",
            reason,
            self.dropped_frames,
            self.speculation_hits,
            self.speculation_misses,
            self.speculation_skipped,
        )
        if self._on_closed is not None:
            self._on_closed(self)

    # --- introspection ------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once `close()` has begun."""
        return self._closed

    stream_time_s = _Part[float](
        "_listener", "stream_time_s", "Seconds of caller audio the VAD has processed so far."
    )
    dropped_frames = _Part[int](
        "_listener", "dropped_frames", "Caller frames dropped because the input queue was full."
    )
    speech_started_at_s = _Part[float | None](
        "_listener",
        "speech_started_at_s",
        "Stream position (seconds of caller audio processed) of the last VAD speech start.",
    )
    arrival_clock_frames = _Part[int](
        "_listener",
        "arrival_clock_frames",
        "Frames the arrival clock remembers (those since the last utterance's end).",
    )
    speculation_hits = _Part[int](
        "_speculation", "hits", "Turns whose transcript came from a speculative transcription."
    )
    speculation_misses = _Part[int](
        "_speculation",
        "misses",
        "Speculative transcriptions discarded because the caller spoke again.",
    )
    speculation_skipped = _Part[int](
        "_speculation",
        "skipped",
        "Pauses with no speculation because the ASR pool had no free slot.",
    )

    @property
    def history_length(self) -> int:
        """User/assistant messages of LLM history the call keeps (at most HISTORY_MESSAGES)."""
        return len(self._conversation)

    @property
    def task_count(self) -> int:
        """Tasks this call still owns (0 after `close()`)."""
        return len(self._tasks)

    def bot_speaking(self) -> bool:
        """True while the sink is still playing bot audio (`CallSink.playing_until()`)."""
        return self.sink.playing_until() > time.monotonic()

    # --- listener events ----------------------------------------------------------------

    def _barge_in(self) -> None:
        self.sink.clear_audio()
        self._metrics.barge_ins.inc()
        if self._reply is not None:
            self._reply.cancel()
        self.log.info("barge-in at %.2fs: bot audio cleared, reply cancelled", self.stream_time_s)

    def _fallback_audio(self, kind: FallbackKind) -> Audio:
        return self._fallbacks.audio(kind, self.options.tts_engine)

    def _on_utterance(self, event: UtteranceEnded, last_frame_arrival: float) -> None:
        utterance = _Utterance(event.pcm, last_frame_arrival, self._speculation.take(event))
        try:
            self._utterances.put_nowait(utterance)
        except asyncio.QueueFull:
            dropped = self._utterances.get_nowait()
            if dropped.speculation is not None:
                dropped.speculation.cancel()
            self._utterances.put_nowait(utterance)
            self.log.warning("utterance queue full: oldest utterance dropped")

    # --- turns: ASR → transcript → reply → metrics ---------------------------------------

    async def _turn_loop(self) -> None:
        while True:
            utterance = await self._utterances.get()
            try:
                await self._turn(utterance)
            except Exception as exc:
                await self._out.stage_error("pipeline", exc)

    async def _turn(self, utterance: _Utterance) -> None:
        turn = TurnTimes(utterance.last_frame_arrival)
        timer = timed("asr", self._metrics)
        try:
            transcript = await within(
                self._asr_budget_s,
                self._speculation.transcript(utterance.speculation, utterance.pcm),
                self._asr,
                "transcript",
            )
        except Exception as exc:
            await self._out.stage_error("asr", exc)
            if self.options.mode == "conversation":
                await self._out.play(self._fallback_audio("repeat"))
            return
        turn.asr_ms = timer.done()
        text = transcript.text.strip()
        if not text:
            self.log.debug(
                "empty transcript for a %.2fs utterance", utterance.pcm.size / CALLER_RATE
            )
            return
        self.log.info("transcript asr_ms=%d text=%r", turn.asr_ms, text)
        await self._out.send({"type": "transcript", "text": text, "latency_ms": turn.asr_ms})
        if self.options.mode == "transcribe_only":
            turn.end_to_end()
            await self._out.send(turn.event(interrupted=False))
            return
        assert self._voice is not None, "a conversation has a TTS engine and its pool"
        reply = Reply(self._voice, self._conversation, text, turn, self._tasks)
        self._reply = reply
        try:
            await reply.wait()
        finally:
            self._reply = None
        if turn.reply_parts:
            self._conversation.add("assistant", "".join(turn.reply_parts))
        await self._out.send(turn.event(interrupted=reply.interrupted))
