"""WebRTC door benchmark: N browser calls against a real bridge, one table.

Starts `voicebridge serve` (embedded backends, SIP off) on 127.0.0.1, drives Debian's
Chromium headless through Playwright with a fake microphone that speaks one question, and
for each call measures: Call click → connected ("listening"), click → caller transcript,
click → first bot audio energy at the page, and the latency panel's ASR/LLM/TTS/total.

    .venv/bin/python bench/webrtc.py [--calls 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.browser import chromium_with_microphone  # noqa: E402
from tests.fakes.processes import VOICEBRIDGE, voicebridge_serving  # noqa: E402
from tests.support import espeak_pcm, free_port, wav_bytes, with_silence  # noqa: E402

QUESTION = "Hello, can you tell me what time the store opens tomorrow?"


def one_call(page: Page, url: str) -> dict[str, float]:
    """One call; times in ms from the Call click."""
    page.goto(url)
    t0 = time.monotonic()
    page.get_by_test_id("call-button").click()
    ms = lambda: (time.monotonic() - t0) * 1000  # noqa: E731
    page.wait_for_selector("[data-status=listening]", timeout=20000)
    row = {"connect": ms()}
    page.get_by_test_id("turn-caller").first.wait_for(timeout=30000)
    row["transcript"] = ms()
    page.wait_for_function(
        "() => (window.__voicebridgeStats || {}).totalAudioEnergy > 0", timeout=30000, polling=20
    )
    row["bot audio"] = ms()
    page.wait_for_function(
        "/^\\d+$/.test(document.querySelector('[data-testid=metric-total]').textContent)",
        timeout=30000,
    )
    for key in ("asr", "llm", "tts", "total"):
        row[key] = float(str(page.get_by_test_id(f"metric-{key}").text_content()))
    page.get_by_test_id("hangup-button").click()
    page.wait_for_selector("[data-status=ended]")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vb-webrtc-bench-"))
    wav = work / "question.wav"
    wav.write_bytes(wav_bytes(with_silence(espeak_pcm(QUESTION, rate=48000), 48000, 0.5, 8), 48000))
    port = free_port()
    command = [VOICEBRIDGE, "serve", "--no-sip", "--host", "127.0.0.1", "--port", str(port)]
    env = os.environ | {"LOG_LEVEL": "WARNING"}
    rows: list[dict[str, float]] = []
    try:
        with voicebridge_serving(command, work / "bridge.log", work, env):
            with chromium_with_microphone(wav) as browser:
                page = browser.new_page()
                for _ in range(args.calls):
                    rows.append(one_call(page, f"http://127.0.0.1:{port}/"))
    except RuntimeError as exc:  # the bridge did not start: its log is in the message
        print(exc, file=sys.stderr)
        return 1
    cols = ["connect", "transcript", "bot audio", "asr", "llm", "tts", "total"]
    print(f"WebRTC calls: {len(rows)} (ms; connect/transcript/bot audio from the Call click)")
    print(f"{'call':>5} " + " ".join(f"{c:>11}" for c in cols))
    for i, row in enumerate(rows, 1):
        print(f"{i:>5} " + " ".join(f"{row[c]:>11.0f}" for c in cols))
    print(
        f"{'p50':>5} " + " ".join(f"{statistics.median(r[c] for r in rows):>11.0f}" for c in cols)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
