"""Shared fixtures: real SQLite and real PostgreSQL databases, and CI's no-skip rule.

Under ``CI=true`` a skipped test fails the run: a test skipped for a missing dependency is a
failure there, not a pass.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pylcogt.db.session import dispose_engines

from .postgres_server import PostgresUnavailable, TempPostgres

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REAL_DATA_ENV = "PYLCOGT_REAL_DATA"


# --- CI: skipped means failed -------------------------------------------------------------
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if IN_CI and _skipped:
        terminalreporter.write_line(
            f"CI=true: {len(_skipped)} skipped test(s) count as failures: "
            + ", ".join(_skipped[:10]),
            red=True,
        )


# --- databases ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """URL of a PostgreSQL role that may create databases (a server this session started)."""
    given = os.environ.get("PYLCOGT_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    try:
        server = TempPostgres().start()
    except PostgresUnavailable as exc:
        pytest.fail(f"cannot start the test PostgreSQL server: {exc}", pytrace=False)
    try:
        yield server.admin_url
    finally:
        dispose_engines()
        server.stop()


@pytest.fixture(scope="session")
def _postgres_admin_engine(postgres_admin_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(
        postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    yield engine
    engine.dispose()


def _new_postgres_db(admin: sa.Engine) -> tuple[str, str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return name, admin.url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend: an SQLite file or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        dispose_engines()
        return
    admin = request.getfixturevalue("_postgres_admin_engine")
    name, url = _new_postgres_db(admin)
    try:
        yield url
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def real_data() -> Path:
    """The folder of real LCO frames and headers (``PYLCOGT_REAL_DATA``); skipped when unset."""
    value = os.environ.get(REAL_DATA_ENV)
    if not value:
        pytest.skip(f"{REAL_DATA_ENV} is not set (./dev test sets it when ../shared exists)")
    return Path(value)
