"""Acceptance: a new codec is one class registered in one place (`media.codecs`).

A test-only L16 codec (RFC 3551 §4.5.11: big-endian 16-bit linear PCM, here mono 8 kHz on
dynamic payload type 96) is registered, a real SIP call to the echo door offers only it, and
the door must answer it and echo a tone back through it. Nothing else in the bridge knows L16.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from media import codecs
from media.rtp import RtpPacket, parse_rtp
from tests.sip.client import Call, SipClient
from tests.sipdoor.helpers import echo_door, udp_socket

pytestmark = pytest.mark.timeout(30)

RATE = 8000
FRAME = RATE // 50
PT = 96


class L16Mono8k(codecs.RtpCodec):
    """L16/8000/1: the whole codec, decoder and encoder included (stateless)."""

    name, encoding_name, clock_rate, channels = "l16-test", "L16", RATE, 1
    payload_type, pcm_rate = PT, RATE

    def decoder(self) -> L16Mono8k:
        return self

    def encoder(self) -> L16Mono8k:
        return self

    def decode(self, payload: bytes) -> npt.NDArray[np.int16]:
        if len(payload) % 2:
            raise ValueError("L16 payload of odd length")
        return np.frombuffer(payload, ">i2").astype(np.int16)

    def conceal(self) -> None:
        return None

    def encode(self, frame: npt.NDArray[np.int16]) -> bytes:
        return np.asarray(frame, np.int16).astype(">i2").tobytes()


@pytest.fixture
def l16() -> Iterator[L16Mono8k]:
    codec = L16Mono8k()
    codecs.register(codec)
    try:
        yield codec
    finally:
        codecs.unregister(codec.name)


def _offer(rtp_port: int) -> str:
    return (
        "v=0\r\n"
        "o=test 1 1 IN IP4 127.0.0.1\r\n"
        "s=-\r\n"
        "c=IN IP4 127.0.0.1\r\n"
        "t=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP {PT}\r\n"
        f"a=rtpmap:{PT} L16/{RATE}\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )


def _tone(seconds: float, hz: float = 440.0, level: float = 0.3) -> npt.NDArray[np.int16]:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def _rms(pcm: npt.NDArray[np.int16]) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


def _dominant_hz(pcm: npt.NDArray[np.int16]) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / RATE)[int(np.argmax(spectrum))])


async def test_a_registered_codec_is_negotiated_and_carries_audio(l16: L16Mono8k) -> None:
    loop = asyncio.get_running_loop()
    rtp = udp_socket()
    async with echo_door() as door, SipClient(door.service.port) as client:
        call = Call(client)
        client.send(
            call.request("INVITE", branch=call.invite_branch, body=_offer(rtp.getsockname()[1]))
        )
        ok = await client.expect(200, call_id=call.call_id, wait_s=5)
        call.to_tag = ok.get("To", "").split("tag=")[1]  # type: ignore[union-attr]
        client.send(call.ack())
        answer = ok.body.decode()
        media = re.search(r"^m=audio (\d+) RTP/AVP ([\d ]+)\r?$", answer, re.M)
        assert media is not None, answer
        assert media.group(2).split()[0] == str(PT), answer
        assert f"a=rtpmap:{PT} L16/{RATE}" in answer
        door_rtp = ("127.0.0.1", int(media.group(1)))

        tone = _tone(1.0)
        start = loop.time()
        for i in range(len(tone) // FRAME):
            await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
            packet = RtpPacket(
                PT, i, i * FRAME, 0x5EED, l16.encode(tone[i * FRAME : (i + 1) * FRAME])
            )
            rtp.sendto(packet.serialize(), door_rtp)

        back: list[RtpPacket] = []
        end = loop.time() + 2.0
        while (left := end - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(loop.sock_recv(rtp, 2048), left)
            except TimeoutError:
                break
            back.append(parse_rtp(data))
        client.send(call.request("BYE", cseq=2))
        await client.expect(200, call_id=call.call_id, wait_s=5)

    rtp.close()
    assert back and {p.payload_type for p in back} == {PT}
    assert all(len(p.payload) == 2 * FRAME for p in back)  # 20 ms of L16 per packet
    echoed = np.concatenate([l16.decode(p.payload) for p in back])
    frames = [echoed[i : i + FRAME] for i in range(0, len(echoed) - FRAME + 1, FRAME)]
    voiced = np.concatenate([f for f in frames if _rms(f) > 0.5 * _rms(tone)])
    assert len(voiced) >= 0.8 * len(tone)
    assert abs(_dominant_hz(voiced) - 440.0) < 10
    assert abs(20 * np.log10(_rms(voiced) / _rms(tone))) < 3  # round trip keeps the level
