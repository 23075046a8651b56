"""RTP packets (RFC 3550 §5.1): parse and serialize, with CSRCs, header extension and padding."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["RtpError", "RtpPacket", "parse_rtp"]

_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    """The bytes are not a valid RTP packet."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet. `extension` is (profile-defined id, data) with data a multiple of 4 bytes.

    `padding` is the number of padding bytes to append on `serialize()` (0 for none);
    `parse_rtp` strips padding and records how much there was.
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None
    padding: int = 0

    def serialize(self) -> bytes:
        """The packet's wire bytes."""
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"payload type {self.payload_type} out of range 0-127")
        if len(self.csrc) > 15:
            raise RtpError(f"{len(self.csrc)} CSRCs; at most 15")
        if not 0 <= self.padding <= 255:
            raise RtpError(f"padding {self.padding} out of range 0-255")
        first = 0x80 | (0x20 if self.padding else 0) | (0x10 if self.extension else 0)
        first |= len(self.csrc)
        parts = [
            _HEADER.pack(
                first,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence & 0xFFFF,
                self.timestamp & 0xFFFFFFFF,
                self.ssrc & 0xFFFFFFFF,
            )
        ]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension is not None:
            profile, data = self.extension
            if len(data) % 4:
                raise RtpError("RTP header extension length must be a multiple of 4 bytes")
            parts.append(struct.pack("!HH", profile & 0xFFFF, len(data) // 4))
            parts.append(data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse RTP wire bytes; raise `RtpError` on anything that is not a valid RTP packet."""
    if len(data) < 12:
        raise RtpError(f"RTP packet too short ({len(data)} bytes)")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    payload_type = second & 0x7F
    if 72 <= payload_type <= 76:
        raise RtpError(f"payload type {payload_type} is RTCP, not RTP")
    pos = 12
    csrc: tuple[int, ...] = ()
    cc = first & 0x0F
    if cc:
        end = pos + 4 * cc
        if end > len(data):
            raise RtpError("RTP packet truncated in CSRC list")
        csrc = struct.unpack_from(f"!{cc}I", data, pos)
        pos = end
    extension = None
    if first & 0x10:
        if pos + 4 > len(data):
            raise RtpError("RTP packet truncated in header extension")
        profile, words = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + 4 * words
        if end > len(data):
            raise RtpError("RTP header extension runs past the packet")
        extension = (profile, bytes(data[pos + 4 : end]))
        pos = end
    stop = len(data)
    padding = 0
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or stop - padding < pos:
            raise RtpError(f"invalid RTP padding length {padding}")
        stop -= padding
    return RtpPacket(
        payload_type=payload_type,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[pos:stop]),
        marker=bool(second & 0x80),
        csrc=tuple(csrc),
        extension=extension,
        padding=padding,
    )
