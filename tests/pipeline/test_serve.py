"""`voicebridge serve` as a process: start-up banner, SIGTERM with a live call, config errors."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.bridge_process import REPO, BridgeProcess, ws_call
from tests.support import free_port

pytestmark = pytest.mark.slow


async def test_sigterm_ends_calls_with_1001_after_the_drain_and_exits(tmp_path: Path) -> None:
    proc = BridgeProcess(tmp_path / "bridge.log", SHUTDOWN_GRACE_S="3", DRAIN_TIMEOUT_S="1")
    await asyncio.to_thread(proc.start)
    try:
        assert "voicebridge ready" in proc.stdout
        assert proc.ws_url in proc.stdout
        meta = {"codec": "pcm", "sample_rate": 16000}
        call = asyncio.create_task(
            ws_call(proc.ws_url, meta, [], bytes(640), until="never", within_s=20)
        )
        await asyncio.sleep(1.0)
        assert not call.done()
        started = time.monotonic()
        proc.terminate()
        record = await call
        assert record.close_code == 1001
        assert proc.proc is not None
        code = await asyncio.to_thread(proc.proc.wait, 10)
        assert code == 0
        assert time.monotonic() - started < 1 + 3 + 1.5
    finally:
        proc.stop()
    log = (tmp_path / "bridge.log").read_text()
    assert "draining 1 call(s)" in log
    assert "reason=shutdown" in log
    assert "call=" in log


def serve_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m bridge serve` with `env`, run to its exit (a start-up failure), output kept."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", "serve"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_error_is_one_line_and_exit_2() -> None:
    env = {**os.environ, "GATEWAY_PORT": "eighty", "SIP_ENABLED": "false"}
    out = serve_once(env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "voicebridge: invalid GATEWAY_PORT='eighty': expected int >= 1 and <= 65535"
    ]


HTTP_STUBS = {  # backends that need nothing at start-up (nothing listens there)
    "ASR_BACKEND": "whispercpp",
    "WHISPER_URL": "http://127.0.0.1:9",
    "LLM_BACKEND": "ollama",
    "OLLAMA_URL": "http://127.0.0.1:9",
    "TTS_BACKEND": "http",
    "PIPER_URL": "http://127.0.0.1:9",
}


@pytest.mark.parametrize(("setting", "sip"), [("GATEWAY_PORT", "false"), ("SIP_PORT", "true")])
def test_a_port_in_use_is_one_line_and_exit_2(setting: str, sip: str) -> None:
    with socket.socket() as tcp:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        port = tcp.getsockname()[1]
        env = {
            **os.environ,
            **HTTP_STUBS,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(free_port()),
            "SIP_HOST": "127.0.0.1",
            "SIP_ENABLED": sip,
            setting: str(port),
        }
        out = serve_once(env)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert (
        f"voicebridge serve: port {port} is already in use ({setting})" in out.stderr.splitlines()
    )
