"""sipp/latency.py: histogram differences, PromQL-style quantiles, the spec §4.5 block."""

from __future__ import annotations

import http.server
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Histogram as PromHistogram

from sipp import latency
from sipp.latency import Histogram, Percentiles, difference, format_summary, quantile
from tests.deploy.prom import running_prometheus
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
INF = math.inf
# 2 obs <= 0.1 s, 4 in (0.1, 0.2], 4 in (0.2, 0.5], none above.
TEN = Histogram(((0.1, 2.0), (0.2, 6.0), (0.5, 10.0), (INF, 10.0)))


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.1 + 0.1 * (5 - 2) / 4),  # rank 5 in (0.1, 0.2]: 3 of its 4
        (0.95, 0.2 + 0.3 * (9.5 - 6) / 4),  # rank 9.5 in (0.2, 0.5]
        (0.99, 0.2 + 0.3 * (9.9 - 6) / 4),
        (0.1, 0.1 * 1 / 2),  # lowest bucket starts at 0
        (0.2, 0.1),  # rank 2 is exactly the first bucket's count
        (1.0, 0.5),
        (0.0, 0.0),
    ],
)
def test_quantile_interpolates_linearly_within_the_bucket(q: float, expected: float) -> None:
    assert quantile(q, TEN) == pytest.approx(expected, abs=1e-12)


def test_rank_in_the_inf_bucket_returns_the_highest_finite_bound() -> None:
    assert quantile(0.5, Histogram(((0.1, 1.0), (1.0, 2.0), (INF, 10.0)))) == 1.0


def test_no_observations_or_no_inf_bucket_gives_none() -> None:
    assert quantile(0.5, Histogram(((0.1, 0.0), (INF, 0.0)))) is None
    assert quantile(0.5, Histogram(((0.1, 1.0), (0.2, 2.0)))) is None
    assert quantile(0.5, Histogram(())) is None


def test_q0_with_an_empty_lowest_bucket_is_none_like_promqls_nan() -> None:
    assert quantile(0.0, Histogram(((0.1, 0.0), (0.2, 3.0), (INF, 3.0)))) is None


def test_out_of_range_quantiles_follow_promql() -> None:
    assert quantile(-0.1, TEN) == -INF
    assert quantile(1.1, TEN) == INF
    assert quantile(math.nan, TEN) is None


def test_difference_keeps_only_the_runs_observations() -> None:
    before = Histogram(((0.1, 5.0), (0.2, 5.0), (0.5, 7.0), (INF, 7.0)))
    after = Histogram(((0.1, 7.0), (0.2, 11.0), (0.5, 17.0), (INF, 17.0)))
    assert difference(after, before) == TEN
    assert difference(after, None) == after


def test_a_counter_reset_between_scrapes_uses_the_later_scrape() -> None:
    before = Histogram(((0.1, 50.0), (INF, 60.0)))
    after = Histogram(((0.1, 2.0), (INF, 3.0)))
    assert difference(after, before) == after


@given(
    st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=8),
    st.floats(min_value=0.001, max_value=1.0),
    st.floats(min_value=0.001, max_value=1.0),
)
def test_quantile_is_monotonic_and_inside_the_bucket_range(
    per_bucket: list[int], q1: float, q2: float
) -> None:
    bounds = [0.05 * 2**i for i in range(len(per_bucket))]
    cumulative = [float(sum(per_bucket[: i + 1])) for i in range(len(per_bucket))]
    hist = Histogram((*zip(bounds, cumulative, strict=True), (INF, cumulative[-1])))
    low, high = sorted((q1, q2))
    a, b = quantile(low, hist), quantile(high, hist)
    if cumulative[-1] == 0:
        assert a is None and b is None
        return
    assert a is not None and b is not None
    assert 0.0 <= a <= b <= bounds[-1]


def _exposition() -> tuple[str, str]:
    """Two scrapes of a prometheus_client registry, with observations in between."""
    registry = CollectorRegistry()
    stage = PromHistogram(
        "pipeline_stage_duration_seconds",
        "stage latency",
        ["stage"],
        buckets=(0.05, 0.1, 0.25, 0.5, 1.0),
        registry=registry,
    )
    e2e = PromHistogram(
        "pipeline_e2e_duration_seconds", "e2e", buckets=(0.25, 0.5, 1.0, 2.0), registry=registry
    )
    for value in (0.3, 0.3, 0.3):  # before the run: must not count
        stage.labels("asr").observe(value)
    before = generate_latest(registry).decode()
    for value in (0.07, 0.08, 0.09, 0.2):
        stage.labels("asr").observe(value)
    for value in (0.3, 0.4):
        stage.labels("llm").observe(value)
    e2e.observe(0.6)
    return before, generate_latest(registry).decode()


def test_summarize_uses_the_bucket_deltas_per_stage() -> None:
    before, after = _exposition()
    stats = latency.summarize(before, after)
    assert set(stats) == {"asr", "llm", "e2e"}
    # asr window: 3 in (0.05, 0.1], 1 in (0.1, 0.25]; p50 rank 2 -> 0.05 + 0.05 * 2/3
    assert stats["asr"].samples == 4
    assert stats["asr"].p50 == pytest.approx(0.05 + 0.05 * 2 / 3)
    assert stats["asr"].p95 == pytest.approx(0.1 + 0.15 * (3.8 - 3) / 1)
    assert stats["llm"].p50 == pytest.approx(0.25 + 0.25 * 1 / 2)
    assert stats["e2e"].p99 == pytest.approx(0.5 + 0.5 * 0.99)


def test_format_summary_prints_the_spec_block_then_the_method() -> None:
    stats = {
        "asr": Percentiles(0.138, 0.215, 0.287, 47),
        "llm": Percentiles(0.245, 0.410, 0.523, 47),
        "tts": Percentiles(0.167, 0.289, 0.342, 47),
        "e2e": Percentiles(0.562, 0.891, 1.102, 47),
    }
    lines = format_summary(47, 0, stats).splitlines()
    assert lines[:6] == [
        "Calls completed: 47",
        "Errors: 0",
        "ASR latency   p50=138ms  p95=215ms  p99=287ms",
        "LLM latency   p50=245ms  p95=410ms  p99=523ms",
        "TTS latency   p50=167ms  p95=289ms  p99=342ms",
        "E2E latency   p50=562ms  p95=891ms  p99=1102ms",
    ]
    assert "bucket interpolation" in lines[6] and "histogram_quantile" in lines[6]


def test_a_percentile_above_the_last_bucket_is_marked() -> None:
    # 8 of 10 observations within 5 s, 2 above: p50 interpolates, p95 and p99 overflow.
    hist = Histogram(((1.0, 5.0), (5.0, 8.0), (INF, 10.0)))
    stats = latency.percentiles(hist)
    assert stats.above == {"p95", "p99"}
    assert stats.p95 == 5.0 and stats.p99 == 5.0
    lines = format_summary(10, 0, {"llm": stats}).splitlines()
    assert lines[3] == "LLM latency   p50=1000ms  p95=>5000ms  p99=>5000ms"
    assert lines[-1].startswith("'>': above the highest histogram bucket")
    assert not latency.in_overflow_bucket(0.8, hist)
    assert latency.in_overflow_bucket(0.81, hist)


def test_format_summary_marks_a_stage_without_data() -> None:
    text = format_summary(0, 3, {})
    assert "TTS latency   p50=n/a  p95=n/a  p99=n/a" in text.splitlines()


@pytest.fixture
def exporter() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server answering /metrics with the last text put in the returned list."""
    pages: list[str] = [""]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages[-1].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", pages
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_command_line_scrapes_and_prints_the_summary(
    exporter: tuple[str, list[str]], tmp_path: Path
) -> None:
    address, pages = exporter
    before, after = _exposition()
    script = [sys.executable, str(REPO / "sipp" / "latency.py")]
    for name, page in (("before.prom", before), ("after.prom", after)):
        pages.append(page)
        out = tmp_path / name
        subprocess.run(
            [*script, "scrape", f"http://{address}/metrics", "-o", str(out)],
            check=True,
            timeout=30,
        )
        assert out.read_text() == page
    summary = subprocess.run(
        [
            *script,
            *("summary", str(tmp_path / "before.prom"), str(tmp_path / "after.prom")),
            *("--calls", "4", "--errors", "1"),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert summary.startswith("Calls completed: 4\nErrors: 1\nASR latency   p50=83ms  p95=220ms")
    assert "TTS latency   p50=n/a" in summary


def test_command_line_reports_an_unreachable_bridge(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    done = subprocess.run(
        [sys.executable, str(REPO / "sipp" / "latency.py"), "scrape", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert f"cannot scrape {url}" in done.stderr


def test_garbage_exposition_is_a_scrape_error() -> None:
    with pytest.raises(latency.ScrapeError):
        latency.parse_histograms("this is { not prometheus", "x")


BUCKET_BOUNDS = ("0.1", "0.25", "0.5", "+Inf")


def _histogram_text(name: str, counts: dict[str, tuple[int, int, int, int]]) -> str:
    """Exposition text of histogram `name`: per stage, cumulative counts at BUCKET_BOUNDS."""
    lines = [f"# TYPE {name} histogram"]
    for stage, row in counts.items():
        for le, n in zip(BUCKET_BOUNDS, row, strict=True):
            lines.append(f'{name}_bucket{{stage="{stage}",le="{le}"}} {n}')
    return "\n".join(lines) + "\n"


PROM_BEFORE = _histogram_text(
    "h_before", {"asr": (1, 4, 4, 5), "tts": (0, 0, 0, 0), "llm": (0, 2, 2, 2)}
)
PROM_AFTER = _histogram_text(
    "h_after", {"asr": (3, 19, 30, 31), "tts": (7, 7, 8, 13), "llm": (0, 2, 9, 9)}
)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_quantiles_match_a_real_prometheus_histogram_quantile(
    exporter: tuple[str, list[str]], tmp_path: Path
) -> None:
    """Debian's prometheus evaluates histogram_quantile() on the same buckets and deltas."""
    address, pages = exporter
    pages.append(PROM_BEFORE + PROM_AFTER)
    before = latency.parse_histograms(PROM_BEFORE, "h_before", by="stage")
    after = latency.parse_histograms(PROM_AFTER, "h_after", by="stage")
    nans = 0
    with running_prometheus([address], tmp_path) as prom:
        prom.wait_for('h_after_bucket{stage="tts"}')
        for q in (0.0, 0.3, 0.5, 0.9, 0.95, 0.99, 1.0):
            for expr, ours in (
                (f"histogram_quantile({q}, h_after_bucket)", after),
                (
                    f"histogram_quantile({q}, h_after_bucket - h_before_bucket)",
                    {s: difference(h, before[s]) for s, h in after.items()},
                ),
            ):
                theirs = {r["metric"]["stage"]: float(r["value"][1]) for r in prom.query(expr)}
                assert set(theirs) == set(ours), expr
                for stage, value in theirs.items():
                    mine = quantile(q, ours[stage])
                    if math.isnan(value):  # PromQL's NaN is our None
                        assert mine is None, (expr, stage)
                        nans += 1
                    else:
                        assert mine == pytest.approx(value, abs=1e-9), (expr, stage)
        assert nans == 2, "q=0 on the empty lowest llm bucket: NaN in both expressions"
