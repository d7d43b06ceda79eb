"""The documentation site: built with warnings as errors, its examples run, nothing drifts.

The builds run Sphinx in a subprocess (``python -m sphinx``, the Sphinx of this environment) on
a copy of ``docs/`` in a temporary directory, so that sphinx-automodapi's generated stub pages
never land in the checkout and the suite's ``filterwarnings = error`` does not apply to Sphinx.
The html build runs once per session; the doctest build reuses its doctrees (no re-reading).
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import pylcogt.errors
from pylcogt.cli import build_parser
from tests.envs import clean_env

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _sphinx(builder: str, source: Path, out: Path, doctrees: Path) -> subprocess.CompletedProcess:
    env = clean_env()
    env["OMP_NUM_THREADS"] = "1"  # the cosmic-ray stage in the examples
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-j", "auto",
               "-b", builder, "-d", str(doctrees), str(source), str(out)]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _report(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"


@pytest.fixture(scope="module")
def build_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of docs/ (without build products) and its html build, warnings as errors."""
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(DOCS, root / "src", ignore=shutil.ignore_patterns("_build", "api"))
    result = _sphinx("html", root / "src", root / "html", root / "doctrees")
    assert result.returncode == 0, _report(result)
    return root


@pytest.fixture(scope="module")
def site(build_root: Path) -> Path:
    return build_root / "html"


def _text(path: Path) -> str:
    """The visible text of an html page, tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """The command path of every subcommand of ``parser``, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from _commands(sub, (*path, name))


PAGES = (
    "index", "getting_started", "pipeline", "statistics", "selection", "registry", "operations",
    "astrometry", "qc", "troubleshooting", "cli", "api",
)  # fmt: skip
#: a few of the API pages generated from the docstrings (one page per public object)
API_PAGES = (
    "pylcogt.stats.sigma_clipped_mean",
    "pylcogt.frame.Frame",
    "pylcogt.calibrations.select.select_master",
    "pylcogt.errors.PylcogtError",
)


@pytest.mark.slow
def test_html_build_has_no_warnings_and_every_page(site: Path) -> None:
    for page in PAGES:
        assert (site / f"{page}.html").is_file(), page
    for name in API_PAGES:
        assert (site / "api" / f"{name}.html").is_file(), name
    assert "sigma_clipped_mean" in _text(site / "api.html")


@pytest.mark.slow
def test_doctests_run_and_pass(build_root: Path) -> None:
    out = build_root / "doctest"
    result = _sphinx("doctest", build_root / "src", out, build_root / "doctrees")
    assert result.returncode == 0, _report(result)
    summary = (out / "output.txt").read_text()
    tests = re.search(r"^\s*(\d+) tests?$", summary, re.MULTILINE)
    assert tests is not None and int(tests.group(1)) > 0, summary[-2000:]
    for what in ("tests", "setup code", "cleanup code"):
        assert re.search(rf"^\s*0 failures in {what}$", summary, re.MULTILINE), summary[-2000:]


def test_every_error_class_is_in_troubleshooting() -> None:
    text = (DOCS / "troubleshooting.rst").read_text()
    for name in pylcogt.errors.__all__:
        assert issubclass(getattr(pylcogt.errors, name), Exception), name
        assert f":class:`~pylcogt.errors.{name}`" in text, f"{name} is not on troubleshooting.rst"


@pytest.mark.slow
def test_every_subcommand_is_in_the_cli_reference(site: Path) -> None:
    page = (site / "cli.html").read_text(encoding="utf-8")
    text = _text(site / "cli.html")
    commands = list(_commands(build_parser()))
    assert ("db", "upgrade") in commands and ("calibrations", "mark-bad") in commands
    for path in commands:
        assert f'id="cli-{"-".join(path)}"' in page, path
        assert f"usage: pylcogt {' '.join(path)}" in text, path


_REMOTE_TAG = re.compile(
    r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE
)
_REMOTE_CSS = re.compile(r"(?:@import\s+|url\(\s*)[\"']?(?:https?:)?//", re.IGNORECASE)


@pytest.mark.slow
def test_the_site_works_offline(site: Path) -> None:
    """No page loads a script, stylesheet, font or image from the network (links in prose are
    fine); nor does the theme's CSS."""
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    for page in pages:
        match = _REMOTE_TAG.search(page.read_text(encoding="utf-8"))
        assert match is None, f"{page.relative_to(site)}: {match and match.group(0)}"
    for sheet in sorted(site.rglob("*.css")):
        match = _REMOTE_CSS.search(sheet.read_text(encoding="utf-8", errors="replace"))
        assert match is None, f"{sheet.relative_to(site)}: {match and match.group(0)}"
