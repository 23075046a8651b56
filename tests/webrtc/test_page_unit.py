"""The page's own unit tests (Vitest + jsdom: event → transcript/metrics rendering), run
from pytest so `make test` covers them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "bridge" / "web"


@pytest.mark.timeout(300)
def test_vitest_suite(tmp_path: Path) -> None:
    if shutil.which("npx") is None:
        pytest.skip("Node.js (npx) is not installed: the page cannot be built or tested")
    if not (WEB / "node_modules" / ".bin" / "vitest").exists():
        subprocess.run(["bash", str(WEB.parents[1] / "scripts/build-web.sh")], check=True)
    report = tmp_path / "vitest.json"
    done = subprocess.run(
        ["npx", "--no-install", "vitest", "run", "--reporter=json", f"--outputFile={report}"],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(report.read_text())
    assert result["numTotalTests"] >= 10, result["numTotalTests"]
    assert result["numPassedTests"] == result["numTotalTests"]
    suites = {Path(s["name"]).name for s in result["testResults"]}
    assert {"callState.test.ts", "App.test.tsx"} <= suites
