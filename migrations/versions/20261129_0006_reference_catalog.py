"""photometry: reference catalogues and reference stars

Two new tables for the photometric calibration (``pylcogt refcat load FILE``):

- ``reference_catalogs``: one row per loaded catalogue (unique ``name``), with the file's path
  and sha256 and the column mapping given (``options``): loading the same bytes with the same
  options again changes nothing; other bytes under the same name replace its stars.
- ``reference_stars``: ICRS position (degrees) and, per band, magnitude and error (NULL: not
  measured) for Pan-STARRS/SDSS ``u g r i z y`` and Johnson/Cousins ``B V R I`` (columns
  ``mag_bj``, ``mag_vj``, ``mag_rc``, ``mag_ic``); deleted with their catalogue (``ON DELETE
  CASCADE``). ``ix_reference_stars_position (dec, ra)`` serves the cone searches (a declination
  band, then an RA range), ``ix_reference_stars_catalog_id`` the replacement of a catalogue.

New tables only: nothing existing is altered, on SQLite no table is copied.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 22:11:45.932095

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (column suffix, comment) of the per-band magnitude and error columns
BANDS = (
    ("u", None), ("g", None), ("r", None), ("i", None), ("z", None), ("y", None),
    ("bj", "Johnson B"), ("vj", "Johnson V"), ("rc", "Cousins R"), ("ic", "Cousins I"),
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "reference_catalogs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column(
            "source_path", sa.String(length=1024), nullable=False, comment="file it was loaded from"
        ),
        sa.Column("checksum", sa.String(length=64), nullable=False, comment="sha256 of the file"),
        sa.Column("options", sa.Text(), nullable=False, comment="column mapping given, JSON"),
        sa.Column("columns", sa.Text(), nullable=False, comment="columns used, JSON"),
        sa.Column("bands", sa.String(length=64), nullable=False, comment="e.g. g,r,i,z,y"),
        sa.Column("n_stars", sa.Integer(), nullable=False),
        sa.Column("loaded_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reference_catalogs")),
        sa.UniqueConstraint("name", name=op.f("uq_reference_catalogs_name")),
    )
    band_columns = []
    for suffix, comment in BANDS:
        band_columns.append(sa.Column(f"mag_{suffix}", sa.Float(), nullable=True, comment=comment))
        band_columns.append(sa.Column(f"err_{suffix}", sa.Float(), nullable=True))
    op.create_table(
        "reference_stars",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("catalog_id", sa.Integer(), nullable=False),
        sa.Column("ra", sa.Float(), nullable=False, comment="degrees, ICRS"),
        sa.Column("dec", sa.Float(), nullable=False, comment="degrees, ICRS"),
        *band_columns,
        sa.ForeignKeyConstraint(
            ["catalog_id"],
            ["reference_catalogs.id"],
            name=op.f("fk_reference_stars_catalog_id_reference_catalogs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reference_stars")),
    )
    op.create_index(
        op.f("ix_reference_stars_catalog_id"), "reference_stars", ["catalog_id"], unique=False
    )
    op.create_index("ix_reference_stars_position", "reference_stars", ["dec", "ra"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_reference_stars_position", table_name="reference_stars")
    op.drop_index(op.f("ix_reference_stars_catalog_id"), table_name="reference_stars")
    op.drop_table("reference_stars")
    op.drop_table("reference_catalogs")
