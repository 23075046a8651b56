"""The browser page in Debian's Chromium (Playwright, headless) against the real bridge.

`voicebridge serve` runs as a subprocess with the embedded backends (Whisper tiny.en,
SmolLM2, Piper). Chromium's fake microphone plays a spoken question from a WAV file; the
file-mode test uploads the same WAV through the page's file input. HTTP is on 127.0.0.1 (a
secure context, so getUserMedia works); the media flows over the host's real interface,
because aioice gathers no loopback candidates.

Set UPDATE_SCREENSHOTS=1 to refresh docs/webrtc-call.png from the mic-call test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import Error as PlaywrightError
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.browser import CHROMIUM, chromium_with_microphone
from tests.fakes.processes import VOICEBRIDGE, voicebridge_serving
from tests.support import free_port, word_error_rate
from tests.webrtc.conftest import SPOKEN

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "webrtc-call.png"
TURN_TIMEOUT_MS = 30_000


@dataclass
class Bridge:
    url: str
    log: Path

    def metrics(self) -> dict[str, float]:
        """`/metrics` as {"name{label=value}": value}."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, ice_ip: str) -> Iterator[Bridge]:
    """The real bridge process, page built, SIP off, on 127.0.0.1 and a free port."""
    if shutil.which("npm"):  # a no-op when dist is newer than the sources
        subprocess.run(["bash", str(ROOT / "scripts/build-web.sh")], check=True, timeout=300)
    elif not (ROOT / "bridge/web/dist/index.html").is_file():
        pytest.fail("bridge/web/dist is not built and npm is missing (run make web)")
    port = free_port()
    log = tmp_path_factory.mktemp("bridge") / "bridge.log"
    env = os.environ | {"LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    command = [VOICEBRIDGE, "serve", "--no-sip", "--host", "127.0.0.1", "--port", str(port)]
    cwd = tmp_path_factory.mktemp("cwd")  # no stray .env
    with voicebridge_serving(command, log, cwd, env):  # RuntimeError with the log tail
        yield Bridge(f"http://127.0.0.1:{port}", log)


@pytest.fixture(scope="module")
def chromium(speech_wav: Path) -> Iterator[Browser]:
    """Headless Debian Chromium whose fake microphone speaks the test question."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    with chromium_with_microphone(speech_wav) as browser:
        yield browser


@pytest.fixture
def page(chromium: Browser, bridge: Bridge) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1100, "height": 560})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{bridge.url}/")
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def wait_for_reply(page: Page, bridge: Bridge) -> None:
    """The caller's transcript, then a finished bot turn, then the turn's four latencies,
    then proof that the bot's speech arrived and played (RTP and non-zero audio energy)."""
    try:
        page.get_by_test_id("turn-caller").first.wait_for(timeout=TURN_TIMEOUT_MS)
        page.locator("[data-testid=turn-bot]:not(.streaming)").first.wait_for(
            timeout=TURN_TIMEOUT_MS
        )
        page.wait_for_function(
            "['asr','llm','tts','total'].every(k => /^\\d+$/.test("
            "document.querySelector(`[data-testid=metric-${k}]`).textContent))",
            timeout=TURN_TIMEOUT_MS,
        )
        page.wait_for_function(
            "() => { const s = window.__voicebridgeStats;"
            " return s && s.packetsReceived > 0 && s.totalSamplesReceived > 0"
            " && s.totalAudioEnergy > 0; }",
            timeout=TURN_TIMEOUT_MS,
        )
    except PlaywrightError as exc:
        raise AssertionError(f"{exc.message}\n{describe(page, bridge)}") from None


def describe(page: Page, bridge: Bridge) -> str:
    """What the page shows and what the bridge logged, for a failure message."""
    panel = page.locator("section[aria-label=Call]").inner_text()
    transcript = page.get_by_test_id("transcript").inner_text()
    stats = page.evaluate("window.__voicebridgeStats")
    log = bridge.log.read_text(errors="replace")[-4000:]
    return f"page: {panel!r}\ntranscript: {transcript!r}\nstats: {stats}\nbridge log:\n{log}"


def first_caller_text(page: Page) -> str:
    return str(page.get_by_test_id("turn-caller").first.text_content())


def latencies(page: Page) -> dict[str, int]:
    return {
        k: int(str(page.get_by_test_id(f"metric-{k}").text_content()))
        for k in ("asr", "llm", "tts", "total")
    }


def hang_up(page: Page) -> None:
    page.get_by_test_id("hangup-button").click()
    status = page.get_by_test_id("status")
    expect(status).to_have_attribute("data-status", "ended")


def wait_no_calls(bridge: Bridge) -> dict[str, float]:
    deadline = time.monotonic() + 10
    while (m := bridge.metrics())["pipeline_calls_active"] != 0:
        assert time.monotonic() < deadline, "the call is still active after hang-up"
        time.sleep(0.1)
    return m


def test_mic_call(page: Page, bridge: Bridge, tmp_path: Path) -> None:
    before = bridge.metrics()
    page.get_by_test_id("call-button").click()
    wait_for_reply(page, bridge)

    heard = first_caller_text(page)
    assert word_error_rate(SPOKEN, heard.removeprefix("You")) < 0.5, heard
    bot = str(page.get_by_test_id("turn-bot").first.text_content()).removeprefix("Bot").strip()
    assert re.search(r"[A-Za-z]{2,}", bot), bot
    assert all(v >= 0 for v in latencies(page).values())

    shot = tmp_path / "call.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    hang_up(page)
    after = wait_no_calls(bridge)
    # the WebRTC call counts in the same Prometheus metrics as every other door
    assert after["pipeline_calls_total"] == before["pipeline_calls_total"] + 1
    for stage in ("asr", "llm", "tts"):
        key = f"pipeline_stage_duration_seconds_count{{stage={stage}}}"
        assert after[key] > before.get(key, 0), key
    assert (
        after["pipeline_e2e_duration_seconds_count"] > before["pipeline_e2e_duration_seconds_count"]
    )
    assert after["vad_speech_segments_total"] > before["vad_speech_segments_total"]
    assert after["audio_chunks_processed_total"] > before["audio_chunks_processed_total"] + 100


def test_file_call(page: Page, bridge: Bridge, speech_wav: Path) -> None:
    before = bridge.metrics()
    page.get_by_test_id("source-file").check()
    expect(page.get_by_test_id("call-button")).to_be_disabled()
    page.get_by_test_id("file-input").set_input_files(str(speech_wav))
    page.get_by_test_id("call-button").click()
    wait_for_reply(page, bridge)
    heard = first_caller_text(page)
    assert word_error_rate(SPOKEN, heard.removeprefix("You")) < 0.5, heard
    hang_up(page)
    after = wait_no_calls(bridge)
    assert after["pipeline_calls_total"] == before["pipeline_calls_total"] + 1


def test_transcribe_only_call(page: Page, bridge: Bridge) -> None:
    page.get_by_test_id("call-mode").select_option("transcribe_only")
    page.get_by_test_id("call-button").click()
    page.get_by_test_id("turn-caller").first.wait_for(timeout=TURN_TIMEOUT_MS)
    status = page.get_by_test_id("status")
    expect(status).to_have_attribute("data-status", "listening")
    assert page.get_by_test_id("turn-bot").count() == 0
    hang_up(page)


def test_missing_tts_engine_shows_the_error(page: Page, bridge: Bridge) -> None:
    """Coqui is an optional extra that CI does not install: the page says why it failed."""
    page.get_by_test_id("tts-engine").select_option("coqui")
    page.get_by_test_id("call-button").click()
    error = page.get_by_test_id("error")
    error.wait_for(timeout=TURN_TIMEOUT_MS)
    expect(page.get_by_test_id("status")).to_have_attribute("data-status", "error")
    assert "coqui" in str(error.text_content()).lower()
    page.get_by_test_id("hangup-button").click()
