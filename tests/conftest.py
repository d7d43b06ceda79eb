"""Shared fixtures: real SQLite and real PostgreSQL databases (see also ``ci_rules``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pylcogt.db.session import dispose_engines

from .postgres_server import PostgresUnavailable, TempPostgres

pytest_plugins = ["pytester", "tests.ci_rules"]
REAL_DATA_ENV = "PYLCOGT_REAL_DATA"


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
    yield request.getfixturevalue("postgres_url")


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database only (tests about PostgreSQL itself: planner, SKIP LOCKED)."""
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


# --- astrometry.net index files -----------------------------------------------------------
#: The Debian Tycho-2 index files the suite is written for: scales 10-19, the package
#: astrometry-data-tycho2-10-19 that ``./dev`` installs. Users may have more (07-09, for smaller
#: fields; 07 alone holds all of Tycho-2), which changes how many stars a query returns and which
#: fields solve: the tests choose these files explicitly instead of reading the whole directory.
TYCHO2_TEST_SCALES = tuple(range(10, 20))
SYSTEM_INDEX_DIR = Path("/usr/share/astrometry")


@pytest.fixture(scope="session")
def tycho2_index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding links to the Tycho-2 index files of scales 10-19 only (empty when
    they are not installed: tests needing them check with their own fixtures)."""
    directory = tmp_path_factory.mktemp("tycho2-index-10-19")
    for path in sorted(SYSTEM_INDEX_DIR.glob("index-tycho2-*.fits")):
        scale = path.name.removeprefix("index-tycho2-")[:2]
        if scale.isdigit() and int(scale) in TYCHO2_TEST_SCALES:
            (directory / path.name).symlink_to(path)
    return directory


@pytest.fixture(scope="session", autouse=True)
def _pinned_index_dir(tycho2_index_dir: Path) -> Iterator[None]:
    """Every ``pylcogt`` run by the tests (in process or as a command) solves with the pinned
    index files (``PYLCOGT_INDEX_DIR``) unless the test gives its own."""
    previous = os.environ.get("PYLCOGT_INDEX_DIR")
    os.environ["PYLCOGT_INDEX_DIR"] = str(tycho2_index_dir)
    yield
    if previous is None:
        os.environ.pop("PYLCOGT_INDEX_DIR", None)
    else:
        os.environ["PYLCOGT_INDEX_DIR"] = previous
