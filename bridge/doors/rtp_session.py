"""One call's RTP: a UDP socket, the receive path into the call and the paced send path.

Receive: datagram → source check → `parse_rtp` (garbage is counted and dropped) →
RFC 4733 telephone-events become digits, audio goes into the clock-driven `JitterBuffer`.
Every 20 ms tick pops one frame (decoded or concealed), resamples it to 16 kHz with a
`StreamResampler` and hands it to the call.

Send: the bot's speech goes into a `media.playout.Playout` (resampled to the codec's PCM
rate once per sentence, cut into 20 ms frames); every tick sends exactly one packet: the next
queued frame, or comfort silence when the queue is empty (so NATs, PBX RTP timeouts and the
far end's jitter buffer see a steady stream). The RTP timestamp advances one frame per tick
whether or not a packet goes out (on hold), the marker bit is set on the first packet of each
talkspurt, one SSRC per call.

Who may send and receive (strict symmetric RTP, as Asterisk's `strictrtp`): media is
accepted only from the *allowed IPs*: the SDP address, plus the signalling source's IP when
the SDP address is private or unspecified (a caller behind NAT). The first valid packet
from an allowed IP latches its port; from then on only that exact address is accepted and a
third address is never adopted (only a re-INVITE, `update_remote`, starts over). Anything
else is counted in `foreign` and dropped. Our RTP goes only to a *verified* address: the
latched one, or the SDP address when it equals the signalling source IP, so an offer naming
some third party's address cannot turn the bridge into a 50 packets/s reflector.
The session only ever holds IP addresses: the door resolves SDP host names first.

Timeouts: no media for `timeout_s` while the caller should be sending ends the call ("rtp
timeout"); while it is on hold or inactive (our direction sendonly/inactive), no media for
`hold_timeout_s` ends it ("hold timeout").

The ticks come from one `MediaClock` per door, not a task per call, paced by
`media.playout.PacingClock`: an absolute 20 ms schedule that never drifts, and that
resynchronises to now instead of bursting when the loop stalls beyond `MAX_CATCH_UP` frames.

The codec comes from the registry (`media.codecs.codec_for_rtp`) for what SDP negotiated;
packets carry the negotiated payload type, which may differ from the codec's default.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from bridge.backends.base import Audio
from bridge.contract import CALLER_RATE
from media.codecs import AudioCodec, codec_for_rtp
from media.dtmf import DtmfError, DtmfReceiver
from media.jitter import JitterBuffer, JitterStats
from media.playout import FRAME_MS, MAX_CATCH_UP, PacingClock, Playout
from media.resample import StreamResampler
from media.rtp import RtpError, RtpPacket, parse_rtp
from sip.api import Codec, Direction

__all__ = [
    "FRAME_MS",
    "MAX_CATCH_UP",
    "MediaClock",
    "Pcm",
    "RtpSession",
    "RtpStats",
    "bind_rtp_port",
    "codec_of",
]

log = logging.getLogger("bridge.doors.rtp")

Pcm = npt.NDArray[np.int16]
_UNSPECIFIED = ("0.0.0.0", "::", "")
_RTCP_TYPES = (192, 223)  # second byte of RTCP (SR 200 ... ) seen as an RTP header


def _canonical_ip(host: str) -> str | None:
    """`host` as the socket layer writes it, or None when it is not an IP address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _behind_nat(ip: str | None) -> bool:
    """A private or unspecified SDP address: the caller's media may come from elsewhere."""
    if ip is None:
        return True
    address = ipaddress.ip_address(ip)
    return address.is_private or address.is_unspecified or address.is_link_local


def codec_of(codec: Codec) -> AudioCodec:
    """The registry's codec for a negotiated `sip.api.Codec`; raises `UnsupportedCodec`."""
    return codec_for_rtp(codec.name, codec.clock_rate, codec.channels)


@dataclass
class RtpStats:
    """Per-call counters (read by the door for metrics and by tests)."""

    received: int = 0
    """Packets accepted (audio and telephone-events)."""
    malformed: int = 0
    """Datagrams that are not RTP, or telephone-events that do not parse."""
    foreign: int = 0
    """Packets from an address that is not (or is not latched as) the caller's media."""
    unknown_payload: int = 0
    """Packets of a payload type that was not negotiated."""
    dtmf_packets: int = 0
    sent: int = 0
    """Packets sent (bot audio and comfort silence)."""
    audio_sent: int = 0
    frames_fed: int = 0
    """20 ms frames of caller audio handed to the call."""
    resyncs: int = 0
    send_errors: int = 0
    rtcp: int = 0
    """rtcp-mux'd reports received (counted, not used)."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.session: RtpSession | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.session is not None:
            self.session.datagram_received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: the inactivity timer handles it
        if self.session is not None:
            self.session.stats.send_errors += 1


_RANDOM_TRIES = 32


async def bind_rtp_port(
    host: str, port_min: int, port_max: int
) -> tuple[asyncio.DatagramTransport, _Protocol, int]:
    """Bind a UDP socket on a free even port of `port_min..port_max`, chosen at random (a
    port nobody can predict cannot be raced); busy ports are skipped.

    Raises `OSError(EADDRINUSE)` when every even port of the range is taken."""
    loop = asyncio.get_running_loop()
    first = port_min + (port_min & 1)
    count = max(0, (port_max - first) // 2 + 1)
    if count == 0:
        raise OSError(errno.EADDRINUSE, f"no even port in {port_min}-{port_max}")
    # random picks first; then every port once, from a random offset, so a nearly full
    # range still finds its last free port
    offset = secrets.randbelow(count)
    picks = [secrets.randbelow(count) for _ in range(min(_RANDOM_TRIES, count))]
    for index in [*picks, *((offset + i) % count for i in range(count))]:
        port = first + 2 * index
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                _Protocol, local_addr=(host, port)
            )
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        return transport, protocol, port
    raise OSError(errno.EADDRINUSE, f"every even RTP port in {port_min}-{port_max} is in use")


class RtpSession:
    """The media of one call. Create with `bind_rtp_port`'s result; `MediaClock` ticks it."""

    def __init__(
        self,
        transport: asyncio.DatagramTransport,
        protocol: _Protocol,
        local_port: int,
        codec: Codec,
        dtmf: Codec | None,
        remote: tuple[str, int],
        *,
        playout_ms: int,
        timeout_s: float,
        on_audio: Callable[[Pcm], None],
        on_dtmf: Callable[[str], None],
        on_end: Callable[[str], None],
        comfort_silence: bool = True,
        signalling_ip: str | None = None,
        hold_timeout_s: float | None = None,
        on_first_media: Callable[[], object] | None = None,
    ) -> None:
        self.transport = transport
        self.local_port = local_port
        self.dtmf_pt = dtmf.payload_type if dtmf is not None else None
        self._signalling_ip = _canonical_ip(signalling_ip) if signalling_ip else None
        self._allowed: frozenset[str] = frozenset()
        self._verified = False  # the SDP address may get our RTP before any arrives from it
        self._latched: tuple[str, int] | None = None
        self.remote = remote
        self._allow(remote)
        self._on_first_media = on_first_media
        self._hold_timeout_s = timeout_s if hold_timeout_s is None else hold_timeout_s
        self.stats = RtpStats()
        self.direction: Direction = "sendrecv"
        self.comfort_silence = comfort_silence
        self._on_audio = on_audio
        self._on_dtmf = on_dtmf
        self._on_end = on_end
        self._timeout_s = timeout_s
        self._playout_ms = playout_ms
        self._dtmf = DtmfReceiver()
        self._drained = asyncio.Event()
        self._drained.set()
        self._ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._talking = False  # last packet sent carried bot audio
        self._sent_any = False
        self._last_rx: float | None = None
        self._ended = False
        self._closed = False
        self._feed_errors = 0
        self._use_codec(codec)
        protocol.session = self

    def _use_codec(self, codec: Codec) -> None:
        """Set up everything that depends on the codec (at start and on a codec change)."""
        self.codec_info = codec
        self.codec = codec_of(codec)
        self.payload_type = codec.payload_type  # the negotiated one, not the codec's default
        self._encoder = self.codec.encoder()
        self._playout = Playout(self.codec.pcm_rate, FRAME_MS)
        self._silence = np.zeros(self._playout.frame_samples, np.int16)
        self._jitter = JitterBuffer(
            self.codec.clock_rate,
            self.codec.frame_samples,
            self._playout_ms,
            decoder=self.codec.decoder(),
            pcm_frame_samples=self._playout.frame_samples,
        )
        self._to_caller = StreamResampler(self.codec.pcm_rate, CALLER_RATE)
        self._started = False  # first audio packet of this codec received
        self.clear()

    def change_codec(self, codec: Codec, dtmf: Codec | None) -> None:
        """A re-INVITE switched codecs: new encoder, decoder and jitter buffer; the RTP
        stream (SSRC, sequence) continues and the next packet carries the marker bit."""
        self.dtmf_pt = dtmf.payload_type if dtmf is not None else None
        if codec != self.codec_info:
            codec_of(codec)  # raises UnsupportedCodec before anything changes
            old_rate = self.codec.clock_rate
            self._use_codec(codec)
            self._sent_any = False
            if old_rate != self.codec.clock_rate:
                self._ts = secrets.randbits(32)

    # ----------------------------------------------------------------- receive

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """One UDP datagram from anyone: never raises."""
        if self._closed:
            return
        latched = self._latched
        if latched is not None and addr != latched:
            self.stats.foreign += 1
            return
        if latched is None and not self._allowed_ip(addr[0]):
            self.stats.foreign += 1
            return
        if len(data) >= 8 and _RTCP_TYPES[0] <= data[1] <= _RTCP_TYPES[1]:
            self.stats.rtcp += 1  # rtcp-mux'd reports: we do not use them
            return
        try:
            packet = parse_rtp(data)
        except RtpError:
            self.stats.malformed += 1
            return
        pt = packet.payload_type
        if pt != self.payload_type and pt != self.dtmf_pt:
            self.stats.unknown_payload += 1
            return
        if latched is None:
            self._latched = addr
            if addr != self.remote:
                log.info("RTP from %s:%d, SDP said %s:%d: latching", *addr, *self.remote)
            if self._on_first_media is not None:
                first, self._on_first_media = self._on_first_media, None
                first()
        self._last_rx = asyncio.get_running_loop().time()
        self.stats.received += 1
        if pt == self.dtmf_pt:
            self._on_telephone_event(packet)
        elif self.direction in ("sendrecv", "recvonly"):
            self._started = True
            self._jitter.push(packet)

    def _on_telephone_event(self, packet: RtpPacket) -> None:
        self.stats.dtmf_packets += 1
        self._jitter.mark_received(packet)
        try:
            digit = self._dtmf.feed(packet.timestamp, packet.payload)
        except DtmfError:
            self.stats.malformed += 1
            return
        if digit is not None:
            self._on_dtmf(digit)

    @property
    def send_target(self) -> tuple[str, int] | None:
        """Where our RTP goes: the latched source (symmetric RTP), else the SDP address if it
        is the signalling source's; None while no address is verified."""
        if self._latched is not None:
            return self._latched
        return self.remote if self._verified else None

    def _allow(self, remote: tuple[str, int]) -> None:
        """The IPs media may come from for this SDP address (see the module docstring)."""
        sdp_ip = _canonical_ip(remote[0])
        allowed = {sdp_ip} if sdp_ip is not None and remote[1] else set()
        if self._signalling_ip is not None and (
            _behind_nat(sdp_ip) or self._signalling_ip == sdp_ip
        ):
            allowed.add(self._signalling_ip)
        allowed.discard("0.0.0.0")
        allowed.discard("::")
        self._allowed = frozenset(allowed)
        self._verified = sdp_ip is not None and sdp_ip == self._signalling_ip and remote[1] > 0

    def _allowed_ip(self, host: str) -> bool:
        # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
        return host in self._allowed or _canonical_ip(host) in self._allowed

    def update_remote(self, remote: tuple[str, int]) -> None:
        """A re-INVITE moved the far end: forget the latch and the old stream's state."""
        if remote != self.remote:
            self.remote = remote
            self._latched = None
            self._allow(remote)

    # -------------------------------------------------------------------- send

    def enqueue(self, audio: Audio) -> None:
        """Queue one sentence of bot speech (any rate) as 20 ms frames at the codec rate."""
        self._playout.push(audio.pcm, audio.sample_rate)
        if not self._playout.drained:
            self._drained.clear()

    def clear(self) -> None:
        """Barge-in: drop queued bot audio; the next audio starts a new talkspurt."""
        self._playout.clear()
        self._drained.set()

    async def drained(self, timeout_s: float) -> bool:
        """Wait until the queued bot audio has been sent (False on timeout)."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def queued_ms(self) -> int:
        """Bot audio waiting to be sent."""
        return self._playout.queued_ms

    def _send_frame(self) -> None:
        ts = self._ts
        self._ts = (self._ts + self.codec.frame_samples) & 0xFFFFFFFF
        if self.direction not in ("sendrecv", "sendonly"):
            self._talking = False
            self.clear()
            return
        queued = self._playout.pop()
        if queued is not None:
            frame, talking = queued, True
            if self._playout.drained:
                self._drained.set()
        elif self.comfort_silence:
            frame, talking = self._silence, False
        else:
            self._talking = False
            return
        marker = not self._sent_any or (talking and not self._talking)
        self._talking = talking
        packet = RtpPacket(
            self.payload_type, self._seq, ts, self._ssrc, self._encoder.encode(frame), marker
        )
        self._seq = (self._seq + 1) & 0xFFFF
        self._sent_any = True
        target = self.send_target
        if target is None or target[1] == 0 or target[0] in _UNSPECIFIED:
            return  # no verified address yet, or old-style hold (c=0.0.0.0): nowhere to send
        try:
            self.transport.sendto(packet.serialize(), target)
        except OSError:  # e.g. an IPv6 peer on an IPv4 socket
            self.stats.send_errors += 1
            return
        self.stats.sent += 1
        self.stats.audio_sent += talking

    # -------------------------------------------------------------------- tick

    def tick(self, now: float, skipped: int = 0) -> None:
        """One 20 ms period: play out one received frame into the call, send one packet.
        `skipped` ticks were lost to a clock resync: the RTP clock jumps over them."""
        if self._closed:
            return
        if skipped:
            self._ts = (self._ts + skipped * self.codec.frame_samples) & 0xFFFFFFFF
            self._talking = False  # the next audio packet carries the marker again
            self.stats.resyncs += 1
        if self._started:
            frame = self._jitter.pop()
            pcm16k = self._to_caller.process(frame)
            if pcm16k.size:
                self.stats.frames_fed += 1
                try:
                    self._on_audio(pcm16k)
                except Exception:  # the contract says feed never raises; keep the media going
                    self._feed_errors += 1
                    if self._feed_errors == 1:
                        log.exception("RTP port %d: feeding the call failed", self.local_port)
        self._send_frame()
        self._check_timeout(now)

    def _check_timeout(self, now: float) -> None:
        if self._last_rx is None:
            self._last_rx = now
            return
        if self.direction in ("sendonly", "inactive"):  # on hold the caller sends nothing
            if now - self._last_rx > self._hold_timeout_s:
                self.end("hold timeout")
        elif now - self._last_rx > self._timeout_s:
            self.end("rtp timeout")

    def end(self, reason: str) -> None:
        """Ask the door to hang up this call (once)."""
        if not self._ended:
            self._ended = True
            self._on_end(reason)

    def set_direction(self, direction: Direction) -> None:
        """Our negotiated direction (from the answer): hold stops sending and/or receiving."""
        if direction != self.direction:
            self.direction = direction
            self._last_rx = None  # restart the inactivity timer

    @property
    def jitter_stats(self) -> JitterStats:
        """The jitter buffer's counters."""
        return self._jitter.stats

    def close(self) -> None:
        """Close the socket. Idempotent."""
        if not self._closed:
            self._closed = True
            self.clear()
            self.transport.close()


class MediaClock(PacingClock):
    """Ticks every registered session each 20 ms from one task, on the `PacingClock`
    schedule (`resyncs` and `late_ticks` count its stalls)."""

    def __init__(self, period_s: float = FRAME_MS / 1000) -> None:
        super().__init__(period_s, MAX_CATCH_UP)
        self.sessions: set[RtpSession] = set()
        self.ticks = 0
        self.ticks_per_second = max(1, round(1 / period_s))
        self.on_second: Callable[[], None] | None = None
        """Called about once a second from the clock task (e.g. to update metrics)."""
        self._task: asyncio.Task[None] | None = None

    def add(self, session: RtpSession) -> None:
        """Start ticking `session` (starts the clock task on first use)."""
        self.sessions.add(session)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="media-clock")

    def discard(self, session: RtpSession) -> None:
        """Stop ticking `session`."""
        self.sessions.discard(session)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self.start(loop.time())
        while True:
            delay = self.advance() - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            skipped = self.catch_up(now)
            if skipped:
                log.warning("media clock %d ms behind: resynchronised", skipped * FRAME_MS)
            self.ticks += 1
            for session in list(self.sessions):
                try:
                    session.tick(now, skipped)
                except Exception:
                    log.exception("RTP session on port %d failed a tick", session.local_port)
                    self.sessions.discard(session)
                    session.end("media error")
            if self.on_second is not None and self.ticks % self.ticks_per_second == 0:
                try:
                    self.on_second()
                except Exception:
                    log.exception("media clock: per-second hook failed")

    async def stop(self) -> None:
        """Stop the clock task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
