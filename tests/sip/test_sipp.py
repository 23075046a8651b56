"""The UAS against a real SIPp (Debian sip-tester) running its built-in `uac` scenario."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from sip.uas import UserAgentServer
from tests.sip.fakeapp import RecordingApp
from tests.support import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]

CALLS = 20


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_sipp_uac_calls_all_succeed(transport: str, tmp_path: Path) -> None:
    app = RecordingApp(rtp_port=free_port())
    uas = UserAgentServer(app, "127.0.0.1", 0, stop_timeout_s=1.0)
    await uas.start()
    errors = tmp_path / "errors.log"
    proc = await asyncio.create_subprocess_exec(
        "sipp", "-sn", "uac", "-m", str(CALLS), "-l", "10", "-r", "50",
        "-timeout", "30s", "-t", transport, "-i", "127.0.0.1", "-p", str(free_port()),
        "-mp", str(free_port()), "-nostdin", "-trace_err", "-error_file", str(errors),
        f"127.0.0.1:{uas.local_port}",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 45)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await uas.stop()
    detail = errors.read_text() if errors.exists() else stderr.decode()
    assert proc.returncode == 0, f"sipp exit {proc.returncode}: {detail[-2000:]}"
    assert len(app.invites) == CALLS
    assert len(app.established) == CALLS
    assert sorted(r for _, r in app.terminated) == ["bye"] * CALLS
