"""Prometheus instrumentation: the seven metrics of spec §4.1, plus a few for the doors.

Every metric lives on the `CollectorRegistry` held by one `Metrics` object, so a test (or a
second bridge in one process) makes its own and never collides with the global registry.

The spec's seven, with their exact names, types and labels:

- `pipeline_calls_active` (gauge), `pipeline_calls_total` (counter)
- `pipeline_stage_duration_seconds{stage=asr|llm|tts}` (histogram)
- `pipeline_e2e_duration_seconds` (histogram)
- `pipeline_errors_total{stage,error_type}` (counter)
- `audio_chunks_processed_total` (counter), `vad_speech_segments_total` (counter)

The extras are named so they can never be mistaken for the spec's; the door ones carry a
`door` label (sip, webrtc, websocket).
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.65,
    0.8,
    1.0,
    1.25,
    1.5,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    7.5,
    10.0,
    20.0,
    30.0,
)
"""Histogram buckets for voice latencies: dense from 10 ms to 5 s around the 100–800 ms
budget, then a few coarse ones to 30 s so an overloaded bridge still shows how late its
replies are instead of every percentile pinned at the 5 s bucket."""


STAGES = ("asr", "llm", "tts")
_M = TypeVar("_M", Counter, Gauge)
BACKEND_ERROR_KINDS = ("timeout", "connect", "http", "malformed", "unavailable")


class Metrics:
    """Every metric the bridge exports, registered on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # --- spec §4.1 ---
        self.calls_active = Gauge(
            "pipeline_calls_active", "Currently active call sessions.", registry=r
        )
        self.calls_total = Counter("pipeline_calls_total", "Total calls processed.", registry=r)
        self.stage_duration = self._latency(
            "pipeline_stage_duration_seconds",
            "Per-stage latency: ASR per utterance, LLM per reply stream, TTS per sentence.",
            "stage",
        )
        self.e2e_duration = self._latency(
            "pipeline_e2e_duration_seconds",
            "Last caller speech frame received to first bot audio handed to the door.",
        )
        self.errors = Counter(
            "pipeline_errors_total", "Error counts.", ["stage", "error_type"], registry=r
        )
        self.audio_chunks = Counter(
            "audio_chunks_processed_total", "Total caller audio chunks processed.", registry=r
        )
        self.speech_segments = Counter(
            "vad_speech_segments_total", "Speech segments (utterances) detected.", registry=r
        )
        # --- voicebridge extras ---
        self.llm_first_token = self._latency(
            "pipeline_llm_first_token_seconds", "LLM time to first token."
        )
        self.audio_chunks_dropped = Counter(
            "pipeline_audio_chunks_dropped_total",
            "Caller audio chunks dropped because a call's input queue was full.",
            registry=r,
        )
        self.barge_ins = Counter(
            "pipeline_barge_ins_total", "Bot replies interrupted by caller speech.", registry=r
        )
        self.asr_speculation = Counter(
            "pipeline_asr_speculation_total",
            "Speculative ASR runs: hit (used), miss (caller went on), skipped (pool busy).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("hit", "miss", "skipped"):
            self.asr_speculation.labels(outcome=outcome)
        self.calls_rejected = Counter(
            "pipeline_calls_rejected_total",
            "Calls refused at a door, by reason: full (MAX_CONCURRENT_CALLS), draining, "
            "duplicate (call id in use), bad_request, no_codec, no_port.",
            ["door", "reason"],
            registry=r,
        )
        self.rtp_packets_received = self._per_door(
            Counter, "rtp_packets_received_total", "RTP packets received."
        )
        self.rtp_packets_lost = self._per_door(
            Counter, "rtp_packets_lost_total", "RTP packets lost (concealed by the jitter buffer)."
        )
        self.rtp_packets_late = self._per_door(
            Counter,
            "rtp_packets_late_total",
            "RTP packets that arrived after their playout time.",
        )
        self.jitter_buffer_depth = self._per_door(
            Gauge,
            "jitter_buffer_depth_frames",
            "Frames waiting in jitter buffers, summed over a door's calls.",
        )
        self.backend_up = Gauge(
            "pipeline_backend_up",
            "1 while some server of a backend has a closed circuit breaker, 0 while all are open.",
            ["backend"],
            registry=r,
        )

        # Labelled series exist from the first scrape (at 0), so every spec metric is
        # visible at once and rate() has a starting point.
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)
            for kind in BACKEND_ERROR_KINDS:
                self.errors.labels(stage=stage, error_type=kind)

    def _per_door(self, kind: type[_M], name: str, documentation: str) -> _M:
        """A counter or gauge on this registry with the `door` label (sip, webrtc, websocket)."""
        return kind(name, documentation, ["door"], registry=self.registry)

    def _latency(self, name: str, documentation: str, *labels: str) -> Histogram:
        """A latency histogram on this registry, with the voice-latency buckets."""
        return Histogram(
            name, documentation, labels, buckets=LATENCY_BUCKETS, registry=self.registry
        )

    def stage(self, stage: str, seconds: float) -> None:
        """Observe one stage duration (`stage` is asr, llm or tts)."""
        self.stage_duration.labels(stage=stage).observe(seconds)

    def error(self, stage: str, error_type: str) -> None:
        """Count one error at `stage` (asr, llm, tts, protocol, decode, ...)."""
        self.errors.labels(stage=stage, error_type=error_type).inc()

    def backend_state(self, backend: str, up: bool) -> None:
        """Set `pipeline_backend_up{backend}` (backend: asr, llm, tts_<engine>)."""
        self.backend_up.labels(backend=backend).set(1 if up else 0)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (for `/metrics`)."""
        return generate_latest(self.registry)
