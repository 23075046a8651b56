"""One call through the pipeline: caller audio → VAD → ASR → LLM → sentences → TTS → door.

A `Call` is transport-independent: a door feeds it 16 kHz caller PCM (`feed`) and receives
events and bot audio through its `CallSink`. Per call there are two long-lived tasks:

- the *reader* takes caller frames from a bounded queue, runs the VAD, handles barge-in and
  queues finished utterances;
- the *turn* task takes utterances one at a time: ASR → `transcript` event → (conversation
  mode) a *reply* task that streams the LLM (`llm_token` events) into the sentence splitter
  while a second task synthesizes each finished sentence and hands it to the sink
  (`tts_ready` event), then the `metrics` event of the turn.

Every task belongs to the call and is cancelled by `close()`. Backend concurrency is bounded
by the pools (`ASR_POOL_SIZE`, `LLM_POOL_SIZE`, `TTS_POOL_SIZE` semaphores) shared by all
calls; stage times include the wait for a pool slot, since that is what the caller feels.

End-to-end time (`total_ms`, `pipeline_e2e_duration_seconds`) runs from the *arrival* of the
caller's last speech frame — the wall time at which the door called `feed()` with the
samples the VAD marks as the end of speech, looked up from a per-frame arrival clock — to
the moment the first sentence of bot audio is handed to the sink. With real-time input this
is about `VAD_SILENCE_TIMEOUT_MS` more than the time from end-of-utterance detection.

Speculative ASR (`ASR_SPECULATIVE_SILENCE_MS`, 0 = off): when a confirmed utterance has had
that much trailing silence the VAD emits `SpeechPaused` and, only if an ASR pool slot is free
at that moment, the call transcribes the utterance so far. If the caller stays quiet until
`UtteranceEnded` and the final audio matches what was transcribed (same samples through the
last speech frame), the turn uses that transcript, or awaits it while it is still running,
instead of transcribing again; otherwise the speculation is cancelled and discarded. `asr_ms`
still runs from the start of the turn (end of utterance) to the transcript being available.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from bridge.backends.base import ASR, LLM, TTS, Audio, BackendError, Message, Transcript
from bridge.config import Settings
from bridge.contract import CALLER_RATE, CallOptions, CallSink, Event
from bridge.metrics import Metrics
from bridge.sentences import SentenceSplitter
from media.vad import (
    VAD,
    EnergyVAD,
    SileroVAD,
    SpeechPaused,
    SpeechStarted,
    UtteranceEnded,
    rms_dbfs,
)

__all__ = ["BackendSet", "Call", "Pools", "backend_concurrency", "make_vad"]

log = logging.getLogger("bridge.call")

FEED_QUEUE_FRAMES = 500
"""Caller frames buffered per call before the oldest are dropped (10 s of 20 ms frames)."""

UTTERANCE_QUEUE = 4
"""Finished utterances waiting for the turn task before the oldest is dropped."""

HISTORY_MESSAGES = 12
"""User/assistant messages of history sent to the LLM (plus the system prompt)."""

_ARRIVAL_FRAMES = 1600
"""Frames of arrival-clock history kept for the end-to-end timing (> the longest utterance)."""


class BackendSet(Protocol):
    """What a call needs from `bridge.backends.Backends`."""

    @property
    def asr(self) -> ASR: ...

    @property
    def llm(self) -> LLM: ...

    @property
    def tts(self) -> Mapping[str, TTS]: ...


def backend_concurrency(backend: object, configured: int) -> int:
    """How many requests to let through to `backend` at once.

    The configured pool size, capped by what the backend itself can run in parallel: its
    `max_concurrency` attribute when it has one, else 1 for an in-process (`embedded://`)
    model, which runs on a single worker thread. Requests beyond that wait in the pool's
    semaphore, where the stage timing sees them, instead of inside the backend, where they
    would eat into its timeout.
    """
    limit = getattr(backend, "max_concurrency", None)
    if isinstance(limit, int) and limit > 0:
        return min(configured, limit)
    if str(getattr(backend, "url", "")).startswith("embedded://"):
        return 1
    return configured


@dataclass(frozen=True)
class Pools:
    """Backend concurrency limits shared by every call of one bridge (TTS per engine)."""

    asr: asyncio.Semaphore
    llm: asyncio.Semaphore
    tts: Mapping[str, asyncio.Semaphore]

    @classmethod
    def from_settings(cls, settings: Settings, backends: BackendSet) -> Pools:
        """Semaphores sized by ASR_POOL_SIZE, LLM_POOL_SIZE and TTS_POOL_SIZE, each capped
        by `backend_concurrency`."""
        return cls(
            asyncio.Semaphore(backend_concurrency(backends.asr, settings.asr_pool_size)),
            asyncio.Semaphore(backend_concurrency(backends.llm, settings.llm_pool_size)),
            {
                engine: asyncio.Semaphore(backend_concurrency(tts, settings.tts_pool_size))
                for engine, tts in backends.tts.items()
            },
        )


def make_vad(settings: Settings) -> VAD:
    """The VAD chosen by VAD_ENGINE, with the spec §5 parameters from the settings."""
    if settings.vad_engine == "silero":
        return SileroVAD(
            CALLER_RATE,
            min_speech_ms=settings.vad_min_speech_ms,
            silence_timeout_ms=settings.vad_silence_timeout_ms,
            pre_speech_ms=settings.vad_pre_speech_ms,
            pause_ms=settings.asr_speculative_silence_ms,
        )
    return EnergyVAD(
        CALLER_RATE,
        threshold_db=settings.vad_speech_threshold_db,
        min_speech_ms=settings.vad_min_speech_ms,
        silence_timeout_ms=settings.vad_silence_timeout_ms,
        pre_speech_ms=settings.vad_pre_speech_ms,
        pause_ms=settings.asr_speculative_silence_ms,
    )


class _CallLog(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"call={self.extra['call_id'] if self.extra else '?'} {msg}", kwargs


_SpeculativeResult = Transcript | Exception | None
"""A speculative transcription's outcome; None when it found the ASR pool busy."""


@dataclass
class _Speculation:
    """A transcription started on a pause, and the audio it was started on."""

    pcm: npt.NDArray[np.int16]
    audio_start_s: float
    speech_end_s: float
    task: asyncio.Task[_SpeculativeResult]

    def matches(self, event: UtteranceEnded) -> bool:
        """True when `event` is this utterance with the same samples through its last
        speech frame (only the trailing silence may differ)."""
        if event.audio_start_s != self.audio_start_s or event.speech_end_s != self.speech_end_s:
            return False
        n = round((event.speech_end_s - event.audio_start_s) * CALLER_RATE)
        if self.pcm.size < n or event.pcm.size < n:
            return False
        return bool(np.array_equal(self.pcm[:n], event.pcm[:n]))


@dataclass
class _Utterance:
    pcm: npt.NDArray[np.int16]
    last_frame_arrival: float  # monotonic time the last speech frame reached feed()
    speculation: asyncio.Task[_SpeculativeResult] | None = None


@dataclass
class _Turn:
    """Timings of one turn, filled in as the stages finish."""

    last_frame_arrival: float
    asr_ms: int = 0
    llm_ms: int | None = None
    llm_first_token_ms: int | None = None
    tts_ms: int | None = None
    total_ms: int | None = None
    reply_parts: list[str] = field(default_factory=list)

    def event(self, interrupted: bool) -> Event:
        return {
            "type": "metrics",
            "asr_ms": self.asr_ms,
            "llm_ms": self.llm_ms,
            "tts_ms": self.tts_ms,
            "total_ms": self.total_ms,
            "llm_first_token_ms": self.llm_first_token_ms,
            "interrupted": interrupted,
        }


def _ms(seconds: float) -> int:
    return round(seconds * 1000.0)


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
    ) -> None:
        self.call_id = options.call_id
        self.options = options
        self.sink = sink
        self._settings = settings
        self._asr = backends.asr
        self._llm = backends.llm
        self._tts = backends.tts.get(options.tts_engine) if options.mode == "conversation" else None
        self._tts_pool = pools.tts.get(options.tts_engine)
        if options.mode == "conversation" and self._tts is None:
            raise ValueError(
                f"tts_engine {options.tts_engine!r} is not available "
                f"(available: {', '.join(sorted(backends.tts)) or 'none'})"
            )
        self._metrics = metrics
        self._pools = pools
        self._on_closed = on_closed
        self._vad = vad if vad is not None else make_vad(settings)
        self._normal_threshold_db = settings.vad_speech_threshold_db
        self.log = _CallLog(log, {"call_id": self.call_id})

        self._frames: asyncio.Queue[tuple[npt.NDArray[np.int16] | str, float]] = asyncio.Queue(
            FEED_QUEUE_FRAMES
        )
        self._utterances: asyncio.Queue[_Utterance] = asyncio.Queue(UTTERANCE_QUEUE)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reply: asyncio.Task[None] | None = None
        self._history: list[Message] = []
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=_ARRIVAL_FRAMES)
        self._samples = 0
        self._recent: deque[npt.NDArray[np.int16]] = deque(maxlen=16)
        self._bot_until = 0.0
        self._closed = False
        self._started = False
        self.dropped_frames = 0
        self._speculation: _Speculation | None = None
        self.speculation_hits = 0
        """Turns whose transcript came from a speculative transcription."""
        self.speculation_misses = 0
        """Speculative transcriptions discarded because the caller spoke again."""
        self.speculation_skipped = 0
        """Pauses with no speculation because the ASR pool had no free slot."""
        self.speech_started_at_s: float | None = None
        """Stream position (seconds of caller audio processed) of the last VAD speech start."""

    # --- CallHandle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the call's reader and turn tasks (the CallManager does this)."""
        if self._started:
            return
        self._started = True
        self._spawn(self._read_loop(), "reader")
        self._spawn(self._turn_loop(), "turns")
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
            self._put((pcm, time.monotonic()))

    def dtmf(self, digit: str) -> None:
        """Report a caller DTMF digit as a `dtmf` event, in order with the audio."""
        if not self._closed and digit:
            self._put((str(digit)[:1], time.monotonic()))

    async def close(self, reason: str = "hangup") -> None:
        """End the call: cancel every task it owns and wait for them. Idempotent."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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

    @property
    def stream_time_s(self) -> float:
        """Seconds of caller audio the VAD has processed so far."""
        return self._samples / CALLER_RATE

    @property
    def task_count(self) -> int:
        """Tasks this call still owns (0 after `close()`)."""
        return sum(1 for t in self._tasks if not t.done())

    def bot_speaking(self) -> bool:
        """True while bot audio handed to the sink is (by its duration) still playing."""
        return time.monotonic() < self._bot_until

    # --- internals: tasks and queues ----------------------------------------------------

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(f"call-{self.call_id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def _put(self, item: tuple[npt.NDArray[np.int16] | str, float]) -> None:
        try:
            self._frames.put_nowait(item)
        except asyncio.QueueFull:
            self._frames.get_nowait()
            self._frames.put_nowait(item)
            self.dropped_frames += 1
            self._metrics.audio_chunks_dropped.inc()
            if self.dropped_frames in (1, 100) or self.dropped_frames % 1000 == 0:
                self.log.warning("input queue full: %d frames dropped", self.dropped_frames)

    async def _send(self, event: Event) -> None:
        try:
            await self.sink.send_event(event)
        except Exception as exc:  # a door that went away must not kill the pipeline
            self.log.debug("event %s not delivered: %r", event.get("type"), exc)

    async def _stage_error(self, stage: str, exc: BaseException) -> None:
        """Report a failed stage: error event, error counter, log line; the call goes on."""
        if isinstance(exc, BackendError):
            error_type: str = exc.kind
            self.log.warning("%s failed: %s", stage, exc)
        else:
            error_type = "internal"
            self.log.error("%s failed unexpectedly", stage, exc_info=exc)
        self._metrics.error(stage, error_type)
        await self._send({"type": "error", "stage": stage, "message": str(exc) or error_type})

    # --- reader: frames → VAD → barge-in / utterances ------------------------------------

    async def _read_loop(self) -> None:
        while True:
            item, arrival = await self._frames.get()
            if isinstance(item, str):
                await self._send({"type": "dtmf", "digit": item})
                continue
            self._metrics.audio_chunks.inc()
            self._samples += item.size
            self._arrivals.append((self._samples, arrival))
            self._recent.append(item)
            speaking = self._settings.barge_in and self.bot_speaking()
            if isinstance(self._vad, EnergyVAD):
                self._vad.threshold_db = (
                    self._settings.barge_in_threshold_db if speaking else self._normal_threshold_db
                )
                self._vad.min_speech_ms = (
                    self._settings.barge_in_min_speech_ms
                    if speaking
                    else self._settings.vad_min_speech_ms
                )
            try:
                events = self._vad.process(item)
            except Exception:
                self.log.exception("VAD failed on a frame; frame skipped")
                continue
            for event in events:
                if isinstance(event, SpeechStarted):
                    self._on_speech_started()
                elif isinstance(event, SpeechPaused):
                    self._on_speech_paused(event)
                elif isinstance(event, UtteranceEnded):
                    self._on_utterance(event)

    def _on_speech_started(self) -> None:
        self.speech_started_at_s = self.stream_time_s
        if not (self._settings.barge_in and self.bot_speaking()):
            return
        if not isinstance(self._vad, EnergyVAD):
            # Silero has no dB threshold: gate barge-in on the recent audio's level instead.
            window = int(self._settings.barge_in_min_speech_ms * CALLER_RATE / 1000)
            recent = np.concatenate(list(self._recent))[-window:]
            if rms_dbfs(recent) < self._settings.barge_in_threshold_db:
                return
        self.sink.clear_audio()
        self._bot_until = 0.0
        self._metrics.barge_ins.inc()
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
        self.log.info("barge-in at %.2fs: bot audio cleared, reply cancelled", self.stream_time_s)

    def _arrival_of(self, stream_s: float) -> float:
        """Wall time at which the frame holding stream time `stream_s` was fed."""
        sample = int(stream_s * CALLER_RATE)
        for end_sample, arrival in self._arrivals:
            if end_sample >= sample:
                return arrival
        return self._arrivals[-1][1] if self._arrivals else time.monotonic()

    def _on_utterance(self, event: UtteranceEnded) -> None:
        self._metrics.speech_segments.inc()
        utterance = _Utterance(event.pcm, self._arrival_of(event.speech_end_s))
        speculation, self._speculation = self._speculation, None
        if speculation is not None:
            if speculation.matches(event):
                utterance.speculation = speculation.task
            else:
                self._discard(speculation, "the final utterance differs")
        try:
            self._utterances.put_nowait(utterance)
        except asyncio.QueueFull:
            dropped = self._utterances.get_nowait()
            if dropped.speculation is not None:
                dropped.speculation.cancel()
            self._utterances.put_nowait(utterance)
            self.log.warning("utterance queue full: oldest utterance dropped")

    # --- speculative ASR on a pause ------------------------------------------------------

    def _on_speech_paused(self, event: SpeechPaused) -> None:
        """Start transcribing the utterance so far, if an ASR slot is free right now."""
        previous, self._speculation = self._speculation, None
        if previous is not None:
            self._discard(previous, "the caller spoke again")
        elif self._pools.asr.locked():
            self._skip_speculation(event.time_s)
            return
        task = self._spawn(self._speculate(event.pcm, previous), "speculative-asr")
        self._speculation = _Speculation(event.pcm, event.audio_start_s, event.speech_end_s, task)
        self.log.debug(
            "speculative asr started at %.2fs on %.2fs of audio",
            event.time_s,
            event.pcm.size / CALLER_RATE,
        )

    def _skip_speculation(self, time_s: float) -> None:
        self.speculation_skipped += 1
        self._metrics.asr_speculation.labels(outcome="skipped").inc()
        self.log.debug("speculative asr skipped at %.2fs: asr pool busy", time_s)

    def _discard(self, speculation: _Speculation, why: str) -> None:
        speculation.task.cancel()
        self.speculation_misses += 1
        self._metrics.asr_speculation.labels(outcome="miss").inc()
        self.log.debug("speculative asr discarded: %s", why)

    async def _speculate(
        self, pcm: npt.NDArray[np.int16], previous: _Speculation | None
    ) -> _SpeculativeResult:
        """Transcribe `pcm` in a slot that is free now; never wait behind other requests.

        The outcome (transcript or error) is returned, not raised: it becomes the turn's
        ASR outcome only if the utterance ends as it was when this started.
        """
        if previous is not None:
            # let the cancelled predecessor give its slot back before looking for one
            await asyncio.gather(previous.task, return_exceptions=True)
        pool = self._pools.asr
        if pool.locked():
            self._skip_speculation(self.stream_time_s)
            return None
        try:
            async with pool:  # free: acquired without waiting
                return await self._asr.transcribe(pcm)
        except Exception as exc:
            return exc

    # --- turns: ASR → transcript → reply → metrics ---------------------------------------

    async def _turn_loop(self) -> None:
        while True:
            utterance = await self._utterances.get()
            try:
                await self._turn(utterance)
            except Exception as exc:
                await self._stage_error("pipeline", exc)

    async def _transcript(self, utterance: _Utterance) -> Transcript:
        """The utterance's transcript: the speculative one when there is one, else a new one."""
        if utterance.speculation is not None and not utterance.speculation.cancelled():
            outcome = await utterance.speculation
            if outcome is not None:
                self.speculation_hits += 1
                self._metrics.asr_speculation.labels(outcome="hit").inc()
                self.log.debug("speculative asr used")
                if isinstance(outcome, Exception):
                    raise outcome
                return outcome
        async with self._pools.asr:
            return await self._asr.transcribe(utterance.pcm)

    async def _turn(self, utterance: _Utterance) -> None:
        turn = _Turn(utterance.last_frame_arrival)
        start = time.monotonic()
        try:
            transcript = await self._transcript(utterance)
        except Exception as exc:
            await self._stage_error("asr", exc)
            return
        asr_s = time.monotonic() - start
        self._metrics.stage("asr", asr_s)
        turn.asr_ms = _ms(asr_s)
        text = transcript.text.strip()
        if not text:
            self.log.debug("empty transcript for a %.2fs utterance", utterance.pcm.size / 16000)
            return
        self.log.info("transcript asr_ms=%d text=%r", turn.asr_ms, text)
        await self._send({"type": "transcript", "text": text, "latency_ms": turn.asr_ms})
        if self.options.mode == "transcribe_only":
            turn.total_ms = _ms(time.monotonic() - turn.last_frame_arrival)
            await self._send(turn.event(interrupted=False))
            return
        reply = self._spawn(self._reply_to(text, turn), "reply")
        self._reply = reply
        try:
            await asyncio.wait({reply})
        finally:
            self._reply = None
        interrupted = reply.cancelled()
        if turn.reply_parts:
            self._history.append({"role": "assistant", "content": "".join(turn.reply_parts)})
        await self._send(turn.event(interrupted=interrupted))

    def _messages(self) -> list[Message]:
        system: Message = {"role": "system", "content": self._settings.llm_system_prompt}
        return [system, *self._history[-HISTORY_MESSAGES:]]

    async def _reply_to(self, text: str, turn: _Turn) -> None:
        self._history.append({"role": "user", "content": text})
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._generate(turn, sentences))
            group.create_task(self._speak(turn, sentences))

    async def _generate(self, turn: _Turn, sentences: asyncio.Queue[str | None]) -> None:
        """Stream the LLM into `llm_token` events and the sentence splitter."""
        splitter = SentenceSplitter()
        start = time.monotonic()
        try:
            async with (
                self._pools.llm,
                contextlib.aclosing(self._llm.stream(self._messages())) as stream,
            ):
                async for token in stream:
                    if not token:
                        continue
                    if turn.llm_first_token_ms is None:
                        first = time.monotonic() - start
                        self._metrics.llm_first_token.observe(first)
                        turn.llm_first_token_ms = _ms(first)
                    turn.reply_parts.append(token)
                    await self._send({"type": "llm_token", "token": token})
                    for sentence in splitter.feed(token):
                        sentences.put_nowait(sentence)
        except Exception as exc:
            await self._stage_error("llm", exc)
            sentences.put_nowait(None)
            return
        for sentence in splitter.flush():
            sentences.put_nowait(sentence)
        sentences.put_nowait(None)
        llm_s = time.monotonic() - start
        self._metrics.stage("llm", llm_s)
        turn.llm_ms = _ms(llm_s)
        full = "".join(turn.reply_parts).strip()
        self.log.info("llm_done llm_ms=%d text=%r", turn.llm_ms, full)
        await self._send({"type": "llm_done", "text": full, "latency_ms": turn.llm_ms})

    async def _speak(self, turn: _Turn, sentences: asyncio.Queue[str | None]) -> None:
        """Synthesize sentences in order and hand each to the sink as soon as it exists."""
        assert self._tts is not None and self._tts_pool is not None
        while (sentence := await sentences.get()) is not None:
            start = time.monotonic()
            try:
                async with self._tts_pool:
                    audio = await self._tts.synthesize(sentence)
            except Exception as exc:
                await self._stage_error("tts", exc)
                continue
            tts_s = time.monotonic() - start
            self._metrics.stage("tts", tts_s)
            if audio.pcm.size == 0:
                continue
            await self._hand_over(audio, turn)
            if turn.tts_ms is None:
                turn.tts_ms = _ms(tts_s)
            await self._send({"type": "tts_ready", "latency_ms": _ms(tts_s)})

    async def _hand_over(self, audio: Audio, turn: _Turn) -> None:
        await self.sink.send_audio(audio)
        now = time.monotonic()
        if turn.total_ms is None:
            e2e = now - turn.last_frame_arrival
            self._metrics.e2e_duration.observe(e2e)
            turn.total_ms = _ms(e2e)
        self._bot_until = max(self._bot_until, now) + audio.duration_s
