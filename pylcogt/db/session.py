"""The one engine per process, and sessions made from it.

SQLite connections get ``foreign_keys=ON``, WAL journalling and a busy timeout so that several
processes can share one file; PostgreSQL connections get ``pool_pre_ping`` so that a dropped
connection is replaced instead of failing the next query.

SQLite transactions begin with a plain (deferred) ``BEGIN``. A connection with the execution
option :data:`SQLITE_BEGIN_IMMEDIATE` begins with ``BEGIN IMMEDIATE`` instead: it takes the write
lock first (waiting up to the busy timeout), so a read-then-write transaction such as the worker's
claim can neither interleave with another writer nor fail with ``SQLITE_BUSY`` on upgrading. The
option means nothing on PostgreSQL (row locks do that job there).
"""

from __future__ import annotations

import functools
import threading

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "get_engine",
    "get_sessionmaker",
    "writer",
    "dispose_engines",
    "SQLITE_BEGIN_IMMEDIATE",
]

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: ``connection.execution_options(**SQLITE_BEGIN_IMMEDIATE)``: SQLite transactions on this
#: connection start with ``BEGIN IMMEDIATE`` (the write lock taken up front).
SQLITE_BEGIN_IMMEDIATE = {"pylcogt_sqlite_begin": "IMMEDIATE"}

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    # let SQLAlchemy, not pysqlite, decide when transactions begin (needed for BEGIN IMMEDIATE)
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_on_begin(conn) -> None:
    mode = conn.get_execution_options().get("pylcogt_sqlite_begin")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def _create_engine(url: str) -> Engine:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)


def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url`` (created on first use)."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = _create_engine(url)
        return engine


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    """A sessionmaker bound to :func:`get_engine` ``(url)``; objects survive commit."""
    with _lock:
        maker = _sessionmakers.get(url)
    if maker is None:
        maker = sessionmaker(bind=get_engine(url), expire_on_commit=False)
        with _lock:
            _sessionmakers.setdefault(url, maker)
    return maker


@functools.lru_cache(maxsize=32)
def writer(maker: sessionmaker[Session]) -> sessionmaker[Session]:
    """``maker`` for read-then-write transactions: on SQLite they begin with ``BEGIN IMMEDIATE``.

    A deferred SQLite transaction that reads, then writes after another connection has
    committed fails at once with "database is locked" (its snapshot is stale; the busy timeout
    does not apply), which is what ingesting while workers run would do. Taking the write lock
    first waits for it instead. PostgreSQL: unchanged. One per ``maker`` (cached: ingest asks
    for it per file).
    """
    bind = maker.kw.get("bind")
    if bind is None or bind.dialect.name != "sqlite":
        return maker
    return sessionmaker(bind=bind.execution_options(**SQLITE_BEGIN_IMMEDIATE),
                        expire_on_commit=maker.kw.get("expire_on_commit", True))  # fmt: skip


def dispose_engines() -> None:
    """Close every pooled connection (tests, and child processes after fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _sessionmakers.clear()
    writer.cache_clear()
