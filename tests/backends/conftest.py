"""Session-wide backends and servers: each model loads once per test session."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bridge.backends import EmbeddedASR, EmbeddedLLM, EmbeddedPiperTTS
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    """A server process a test started, its base URL and its captured stderr."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    args: list[str], port: int, health_path: str, env: dict[str, str] | None = None
) -> Server:
    """Start `python args...` and wait (up to 60 s) until `health_path` answers 200."""
    log = Path(tempfile.mkstemp(prefix="backend-server-", suffix=".log")[1])
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[:3]} exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + health_path, timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"{args[:3]} did not become healthy in 60 s:\n{server.log()}")


def stop_server(server: Server) -> None:
    """Terminate the process (kill after 5 s) and remove its log."""
    server.process.terminate()
    try:
        server.process.wait(5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(5)
    server.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def embedded_asr() -> Iterator[EmbeddedASR]:
    """The shipped Whisper tiny.en, loaded once."""
    asr = EmbeddedASR(threads=2, timeout_s=60)
    asyncio.run(asr.warmup())
    yield asr
    asyncio.run(asr.aclose())


@pytest.fixture(scope="session")
def embedded_llm() -> Iterator[EmbeddedLLM]:
    """The shipped SmolLM2-135M-Instruct, loaded once."""
    llm = EmbeddedLLM(max_tokens=40, threads=2, timeout_s=30)
    asyncio.run(llm.warmup())
    yield llm
    asyncio.run(llm.aclose())


@pytest.fixture(scope="session")
def embedded_piper() -> Iterator[EmbeddedPiperTTS]:
    """The shipped en_US-joe-medium Piper voice, loaded once."""
    tts = EmbeddedPiperTTS(threads=2, timeout_s=30)
    asyncio.run(tts.warmup())
    yield tts
    asyncio.run(tts.aclose())


@pytest.fixture(scope="session")
def piper_service() -> Iterator[Server]:
    """`python -m bridge.services.tts_server --engine piper` on a loopback port, with PIPER_VOICE
    naming a voice that is not installed here (so it falls back to the shipped one)."""
    port = free_port()
    server = start_server(
        [
            "-m",
            "bridge.services.tts_server",
            "--engine",
            "piper",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        port,
        "/healthz",
        env={"PIPER_VOICE": "en_US-lessac-medium", "PIPER_VOICE_DIR": "", "TTS_MAX_CHARS": "2000"},
    )
    yield server
    stop_server(server)
