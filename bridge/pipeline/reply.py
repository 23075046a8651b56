"""The reply: one bot answer in flight, LLM → sentences → TTS → sink, as a handle.

A `Reply` (like LiveKit Agents' `SpeechHandle`) starts when it is made. One task pulls the
LLM stream into a per-reply token queue while it holds the shared LLM pool slot and never
waits on the sink, so a client that stops reading cannot hold other calls' LLM; a second
turns the queued tokens into `llm_token` events and feeds the sentence splitter; a third
synthesizes each finished sentence in order (within its TTS pool slot, which it never holds
while waiting on the sink) and hands it to the sink the moment it exists (`tts_ready`).

Budgets (`Voice.first_token_budget_s`, `Voice.tts_budget_s`) run from the start of the
stage, the pool wait included, since that is what the caller feels: the first token, and
each sentence's synthesis. A failed or late LLM or TTS is an `error` event and then the
"trouble" fallback phrase through the sink; the reply ends there. A sink that fails to take
audio is an `error` event at stage `output` and ends the reply as `interrupted`.
`cancel()` (barge-in) stops everything; `wait()` returns when it has ended either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import Literal

from bridge.backends.base import LLM, TTS, Audio, Message
from bridge.metrics import Metrics
from bridge.pipeline.fallbacks import FallbackKind, last_resort_tone
from bridge.pipeline.output import CallLog, Output
from bridge.pipeline.pools import hold
from bridge.pipeline.sentences import SentenceSplitter
from bridge.pipeline.timing import TurnTimes, ms, timed, within
from sip.tasks import TaskSet, cancel_and_wait

__all__ = ["HISTORY_MESSAGES", "Conversation", "Reply", "Voice"]

HISTORY_MESSAGES = 12
"""Default user/assistant messages of history kept (HISTORY_MESSAGES), plus the prompt."""


class Conversation:
    """A call's chat history: only the last `limit` messages are kept, in memory too, so a
    long call costs the same per turn as a short one."""

    def __init__(self, system_prompt: str, limit: int = HISTORY_MESSAGES) -> None:
        self._system: Message = {"role": "system", "content": system_prompt}
        self._history: deque[Message] = deque(maxlen=max(0, limit))

    def __len__(self) -> int:
        return len(self._history)

    def add(self, role: Literal["user", "assistant"], content: str) -> None:
        """Append one message (the oldest goes once `limit` are kept)."""
        self._history.append({"role": role, "content": content})

    def messages(self) -> list[Message]:
        """The system prompt and the kept messages, oldest first."""
        return [self._system, *self._history]


@dataclass(frozen=True)
class Voice:
    """What a call replies with: its LLM and TTS engine, their pools, and where output goes."""

    llm: LLM
    llm_pool: asyncio.Semaphore
    tts: TTS
    tts_pool: asyncio.Semaphore
    out: Output
    metrics: Metrics
    log: CallLog
    first_token_budget_s: float = 8.0
    """LLM_FIRST_TOKEN_TIMEOUT_S: from the LLM stage's start (pool wait included)."""
    tts_budget_s: float = 8.0
    """TTS_TIMEOUT_S: per sentence, from its synthesis' start (pool wait included)."""
    fallback: Callable[[FallbackKind], Audio] = last_resort_tone
    """The fallback clip of each kind for this call's TTS engine."""


@dataclass(eq=False)
class Reply:
    """The reply to the caller's `text`, which it adds to `conversation` as it starts; it
    runs as a task of `tasks` from the moment it is made."""

    voice: Voice
    conversation: Conversation
    text: str
    turn: TurnTimes
    tasks: InitVar[TaskSet]

    _llm_failed: bool = field(default=False, init=False)
    _output_failed: bool = field(default=False, init=False)

    def __post_init__(self, tasks: TaskSet) -> None:
        self._task = tasks.spawn(self._run(), "reply")

    @property
    def done(self) -> bool:
        """True once the reply has finished, failed or been cancelled."""
        return self._task.done()

    @property
    def interrupted(self) -> bool:
        """True when the reply was cancelled (barge-in) or the sink failed to take it."""
        return self._task.cancelled() or self._output_failed

    def cancel(self) -> None:
        """Stop the reply: the LLM stream and any pending synthesis (no-op once done)."""
        if not self._task.done():
            self._task.cancel()

    async def wait(self) -> None:
        """Wait until the reply has ended, however it ended; never raises its outcome."""
        await asyncio.wait({self._task})

    async def _run(self) -> None:
        self.conversation.add("user", self.text)
        tokens: asyncio.Queue[str | Exception | None] = asyncio.Queue()
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        pull = asyncio.create_task(self._pull(tokens))
        generate = asyncio.create_task(self._generate(tokens, sentences, pull))
        try:
            if await self._speak(sentences):
                await generate
        finally:
            await cancel_and_wait(pull, generate)

    async def _pull(self, tokens: asyncio.Queue[str | Exception | None]) -> None:
        """Hold an LLM slot only while streaming into `tokens`: nothing here awaits the sink."""
        voice = self.voice
        try:
            async with (
                voice.llm_pool,
                contextlib.aclosing(voice.llm.stream(self.conversation.messages())) as stream,
            ):
                async for token in stream:
                    if token:
                        tokens.put_nowait(token)
        except Exception as exc:
            tokens.put_nowait(exc)
            return
        tokens.put_nowait(None)

    async def _generate(
        self,
        tokens: asyncio.Queue[str | Exception | None],
        sentences: asyncio.Queue[str | None],
        pull: asyncio.Task[None],
    ) -> None:
        """Queued tokens → `llm_token` events and the sentence splitter."""
        voice, turn = self.voice, self.turn
        splitter = SentenceSplitter()
        timer = timed("llm", voice.metrics)
        try:
            while True:
                if turn.llm_first_token_ms is None:
                    left = voice.first_token_budget_s - timer.elapsed_s()
                    item = await within(left, tokens.get(), voice.llm, "first token")
                else:
                    item = await tokens.get()
                if item is None:
                    break
                if isinstance(item, Exception):
                    raise item
                if turn.llm_first_token_ms is None:
                    first = timer.elapsed_s()
                    voice.metrics.llm_first_token.observe(first)
                    turn.llm_first_token_ms = ms(first)
                turn.reply_parts.append(item)
                await voice.out.send({"type": "llm_token", "token": item})
                for sentence in splitter.feed(item):
                    sentences.put_nowait(sentence)
        except Exception as exc:
            pull.cancel()
            self._llm_failed = True
            for sentence in splitter.flush():
                sentences.put_nowait(sentence)
            sentences.put_nowait(None)
            await voice.out.stage_error("llm", exc)
            return
        for sentence in splitter.flush():
            sentences.put_nowait(sentence)
        sentences.put_nowait(None)
        turn.llm_ms = timer.done()
        full = "".join(turn.reply_parts).strip()
        voice.log.info("llm_done llm_ms=%d text=%r", turn.llm_ms, full)
        await voice.out.send({"type": "llm_done", "text": full, "latency_ms": turn.llm_ms})

    async def _speak(self, sentences: asyncio.Queue[str | None]) -> bool:
        """Synthesize sentences in order and hand each to the sink as soon as it exists;
        False when the reply had to stop (TTS failed, or the sink did)."""
        voice = self.voice
        while (sentence := await sentences.get()) is not None:
            timer = timed("tts", voice.metrics)
            try:
                synthesis = hold(voice.tts_pool, functools.partial(voice.tts.synthesize, sentence))
                audio = await within(voice.tts_budget_s, synthesis, voice.tts, "sentence audio")
            except Exception as exc:
                await voice.out.stage_error("tts", exc)
                await self._deliver(voice.fallback("trouble"))
                return False
            tts_ms = timer.done()
            if audio.pcm.size == 0:
                continue
            if not await self._deliver(audio):
                return False
            if self.turn.total_ms is None:
                self.turn.end_to_end(voice.metrics)
            if self.turn.tts_ms is None:
                self.turn.tts_ms = tts_ms
            await voice.out.send({"type": "tts_ready", "latency_ms": tts_ms})
        if self._llm_failed:
            await self._deliver(voice.fallback("trouble"))
        return True

    async def _deliver(self, audio: Audio) -> bool:
        if await self.voice.out.play(audio):
            return True
        self._output_failed = True
        return False
