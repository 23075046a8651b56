"""monitoring/: Prometheus config (promtool), Grafana provisioning, the dashboard and its PromQL."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.metrics import Metrics
from tests.deploy import dashboard as dash

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
PROMTOOL = shutil.which("promtool")
BOARD = dash.load()
QUERIES = dash.queries(BOARD)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool (Debian's prometheus package) is not installed"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_accepts_the_prometheus_config() -> None:
    done = promtool("check", "config", str(MONITORING / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_scrapes_the_bridge_every_5s() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    bridge = jobs["voicebridge"]
    assert bridge["scrape_interval"] == "5s"
    assert bridge.get("metrics_path", "/metrics") == "/metrics"
    assert [t for sc in bridge["static_configs"] for t in sc["targets"]] == ["bridge:8080"]


def test_grafana_datasource_and_provider_match_the_dashboard_and_compose() -> None:
    provisioning = MONITORING / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "provider.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./monitoring/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    for panel in dash.panels(BOARD):
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]


def test_every_panel_has_a_datasource_targets_and_a_place() -> None:
    assert BOARD["uid"] and BOARD["title"] and BOARD["schemaVersion"] >= 36
    seen_ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for panel in BOARD["panels"]:
        assert panel["id"] not in seen_ids, f"duplicate panel id {panel['id']}"
        seen_ids.add(panel["id"])
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
    for panel in dash.panels(BOARD):
        assert panel["type"] in {"stat", "timeseries", "heatmap", "table", "gauge", "bargauge"}
        assert panel["title"] and panel.get("description"), panel
        assert panel["targets"], f"{panel['title']} has no targets"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.id)
def test_every_expression_names_only_exported_metrics(query: dash.Query) -> None:
    exported = dash.exported_names(Metrics().registry)
    names = dash.metric_names(query.promql())
    assert names, f"no metric in {query.expr!r}"
    assert names <= exported, f"{query.id}: not exported by bridge/metrics.py: {names - exported}"


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each expression (as a recording rule) with Prometheus's own parser."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q.promql()}
                    for i, q in enumerate(QUERIES)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(QUERIES)} rules found" in done.stdout


def _exprs() -> list[str]:
    return [q.expr.replace(" ", "") for q in QUERIES]


@pytest.mark.parametrize(
    ("what", "needle"),
    [
        ("active calls", "sum(pipeline_calls_active)"),
        ("calls per second", "rate(pipeline_calls_total[$__rate_interval])"),
        ("error rate by stage", "sumby(stage)(rate(pipeline_errors_total[$__rate_interval]))"),
        ("p95 E2E", "histogram_quantile(0.95,sumby(le)(rate(pipeline_e2e_duration_seconds_bucket"),
        ("RTP loss", "rate(rtp_packets_lost_total"),
        ("jitter-buffer depth", "jitter_buffer_depth_frames"),
    ],
)
def test_the_spec_panels_are_there(what: str, needle: str) -> None:
    assert any(needle in expr for expr in _exprs()), f"no {what} query ({needle})"


@pytest.mark.parametrize("q", ["0.5", "0.95", "0.99"])
def test_stage_latency_quantiles_are_there(q: str) -> None:
    needle = (
        f"histogram_quantile({q},sumby(stage,le)"
        "(rate(pipeline_stage_duration_seconds_bucket[$__rate_interval])))"
    )
    assert needle in _exprs()


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (stage, le) (rate(x_bucket{stage="a b",le!="1"}[1m])))'
        " / on (stage) group_left clamp_min(y_total offset 5m, 1e-9) > bool 2 unless z"
    )
    assert dash.metric_names(expr) == {"x_bucket", "y_total", "z"}


def _panel_types(board: dict[str, Any]) -> dict[str, str]:
    return {p["title"]: p["type"] for p in dash.panels(board)}


def test_latency_histograms_are_heatmaps_per_stage() -> None:
    types = _panel_types(BOARD)
    for stage in ("ASR", "LLM", "TTS"):
        assert types[f"{stage} latency histogram"] == "heatmap"
