"""A real Prometheus server (Debian's `prometheus`) for tests: scrape targets, run PromQL."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.processes import stop_process
from tests.support import free_port

PROMETHEUS = shutil.which("prometheus")
START_TIMEOUT_S = 20.0


class PromQLError(AssertionError):
    """Prometheus refused or failed to evaluate an expression."""


@dataclass
class PrometheusServer:
    """A running Prometheus and its HTTP API."""

    url: str
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant query; return its result vector (raise on any API error)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PromQLError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(self, expr: str, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """Poll `expr` until it returns a non-empty result; fail with the last answer."""
        deadline = time.monotonic() + timeout_s
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.25)
        raise AssertionError(f"{expr!r} still empty after {timeout_s}s; log:\n{self.log_tail()}")

    def log_tail(self) -> str:
        """The last lines Prometheus logged, for failure messages."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


@contextlib.contextmanager
def running_prometheus(
    targets: list[str], workdir: Path, metrics_path: str = "/metrics"
) -> Iterator[PrometheusServer]:
    """Start Prometheus scraping `targets` (host:port) every second; kill it on exit."""
    assert PROMETHEUS, "Debian's prometheus package is not installed"
    config = workdir / "prometheus.yml"
    quoted = ", ".join(f'"{t}"' for t in targets)
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: test\n"
        f"    metrics_path: {metrics_path}\n"
        f"    static_configs:\n      - targets: [{quoted}]\n"
    )
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(url=f"http://127.0.0.1:{port}", log=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"prometheus exited {process.returncode}:\n{server.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        stop_process(process, 10)
