"""Write the RTP pcap files SIPp's `play_pcap_audio` replays: speech (G.711) and RFC 4733 DTMF.

SIPp replays the UDP payloads of a pcap towards the media address the SUT's SDP gave,
keeping the capture's inter-packet timing. Only the payloads and timestamps matter; the
Ethernet/IP/UDP headers are written because SIPp's pcap reader parses them.

    python sipp/rtppcap.py speech in.wav out.pcap --codec pcmu
    python sipp/rtppcap.py dtmf 1# out.pcap
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import wave
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from media.dtmf import build_telephone_event
from media.g711 import alaw_encode, ulaw_encode
from media.rtp import RtpPacket

__all__ = ["CODECS", "dtmf_packets", "read_wav_mono", "speech_packets", "write_pcap"]

CODECS = {"pcmu": (0, ulaw_encode), "pcma": (8, alaw_encode)}
"""Codec name → (static payload type, int16 → bytes encoder)."""

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
DTMF_PT = 101

_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # LINKTYPE_ETHERNET
_SRC_IP, _DST_IP = bytes((127, 0, 0, 1)), bytes((127, 0, 0, 1))
_SRC_PORT, _DST_PORT = 6000, 10000


def read_wav_mono(path: Path, rate: int = RATE) -> npt.NDArray[np.int16]:
    """A 16-bit PCM WAV file as mono int16 at `rate` (channels averaged, soxr HQ)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        channels, native = w.getnchannels(), w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if native != rate:
        pcm = soxr.resample(pcm, native, rate).astype(np.int16)
    return pcm


def speech_packets(
    pcm8k: npt.NDArray[np.int16], codec: str = "pcmu", ssrc: int | None = None
) -> list[tuple[float, bytes]]:
    """(send time in seconds, RTP bytes) for 8 kHz PCM cut in 20 ms frames (last one padded)."""
    pt, encode = CODECS[codec]
    ssrc = random.getrandbits(32) if ssrc is None else ssrc
    frames = -(-len(pcm8k) // FRAME)
    padded = np.zeros(frames * FRAME, np.int16)
    padded[: len(pcm8k)] = pcm8k
    seq0, ts0 = random.getrandbits(15), random.getrandbits(31)
    out = []
    for i in range(frames):
        payload = encode(padded[i * FRAME : (i + 1) * FRAME])
        packet = RtpPacket(pt, seq0 + i, ts0 + i * FRAME, ssrc, payload, marker=i == 0)
        out.append((i * 0.02, packet.serialize()))
    return out


def dtmf_packets(
    digits: str, ssrc: int | None = None, tone_ms: int = 100, gap_ms: int = 100
) -> list[tuple[float, bytes]]:
    """RFC 4733 packets for `digits`: updates every 20 ms, the end packet sent three times."""
    ssrc = random.getrandbits(32) if ssrc is None else ssrc
    seq, t = random.getrandbits(15), 0.0
    ts = random.getrandbits(31)
    out = []
    steps = max(1, tone_ms // 20)
    for digit in digits:
        for step in range(1, steps + 1):
            end = step == steps
            payload = build_telephone_event(digit, end=end, duration=step * FRAME)
            repeats = 3 if end else 1
            for _ in range(repeats):
                packet = RtpPacket(DTMF_PT, seq, ts, ssrc, payload, marker=step == 1)
                out.append((t, packet.serialize()))
                seq += 1
            t += 0.02
        ts += steps * FRAME + gap_ms * RATE // 1000
        t += gap_ms / 1000
    return out


def _udp_frame(payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", _SRC_PORT, _DST_PORT, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0, _SRC_IP, _DST_IP)
    checksum = sum(struct.unpack("!10H", ip))
    checksum = (checksum & 0xFFFF) + (checksum >> 16)
    checksum = ~((checksum & 0xFFFF) + (checksum >> 16)) & 0xFFFF
    ip = ip[:10] + struct.pack("!H", checksum) + ip[12:]
    ether = bytes(6) + bytes(6) + b"\x08\x00"
    return ether + ip + udp


def write_pcap(path: Path, packets: Iterable[tuple[float, bytes]], start: float = 1.0e9) -> Path:
    """Write (relative time, RTP bytes) pairs as an Ethernet/IPv4/UDP pcap file."""
    with open(path, "wb") as f:
        f.write(_PCAP_HEADER)
        for when, rtp in packets:
            frame = _udp_frame(rtp)
            secs = start + when
            f.write(
                struct.pack(
                    "<IIII", int(secs), round((secs % 1) * 1e6) % 1000000, len(frame), len(frame)
                )
            )
            f.write(frame)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write a speech or DTMF pcap."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    speech = sub.add_parser("speech", help="a 16-bit WAV file as 20 ms G.711 RTP")
    speech.add_argument("wav", type=Path)
    speech.add_argument("out", type=Path)
    speech.add_argument("--codec", choices=sorted(CODECS), default="pcmu")
    dtmf = sub.add_parser("dtmf", help="RFC 4733 telephone-events for some digits")
    dtmf.add_argument("digits")
    dtmf.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.kind == "speech":
        write_pcap(args.out, speech_packets(read_wav_mono(args.wav), args.codec))
    else:
        write_pcap(args.out, dtmf_packets(args.digits))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
