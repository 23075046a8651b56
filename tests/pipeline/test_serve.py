"""`voicebridge serve` as a process: start-up banner, SIGTERM with a live call, config errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.bridge_process import REPO, BridgeProcess, ws_call

pytestmark = pytest.mark.slow


async def test_sigterm_ends_calls_with_1001_and_exits(tmp_path: Path) -> None:
    proc = BridgeProcess(tmp_path / "bridge.log", SHUTDOWN_GRACE_S="3")
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
        assert time.monotonic() - started < 3 + 1.5
    finally:
        proc.stop()
    log = (tmp_path / "bridge.log").read_text()
    assert "reason=shutdown" in log
    assert "call=" in log


def test_config_error_is_one_line_and_exit_2() -> None:
    env = {**os.environ, "GATEWAY_PORT": "eighty", "SIP_ENABLED": "false"}
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "serve"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "voicebridge: invalid GATEWAY_PORT='eighty': expected int >= 1 and <= 65535"
    ]
