"""Suite-wide rules.

Under CI (`CI` set), a skipped test fails: `make test` installs every real peer the tests
use (sipp, baresip, chromium, node, prometheus, the models), so a skip there means an install
step is missing. Skips whose reason starts with "optional:" stay skips.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if not os.environ.get("CI") or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    if "optional:" not in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, but CI installs everything: {reason}"
