"""The reply: one bot answer in flight, LLM → sentences → TTS → sink, as a handle.

A `Reply` (like LiveKit Agents' `SpeechHandle`) starts when it is made: the LLM stream
becomes `llm_token` events and feeds the sentence splitter, while a second task synthesizes
each finished sentence in order and hands it to the sink the moment it exists (`tts_ready`
event). `cancel()` (barge-in) stops both; `wait()` returns when it has ended either way;
`interrupted` tells which.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import InitVar, dataclass
from typing import Literal

from bridge.backends.base import LLM, TTS, Audio, Message
from bridge.metrics import Metrics
from bridge.pipeline.output import CallLog, Output
from bridge.pipeline.sentences import SentenceSplitter
from bridge.pipeline.timing import TurnTimes, ms, timed
from sip.tasks import TaskSet

__all__ = ["HISTORY_MESSAGES", "Conversation", "Reply", "Voice"]

HISTORY_MESSAGES = 12
"""User/assistant messages of history sent to the LLM (plus the system prompt)."""


class Conversation:
    """A call's chat history and what of it the LLM is sent."""

    def __init__(self, system_prompt: str) -> None:
        self._system: Message = {"role": "system", "content": system_prompt}
        self._history: list[Message] = []

    def add(self, role: Literal["user", "assistant"], content: str) -> None:
        """Append one message."""
        self._history.append({"role": role, "content": content})

    def messages(self) -> list[Message]:
        """The system prompt and the last `HISTORY_MESSAGES` messages."""
        return [self._system, *self._history[-HISTORY_MESSAGES:]]


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


@dataclass(eq=False)
class Reply:
    """The reply to the caller's `text`, which it adds to `conversation` as it starts; it
    runs as a task of `tasks` from the moment it is made."""

    voice: Voice
    conversation: Conversation
    text: str
    turn: TurnTimes
    tasks: InitVar[TaskSet]

    def __post_init__(self, tasks: TaskSet) -> None:
        self._task = tasks.spawn(self._run(), "reply")

    @property
    def done(self) -> bool:
        """True once the reply has finished, failed or been cancelled."""
        return self._task.done()

    @property
    def interrupted(self) -> bool:
        """True when the reply was cancelled (barge-in) before it finished."""
        return self._task.cancelled()

    def cancel(self) -> None:
        """Stop the reply: the LLM stream and any pending synthesis (no-op once done)."""
        if not self._task.done():
            self._task.cancel()

    async def wait(self) -> None:
        """Wait until the reply has ended, however it ended; never raises its outcome."""
        await asyncio.wait({self._task})

    async def _run(self) -> None:
        self.conversation.add("user", self.text)
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._generate(sentences))
            group.create_task(self._speak(sentences))

    async def _generate(self, sentences: asyncio.Queue[str | None]) -> None:
        """Stream the LLM into `llm_token` events and the sentence splitter."""
        voice, turn = self.voice, self.turn
        splitter = SentenceSplitter()
        timer = timed("llm", voice.metrics)
        try:
            async with (
                voice.llm_pool,
                contextlib.aclosing(voice.llm.stream(self.conversation.messages())) as stream,
            ):
                async for token in stream:
                    if not token:
                        continue
                    if turn.llm_first_token_ms is None:
                        first = timer.elapsed_s()
                        voice.metrics.llm_first_token.observe(first)
                        turn.llm_first_token_ms = ms(first)
                    turn.reply_parts.append(token)
                    await voice.out.send({"type": "llm_token", "token": token})
                    for sentence in splitter.feed(token):
                        sentences.put_nowait(sentence)
        except Exception as exc:
            await voice.out.stage_error("llm", exc)
            sentences.put_nowait(None)
            return
        for sentence in splitter.flush():
            sentences.put_nowait(sentence)
        sentences.put_nowait(None)
        turn.llm_ms = timer.done()
        full = "".join(turn.reply_parts).strip()
        voice.log.info("llm_done llm_ms=%d text=%r", turn.llm_ms, full)
        await voice.out.send({"type": "llm_done", "text": full, "latency_ms": turn.llm_ms})

    async def _speak(self, sentences: asyncio.Queue[str | None]) -> None:
        """Synthesize sentences in order and hand each to the sink as soon as it exists."""
        voice = self.voice
        while (sentence := await sentences.get()) is not None:
            timer = timed("tts", voice.metrics)
            try:
                async with voice.tts_pool:
                    audio = await voice.tts.synthesize(sentence)
            except Exception as exc:
                await voice.out.stage_error("tts", exc)
                continue
            tts_ms = timer.done()
            if audio.pcm.size == 0:
                continue
            await self._hand_over(audio)
            if self.turn.tts_ms is None:
                self.turn.tts_ms = tts_ms
            await voice.out.send({"type": "tts_ready", "latency_ms": tts_ms})

    async def _hand_over(self, audio: Audio) -> None:
        await self.voice.out.sink.send_audio(audio)
        if self.turn.total_ms is None:
            self.turn.end_to_end(self.voice.metrics)
