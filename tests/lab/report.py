"""pytest plugin for the run inside UML: write each test's outcome and failure text as JSON.

Loaded with `-p tests.lab.report`; the file is $PPPSSH_LAB_REPORT. Shape:
{"tests": {nodeid: {"outcome": "passed|failed|error|skipped", "text": "..."}}, "exitstatus": N,
 "seconds": {nodeid: S}}   (setup, call and teardown together: what shards.py weighs by)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_tests: dict[str, dict[str, str]] = {}
_seconds: dict[str, float] = {}
_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Fold one phase's report (setup, call, teardown) into its test's entry."""
    entry = _tests.setdefault(report.nodeid, {"outcome": "passed", "text": ""})
    _seconds[report.nodeid] = round(_seconds.get(report.nodeid, 0.0) + report.duration, 2)
    if report.passed:
        return
    if report.skipped:
        outcome, text = "skipped", f"skipped: {report.longreprtext}"
    else:
        outcome, text = ("failed" if report.when == "call" else "error"), report.longreprtext
        for title, content in report.sections:
            text += f"\n----- {title} -----\n{content}"
    if _RANK[outcome] > _RANK[entry["outcome"]]:
        entry["outcome"] = outcome
    entry["text"] += f"[{report.when}] {text}\n"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the report file named by $PPPSSH_LAB_REPORT."""
    path = os.environ.get("PPPSSH_LAB_REPORT")
    if path:
        data = {"tests": _tests, "exitstatus": int(exitstatus), "seconds": _seconds}
        Path(path).write_text(json.dumps(data, indent=1))
