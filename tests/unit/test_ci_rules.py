"""The CI rule itself: a skip fails the run under CI=true, and only then."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])

SKIPPING = """
import pytest

def test_needs_something():
    pytest.skip("no server")

def test_fine():
    assert True
"""


def test_skip_fails_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(SKIPPING)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PYTHONPATH", ROOT)
    result = pytester.runpytest_subprocess("-p", "tests.ci_rules")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*CI=true: 1 skipped test(s) count as failures*"])


def test_skip_is_a_skip_outside_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(SKIPPING)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("PYTHONPATH", ROOT)
    result = pytester.runpytest_subprocess("-p", "tests.ci_rules")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)
