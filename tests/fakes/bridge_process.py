"""Helpers for tests against a running bridge: a `voicebridge serve` process and a
WebSocket client that streams caller audio at real time and records what comes back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes.processes import stop_process
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
CHUNK_S = 0.02


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
