"""The Grafana dashboard as tests see it: its panels, PromQL, and the metric names both use."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "voicebridge.json"

# Grafana's built-in variables, replaced as Grafana would for a short range and 1 s scrapes.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "5s",
    "$__range": "5m",
}
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "atan2",
}  # fmt: skip
_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "counter": ("_total",),
    "gauge": ("",),
}


@dataclass(frozen=True)
class Query:
    """One PromQL target of one panel."""

    panel: str
    ref: str
    expr: str

    @property
    def id(self) -> str:
        """A readable test id."""
        return f"{self.panel} [{self.ref}]"

    def promql(self) -> str:
        """The expression with Grafana's variables substituted."""
        text = self.expr
        for name, value in GRAFANA_VARIABLES.items():
            text = text.replace(name, value)
        return text


def load() -> dict[str, Any]:
    """The dashboard JSON."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries (rows only group), including panels nested in rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def queries(dashboard: dict[str, Any] | None = None) -> list[Query]:
    """Every PromQL target in the dashboard."""
    board = dashboard if dashboard is not None else load()
    return [
        Query(panel=p["title"], ref=t["refId"], expr=t["expr"])
        for p in panels(board)
        for t in p.get("targets", [])
    ]


def metric_names(promql: str) -> set[str]:
    """Metric names a PromQL expression selects.

    Strings, label matchers, range selectors and groupings are removed first.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group(0).lower() in _KEYWORDS:
            continue  # a function, an aggregation or a keyword
        names.add(match.group(0))
    return names


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Sample names a registry exposes, including labelled metrics that have no child yet."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names
