"""Per-stage latency percentiles of a load run, read from the bridge's own histograms.

SIPp plays its audio open-loop and cannot see when the bot answers, so the load runner
scrapes the bridge's `/metrics` before and after a run and asks this module for the
spec §4.5 summary. The percentiles are computed from the *difference* of the two scrapes
(only the run's observations count) by linear interpolation inside the histogram bucket
that holds the requested rank: the same rule as PromQL's `histogram_quantile()`, so the
figures agree with the Grafana dashboard for the same window.

Use it as a module (`scrape`, `summarize`, `format_summary`) or from a shell:

    python sipp/latency.py scrape http://127.0.0.1:8080/metrics -o before.prom
    ... run the calls ...
    python sipp/latency.py scrape http://127.0.0.1:8080/metrics -o after.prom
    python sipp/latency.py summary before.prom after.prom --calls 47 --errors 0
"""

from __future__ import annotations

import argparse
import math
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

STAGE_HISTOGRAM = "pipeline_stage_duration_seconds"
E2E_HISTOGRAM = "pipeline_e2e_duration_seconds"
QUANTILES = (0.50, 0.95, 0.99)
# Rows of the spec §4.5 block, in order: (row label, stage key).
ROWS = (("ASR", "asr"), ("LLM", "llm"), ("TTS", "tts"), ("E2E", "e2e"))
METHOD_LINE = (
    "Percentiles from the bridge's /metrics histograms "
    f"({STAGE_HISTOGRAM}, {E2E_HISTOGRAM}) scraped before and after the run: "
    "bucket interpolation, linear within a bucket as PromQL histogram_quantile()."
)


class ScrapeError(RuntimeError):
    """The metrics endpoint could not be read or did not return Prometheus text."""


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts of one histogram series: `(upper_bound, count)` sorted by bound."""

    buckets: tuple[tuple[float, float], ...]

    @property
    def count(self) -> float:
        """Observations in the histogram (the `+Inf` bucket), 0 when it has none."""
        if self.buckets and math.isinf(self.buckets[-1][0]):
            return self.buckets[-1][1]
        return 0.0


@dataclass(frozen=True)
class Percentiles:
    """p50/p95/p99 in seconds (None where the window holds no observation) and the sample count.

    `above` names the quantiles whose rank fell above the highest finite bucket: their value
    is that bucket's bound (as PromQL returns it) and the true latency is larger.
    """

    p50: float | None
    p95: float | None
    p99: float | None
    samples: int
    above: frozenset[str] = frozenset()


def scrape(url: str, timeout: float = 5.0) -> str:
    """GET a Prometheus text exposition; raise `ScrapeError` with the URL on any failure."""
    request = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ScrapeError(f"cannot scrape {url}: {exc}") from exc
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScrapeError(f"{url} did not return UTF-8 text: {exc}") from exc


def parse_histograms(text: str, name: str, by: str | None = None) -> dict[str, Histogram]:
    """Histogram series called `name` in exposition `text`, keyed by the value of label `by`.

    With `by=None` all series are summed into one, keyed by `""`. Raises `ScrapeError`
    when the text is not valid Prometheus exposition.
    """
    per_key: dict[str, dict[float, float]] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise ScrapeError(f"not Prometheus text exposition: {exc}") from exc
    for family in families:
        for sample in family.samples:
            if sample.name != f"{name}_bucket" or "le" not in sample.labels:
                continue
            key = sample.labels.get(by, "") if by else ""
            bound = float(sample.labels["le"])
            buckets = per_key.setdefault(key, {})
            buckets[bound] = buckets.get(bound, 0.0) + float(sample.value)
    return {
        key: Histogram(tuple(sorted(buckets.items()))) for key, buckets in sorted(per_key.items())
    }


def counter_total(text: str, name: str) -> float:
    """Sum of every series of counter `name` (with or without its `_total` suffix) in `text`."""
    base = name.removesuffix("_total")
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (base, f"{base}_total"):
                total += float(sample.value)
    return total


def difference(after: Histogram, before: Histogram | None) -> Histogram:
    """Observations made between two scrapes of one series.

    A bucket that went down means the bridge restarted in between; then the later
    scrape alone is the window (as PromQL's `increase()` treats a counter reset).
    """
    if before is None:
        return after
    earlier = dict(before.buckets)
    deltas = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after.buckets]
    if any(delta < 0 for _, delta in deltas):
        return after
    return Histogram(tuple(deltas))


def quantile(q: float, histogram: Histogram) -> float | None:
    """The q-quantile of a cumulative histogram, PromQL `histogram_quantile()` style.

    Linear interpolation within the bucket holding rank `q * count`, the lowest bucket
    starting at 0; a rank in the `+Inf` bucket returns the highest finite bound. None when
    there are no observations or no `+Inf` bucket (where PromQL returns NaN).
    """
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = _monotonic(histogram.buckets)
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        return None
    observations = buckets[-1][1]
    if observations == 0:
        return None
    rank = q * observations
    index = next(
        (i for i, (_, count) in enumerate(buckets[:-1]) if count >= rank), len(buckets) - 1
    )
    if index == len(buckets) - 1:
        return buckets[-2][0]
    bucket_end, count = buckets[index]
    if index == 0 and bucket_end <= 0:
        return bucket_end
    bucket_start = 0.0
    if index > 0:
        bucket_start, below = buckets[index - 1]
        count -= below
        rank -= below
    if count == 0:  # q = 0 with an empty lowest bucket: 0/0, NaN in PromQL
        return None
    return bucket_start + (bucket_end - bucket_start) * (rank / count)


def _monotonic(buckets: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sort by bound, merge equal bounds and make counts non-decreasing (PromQL does the same)."""
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[bound] = merged.get(bound, 0.0) + count
    result: list[tuple[float, float]] = []
    highest = -math.inf
    for bound, count in sorted(merged.items()):
        highest = max(highest, count)
        result.append((bound, highest))
    return result


def in_overflow_bucket(q: float, histogram: Histogram) -> bool:
    """True when the q-quantile's rank lies in the `+Inf` bucket (above every finite bound)."""
    buckets = _monotonic(histogram.buckets)
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]) or buckets[-1][1] == 0:
        return False
    return buckets[-2][1] < q * buckets[-1][1]


def percentiles(histogram: Histogram) -> Percentiles:
    """p50/p95/p99 of one histogram window."""
    p50, p95, p99 = (quantile(q, histogram) for q in QUANTILES)
    above = frozenset(f"p{round(q * 100)}" for q in QUANTILES if in_overflow_bucket(q, histogram))
    return Percentiles(p50=p50, p95=p95, p99=p99, samples=round(histogram.count), above=above)


def summarize(before: str, after: str) -> dict[str, Percentiles]:
    """Percentiles per stage (`asr`, `llm`, `tts`, ...) and `e2e` between two scrapes."""
    earlier = parse_histograms(before, STAGE_HISTOGRAM, by="stage")
    result = {
        stage: percentiles(difference(later, earlier.get(stage)))
        for stage, later in parse_histograms(after, STAGE_HISTOGRAM, by="stage").items()
    }
    e2e_after = parse_histograms(after, E2E_HISTOGRAM).get("")
    if e2e_after is not None:
        e2e_before = parse_histograms(before, E2E_HISTOGRAM).get("")
        result["e2e"] = percentiles(difference(e2e_after, e2e_before))
    return result


def _ms(seconds: float | None, above: bool = False) -> str:
    if seconds is None:
        return "n/a"
    return f"{'>' if above else ''}{round(seconds * 1000)}ms"


def format_summary(
    calls_completed: int, errors: int, percentiles: Mapping[str, Percentiles]
) -> str:
    """The spec §4.5 summary block, then one line saying how the percentiles were made."""
    lines = [f"Calls completed: {calls_completed}", f"Errors: {errors}"]
    for label, key in ROWS:
        p = percentiles.get(key, Percentiles(None, None, None, 0))
        p50, p95, p99 = (
            _ms(v, n in p.above) for v, n in ((p.p50, "p50"), (p.p95, "p95"), (p.p99, "p99"))
        )
        lines.append(f"{label} latency   p50={p50}  p95={p95}  p99={p99}")
    lines.append(METHOD_LINE)
    if any(p.above for p in percentiles.values()):
        lines.append("'>': above the highest histogram bucket; the true value is larger.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `scrape URL [-o FILE]` or `summary BEFORE AFTER --calls N --errors N`."""
    parser = argparse.ArgumentParser(prog="latency.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    scrape_cmd = commands.add_parser("scrape", help="save one /metrics scrape")
    scrape_cmd.add_argument("url")
    scrape_cmd.add_argument("-o", "--output", type=Path, help="file to write (default stdout)")
    summary_cmd = commands.add_parser("summary", help="print the spec §4.5 summary block")
    summary_cmd.add_argument("before", type=Path, help="scrape taken before the run")
    summary_cmd.add_argument("after", type=Path, help="scrape taken after the run")
    summary_cmd.add_argument("--calls", type=int, required=True, help="calls completed")
    summary_cmd.add_argument("--errors", type=int, required=True, help="failed calls")
    args = parser.parse_args(argv)
    try:
        if args.command == "scrape":
            text = scrape(args.url)
            if args.output:
                args.output.write_text(text, encoding="utf-8")
            else:
                sys.stdout.write(text)
            return 0
        stats = summarize(
            args.before.read_text(encoding="utf-8"), args.after.read_text(encoding="utf-8")
        )
    except (ScrapeError, OSError) as exc:
        print(f"latency.py: {exc}", file=sys.stderr)
        return 2
    print(format_summary(args.calls, args.errors, stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
