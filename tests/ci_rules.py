"""pytest plugin: under ``CI=true`` a skipped test fails the run.

A test skipped for a missing dependency (no PostgreSQL, no real data) is a failure in CI, not a
pass. Expected failures (xfail) are not skips.
"""

from __future__ import annotations

import os

import pytest

_skipped: list[str] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _in_ci() and _skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if _in_ci() and _skipped:
        terminalreporter.write_line(
            f"CI=true: {len(_skipped)} skipped test(s) count as failures: "
            + ", ".join(_skipped[:10]),
            red=True,
        )
