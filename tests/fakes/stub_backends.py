"""Stand-alone stub backends for tests and bench/ that run `voicebridge serve` as a process:
whisper.cpp `/inference`, Ollama `/api/chat` and a `/synthesize` service on one port, each
with a settable latency, built from the wire-exact doubles of `tests.fakes.backend_servers`.

Run: python -m tests.fakes.stub_backends --port 8178 [--asr-ms 200] [--llm-first-ms 150]
[--llm-token-ms 10] [--tts-ms 200]; point WHISPER_URL, OLLAMA_URL and PIPER_URL at it with
ASR_BACKEND=whispercpp LLM_BACKEND=ollama TTS_BACKEND=http (see `stub_env`).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from aiohttp import web

from media.wav import write_wav
from tests.fakes.backend_servers import OllamaDouble, WhisperCppDouble
from tests.fakes.processes import Server, start_server, stop_server
from tests.support import free_port

TTS_RATE = 22050
REPLY_S = 0.6


def stub_app(
    asr_ms: float, llm_first_ms: float, llm_token_ms: float, tts_ms: float
) -> web.Application:
    """One application serving all three backends with the given latencies."""
    whisper = WhisperCppDouble(
        text=" What time does the store open tomorrow?\n", delay_s=asr_ms / 1000
    )
    ollama = OllamaDouble(token_delay_s=llm_token_ms / 1000)
    t = np.arange(int(TTS_RATE * REPLY_S)) / TTS_RATE
    reply = write_wav((np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16), TTS_RATE)

    async def chat(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(llm_first_ms / 1000)
        return await ollama._chat(request)

    async def synthesize(request: web.Request) -> web.Response:
        await request.json()
        await asyncio.sleep(tts_ms / 1000)
        return web.Response(body=reply, content_type="audio/wav")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.add_routes(
        [
            web.get("/", whisper._index),
            web.post("/inference", whisper._inference),
            web.get("/api/tags", ollama._tags),
            web.post("/api/chat", chat),
            web.post("/synthesize", synthesize),
            web.get("/healthz", ok),
        ]
    )
    return app


def stub_env(url: str) -> dict[str, str]:
    """The bridge settings that send every stage to the stub server at `url`."""
    return {
        "ASR_BACKEND": "whispercpp",
        "LLM_BACKEND": "ollama",
        "TTS_BACKEND": "http",
        "WHISPER_URL": url,
        "OLLAMA_URL": url,
        "PIPER_URL": url,
        "COQUI_URL": url,
    }


@contextmanager
def stub_backends(
    asr_ms: float = 200, llm_first_ms: float = 150, llm_token_ms: float = 10, tts_ms: float = 200
) -> Iterator[Server]:
    """The stub server as a process on a free loopback port, stopped on exit."""
    port = free_port()
    args = ["-m", "tests.fakes.stub_backends", "--port", str(port)]
    args += ["--asr-ms", str(asr_ms), "--llm-first-ms", str(llm_first_ms)]
    args += ["--llm-token-ms", str(llm_token_ms), "--tts-ms", str(tts_ms)]
    server = start_server(args, port, "/healthz")
    try:
        yield server
    finally:
        stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--asr-ms", type=float, default=200)
    parser.add_argument("--llm-first-ms", type=float, default=150)
    parser.add_argument("--llm-token-ms", type=float, default=10)
    parser.add_argument("--tts-ms", type=float, default=200)
    args = parser.parse_args()
    app = stub_app(args.asr_ms, args.llm_first_ms, args.llm_token_ms, args.tts_ms)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
