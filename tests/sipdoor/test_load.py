"""Acceptance: SIPp -l 100 -m 200 against one door process: 200 successful, 0 failed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sipdoor.helpers import REPO, load_runner, rtp_range
from tests.support import espeak_pcm, wav_bytes, with_silence

pytestmark = pytest.mark.timeout(150)


def _start_door(max_calls: int) -> tuple[subprocess.Popen[str], int]:
    low, high = rtp_range()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge.tools.echo",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--rtp-min",
            str(low),
            "--rtp-max",
            str(high),
            "--max-calls",
            str(max_calls),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("SIP_PORT="):
            return proc, int(line.split("=")[1])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"echo door did not start: {proc.stderr.read() if proc.stderr else ''}")


def _stop_door(proc: subprocess.Popen[str]) -> dict[str, object]:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no summary from the door: {err[-2000:]}"
    summary: dict[str, object] = json.loads(lines[-1])
    return summary


def test_sipp_100_concurrent_200_calls(tmp_path: Path) -> None:
    wav = tmp_path / "hello.wav"
    wav.write_bytes(
        wav_bytes(with_silence(espeak_pcm("Hello there.", rate=8000), 8000, 0.1, 0.2), 8000)
    )
    proc, port = _start_door(max_calls=150)
    try:
        runner = load_runner()
        cfg = runner.RunConfig(
            target=f"127.0.0.1:{port}",
            scenario="load",
            calls=200,
            concurrency=100,
            rate=100,
            hold_ms=2500,
            wav=wav,
            local_ip="127.0.0.1",
            timeout_s=90,
        )
        result = runner.run(cfg)
        print(runner.format_result(result))
    finally:
        summary = _stop_door(proc)
    print(summary)
    assert result.calls_completed == 200
    assert result.calls_failed == 0
    assert result.unexpected == 0
    assert result.exit_code == 0
    assert summary["calls"] == 200 and summary["peak"] == 100
    assert summary["closed_reasons"] == {"bye": 200}
