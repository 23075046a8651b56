"""`voicebridge call`: a one-call WebSocket client for the spec §4.1 protocol.

Streams a WAV file to `/ws/call` at real time (then silence, as a caller who waits for the
answer), prints the transcript, the reply tokens as they arrive and the turn's timings, and
saves the bot's reply (all its WAV frames joined) to one WAV file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt

from bridge.tools.loadtest import encode_chunks, wire_rate, with_token
from media.wav import read_wav, write_wav

CHUNK_S = 0.02
CLOSE_WAIT_S = 2.0
"""After an `error` event, how long to wait for the server's close code and reason."""


class CallFailed(RuntimeError):
    """The call ended without a turn: the server's `error` event and/or its close code
    and reason, as the server sent them."""

    def __init__(self, error: str = "", code: int | None = None, reason: str = "") -> None:
        self.error = error
        self.code = code
        self.reason = reason
        parts = []
        if code is not None:
            parts.append(f"the server closed the call ({code}{' ' + reason if reason else ''})")
        if error:
            parts.append(f"error event: {error}")
        super().__init__("; ".join(parts) or "the call ended before a metrics event arrived")


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
    """Make one call with the caller audio `pcm`; return the first turn. Raise `CallFailed`
    with the server's `error` event, close code and reason when the call ends without one."""
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
        error = ""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    msg = await ws.receive(CLOSE_WAIT_S if error else None)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        part, reply_rate = read_wav(msg.data)
                        reply_parts.append(part)
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        reason = msg.extra if isinstance(msg.extra, str) else ""
                        raise CallFailed(error, ws.close_code, reason)
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
                        error = f"{event.get('stage')}: {event.get('message')}"
                    elif kind == "metrics" and not error:
                        print("metrics: " + json.dumps(event))
                        reply = (
                            np.concatenate(reply_parts) if reply_parts else np.zeros(0, np.int16)
                        )
                        return CallResult(dict(event), reply, reply_rate)
        except TimeoutError:
            if error:  # no close within CLOSE_WAIT_S: the error event is the whole story
                raise CallFailed(error) from None
            raise
        finally:
            sender.cancel()
            # a sender that failed on the closing socket must not hide why it closed
            await asyncio.gather(sender, return_exceptions=True)


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
    parser.add_argument("--token", default=None, help="an ACCESS_TOKENS token of the bridge")


def run_from_args(args: argparse.Namespace) -> int:
    """Run `voicebridge call`; exit status 0 on a completed turn, 1 otherwise."""
    try:
        pcm, rate = read_wav(args.wav.read_bytes())
        result = asyncio.run(
            call(
                with_token(args.url, args.token),
                pcm,
                rate,
                args.codec,
                args.mode,
                args.tts_engine,
                args.timeout,
            )
        )
        if result.reply.size:
            args.out.write_bytes(write_wav(result.reply, result.reply_rate))
            print(f"reply saved to {args.out} ({result.reply.size / result.reply_rate:.1f} s)")
    except (RuntimeError, OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"voicebridge call: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
