"""`voicebridge call`: a one-call WebSocket client for the spec §4.1 protocol.

Streams a WAV file to `/ws/call` at real time (then silence, as a caller who waits for the
answer), prints the transcript, the reply tokens as they arrive and the turn's timings, and
saves the bot's reply (all its WAV frames joined) to one WAV file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt

from bridge.tools.loadtest import encode_chunks, wire_rate
from media.wav import read_wav, write_wav

CHUNK_S = 0.02


@dataclass
class CallResult:
    """One finished turn: its `metrics` event and the bot's reply audio."""

    metrics: dict[str, Any]
    reply: npt.NDArray[np.int16]
    reply_rate: int


async def call(
    url: str,
    pcm: npt.NDArray[np.int16],
    rate: int,
    codec: str = "pcm",
    mode: str = "conversation",
    tts_engine: str = "piper",
    timeout_s: float = 60.0,
) -> CallResult:
    """Make one call with the caller audio `pcm`; return the first turn (raise on `error`)."""
    chunks = encode_chunks(pcm, rate, codec)
    silence = encode_chunks(np.zeros(int(rate * CHUNK_S), np.int16), rate, codec)[0]
    metadata = {
        "codec": codec,
        "sample_rate": wire_rate(codec, rate),
        "tts_engine": tts_engine,
        "mode": mode,
    }
    reply_parts: list[npt.NDArray[np.int16]] = []
    reply_rate = 0
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_json(metadata)

        async def stream() -> None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i, chunk in enumerate([*chunks, *[silence] * int(timeout_s / CHUNK_S)]):
                await ws.send_bytes(chunk)
                await asyncio.sleep(max(0.0, start + (i + 1) * CHUNK_S - loop.time()))

        sender = asyncio.create_task(stream())
        try:
            async with asyncio.timeout(timeout_s):
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        part, reply_rate = read_wav(msg.data)
                        reply_parts.append(part)
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    event = json.loads(msg.data)
                    kind = event.get("type")
                    if kind == "llm_token":
                        print(event["token"], end="", flush=True)
                    elif kind == "transcript":
                        print(f"caller: {event['text']}  ({event['latency_ms']} ms)")
                        if mode == "conversation":
                            print("bot: ", end="", flush=True)
                    elif kind == "llm_done":
                        print(f"  ({event['latency_ms']} ms)")
                    elif kind == "error":
                        raise RuntimeError(f"{event.get('stage')}: {event.get('message')}")
                    elif kind == "metrics":
                        print("metrics: " + json.dumps(event))
                        reply = (
                            np.concatenate(reply_parts) if reply_parts else np.zeros(0, np.int16)
                        )
                        return CallResult(dict(event), reply, reply_rate)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    raise RuntimeError("the call ended before a metrics event arrived")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `voicebridge call`."""
    parser.add_argument("url", help="e.g. ws://localhost:8080/ws/call")
    parser.add_argument("wav", type=Path, help="mono or stereo 16-bit PCM WAV, any rate")
    parser.add_argument("--out", type=Path, default=Path("reply.wav"), help="reply WAV path")
    parser.add_argument("--codec", default="pcm", choices=["pcm", "g711_ulaw", "g711_alaw", "opus"])
    parser.add_argument(
        "--mode", default="conversation", choices=["conversation", "transcribe_only"]
    )
    parser.add_argument("--tts-engine", default="piper", choices=["piper", "coqui"])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a turn")


def run_from_args(args: argparse.Namespace) -> int:
    """Run `voicebridge call`; exit status 0 on a completed turn, 1 otherwise."""
    try:
        pcm, rate = read_wav(args.wav.read_bytes())
        result = asyncio.run(
            call(args.url, pcm, rate, args.codec, args.mode, args.tts_engine, args.timeout)
        )
        if result.reply.size:
            args.out.write_bytes(write_wav(result.reply, result.reply_rate))
            print(f"reply saved to {args.out} ({result.reply.size / result.reply_rate:.1f} s)")
    except (RuntimeError, OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"voicebridge call: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    return 0
