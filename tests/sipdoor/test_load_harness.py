"""`sipp/run` as the spec §4.5 load harness: real SIPp calls against `voicebridge serve`.

The bridge runs as a process on the embedded backends (faster-whisper tiny.en, SmolLM2 via
llama.cpp, Piper) with free ports. `sipp/run --concurrency 2 --duration 10s --metrics-url`
places conversation calls that speak an espeak-ng sentence and wait for the bot's reply;
the printed block must have the spec's line formats, `Errors: 0`, completed calls and a
number for every stage. A bridge with a dead LLM must make the block count the error. The
planning arithmetic and the flag parsing are checked without
a bridge.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.processes import serve_env, voicebridge_serving
from tests.sipdoor.helpers import REPO, load_runner, rtp_range
from tests.support import free_port

runner = load_runner()

BLOCK = re.compile(
    r"^Calls completed: (?P<calls>\d+)\n"
    r"Errors: (?P<errors>\d+)\n"
    r"ASR latency   p50=(?P<asr>>?\d+)ms  p95=>?\d+ms  p99=>?\d+ms\n"
    r"LLM latency   p50=(?P<llm>>?\d+)ms  p95=>?\d+ms  p99=>?\d+ms\n"
    r"TTS latency   p50=(?P<tts>>?\d+)ms  p95=>?\d+ms  p99=>?\d+ms\n"
    r"E2E latency   p50=(?P<e2e>>?\d+)ms  p95=>?\d+ms  p99=>?\d+ms\n"
    r"Percentiles from the bridge's /metrics histograms .*bucket interpolation",
    re.MULTILINE,
)


@dataclass
class Bridge:
    """A running `voicebridge serve` process."""

    http_port: int
    sip_port: int
    log: Path

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/metrics"


@contextmanager
def running_bridge(workdir: Path, **extra_env: str) -> Iterator[Bridge]:
    """`voicebridge serve` (embedded backends unless `extra_env` says otherwise) on free
    ports, ready once its backends are warm; terminated (then killed) on exit."""
    http_port, sip_port = free_port(), free_port()
    env = {**serve_env(http_port, sip_port, rtp_range()), **extra_env}
    log = workdir / "bridge.log"
    command = [sys.executable, "-m", "bridge", "serve"]
    with voicebridge_serving(command, log, workdir, env):  # workdir: no developer .env
        yield Bridge(http_port, sip_port, log)


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    """The bridge on the embedded backends."""
    with running_bridge(tmp_path) as running:
        yield running


def _sipp_run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "sipp" / "run"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_load_run_prints_the_spec_summary_with_no_errors(bridge: Bridge, tmp_path: Path) -> None:
    done = _sipp_run(
        *("--target", f"127.0.0.1:{bridge.sip_port}", "--local-ip", "127.0.0.1"),
        *("--concurrency", "2", "--duration", "10s", "--codec", "pcmu"),
        *("--metrics-url", bridge.metrics_url, "--workdir", str(tmp_path / "sipp")),
    )
    output = done.stdout
    log = bridge.log.read_text(errors="replace")
    context = f"{output}\n{done.stderr}\nbridge log:\n{log[-3000:]}"
    print(output)
    assert done.returncode == 0, context
    # SIPp's own statistics stay in the output.
    assert re.search(r"^Calls failed: 0$", output, re.MULTILINE), context
    assert re.search(r"^Peak concurrent calls: 2$", output, re.MULTILINE), context
    assert re.search(r"^SIP INVITE response  p50=\d+ms", output, re.MULTILINE), context
    block = BLOCK.search(output)
    assert block is not None, context
    assert block["errors"] == "0", context
    assert int(block["calls"]) >= 2, context
    for stage in ("asr", "llm", "tts", "e2e"):
        assert int(block[stage].lstrip(">")) > 0, f"{stage}: {context}"
    assert "pipeline_errors_total increase 0" in output, context
    # The callers were heard and answered: each call's sentence was transcribed.
    assert log.count("transcript asr_ms=") >= int(block["calls"]), context


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_bridge_errors_count_even_when_sipp_sees_none(tmp_path: Path) -> None:
    """A dead LLM: the SIP call itself succeeds, the bridge counts the error, so does the
    block, and the run fails."""
    dead_llm = f"http://127.0.0.1:{free_port()}"
    with running_bridge(tmp_path, LLM_BACKEND="ollama", OLLAMA_URL=dead_llm) as dead:
        done = _sipp_run(
            *("--target", f"127.0.0.1:{dead.sip_port}", "--local-ip", "127.0.0.1"),
            *("--calls", "1", "--concurrency", "1", "--reply-wait", "3"),
            *("--metrics-url", dead.metrics_url),
        )
    context = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 1, context
    assert re.search(r"^Calls failed: 0$", done.stdout, re.MULTILINE), context
    assert re.search(r"^Calls completed: 1\nErrors: 1$", done.stdout, re.MULTILINE), context
    assert "pipeline_errors_total increase 1" in done.stdout, context
    assert "LLM latency   p50=n/a  p95=n/a  p99=n/a" in done.stdout, context
    assert re.search(r"^ASR latency   p50=\d+ms", done.stdout, re.MULTILINE), context


def test_an_unreachable_metrics_url_fails_before_any_call() -> None:
    done = _sipp_run(
        *("--target", f"127.0.0.1:{free_port()}", "--duration", "5"),
        *("--metrics-url", f"http://127.0.0.1:{free_port()}/metrics"),
        timeout=30,
    )
    assert done.returncode == 2
    assert "cannot scrape" in done.stderr
    assert "Calls completed" not in done.stdout


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("2m", 120.0), ("45", 45.0), ("1.5m", 90.0), ("1h", 3600.0)],
)
def test_duration_accepts_units_and_plain_seconds(text: str, seconds: float) -> None:
    assert runner.parse_duration(text) == seconds
    assert runner.parse_args(["--target", "h:5060", "--duration", text]).duration_s == seconds


@pytest.mark.parametrize("text", ["", "s", "10x", "-5s", "0", "ten", "nan"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        runner.parse_duration(text)


def test_the_load_plan_keeps_the_concurrency_for_the_duration(tmp_path: Path) -> None:
    cfg = runner.RunConfig(target="127.0.0.1:5060", concurrency=10, duration_s=30.0)
    speech_s = 3.5
    cmd = runner.build_command(cfg, tmp_path, speech_s)
    flags = dict(zip(cmd[2::2], cmd[3::2], strict=False))
    # The caller speaks, then waits REPLY_WAIT_S for the bot before BYE.
    assert flags["-d"] == str(int((speech_s + runner.REPLY_WAIT_S) * 1000))
    assert flags["-l"] == "10"
    # Ten calls up within the ramp; each slot then redials until 30 s have passed:
    # slots opening at 0..2.5 s place 3 calls (0, 13.5, 27 s), those at 3..4.5 s place 2.
    assert float(flags["-r"]) == 2.0
    assert flags["-m"] == str(6 * 3 + 4 * 2)
    assert flags["-timeout"] == f"{30 + 13 + 1 + int(runner.SIPP_GRACE_S)}s"


def test_other_scenarios_keep_the_short_hold(tmp_path: Path) -> None:
    cfg = runner.RunConfig(target="127.0.0.1:5060", scenario="speech", calls=2, concurrency=1)
    flags = runner.build_command(cfg, tmp_path, 2.0)
    assert flags[flags.index("-d") + 1] == "3000"
    assert flags[flags.index("-m") + 1] == "2"


def test_metrics_url_is_in_the_help() -> None:
    done = _sipp_run("--help", timeout=30)
    assert done.returncode == 0
    for flag in ("--metrics-url", "--concurrency", "--duration", "--codec", "--transport"):
        assert flag in done.stdout
