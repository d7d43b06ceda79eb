"""claim: raw frames claim rank and claim index, masters and master jobs indexes

The worker's claim takes the first claimable frame in claim order: oldest night, then bias, dark,
flat, science (``OBSTYPE_RANK``), then DATE-OBS and id. Ordered by a ``CASE`` on ``obstype``, the
database found and sorted every due frame on every claim. Now:

- ``raw_frames.claim_rank``, a generated column (``CASE obstype WHEN 'BIAS' THEN 0 WHEN 'DARK'
  THEN 1 WHEN 'SKYFLAT' THEN 2 ELSE 3 END``, ``pylcogt.db.models.CLAIM_RANK_SQL`` at this
  revision): the database computes it for every row, existing ones included (no backfill, and
  ingest need not set it). PostgreSQL stores it (``ADD COLUMN ... STORED`` rewrites the table
  once, under an exclusive lock: stop the workers first on a large registry). SQLite computes it
  on read (``VIRTUAL``, the only kind ``ALTER TABLE ADD COLUMN`` allows: no table copy, so the
  ``master_inputs`` and ``frame_calibrations`` rows are kept, see revision 0003) and keeps it in
  the index; the model says STORED (PostgreSQL), which only ``create_all`` (tests) applies on
  SQLite. Same values either way.
- ``ix_raw_frames_claim (dayobs, claim_rank, dateobs, id) WHERE state IN ('pending',
  'processing')``: the claim walks it in claim order and stops at the first frame whose gates
  pass; only claimable states are in it, so the walk starts at the backlog, not the history.
- ``ix_master_jobs_leased (instrument_id, dayobs, binning, readout_mode) WHERE lease_owner IS
  NOT NULL``: the masters being built, which the claim's gate asks for on every claim (the
  table keeps a row per group ever built).
- ``ix_master_calibrations_night (instrument_id, dayobs, binning, readout_mode)``: a night's
  masters of one mode, which the bad-pixel-mask gate probes for each frame the claim walks
  (with only ``dayobs`` indexed, PostgreSQL sometimes merge-joined every master instead).

Partial indexes are plain ``CREATE INDEX`` statements on both databases.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 21:30:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIM_RANK = "CASE obstype WHEN 'BIAS' THEN 0 WHEN 'DARK' THEN 1 WHEN 'SKYFLAT' THEN 2 ELSE 3 END"
CLAIMABLE = "state IN ('pending', 'processing')"
LEASED = "lease_owner IS NOT NULL"


def upgrade() -> None:
    # not in a batch: on SQLite a plain ALTER TABLE ADD COLUMN (VIRTUAL), never a table copy
    stored = op.get_bind().dialect.name != "sqlite"
    op.add_column(
        "raw_frames",
        sa.Column(
            "claim_rank",
            sa.Integer(),
            sa.Computed(CLAIM_RANK, persisted=stored),
            nullable=True,
            comment="rank in the night's order: bias 0 .. science 3",
        ),
    )
    op.create_index(
        "ix_raw_frames_claim",
        "raw_frames",
        ["dayobs", "claim_rank", "dateobs", "id"],
        unique=False,
        postgresql_where=sa.text(CLAIMABLE),
        sqlite_where=sa.text(CLAIMABLE),
    )
    op.create_index(
        "ix_master_calibrations_night",
        "master_calibrations",
        ["instrument_id", "dayobs", "binning", "readout_mode"],
        unique=False,
    )
    op.create_index(
        "ix_master_jobs_leased",
        "master_jobs",
        ["instrument_id", "dayobs", "binning", "readout_mode"],
        unique=False,
        postgresql_where=sa.text(LEASED),
        sqlite_where=sa.text(LEASED),
    )


def downgrade() -> None:
    op.drop_index("ix_master_jobs_leased", table_name="master_jobs")
    op.drop_index("ix_master_calibrations_night", table_name="master_calibrations")
    op.drop_index("ix_raw_frames_claim", table_name="raw_frames")
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":  # SQLite's own DROP COLUMN (3.35+), not a batch copy
        bind.exec_driver_sql("ALTER TABLE raw_frames DROP COLUMN claim_rank")
        return
    op.drop_column("raw_frames", "claim_rank")
