"""The WebRTC door: a browser call over aiortc, signalled by one HTTP POST.

The page posts its SDP offer with the call's metadata to `POST /webrtc/offer` and gets the
answer back (no trickle ICE; host candidates only unless `ICE_SERVERS` names STUN/TURN).
Per call, one `WebRtcSession` owns the peer connection: the caller's track is down-mixed,
resampled to 16 kHz and fed to the pipeline; the bot's speech goes back on `BotAudioTrack`,
paced in real time with silence between turns; pipeline events go to the page on the data
channel the page opened (label "events") as the WebSocket door's JSON. Either side hangs up:
the page with a "hangup" message or by closing the connection, the bridge with
`CallSink.hangup`. The page itself is served by `bridge.web_page`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from bridge.backends.base import Audio
from bridge.config import TTS_ENGINES, Settings
from bridge.contract import (
    CALLER_RATE,
    CallHandle,
    CallLimitExceeded,
    CallOpener,
    CallOptions,
    Event,
    InvalidCallOptions,
    parse_call_options,
)
from bridge.pipeline.manager import refusal
from bridge.turn import turn_credentials
from media.playout import PacingClock, Playout
from media.resample import StreamResampler
from sip.tasks import TaskSet

log = logging.getLogger(__name__)

BOT_RATE: Final = 48000
"""Sample rate of the outbound track (Opus's native rate)."""
FRAME_SAMPLES: Final = BOT_RATE // 50
"""20 ms at BOT_RATE: the outbound frame size."""
CONNECT_TIMEOUT_S: Final = 20.0
"""A peer connection that is not connected by then is torn down and its call closed."""
MAX_PENDING_EVENTS: Final = 512
"""Events kept while the page's data channel is not open yet; older ones are dropped."""
EVENTS_LABEL: Final = "events"


def ice_servers(
    urls: list[str], turn_secret: str = "", turn_ttl_s: int = 3600
) -> list[RTCIceServer]:
    """`ICE_SERVERS` entries as aiortc servers; `turn:USER:PASS@host:port` carries static
    credentials; any other `turn:`/`turns:` URL gets fresh time-limited ones from
    `turn_secret` (`bridge.turn.turn_credentials`) when it is set."""
    servers = []
    for url in urls:
        match = re.fullmatch(r"(turns?):([^:@/]+):([^@]+)@(.+)", url)
        if match:
            scheme, user, password, host = match.groups()
            servers.append(
                RTCIceServer(urls=f"{scheme}:{host}", username=user, credential=password)
            )
        elif turn_secret and url.startswith(("turn:", "turns:")):
            user, credential = turn_credentials(turn_secret, ttl_s=turn_ttl_s)
            servers.append(RTCIceServer(urls=url, username=user, credential=credential))
        else:
            servers.append(RTCIceServer(urls=url))
    return servers


class CallerAudio:
    """Turns inbound `av.AudioFrame`s (any rate, layout, s16 or float) into mono 16 kHz int16."""

    def __init__(self) -> None:
        self._resampler: StreamResampler | None = None

    def convert(self, frame: AudioFrame) -> npt.NDArray[np.int16]:
        """One frame in, the 16 kHz samples it yields out (may be empty while the filter primes)."""
        rate = int(frame.sample_rate)
        if self._resampler is None or self._resampler.in_rate != rate:
            self._resampler = StreamResampler(rate, CALLER_RATE)
        return self._resampler.process(_mono_int16(frame))


def _mono_int16(frame: AudioFrame) -> npt.NDArray[np.int16]:
    """Down-mix one frame to mono int16 (float formats are scaled from [-1, 1])."""
    data = frame.to_ndarray()
    channels = max(1, len(frame.layout.channels))
    per_channel = (
        data.reshape(channels, -1) if frame.format.is_planar else data.reshape(-1, channels).T
    )
    if channels == 1 and data.dtype == np.int16:
        return np.ascontiguousarray(per_channel[0])
    mixed = per_channel.astype(np.float32).mean(axis=0)
    if np.issubdtype(data.dtype, np.floating):
        mixed *= 32767.0
    return np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)


class BotAudioTrack(MediaStreamTrack):
    """The outbound audio track: 20 ms 48 kHz mono frames paced by the wall clock
    (`media.playout.PacingClock`), the bot's queued speech (`media.playout.Playout`) when
    there is some, silence otherwise."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._playout = Playout(BOT_RATE)
        self._pacing = PacingClock()
        self._pts = 0
        self._time_base = fractions.Fraction(1, BOT_RATE)
        self.samples_sent = 0
        """Bot (non-silence) samples handed to the encoder so far."""

    def push(self, pcm: npt.NDArray[np.int16], rate: int = BOT_RATE) -> None:
        """Queue one sentence of bot speech at `rate` (resampled to 48 kHz)."""
        self._playout.push(pcm, rate)

    def clear(self) -> None:
        """Drop queued speech (barge-in); silence follows from the next frame."""
        self._playout.clear()

    @property
    def queued_ms(self) -> int:
        """Bot speech waiting to be sent."""
        return self._playout.queued_ms

    @property
    def queued_samples(self) -> int:
        """Bot speech waiting to be sent, in 48 kHz samples."""
        return self._playout.queued_ms * BOT_RATE // 1000

    async def recv(self) -> AudioFrame:
        """The next 20 ms frame, released at its wall-clock time."""
        if self.readyState != "live":
            raise MediaStreamError
        if not self._pacing.started:
            self._pacing.start(time.monotonic())
        else:
            delay = self._pacing.advance() - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # after a stall the schedule restarts from now; pts stays contiguous
            self._pacing.catch_up(time.monotonic())
        frame = AudioFrame.from_ndarray(self._take().reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = BOT_RATE
        frame.pts = self._pts
        frame.time_base = self._time_base
        self._pts += FRAME_SAMPLES
        return frame

    def _take(self) -> npt.NDArray[np.int16]:
        frame = self._playout.pop()
        if frame is None:
            return np.zeros(FRAME_SAMPLES, np.int16)
        self.samples_sent += len(frame)
        return frame


class WebRtcSession:
    """One browser call: peer connection, tracks, data channel and the pipeline's handle.

    It is the call's `CallSink`. The call is opened (its slot taken) before the peer
    connection is built and attached with `attach()`, so a call over the limit never costs
    a peer connection. `close()` ends everything and is idempotent.
    """

    def __init__(
        self,
        options: CallOptions,
        on_closed: Callable[[WebRtcSession], None] | None = None,
    ) -> None:
        self.pc: RTCPeerConnection | None = None
        self._on_closed = on_closed
        self.options = options
        self.call_id = options.call_id
        self.outbound = BotAudioTrack()
        self.handle: CallHandle | None = None
        self.closed = asyncio.Event()
        self._closing = False
        self._channel: RTCDataChannel | None = None
        self._pending: deque[str] = deque(maxlen=MAX_PENDING_EVENTS)
        self._tasks = TaskSet(f"webrtc-{self.call_id}", log)
        self._connected = asyncio.Event()

    def attach(self, pc: RTCPeerConnection) -> None:
        """Take the call's peer connection and listen to its tracks, channel and state."""
        self.pc = pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)

    # CallSink
    async def send_event(self, event: Event) -> None:
        """Send one pipeline event to the page (queued until the data channel opens)."""
        text = json.dumps(event, separators=(",", ":"))
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(text)
        elif not self._closing:
            self._pending.append(text)

    async def send_audio(self, audio: Audio) -> None:
        """Queue one sentence of bot speech, resampled to 48 kHz."""
        self.outbound.push(audio.pcm, audio.sample_rate)

    def clear_audio(self) -> None:
        """Barge-in: drop bot speech not yet sent."""
        self.outbound.clear()

    def playing_until(self) -> float:
        """Now plus the bot speech the outbound track still has queued."""
        return time.monotonic() + self.outbound.queued_ms / 1000.0

    async def hangup(self, reason: str) -> None:
        """The bridge ends the call: tell the page, then close the connection."""
        await self.send_event({"type": "hangup", "reason": reason})
        await self.close(reason)

    # lifecycle
    def start(self, handle: CallHandle, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Attach the pipeline's handle and arm the connect timeout."""
        self.handle = handle
        self._spawn(self._connect_watchdog(connect_timeout_s))

    async def close(self, reason: str = "hangup") -> None:
        """End the call: the pipeline, the tasks and the peer connection. Idempotent."""
        if self._closing:
            return
        self._closing = True
        log.info("webrtc call %s closing: %s", self.call_id, reason)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        try:
            if self.handle is not None:
                await self.handle.close(reason)
        except Exception:
            log.exception("webrtc call %s: pipeline close failed", self.call_id)
        finally:
            self.outbound.stop()
            if self.pc is not None:
                with contextlib.suppress(Exception):
                    await self.pc.close()
            self.closed.set()
            if self._on_closed is not None:
                self._on_closed(self)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro, getattr(coro, "__name__", "task"))

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._pump_caller_audio(track))

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_LABEL:
            return
        self._channel = channel
        channel.on("open", self._flush_pending)
        channel.on("message", self._on_message)
        if channel.readyState == "open":
            self._flush_pending()

    def _flush_pending(self) -> None:
        channel = self._channel
        while channel is not None and channel.readyState == "open" and self._pending:
            channel.send(self._pending.popleft())

    def _on_message(self, message: str | bytes) -> None:
        """Page → bridge: `{"type":"hangup"}` (or plain "hangup") and
        `{"type":"dtmf","digit":"5"}`; anything else is logged and ignored."""
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        parsed: Any = text.strip()
        with contextlib.suppress(ValueError):
            parsed = json.loads(text)
        kind = parsed.get("type") if isinstance(parsed, dict) else parsed
        if kind == "hangup":
            self._spawn(self.close("caller hung up"))
        elif kind == "dtmf" and self.handle is not None:
            digit = str(parsed.get("digit", ""))
            if len(digit) == 1 and digit in "0123456789*#ABCD":
                self.handle.dtmf(digit)
        else:
            log.debug("webrtc call %s: ignored page message %.80r", self.call_id, text)

    async def _on_connection_state(self) -> None:
        if self.pc is None:
            return
        state = self.pc.connectionState
        log.debug("webrtc call %s connection %s", self.call_id, state)
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed"):
            self._spawn(self.close(f"connection {state}"))

    async def _connect_watchdog(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            self._spawn(self.close("connect timeout"))

    async def _pump_caller_audio(self, track: MediaStreamTrack) -> None:
        converter = CallerAudio()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            if not isinstance(frame, AudioFrame) or self.handle is None:
                continue
            try:
                pcm = converter.convert(frame)
            except (ValueError, TypeError) as exc:
                log.warning("webrtc call %s: bad caller frame dropped: %s", self.call_id, exc)
                continue
            if pcm.size:
                self.handle.feed(pcm)
        self._spawn(self.close("caller track ended"))


_DOOR_KEY: Final = web.AppKey("voicebridge_webrtc_door", object)


class WebRtcDoor:
    """Signalling endpoints and the set of live sessions."""

    def __init__(self, calls: CallOpener, settings: Settings) -> None:
        self.calls = calls
        self.settings = settings
        self.sessions: set[WebRtcSession] = set()
        self.connect_timeout_s = CONNECT_TIMEOUT_S
        """Seconds a new peer connection has to reach "connected"."""
        self._shutting_down = False

    def _ice(self) -> list[RTCIceServer]:
        settings = self.settings
        return ice_servers(list(settings.ice_servers), settings.turn_secret, settings.turn_ttl_s)

    def configuration(self) -> RTCConfiguration:
        """ICE configuration (TURN credentials minted now); an explicit empty list so aiortc
        adds no public STUN server."""
        return RTCConfiguration(iceServers=self._ice())

    async def handle_config(self, request: web.Request) -> web.Response:
        """`GET /webrtc/config`: what the page needs before it calls (TURN credentials
        included: `bridge.access_http` admits only ALLOW_FROM peers with a valid token)."""
        servers: list[dict[str, Any]] = []
        for server in self._ice():
            entry: dict[str, Any] = {"urls": server.urls}
            if server.username:
                entry |= {"username": server.username, "credential": server.credential}
            servers.append(entry)
        return web.json_response(
            {
                "iceServers": servers,
                "ttsEngines": list(TTS_ENGINES),
                "defaultTtsEngine": self.settings.default_tts_engine,
            }
        )

    async def handle_offer(self, request: web.Request) -> web.Response:
        """`POST /webrtc/offer`: `{sdp, type, tts_engine, mode}` in, `{sdp, type, call_id}` out."""
        if self._shutting_down:
            return _error(503, "the bridge is shutting down")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body must be JSON: {sdp, type, tts_engine, mode}")
        problem, options = self._parse_offer(body)
        if options is None:
            return _error(400, problem)
        session = WebRtcSession(options, on_closed=self.sessions.discard)
        try:
            handle = await self.calls.open(options, session)
        except CallLimitExceeded:
            return _error(503, "too many calls, try again later", {"Retry-After": "5"})
        except ValueError as exc:  # e.g. the chosen TTS engine is not installed here
            return _error(400, str(exc))
        # the call holds its slot: only now is a peer connection (sockets, DTLS) worth building
        pc = RTCPeerConnection(configuration=self.configuration())
        session.attach(pc)
        self.sessions.add(session)
        session.start(handle, self.connect_timeout_s)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
            if not any(t.kind == "audio" for t in pc.getTransceivers()):
                await session.close(refusal("bad_request"))  # offer without audio
                return _error(400, "the offer has no audio m-line")
            pc.addTrack(session.outbound)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises many kinds for a malformed SDP
            log.warning("webrtc call %s: bad offer: %r", options.call_id, exc)
            await session.close(refusal("bad_request"))  # bad offer
            return _error(400, "cannot negotiate this SDP offer (see the bridge log)")
        local = pc.localDescription
        log.info(
            "webrtc call %s answered (%s, %s)", options.call_id, options.mode, options.tts_engine
        )
        return web.json_response({"sdp": local.sdp, "type": local.type, "call_id": options.call_id})

    def _parse_offer(self, body: Any) -> tuple[str, CallOptions | None]:
        if not isinstance(body, dict):
            return "the body must be a JSON object", None
        if not isinstance(body.get("sdp"), str) or not body["sdp"].strip():
            return "missing 'sdp' (the browser's SDP offer)", None
        if body.get("type", "offer") != "offer":
            return "'type' must be 'offer'", None
        try:
            options = parse_call_options(
                body, TTS_ENGINES, door="webrtc", default_engine=self.settings.default_tts_engine
            )
        except InvalidCallOptions as exc:
            return str(exc), None
        return "", options

    async def shutdown(self, app: web.Application | None = None) -> None:
        """Close every live call (registered on `app.on_shutdown`)."""
        self._shutting_down = True
        sessions = list(self.sessions)
        await asyncio.gather(*(s.hangup("shutdown") for s in sessions), return_exceptions=True)
        # a close already under way (e.g. the page hung up just now) finishes before we return
        waits = [asyncio.ensure_future(s.closed.wait()) for s in sessions]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.settings.shutdown_grace_s)
            for task in pending:
                task.cancel()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def register(app: web.Application, calls: CallOpener, settings: Settings) -> WebRtcDoor:
    """Add the WebRTC door's routes to `app`; close its calls on app shutdown."""
    door = WebRtcDoor(calls, settings)
    app[_DOOR_KEY] = door
    app.router.add_get("/webrtc/config", door.handle_config)
    app.router.add_post("/webrtc/offer", door.handle_offer)
    app.on_shutdown.append(door.shutdown)
    return door
