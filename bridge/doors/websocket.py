"""The spec §4.1 WebSocket door: `/ws/call`.

Protocol (client → server): the first frame is a text frame holding JSON metadata
`{"codec": "pcm"|"g711_ulaw"|"g711_alaw"|"opus", "sample_rate": 16000,
"tts_engine": "piper"|"coqui", "mode": "conversation"|"transcribe_only"}`, then binary
frames of caller audio: PCM is 16-bit little-endian mono at `sample_rate`; G.711 is 8 kHz,
one byte per sample; Opus is **one Opus packet per binary frame** (decoded at 48 kHz).

Server → client: JSON text events (`transcript`, `llm_token`, `llm_done`, `tts_ready`,
`metrics`, plus `error` and `dtmf`) and binary frames of bot audio, one WAV file (16-bit PCM,
mono, at the TTS rate) per sentence.

Protocol errors send `{"type": "error", "stage": "protocol", "message": ...}` and close:

- 1003 (unsupported data): unknown codec; a text frame where binary audio is due.
- 1008 (policy violation): bad JSON or invalid metadata (over 4 KiB, nested more than
  Python's parser allows); binary before metadata; no metadata within 10 s; a frame over
  `WS_MAX_FRAME_BYTES`; audio arriving faster than 1.5x real time beyond a start-up burst
  (`InputPacer`); a client that reads nothing for `WS_SEND_TIMEOUT_S` (its connection is
  dropped and its call freed).
- 1013 (try again later): over `MAX_CONCURRENT_CALLS` or shutting down (stage `capacity`).

A frame beyond 8 × `WS_MAX_FRAME_BYTES` (at least 1 MiB) is refused by aiohttp itself
before it is buffered (1009, no event). The server closes with 1001 when it shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from bridge import contract
from bridge.backends.base import Audio
from bridge.config import TTS_ENGINES, Settings
from bridge.contract import CALLER_RATE, CallHandle, CallLimitExceeded, CallOpener, CallOptions
from bridge.metrics import Metrics
from media.codecs import codec_for
from media.resample import StreamResampler
from media.wav import write_wav

__all__ = ["CODECS", "CallMetadata", "InputPacer", "WebSocketSink", "make_decoder", "register"]

log = logging.getLogger("bridge.doors.websocket")

PATH = "/ws/call"
CODECS = ("pcm", "g711_ulaw", "g711_alaw", "opus")
METADATA_TIMEOUT_S = 10.0
OUT_QUEUE = 2048
"""Outgoing frames buffered per connection; a slower client back-pressures its own call."""
METADATA_MAX_BYTES = 4096
"""The metadata frame is refused unparsed beyond this (it is a handful of short keys)."""
INPUT_RATE = 1.5
"""Caller audio may arrive at most this many times faster than real time..."""
INPUT_BURST_S = 3.0
"""...beyond a burst of this many seconds of audio (start-up, a network hiccup)."""

Codec = Literal["pcm", "g711_ulaw", "g711_alaw", "opus"]
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_DEFAULT_RATE = {"pcm": 16000, "g711_ulaw": 8000, "g711_alaw": 8000, "opus": 48000}


_OPTION_KEYS = ("tts_engine", "mode")
"""Metadata keys that are call options, read by `bridge.contract.parse_call_options`."""


class CallMetadata(BaseModel):
    """The audio part of a `/ws/call` connection's first (text) frame; its `tts_engine`
    and `mode` are the call's options (`bridge.contract.parse_call_options`)."""

    model_config = ConfigDict(extra="forbid")

    codec: Codec
    sample_rate: int | None = None

    @model_validator(mode="after")
    def _check_rate(self) -> CallMetadata:
        rate = self.sample_rate
        if rate is None:
            self.sample_rate = _DEFAULT_RATE[self.codec]
        elif self.codec.startswith("g711") and rate != 8000:
            raise ValueError(f"{self.codec} is 8000 Hz, got sample_rate {rate}")
        elif self.codec == "opus" and rate not in _OPUS_RATES:
            raise ValueError(f"opus sample_rate must be one of {_OPUS_RATES}, got {rate}")
        elif self.codec == "pcm" and not 8000 <= rate <= 48000:
            raise ValueError(f"pcm sample_rate must be 8000..48000, got {rate}")
        return self


class Decoder(Protocol):
    """Turns one binary frame into mono int16 PCM at the decoder's `rate`."""

    rate: int

    def decode(self, payload: bytes) -> npt.NDArray[np.int16]: ...


class _PcmDecoder:
    """16-bit little-endian PCM; an odd trailing byte waits for the next frame."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._carry = b""

    def decode(self, payload: bytes) -> npt.NDArray[np.int16]:
        data = self._carry + payload
        whole = len(data) - len(data) % 2
        self._carry = data[whole:]
        return np.frombuffer(data[:whole], dtype="<i2").astype(np.int16)


_REGISTRY_NAME = {"g711_ulaw": "pcmu", "g711_alaw": "pcma", "opus": "opus"}
"""Wire codec names that are RTP codecs of `media.codecs` (one payload per frame)."""


class _CodecDecoder:
    """A `media.codecs` decoder (G.711, Opus), at the codec's PCM rate."""

    def __init__(self, name: str) -> None:
        codec = codec_for(name)
        self.rate = codec.pcm_rate
        self._decoder = codec.decoder()

    def decode(self, payload: bytes) -> npt.NDArray[np.int16]:
        return self._decoder.decode(payload)


def make_decoder(meta: CallMetadata) -> Decoder:
    """The decoder for a connection's codec."""
    if meta.codec == "pcm":
        return _PcmDecoder(meta.sample_rate or 16000)
    return _CodecDecoder(_REGISTRY_NAME[meta.codec])


class InputPacer:
    """A token bucket over seconds of caller audio: it fills at `rate` seconds of audio per
    second of wall time and holds at most `burst_s`; a frame that finds it empty is too fast.

    A client streaming at real time never empties it; one pushing a file as fast as the
    socket takes it is stopped after about `burst_s` of audio.
    """

    def __init__(
        self, rate: float = INPUT_RATE, burst_s: float = INPUT_BURST_S, now: float | None = None
    ) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self._level = burst_s
        self._at = time.monotonic() if now is None else now

    def admit(self, seconds: float, now: float | None = None) -> bool:
        """Take `seconds` of audio; False when that is more than the bucket holds."""
        now = time.monotonic() if now is None else now
        self._level = min(self.burst_s, self._level + (now - self._at) * self.rate)
        self._at = now
        if seconds > self._level:
            return False
        self._level -= seconds
        return True


class WebSocketSink:
    """A call's output over one WebSocket: events as JSON text, bot audio as WAV binary.

    All frames go through one queue and one writer task, so events and audio leave in the
    order the pipeline produced them. A frame that cannot be queued or sent within
    `send_timeout_s` (the client reads nothing) makes the sink give up: it drops what is
    queued, ignores what comes next (the pipeline never waits on a dead client) and calls
    `on_stall`, which drops the connection and so ends the call.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        call_label: str = "?",
        send_timeout_s: float = 10.0,
        on_stall: Callable[[], None] | None = None,
    ) -> None:
        self._ws = ws
        self._label = call_label
        self._send_timeout_s = send_timeout_s
        self._on_stall = on_stall
        self._dead = False
        """True once the client stopped reading or the connection broke: frames are dropped."""
        self._out: asyncio.Queue[str | bytes | tuple[int, str]] = asyncio.Queue(OUT_QUEUE)
        self._writer = asyncio.ensure_future(self._write_loop())
        self._writer.set_name(f"ws-writer-{call_label}")
        self.closed_by_server: str | None = None
        """Why the server closed the connection (None while open or when the client closed)."""
        self._playing_until = 0.0

    async def send_event(self, event: contract.Event) -> None:
        """Queue a JSON event."""
        await self._put(json.dumps(event, separators=(",", ":")))

    async def send_audio(self, audio: Audio) -> None:
        """Queue one sentence of bot audio as a WAV frame."""
        await self._put(write_wav(audio.pcm, audio.sample_rate))
        self._playing_until = max(self._playing_until, time.monotonic()) + audio.duration_s

    async def _put(self, item: str | bytes) -> None:
        if self._dead:
            return
        try:
            await asyncio.wait_for(self._out.put(item), self._send_timeout_s)
        except TimeoutError:
            self._stalled("its queue stayed full")

    def _drop_all(self) -> None:
        self._dead = True
        while not self._out.empty():
            self._out.get_nowait()

    def _stalled(self, what: str) -> None:
        """The client stopped reading: drop everything and let `on_stall` end the call."""
        if self._dead:
            return
        self._drop_all()
        log.warning(
            "call=%s websocket client read nothing for %.1fs (%s): dropping it",
            self._label,
            self._send_timeout_s,
            what,
        )
        if self.closed_by_server is None:
            self.closed_by_server = "client not reading"
        if not self._writer.done() and self._writer is not asyncio.current_task():
            self._writer.cancel()
        if self._on_stall is not None:
            self._on_stall()

    def clear_audio(self) -> None:
        """Drop bot audio frames not yet sent (the client owns what it already has)."""
        kept = []
        while not self._out.empty():
            item = self._out.get_nowait()
            if not isinstance(item, bytes):
                kept.append(item)
        for item in kept:
            self._out.put_nowait(item)
        self._playing_until = 0.0

    def playing_until(self) -> float:
        """The client plays the audio: the end of what was handed over, played at real time
        from the moment it was queued (0 after a barge-in)."""
        return self._playing_until

    async def hangup(self, reason: str) -> None:
        """Server ends the call: flush what is queued, then close with 1001."""
        await self.close(int(WSCloseCode.GOING_AWAY), reason)

    async def fail(self, message: str, code: int) -> None:
        """Protocol error mid-call: an error event, then close with `code`."""
        await self.send_event({"type": "error", "stage": "protocol", "message": message})
        await self.close(code, message)

    async def close(self, code: int, reason: str) -> None:
        """Flush the queue, close the socket with `code` and stop the writer."""
        if self.closed_by_server is None:
            self.closed_by_server = reason
        if not self._writer.done():
            await self._out.put((code, reason))
            try:
                await asyncio.shield(self._writer)
            except asyncio.CancelledError:
                if not self._writer.cancelled():
                    raise  # we are cancelled, not the writer
            except Exception as exc:
                log.warning("call=%s websocket writer failed while closing: %r", self._label, exc)
        if not self._ws.closed:
            try:
                await self._ws.close(code=code, message=reason[:120].encode())
            except (ConnectionError, RuntimeError) as exc:
                log.info("call=%s websocket close %d failed: %r", self._label, code, exc)

    async def stop(self) -> None:
        """Stop the writer without flushing (the connection is gone)."""
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._writer

    async def _write_loop(self) -> None:
        while True:
            item = await self._out.get()
            try:
                async with asyncio.timeout(self._send_timeout_s):
                    if isinstance(item, tuple):
                        code, reason = item
                        if not self._ws.closed:
                            await self._ws.close(code=code, message=close_reason(reason))
                        return
                    if isinstance(item, bytes):
                        await self._ws.send_bytes(item)
                    else:
                        await self._ws.send_str(item)
            except TimeoutError:
                self._stalled("a send did not finish")
                return
            except (ConnectionError, RuntimeError) as exc:
                log.debug("call=%s websocket send failed: %r", self._label, exc)
                self._drop_all()
                return


class _CallLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes a connection's log lines with its call id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"call={self.extra['call_id'] if self.extra else '?'} {msg}", kwargs


async def _refuse(ws: web.WebSocketResponse, stage: str, message: str, code: int) -> None:
    """Error event and close, before a call exists."""
    log.info("websocket refused (%d): %s", code, message)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_json({"type": "error", "stage": stage, "message": message})
    await ws.close(code=code, message=close_reason(message))


def close_reason(text: str) -> bytes:
    """`text` as a close frame's reason: UTF-8, at most 123 bytes, cut at a character."""
    return text.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")


def _parse_metadata(
    text: str, default_engine: str
) -> tuple[tuple[CallMetadata, CallOptions] | None, str, int]:
    """Metadata and the call's options, or (None, error message, close code)."""
    if len(text) > METADATA_MAX_BYTES or len(text.encode("utf-8")) > METADATA_MAX_BYTES:
        return (
            None,
            f"metadata is too large (over {METADATA_MAX_BYTES} bytes)",
            int(WSCloseCode.POLICY_VIOLATION),
        )
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"metadata is not valid JSON: {exc.msg}", int(WSCloseCode.POLICY_VIOLATION)
    except RecursionError:
        return None, "metadata is nested too deeply", int(WSCloseCode.POLICY_VIOLATION)
    if not isinstance(raw, dict):
        return None, "metadata must be a JSON object", int(WSCloseCode.POLICY_VIOLATION)
    codec = raw.get("codec")
    if codec is not None and codec not in CODECS:
        named = f" {codec!r}" if isinstance(codec, str) and len(codec) <= 32 else ""
        return (
            None,
            f"unknown codec{named} (supported: {', '.join(CODECS)})",
            int(WSCloseCode.UNSUPPORTED_DATA),
        )
    audio = {key: value for key, value in raw.items() if key not in _OPTION_KEYS}
    try:
        meta = CallMetadata.model_validate(audio)
        options = contract.parse_call_options(
            raw, TTS_ENGINES, door="websocket", default_engine=default_engine
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "metadata"
        return None, f"invalid metadata: {where}: {first['msg']}", int(WSCloseCode.POLICY_VIOLATION)
    except contract.InvalidCallOptions as exc:
        return None, f"invalid metadata: {exc}", int(WSCloseCode.POLICY_VIOLATION)
    return (meta, options), "", 0


def register(app: web.Application, calls: CallOpener, settings: Settings, metrics: Metrics) -> None:
    """Add the `/ws/call` route to `app`; `metrics` counts its protocol and decode errors."""
    hard_cap = max(8 * settings.ws_max_frame_bytes, 1 << 20)

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=hard_cap, heartbeat=30.0)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=METADATA_TIMEOUT_S)
        except TimeoutError:
            await _refuse(ws, "protocol", "no metadata received", WSCloseCode.POLICY_VIOLATION)
            return ws
        if first.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return ws
        if first.type != WSMsgType.TEXT:
            await _refuse(ws, "protocol", "the first frame must be JSON metadata (text)", 1008)
            return ws
        parsed, error, code = _parse_metadata(first.data, settings.default_tts_engine)
        if parsed is None:
            await _refuse(ws, "protocol", error, code)
            return ws
        meta, options = parsed

        def drop_connection() -> None:
            metrics.error("protocol", "send_timeout")
            if request.transport is not None:
                request.transport.abort()  # a close frame would not be read either

        sink = WebSocketSink(ws, options.call_id, settings.ws_send_timeout_s, drop_connection)
        try:
            call = await calls.open(options, sink)
        except CallLimitExceeded as exc:
            await sink.stop()
            await _refuse(ws, "capacity", str(exc), WSCloseCode.TRY_AGAIN_LATER)
            return ws
        except ValueError as exc:  # e.g. the chosen TTS engine is not installed here
            await sink.stop()
            await _refuse(ws, "protocol", str(exc), WSCloseCode.POLICY_VIOLATION)
            return ws
        call_log = _CallLog(log, {"call_id": call.call_id})
        peer = request.remote or "?"
        call_log.info(
            "websocket connected peer=%s codec=%s rate=%s", peer, meta.codec, meta.sample_rate
        )
        reason = "client closed"
        try:
            reason = await _pump(ws, sink, call, meta, settings, metrics, call_log)
        finally:
            await call.close(sink.closed_by_server or reason)
            await sink.stop()
            if not ws.closed:
                await ws.close()
        return ws

    app.router.add_get(PATH, handle)


async def _pump(
    ws: web.WebSocketResponse,
    sink: WebSocketSink,
    call: CallHandle,
    meta: CallMetadata,
    settings: Settings,
    metrics: Metrics,
    call_log: logging.LoggerAdapter[logging.Logger],
) -> str:
    """Read caller frames until the connection ends; return why it ended."""
    decoder = make_decoder(meta)
    resampler = StreamResampler(decoder.rate, CALLER_RATE)
    bad_frames = 0
    pacer = InputPacer()
    while True:
        msg = await ws.receive()
        if msg.type == WSMsgType.BINARY:
            payload: bytes = msg.data
            if len(payload) > settings.ws_max_frame_bytes:
                metrics.error("protocol", "oversized_frame")
                await sink.fail(
                    f"frame of {len(payload)} bytes exceeds WS_MAX_FRAME_BYTES="
                    f"{settings.ws_max_frame_bytes}",
                    WSCloseCode.POLICY_VIOLATION,
                )
                return "protocol error: oversized frame"
            try:
                pcm = decoder.decode(payload)
            except Exception as exc:
                bad_frames += 1
                metrics.error("decode", meta.codec)
                if bad_frames == 1 or bad_frames % 100 == 0:
                    call_log.warning(
                        "undecodable %s frame (%d so far): %r", meta.codec, bad_frames, exc
                    )
                continue
            if not pacer.admit(pcm.size / decoder.rate):
                metrics.error("protocol", "too_fast")
                call_log.warning("caller audio faster than real time: closing")
                await sink.fail(
                    "audio is arriving faster than real time", WSCloseCode.POLICY_VIOLATION
                )
                return "protocol error: audio faster than real time"
            if pcm.size:
                call.feed(resampler.process(pcm))
        elif msg.type == WSMsgType.TEXT:
            metrics.error("protocol", "unexpected_text")
            await sink.fail(
                "text frame received where binary audio is due", WSCloseCode.UNSUPPORTED_DATA
            )
            return "protocol error: text frame"
        elif msg.type == WSMsgType.ERROR:
            return f"websocket error: {ws.exception() or msg.data!r}"
        else:  # CLOSE, CLOSING, CLOSED
            return "client closed"
