"""Alembic environment for the pylcogt registry.

The URL comes from ``config.attributes["database_url"]`` (set by ``pylcogt db``), else from
PYLCOGT_DATABASE_URL, else the default SQLite file. ``render_as_batch`` makes ALTERs work on
SQLite; ``compare_type`` makes ``alembic check`` see column type changes.
"""

from alembic import context

from pylcogt.config import load_settings
from pylcogt.db.models import Base
from pylcogt.db.session import get_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("database_url") or load_settings().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = get_engine(_url())
    with engine.connect() as conn:
        _run(conn)


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
