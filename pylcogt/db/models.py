"""SQLAlchemy 2.0 models of the calibration registry.

Conventions: every timestamp is naive UTC (``DateTime`` without a time zone, the same on SQLite
and PostgreSQL); ``dayobs`` is the observing night (``DAY-OBS``) as a date; binning is the
``CCDSUM`` card written ``"1x1"``; ``filter_name`` is ``""`` for calibration types that do not
depend on the filter, so that unique constraints and lookups never meet a NULL. Values copied
from frame headers are ``Text`` (no length: a long FILTER is stored, not refused by PostgreSQL);
the ones that are matched and indexed are bounded by ingest instead
(:data:`pylcogt.io.raw_header.MAX_KEY_CHARS`), and ``binning`` and ``obstype`` are validated
there to short values. Enumerations are
stored as short strings with CHECK constraints (no native PostgreSQL enum types: adding a value
is then one batch migration on both databases). Every schema change is an alembic revision in
``migrations/versions``.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Computed,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    and_,
    false,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

from pylcogt.scheduling import OBSTYPE_RANK, SCIENCE_RANK

__all__ = [
    "Base",
    "FrameState",
    "CalibrationType",
    "CalibrationRole",
    "CameraFamily",
    "Site",
    "Instrument",
    "RawFrame",
    "MasterCalibration",
    "MasterInput",
    "CalibrationStatus",
    "ReductionStatus",
    "Reduction",
    "ReductionMaster",
    "NightClosure",
    "MasterJobStatus",
    "MasterJob",
    "utcnow",
    "CLAIM_RANK_SQL",
    "CLAIMABLE_STATES",
    "in_claimable_state",
    "current_master",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """The current time as naive UTC, the registry's timestamp convention."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of every registry table."""

    #: The registry's tables, with the constraint naming convention (``pk_``, ``fk_``, ``uq_``,
    #: ``ck_``, ``ix_``) that lets migrations address constraints by name.
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FrameState(str, enum.Enum):
    """Processing state of a raw frame.

    A calibration frame (bias, dark, flat) that passed the worker's individual check is
    ``ready``: it waits to be stacked into its night's master, and is ``done`` once it is in one.
    """

    PENDING = "pending"
    WAITING_CALIBRATION = "waiting_calibration"
    PROCESSING = "processing"
    READY = "ready"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"


class CameraFamily(str, enum.Enum):
    """Camera family of an instrument, from the ``INSTRUME`` prefix (:mod:`pylcogt.instruments`)."""

    SINISTRO = "sinistro"
    SBIG = "sbig"
    SPECTRAL = "spectral"


class CalibrationType(str, enum.Enum):
    """OBSTYPE of a master calibration."""

    BIAS = "BIAS"
    DARK = "DARK"
    SKYFLAT = "SKYFLAT"
    BPM = "BPM"


class CalibrationRole(str, enum.Enum):
    """What a master was used for when reducing a frame."""

    BIAS = "bias"
    DARK = "dark"
    FLAT = "flat"
    BPM = "bpm"


class CalibrationStatus(str, enum.Enum):
    """How good a master (or a reduction) is meant to be.

    A master built while its night is still going on is ``provisional``: more frames of its
    group may come (the morning flats). One built once the night is over (or closed, see
    :class:`NightClosure`) is ``final``. A reduction is ``final`` when every master it used is
    final and its night's calibrations are all built (:mod:`pylcogt.lifecycle`).
    """

    PROVISIONAL = "provisional"
    FINAL = "final"


class ReductionStatus(str, enum.Enum):
    """A frame's reduction is ``current`` (its product is the frame's product) until a newer
    reduction of the frame ``supersedes`` it. Rows are never deleted: the history stays."""

    CURRENT = "current"
    SUPERSEDED = "superseded"


def _str_enum(enum_cls: type[enum.Enum], name: str) -> Enum:
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=24,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Site(Base):
    """An observatory site (``SITEID``), created from frame headers on first sight."""

    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str | None] = mapped_column(Text)
    latitude_deg: Mapped[float | None] = mapped_column(Float)
    longitude_deg: Mapped[float | None] = mapped_column(Float, comment="degrees east")
    height_m: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    instruments: Mapped[list[Instrument]] = relationship(back_populates="site")


class Instrument(Base):
    """A camera on a telescope: (site, enclosure, telescope, camera) is unique.

    A camera moved to another telescope is another instrument, since its flats change with it.
    ``nx``/``ny`` are the light-sensitive detector size in unbinned pixels. ``min_inputs``
    overrides the minimum number of frames per master for this instrument (``'BIAS=3,DARK=3'``;
    ``NULL``: the service's setting).
    """

    __tablename__ = "instruments"
    __table_args__ = (UniqueConstraint("site_id", "enclosure", "telescope", "camera"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    enclosure: Mapped[str] = mapped_column(Text, comment="ENCID, e.g. doma")
    telescope: Mapped[str] = mapped_column(Text, comment="TELID, e.g. 1m0a")
    telescope_name: Mapped[str | None] = mapped_column(Text, comment="TELESCOP, e.g. 1m0-05")
    camera: Mapped[str] = mapped_column(Text, index=True, comment="INSTRUME, e.g. fa03")
    family: Mapped[CameraFamily] = mapped_column(_str_enum(CameraFamily, "camera_family"))
    nx: Mapped[int] = mapped_column(Integer, comment="detector width, unbinned pixels")
    ny: Mapped[int] = mapped_column(Integer, comment="detector height, unbinned pixels")
    n_amplifiers: Mapped[int] = mapped_column(Integer)
    min_inputs: Mapped[str | None] = mapped_column(
        Text, comment="per-instrument minimum frames per master, e.g. 'BIAS=3,DARK=3,SKYFLAT=3'"
    )
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    site: Mapped[Site] = relationship(back_populates="instruments")


#: A frame's rank in its night's processing order (:data:`~pylcogt.scheduling.OBSTYPE_RANK`:
#: bias, dark, flat, then science), the generated column ``raw_frames.claim_rank``. Changing the
#: order is a migration (the column dropped and added again; ``alembic check`` does not compare
#: generated expressions: tests/db/test_queue.py checks the migrated column against the ranks).
CLAIM_RANK_SQL = (
    "CASE obstype "
    + " ".join(f"WHEN '{name}' THEN {int(rank)}" for name, rank in OBSTYPE_RANK.items())
    + f" ELSE {int(SCIENCE_RANK)} END"
)

#: The states of the frames a worker may claim (``pending``, or ``processing`` under an expired
#: lease): the predicate of the claim index ``ix_raw_frames_claim``.
CLAIMABLE_STATES = (FrameState.PENDING.value, FrameState.PROCESSING.value)
_CLAIMABLE_STATES_SQL = "state IN (" + ", ".join(f"'{s}'" for s in CLAIMABLE_STATES) + ")"


def in_claimable_state(state) -> ColumnElement[bool]:
    """The claim index's predicate on ``state`` (``state IN ('pending', 'processing')``), with
    literal values: a term of the claim's ``WHERE`` written as the index predicate, so that both
    databases see that the query implies it (SQLite uses a partial index only then)."""
    return state.in_([literal_column(f"'{value}'", String) for value in CLAIMABLE_STATES])


#: The predicate of ``uq_raw_frames_exposure``: the frames that hold their exposure (a rejected
#: copy keeps its key, to say what it is a copy of).
_REGISTERED_EXPOSURE_SQL = "state <> 'rejected'"


class RawFrame(Base):
    """A raw frame registered by ingest, with its processing state.

    A ``rejected`` frame may lack every header-derived column (it could not be read); any
    other state has them all. ``lease_*`` columns belong to the worker: ``lease_token`` is a
    fencing token incremented on every claim, so a worker whose lease was taken over cannot
    record a stale result.

    ``exposure_key`` names the exposure the file holds (:func:`pylcogt.ingest.exposure_key`:
    site, camera, night and frame number, or the file's sha256 when the header has no frame
    number): one exposure is registered once, whatever its file name or compression; further
    copies are ``rejected`` (``uq_raw_frames_exposure``). ``NULL`` on frames registered before
    revision 0008 and on unreadable ones.
    """

    __tablename__ = "raw_frames"
    __table_args__ = (
        CheckConstraint(
            "state = 'rejected' OR (obstype IS NOT NULL AND instrument_id IS NOT NULL"
            " AND dateobs IS NOT NULL AND dayobs IS NOT NULL AND exptime_s IS NOT NULL"
            " AND binning IS NOT NULL)",
            name="readable_unless_rejected",
        ),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        # worker polling: next frames in a state, oldest night first
        Index("ix_raw_frames_poll", "state", "dayobs", "next_attempt_at"),
        # calibration groups: a night's frames of one type on one instrument
        Index(
            "ix_raw_frames_group", "instrument_id", "dayobs", "obstype", "binning", "filter_name"
        ),
        # the worker's claim walks the claimable frames in claim order (oldest night, bias, dark,
        # flat, science, DATE-OBS) and stops at the first one whose gates pass, instead of
        # sorting every due frame on every claim
        Index(
            "ix_raw_frames_claim",
            "dayobs",
            "claim_rank",
            "dateobs",
            "id",
            postgresql_where=text(_CLAIMABLE_STATES_SQL),
            sqlite_where=text(_CLAIMABLE_STATES_SQL),
        ),
        # one exposure, one registered frame (its other copies are rejected)
        Index(
            "uq_raw_frames_exposure",
            "exposure_key",
            unique=True,
            postgresql_where=text(_REGISTERED_EXPOSURE_SQL),
            sqlite_where=text(_REGISTERED_EXPOSURE_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), unique=True, comment="absolute path")
    filename: Mapped[str] = mapped_column(Text, index=True)
    checksum: Mapped[str] = mapped_column(String(64), index=True, comment="sha256 of the file")
    file_size: Mapped[int] = mapped_column(Integer, comment="bytes")
    state: Mapped[FrameState] = mapped_column(_str_enum(FrameState, "frame_state"))
    obstype: Mapped[str | None] = mapped_column(String(16))
    instrument_id: Mapped[int | None] = mapped_column(ForeignKey("instruments.id"))
    dateobs: Mapped[dt.datetime | None] = mapped_column(DateTime, comment="DATE-OBS, UTC")
    dayobs: Mapped[dt.date | None] = mapped_column(Date, comment="DAY-OBS, observing night")
    exptime_s: Mapped[float | None] = mapped_column(Float)
    filter_name: Mapped[str | None] = mapped_column(Text)
    binning: Mapped[str | None] = mapped_column(String(8), comment="CCDSUM as '2x2'")
    readout_mode: Mapped[str | None] = mapped_column(Text, comment="CONFMODE")
    object_name: Mapped[str | None] = mapped_column(Text)
    exposure_key: Mapped[str | None] = mapped_column(
        Text, comment="site/camera/DAY-OBS/FRAMENUM, or sha256:<file>: one exposure, once"
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    product_path: Mapped[str | None] = mapped_column(String(1024))
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    calibration_cutoff: Mapped[dt.datetime | None] = mapped_column(
        DateTime, comment="use only masters observed at or before this (backfill)"
    )
    redo_reason: Mapped[str | None] = mapped_column(
        Text, comment="why the frame was re-queued: the reason of its next reduction"
    )
    quiet_until: Mapped[dt.datetime | None] = mapped_column(
        DateTime, comment="a ready calibration frame's group is in its quiet time until then"
    )
    # generated: STORED (PostgreSQL has no other kind before 18, and indexes no other kind);
    # on SQLite revision 0005 adds it VIRTUAL (ALTER TABLE cannot add a stored one), computed on
    # read and stored in the claim index
    claim_rank: Mapped[int | None] = mapped_column(
        Integer,
        Computed(CLAIM_RANK_SQL, persisted=True),
        comment="rank in the night's order: bias 0 .. science 3",
    )
    ingested_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    instrument: Mapped[Instrument | None] = relationship()


def current_master(table) -> ColumnElement[bool]:
    """A master that selection may choose today: not marked bad and not superseded (``table``:
    ``MasterCalibration``, its ``__table__`` or an alias of it)."""
    columns = getattr(table, "c", table)
    return and_(columns.is_bad == false(), columns.superseded_at.is_(None))


#: The predicate of ``uq_master_calibrations_current``: one current master per night and group
#: (bad-pixel masks excepted: a mask made elsewhere may be added to a night that has one).
_ONE_CURRENT_SQL = "NOT is_bad AND superseded_at IS NULL AND obstype <> 'BPM'"


class MasterCalibration(Base):
    """A master calibration file, immutable once registered: its file and the columns that
    describe its content never change. A rebuild of its group (late frames, the night's final
    build, a mark-bad cascade, a backfill) registers a new master, with the next ``version`` and
    a file name of its own, and marks this one ``superseded`` (``superseded_at``,
    ``superseded_by_id``). What may change later is its standing: superseded, marked bad
    (``is_bad``, ``bad_at``), or promoted from provisional to final (``calibration_status``,
    ``finalized_at``), each with its time, so the registry can be read as it was at any time
    (:func:`pylcogt.calibrations.select.select_master` with ``as_of``).

    ``dateobs`` is its effective time: the mean DATE-OBS of its inputs. Lookups: bias, dark and
    mask closest in ``dateobs`` (``ix_master_calibrations_lookup``), flats by night, the latest
    night at or before the frame's (``ix_master_calibrations_nights``). ``inputs_digest``
    identifies what it was made from (the sha256 of its candidate frames, their content and the
    masters each was prepared with; for a mask, its source masters): a rebuild that would make
    the same master registers nothing.
    """

    __tablename__ = "master_calibrations"
    __table_args__ = (
        CheckConstraint("n_inputs >= 0", name="n_inputs_nonnegative"),
        CheckConstraint("version >= 1", name="version_positive"),
        Index(
            "ix_master_calibrations_lookup",
            "instrument_id",
            "obstype",
            "binning",
            "readout_mode",
            "filter_name",
            "dateobs",
        ),
        Index(
            "ix_master_calibrations_nights",
            "instrument_id",
            "obstype",
            "binning",
            "readout_mode",
            "filter_name",
            "dayobs",
            "dateobs",
        ),
        Index(None, "dayobs"),
        # a night's masters of one mode: the claim's bad-pixel-mask gate probes it per frame
        Index("ix_master_calibrations_night", "instrument_id", "dayobs", "binning", "readout_mode"),
        # one current master per night and group: two workers racing to build it cannot both win
        Index(
            "uq_master_calibrations_current",
            "instrument_id",
            "obstype",
            "binning",
            "readout_mode",
            "filter_name",
            "dayobs",
            unique=True,
            postgresql_where=text(_ONE_CURRENT_SQL),
            sqlite_where=text(_ONE_CURRENT_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    obstype: Mapped[CalibrationType] = mapped_column(_str_enum(CalibrationType, "calibration_type"))
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.id"))
    binning: Mapped[str] = mapped_column(String(8))
    readout_mode: Mapped[str] = mapped_column(Text, default="")
    filter_name: Mapped[str] = mapped_column(Text, default="", comment="'' when n/a")
    dayobs: Mapped[dt.date] = mapped_column(Date)
    dateobs: Mapped[dt.datetime] = mapped_column(DateTime, comment="mean DATE-OBS of inputs, UTC")
    version: Mapped[int] = mapped_column(Integer, default=1, comment="1, 2.. within its group")
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    checksum: Mapped[str] = mapped_column(String(64))
    inputs_digest: Mapped[str | None] = mapped_column(
        String(64), comment="sha256 of what it was made from"
    )
    calibration_status: Mapped[CalibrationStatus] = mapped_column(
        _str_enum(CalibrationStatus, "calibration_status"), default=CalibrationStatus.FINAL
    )
    finalized_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime, comment="when it became final"
    )
    is_bad: Mapped[bool] = mapped_column(Boolean, default=False)
    bad_reason: Mapped[str | None] = mapped_column(Text, comment="why is_bad was set, and by what")
    bad_at: Mapped[dt.datetime | None] = mapped_column(DateTime, comment="when it was marked bad")
    superseded_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    superseded_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("master_calibrations.id", ondelete="SET NULL"),
        comment="the master that replaced it",
    )
    n_inputs: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    instrument: Mapped[Instrument] = relationship()
    inputs: Mapped[list[MasterInput]] = relationship(
        back_populates="master", cascade="all, delete-orphan", foreign_keys="MasterInput.master_id"
    )

    @property
    def is_current(self) -> bool:
        """Selection may choose it: neither marked bad nor superseded."""
        return not self.is_bad and self.superseded_at is None


class MasterInput(Base):
    """Provenance: raw frame ``frame_id`` (content ``frame_checksum``) went into master
    ``master_id``, prepared with masters ``bias_master_id`` and ``dark_master_id`` (a dark's
    bias; a flat's bias and dark; ``NULL`` where its chain needs none)."""

    __tablename__ = "master_inputs"

    master_id: Mapped[int] = mapped_column(
        ForeignKey("master_calibrations.id", ondelete="CASCADE"), primary_key=True
    )
    frame_id: Mapped[int] = mapped_column(
        ForeignKey("raw_frames.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    frame_checksum: Mapped[str | None] = mapped_column(
        String(64), comment="sha256 of the raw file when it was stacked"
    )
    bias_master_id: Mapped[int | None] = mapped_column(
        ForeignKey("master_calibrations.id"), index=True, comment="master bias it was prepared with"
    )
    dark_master_id: Mapped[int | None] = mapped_column(
        ForeignKey("master_calibrations.id"), index=True, comment="master dark it was prepared with"
    )

    master: Mapped[MasterCalibration] = relationship(
        back_populates="inputs", foreign_keys=[master_id]
    )
    frame: Mapped[RawFrame] = relationship()


class Reduction(Base):
    """One reduction of a science frame: when, by what pipeline version, its product (path and
    sha256) and the masters it used (:class:`ReductionMaster`). Every reduction of a frame is a
    row of its own and is never deleted: the newest is ``current``, earlier ones ``superseded``
    (``superseded_at``, and the reason of the reduction that replaced them). ``reason``: why this
    reduction was made (the first reduction, or why the frame was redone). ``kept_path``: where
    the product of a superseded reduction is kept, when products are retained
    (``PYLCOGT_KEEP_PRODUCTS``); otherwise its file was replaced by the next product.
    """

    __tablename__ = "reductions"
    __table_args__ = (
        Index(
            "uq_reductions_current",
            "frame_id",
            unique=True,
            postgresql_where=text("status = 'current'"),
            sqlite_where=text("status = 'current'"),
        ),
        Index("ix_reductions_frame", "frame_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("raw_frames.id", ondelete="CASCADE"))
    status: Mapped[ReductionStatus] = mapped_column(_str_enum(ReductionStatus, "reduction_status"))
    calibration_status: Mapped[CalibrationStatus] = mapped_column(
        _str_enum(CalibrationStatus, "calibration_status")
    )
    reason: Mapped[str] = mapped_column(Text, comment="why this reduction was made")
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finalized_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    kept_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime, comment="when a refresh last kept it provisional: re-reduction off"
    )
    pipeline_version: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(128), comment="lease owner, or the command")
    as_of: Mapped[dt.datetime | None] = mapped_column(DateTime, comment="reduce --as-of")
    product_path: Mapped[str] = mapped_column(String(1024))
    product_checksum: Mapped[str | None] = mapped_column(String(64), comment="sha256")
    kept_path: Mapped[str | None] = mapped_column(
        String(1024), comment="the product kept after it was superseded"
    )
    superseded_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    superseded_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("reductions.id", ondelete="SET NULL")
    )

    frame: Mapped[RawFrame] = relationship()
    masters: Mapped[list[ReductionMaster]] = relationship(
        back_populates="reduction", cascade="all, delete-orphan"
    )


class ReductionMaster(Base):
    """Provenance: master ``master_id``, whose file had sha256 ``master_checksum`` when it was
    read, was used as ``role`` in reduction ``reduction_id``."""

    __tablename__ = "reduction_masters"

    reduction_id: Mapped[int] = mapped_column(
        ForeignKey("reductions.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[CalibrationRole] = mapped_column(
        _str_enum(CalibrationRole, "calibration_role"), primary_key=True
    )
    master_id: Mapped[int] = mapped_column(ForeignKey("master_calibrations.id"), index=True)
    master_checksum: Mapped[str] = mapped_column(String(64))
    fallback_later: Mapped[bool] = mapped_column(Boolean, default=False)

    reduction: Mapped[Reduction] = relationship(back_populates="masters")
    master: Mapped[MasterCalibration] = relationship()


class NightClosure(Base):
    """An instrument's night declared over before its end (``pylcogt night close``): its
    calibration groups are then complete, and masters built from then on are final, as after
    the local noon that ends the night (:mod:`pylcogt.scheduling`)."""

    __tablename__ = "night_closures"

    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.id"), primary_key=True)
    dayobs: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    closed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text)


class MasterJobStatus(str, enum.Enum):
    """Outcome of the worker's last attempt to build a group's master."""

    PENDING = "pending"  # not tried yet, or the group changed since
    STALE = "stale"  # a master its inputs were prepared with was replaced: rebuild it now
    BUILT = "built"
    RETRY = "retry"  # a transient error: tried again after ``next_attempt_at``
    NOT_ENOUGH = "not_enough"  # too few usable frames while the night goes on
    FAILED = "failed"  # given up: see ``last_error``


class MasterJob(Base):
    """The worker's claim on building one calibration group's master, and its outcome.

    One row per group: instrument, night, type, binning, readout mode and (flats) filter, with
    ``filter_name`` ``''`` for types that do not depend on the filter, as in
    ``master_calibrations``. A worker takes the lease before building; ``lease_token`` is
    incremented on every claim and checked in the transaction that registers the master (a
    fencing token, as on ``raw_frames``), so a worker whose lease was taken over records nothing.
    """

    __tablename__ = "master_jobs"
    __table_args__ = (
        UniqueConstraint(
            "instrument_id",
            "dayobs",
            "obstype",
            "binning",
            "readout_mode",
            "filter_name",
            name="uq_master_jobs_group",
        ),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        # masters being built (a lease): the claim's gate asks for them on every claim; a
        # handful of rows, where the table keeps one per group ever built
        Index(
            "ix_master_jobs_leased",
            "instrument_id",
            "dayobs",
            "binning",
            "readout_mode",
            postgresql_where=text("lease_owner IS NOT NULL"),
            sqlite_where=text("lease_owner IS NOT NULL"),
        ),
        # groups due for a rebuild: the claim's gate asks for them on every claim too
        Index(
            "ix_master_jobs_stale",
            "instrument_id",
            "dayobs",
            "binning",
            "readout_mode",
            postgresql_where=text("status = 'stale'"),
            sqlite_where=text("status = 'stale'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.id"))
    dayobs: Mapped[dt.date] = mapped_column(Date)
    obstype: Mapped[CalibrationType] = mapped_column(_str_enum(CalibrationType, "calibration_type"))
    binning: Mapped[str] = mapped_column(String(8))
    readout_mode: Mapped[str] = mapped_column(Text, default="")
    filter_name: Mapped[str] = mapped_column(Text, default="", comment="'' when n/a")
    status: Mapped[MasterJobStatus] = mapped_column(
        _str_enum(MasterJobStatus, "master_job_status"), default=MasterJobStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0, comment="transient failures")
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    master_id: Mapped[int | None] = mapped_column(
        ForeignKey("master_calibrations.id", ondelete="SET NULL")
    )
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


# --- photometric reference catalogues (pylcogt refcat load) -------------------------------
#: reference band -> column suffix in ``reference_stars`` (``mag_<suffix>``, ``err_<suffix>``):
#: Pan-STARRS/SDSS ``u g r i z y`` (AB), Johnson ``B V`` and Cousins ``R I`` (Vega), lower-case
#: and distinct (``r`` is Sloan r, ``rc`` Cousins R)
REFERENCE_BAND_COLUMNS = {"u": "u", "g": "g", "r": "r", "i": "i", "z": "z", "y": "y",
                          "B": "bj", "V": "vj", "R": "rc", "I": "ic"}  # fmt: skip

__all__ += ["ReferenceCatalog", "ReferenceStar", "REFERENCE_BAND_COLUMNS"]


class ReferenceCatalog(Base):
    """A photometric reference catalogue loaded from a file by ``pylcogt refcat load``.

    ``checksum`` is the sha256 of the file and ``options`` the column mapping given when loading
    it (JSON): loading the same bytes with the same options again changes nothing; other bytes
    under the same ``name`` replace its stars. ``columns`` (JSON) says which file column gave
    each band; ``bands`` lists the bands present, comma-separated.
    """

    __tablename__ = "reference_catalogs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    source_path: Mapped[str] = mapped_column(String(1024), comment="file it was loaded from")
    checksum: Mapped[str] = mapped_column(String(64), comment="sha256 of the file")
    options: Mapped[str] = mapped_column(Text, default="{}", comment="column mapping given, JSON")
    columns: Mapped[str] = mapped_column(Text, default="{}", comment="columns used, JSON")
    bands: Mapped[str] = mapped_column(String(64), default="", comment="e.g. g,r,i,z,y")
    n_stars: Mapped[int] = mapped_column(Integer, default=0)
    loaded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ReferenceStar(Base):
    """A star of a reference catalogue: ICRS position (degrees, RA in [0, 360)) and, per band,
    magnitude and 1-sigma error (NULL: not measured); see :data:`REFERENCE_BAND_COLUMNS`.

    Cone searches select a declination band and RA range: ``ix_reference_stars_position`` on
    ``(dec, ra)`` answers them from the index.
    """

    __tablename__ = "reference_stars"
    __table_args__ = (Index("ix_reference_stars_position", "dec", "ra"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    catalog_id: Mapped[int] = mapped_column(
        ForeignKey("reference_catalogs.id", ondelete="CASCADE"), index=True
    )
    ra: Mapped[float] = mapped_column(Float, comment="degrees, ICRS")
    dec: Mapped[float] = mapped_column(Float, comment="degrees, ICRS")
    mag_u: Mapped[float | None] = mapped_column(Float)
    err_u: Mapped[float | None] = mapped_column(Float)
    mag_g: Mapped[float | None] = mapped_column(Float)
    err_g: Mapped[float | None] = mapped_column(Float)
    mag_r: Mapped[float | None] = mapped_column(Float)
    err_r: Mapped[float | None] = mapped_column(Float)
    mag_i: Mapped[float | None] = mapped_column(Float)
    err_i: Mapped[float | None] = mapped_column(Float)
    mag_z: Mapped[float | None] = mapped_column(Float)
    err_z: Mapped[float | None] = mapped_column(Float)
    mag_y: Mapped[float | None] = mapped_column(Float)
    err_y: Mapped[float | None] = mapped_column(Float)
    mag_bj: Mapped[float | None] = mapped_column(Float, comment="Johnson B")
    err_bj: Mapped[float | None] = mapped_column(Float)
    mag_vj: Mapped[float | None] = mapped_column(Float, comment="Johnson V")
    err_vj: Mapped[float | None] = mapped_column(Float)
    mag_rc: Mapped[float | None] = mapped_column(Float, comment="Cousins R")
    err_rc: Mapped[float | None] = mapped_column(Float)
    mag_ic: Mapped[float | None] = mapped_column(Float, comment="Cousins I")
    err_ic: Mapped[float | None] = mapped_column(Float)
