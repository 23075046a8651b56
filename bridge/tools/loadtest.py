"""The spec §4.5 load tester for the WebSocket door (`voicebridge loadtest`).

Opens `--concurrency` WebSocket calls at once and keeps that many going for `--duration`.
Each call picks a random WAV from `--audio-dir`, streams it at real time in 20 ms chunks
(encoded per `--codec`), then keeps streaming silence, as a live caller would, until every
transcript it caused has its `metrics` event and the line has been quiet for a moment. The
`metrics` events are collected and the spec's summary block is printed:

    Calls completed: 47
    Errors: 0
    ASR latency   p50=138ms  p95=215ms  p99=287ms
    LLM latency   p50=245ms  p95=410ms  p99=523ms
    TTS latency   p50=167ms  p95=289ms  p99=342ms
    E2E latency   p50=562ms  p95=891ms  p99=1102ms

A call counts as completed when it got at least one `metrics` event and no error; `Errors`
counts calls that failed (refused, dropped, timed out, no reply) plus `error` events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import yarl

from media.codecs import codec_for
from media.resample import resample
from media.wav import read_wav

__all__ = [
    "LoadResult",
    "add_arguments",
    "encode_chunks",
    "format_summary",
    "percentile",
    "run_from_args",
    "run_load",
    "with_token",
]

CHUNK_S = 0.02
QUIET_S = 1.5
"""A call ends once the line has been this quiet after its last reply."""
REPLY_TIMEOUT_S = 60.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation between samples."""
    if not values:
        raise ValueError("no values")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _latency_line(label: str, values: Sequence[float]) -> str:
    if not values:
        return f"{label:<14}p50=n/a  p95=n/a  p99=n/a"
    p50, p95, p99 = (round(percentile(values, q)) for q in (50, 95, 99))
    return f"{label:<14}p50={p50}ms  p95={p95}ms  p99={p99}ms"


def format_summary(
    calls_completed: int,
    errors: int,
    asr_ms: Sequence[float],
    llm_ms: Sequence[float],
    tts_ms: Sequence[float],
    e2e_ms: Sequence[float],
) -> str:
    """The spec §4.5 summary block (no trailing newline)."""
    return "\n".join(
        [
            f"Calls completed: {calls_completed}",
            f"Errors: {errors}",
            _latency_line("ASR latency", asr_ms),
            _latency_line("LLM latency", llm_ms),
            _latency_line("TTS latency", tts_ms),
            _latency_line("E2E latency", e2e_ms),
        ]
    )


@dataclass
class LoadResult:
    """What a load run collected."""

    calls_completed: int = 0
    errors: int = 0
    asr_ms: list[float] = field(default_factory=list)
    llm_ms: list[float] = field(default_factory=list)
    tts_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    error_messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The spec §4.5 summary block."""
        return format_summary(
            self.calls_completed, self.errors, self.asr_ms, self.llm_ms, self.tts_ms, self.e2e_ms
        )

    def add_metrics(self, event: dict[str, Any]) -> None:
        for key, target in (
            ("asr_ms", self.asr_ms),
            ("llm_ms", self.llm_ms),
            ("tts_ms", self.tts_ms),
            ("total_ms", self.e2e_ms),
        ):
            value = event.get(key)
            if isinstance(value, int | float):
                target.append(float(value))

    def add_error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_messages) < 20:
            self.error_messages.append(message)


_REGISTRY_NAME = {"g711_ulaw": "pcmu", "g711_alaw": "pcma", "opus": "opus"}
"""WebSocket wire codec names that are `media.codecs` codecs."""


def wire_rate(codec: str, file_rate: int) -> int:
    """The sample rate a codec carries on the wire (PCM keeps the file's rate)."""
    name = _REGISTRY_NAME.get(codec)
    return file_rate if name is None else codec_for(name).pcm_rate


def encode_chunks(pcm: npt.NDArray[np.int16], rate: int, codec: str) -> list[bytes]:
    """Split audio into 20 ms chunks encoded for `codec` (one Opus packet per chunk)."""
    target = wire_rate(codec, rate)
    audio = resample(pcm, rate, target) if target != rate else pcm
    step = int(target * CHUNK_S)
    pad = (-audio.size) % step
    if pad:
        audio = np.concatenate([audio, np.zeros(pad, np.int16)])
    frames = [audio[i : i + step] for i in range(0, audio.size, step)]
    if codec == "pcm":
        return [f.astype("<i2").tobytes() for f in frames]
    if codec not in _REGISTRY_NAME:
        raise ValueError(f"unknown codec {codec!r}")
    encoder = codec_for(_REGISTRY_NAME[codec]).encoder()
    return [encoder.encode(f) for f in frames]


@dataclass
class _Clip:
    chunks: list[bytes]
    silence: bytes
    rate: int


def _load_clips(audio_dir: Path, codec: str) -> list[_Clip]:
    files = sorted(p for p in audio_dir.iterdir() if p.suffix.lower() == ".wav")
    if not files:
        raise FileNotFoundError(f"no .wav files in {audio_dir}")
    clips = []
    for path in files:
        pcm, rate = read_wav(path.read_bytes())
        silence = encode_chunks(np.zeros(int(rate * CHUNK_S), np.int16), rate, codec)
        clips.append(_Clip(encode_chunks(pcm, rate, codec), silence[-1], wire_rate(codec, rate)))
    return clips


async def _one_call(
    session: aiohttp.ClientSession,
    gateway: str,
    clip: _Clip,
    codec: str,
    tts_engine: str,
    mode: str,
    result: LoadResult,
) -> None:
    meta = {"codec": codec, "sample_rate": clip.rate, "tts_engine": tts_engine, "mode": mode}
    transcripts = metrics = errors = 0
    last_event = time.monotonic()
    sent_all = asyncio.Event()
    async with session.ws_connect(gateway, max_msg_size=0, heartbeat=30.0) as ws:
        await ws.send_str(json.dumps(meta))

        async def send() -> None:
            start = time.monotonic()
            for i, chunk in enumerate(clip.chunks):
                await ws.send_bytes(chunk)
                await asyncio.sleep(max(0.0, start + (i + 1) * CHUNK_S - time.monotonic()))
            sent_all.set()
            i = len(clip.chunks)
            while not ws.closed:
                await ws.send_bytes(clip.silence)
                i += 1
                await asyncio.sleep(max(0.0, start + (i + 1) * CHUNK_S - time.monotonic()))

        sender = asyncio.create_task(send())
        deadline = time.monotonic() + len(clip.chunks) * CHUNK_S + REPLY_TIMEOUT_S
        failure = ""
        try:
            while True:
                # a turn ends with its metrics event or its error event (an ASR error has no
                # transcript): either settles it, so an error never waits out the deadline
                settled = metrics + errors
                if sent_all.is_set() and settled and settled >= transcripts:
                    if time.monotonic() - last_event >= QUIET_S:
                        break
                if time.monotonic() > deadline:
                    failure = "timed out waiting for the reply"
                    break
                try:
                    msg = await ws.receive(timeout=0.25)
                except TimeoutError:
                    continue
                if msg.type == aiohttp.WSMsgType.TEXT:
                    last_event = time.monotonic()
                    event = json.loads(msg.data)
                    kind = event.get("type")
                    if kind == "transcript":
                        transcripts += 1
                    elif kind == "metrics":
                        metrics += 1
                        result.add_metrics(event)
                    elif kind == "error":
                        errors += 1
                        result.add_error(f"{event.get('stage')}: {event.get('message')}")
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    last_event = time.monotonic()
                else:
                    failure = f"connection closed by the server (code {ws.close_code})"
                    break
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    if failure and not errors:  # a call whose error events were counted is not counted again
        result.add_error(failure)
    elif not failure and errors == 0:
        result.calls_completed += 1


async def run_load(
    gateway: str,
    concurrency: int,
    duration_s: float,
    audio_dir: Path,
    codec: str = "pcm",
    tts_engine: str = "piper",
    mode: str = "conversation",
    seed: int | None = None,
) -> LoadResult:
    """Keep `concurrency` calls going for `duration_s`; calls begun in time run to the end."""
    clips = _load_clips(audio_dir, codec)
    rng = random.Random(seed)
    result = LoadResult()
    end = time.monotonic() + duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            try:
                await _one_call(
                    session, gateway, rng.choice(clips), codec, tts_engine, mode, result
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                result.add_error(f"call failed: {exc!r}")
                await asyncio.sleep(0.5)

    timeout = aiohttp.ClientTimeout(total=None, connect=10.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return result


def parse_duration(text: str) -> float:
    """`60s`, `2m`, `1m30s`, `500ms` or plain seconds, as seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 60s, 2m, 1m30s)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def with_token(url: str, token: str | None) -> str:
    """`url` with `?token=<token>` added (ACCESS_TOKENS on the bridge); `url` when no token."""
    if not token:
        return url
    return str(yarl.URL(url).update_query(token=token))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The spec §4.5 flags (plus `--mode`, `--seed` and `--token`)."""
    parser.add_argument("--gateway", default="ws://localhost:8080/ws/call", help="/ws/call URL")
    parser.add_argument("--concurrency", type=int, default=20, help="simultaneous calls")
    parser.add_argument("--duration", type=parse_duration, default=60.0, help="e.g. 60s, 2m")
    parser.add_argument("--audio-dir", type=Path, required=True, help="folder of .wav files")
    parser.add_argument("--codec", choices=("pcm", "g711_ulaw", "g711_alaw", "opus"), default="pcm")
    parser.add_argument("--tts-engine", choices=("piper", "coqui"), default="piper")
    parser.add_argument(
        "--mode", choices=("conversation", "transcribe_only"), default="conversation"
    )
    parser.add_argument("--seed", type=int, default=None, help="file choice seed")
    parser.add_argument("--token", default=None, help="an ACCESS_TOKENS token of the bridge")


def run_from_args(args: argparse.Namespace) -> int:
    """Run a load test from parsed flags; print the summary; 0 when there were no errors."""
    if args.concurrency < 1:
        print("voicebridge loadtest: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(
            run_load(
                with_token(args.gateway, args.token),
                args.concurrency,
                args.duration,
                args.audio_dir,
                args.codec,
                args.tts_engine,
                args.mode,
                args.seed,
            )
        )
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"voicebridge loadtest: {exc}", file=sys.stderr)
        return 2
    print(result.summary(), flush=True)
    for message in result.error_messages:
        print(f"  error: {message}", file=sys.stderr)
    return 0 if result.errors == 0 and result.calls_completed > 0 else 1
