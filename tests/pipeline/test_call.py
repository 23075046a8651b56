"""The call pipeline with in-test backends: ordering, streaming, barge-in, errors, cleanup."""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import Semaphore
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from bridge.backends.base import Audio, BackendError
from bridge.config import Settings
from bridge.contract import CallLimitExceeded, CallOptions, Event
from bridge.metrics import Metrics
from bridge.pipeline import Call, CallManager, Fallbacks, Pools
from bridge.pipeline.output import PLAIN_WORDS, CallLog, Output
from bridge.pipeline.pools import hold
from bridge.pipeline.reply import Conversation, Reply, Voice
from bridge.pipeline.timing import TurnTimes
from sip.tasks import TaskSet
from tests.fakes.pipeline import (
    FakeASR,
    FakeBackends,
    FakeLLM,
    FakeTTS,
    RecordingSink,
    backend_error,
    silence,
    tone,
)

FRAME = 320


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, sip_enabled=False, **overrides)  # type: ignore[call-arg]


def open_call(
    backends: FakeBackends,
    mode: str = "conversation",
    pools: Pools | None = None,
    sink: RecordingSink | None = None,
    **overrides: Any,
) -> tuple[Call, RecordingSink, Metrics]:
    s = settings(**overrides)
    metrics = Metrics()
    sink = sink if sink is not None else RecordingSink()
    call = Call(
        CallOptions(door="websocket", mode=mode),  # type: ignore[arg-type]
        sink,
        s,
        backends,
        metrics,
        pools if pools is not None else Pools.from_settings(s, backends),
    )
    sink.call = call
    call.start()
    return call, sink, metrics


async def feed(call: Call, pcm: npt.NDArray[np.int16], realtime: bool = False) -> None:
    """Feed 20 ms frames, yielding to the call between frames (paced at real time if asked)."""
    start = time.monotonic()
    for i in range(0, pcm.size, FRAME):
        call.feed(pcm[i : i + FRAME])
        if realtime:
            await asyncio.sleep(max(0.0, start + (i + FRAME) / 16000 - time.monotonic()))
        else:
            await asyncio.sleep(0)


def utterance(seconds: float = 0.6) -> npt.NDArray[np.int16]:
    return np.concatenate([silence(0.3), tone(seconds), silence(0.5)])


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def fail_next(backends: FakeBackends, stage: str, kind: str) -> None:
    """The next request to `stage`'s fake backend raises a `BackendError` of `kind`."""
    target: Any = {"asr": backends.asr, "llm": backends.llm, "tts": backends.tts_piper}[stage]
    target.errors.append(backend_error(stage, kind))


async def failed_turn_then_next(
    call: Call, sink: RecordingSink, stage: str, clip: Audio | None = None
) -> None:
    """Feed a turn that fails at `stage` (wait for its error and, given, the fallback
    `clip`), then a second turn until its metrics; close the call."""
    try:
        await feed(call, utterance())
        await sink.wait_for("error")
        if clip is not None:
            await sink.wait_for_audio(clip)
        if stage != "asr":
            await sink.wait_for("metrics")
        await feed(call, utterance())
        await sink.wait_for("metrics", 1 if stage == "asr" else 2)
    finally:
        await call.close()


def plain_error(stage: str) -> Event:
    """The error event a caller gets when `stage` fails (the piper engine's words)."""
    return {"type": "error", "stage": stage, "message": PLAIN_WORDS[stage].format(engine="piper")}


Feeder = Callable[[Call, npt.NDArray[np.int16]], Awaitable[None]]


async def talk(
    call: Call, sink: RecordingSink, *turns: npt.NDArray[np.int16], feeder: Feeder = feed
) -> None:
    """Feed each turn's audio and wait for that turn's `metrics` event; then close the call."""
    try:
        for count, pcm in enumerate(turns, 1):
            await feeder(call, pcm)
            await sink.wait_for("metrics", count)
    finally:
        await call.close()


async def test_conversation_turn_streams_in_order() -> None:
    backends = FakeBackends(
        llm=FakeLLM("Sure thing. The price is 3.5 dollars, Mr. Smith. Anything else? Bye.", 0.03),
        tts_piper=FakeTTS(0.4, delay_s=0.02),
    )
    call, sink, metrics = open_call(backends)
    await talk(call, sink, utterance())

    types = sink.types()
    assert types[0] == "transcript"
    assert types[-1] == "metrics"
    assert types.count("llm_done") == 1
    first = sink.events[0]
    assert first["type"] == "transcript"
    assert first == {"type": "transcript", "text": "hello there", "latency_ms": first["latency_ms"]}
    # the sentences are spoken in order, one audio and one tts_ready each
    expected = ["Sure thing.", "The price is 3.5 dollars, Mr. Smith.", "Anything else?", "Bye."]
    assert backends.tts_piper.texts == expected
    assert [backends.tts_piper.by_audio[id(a)] for a in sink.audio] == expected
    assert types.count("tts_ready") == len(expected)
    # TTS began while the LLM was still generating, and audio preceded llm_done
    assert backends.llm.finished_at is not None
    assert backends.tts_piper.started_at[0] < backends.llm.finished_at
    kinds = [k for k, _ in sink.log]
    assert kinds.index("audio") < types.index("llm_done") + kinds.count("audio")
    first_audio = kinds.index("audio")
    llm_done_at = next(
        i for i, (k, e) in enumerate(sink.log) if k == "event" and e["type"] == "llm_done"
    )
    assert first_audio < llm_done_at
    # tokens reassemble into the llm_done text
    tokens = "".join(e["token"] for e in sink.events if e["type"] == "llm_token")
    done = next(e for e in sink.events if e["type"] == "llm_done")
    assert tokens.strip() == done["text"]
    assert isinstance(done["latency_ms"], int)
    # the metrics event (spec field names) and Prometheus
    m: dict[str, Any] = dict(sink.events[-1])
    assert m["type"] == "metrics"
    for key in ("asr_ms", "llm_ms", "tts_ms", "total_ms"):
        assert isinstance(m[key], int) and m[key] >= 0, key
    assert m["llm_first_token_ms"] <= m["llm_ms"]
    assert m["interrupted"] is False
    assert sample(metrics, "pipeline_stage_duration_seconds_count", stage="asr") == 1
    assert sample(metrics, "pipeline_stage_duration_seconds_count", stage="llm") == 1
    assert sample(metrics, "pipeline_stage_duration_seconds_count", stage="tts") == len(expected)
    assert sample(metrics, "pipeline_e2e_duration_seconds_count") == 1
    assert sample(metrics, "vad_speech_segments_total") == 1
    assert sample(metrics, "audio_chunks_processed_total") == len(range(0, utterance().size, FRAME))
    # the LLM got the system prompt and the caller's words
    assert backends.llm.calls[0][0]["role"] == "system"
    assert backends.llm.calls[0][-1] == {"role": "user", "content": "hello there"}


async def test_history_carries_into_the_next_turn() -> None:
    backends = FakeBackends()
    backends.asr.texts = ["first question", "second question"]
    call, sink, _ = open_call(backends)
    await talk(call, sink, utterance(), utterance())
    second = backends.llm.calls[1]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[1]["content"] == "first question"
    assert second[2]["content"] == backends.llm.reply
    assert second[3]["content"] == "second question"


async def test_transcribe_only_makes_no_llm_or_tts_calls() -> None:
    backends = FakeBackends()
    call, sink, metrics = open_call(backends, mode="transcribe_only")
    try:
        await feed(call, utterance())
        await feed(call, utterance())
        await sink.wait_for("metrics", 2)
    finally:
        await call.close()
    assert sink.types() == ["transcript", "metrics", "transcript", "metrics"]
    assert backends.llm.calls == []
    assert backends.tts_piper.texts == []
    assert sink.audio == []
    metrics_event = sink.events[1]
    assert metrics_event["type"] == "metrics"
    assert metrics_event["llm_ms"] is None and metrics_event["tts_ms"] is None
    assert isinstance(metrics_event["total_ms"], int)
    assert sample(metrics, "pipeline_stage_duration_seconds_count", stage="llm") == 0


@pytest.mark.parametrize("stage", ["asr", "llm", "tts"])
async def test_backend_error_reports_and_the_call_carries_on(stage: str) -> None:
    backends = FakeBackends()
    fail_next(backends, stage, "timeout")
    call, sink, metrics = open_call(backends)
    await failed_turn_then_next(call, sink, stage)
    error = next(e for e in sink.events if e["type"] == "error")
    assert error == plain_error(stage)
    assert sample(metrics, "pipeline_errors_total", stage=stage, error_type="timeout") == 1
    # the next turn is complete: transcript, reply, audio, metrics
    after_error = sink.types()[sink.types().index("error") + 1 :]
    assert "transcript" in after_error
    assert "tts_ready" in after_error
    assert sink.events[-1]["type"] == "metrics"
    assert sink.events[-1]["tts_ms"] is not None


async def test_unexpected_exception_is_an_error_event_too() -> None:
    backends = FakeBackends()
    backends.tts_piper.errors.append(RuntimeError("boom"))
    call, sink, metrics = open_call(backends)
    await talk(call, sink, utterance())
    assert plain_error("tts") in sink.events
    assert sample(metrics, "pipeline_errors_total", stage="tts", error_type="internal") == 1
    # the first sentence failed: the reply stops at the fallback phrase, the turn ends
    assert backends.tts_piper.texts == ["Hello, I am the bot."]
    assert len(sink.audio) == 1 and sink.events[-1]["type"] == "metrics"


async def test_barge_in_clears_audio_and_cancels_the_reply() -> None:
    backends = FakeBackends(
        llm=FakeLLM("One. Two. Three. Four. Five. Six. Seven. Eight.", token_delay_s=0.15),
        tts_piper=FakeTTS(seconds_per_sentence=3.0),
    )
    call, sink, metrics = open_call(backends)
    try:
        await feed(call, utterance())
        await sink.wait_for("tts_ready")
        assert sink.audio and call.bot_speaking()
        onset = call.stream_time_s + 0.2
        await feed(call, np.concatenate([silence(0.2), tone(0.5), silence(0.5)]), realtime=True)
        await sink.wait_for("metrics")
        cancelled_by_barge_in = backends.llm.cancelled
    finally:
        await call.close()
    assert len(sink.clears) == 1
    assert call.speech_started_at_s is not None
    # in stream time, audio was cleared within 100 ms of the VAD's speech start
    assert 0.0 <= sink.clears[0] - call.speech_started_at_s <= 0.1
    # and the VAD confirmed speech within its min-speech window (+ one frame) of the onset
    assert call.speech_started_at_s - onset <= 0.25 + 0.1
    assert cancelled_by_barge_in == 1
    # nothing more of the interrupted reply was spoken: after the clear, no audio comes
    # before the barge-in utterance's own transcript
    clear_at = next(i for i, (k, _) in enumerate(sink.log) if k == "clear")
    after = sink.log[clear_at + 1 :]
    next_transcript = next(
        (i for i, (k, e) in enumerate(after) if k == "event" and e["type"] == "transcript"),
        len(after),
    )
    assert not any(k == "audio" for k, _ in after[:next_transcript])
    first_metrics = next(e for e in sink.events if e["type"] == "metrics")
    assert first_metrics["interrupted"] is True
    assert sample(metrics, "pipeline_barge_ins_total") == 1


async def test_quiet_speech_does_not_barge_in_while_the_bot_talks() -> None:
    """Echo-level audio (above VAD_SPEECH_THRESHOLD_DB, below BARGE_IN_THRESHOLD_DB)."""
    backends = FakeBackends(tts_piper=FakeTTS(seconds_per_sentence=3.0))
    call, sink, _ = open_call(backends, vad_speech_threshold_db=-40, barge_in_threshold_db=-20)
    try:
        await feed(call, utterance())
        await sink.wait_for("tts_ready")
        await feed(call, np.concatenate([tone(0.5, dbfs=-30), silence(0.4)]), realtime=True)
    finally:
        await call.close()
    assert sink.clears == []


async def test_barge_in_disabled_keeps_talking() -> None:
    backends = FakeBackends(tts_piper=FakeTTS(seconds_per_sentence=3.0))
    call, sink, _ = open_call(backends, barge_in=False)
    try:
        await feed(call, utterance())
        await sink.wait_for("tts_ready")
        await feed(call, np.concatenate([tone(0.5), silence(0.4)]), realtime=True)
    finally:
        await call.close()
    assert sink.clears == []


class PlayingSink(RecordingSink):
    """A sink that says it is playing bot audio until `until`, whatever it was handed."""

    until = 0.0

    def playing_until(self) -> float:
        return self.until


async def test_bot_speaking_comes_from_the_sink() -> None:
    sink = PlayingSink()
    call, _, metrics = open_call(FakeBackends(), mode="transcribe_only", sink=sink)
    try:
        assert not call.bot_speaking()
        sink.until = time.monotonic() + 30.0  # e.g. audio still queued in the door
        assert call.bot_speaking()
        await feed(call, np.concatenate([tone(0.5), silence(0.4)]), realtime=True)
        await sink.wait_for("metrics")
    finally:
        await call.close()
    # caller speech while the sink plays is a barge-in, though no audio came from this call
    assert len(sink.clears) == 1
    assert sample(metrics, "pipeline_barge_ins_total") == 1
    assert sink.types() == ["transcript", "metrics"]


async def test_reply_handle_finishes_or_is_cancelled() -> None:
    backends = FakeBackends(llm=FakeLLM("One. Two. " + "word " * 100, token_delay_s=0.02))
    metrics, sink = Metrics(), RecordingSink()
    log = CallLog(logging.getLogger("test"), {"call_id": "reply"})
    tasks = TaskSet("reply-test", log)
    out = Output(sink, metrics, log)
    voice = Voice(backends.llm, Semaphore(1), backends.tts_piper, Semaphore(1), out, metrics, log)
    conversation = Conversation("You are a test.")
    reply = Reply(voice, conversation, "hi", TurnTimes(time.monotonic()), tasks)
    await sink.wait_for("tts_ready")
    assert not reply.done and not reply.interrupted
    reply.cancel()
    await reply.wait()
    assert reply.done and reply.interrupted
    assert backends.llm.cancelled == 1
    assert "llm_done" not in sink.types()
    assert reply.turn.total_ms is not None and reply.turn.llm_ms is None
    assert conversation.messages() == [
        {"role": "system", "content": "You are a test."},
        {"role": "user", "content": "hi"},
    ]

    backends.llm.reply = "Short answer."
    finished = Reply(voice, conversation, "again", TurnTimes(time.monotonic()), tasks)
    await finished.wait()
    assert finished.done and not finished.interrupted
    assert sink.types()[-2:] == ["llm_done", "tts_ready"]
    assert finished.turn.llm_ms is not None and finished.turn.tts_ms is not None
    # timed() observed each finished stage once: one LLM stream, each spoken sentence
    assert sample(metrics, "pipeline_stage_duration_seconds_count", stage="llm") == 1
    spoken = sink.types().count("tts_ready")
    assert sample(metrics, "pipeline_stage_duration_seconds_count", stage="tts") == spoken
    finished.cancel()  # a no-op once done
    assert not finished.interrupted
    assert len(tasks) == 0


async def test_close_cancels_every_task() -> None:
    backends = FakeBackends(llm=FakeLLM("word " * 200, token_delay_s=0.05))
    call, sink, _ = open_call(backends)
    await feed(call, utterance())
    await sink.wait_for("llm_token")
    assert call.task_count >= 3  # reader, turns, reply (+ its children)
    await call.close("test")
    await asyncio.sleep(0)
    assert call.task_count == 0
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith(f"call-{call.call_id}")]
    assert leftovers == []
    assert backends.llm.cancelled == 1
    await call.close("again")  # idempotent
    call.feed(tone(0.1))  # ignored after close, no error


async def test_feed_never_blocks_and_drops_the_oldest() -> None:
    backends = FakeBackends()
    call, _, metrics = open_call(backends)
    try:
        for _ in range(600):  # no yield: the reader cannot run
            call.feed(silence(0.02))
        assert call.dropped_frames == 100
        assert sample(metrics, "pipeline_audio_chunks_dropped_total") == 100
        call.feed(np.array([[1.5, 2.5]]))  # wrong dtype and shape: converted, not raised
        call.feed(np.zeros(0, np.int16))
    finally:
        await call.close()


async def test_dtmf_event_in_order() -> None:
    call, sink, _ = open_call(FakeBackends())
    try:
        call.dtmf("5")
        call.dtmf("#")
        await sink.wait_for("dtmf", 2)
    finally:
        await call.close()
    assert [e for e in sink.events if e["type"] == "dtmf"] == [
        {"type": "dtmf", "digit": "5"},
        {"type": "dtmf", "digit": "#"},
    ]


async def test_manager_limit_and_shutdown() -> None:
    s = settings(max_concurrent_calls=2)
    metrics = Metrics()
    manager = CallManager(s, FakeBackends(), metrics)
    sinks = [RecordingSink() for _ in range(3)]
    a = await manager.open(CallOptions(door="sip"), sinks[0])
    await manager.open(CallOptions(door="websocket"), sinks[1])
    with pytest.raises(CallLimitExceeded):
        await manager.open(CallOptions(door="sip"), sinks[2])
    assert manager.active == 2
    assert sample(metrics, "pipeline_calls_active") == 2
    assert sample(metrics, "pipeline_calls_rejected_total", door="sip", reason="full") == 1
    await a.close()
    assert manager.active == 1
    await manager.shutdown(1.0)
    assert manager.active == 0
    assert sinks[1].hangups == ["shutdown"]
    assert sample(metrics, "pipeline_calls_active") == 0
    assert sample(metrics, "pipeline_calls_total") == 2
    with pytest.raises(CallLimitExceeded):
        await manager.open(CallOptions(door="websocket"), RecordingSink())


async def test_unknown_tts_engine_is_refused() -> None:
    from bridge.pipeline import UnknownTtsEngine

    manager = CallManager(settings(), FakeBackends(), Metrics())
    with pytest.raises(UnknownTtsEngine, match="coqui"):
        await manager.open(CallOptions(door="websocket", tts_engine="coqui"), RecordingSink())
    assert manager.active == 0


def test_pools_are_capped_by_backend_concurrency() -> None:
    from bridge.pipeline import backend_concurrency

    class Embedded:
        url = "embedded://faster-whisper/tiny.en"

    class Remote:
        url = "http://whisper:8178"

    class Declared:
        url = "http://ollama:11434"
        max_concurrency = 3

    assert backend_concurrency(Embedded(), 10) == 1
    assert backend_concurrency(Remote(), 10) == 10
    assert backend_concurrency(Declared(), 10) == 3
    assert backend_concurrency(Declared(), 2) == 2

    class TwoServers:  # WHISPER_URL with two whisper.cpp servers, ASR_POOL_SIZE=1 each
        url = "http://a:8178,http://b:8178"
        servers = ("a", "b")
        max_concurrency = 2

    assert backend_concurrency(TwoServers(), 1) == 2
    assert backend_concurrency(TwoServers(), 4) == 2


async def test_silero_vad_engine_finds_the_utterance() -> None:
    from tests.support import espeak_pcm, with_silence

    backends = FakeBackends()
    call, sink, metrics = open_call(backends, mode="transcribe_only", vad_engine="silero")
    await talk(call, sink, with_silence(espeak_pcm("Hello, how are you today?"), 16000, 0.5, 0.8))
    assert sink.types() == ["transcript", "metrics"]
    # one final transcription, plus one discarded speculation per mid-sentence pause
    assert backends.asr.calls == 1 + call.speculation_misses
    assert sample(metrics, "vad_speech_segments_total") == 1


# --- speculative ASR (ASR_SPECULATIVE_SILENCE_MS) ---------------------------------------
# The fake ASR takes ASR_STREAM_S of *stream* time, and `feed_clocked` waits for the reader
# to process each frame, so every position below is exact to a frame or two.

ASR_STREAM_S = 0.1
SPEECH_END_S = 0.9  # utterance(): 0.3 s silence, 0.6 s tone


async def feed_clocked(call: Call, pcm: npt.NDArray[np.int16]) -> None:
    """Feed 20 ms frames, each only after the reader has processed the one before."""
    for i in range(0, pcm.size, FRAME):
        call.feed(pcm[i : i + FRAME])
        target = call.stream_time_s + pcm[i : i + FRAME].size / 16000 - 1e-9
        for _ in range(10_000):
            if call.stream_time_s >= target:
                break
            await asyncio.sleep(0)
        else:
            raise AssertionError("the call's reader stopped processing frames")
        await asyncio.sleep(0.002)  # let waiting tasks (the fake ASR's clock) see the frame


def clocked_backends() -> FakeBackends:
    backends = FakeBackends()
    backends.asr.delay_s = ASR_STREAM_S
    return backends


async def transcript_position(speculative_ms: int) -> tuple[float, Call, FakeBackends]:
    backends = clocked_backends()
    call, sink, _ = open_call(
        backends, mode="transcribe_only", asr_speculative_silence_ms=speculative_ms
    )
    backends.asr.clock = lambda: call.stream_time_s
    await talk(call, sink, np.concatenate([utterance(), silence(0.5)]), feeder=feed_clocked)
    assert sink.types() == ["transcript", "metrics"]
    return sink.event_pos[0], call, backends


async def test_speculation_hit_transcribes_once_and_earlier_in_stream_time() -> None:
    off_at, off_call, off = await transcript_position(0)
    on_at, on_call, on = await transcript_position(120)

    # off: end of utterance (speech end + 300 ms), then a 100 ms transcription
    assert off_at == pytest.approx(SPEECH_END_S + 0.3 + ASR_STREAM_S, abs=0.045)
    assert off.asr.calls == 1
    assert (off_call.speculation_hits, off_call.speculation_misses) == (0, 0)
    # on: transcription started 120 ms into the silence and finished before its end
    assert on_at == pytest.approx(SPEECH_END_S + 0.3, abs=0.045)
    assert on_at < off_at - 0.05
    assert on.asr.calls == 1
    assert (on_call.speculation_hits, on_call.speculation_misses) == (1, 0)
    # the speculative audio is the final utterance's, cut 120 ms after the speech
    assert on.asr.pcms[0].size == round((SPEECH_END_S + 0.12 - 0.1) * 16000)
    np.testing.assert_array_equal(on.asr.pcms[0], off.asr.pcms[0][: on.asr.pcms[0].size])


async def test_speculation_still_running_at_end_of_utterance_is_awaited() -> None:
    backends = clocked_backends()
    backends.asr.delay_s = 0.4  # finishes 0.22 s after the utterance ends
    call, sink, metrics = open_call(backends, mode="transcribe_only")
    backends.asr.clock = lambda: call.stream_time_s
    await talk(call, sink, np.concatenate([utterance(), silence(0.5)]), feeder=feed_clocked)
    assert sink.types() == ["transcript", "metrics"]
    assert backends.asr.calls == 1 and call.speculation_hits == 1
    assert metrics.asr_speculation.labels(outcome="hit")._value.get() == 1
    assert metrics.asr_speculation.labels(outcome="miss")._value.get() == 0
    assert sink.event_pos[0] == pytest.approx(SPEECH_END_S + 0.12 + 0.4, abs=0.045)


async def test_caller_resuming_discards_the_speculation() -> None:
    backends = clocked_backends()
    backends.asr.texts = ["first half", "the whole utterance"]
    call, sink, metrics = open_call(backends)
    backends.asr.clock = lambda: call.stream_time_s
    first, gap, second = tone(0.5), silence(0.2), tone(0.5, freq=660.0)
    pcm = np.concatenate([silence(0.3), first, gap, second, silence(0.8)])
    await talk(call, sink, pcm, feeder=feed_clocked)
    transcripts = [e["text"] for e in sink.events if e["type"] == "transcript"]
    assert transcripts == ["the whole utterance"]
    assert backends.asr.calls == 2
    assert (call.speculation_hits, call.speculation_misses) == (1, 1)
    assert sample(metrics, "vad_speech_segments_total") == 1
    assert sample(metrics, "pipeline_stage_duration_seconds_count", stage="asr") == 1
    # the discarded request saw only the first half; the used one holds both halves
    assert backends.asr.pcms[0].size < (0.2 + 0.5 + 0.2) * 16000
    whole = backends.asr.pcms[1]
    start = 0.1  # 200 ms of pre-roll before the onset at 0.3 s
    n = round((0.5 + 0.2 + 0.5) * 16000)
    np.testing.assert_array_equal(
        whole[round(0.2 * 16000) : round(0.2 * 16000) + n], pcm[round(0.3 * 16000) :][:n]
    )
    assert whole.size >= round((0.3 + 1.2 - start) * 16000)
    # the LLM was asked once, with the final transcript
    assert len(backends.llm.calls) == 1
    assert backends.llm.calls[0][-1]["content"] == "the whole utterance"


async def test_error_of_a_discarded_speculation_is_not_reported() -> None:
    backends = clocked_backends()
    backends.asr.errors.append(backend_error("asr", "timeout"))
    call, sink, metrics = open_call(backends, mode="transcribe_only")
    backends.asr.clock = lambda: call.stream_time_s
    pcm = np.concatenate([silence(0.3), tone(0.5), silence(0.2), tone(0.5), silence(0.8)])
    await talk(call, sink, pcm, feeder=feed_clocked)
    assert sink.types() == ["transcript", "metrics"]
    assert sample(metrics, "pipeline_errors_total", stage="asr", error_type="timeout") == 0


async def test_busy_asr_pool_means_no_speculative_request() -> None:
    backends = clocked_backends()
    s = settings(asr_pool_size=1)
    pools = Pools.from_settings(s, backends)
    call, sink, _ = open_call(backends, mode="transcribe_only", pools=pools, asr_pool_size=1)
    backends.asr.clock = lambda: call.stream_time_s
    await pools.asr.acquire()  # another call's transcription holds the only slot
    try:
        await feed_clocked(call, np.concatenate([utterance(), silence(0.2)]))
        assert backends.asr.calls == 0
        assert call.speculation_skipped == 1
        pools.asr.release()
        await feed_clocked(call, silence(0.3))
        await sink.wait_for("metrics")
    finally:
        await call.close()
    assert sink.types() == ["transcript", "metrics"]
    assert backends.asr.calls == 1
    assert (call.speculation_hits, call.speculation_misses) == (0, 0)


async def test_speculation_off_behaves_as_before() -> None:
    """ASR_SPECULATIVE_SILENCE_MS=0: the VAD never pauses, one request after the utterance."""
    from bridge.pipeline import make_vad
    from media.vad import SpeechPaused

    vad = make_vad(settings(asr_speculative_silence_ms=0))
    events = vad.process(np.concatenate([utterance(), silence(0.5)]))
    assert not any(isinstance(e, SpeechPaused) for e in events)

    backends = FakeBackends()
    call, sink, _ = open_call(backends, asr_speculative_silence_ms=0)
    await talk(call, sink, utterance(), utterance())
    turn = ["transcript"] + ["llm_token"] * len(backends.llm.reply.split(" ")) + ["llm_done"]
    assert [t for t in sink.types() if t != "tts_ready"] == [*turn, "metrics"] * 2
    assert backends.asr.calls == 2
    assert (call.speculation_hits, call.speculation_misses, call.speculation_skipped) == (0, 0, 0)


@pytest.mark.parametrize(("speculative", "timeout"), [(300, 300), (400, 300), (20, 20)])
def test_speculative_silence_must_be_below_the_vad_timeout(speculative: int, timeout: int) -> None:
    from bridge.config import ConfigError, load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(
            _env_file=None,
            asr_speculative_silence_ms=speculative,
            vad_silence_timeout_ms=timeout,
        )
    assert "\n" not in str(info.value)
    assert "ASR_SPECULATIVE_SILENCE_MS must be less than VAD_SILENCE_TIMEOUT_MS" in str(info.value)


def test_speculative_silence_default_and_off() -> None:
    from bridge.config import load_settings

    assert settings().asr_speculative_silence_ms == 120
    assert (
        load_settings(_env_file=None, asr_speculative_silence_ms=0).asr_speculative_silence_ms == 0
    )
    assert (
        load_settings(_env_file=None, asr_speculative_silence_ms=299).asr_speculative_silence_ms
        == 299
    )


# --- fallbacks, budgets and lifecycle (issue 13) ----------------------------------------------


async def open_with_fallbacks(
    backends: FakeBackends, **overrides: Any
) -> tuple[Call, RecordingSink, Metrics, Fallbacks]:
    fallbacks = Fallbacks.from_settings(settings(**overrides))
    await fallbacks.prepare(backends.tts, timeout_s=2.0)
    s = settings(**overrides)
    metrics = Metrics()
    sink = RecordingSink()
    call = Call(
        CallOptions(door="websocket", mode="conversation"),
        sink,
        s,
        backends,
        metrics,
        Pools.from_settings(s, backends),
        fallbacks=fallbacks,
    )
    sink.call = call
    call.start()
    return call, sink, metrics, fallbacks


@pytest.mark.parametrize("stage", ["asr", "llm", "tts"])
async def test_failed_stage_plays_the_fallback_and_the_next_turn_works(stage: str) -> None:
    backends = FakeBackends()
    backends.asr.texts = ["first question", "second question"]
    call, sink, metrics, fallbacks = await open_with_fallbacks(backends)
    fail_next(backends, stage, "connect")
    clip = fallbacks.audio("repeat" if stage == "asr" else "trouble", "piper")
    await failed_turn_then_next(call, sink, stage, clip)
    assert backends.tts_piper.by_audio[id(clip)] == (
        "Sorry, I didn't catch that, could you say it again?"
        if stage == "asr"
        else "I'm having trouble right now, one moment please."
    )
    error = next(e for e in sink.events if e["type"] == "error")
    assert error == plain_error(stage)
    assert sample(metrics, "pipeline_errors_total", stage=stage, error_type="connect") == 1
    assert sink.events[-1]["type"] == "metrics" and sink.events[-1]["tts_ms"] is not None


def slow(stage: str, backends: FakeBackends, seconds: float) -> None:
    if stage == "asr":
        backends.asr.delay_s = seconds
    elif stage == "llm":
        backends.llm.token_delay_s = seconds
    else:
        backends.tts_piper.delay_s = seconds


@pytest.mark.parametrize("stage", ["asr", "llm", "tts"])
async def test_stage_past_its_budget_plays_the_fallback_in_time(stage: str) -> None:
    budget = 0.3
    backends = FakeBackends()
    slow(stage, backends, 3.0)
    call, sink, metrics, fallbacks = await open_with_fallbacks(
        backends,
        asr_timeout_s=budget,
        llm_first_token_timeout_s=budget,
        tts_timeout_s=budget,
        asr_speculative_silence_ms=0,
    )
    clip = fallbacks.audio("repeat" if stage == "asr" else "trouble", "piper")
    try:
        await feed(call, utterance(), realtime=True)
        ended = time.monotonic()  # the utterance ends within the VAD timeout of here
        heard_after = await sink.wait_for_audio(clip) - ended
        slow(stage, backends, 0.01)
        await sink.wait_for("error")
    finally:
        await call.close()
    assert any(a is clip for a in sink.audio)
    # budget + 300 ms, plus 1 s of margin for this loaded machine
    assert heard_after < budget + 0.3 + 1.0
    assert plain_error(stage) in sink.events
    assert sample(metrics, "pipeline_errors_total", stage=stage, error_type="timeout") == 1


async def test_fallback_plays_when_no_tts_worked_at_start_up() -> None:
    backends = FakeBackends()
    backends.tts_piper.errors.extend([backend_error("tts", "connect")] * 2)
    fallbacks = Fallbacks.from_settings(settings())
    await fallbacks.prepare(backends.tts, timeout_s=1.0)
    clip = fallbacks.audio("trouble", "piper")
    assert clip.pcm.size > 0 and clip.duration_s < 2.0  # the tone of last resort
    assert fallbacks.audio("trouble", "no-such-engine") is clip


class FailingAudioSink(RecordingSink):
    async def send_audio(self, audio: Audio) -> None:
        raise ConnectionResetError("the door went away")


async def test_reply_failing_in_the_sink_is_an_error_and_interrupted() -> None:
    backends = FakeBackends()
    call, sink, metrics = open_call(backends, sink=FailingAudioSink())
    await talk(call, sink, utterance())
    assert {
        "type": "error",
        "stage": "output",
        "message": "the reply could not be delivered",
    } in sink.events
    assert sample(metrics, "pipeline_errors_total", stage="output", error_type="internal") == 1
    assert sink.events[-1]["type"] == "metrics"
    assert sink.events[-1]["interrupted"] is True


async def test_history_in_memory_is_bounded_by_history_messages() -> None:
    backends = FakeBackends()
    call, sink, _ = open_call(backends, history_messages=4, asr_speculative_silence_ms=0)
    await talk(call, sink, *[utterance(0.4)] * 6)
    assert len(backends.llm.calls[-1]) == 1 + 4
    assert call.history_length == 4


class StuckSink(RecordingSink):
    """A client that stops reading: event delivery never returns once tokens flow."""

    async def send_event(self, event: Event) -> None:
        if event["type"] == "llm_token":
            await asyncio.Event().wait()
        await super().send_event(event)


async def test_a_stuck_sink_does_not_hold_the_llm_pool() -> None:
    backends = FakeBackends()
    s = settings(llm_pool_size=1)
    pools = Pools.from_settings(s, backends)
    stuck_call, stuck, _ = open_call(backends, pools=pools, sink=StuckSink(), llm_pool_size=1)
    call, sink, _ = open_call(backends, pools=pools, llm_pool_size=1)
    try:
        await feed(stuck_call, utterance())
        await stuck.wait_for("transcript")
        await asyncio.sleep(0.3)  # the stuck call's LLM stream has begun
        await feed(call, utterance())
        await sink.wait_for("metrics", within_s=5.0)
    finally:
        await stuck_call.close()
        await call.close()
    assert sink.events[-1] == {**sink.events[-1], "type": "metrics", "interrupted": False}


async def test_discarded_speculation_keeps_its_asr_slot_until_the_work_ends() -> None:
    """The ASR goes on after a discard (worker thread, whisper.cpp): the pool must know."""
    backends = FakeBackends(asr=FakeASR(delay_s=0.4, runs_on=True))
    backends.asr.texts = ["first half", "the whole utterance"]
    s = settings(asr_pool_size=1)
    pools = Pools.from_settings(s, backends)
    call, sink, _ = open_call(backends, pools=pools, asr_pool_size=1, mode="transcribe_only")
    pcm = np.concatenate([silence(0.3), tone(0.5), silence(0.2), tone(0.5), silence(0.8)])
    await talk(call, sink, pcm)
    assert call.speculation_misses == 1
    assert backends.asr.max_busy == 1, "two transcriptions ran at once on a 1-slot pool"


async def test_pool_slot_is_held_until_an_embedded_worker_finishes() -> None:
    import threading

    from bridge.backends._embedded import ModelRunner

    runner = ModelRunner("model", "embedded://test", "test-worker", timeout_s=0.05)
    finished = threading.Event()

    def work() -> str:
        time.sleep(0.4)
        finished.set()
        return "done"

    pool = Semaphore(1)
    try:
        task = asyncio.create_task(hold(pool, lambda: runner.run(work, 0.05)))
        await asyncio.sleep(0.15)  # past the runner's timeout, the worker still busy
        assert not finished.is_set()
        assert pool.locked(), "the slot was given back while the worker still ran"
        with pytest.raises(BackendError):
            await task
        assert finished.is_set() and not pool.locked()
    finally:
        runner.close()


async def test_per_frame_work_stays_flat_over_a_long_call() -> None:
    """A 60-turn call: the arrival clock and the history do not grow with the call's age."""
    backends = FakeBackends(llm=FakeLLM("Okay.", 0.001), tts_piper=FakeTTS(0.05, 0.001))
    call, sink, _ = open_call(backends, asr_speculative_silence_ms=0)
    sizes: list[int] = []
    try:
        for turn in range(1, 61):
            await feed(call, utterance(0.4))
            await sink.wait_for("metrics", turn)
            sizes.append(call.arrival_clock_frames)
    finally:
        await call.close()
    assert max(sizes[-10:]) <= max(sizes[:10])
    assert max(sizes) < 100  # one turn's frames, not the call's
    assert call.history_length <= settings().history_messages


async def test_barge_in_clears_the_fallback_phrase() -> None:
    backends = FakeBackends(tts_piper=FakeTTS(seconds_per_sentence=3.0))
    call, sink, _, fallbacks = await open_with_fallbacks(backends)
    backends.asr.errors.append(backend_error("asr", "connect"))
    try:
        await feed(call, utterance())
        await sink.wait_for_audio(fallbacks.audio("repeat", "piper"))
        assert call.bot_speaking()
        await feed(call, tone(0.6), realtime=True)  # the caller talks over the phrase
    finally:
        await call.close()
    assert sink.clears, "barge-in did not clear the fallback audio"
