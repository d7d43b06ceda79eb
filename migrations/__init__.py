"""Alembic migrations of the registry; installed as ``pylcogt.migrations``."""
