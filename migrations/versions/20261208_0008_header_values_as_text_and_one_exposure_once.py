"""fault isolation: header values as text, one exposure once, per-instrument minimum inputs

- Header-derived columns become ``TEXT``: ``raw_frames.filename``, ``filter_name``,
  ``readout_mode``, ``object_name``; ``instruments.enclosure``, ``telescope``,
  ``telescope_name``, ``camera``; ``sites.code``, ``name``; and the ``filter_name`` and
  ``readout_mode`` of ``master_calibrations`` and ``master_jobs`` (a long filter still gets a
  master). A 40-character FILTER no longer stops an ingest on PostgreSQL. ``binning`` and
  ``obstype`` keep their lengths: ingest validates them to short values (and ``obstype`` feeds
  the generated ``claim_rank``, whose type PostgreSQL cannot change under it).
- ``raw_frames.exposure_key`` (site/camera/DAY-OBS/FRAMENUM, or ``sha256:`` and the file's
  checksum when the header has no frame number) and ``uq_raw_frames_exposure``: one exposure is
  registered once; its other copies (``x.fits.fz`` beside ``x.fits``) are ``rejected``. Frames
  registered before this revision have no key: they are not compared.
- ``instruments.min_inputs``: a per-instrument minimum of frames per master, e.g.
  ``'BIAS=3,DARK=3,SKYFLAT=3'`` (``NULL``: the service's setting).

SQLite: no table is copied. SQLite does not enforce ``VARCHAR`` lengths and ``VARCHAR(n)`` and
``TEXT`` have the same (text) affinity, so the declared types are replaced in the tables'
schema text (the procedure of revisions 0003 and 0007; every stored row stays valid). Columns
are added with ``ALTER TABLE ADD COLUMN``. PostgreSQL: ``varchar`` to ``text`` is binary
coercible (no table rewrite). Downgrading refuses, with the column and the count, when a value
is longer than the old limit (shorten or remove those rows first).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 02:00:00

"""

import re
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, old length, NOT NULL) of the columns that become TEXT
_TO_TEXT = (
    ("raw_frames", "filename", 255, True),
    ("raw_frames", "filter_name", 32, False),
    ("raw_frames", "readout_mode", 32, False),
    ("raw_frames", "object_name", 128, False),
    ("instruments", "enclosure", 16, True),
    ("instruments", "telescope", 16, True),
    ("instruments", "telescope_name", 32, False),
    ("instruments", "camera", 16, True),
    ("sites", "code", 8, True),
    ("sites", "name", 128, False),
    ("master_calibrations", "readout_mode", 32, True),
    ("master_calibrations", "filter_name", 32, True),
    ("master_jobs", "readout_mode", 32, True),
    ("master_jobs", "filter_name", 32, True),
)
_REGISTERED = "state <> 'rejected'"
_MIN_INPUTS_COMMENT = "per-instrument minimum frames per master, e.g. 'BIAS=3,DARK=3,SKYFLAT=3'"
_EXPOSURE_COMMENT = "site/camera/DAY-OBS/FRAMENUM, or sha256:<file>: one exposure, once"


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _edit_sqlite_schema(table: str, edit: Callable[[str], str]) -> None:
    """Replace ``table``'s CREATE TABLE text in the schema by ``edit(text)`` (declared types
    of the same affinity only: every stored row stays valid), then check the database."""
    bind = op.get_bind()
    sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).scalar_one()
    new = edit(sql)
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        bind.exec_driver_sql(
            "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", (new, table)
        )
        bind.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    problems = bind.exec_driver_sql("PRAGMA integrity_check").scalars().all()
    if problems != ["ok"]:
        raise RuntimeError(f"{table} after editing its column types: {problems}")


def _retype_sqlite(table: str, columns: Sequence[tuple[str, str, str]]) -> None:
    """``columns``: (column, declared type now, new declared type) in ``table``'s schema."""

    def edit(text: str) -> str:
        for column, old, new in columns:
            pattern = re.compile(r"(\n\s*\"?" + re.escape(column) + r"\"?\s+)" + re.escape(old)
                                 + r"(?=[\s,])")  # fmt: skip
            text, n = pattern.subn(r"\g<1>" + new, text)
            if n != 1:
                raise RuntimeError(f"{table}.{column} is not declared {old}; schema: {text}")
        return text

    _edit_sqlite_schema(table, edit)


def _retype(to_text: bool) -> None:
    by_table: dict[str, list[tuple[str, str, str]]] = {}
    for table, column, length, not_null in _TO_TEXT:
        old, new = f"VARCHAR({length})", "TEXT"
        if not to_text:
            old, new = new, old
        if _sqlite():
            by_table.setdefault(table, []).append((column, old, new))
            continue
        text, varchar = sa.Text(), sa.String(length=length)
        op.alter_column(table, column, type_=text if to_text else varchar,
                        existing_type=varchar if to_text else text,
                        existing_nullable=not not_null)  # fmt: skip
    for table, columns in by_table.items():
        _retype_sqlite(table, columns)


def _refuse_long_values() -> None:
    """Downgrading cannot keep a value longer than its old column: say which ones first."""
    bind = op.get_bind()
    too_long = []
    for table, column, length, _ in _TO_TEXT:
        query = f"SELECT count(*) FROM {table} WHERE length({column}) > {length}"
        n = bind.execute(sa.text(query)).scalar_one()
        if n:
            too_long.append(f"{table}.{column}: {n} values longer than {length} characters")
    if too_long:
        msg = ("cannot downgrade below revision 0008: " + "; ".join(too_long)
               + "; shorten or remove those rows first")  # fmt: skip
        raise RuntimeError(msg)


def upgrade() -> None:
    _retype(to_text=True)
    op.add_column("raw_frames", sa.Column("exposure_key", sa.Text(), nullable=True,
                                          comment=_EXPOSURE_COMMENT))  # fmt: skip
    op.create_index("uq_raw_frames_exposure", "raw_frames", ["exposure_key"], unique=True,
                    postgresql_where=sa.text(_REGISTERED), sqlite_where=sa.text(_REGISTERED))
    op.add_column("instruments", sa.Column("min_inputs", sa.Text(), nullable=True,
                                           comment=_MIN_INPUTS_COMMENT))  # fmt: skip


def downgrade() -> None:
    _refuse_long_values()
    if _sqlite():  # SQLite 3.35+: no table copy
        op.execute("ALTER TABLE instruments DROP COLUMN min_inputs")
    else:
        op.drop_column("instruments", "min_inputs")
    op.drop_index("uq_raw_frames_exposure", table_name="raw_frames",
                  postgresql_where=sa.text(_REGISTERED), sqlite_where=sa.text(_REGISTERED))
    if _sqlite():
        op.execute("ALTER TABLE raw_frames DROP COLUMN exposure_key")
    else:
        op.drop_column("raw_frames", "exposure_key")
    _retype(to_text=False)
