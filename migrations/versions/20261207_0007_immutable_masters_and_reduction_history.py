"""live nights: immutable masters, a reduction history, provisional and final calibrations

- ``master_calibrations``: a master never changes after registration. New columns say how it
  stands: ``version`` (1, 2.. within its group and night), ``inputs_digest`` (what it was made
  from), ``calibration_status`` (``provisional`` | ``final``) and ``finalized_at``, ``bad_at``
  (when it was marked bad), ``superseded_at`` and ``superseded_by_id`` (the master that replaced
  it). One *current* master per night and group (``uq_master_calibrations_current``: not bad
  and not superseded) replaces one *good* one. The lookup index loses ``is_bad`` (bad and
  superseded masters are skipped while walking it, and ``--as-of`` needs them) and a second one
  orders flats by night (``ix_master_calibrations_nights``).
- ``master_inputs``: each input's raw checksum when it was stacked, and the bias and dark it was
  prepared with (``bias_master_id``, ``dark_master_id``): before, ``frame_calibrations`` held
  one row per frame and role, overwritten when the frame was prepared for a rebuild.
- ``reductions`` and ``reduction_masters``: every reduction of a science frame, with its
  product's path and sha256 and each master's id and sha256; they replace
  ``frame_calibrations``, which is dropped.
- ``night_closures``: an instrument's night declared over (``pylcogt night close``).
- ``raw_frames.redo_reason`` (why a frame was re-queued: its next reduction's reason) and
  ``raw_frames.quiet_until`` (a ready calibration frame's group is in its quiet time: the
  night's science frames are not held back for it); ``master_jobs.status`` may be ``stale``.

Existing registries keep everything: masters become ``final`` (finalized when created), version
by creation order within their group and night, ``bad_at`` from the time stamp that starts their
``bad_reason``; each frame with a product gets one ``current`` reduction (reason "recorded
before revision 0007") with the masters ``frame_calibrations`` named and their checksums (the
product's own checksum was not recorded then: NULL); a master's input gets the bias and dark its
frame's ``frame_calibrations`` rows named (the frame's latest preparation).

SQLite: no table is copied (with foreign keys on, dropping ``master_calibrations`` in a batch
copy would delete every ``master_inputs`` row by cascade). Columns are added with ``ALTER TABLE
ADD COLUMN`` and their named CHECK and FOREIGN KEY constraints appended to the table's schema
text, the procedure of revision 0003; downgrading removes them the same way before ``DROP
COLUMN``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 22:40:00

"""

import datetime as dt
import re
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CALSTATUS = "calibration_status IN ('provisional', 'final')"
_OLD_JOB_STATES = ("pending", "built", "retry", "not_enough", "failed")
_NEW_JOB_STATES = ("pending", "stale", "built", "retry", "not_enough", "failed")
_GROUP = ["instrument_id", "obstype", "binning", "readout_mode", "filter_name", "dayobs"]
_ONE_CURRENT = "NOT is_bad AND superseded_at IS NULL AND obstype <> 'BPM'"
_ONE_GOOD = "NOT is_bad AND obstype <> 'BPM'"
_CURRENT_REDUCTION = "status = 'current'"
_STALE = "status = 'stale'"

# (table, name, SQL) of the table constraints added to existing tables
_MASTER_CONSTRAINTS = (
    ("ck_master_calibrations_version_positive", "CHECK (version >= 1)"),
    ("ck_master_calibrations_calibration_status", f"CHECK ({_CALSTATUS})"),
    ("fk_master_calibrations_superseded_by_id_master_calibrations",
     "FOREIGN KEY(superseded_by_id) REFERENCES master_calibrations (id) ON DELETE SET NULL"),
)  # fmt: skip
_INPUT_CONSTRAINTS = (
    ("fk_master_inputs_bias_master_id_master_calibrations",
     "FOREIGN KEY(bias_master_id) REFERENCES master_calibrations (id)"),
    ("fk_master_inputs_dark_master_id_master_calibrations",
     "FOREIGN KEY(dark_master_id) REFERENCES master_calibrations (id)"),
)  # fmt: skip


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _edit_sqlite_schema(table: str, edit: Callable[[str], str]) -> None:
    """Replace ``table``'s CREATE TABLE text in the schema by ``edit(text)`` (constraints only:
    every stored row stays valid), then check the database (see revision 0003)."""
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
        raise RuntimeError(f"{table} after editing its constraints: {problems}")
    if bind.exec_driver_sql(f"PRAGMA foreign_key_check({table})").first() is not None:
        raise RuntimeError(f"{table} after editing its constraints: a foreign key is broken")


def _append_constraints(table: str, constraints: Sequence[tuple[str, str]]) -> None:
    if not _sqlite():
        for name, sql in constraints:
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {sql}")
        return

    def edit(text: str) -> str:
        body = text.rstrip()
        if not body.endswith(")"):
            raise RuntimeError(f"unexpected schema text for {table}: {text}")
        extra = "".join(f", \n\tCONSTRAINT {name} {sql}" for name, sql in constraints)
        return body[:-1].rstrip() + extra + "\n)"

    _edit_sqlite_schema(table, edit)


def _remove_constraints(table: str, names: Sequence[str]) -> None:
    if not _sqlite():
        for name in names:
            op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
        return

    def edit(text: str) -> str:
        for name in names:
            found = re.search(r",\s*CONSTRAINT " + re.escape(name) + r"\s", text)
            if found is None:
                raise RuntimeError(f"{table} has no constraint {name} to remove")
            depth, end = 0, found.end()
            while end < len(text):  # up to the next top-level comma or the closing parenthesis
                char = text[end]
                if char == "(":
                    depth += 1
                elif char == ")":
                    if depth == 0:
                        break
                    depth -= 1
                elif char == "," and depth == 0:
                    break
                end += 1
            text = text[: found.start()] + text[end:]
        return text

    _edit_sqlite_schema(table, edit)


def _replace_job_status_check(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    def states(values: tuple[str, ...]) -> str:
        return "status IN (" + ", ".join(f"'{s}'" for s in values) + ")"

    name = "ck_master_jobs_master_job_status"
    if not _sqlite():
        op.drop_constraint(op.f(name), "master_jobs", type_="check")
        op.create_check_constraint(op.f(name), "master_jobs", states(new))
        return

    def edit(text: str) -> str:
        before, after = f"CHECK ({states(old)})", f"CHECK ({states(new)})"
        if text.count(before) != 1:
            raise RuntimeError(f"master_jobs has no constraint {before!r}; schema: {text}")
        return text.replace(before, after)

    _edit_sqlite_schema("master_jobs", edit)


def _drop_column(table: str, column: str) -> None:
    if _sqlite():  # SQLite 3.35+: no table copy
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    else:
        op.drop_column(table, column)


def _add_column(table: str, column: sa.Column, default_sql: str | None = None) -> None:
    """``ALTER TABLE ADD COLUMN``; a NOT NULL column gets ``default_sql`` as its default, which
    PostgreSQL then drops again (the models declare none)."""
    if default_sql is not None:  # existing rows get the default (SQLite requires one)
        column = sa.Column(column.name, column.type, nullable=column.nullable,
                           comment=column.comment, server_default=sa.text(default_sql))
    op.add_column(table, column)
    if default_sql is not None and not _sqlite():
        op.alter_column(table, column.name, server_default=None)


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z")


def _migrate_masters() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT id, instrument_id, obstype, binning, readout_mode, filter_name, dayobs, "
            "created_at, is_bad, bad_reason FROM master_calibrations ORDER BY created_at, id"
        )
    ).all()
    versions: dict[tuple, int] = {}
    for row in rows:
        key = (row.instrument_id, row.obstype, row.binning, row.readout_mode, row.filter_name,
               str(row.dayobs))  # fmt: skip
        versions[key] = versions.get(key, 0) + 1
        bad_at = None
        if row.is_bad:
            stamp = _STAMP.match(row.bad_reason or "")
            bad_at = dt.datetime.fromisoformat(stamp.group(1)) if stamp else row.created_at
        bind.execute(
            sa.text(
                "UPDATE master_calibrations SET version = :v, finalized_at = created_at, "
                "bad_at = :bad_at WHERE id = :id"
            ),
            {"v": versions[key], "bad_at": bad_at, "id": row.id},
        )


def _migrate_provenance() -> None:
    op.execute(
        "UPDATE master_inputs SET frame_checksum = "
        "(SELECT checksum FROM raw_frames WHERE raw_frames.id = master_inputs.frame_id)"
    )
    for role, column in (("bias", "bias_master_id"), ("dark", "dark_master_id")):
        op.execute(
            f"UPDATE master_inputs SET {column} = (SELECT fc.master_id FROM frame_calibrations fc "
            f"WHERE fc.frame_id = master_inputs.frame_id AND fc.role = '{role}')"
        )
    op.execute(
        "INSERT INTO reductions (frame_id, status, calibration_status, reason, started_at, "
        "finished_at, finalized_at, kept_at, pipeline_version, worker, as_of, product_path, "
        "product_checksum, kept_path, superseded_at, superseded_by_id) "
        "SELECT id, 'current', 'final', 'recorded before revision 0007 (no history kept then)', "
        "NULL, updated_at, updated_at, NULL, NULL, NULL, NULL, product_path, NULL, NULL, NULL, "
        "NULL "
        "FROM raw_frames WHERE product_path IS NOT NULL "
        "AND obstype NOT IN ('BIAS', 'DARK', 'SKYFLAT') ORDER BY id"
    )
    op.execute(
        "INSERT INTO reduction_masters (reduction_id, role, master_id, master_checksum, "
        "fallback_later) "
        "SELECT r.id, fc.role, fc.master_id, m.checksum, false FROM frame_calibrations fc "
        "JOIN reductions r ON r.frame_id = fc.frame_id "
        "JOIN master_calibrations m ON m.id = fc.master_id"
    )


def upgrade() -> None:
    # --- master_calibrations -------------------------------------------------------------
    _add_column("master_calibrations", sa.Column("version", sa.Integer(), nullable=False,
                                                 comment="1, 2.. within its group"), "1")
    _add_column("master_calibrations", sa.Column("inputs_digest", sa.String(length=64),
                                                 nullable=True,
                                                 comment="sha256 of what it was made from"))
    _add_column("master_calibrations", sa.Column("calibration_status", sa.String(length=24),
                                                 nullable=False), "'final'")
    _add_column("master_calibrations", sa.Column("finalized_at", sa.DateTime(), nullable=True,
                                                 comment="when it became final"))
    _add_column("master_calibrations", sa.Column("bad_at", sa.DateTime(), nullable=True,
                                                 comment="when it was marked bad"))
    _add_column("master_calibrations", sa.Column("superseded_at", sa.DateTime(), nullable=True))
    _add_column("master_calibrations", sa.Column("superseded_by_id", sa.Integer(), nullable=True,
                                                 comment="the master that replaced it"))
    _append_constraints("master_calibrations", _MASTER_CONSTRAINTS)
    op.drop_index("uq_master_calibrations_good", table_name="master_calibrations",
                  postgresql_where=sa.text(_ONE_GOOD), sqlite_where=sa.text(_ONE_GOOD))
    op.drop_index("ix_master_calibrations_lookup", table_name="master_calibrations")
    op.create_index("ix_master_calibrations_lookup", "master_calibrations",
                    ["instrument_id", "obstype", "binning", "readout_mode", "filter_name",
                     "dateobs"])  # fmt: skip
    op.create_index("ix_master_calibrations_nights", "master_calibrations",
                    ["instrument_id", "obstype", "binning", "readout_mode", "filter_name",
                     "dayobs", "dateobs"])  # fmt: skip
    op.create_index("uq_master_calibrations_current", "master_calibrations", _GROUP, unique=True,
                    postgresql_where=sa.text(_ONE_CURRENT), sqlite_where=sa.text(_ONE_CURRENT))
    _migrate_masters()

    # --- master_inputs, raw_frames, master_jobs --------------------------------------------
    _add_column("master_inputs", sa.Column("frame_checksum", sa.String(length=64), nullable=True,
                                           comment="sha256 of the raw file when it was stacked"))
    _add_column("master_inputs", sa.Column("bias_master_id", sa.Integer(), nullable=True,
                                           comment="master bias it was prepared with"))
    _add_column("master_inputs", sa.Column("dark_master_id", sa.Integer(), nullable=True,
                                           comment="master dark it was prepared with"))
    _append_constraints("master_inputs", _INPUT_CONSTRAINTS)
    op.create_index(op.f("ix_master_inputs_bias_master_id"), "master_inputs", ["bias_master_id"])
    op.create_index(op.f("ix_master_inputs_dark_master_id"), "master_inputs", ["dark_master_id"])
    _add_column("raw_frames", sa.Column("redo_reason", sa.Text(), nullable=True,
                comment="why the frame was re-queued: the reason of its next reduction"))
    _add_column("raw_frames", sa.Column("quiet_until", sa.DateTime(), nullable=True,
                comment="a ready calibration frame's group is in its quiet time until then"))
    _replace_job_status_check(_OLD_JOB_STATES, _NEW_JOB_STATES)
    op.create_index("ix_master_jobs_stale", "master_jobs",
                    ["instrument_id", "dayobs", "binning", "readout_mode"],
                    postgresql_where=sa.text(_STALE), sqlite_where=sa.text(_STALE))

    # --- new tables ------------------------------------------------------------------------
    calstatus = sa.Enum("provisional", "final", name="calibration_status", native_enum=False,
                        create_constraint=True, length=24)  # fmt: skip
    op.create_table(
        "reductions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("frame_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.Enum("current", "superseded", name="reduction_status",
                                    native_enum=False, create_constraint=True, length=24),
                  nullable=False),  # fmt: skip
        sa.Column("calibration_status", calstatus, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, comment="why this reduction was made"),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=False),
        sa.Column("finalized_at", sa.DateTime(), nullable=True),
        sa.Column("kept_at", sa.DateTime(), nullable=True,
                  comment="when a refresh last kept it provisional: re-reduction off"),
        sa.Column("pipeline_version", sa.String(length=64), nullable=True),
        sa.Column("worker", sa.String(length=128), nullable=True,
                  comment="lease owner, or the command"),
        sa.Column("as_of", sa.DateTime(), nullable=True, comment="reduce --as-of"),
        sa.Column("product_path", sa.String(length=1024), nullable=False),
        sa.Column("product_checksum", sa.String(length=64), nullable=True, comment="sha256"),
        sa.Column("kept_path", sa.String(length=1024), nullable=True,
                  comment="the product kept after it was superseded"),
        sa.Column("superseded_at", sa.DateTime(), nullable=True),
        sa.Column("superseded_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["frame_id"], ["raw_frames.id"],
                                name=op.f("fk_reductions_frame_id_raw_frames"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["superseded_by_id"], ["reductions.id"],
                                name=op.f("fk_reductions_superseded_by_id_reductions"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reductions")),
    )  # fmt: skip
    op.create_index("ix_reductions_frame", "reductions", ["frame_id", "id"])
    op.create_index("uq_reductions_current", "reductions", ["frame_id"], unique=True,
                    postgresql_where=sa.text(_CURRENT_REDUCTION),
                    sqlite_where=sa.text(_CURRENT_REDUCTION))  # fmt: skip
    op.create_table(
        "reduction_masters",
        sa.Column("reduction_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.Enum("bias", "dark", "flat", "bpm", name="calibration_role",
                                  native_enum=False, create_constraint=True, length=24),
                  nullable=False),  # fmt: skip
        sa.Column("master_id", sa.Integer(), nullable=False),
        sa.Column("master_checksum", sa.String(length=64), nullable=False),
        sa.Column("fallback_later", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["master_id"], ["master_calibrations.id"],
                                name=op.f("fk_reduction_masters_master_id_master_calibrations")),
        sa.ForeignKeyConstraint(["reduction_id"], ["reductions.id"],
                                name=op.f("fk_reduction_masters_reduction_id_reductions"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("reduction_id", "role", name=op.f("pk_reduction_masters")),
    )  # fmt: skip
    op.create_index(op.f("ix_reduction_masters_master_id"), "reduction_masters", ["master_id"])
    op.create_table(
        "night_closures",
        sa.Column("instrument_id", sa.Integer(), nullable=False),
        sa.Column("dayobs", sa.Date(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["instrument_id"], ["instruments.id"],
                                name=op.f("fk_night_closures_instrument_id_instruments")),
        sa.PrimaryKeyConstraint("instrument_id", "dayobs", name=op.f("pk_night_closures")),
    )  # fmt: skip
    _migrate_provenance()
    op.drop_index(op.f("ix_frame_calibrations_master_id"), table_name="frame_calibrations")
    op.drop_table("frame_calibrations")


def downgrade() -> None:
    op.create_table(
        "frame_calibrations",
        sa.Column("frame_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.Enum("bias", "dark", "flat", "bpm", name="calibration_role",
                                  native_enum=False, create_constraint=True, length=24),
                  nullable=False),  # fmt: skip
        sa.Column("master_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["frame_id"], ["raw_frames.id"],
                                name=op.f("fk_frame_calibrations_frame_id_raw_frames"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["master_id"], ["master_calibrations.id"],
                                name=op.f("fk_frame_calibrations_master_id_master_calibrations")),
        sa.PrimaryKeyConstraint("frame_id", "role", name=op.f("pk_frame_calibrations")),
    )  # fmt: skip
    op.create_index(op.f("ix_frame_calibrations_master_id"), "frame_calibrations", ["master_id"])
    # the current reductions' masters, and each calibration frame's latest preparation
    op.execute(
        "INSERT INTO frame_calibrations (frame_id, role, master_id) "
        "SELECT r.frame_id, rm.role, rm.master_id FROM reduction_masters rm "
        "JOIN reductions r ON r.id = rm.reduction_id WHERE r.status = 'current'"
    )
    for role, column in (("bias", "bias_master_id"), ("dark", "dark_master_id")):
        op.execute(
            f"INSERT INTO frame_calibrations (frame_id, role, master_id) "
            f"SELECT frame_id, '{role}', {column} FROM master_inputs mi WHERE {column} IS NOT "
            f"NULL AND master_id = (SELECT max(master_id) FROM master_inputs m2 WHERE "
            f"m2.frame_id = mi.frame_id AND m2.{column} IS NOT NULL)"
        )
    op.drop_table("night_closures")
    op.drop_index(op.f("ix_reduction_masters_master_id"), table_name="reduction_masters")
    op.drop_table("reduction_masters")
    op.drop_index("uq_reductions_current", table_name="reductions",
                  postgresql_where=sa.text(_CURRENT_REDUCTION),
                  sqlite_where=sa.text(_CURRENT_REDUCTION))  # fmt: skip
    op.drop_index("ix_reductions_frame", table_name="reductions")
    op.drop_table("reductions")

    op.drop_index("ix_master_jobs_stale", table_name="master_jobs",
                  postgresql_where=sa.text(_STALE), sqlite_where=sa.text(_STALE))
    op.execute("UPDATE master_jobs SET status = 'pending' WHERE status = 'stale'")
    _replace_job_status_check(_NEW_JOB_STATES, _OLD_JOB_STATES)
    _drop_column("raw_frames", "quiet_until")
    _drop_column("raw_frames", "redo_reason")
    op.drop_index(op.f("ix_master_inputs_dark_master_id"), table_name="master_inputs")
    op.drop_index(op.f("ix_master_inputs_bias_master_id"), table_name="master_inputs")
    _remove_constraints("master_inputs", [name for name, _ in _INPUT_CONSTRAINTS])
    for column in ("dark_master_id", "bias_master_id", "frame_checksum"):
        _drop_column("master_inputs", column)

    # one good master per night and group again: a superseded master becomes a bad one
    op.execute(
        "UPDATE master_calibrations SET is_bad = true, bad_reason = 'superseded by master ' || "
        "coalesce(CAST(superseded_by_id AS VARCHAR(20)), '?') || ' (revision 0007 downgraded)' "
        "WHERE superseded_at IS NOT NULL AND NOT is_bad"
    )
    op.drop_index("uq_master_calibrations_current", table_name="master_calibrations",
                  postgresql_where=sa.text(_ONE_CURRENT), sqlite_where=sa.text(_ONE_CURRENT))
    op.drop_index("ix_master_calibrations_nights", table_name="master_calibrations")
    op.drop_index("ix_master_calibrations_lookup", table_name="master_calibrations")
    op.create_index("ix_master_calibrations_lookup", "master_calibrations",
                    ["instrument_id", "obstype", "binning", "readout_mode", "filter_name",
                     "is_bad", "dateobs"])  # fmt: skip
    op.create_index("uq_master_calibrations_good", "master_calibrations", _GROUP, unique=True,
                    postgresql_where=sa.text(_ONE_GOOD), sqlite_where=sa.text(_ONE_GOOD))
    _remove_constraints("master_calibrations", [name for name, _ in _MASTER_CONSTRAINTS])
    for column in ("superseded_by_id", "superseded_at", "bad_at", "finalized_at",
                   "calibration_status", "inputs_digest", "version"):  # fmt: skip
        _drop_column("master_calibrations", column)
