"""Migrations and models agree, on SQLite and on PostgreSQL, and migrate both ways."""

from __future__ import annotations

import sqlalchemy as sa

from pylcogt.db import migrate
from pylcogt.db.models import Base
from pylcogt.db.session import get_engine


def _schema(url: str) -> dict:
    """Tables, columns, indexes and named constraints as the database reports them."""
    insp = sa.inspect(get_engine(url))
    out = {}
    for table in insp.get_table_names():
        if table == "alembic_version":
            continue
        out[table] = {
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in insp.get_indexes(table)
            ),
            "unique": sorted(
                (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
            ),
            "checks": sorted(c["name"] for c in insp.get_check_constraints(table)),
            "fks": sorted(
                (f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                for f in insp.get_foreign_keys(table)
            ),
            "pk": insp.get_pk_constraint(table)["name"],
        }
    return out


def test_upgrade_matches_models(db_url: str) -> None:
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == migrate.head_revision()
    assert migrate.schema_differences(db_url) == []


def test_migrated_schema_equals_create_all(db_url: str, tmp_path) -> None:
    """Stricter than `alembic check`: constraint names (checks included) are identical too."""
    migrate.upgrade(db_url)
    migrated = _schema(db_url)
    assert set(migrated) == {t.name for t in Base.metadata.sorted_tables}
    with get_engine(db_url).begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
    Base.metadata.drop_all(get_engine(db_url))
    Base.metadata.create_all(get_engine(db_url))
    assert _schema(db_url) == migrated


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    migrate.upgrade(db_url)
    migrate.downgrade(db_url, "base")
    assert migrate.current_revision(db_url) is None
    tables = set(sa.inspect(get_engine(db_url)).get_table_names()) - {"alembic_version"}
    assert tables == set()
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == migrate.head_revision()
    assert migrate.schema_differences(db_url) == []


def test_upgrade_is_idempotent(db_url: str) -> None:
    migrate.upgrade(db_url)
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == migrate.head_revision()
