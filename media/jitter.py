"""A clock-driven RTP jitter buffer with loss concealment.

The caller pushes packets as they arrive and calls `pop()` once per frame tick
(20 ms); every `pop()` returns exactly one frame of PCM, whatever the network
did. Playout is driven by RTP timestamps:

* The first packet is played `playout_delay_ms` after it arrived (silence until
  then); the play clock then advances one frame per tick.
* A packet whose slot has already been played is *late* (dropped); one whose
  sequence number was already seen is a *duplicate* (dropped).
* A slot with no packet is concealed by the stream's `media.codecs.Decoder`
  (`conceal()`: Opus PLC, G.711 a fading repeat) for at most `max_conceal_frames`
  ticks, then silence.
* Sequence numbers and timestamps are unwrapped (16 and 32 bits). A new
  packet whose timestamp does not fit the play clock (a timestamp jump, a new
  SSRC, a sender whose clock drifted behind ours) is re-based: mapped right
  after the previous packet when its sequence number continues the stream,
  otherwise `playout_delay_ms` ahead of the play clock. Packets from the
  previous SSRC that arrive after a switch are counted late.
* A timestamp shift that is not a whole number of frames is snapped onto the
  play grid (to the nearest slot; counted as a resync), so the stream keeps
  playing instead of landing between the slots `pop()` asks for.
* Non-audio packets of the stream (`mark_received`, e.g. RFC 4733 events, whose
  timestamp stays at the event start) only count for loss; they never move
  the timestamp mapping.
* The buffer is bounded twice over: a packet whose mapped timestamp lies further ahead
  of the play clock than `playout_delay_ms + jump_ms` (a far-future timestamp on an old
  sequence number, which no re-base can place) or that would take the buffer beyond
  `max_packets` entries is dropped and counted in `out_of_window`, so a flood of hostile
  packets costs each `push()` and `pop()` a bounded amount of work.
* If the sender's clock runs fast and the buffer grows more than
  `max_excess_ms` beyond the playout delay, one frame is dropped per tick
  until it is back.

Counts follow RFC 3550: `lost` = expected − received (sequence numbers never
seen), `concealed` = frames produced by concealment, `invalid` = payloads the
decoder rejected with `ValueError` (concealed like a loss).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from media.rtp import RtpPacket

if TYPE_CHECKING:
    from media.codecs import Decoder

__all__ = ["JitterBuffer", "JitterStats"]

Pcm = npt.NDArray[np.int16]

_SEQ_RESTART = 1000  # a sequence gap larger than this starts a new numbering
_MAX_SEQ_GAP_CONTINUE = 50  # re-base seamlessly across at most this many missing packets


@dataclass(frozen=True, slots=True)
class JitterStats:
    """Counters since construction; `depth` = packets buffered, `depth_ms` = their span ahead."""

    received: int
    lost: int
    concealed: int
    late: int
    duplicate: int
    dropped: int
    resyncs: int
    invalid: int
    depth: int
    depth_ms: float
    out_of_window: int = 0
    """Packets dropped on arrival: too far ahead of the play clock, or the buffer full."""


def _unwrap(value: int, reference: int, bits: int) -> int:
    """Extend a `bits`-wide counter to the integer nearest `reference`."""
    span = 1 << bits
    delta = (value - reference) & (span - 1)
    if delta >= span >> 1:
        delta -= span
    return reference + delta


class JitterBuffer:
    """Reorder, de-duplicate and conceal RTP audio; `pop()` yields one frame per tick."""

    def __init__(
        self,
        clock_rate: int,
        frame_samples: int,
        playout_delay_ms: int = 60,
        *,
        decoder: Decoder,
        pcm_frame_samples: int | None = None,
        max_conceal_frames: int = 5,
        max_excess_ms: int = 100,
        jump_ms: int = 300,
        max_packets: int = 200,
    ) -> None:
        if clock_rate <= 0 or frame_samples <= 0:
            raise ValueError("clock_rate and frame_samples must be positive")
        self.clock_rate = clock_rate
        self.frame_samples = frame_samples
        self.pcm_frame_samples = pcm_frame_samples or frame_samples
        self._decoder = decoder
        self._delay = -(-playout_delay_ms * clock_rate // 1000 // frame_samples) * frame_samples
        self._max_conceal = max_conceal_frames
        self._excess = max_excess_ms * clock_rate // 1000
        self._jump = jump_ms * clock_rate // 1000
        self.max_packets = max(1, max_packets)
        """The most entries the buffer holds (200 = 4 s of 20 ms frames)."""
        self._silence = np.zeros(self.pcm_frame_samples, np.int16)
        self._buffer: dict[int, bytes] = {}  # mapped timestamp -> payload
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._ssrc: int | None = None
        self._old_ssrc: int | None = None
        self._play_ts = 0
        self._playing = False  # a packet has been played
        self._conceal_run = 0
        # Sequence / timestamp state of the current SSRC.
        self._max_seq = 0
        self._min_seq = 0
        self._prev_max_seq = -(1 << 20)  # numbering before the last sequence restart
        self._last_raw_ts = 0
        self._newest_mapped = 0  # mapped timestamp of the newest audio packet
        self._newest_seq = 0  # its extended sequence number
        self._segments: list[tuple[int, int]] = []  # (first ext seq, ts offset), newest last
        # Counters.
        self._expected = 0
        self._received = 0
        self._concealed = 0
        self._late = 0
        self._duplicate = 0
        self._dropped = 0
        self._resyncs = 0
        self._invalid = 0
        self._out_of_window = 0

    # ----------------------------------------------------------------- input

    def push(self, packet: RtpPacket) -> None:
        """Accept one arriving audio packet (any order; duplicate and late ones are counted)."""
        self._accept(packet, packet.payload)

    def mark_received(self, packet: RtpPacket) -> None:
        """Count a non-audio packet of the stream (e.g. RFC 4733 DTMF) as received, not lost."""
        self._accept(packet, None)

    def _accept(self, packet: RtpPacket, payload: bytes | None) -> None:
        if self._ssrc is None:
            self._start_stream(packet, payload, None)
            return
        if packet.ssrc != self._ssrc:
            if packet.ssrc == self._old_ssrc:
                self._late += 1
                return
            self._old_ssrc = self._ssrc
            self._resyncs += 1
            self._start_stream(
                packet, payload, self._continue_at(self._newest_mapped + self.frame_samples)
            )
            return

        seq = _unwrap(packet.sequence, self._max_seq, 16)
        if seq in self._seen:
            self._duplicate += 1
            return
        delta = seq - self._max_seq
        if abs(delta) > _SEQ_RESTART:
            if abs(_unwrap(packet.sequence, self._prev_max_seq, 16) - self._prev_max_seq) < 100:
                self._late += 1  # a straggler from before the restart
                return
            self._resyncs += 1
            self._prev_max_seq = self._max_seq
            self._start_stream(packet, payload, self._play_ts + self._delay, keep_ssrc=True)
            return
        if delta > 0:
            self._max_seq = seq
            self._expected += delta
        elif seq < self._min_seq:
            self._expected += self._min_seq - seq
            self._min_seq = seq
        self._remember(seq)
        self._received += 1
        if payload is None:  # counted only: its timestamp says nothing about audio timing
            return
        raw_ts = _unwrap(packet.timestamp, self._last_raw_ts, 32)
        if seq > self._newest_seq:
            self._last_raw_ts = raw_ts
            mapped = raw_ts + self._segments[-1][1]
            ahead = mapped - self._play_ts
            if ahead < 0 or ahead > self._delay + self._jump:
                mapped = self._rebase(seq, raw_ts, seq - self._newest_seq)
            else:
                mapped = self._snap(seq, mapped)
            self._newest_mapped = mapped
            self._newest_seq = seq
        else:
            mapped = raw_ts + self._offset_for(seq)
            mapped += self._grid_shift(mapped)
        if mapped < self._play_ts or mapped in self._buffer:
            self._late += 1
            return
        self._store(mapped, payload)

    def _store(self, mapped: int, payload: bytes) -> None:
        """Buffer a payload if it lies inside the window ahead of the play clock and fits."""
        if (
            mapped - self._play_ts > self._delay + self._jump
            or len(self._buffer) >= self.max_packets
        ):
            self._out_of_window += 1
            return
        self._buffer[mapped] = payload

    def _continue_at(self, target: int) -> int:
        """`target` if it is still ahead of the play clock and not too far, else a fresh delay."""
        if self._play_ts <= target <= self._play_ts + self._delay + self._jump:
            return target
        return self._play_ts + self._delay

    def _start_stream(
        self, packet: RtpPacket, payload: bytes | None, target: int | None, keep_ssrc: bool = False
    ) -> None:
        """Begin a new numbering (first packet, new SSRC or sequence restart)."""
        if not keep_ssrc:
            self._ssrc = packet.ssrc
        seq = packet.sequence  # numbering starts inside the first 16-bit cycle
        self._max_seq = self._min_seq = seq
        self._last_raw_ts = packet.timestamp
        if target is None:  # very first packet: play it after the playout delay
            self._play_ts = packet.timestamp - self._delay
            target = packet.timestamp
        self._segments = [(seq, target - packet.timestamp)]
        self._seen.clear()
        self._seen_order.clear()
        self._remember(seq)
        self._expected += 1
        self._received += 1
        self._newest_mapped = target
        self._newest_seq = seq
        if payload is not None:
            self._store(target, payload)

    def _rebase(self, seq: int, raw_ts: int, delta: int) -> int:
        """Map a new packet whose timestamp does not fit onto the play clock."""
        self._resyncs += 1
        if delta > _MAX_SEQ_GAP_CONTINUE:
            target = self._play_ts + self._delay
        else:
            target = self._continue_at(self._newest_mapped + delta * self.frame_samples)
        self._segments = [*self._segments[-1:], (seq, target - raw_ts)]
        return target

    def _grid_shift(self, mapped: int) -> int:
        """The shift (within ±half a frame) that puts `mapped` on a slot `pop()` will ask for."""
        r = (mapped - self._play_ts) % self.frame_samples
        return -r if r <= self.frame_samples // 2 else self.frame_samples - r

    def _snap(self, seq: int, mapped: int) -> int:
        """Snap an off-grid packet onto the grid; following packets of its segment follow."""
        shift = self._grid_shift(mapped)
        if shift == 0:
            return mapped
        self._resyncs += 1
        self._segments = [*self._segments[-1:], (seq, self._segments[-1][1] + shift)]
        return mapped + shift

    def _offset_for(self, seq: int) -> int:
        for first, offset in reversed(self._segments):
            if seq >= first:
                return offset
        return self._segments[0][1]

    def _remember(self, seq: int) -> None:
        self._seen.add(seq)
        self._seen_order.append(seq)
        if len(self._seen_order) > 2048:
            self._seen.discard(self._seen_order.popleft())

    # ---------------------------------------------------------------- output

    def pop(self) -> Pcm:
        """The frame for this tick: decoded, concealed, or silence. Never blocks, never skips."""
        if self._ssrc is None:
            return self._silence.copy()
        stale = [ts for ts in self._buffer if ts < self._play_ts]
        for ts in stale:  # never played (off the play grid): keep the buffer bounded
            del self._buffer[ts]
        self._dropped += len(stale)
        if self._buffer and max(self._buffer) - self._play_ts > self._delay + self._excess:
            if self._buffer.pop(self._play_ts, None) is not None:
                self._dropped += 1
            self._play_ts += self.frame_samples
        payload = self._buffer.pop(self._play_ts, None)
        self._play_ts += self.frame_samples
        decoded = None
        if payload is not None:
            try:
                decoded = self._decoder.decode(payload)
            except ValueError:  # a payload the codec rejects: conceal it like a loss
                self._invalid += 1
        if decoded is not None:
            pcm = self._fit(decoded)
            self._playing = True
            self._conceal_run = 0
        elif self._playing and self._conceal_run < self._max_conceal:
            self._conceal_run += 1
            self._concealed += 1
            concealed = self._decoder.conceal()
            pcm = self._silence.copy() if concealed is None else self._fit(concealed)
        else:
            pcm = self._silence.copy()
        return pcm

    def _fit(self, pcm: Pcm) -> Pcm:
        n = self.pcm_frame_samples
        if pcm.shape[0] == n:
            return pcm
        if pcm.shape[0] > n:
            return pcm[:n]
        return np.concatenate([pcm, np.zeros(n - pcm.shape[0], np.int16)])

    @property
    def stats(self) -> JitterStats:
        """A snapshot of the counters and the current depth."""
        depth_ts = (
            max(0, max(self._buffer) + self.frame_samples - self._play_ts) if self._buffer else 0
        )
        return JitterStats(
            received=self._received,
            lost=max(0, self._expected - self._received),
            concealed=self._concealed,
            late=self._late,
            duplicate=self._duplicate,
            dropped=self._dropped,
            resyncs=self._resyncs,
            invalid=self._invalid,
            depth=len(self._buffer),
            depth_ms=1000.0 * depth_ts / self.clock_rate,
            out_of_window=self._out_of_window,
        )
