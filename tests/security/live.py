"""A live `voicebridge serve` on stub backends, and the clients the attack tests and
`bench/attacks.py` aim at it: raw SIP requests and a WebSocket caller from a chosen
loopback address (all of 127.0.0.0/8 reaches the bridge on Linux), and /metrics counters.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import numpy as np

from tests.fakes.pipeline import silence, tone
from tests.fakes.processes import serve_env, voicebridge_serving
from tests.fakes.stub_backends import stub_backends, stub_env
from tests.sipdoor.helpers import rtp_range
from tests.support import free_port

CHUNK = 320  # 20 ms of 16 kHz PCM
PCM_META = {"codec": "pcm", "sample_rate": 16000, "mode": "conversation"}
ATTACKER = "127.0.0.1"
BYSTANDER = "127.0.0.2"


@dataclass
class LiveBridge:
    """A running `voicebridge serve`: its ports and log."""

    http_port: int
    sip_port: int
    log: Path
    rtp_ports: tuple[int, int]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws/call"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/metrics"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@contextmanager
def live_bridge(workdir: Path, *, cpu: int | None = None, **env: str) -> Iterator[LiveBridge]:
    """Stub backends at the spec budget and `voicebridge serve` on free loopback ports
    (SIP and HTTP on 127.0.0.1), with `env` added to its environment; `cpu` pins the bridge
    to that core (`taskset`), for benchmarks."""
    rtp = rtp_range()
    http_port, sip_port = free_port(), free_port()
    with stub_backends() as stubs:
        full = {
            **serve_env(http_port, sip_port, rtp),
            "BARGE_IN": "false",
            **stub_env(stubs.url),
            **env,
        }
        log = workdir / "bridge.log"
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        command = [*pin, sys.executable, "-m", "bridge", "serve"]
        with voicebridge_serving(command, log, workdir, full):
            yield LiveBridge(http_port, sip_port, log, rtp)


def metric(bridge: LiveBridge, name: str) -> float:
    """The sum of every sample of counter/gauge `name` on /metrics (0 when absent)."""
    text = httpx.get(bridge.metrics_url, timeout=5).text
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(m) for m in pattern.findall(text))


def sip_invite(port: int, source: str, call_id: str | None = None, user: str = "bot") -> bytes:
    """An INVITE (PCMU offer, RTP port 4000 on `source`) as a softphone would send it."""
    call_id = call_id or uuid.uuid4().hex
    body = (
        f"v=0\r\no=- 1 1 IN IP4 {source}\r\ns=-\r\nc=IN IP4 {source}\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    return (
        f"INVITE sip:{user}@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source}:5070;branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:caller@{source}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:{user}@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:caller@{source}:5070>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def sip_options(port: int, source: str) -> bytes:
    """An OPTIONS ping, as `svmap` sends it."""
    return (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source}:5070;branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{source}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:127.0.0.1:{port}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def final_status(port: int, source: str, request: bytes, within_s: float = 5.0) -> int | None:
    """Send `request` over UDP from `source`, retransmitted as RFC 3261 timer A does (T1 =
    500 ms, doubling) until a provisional or final answer; the first final (>= 200) status,
    or None when none comes back within `within_s`. A 2xx to an INVITE is not ACKed (the
    test bridge is torn down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(0.1)
        start = time.monotonic()
        interval, resend_at, answered = 0.5, start, False
        while time.monotonic() < start + within_s:
            if not answered and time.monotonic() >= resend_at:
                sock.sendto(request, ("127.0.0.1", port))
                resend_at, interval = time.monotonic() + interval, interval * 2
            try:
                data = sock.recv(65535)
            except TimeoutError:
                continue
            match = re.match(rb"SIP/2\.0 (\d{3})", data)
            if match:
                answered = True
                if int(match[1]) >= 200:
                    return int(match[1])
    return None


@dataclass
class Turns:
    """What a WebSocket caller got: per-turn E2E (end of speech sent → first bot audio, ms),
    errors, and the handshake status or close code when it was refused."""

    e2e_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refused: int | None = None


async def ws_caller(
    url: str, source: str = BYSTANDER, turns: int = 1, within_s: float = 30.0
) -> Turns:
    """A well-behaved caller from `source`: per turn, 0.6 s of tone then silence at real time
    until the turn's `metrics` event; the time from its last tone frame to the first WAV."""
    result = Turns()
    speech = np.concatenate([tone(0.6), silence(0.1)]).tobytes()
    quiet = bytes(CHUNK * 2)
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.ws_connect(url, max_msg_size=0) as ws:
                await ws.send_str(json.dumps(PCM_META))
                async with asyncio.timeout(within_s):
                    for _ in range(turns):
                        await _one_turn(ws, speech, quiet, result)
                        if result.errors:
                            break
                if ws.close_code is not None and ws.close_code != 1000:
                    result.refused = ws.close_code
    except aiohttp.WSServerHandshakeError as exc:
        result.refused = exc.status
    return result


async def _one_turn(
    ws: aiohttp.ClientWebSocketResponse, speech: bytes, quiet: bytes, result: Turns
) -> None:
    frame = CHUNK * 2
    chunks = [speech[i : i + frame] for i in range(0, len(speech), frame)]
    state: dict[str, float] = {}

    async def send() -> None:
        start = time.monotonic()
        i = 0
        while not ws.closed:
            await ws.send_bytes(chunks[i] if i < len(chunks) else quiet)
            i += 1
            if i == len(chunks):
                state["spoken"] = time.monotonic()
            await asyncio.sleep(max(0.0, start + i * 0.02 - time.monotonic()))

    sender = asyncio.create_task(send())
    try:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                state.setdefault("heard", time.monotonic())
            elif msg.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(msg.data)
                if event["type"] == "error":
                    result.errors.append(str(event.get("message")))
                    return
                if event["type"] == "metrics":
                    if "heard" in state and "spoken" in state:
                        result.e2e_ms.append((state["heard"] - state["spoken"]) * 1000)
                    else:
                        result.errors.append("metrics before any bot audio")
                    return
            else:
                result.errors.append(f"closed ({ws.close_code})")
                return
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
