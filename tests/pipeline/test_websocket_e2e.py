"""`/ws/call` end to end against `voicebridge serve` on the real embedded backends
(faster-whisper tiny.en, SmolLM2 via llama.cpp, Piper), one espeak-ng fixture per codec,
streamed at real time. Also: Prometheus scraping the bridge, and the load tester."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import time
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.backends import EmbeddedASR
from bridge.tools.loadtest import encode_chunks, wire_rate
from media.resample import resample
from tests.fakes.bridge_process import REPO, BridgeProcess, CallRecord, ws_call
from tests.support import espeak_pcm, free_port, wav_bytes, with_silence, word_error_rate

pytestmark = pytest.mark.slow

PROMPT = "Good morning, I would like to know when the store opens tomorrow."
SPEC_METRICS = (
    "pipeline_calls_active",
    "pipeline_calls_total",
    "pipeline_stage_duration_seconds",
    "pipeline_e2e_duration_seconds",
    "pipeline_errors_total",
    "audio_chunks_processed_total",
    "vad_speech_segments_total",
)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    proc = BridgeProcess(
        tmp_path_factory.mktemp("bridge") / "bridge.log",
        LLM_MAX_TOKENS="40",
        # two ASR/TTS jobs at once is what 2 cores can do; more just queue inside the backend
        ASR_POOL_SIZE="2",
        TTS_POOL_SIZE="2",
        LLM_POOL_SIZE="2",
        # the load-tester test queues five callers on one in-process model per stage: the
        # stage budgets (which count the queue wait) must not turn that queue into fallbacks
        ASR_TIMEOUT_S="60",
        LLM_FIRST_TOKEN_TIMEOUT_S="60",
        TTS_TIMEOUT_S="60",
    )
    proc.start()
    yield proc
    proc.stop()


def caller_pcm(rate: int) -> np.ndarray:
    return with_silence(espeak_pcm(PROMPT, rate), rate, before_s=0.4, after_s=0.2)


def assert_types(event: dict[str, Any], fields: dict[str, type | tuple[type, ...]]) -> None:
    for name, kind in fields.items():
        assert name in event, f"{event['type']} lacks {name}: {event}"
        assert isinstance(event[name], kind), f"{event['type']}.{name}: {event[name]!r}"
        assert not isinstance(event[name], bool) or kind is bool


def check_turn(record: CallRecord, mode: str) -> None:
    """Events in protocol order with the spec's field names and types."""
    types = record.types()
    assert "error" not in types, record.events
    assert types[0] == "transcript"
    assert types[-1] == "metrics"
    assert_types(record.events[0], {"text": str, "latency_ms": int})
    metrics = record.events[-1]
    assert_types(metrics, {"asr_ms": int, "total_ms": int})
    if mode == "transcribe_only":
        assert types == ["transcript", "metrics"]
        assert record.wavs == []
        return
    assert_types(metrics, {"llm_ms": int, "tts_ms": int})
    assert types.count("llm_done") == 1
    assert "llm_token" in types
    assert types.index("llm_token") < types.index("llm_done")
    for event in record.events:
        if event["type"] == "llm_token":
            assert_types(event, {"token": str})
        elif event["type"] == "llm_done":
            assert_types(event, {"text": str, "latency_ms": int})
        elif event["type"] == "tts_ready":
            assert_types(event, {"latency_ms": int})
    tokens = "".join(e["token"] for e in record.events if e["type"] == "llm_token")
    done = next(e for e in record.events if e["type"] == "llm_done")
    assert tokens.strip() == done["text"]
    # every sentence: a WAV frame, then its tts_ready
    kinds = [k if k == "wav" else f[("type")] for k, f in record.frames]
    assert kinds.count("wav") == kinds.count("tts_ready") >= 1
    for i, kind in enumerate(kinds):
        if kind == "tts_ready":
            assert kinds[i - 1] == "wav"
    assert metrics["total_ms"] >= metrics["asr_ms"]


def bot_audio(record: CallRecord) -> tuple[np.ndarray, int]:
    """Concatenate the WAV frames after checking each is a valid mono 16-bit WAV."""
    parts, rates = [], set()
    for data in record.wavs:
        with wave.open(io.BytesIO(data)) as w:
            assert w.getnchannels() == 1 and w.getsampwidth() == 2
            assert w.getnframes() > 0.2 * w.getframerate()
            rates.add(w.getframerate())
            parts.append(np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16))
    assert len(rates) == 1
    return np.concatenate(parts), rates.pop()


@pytest.mark.parametrize(
    ("codec", "rate", "mode"),
    [
        ("pcm", 16000, "conversation"),
        ("opus", 48000, "conversation"),
        ("g711_ulaw", 8000, "transcribe_only"),
        ("g711_alaw", 8000, "transcribe_only"),
    ],
)
async def test_call_over_each_codec(
    bridge: BridgeProcess, codec: str, rate: int, mode: str
) -> None:
    pcm = caller_pcm(16000)
    chunks = encode_chunks(pcm, 16000, codec)
    silence = encode_chunks(np.zeros(320, np.int16), 16000, codec)[-1]
    meta = {
        "codec": codec,
        "sample_rate": wire_rate(codec, 16000),
        "tts_engine": "piper",
        "mode": mode,
    }
    record = await ws_call(bridge.ws_url, meta, chunks, silence, within_s=90)
    check_turn(record, mode)
    assert word_error_rate(PROMPT, record.events[0]["text"]) <= 0.2, record.events[0]
    if mode == "conversation":
        audio, audio_rate = bot_audio(record)
        asr = EmbeddedASR()
        try:
            heard = await asr.transcribe(resample(audio, audio_rate, 16000))
        finally:
            await asr.aclose()
        assert re.search(r"[a-z]{2,}", heard.text.lower()), heard


async def test_readyz_healthz_metrics(bridge: BridgeProcess) -> None:
    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(bridge.http_url + path, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    status, body = await asyncio.to_thread(get, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = await asyncio.to_thread(get, "/readyz")
    ready = json.loads(body)
    assert status == 200 and ready["ready"] is True, ready
    assert ready["backends"]["asr"]["ready"] and ready["backends"]["llm"]["ready"]
    status, body = await asyncio.to_thread(get, "/metrics")
    text = body.decode()
    for name in SPEC_METRICS:
        assert re.search(rf"^# TYPE {name} ", text, re.M), name


def _prometheus_config(path: Path, target_port: int) -> Path:
    path.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: voicebridge\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
    )
    return path


@pytest.fixture
def prometheus(bridge: BridgeProcess, tmp_path: Path) -> Iterator[int]:
    """Debian's prometheus scraping the bridge every second; yields its HTTP port."""
    port = free_port()
    config = _prometheus_config(tmp_path / "prometheus.yml", bridge.port)
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            "/usr/bin/prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield port
    finally:
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(5)
        log.close()


async def test_prometheus_scrapes_all_seven_metrics(bridge: BridgeProcess, prometheus: int) -> None:
    port = prometheus
    url = f"http://127.0.0.1:{port}/api/v1/label/__name__/values"

    async def scraped_names() -> set[str]:
        try:
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        except (OSError, urllib.error.URLError):
            return set()
        return set(json.loads(body)["data"])

    wanted = {n + ("_bucket" if "duration" in n else "") for n in SPEC_METRICS}
    deadline = time.monotonic() + 45
    names: set[str] = set()
    while "pipeline_calls_active" not in names:  # the first scrape of the bridge
        assert time.monotonic() < deadline, "prometheus never scraped the bridge"
        await asyncio.sleep(0.5)
        names = await scraped_names()
    pcm = caller_pcm(16000)
    chunks = encode_chunks(pcm, 16000, "pcm")
    meta = {"codec": "pcm", "sample_rate": 16000, "mode": "transcribe_only"}
    call = asyncio.create_task(ws_call(bridge.ws_url, meta, chunks, bytes(640), within_s=60))
    while time.monotonic() < deadline and not (wanted <= names and call.done()):
        await asyncio.sleep(1.0)
        names = await scraped_names()
    record = await call
    assert record.types()[0] == "transcript"
    assert wanted <= names, sorted(wanted - names)
    # the call itself was scraped: the active-calls series saw it
    query = (
        f"http://127.0.0.1:{port}/api/v1/query?query=max_over_time(pipeline_calls_active%5B1m%5D)"
    )
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(query, timeout=5).read())
    result = json.loads(body)["data"]["result"]
    assert result and float(result[0]["value"][1]) >= 1


def test_load_tester_summary(bridge: BridgeProcess, tmp_path: Path) -> None:
    audio_dir = tmp_path / "samples"
    audio_dir.mkdir()
    for i, text in enumerate(["Hello, is anybody there?", "I need help with my order."]):
        (audio_dir / f"s{i}.wav").write_bytes(wav_bytes(espeak_pcm(text, 16000), 16000))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "loadtest",
            "--gateway",
            bridge.ws_url,
            "--concurrency",
            "5",
            "--duration",
            "10s",
            "--audio-dir",
            str(audio_dir),
            "--codec",
            "pcm",
            "--tts-engine",
            "piper",
            "--mode",
            "transcribe_only",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    print(out.stdout)
    print(out.stderr, file=sys.stderr)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 6, out.stdout
    calls = int(re.fullmatch(r"Calls completed: (\d+)", lines[0]).group(1))  # type: ignore[union-attr]
    errors = int(re.fullmatch(r"Errors: (\d+)", lines[1]).group(1))  # type: ignore[union-attr]
    assert calls >= 5 and errors == 0, out.stdout + out.stderr
    assert re.fullmatch(r"ASR latency   p50=\d+ms  p95=\d+ms  p99=\d+ms", lines[2])
    assert re.fullmatch(r"E2E latency   p50=\d+ms  p95=\d+ms  p99=\d+ms", lines[5])
    assert out.returncode == 0


def test_voicebridge_call_one_liner(bridge: BridgeProcess, tmp_path: Path) -> None:
    """The README's one-line WebSocket example: stream a WAV, print the turn, save the reply."""
    question = tmp_path / "question.wav"
    question.write_bytes(wav_bytes(caller_pcm(16000), 16000))
    reply = tmp_path / "reply.wav"
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("voicebridge")),
            "call",
            bridge.ws_url,
            str(question),
            "--out",
            str(reply),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    heard = re.search(r"^caller: (.*)  \(\d+ ms\)$", out.stdout, re.M)
    assert heard and word_error_rate(PROMPT, heard.group(1)) <= 0.2, out.stdout
    assert re.search(r"^bot: \S.*\(\d+ ms\)$", out.stdout, re.M), out.stdout
    assert re.search(r'^metrics: \{.*"total_ms": \d+', out.stdout, re.M), out.stdout
    with wave.open(str(reply)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        samples = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    assert samples.size > w.getframerate() * 0.3
    assert float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > 100
