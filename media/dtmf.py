"""RFC 4733 telephone-event (DTMF over RTP): parse, build, and a digit receiver."""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

__all__ = [
    "DTMF_EVENTS",
    "DtmfError",
    "DtmfReceiver",
    "TelephoneEvent",
    "build_telephone_event",
    "parse_telephone_event",
]

DTMF_EVENTS = "0123456789*#ABCD"  # event codes 0-15 (RFC 4733 §3.2)
_FORMAT = struct.Struct("!BBH")


class DtmfError(ValueError):
    """The payload is not a telephone-event payload."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One telephone-event block: event code, end bit, volume (-dBm0), duration (RTP units)."""

    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        """The DTMF character for events 0-15, else None."""
        return DTMF_EVENTS[self.event] if self.event < len(DTMF_EVENTS) else None


def parse_telephone_event(payload: bytes) -> TelephoneEvent:
    """Parse the first 4-byte event block of an RFC 4733 payload."""
    if len(payload) < 4:
        raise DtmfError(f"telephone-event payload too short ({len(payload)} bytes)")
    event, flags, duration = _FORMAT.unpack_from(payload)
    return TelephoneEvent(event, bool(flags & 0x80), flags & 0x3F, duration)


def build_telephone_event(
    event: int | str, end: bool, volume: int = 10, duration: int = 0
) -> bytes:
    """Build a 4-byte telephone-event payload (`event` as code or DTMF character)."""
    code = DTMF_EVENTS.index(event.upper()) if isinstance(event, str) else event
    if not 0 <= code <= 255 or not 0 <= volume <= 63 or not 0 <= duration <= 0xFFFF:
        raise DtmfError(f"telephone-event field out of range: {code=} {volume=} {duration=}")
    return _FORMAT.pack(code, (0x80 if end else 0) | volume, duration)


class DtmfReceiver:
    """Turn a stream of telephone-event packets into digits, each reported exactly once.

    An event is identified by its RTP timestamp (the event start, RFC 4733
    §2.5.1.2): the first packet of a new timestamp yields the digit, and later
    updates, end-bit retransmissions and duplicates of it yield nothing. A new
    segment of a long event (next timestamp = start + duration, same code, not
    ended) is recognised as a continuation.
    """

    def __init__(self, history: int = 64) -> None:
        self._seen: deque[int] = deque(maxlen=history)
        self._last: tuple[int, int, int, bool] | None = None  # timestamp, event, duration, ended

    def feed(self, timestamp: int, payload: bytes) -> str | None:
        """Process one packet's (RTP timestamp, payload); return a new digit or None."""
        ev = parse_telephone_event(payload)
        timestamp &= 0xFFFFFFFF
        if timestamp in self._seen:
            self._update(timestamp, ev)
            return None
        continuation = (
            self._last is not None
            and not self._last[3]
            and self._last[1] == ev.event
            and (self._last[0] + self._last[2]) & 0xFFFFFFFF == timestamp
        )
        self._seen.append(timestamp)
        self._last = (timestamp, ev.event, ev.duration, ev.end)
        if continuation:
            return None
        return ev.digit

    def _update(self, timestamp: int, ev: TelephoneEvent) -> None:
        if self._last is not None and self._last[0] == timestamp:
            ended = self._last[3] or ev.end
            self._last = (timestamp, ev.event, max(self._last[2], ev.duration), ended)

    def reset(self) -> None:
        """Forget all events (e.g. on SSRC change)."""
        self._seen.clear()
        self._last = None
