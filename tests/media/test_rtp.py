"""RTP parse/serialize (RFC 3550): laws, a known packet, and garbage."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.rtp import RtpError, RtpPacket, parse_rtp

packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127).filter(lambda pt: not 72 <= pt <= 76),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=300),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none()
    | st.tuples(
        st.integers(0, 0xFFFF),
        st.integers(0, 20).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
    ),
    padding=st.integers(0, 255),
)


@given(packets)
def test_parse_inverts_serialize(packet: RtpPacket) -> None:
    assert parse_rtp(packet.serialize()) == packet


@given(packets)
def test_serialize_inverts_parse(packet: RtpPacket) -> None:
    wire = packet.serialize()
    assert parse_rtp(wire).serialize() == wire


@given(st.binary(max_size=80))
def test_garbage_raises_only_rtp_error(data: bytes) -> None:
    try:
        packet = parse_rtp(data)
    except RtpError:
        return
    assert packet.serialize() == data or packet.padding  # valid bytes round-trip


def test_known_pcmu_packet() -> None:
    wire = bytes.fromhex("80 80 30 39 00 00 1f 40 de ad be ef") + b"\xff" * 160
    p = parse_rtp(wire)
    assert (p.payload_type, p.marker, p.sequence, p.timestamp, p.ssrc) == (
        0,
        True,
        12345,
        8000,
        0xDEADBEEF,
    )
    assert p.payload == b"\xff" * 160
    assert p.csrc == () and p.extension is None and p.padding == 0
    assert p.serialize() == wire


def test_padding_and_extension_are_stripped_from_payload() -> None:
    header = struct.pack("!BBHII", 0xB2, 111, 1, 2, 3) + struct.pack("!II", 10, 20)
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\x00\x00"
    wire = header + ext + b"opus" + b"\x00\x00\x03"
    p = parse_rtp(wire)
    assert p.payload == b"opus"
    assert p.csrc == (10, 20)
    assert p.extension == (0xBEDE, b"\x10\xaa\x00\x00")
    assert p.padding == 3
    assert p.serialize() == wire


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"\x80\x00", "too short"),
        (bytes([0x40]) + bytes(11), "version 1"),
        (bytes([0x80, 200]) + bytes(10), "RTCP"),
        (bytes([0x83, 0]) + bytes(14), "CSRC"),
        (bytes([0x90, 0]) + bytes(12), "extension"),
        (bytes([0x90, 0]) + bytes(10) + b"\x00\x00\x00\x05", "extension"),
        (bytes([0xA0, 0]) + bytes(10) + b"\x00", "padding"),
        (bytes([0xA0, 0]) + bytes(10) + b"\x20", "padding"),
    ],
)
def test_malformed_packets_raise_rtp_error(wire: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        parse_rtp(wire)


def test_serialize_refuses_unrepresentable_fields() -> None:
    with pytest.raises(RtpError):
        RtpPacket(128, 0, 0, 0, b"").serialize()
    with pytest.raises(RtpError):
        RtpPacket(0, 0, 0, 0, b"", extension=(1, b"abc")).serialize()
    with pytest.raises(RtpError):
        RtpPacket(0, 0, 0, 0, b"", csrc=tuple(range(16))).serialize()
