"""The embedded trio with the real shipped models: faster-whisper, llama.cpp, Piper."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

import numpy as np
import pytest
import soxr

from bridge.backends import (
    BackendError,
    EmbeddedASR,
    EmbeddedLLM,
    EmbeddedPiperTTS,
    Message,
)
from tests.support import espeak_pcm, with_silence, word_error_rate

pytestmark = pytest.mark.slow

# Call-centre sentences spoken by espeak-ng at 130 words a minute (a calm telephone pace).
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I would like to check the balance of my account.",
    "Please call me back tomorrow morning.",
    "Can you help me change my delivery address?",
    "I have a question about my last invoice.",
    "What time does the store open on Saturday?",
]
WORDS_PER_MINUTE = 130

QUESTION: list[Message] = [
    {"role": "system", "content": "You are a helpful call center agent. Keep answers short."},
    {"role": "user", "content": "Hello, what are your opening hours?"},
]


@pytest.mark.parametrize("sentence", SENTENCES)
async def test_asr_transcribes_espeak_speech(embedded_asr: EmbeddedASR, sentence: str) -> None:
    pcm = with_silence(espeak_pcm(sentence, words_per_minute=WORDS_PER_MINUTE), 16000, 0.3, 0.3)
    transcript = await embedded_asr.transcribe(pcm)
    assert word_error_rate(sentence, transcript.text) <= 0.2, transcript.text
    assert transcript.language == "en"


async def test_asr_missing_model_is_unavailable() -> None:
    asr = EmbeddedASR(model_path="/nonexistent/whisper-model")
    try:
        assert not await asr.ready()
        with pytest.raises(BackendError) as caught:
            await asr.transcribe(espeak_pcm("hello"))
    finally:
        await asr.aclose()
    assert caught.value.kind == "unavailable"
    assert caught.value.backend == "faster-whisper"
    assert caught.value.url == "embedded://faster-whisper/whisper-model"


async def test_asr_timeout_is_typed() -> None:
    asr = EmbeddedASR(timeout_s=0.001)
    try:
        await asr.warmup()
        with pytest.raises(BackendError) as caught:
            await asr.transcribe(espeak_pcm(SENTENCES[1]))
    finally:
        await asr.aclose()
    assert caught.value.kind == "timeout"


async def test_llm_streams_several_tokens(embedded_llm: EmbeddedLLM) -> None:
    tokens = [token async for token in embedded_llm.stream(QUESTION)]
    assert len(tokens) >= 5
    assert all(tokens)
    assert len("".join(tokens).split()) >= 3
    assert await embedded_llm.ready()


class CountingLLM(EmbeddedLLM):
    """The real embedded LLM, counting the chunks its worker pulls from llama.cpp."""

    pulled = 0

    def _load(self) -> Any:
        model = super()._load()
        outer = self

        class Counting:
            def create_chat_completion(self, **kwargs: Any) -> Iterator[Any]:
                for chunk in model.create_chat_completion(**kwargs):
                    outer.pulled += 1
                    yield chunk

        return Counting()


async def test_llm_stops_generating_when_the_consumer_stops() -> None:
    """Two long replies, one abandoned and one cancelled after two tokens: the worker pulls
    only a few more chunks from llama.cpp before it stops, instead of 1000 tokens each."""
    llm = CountingLLM(max_tokens=1000, threads=2, timeout_s=30)
    long_reply: list[Message] = [
        {"role": "user", "content": "Count from one to five hundred, one number per line."}
    ]
    try:
        async with aclosing(llm.stream(long_reply)) as stream:
            taken = [await anext(stream), await anext(stream)]
        assert all(taken)

        received: list[str] = []
        two = asyncio.Event()

        async def consume() -> None:
            async for token in llm.stream(long_reply):
                received.append(token)
                if len(received) == 2:
                    two.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(two.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with aclosing(llm.stream(QUESTION)) as stream:
            assert await anext(stream)  # the one worker is free again: both jobs ended
        assert llm.pulled < 2 * 10 + 5
    finally:
        await llm.aclose()


async def test_llm_missing_model_is_unavailable() -> None:
    llm = EmbeddedLLM(model_path="/nonexistent/model.gguf")
    try:
        assert not await llm.ready()
        with pytest.raises(BackendError) as caught:
            async for _ in llm.stream(QUESTION):
                pass
    finally:
        await llm.aclose()
    assert caught.value.kind == "unavailable"
    assert caught.value.url == "embedded://llama.cpp/model.gguf"


async def test_piper_round_trip_through_asr(
    embedded_piper: EmbeddedPiperTTS, embedded_asr: EmbeddedASR
) -> None:
    sentence = SENTENCES[3]
    audio = await embedded_piper.synthesize(sentence)
    assert audio.sample_rate == 22050
    assert audio.pcm.dtype == np.int16
    assert 1.0 < audio.duration_s < 8.0
    assert np.sqrt(np.mean(audio.pcm.astype(np.float64) ** 2)) > 500
    pcm16k = soxr.resample(audio.pcm, audio.sample_rate, 16000).astype(np.int16)
    transcript = await embedded_asr.transcribe(pcm16k)
    assert word_error_rate(sentence, transcript.text) <= 0.2, transcript.text


async def test_piper_unknown_voice_falls_back_to_the_shipped_one() -> None:
    tts = EmbeddedPiperTTS(voice="en_US-nobody-medium")
    try:
        assert tts.url == "embedded://piper/en_US-joe-medium"
        assert await tts.ready()
    finally:
        await tts.aclose()
