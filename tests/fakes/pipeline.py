"""In-test backends and a recording sink for pipeline tests (they implement the Protocols)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bridge.backends.base import TTS, Audio, BackendError, Message, Transcript
from bridge.contract import Event

RATE = 16000


def tone(seconds: float, dbfs: float = -10.0, freq: float = 440.0) -> npt.NDArray[np.int16]:
    """A sine tone at `dbfs` RMS (loud enough for the energy VAD)."""
    t = np.arange(int(seconds * RATE)) / RATE
    amp = 32768.0 * 10 ** (dbfs / 20.0) * np.sqrt(2.0)
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def silence(seconds: float) -> npt.NDArray[np.int16]:
    return np.zeros(int(seconds * RATE), np.int16)


class _AlwaysReady:
    """A fake backend's readiness and close: always ready, nothing to close."""

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


class FakeASR(_AlwaysReady):
    """Returns scripted transcripts; raises the queued errors first.

    With a `clock` (e.g. the call's stream time), each request takes `delay_s` of that
    clock instead of wall time, so tests can assert on stream positions. With
    `runs_on=True` the work goes on after the caller gives up (cancel, timeout), as on a
    worker thread or a whisper.cpp server; `busy` / `max_busy` count requests at work.
    """

    name = "fake-asr"

    def __init__(
        self,
        texts: Sequence[str] = ("hello there",),
        delay_s: float = 0.01,
        clock: Callable[[], float] | None = None,
        runs_on: bool = False,
    ) -> None:
        self.texts = list(texts)
        self.delay_s = delay_s
        self.clock = clock
        self.runs_on = runs_on
        self.busy = 0
        self.max_busy = 0
        self.calls = 0
        self.pcms: list[npt.NDArray[np.int16]] = []
        self.errors: list[BaseException] = []

    async def transcribe(self, pcm16k: npt.NDArray[np.int16]) -> Transcript:
        self.calls += 1
        self.pcms.append(pcm16k)
        if self.runs_on:
            return await asyncio.shield(self._work())
        return await self._work()

    async def _work(self) -> Transcript:
        self.busy += 1
        self.max_busy = max(self.max_busy, self.busy)
        try:
            return await self._transcribe()
        finally:
            self.busy -= 1

    async def _transcribe(self) -> Transcript:
        if self.clock is None:
            await asyncio.sleep(self.delay_s)
        else:
            until = self.clock() + self.delay_s - 1e-9
            deadline = time.monotonic() + 10.0
            while self.clock() < until:
                if time.monotonic() > deadline:
                    raise AssertionError("the clock of FakeASR stopped: feed more audio")
                await asyncio.sleep(0.001)
        if self.errors:
            raise self.errors.pop(0)
        return Transcript(self.texts[(self.calls - 1) % len(self.texts)])


class FakeLLM(_AlwaysReady):
    """Streams a scripted reply word by word with a delay per token."""

    name = "fake-llm"

    def __init__(
        self,
        reply: str = "Hello, I am the bot. How can I help you today? Bye now.",
        token_delay_s: float = 0.005,
    ) -> None:
        self.reply = reply
        self.token_delay_s = token_delay_s
        self.calls: list[list[Message]] = []
        self.errors: list[BaseException] = []
        self.cancelled = 0
        self.finished_at: float | None = None

    async def stream(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        self.calls.append(list(messages))
        if self.errors:
            raise self.errors.pop(0)
        words = self.reply.split(" ")
        try:
            for i, word in enumerate(words):
                await asyncio.sleep(self.token_delay_s)
                yield word if i == 0 else " " + word
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        self.finished_at = time.monotonic()


class FakeTTS(_AlwaysReady):
    """Speaks `seconds_per_sentence` of a tone; remembers which text made which audio."""

    name = "fake-tts"

    def __init__(self, seconds_per_sentence: float = 0.5, delay_s: float = 0.01) -> None:
        self.seconds = seconds_per_sentence
        self.delay_s = delay_s
        self.texts: list[str] = []
        self.started_at: list[float] = []
        self.by_audio: dict[int, str] = {}
        self.errors: list[BaseException] = []

    async def synthesize(self, text: str) -> Audio:
        self.started_at.append(time.monotonic())
        self.texts.append(text)
        await asyncio.sleep(self.delay_s)
        if self.errors:
            raise self.errors.pop(0)
        audio = Audio(tone(self.seconds, -20.0, 300.0), 22050)
        self.by_audio[id(audio)] = text
        return audio


@dataclass
class FakeBackends:
    asr: FakeASR = field(default_factory=FakeASR)
    llm: FakeLLM = field(default_factory=FakeLLM)
    tts_piper: FakeTTS = field(default_factory=FakeTTS)

    @property
    def tts(self) -> Mapping[str, TTS]:
        return {"piper": self.tts_piper}

    async def warmup(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def backend_error(stage: str, kind: Any = "timeout") -> BackendError:
    return BackendError(f"fake-{stage}", f"http://fake-{stage}", kind, "injected by the test")


class RecordingSink:
    """A CallSink that records everything, with the call's stream position at each step."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.event_pos: list[float] = []
        self.audio: list[Audio] = []
        self.log: list[tuple[str, Any]] = []
        self.clears: list[float] = []
        self.hangups: list[str] = []
        self.call: Any = None
        self.changed = asyncio.Event()
        self._until = 0.0

    def _pos(self) -> float:
        return float(self.call.stream_time_s) if self.call is not None else 0.0

    async def send_event(self, event: Event) -> None:
        self.events.append(event)
        self.event_pos.append(self._pos())
        self.log.append(("event", event))
        self.changed.set()

    async def send_audio(self, audio: Audio) -> None:
        self.audio.append(audio)
        self.log.append(("audio", audio))
        self._until = max(self._until, time.monotonic()) + audio.duration_s
        self.changed.set()

    def clear_audio(self) -> None:
        self.clears.append(self._pos())
        self.log.append(("clear", self._pos()))
        self._until = 0.0

    def playing_until(self) -> float:
        """As if a client played the audio at real time from when it was handed over."""
        return self._until

    async def hangup(self, reason: str) -> None:
        self.hangups.append(reason)

    def types(self) -> list[str]:
        return [str(e["type"]) for e in self.events]

    async def wait_for_audio(self, audio: Audio, within_s: float = 5.0) -> float:
        """Wait until this very `audio` object was handed over; the monotonic time then."""
        await self._until_true(lambda: any(a is audio for a in self.audio), within_s, "audio")
        return time.monotonic()

    async def wait_for(self, kind: str, count: int = 1, within_s: float = 5.0) -> None:
        def seen() -> bool:
            return sum(1 for e in self.events if e["type"] == kind) >= count

        await self._until_true(seen, within_s, f"{count} {kind!r}")

    async def _until_true(self, condition: Callable[[], bool], within_s: float, what: str) -> None:
        deadline = time.monotonic() + within_s
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.types()}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass
