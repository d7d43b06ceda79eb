"""Bring a registry database to the head revision, from anywhere.

The alembic scripts ship inside the package as ``pylcogt.migrations`` (they live in the
repository's ``migrations/`` folder), so an installed pylcogt needs no ``alembic.ini``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from pylcogt.db.models import Base
from pylcogt.db.session import get_engine
from pylcogt.errors import ConfigurationError

__all__ = [
    "alembic_config",
    "upgrade",
    "downgrade",
    "current_revision",
    "head_revision",
    "schema_differences",
]


def migrations_dir() -> Path:
    """The folder holding ``env.py`` and ``versions/``: the installed package, or the checkout."""
    spec = importlib.util.find_spec("pylcogt.migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    msg = "the pylcogt migrations are missing from this installation; reinstall pylcogt"
    raise ConfigurationError(msg)


def alembic_config(database_url: str) -> Config:
    """An alembic configuration for ``database_url`` using the migrations shipped with pylcogt."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default: the newest); ``pylcogt db upgrade``."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Migrate the database back to ``revision`` (``'base'``: empty); ``pylcogt db downgrade``."""
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str:
    """The newest revision this pylcogt knows (what ``pylcogt db upgrade`` migrates to)."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_current_head()


def current_revision(database_url: str) -> str | None:
    """The database's revision; None for a database never migrated (empty)."""
    with get_engine(database_url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_differences(database_url: str) -> list:
    """What ``alembic check`` would report: differences between the database and the models."""
    with get_engine(database_url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def ensure_schema(database_url: str) -> None:
    """Create the schema in an empty database; refuse to work on an out-of-date one.

    An empty database (no tables at all) is brought to head automatically, so that the embedded
    SQLite default works out of the box. A database at an older revision is never migrated
    implicitly: other workers may be using it. Run ``pylcogt db upgrade`` then.
    """
    import sqlalchemy as sa

    engine = get_engine(database_url)
    tables = sa.inspect(engine).get_table_names()  # OperationalError: unreachable, for the caller
    if not tables:
        upgrade(database_url)
        return
    current = current_revision(database_url)
    head = head_revision()
    if current != head:
        msg = (
            f"the registry database is at revision {current or 'none'} but this pylcogt needs "
            f"{head}; run `pylcogt db upgrade` (with the same --database-url)"
        )
        raise ConfigurationError(msg)
