"""raw frames: calibration cutoff

``raw_frames.calibration_cutoff`` (nullable, naive UTC): set by a backfill to the end of the
frame's night, so that the frame (and the masters made from it) use only masters observed at or
before then (the as-of rule); ``NULL`` for frames ingested as they come.

On SQLite, adding a nullable column is a plain ``ALTER TABLE ADD COLUMN`` (no table copy, so the
``master_inputs`` and ``frame_calibrations`` rows of existing frames are kept); the downgrade uses
SQLite's own ``ALTER TABLE DROP COLUMN`` (3.35+) rather than a batch copy of ``raw_frames``, which
would delete those rows by cascade (see revision 0003).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 20:08:05.597043

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("raw_frames", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "calibration_cutoff",
                sa.DateTime(),
                nullable=True,
                comment="use only masters observed at or before this (backfill)",
            )
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        bind.exec_driver_sql("ALTER TABLE raw_frames DROP COLUMN calibration_cutoff")
        return
    op.drop_column("raw_frames", "calibration_cutoff")
