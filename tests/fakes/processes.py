"""Processes the tests and bench/ start: a server polled until healthy, `voicebridge serve`
waited for until it logs that it is ready, and the one way to stop either."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
VOICEBRIDGE = str(ROOT / ".venv/bin/voicebridge")


def serve_env(
    http_port: int, sip_port: int, rtp_ports: tuple[int, int], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A `voicebridge serve` subprocess's environment: `base` (by default only PATH and HOME),
    this checkout importable, HTTP and SIP on 127.0.0.1 at these ports, RTP in `rtp_ports`
    (low, high), INFO logging."""
    low, high = rtp_ports
    if base is None:
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home())}
    return {
        **base,
        "PYTHONPATH": str(ROOT),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(http_port),
        "SIP_HOST": "127.0.0.1",
        "SIP_PORT": str(sip_port),
        "RTP_PORT_MIN": str(low),
        "RTP_PORT_MAX": str(high),
        "LOG_LEVEL": "INFO",
    }


def stop_process(process: subprocess.Popen[Any], grace_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it is still running after `grace_s`; its exit status."""
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    return process.returncode


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
    stop_process(server.process, 5)
    server.log_path.unlink(missing_ok=True)


def start_tts_service(env: dict[str, str], engine: str = "piper") -> Server:
    """`python -m bridge.services.tts_server --engine ENGINE` on a free loopback port."""
    port = free_port()
    args = ["-m", "bridge.services.tts_server", "--engine", engine]
    return start_server([*args, "--host", "127.0.0.1", "--port", str(port)], port, "/healthz", env)


@contextmanager
def voicebridge_serving(
    argv: Sequence[str],
    log: Path,
    cwd: Path,
    env: Mapping[str, str],
    within_s: float = 60.0,
    grace_s: float = 15.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` (a `voicebridge serve` command line) with its output in `log`; yield it once
    the log says "voicebridge ready"; stop it on exit (SIGTERM, SIGKILL after `grace_s`)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + within_s
        while b"voicebridge ready" not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the bridge did not start:\n{tail}")
            time.sleep(0.2)
        yield process
    finally:
        stop_process(process, grace_s)
