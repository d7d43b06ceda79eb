"""The registry's clock: naive UTC from the database server on PostgreSQL (workers on several
machines agree on lease expiry and on when a night is over), from this machine on SQLite (one
machine by construction)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from pylcogt.db.models import utcnow

__all__ = ["db_now"]


def db_now(conn: Connection | Session | Engine) -> dt.datetime:
    """The current time as naive UTC: the server's clock on PostgreSQL, ours on SQLite."""
    bind = conn.get_bind() if isinstance(conn, Session) else conn
    if bind.dialect.name != "postgresql":
        return utcnow()
    query = sa.select(sa.func.timezone("UTC", sa.func.clock_timestamp()))
    if isinstance(conn, Engine):
        with conn.connect() as connection:
            return connection.execute(query).scalar_one().replace(tzinfo=None)
    return conn.execute(query).scalar_one().replace(tzinfo=None)
