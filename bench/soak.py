"""Soak: N real-time SIP callers against `voicebridge serve` on stub backends, for minutes.

    .venv/bin/python bench/soak.py                         # 100 calls, 30 minutes
    .venv/bin/python bench/soak.py --calls 50 --minutes 3

The bridge runs pinned to one core (`taskset -c 0`) with SIP on; the stub backends answer
with the spec's budget (ASR 200 ms, LLM 150 ms to the first token then 10 ms a token, TTS
200 ms) from another process on core 1 (`tests.fakes.stub_backends`: the whisper.cpp
`/inference`, Ollama `/api/chat` and `/synthesize` wire formats). Each caller is an
asyncio UAC here (INVITE, ACK, BYE over UDP) that sends PCMU RTP every 20 ms and says an
espeak-ng sentence every `--period` seconds; the caller-side E2E of a turn is the end of
its sentence to the first bot audio packet (it includes the VAD's end-of-speech silence).

Once a minute one row: the bridge's RSS, open fds (`/proc/<pid>/fd`), asyncio task count
(`/healthz` `tasks`), CPU share, turns answered, and the minute's caller-side E2E
percentiles; at the end the slope of each (per 10 minutes, least squares after the first
minute's warm-up). Not part of CI.

The callers (`Caller`) are also what `tests/faults/test_drain.py` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from media.codecs import codec_for  # noqa: E402
from sip.message import SipRequest, SipResponse, parse_message, response_to  # noqa: E402
from tests.fakes.stub_backends import stub_env  # noqa: E402

FRAME_S = 0.02
PCMU_SILENCE = b"\xff" * 160
SPEECH_RMS = 300.0
"""A bot packet louder than this (int16 RMS) is speech, not comfort silence."""
TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- callers


def speech_frames(
    text: str = "Hello, I would like to check the balance of my account.",
) -> list[bytes]:
    """An espeak-ng sentence as 20 ms PCMU payloads."""
    from tests.support import espeak_pcm

    pcm = espeak_pcm(text, rate=8000)
    pcm = np.concatenate([pcm, np.zeros((-pcm.size) % 160, np.int16)])
    encoder = codec_for("pcmu").encoder()
    return [encoder.encode(pcm[i : i + 160]) for i in range(0, pcm.size, 160)]


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: object) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.on_datagram(data)  # type: ignore[operator]


@dataclass
class Turn:
    """One sentence the caller said and when the bot's answer began (caller side)."""

    spoke_until: float
    answered_at: float | None = None
    answered: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def e2e_s(self) -> float | None:
        """End of the caller's sentence to the first bot audio packet."""
        return None if self.answered_at is None else self.answered_at - self.spoke_until


@dataclass
class Caller:
    """One SIP caller over UDP on 127.0.0.1: INVITE/ACK/BYE, PCMU RTP every 20 ms (silence
    between sentences), answers the bridge's BYE and OPTIONS with 200."""

    sip_port: int
    speech: list[bytes]
    call_id: str = field(default_factory=lambda: f"{secrets.token_hex(8)}@soak")
    turns: list[Turn] = field(default_factory=list)
    status: int | None = None
    """The final response to our INVITE."""
    retry_after: str | None = None
    bye_received: asyncio.Event = field(default_factory=asyncio.Event)
    bye_at: float | None = None
    bot_packets: int = 0
    bot_speech_packets: int = 0

    def __post_init__(self) -> None:
        self._tag = secrets.token_hex(4)
        self._to = f"<sip:bot@127.0.0.1:{self.sip_port}>"
        self._cseq = 1
        self._responses: asyncio.Queue[SipResponse] = asyncio.Queue()
        self._remote_rtp: tuple[str, int] | None = None
        self._talk: list[bytes] = []
        self._decoder = codec_for("pcmu").decoder()
        self._sender: asyncio.Task[None] | None = None
        self._sip: asyncio.DatagramTransport | None = None
        self._rtp: asyncio.DatagramTransport | None = None
        self.sip_local = 0
        self.rtp_local = 0

    async def open(self) -> None:
        """Bind the caller's SIP and RTP sockets."""
        loop = asyncio.get_running_loop()
        self._sip, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._on_sip), local_addr=("127.0.0.1", 0)
        )
        self._rtp, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._on_rtp), local_addr=("127.0.0.1", 0)
        )
        self.sip_local = self._sip.get_extra_info("sockname")[1]
        self.rtp_local = self._rtp.get_extra_info("sockname")[1]

    def close(self) -> None:
        """Stop sending and close both sockets."""
        if self._sender is not None:
            self._sender.cancel()
        for transport in (self._sip, self._rtp):
            if transport is not None:
                transport.close()

    # --- SIP

    def _request(self, method: str, cseq: int, body: str = "", branch: str = "") -> bytes:
        branch = branch or "z9hG4bK" + secrets.token_hex(8)
        lines = [
            f"{method} sip:bot@127.0.0.1:{self.sip_port} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip_local};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:soak@127.0.0.1:{self.sip_local}>;tag={self._tag}",
            f"To: {self._to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:soak@127.0.0.1:{self.sip_local}>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def _send_sip(self, data: bytes) -> None:
        assert self._sip is not None
        self._sip.sendto(data, ("127.0.0.1", self.sip_port))

    def _on_sip(self, data: bytes) -> None:
        try:
            msg = parse_message(data)
        except ValueError:
            return
        if isinstance(msg, SipResponse):
            self._responses.put_nowait(msg)
            return
        assert isinstance(msg, SipRequest)
        if msg.method == "BYE":
            self.bye_at = time.monotonic()
            self.bye_received.set()
            if self._sender is not None:
                self._sender.cancel()
        if msg.method in ("BYE", "OPTIONS", "INFO", "NOTIFY"):
            self._send_sip(response_to(msg, 200, "OK").to_bytes())

    async def _final(self, method: str, wait_s: float) -> SipResponse:
        async with asyncio.timeout(wait_s):
            while True:
                response = await self._responses.get()
                if response.cseq.method == method and response.status >= 200:
                    return response

    async def invite(self, wait_s: float = 10.0) -> int:
        """INVITE → final response (→ ACK and RTP from now on, when 200); the status."""
        sdp = (
            "v=0\r\no=soak 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp_local} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
        )
        branch = "z9hG4bK" + secrets.token_hex(8)
        self._send_sip(self._request("INVITE", self._cseq, sdp, branch))
        response = await self._final("INVITE", wait_s)
        self.status = response.status
        self.retry_after = response.get("Retry-After")
        if response.status == 200:
            self._to = response.get("To", self._to) or self._to
            self._remote_rtp = _sdp_address(response.body.decode(errors="replace"))
            self._send_sip(self._request("ACK", self._cseq))
            self._sender = asyncio.create_task(self._send_rtp())
        else:  # the ACK of a non-2xx final response goes in the INVITE's transaction
            self._send_sip(self._request("ACK", self._cseq, branch=branch))
        return response.status

    async def options(self, wait_s: float = 5.0) -> SipResponse:
        """An out-of-dialog OPTIONS (a proxy's health check); its final response."""
        self._cseq += 1
        self._send_sip(self._request("OPTIONS", self._cseq))
        return await self._final("OPTIONS", wait_s)

    async def bye(self, wait_s: float = 5.0) -> int:
        """Hang up; the BYE's final status."""
        if self._sender is not None:
            self._sender.cancel()
        self._cseq += 1
        self._send_sip(self._request("BYE", self._cseq))
        return (await self._final("BYE", wait_s)).status

    # --- RTP

    def say(self) -> Turn:
        """Queue the sentence; the turn's `spoke_until` is when its last frame is due."""
        self._talk.extend(self.speech)
        turn = Turn(time.monotonic() + len(self._talk) * FRAME_S)
        self.turns.append(turn)
        return turn

    async def _send_rtp(self) -> None:
        assert self._rtp is not None and self._remote_rtp is not None
        ssrc = random.getrandbits(32)
        seq, ts = random.getrandbits(16), random.getrandbits(32)
        start = time.monotonic()
        n = 0
        while True:
            payload = self._talk.pop(0) if self._talk else PCMU_SILENCE
            header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
            self._rtp.sendto(header + payload, self._remote_rtp)
            seq, ts, n = seq + 1, ts + 160, n + 1
            await asyncio.sleep(max(0.0, start + n * FRAME_S - time.monotonic()))

    def _on_rtp(self, data: bytes) -> None:
        if len(data) <= 12 or data[1] & 0x7F != 0:
            return
        self.bot_packets += 1
        pcm = self._decoder.decode(data[12:]).astype(np.float64)
        if float(np.sqrt(np.mean(pcm * pcm))) < SPEECH_RMS:
            return
        self.bot_speech_packets += 1
        now = time.monotonic()
        for turn in reversed(self.turns):
            if turn.answered_at is None and now > turn.spoke_until:
                turn.answered_at = now
                turn.answered.set()
                break


def _sdp_address(sdp: str) -> tuple[str, int]:
    host, port = "127.0.0.1", 0
    for line in sdp.splitlines():
        if line.startswith("c=IN IP4 "):
            host = line.split()[-1]
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
    return host, port


# ----------------------------------------------------------------------------- soak


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _pinned(core: int | None, argv: list[str]) -> list[str]:
    if core is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(core), *argv]


def _spawn(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `argv` with its stderr in `log` (started once, before the event loop's work)."""
    with log.open("wb") as err:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentiles(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    p50, p95 = np.percentile(np.asarray(values) * 1000, [50, 95])
    return float(p50), float(p95)


def slope_per_10min(minutes: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of `values` over `minutes`, per 10 minutes (nan below 2 points)."""
    x, y = np.asarray(minutes, np.float64), np.asarray(values, np.float64)
    keep = ~np.isnan(y)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(x[keep], y[keep], 1)[0] * 10)


@dataclass
class Row:
    """One minute of the soak."""

    minute: int
    rss_mb: float
    fds: int
    tasks: int
    cpu_pct: float
    turns: int
    e2e_p50_ms: float
    e2e_p95_ms: float


HEADER = (
    f"{'min':>4} {'rss MB':>8} {'fds':>5} {'tasks':>6} {'cpu %':>6} {'turns':>6}"
    f" {'e2e p50':>8} {'e2e p95':>8}"
)


def _row_text(row: Row) -> str:
    return (
        f"{row.minute:>4} {row.rss_mb:>8.1f} {row.fds:>5} {row.tasks:>6} {row.cpu_pct:>6.1f}"
        f" {row.turns:>6} {row.e2e_p50_ms:>8.0f} {row.e2e_p95_ms:>8.0f}"
    )


async def _caller_loop(caller: Caller, period_s: float, end: float, start_in: float) -> None:
    await asyncio.sleep(start_in)
    await caller.open()
    try:
        if await caller.invite() != 200:
            return
        next_turn = time.monotonic() + random.uniform(0.5, 1.5)
        while time.monotonic() < end and not caller.bye_received.is_set():
            await asyncio.sleep(max(0.0, next_turn - time.monotonic()))
            caller.say()
            next_turn += period_s
        if not caller.bye_received.is_set():
            with contextlib.suppress(TimeoutError):
                await caller.bye()
    finally:
        caller.close()


async def soak(args: argparse.Namespace) -> list[Row]:
    """Run the soak; print and return one row per minute."""
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    stub_port, http_port, sip_port = _free_port(), _free_port(), _free_port()
    stub_argv = [sys.executable, "-m", "tests.fakes.stub_backends", "--port", str(stub_port)]
    stubs = _spawn(
        _pinned(args.stub_core, stub_argv),
        REPO,
        dict(os.environ),
        workdir / "stubs.log",
    )
    low = random.randrange(20000, 50000, 2)
    env = {
        **os.environ,
        **stub_env(f"http://127.0.0.1:{stub_port}"),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(http_port),
        "SIP_HOST": "127.0.0.1",
        "SIP_PORT": str(sip_port),
        "RTP_PORT_MIN": str(low),
        "RTP_PORT_MAX": str(low + 4 * args.calls + 100),
        "MAX_CONCURRENT_CALLS": str(args.calls + 10),
        "LOG_LEVEL": "WARNING",
    }
    bridge_log = workdir / "bridge.log"
    bridge = _spawn(
        _pinned(args.bridge_core, [sys.executable, "-m", "bridge", "serve"]),
        workdir,  # no developer .env
        {**env, "PYTHONPATH": str(REPO)},
        bridge_log,
    )
    rows: list[Row] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
            deadline = time.monotonic() + 60
            while True:
                if bridge.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the bridge did not start:\n{bridge_log.read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.3)
            speech = speech_frames()
            end = time.monotonic() + args.minutes * 60
            callers = [Caller(sip_port, speech) for _ in range(args.calls)]
            ramp_s = min(10.0, args.period)
            tasks = [
                asyncio.create_task(_caller_loop(c, args.period, end, ramp_s * i / args.calls))
                for i, c in enumerate(callers)
            ]
            print(
                f"soak: {args.calls} calls, {args.minutes} min, a sentence every "
                f"{args.period:.0f} s; bridge pid {bridge.pid}, log {bridge_log}",
                flush=True,
            )
            print(HEADER, flush=True)
            cpu_before, wall_before = _cpu_s(bridge.pid), time.monotonic()
            counted: set[int] = set()
            for minute in range(1, int(args.minutes) + 1):
                await asyncio.sleep(max(0.0, wall_before + 60 - time.monotonic()))
                e2e = []
                for caller in callers:
                    for turn in caller.turns:
                        if turn.e2e_s is not None and id(turn) not in counted:
                            counted.add(id(turn))
                            e2e.append(turn.e2e_s)
                cpu_now, wall_now = _cpu_s(bridge.pid), time.monotonic()
                health = (await http.get("/healthz")).json()
                p50, p95 = _percentiles(e2e)
                row = Row(
                    minute,
                    _rss_mb(bridge.pid),
                    _fds(bridge.pid),
                    int(health.get("tasks", -1)),
                    100 * (cpu_now - cpu_before) / (wall_now - wall_before),
                    len(e2e),
                    p50,
                    p95,
                )
                cpu_before, wall_before = cpu_now, wall_now
                rows.append(row)
                print(_row_text(row), flush=True)
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        bridge.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            bridge.wait(30)
        if bridge.poll() is None:
            bridge.kill()
        stubs.kill()
        stubs.wait(5)
    _print_slopes(rows)
    return rows


def _print_slopes(rows: list[Row]) -> None:
    steady = rows[1:] if len(rows) > 2 else rows  # the first minute is the warm-up
    minutes = [r.minute for r in steady]
    print("slope per 10 min (after the first minute):", flush=True)
    for label, attr, unit in (
        ("rss", "rss_mb", "MB"),
        ("fds", "fds", ""),
        ("tasks", "tasks", ""),
        ("cpu", "cpu_pct", "%"),
        ("e2e p50", "e2e_p50_ms", "ms"),
        ("e2e p95", "e2e_p95_ms", "ms"),
    ):
        value = slope_per_10min(minutes, [float(getattr(r, attr)) for r in steady])
        print(f"  {label:<8} {value:+.2f} {unit}", flush=True)
    if len(rows) >= 2:
        print(
            f"  e2e p95 last minute - first minute: "
            f"{rows[-1].e2e_p95_ms - rows[0].e2e_p95_ms:+.0f} ms",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """`soak.py [--calls N] [--minutes M] [--period S] [--bridge-core C] [--stub-core C]`."""
    parser = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="concurrent callers")
    parser.add_argument("--minutes", type=float, default=30.0, help="how long")
    parser.add_argument("--period", type=float, default=8.0, help="seconds between sentences")
    parser.add_argument("--bridge-core", type=int, default=0, help="taskset core for the bridge")
    parser.add_argument("--stub-core", type=int, default=1, help="taskset core for the stubs")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.minutes < 1:
        parser.error("--calls and --minutes must be at least 1")
    asyncio.run(soak(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
