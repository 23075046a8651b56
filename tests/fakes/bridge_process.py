"""Helpers for tests against a running bridge: a `voicebridge serve` process, an in-process
`Bridge` on loopback, a WebSocket client that streams caller audio at real time and records
what comes back, and raw WebSocket frames for clients on a plain socket."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bridge.app import Bridge, ManagedBackends
from bridge.config import Settings
from tests.fakes.pipeline import FakeBackends
from tests.fakes.processes import stop_process
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
CHUNK_S = 0.02


def loopback_settings(**overrides: Any) -> Settings:
    """Settings for an in-process `Bridge`: HTTP on a free 127.0.0.1 port, SIP off, no .env
    file read; `overrides` on top."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        gateway_host="127.0.0.1",
        gateway_port=free_port(),
        sip_enabled=False,
        **overrides,
    )


@asynccontextmanager
async def in_process_bridge(
    backends: ManagedBackends | None = None, *, shutdown_grace_s: float = 2.0, **overrides: Any
) -> AsyncIterator[Bridge]:
    """A started `Bridge` on `loopback_settings(**overrides)` (a short shutdown grace, so a
    test's stop is quick) and `backends` (fresh `FakeBackends` by default); stopped on exit."""
    settings = loopback_settings(shutdown_grace_s=shutdown_grace_s, **overrides)
    bridge = Bridge(settings, FakeBackends() if backends is None else backends)
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()


async def until(condition: Callable[[], object], within_s: float, poll_s: float = 0.02) -> None:
    """Poll `condition` until it holds; fail the test after `within_s`."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(poll_s)


class BridgeProcess:
    """`python -m bridge serve` on a free port with SIP off; killed on `stop()`."""

    def __init__(self, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "SIP_ENABLED": "false",
            "LOG_LEVEL": "INFO",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout = ""

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/call"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, within_s: float = 90.0) -> None:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve"],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline = time.monotonic() + within_s
        while "websocket" not in self.stdout:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bridge did not start:\n{self.log_path.read_text()[-3000:]}")
            chunk = self.proc.stdout.read()
            if chunk:
                self.stdout += chunk.decode()
            time.sleep(0.1)

    def terminate(self) -> None:
        """SIGTERM (graceful shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, 15)
        self._log.close()
        return self.proc.returncode


@dataclass
class CallRecord:
    """Everything a WebSocket call received, in order."""

    frames: list[tuple[str, Any]] = field(default_factory=list)  # ("event", dict) | ("wav", bytes)
    close_code: int | None = None

    @property
    def events(self) -> list[dict[str, Any]]:
        return [f for k, f in self.frames if k == "event"]

    @property
    def wavs(self) -> list[bytes]:
        return [f for k, f in self.frames if k == "wav"]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def receive(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Record the next frame; False once the socket closed (or sent something else)."""
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.TEXT:
            self.frames.append(("event", json.loads(msg.data)))
        elif msg.type == aiohttp.WSMsgType.BINARY:
            self.frames.append(("wav", msg.data))
        else:
            return False
        return True


async def ws_call(
    url: str,
    meta: dict[str, Any] | str,
    chunks: list[bytes],
    silence: bytes,
    until: str = "metrics",
    count: int = 1,
    within_s: float = 60.0,
) -> CallRecord:
    """Stream `chunks` at real time, then `silence` until `count` `until` events arrived."""
    record = CallRecord()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_str(meta if isinstance(meta, str) else json.dumps(meta))

            async def send() -> None:
                start = time.monotonic()
                i = 0
                while not ws.closed:
                    await ws.send_bytes(chunks[i] if i < len(chunks) else silence)
                    i += 1
                    await asyncio.sleep(max(0.0, start + i * CHUNK_S - time.monotonic()))

            sender = asyncio.create_task(send())
            try:
                async with asyncio.timeout(within_s):
                    while sum(1 for t in record.types() if t == until) < count:
                        if not await record.receive(ws):
                            break
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            await ws.close()
            record.close_code = ws.close_code
    return record


async def ws_expect_close(url: str, frames: Sequence[str | bytes]) -> CallRecord:
    """Send `frames` (the first is usually metadata) and collect until the server closes."""
    record = CallRecord()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            for frame in frames:
                if isinstance(frame, str):
                    await ws.send_str(frame)
                else:
                    await ws.send_bytes(frame)
            async with asyncio.timeout(10):
                while await record.receive(ws):
                    pass
            record.close_code = ws.close_code
    return record


def ws_upgrade_request(host: str, path: str = "/ws/call") -> bytes:
    """A raw WebSocket opening handshake (fresh key) for a client on a plain socket."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client WebSocket frame (FIN set): opcode 1 text, 2 binary."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
