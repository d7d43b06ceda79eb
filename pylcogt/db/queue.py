"""The worker's queue: claims, leases, heartbeats and fenced records, on PostgreSQL and SQLite.

**Claiming a frame** is one statement, ``UPDATE raw_frames SET state = 'processing', lease... WHERE
id = (SELECT id ... ORDER BY night, type, time LIMIT 1 FOR UPDATE SKIP LOCKED) AND <claimable>
RETURNING ...``. On PostgreSQL the row lock makes concurrent claimers skip each other's candidate.
SQLAlchemy drops ``FOR UPDATE`` on SQLite: there the statement runs inside ``BEGIN IMMEDIATE``
(the write lock first), and the outer ``WHERE`` repeats the claimable condition, an atomic
compare-and-set. A claim increments ``lease_token``, the fencing token. The candidate is found by
walking ``ix_raw_frames_claim`` (claimable states only, in claim order: ``raw_frames.claim_rank``
is the type's rank) up to the first frame whose gates pass, not by sorting every due frame.

**Claimable**: ``pending`` and due (``next_attempt_at`` passed), or ``processing`` with an expired
lease (its worker died: the claim counts one more attempt). A science frame is claimable only
when its night's calibrations are resolved: no bias, dark or flat frame of the same instrument,
night, binning and readout mode is still ``pending``, ``processing`` or ``ready`` (a ``ready``
frame deferred to the end of its night, see :func:`finish_group`, does not hold science back;
one in its group's quiet time, ``quiet_until`` from :func:`record_ready`, holds back only frames
that already have a product: a frame without one is reduced at once with the best masters there
are, provisionally), no master of that night is being built (a live lease in ``master_jobs``) or
marked ``stale``, and its bad-pixel mask is not still to be derived. The order: oldest night
first, then bias, dark, flat, science, then DATE-OBS.

**Leases** last ``lease_s`` seconds and are renewed by a :class:`Heartbeat` thread. **Records**
are fenced: the transaction that records a result starts with ``UPDATE ... WHERE id = ? AND
lease_token = ? AND state = 'processing'`` (:func:`fence_frame`); no row means the lease was
taken over, :class:`LeaseLostError` is raised and nothing is recorded. That first ``UPDATE``
also locks the row (PostgreSQL) or the database (SQLite) until the result is committed.

**Masters** (calibration groups): :func:`group_statuses` finds groups with ``ready`` frames,
groups marked ``stale`` (a master their inputs were prepared with was replaced), groups whose
current master is provisional while their night is over (built once more: promoted, or a final
master), and nights whose bad-pixel mask is due (a current master dark or flat, no mask yet or
a stale one, the night's darks and flats resolved), and says which can be built now (every
frame of the group checked; the bias group resolved before darks, bias and darks before flats;
the night over or quiet for ``quiet_time_s``). :func:`claim_group` takes the group's lease in
``master_jobs`` (one row per group, created on first claim), fenced like frames
(:func:`fence_group`); the worker checks the group again once it holds the lease, so a group
built meanwhile is not built twice.

Times are naive UTC from the database server's clock on PostgreSQL (workers on several machines
agree on lease expiry) and from this machine's clock on SQLite (one machine by construction).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, and_, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Alias

from pylcogt.calibrations.build import GroupKey
from pylcogt.db.clock import db_now
from pylcogt.db.models import (
    CLAIMABLE_STATES,
    CalibrationStatus,
    CalibrationType,
    FrameState,
    Instrument,
    MasterCalibration,
    MasterJob,
    MasterJobStatus,
    RawFrame,
    Site,
    current_master,
    in_claimable_state,
    utcnow,
)
from pylcogt.db.session import SQLITE_BEGIN_IMMEDIATE
from pylcogt.errors import PylcogtError
from pylcogt.instruments import CALIBRATION_OBSTYPES, SCIENCE_OBSTYPES
from pylcogt.lifecycle import (
    FRAME_TRANSITIONS,
    FrameEvent,
    frame_transition,
    hold_marking_lock,
    target_values,
)
from pylcogt.nights import closed_at, night_info
from pylcogt.pipeline import NEEDED_MASTERS
from pylcogt.scheduling import OBSTYPE_RANK, PREREQUISITES, SCIENCE_RANK, group_is_complete
from pylcogt.scheduling import night_end as _night_end

__all__ = [
    "LeaseLostError",
    "FrameClaim",
    "GroupClaim",
    "GroupStatus",
    "Heartbeat",
    "db_now",
    "claim_frame",
    "fence_frame",
    "record_ready",
    "record_retry",
    "record_failed",
    "record_rejected",
    "wake_dependent_groups",
    "release_frame",
    "wake_waiting_frames",
    "group_statuses",
    "claim_group",
    "fence_group",
    "release_group",
    "finish_group",
    "group_status",
    "outstanding_work",
    "Outstanding",
    "frame_counts",
    "masters_count",
    "RECLAIMED",
]

log = logging.getLogger(__name__)

#: ``last_error`` of a frame claimed after its previous worker's lease expired starts with this.
RECLAIMED = "reclaimed: the lease of"

_P, _W, _R = FrameState.PENDING.value, FrameState.PROCESSING.value, FrameState.READY.value
_FRAMES = RawFrame.__table__
_JOBS = MasterJob.__table__


class LeaseLostError(PylcogtError):
    """The lease was taken over by another worker (or the frame was reset): nothing recorded."""


@dataclass(frozen=True)
class FrameClaim:
    """A claimed frame: record its result with ``token`` (the fencing token)."""

    frame_id: int
    token: int
    owner: str
    filename: str
    path: str
    obstype: str
    attempts: int
    reclaimed: bool = False
    instrument_id: int | None = None
    dayobs: dt.date | None = None
    binning: str | None = None
    readout_mode: str | None = None
    filter_name: str | None = None

    @property
    def group(self) -> GroupKey:
        """The calibration group this (calibration) frame belongs to."""
        filter_name = _group_filter(self.obstype, self.filter_name)
        return GroupKey(self.instrument_id, self.dayobs, self.obstype, self.binning or "",
                        self.readout_mode or "", filter_name)  # fmt: skip


@dataclass(frozen=True)
class GroupClaim:
    """A claimed calibration group (a ``master_jobs`` row) and its fencing token."""

    job_id: int
    token: int
    owner: str
    key: GroupKey
    attempts: int


@dataclass(frozen=True)
class GroupStatus:
    """A calibration group with ``ready`` frames; ``buildable`` now, or ``reason`` why not."""

    key: GroupKey
    longitude_deg: float | None
    buildable: bool
    reason: str = ""
    # True when only time (quiet time) holds it back: `--until-idle` does not wait for it
    deferred: bool = False

    @property
    def night_end(self) -> dt.datetime:
        return _night_end(self.key.dayobs, self.longitude_deg)


# --- time ---------------------------------------------------------------------------------
def _seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=float(value))


# --- claiming frames ----------------------------------------------------------------------
def _rank(table) -> sa.ColumnElement:
    """OBSTYPE_RANK of the frame: the generated column, as ``ix_raw_frames_claim`` orders it."""
    return table.c.claim_rank


def _undeferred_ready(table, now) -> sa.ColumnElement:
    return and_(
        table.c.state == _R,
        or_(table.c.next_attempt_at.is_(None), table.c.next_attempt_at <= now),
    )


def _unresolved_calibrations(frame, now, obstypes: Sequence[str]) -> sa.Exists:
    """Frames of these calibration types of ``frame``'s night and mode are still to be stacked:
    being checked, or ready. A group in its quiet time (``quiet_until``, see
    :func:`record_ready`) holds back only frames that already have a product (a provisional
    one, to be redone once tonight's masters settle: no hurry, and one redo instead of one per
    master); a frame without one is reduced at once with the best masters there are."""
    cal = _FRAMES.alias("cal")
    return exists().where(
        cal.c.instrument_id == frame.c.instrument_id,
        cal.c.dayobs == frame.c.dayobs,
        cal.c.obstype.in_(list(obstypes)),
        cal.c.binning == frame.c.binning,
        cal.c.readout_mode == frame.c.readout_mode,
        or_(
            cal.c.state.in_([_P, _W]),
            and_(_undeferred_ready(cal, now),
                 or_(cal.c.quiet_until.is_(None), cal.c.quiet_until <= now,
                     frame.c.product_path.is_not(None))),
        ),
    )  # fmt: skip


def _masters_being_built(frame, now) -> sa.Exists:
    """A master of ``frame``'s night and mode is being built (a live lease in master_jobs):
    probes ``ix_master_jobs_leased``."""
    job = _JOBS.alias("job")
    return exists().where(
        job.c.instrument_id == frame.c.instrument_id,
        job.c.dayobs == frame.c.dayobs,
        job.c.binning == frame.c.binning,
        job.c.readout_mode == frame.c.readout_mode,
        job.c.lease_owner.is_not(None),
        job.c.lease_expires_at > now,
    )


def _masters_to_rebuild(frame) -> sa.Exists:
    """A master of ``frame``'s night and mode is due for a rebuild (``stale``: a master its
    inputs were prepared with was replaced): probes ``ix_master_jobs_stale`` (a separate anti-
    join: under an ``OR`` with the lease, PostgreSQL scanned every job ever built)."""
    job = _JOBS.alias("stale_job")
    return exists().where(
        job.c.instrument_id == frame.c.instrument_id,
        job.c.dayobs == frame.c.dayobs,
        job.c.binning == frame.c.binning,
        job.c.readout_mode == frame.c.readout_mode,
        job.c.status == MasterJobStatus.STALE.value,
    )


def _claimable(frame, now) -> sa.ColumnElement:
    due = or_(
        and_(
            frame.c.state == _P,
            or_(frame.c.next_attempt_at.is_(None), frame.c.next_attempt_at <= now),
        ),
        and_(
            frame.c.state == _W,
            or_(frame.c.lease_expires_at.is_(None), frame.c.lease_expires_at < now),
        ),
    )
    m = MasterCalibration.__table__.alias("night_master")
    bpm_due = exists().where(
        *_bpm_due(m, instrument_id=frame.c.instrument_id, dayobs=frame.c.dayobs,
                  binning=frame.c.binning, readout_mode=frame.c.readout_mode)
    )  # fmt: skip
    # The science gate, "a calibration frame, or none of these holds", written as four NOT
    # EXISTS whose subqueries ask for a science frame: the same (a claimable frame has an
    # OBSTYPE, CHECK readable_unless_rejected), but PostgreSQL makes anti-joins of them, probed
    # for the few frames the claim walks, where under an OR it hashed every unresolved frame
    # and master job on every claim.
    science = frame.c.obstype.not_in(CALIBRATION_OBSTYPES)
    gates = (
        _unresolved_calibrations(frame, now, CALIBRATION_OBSTYPES),
        _masters_being_built(frame, now),
        _masters_to_rebuild(frame),
        bpm_due,
    )
    # in_claimable_state: implied by `due`, written as the claim index's predicate
    return and_(in_claimable_state(frame.c.state), due, *[~gate.where(science) for gate in gates])


class _ClaimCandidates(Alias):
    """``raw_frames AS candidate``, which SQLite reads ``INDEXED BY ix_raw_frames_claim`` in the
    claim's candidate query (the one that locks it, ``FOR UPDATE``).

    The claim walks that index in claim order and stops at the first claimable frame. SQLite's
    planner does not count on the walk stopping early (``LIMIT 1``): it prefers to sort every
    frame ``ix_raw_frames_poll`` finds in a claimable state. PostgreSQL chooses the index itself.
    A subquery that lists the alias in its own FROM reads it plainly.
    """

    inherit_cache = True


@compiles(_ClaimCandidates, "sqlite")
def _sqlite_claim_candidates(element, compiler, **kw) -> str:
    text = compiler.visit_alias(element, **kw)
    query = compiler.stack[-1]["selectable"] if compiler.stack else None
    locking = getattr(query, "_for_update_arg", None) is not None
    if locking and kw.get("asfrom") and not kw.get("ashint"):
        text += " INDEXED BY ix_raw_frames_claim"
    return text


@functools.cache
def _claim_update() -> sa.Update:
    """The claim statement, built once per process (building it took longer than running it),
    with the parameters ``now``, ``owner`` and ``expires`` (see :func:`_claim_statement`)."""
    now = sa.bindparam("now", type_=sa.DateTime)
    cand = _ClaimCandidates._construct(_FRAMES, name="candidate")
    candidate = (
        select(cand.c.id)
        .where(_claimable(cand, now))
        .order_by(cand.c.dayobs, _rank(cand), cand.c.dateobs, cand.c.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=cand)
        .scalar_subquery()
    )
    f = _FRAMES
    reclaiming = f.c.state == _W
    claimed = FRAME_TRANSITIONS[FrameEvent.CLAIMED]
    assert {s.value for s in claimed.sources} == set(CLAIMABLE_STATES)  # the index predicate
    return (
        update(f)
        .where(f.c.id == candidate, _claimable(f, now))
        .values(
            **target_values(FrameEvent.CLAIMED),
            lease_owner=sa.bindparam("owner", type_=sa.String),
            lease_expires_at=sa.bindparam("expires", type_=sa.DateTime),
            lease_token=f.c.lease_token + 1,
            attempts=sa.case((reclaiming, f.c.attempts + 1), else_=f.c.attempts),
            last_error=sa.case(
                (
                    reclaiming,
                    sa.literal(RECLAIMED + " ")
                    + sa.func.coalesce(f.c.lease_owner, "?")
                    + sa.literal(" expired"),
                ),
                else_=f.c.last_error,
            ),
            updated_at=now,
        )
        .returning(
            f.c.id,
            f.c.lease_token,
            f.c.filename,
            f.c.path,
            f.c.obstype,
            f.c.attempts,
            f.c.last_error,
            f.c.instrument_id,
            f.c.dayobs,
            f.c.binning,
            f.c.readout_mode,
            f.c.filter_name,
        )  # fmt: skip
    )


def _claim_statement(now: dt.datetime, owner: str, lease_s: float) -> tuple[sa.Update, dict]:
    """The claim statement and its parameters: claim for ``owner``, lease until ``now`` +
    ``lease_s``."""
    return _claim_update(), {"now": now, "owner": owner, "expires": now + _seconds(lease_s)}


def _write_connection(engine: Engine) -> Connection:
    return engine.connect().execution_options(**SQLITE_BEGIN_IMMEDIATE)


def claim_frame(engine: Engine, owner: str, *, lease_s: float) -> FrameClaim | None:
    """Claim the next frame to process (see module doc), or ``None`` when none is claimable."""
    with _write_connection(engine) as conn, conn.begin():
        now = db_now(conn)
        statement, params = _claim_statement(now, owner, lease_s)
        row = conn.execute(statement, params).first()
    if row is None:
        return None
    reclaimed = bool(row.last_error and row.last_error.startswith(RECLAIMED))
    return FrameClaim(frame_id=row.id, token=row.lease_token, owner=owner, filename=row.filename,
                      path=row.path, obstype=row.obstype or "", attempts=row.attempts,
                      reclaimed=reclaimed, instrument_id=row.instrument_id, dayobs=row.dayobs,
                      binning=row.binning, readout_mode=row.readout_mode,
                      filter_name=row.filter_name)  # fmt: skip


# --- recording frame results --------------------------------------------------------------
def _fenced(frame_id: int, token: int) -> sa.ColumnElement:
    f = _FRAMES
    return and_(f.c.id == frame_id, f.c.lease_token == token, f.c.state == _W)


def fence_frame(session: Session, frame_id: int, token: int) -> None:
    """Start the transaction that records frame ``frame_id``'s result, under lease ``token``.

    Ends the session's current (read) transaction, then releases the lease in a new one that
    stays open: the caller records its result in the same transaction and commits. Raises
    :class:`LeaseLostError` (nothing changed) when the lease is no longer ``token``'s.

    The read transaction is ended first because SQLite cannot turn an old read snapshot into a
    write once another process has written (``SQLITE_BUSY`` without waiting): a transaction
    whose first statement writes waits for the lock instead.
    """
    session.commit()
    hold_marking_lock(session, shared=True)  # mark-bad either before this or after the commit
    result = session.execute(
        update(RawFrame)
        .where(RawFrame.id == frame_id, RawFrame.lease_token == token,
               RawFrame.state == FrameState.PROCESSING)
        .values(lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    if result.rowcount != 1:
        session.rollback()
        msg = f"frame {frame_id}: lease {token} was taken over; its result is discarded"
        raise LeaseLostError(msg)


def _record(
    engine: Engine, claim: FrameClaim, frame_event: FrameEvent, values: dict, *, also=()
) -> None:
    """The event's fenced transition of the claimed frame (lease released), with ``also``
    statements (functions of ``(conn, now)``).

    ``also`` (a ``master_jobs`` update) runs first: rows are locked jobs before frames, the
    order of a master build's transaction, so the two cannot deadlock on PostgreSQL. A lost
    lease rolls everything back.
    """
    values = {"lease_owner": None, "lease_expires_at": None, **values}
    with engine.begin() as conn:
        now = db_now(conn)
        for statement in also:
            statement(conn, now)
        result = conn.execute(
            frame_transition(frame_event, _fenced(claim.frame_id, claim.token),
                             updated_at=now, **values)
        )  # fmt: skip
        if result.rowcount != 1:
            msg = f"{claim.filename}: lease {claim.token} was taken over; its result is discarded"
            raise LeaseLostError(msg)


def record_ready(
    engine: Engine, claim: FrameClaim, *, group: GroupKey, quiet_time_s: float = 0.0
) -> None:
    """A checked calibration frame waits for its master; its group changed (job reset).

    While its night goes on, the group's ready frames are in their quiet time until
    ``quiet_time_s`` after this one (``quiet_until``, at most the end of the night): until then
    they do not hold the night's science frames back (those are reduced at once with the best
    masters there are, provisionally); once it is over, the master is about to be built, and
    they do.
    """

    def reset_job(conn, _now) -> None:
        conn.execute(
            update(_JOBS)
            .where(*_job_key_clause(group))
            .values(
                status=MasterJobStatus.PENDING.value,
                attempts=0,
                next_attempt_at=None,
                last_error=None,
            )  # fmt: skip
        )

    def quiet(conn, now) -> None:
        info = night_info(conn, group.instrument_id, group.dayobs)
        until = None
        if quiet_time_s > 0 and not info.over(now):
            until = min(now + _seconds(quiet_time_s), info.closed_at or info.ends_at)
        f = _FRAMES
        conn.execute(
            update(f).where(*_group_frames_clause(f, group), f.c.state == _R)
            .values(quiet_until=until)
        )  # fmt: skip
        conn.execute(update(f).where(f.c.id == claim.frame_id).values(quiet_until=until))

    _record(engine, claim, FrameEvent.CHECKED, {"last_error": None, "next_attempt_at": None},
            also=[reset_job, quiet])  # fmt: skip


def record_retry(
    engine: Engine, claim: FrameClaim, error: str, *, delay_s: float, max_attempts: int
) -> str:
    """A transient failure: back to ``pending`` after ``delay_s``, or ``failed`` once the frame
    has had ``max_attempts`` attempts. Returns the state recorded."""
    attempts = _FRAMES.c.attempts + 1
    with engine.connect() as conn:
        now = db_now(conn)
    give_up = claim.attempts + 1 >= max_attempts
    values = {
        "attempts": attempts,
        "last_error": error,
        "next_attempt_at": None if give_up else now + _seconds(delay_s),
    }
    frame_event = FrameEvent.FAILED if give_up else FrameEvent.RETRIED
    _record(engine, claim, frame_event, values)
    return FRAME_TRANSITIONS[frame_event].target.value


def record_failed(engine: Engine, claim: FrameClaim, error: str) -> None:
    """Failed for good (bad data, a bug, too many attempts), with the reason or traceback."""
    values = {"attempts": _FRAMES.c.attempts + 1, "last_error": error, "next_attempt_at": None}
    _record(engine, claim, FrameEvent.FAILED, values)


def record_rejected(engine: Engine, claim: FrameClaim, reason: str) -> None:
    """A calibration frame that failed its check (no master can use it): ``rejected`` for good,
    out of its group, with the reason (the measured level and the limit)."""
    values = {"attempts": _FRAMES.c.attempts + 1, "last_error": reason, "next_attempt_at": None}
    _record(engine, claim, FrameEvent.SCREENED_OUT, values)


def release_frame(engine: Engine, claim: FrameClaim) -> None:
    """Give the frame back (shutdown): ``pending`` again, no attempt counted."""
    _record(engine, claim, FrameEvent.RELEASED, {})


def wake_waiting_frames(engine: Engine) -> int:
    """Set ``pending`` every frame waiting for a calibration whose masters now all exist.

    A frame waits when a master type its chain needs had no good master matching its
    instrument, binning, readout mode (and filter, for flats); it is woken once every needed
    type has one (whoever registered it: a worker, ``pylcogt stack``, ``mark-good``), never
    before, so a frame is not retried in vain. A frame with a ``calibration_cutoff`` (backfill)
    counts only masters observed at or before it, as its reduction selects them. Returns how
    many frames were woken.
    """
    f = _FRAMES
    conditions = []
    for obstype, needed in NEEDED_MASTERS.items():
        if obstype not in SCIENCE_OBSTYPES:
            continue
        masters = [_master_exists(f, t) for t in needed]
        conditions.append(and_(f.c.obstype == obstype, *masters))
    statement = frame_transition(FrameEvent.WOKEN, or_(*conditions), next_attempt_at=None)
    with engine.begin() as conn:
        woken = conn.execute(statement).rowcount
    if woken:
        log.info("woke %d frame(s) waiting for calibrations that now exist", woken)
    return woken


def _master_exists(frame, obstype: str) -> sa.Exists:
    m = MasterCalibration.__table__
    filter_name = sa.func.coalesce(frame.c.filter_name, "") if obstype == "SKYFLAT" else ""
    return exists().where(
        m.c.instrument_id == frame.c.instrument_id,
        m.c.obstype == obstype,
        m.c.binning == frame.c.binning,
        m.c.readout_mode == sa.func.coalesce(frame.c.readout_mode, ""),
        m.c.filter_name == filter_name,
        current_master(m),
        or_(frame.c.calibration_cutoff.is_(None), m.c.dateobs <= frame.c.calibration_cutoff),
    )


# --- calibration groups -------------------------------------------------------------------
def _group_filter(obstype: str, filter_name: str | None) -> str:
    return (filter_name or "") if obstype == "SKYFLAT" else ""


def _job_key_clause(key: GroupKey) -> list[sa.ColumnElement]:
    j = _JOBS
    return [
        j.c.instrument_id == key.instrument_id,
        j.c.dayobs == key.dayobs,
        j.c.obstype == key.obstype,
        j.c.binning == key.binning,
        j.c.readout_mode == key.readout_mode,
        j.c.filter_name == _group_filter(key.obstype, key.filter_name),
    ]


def _group_frames_clause(frame, key: GroupKey) -> list[sa.ColumnElement]:
    """Frames of ``key``'s group, as :func:`pylcogt.calibrations.build.group_frames` takes them."""
    clause = [
        frame.c.instrument_id == key.instrument_id,
        frame.c.dayobs == key.dayobs,
        frame.c.obstype == key.obstype,
        frame.c.binning == key.binning,
        frame.c.readout_mode == key.readout_mode,
    ]
    if key.obstype == "SKYFLAT":
        clause.append(frame.c.filter_name == key.filter_name)
    return clause


def _mode_clause(frame, key: GroupKey, obstypes: Iterable[str]) -> list[sa.ColumnElement]:
    return [
        frame.c.instrument_id == key.instrument_id,
        frame.c.dayobs == key.dayobs,
        frame.c.obstype.in_(list(obstypes)),
        frame.c.binning == key.binning,
        frame.c.readout_mode == key.readout_mode,
    ]


def _group_rank(obstype: str) -> int:
    return OBSTYPE_RANK.get(obstype, SCIENCE_RANK)  # BPM: after the flats it is derived from


def _bpm_due(m_like, *, instrument_id, dayobs, binning, readout_mode) -> list[sa.ColumnElement]:
    """Conditions (on master table ``m_like``, correlated to the given columns) for a night
    whose bad-pixel mask is still to be derived: it has a current master dark or flat, and
    either no mask and no BPM job that was built or given up, or a BPM job marked ``stale`` (a
    dark or flat it was derived from was replaced). The inner subqueries correlate to whatever
    encloses them (the night's master and the candidate frame two levels up): left to
    auto-correlation they would not reach the frame, and would ask whether any night anywhere
    lacks a mask."""
    bpm = MasterCalibration.__table__.alias("bpm")
    job = _JOBS.alias("bpm_job")
    stale = _JOBS.alias("bpm_stale")

    def job_is(table, statuses: list[str]) -> sa.Exists:
        return (
            exists()
            .where(
                table.c.instrument_id == instrument_id,
                table.c.dayobs == dayobs,
                table.c.obstype == CalibrationType.BPM.value,
                table.c.binning == binning,
                table.c.readout_mode == readout_mode,
                table.c.status.in_(statuses),
            )
            .correlate_except(table)
        )

    no_mask = ~exists().where(
        bpm.c.instrument_id == instrument_id,
        bpm.c.dayobs == dayobs,
        bpm.c.binning == binning,
        bpm.c.readout_mode == readout_mode,
        bpm.c.obstype == CalibrationType.BPM.value,
        current_master(bpm),
    ).correlate_except(bpm)
    done = job_is(job, [MasterJobStatus.BUILT.value, MasterJobStatus.FAILED.value])
    return [
        m_like.c.instrument_id == instrument_id,
        m_like.c.dayobs == dayobs,
        m_like.c.binning == binning,
        m_like.c.readout_mode == readout_mode,
        m_like.c.obstype.in_([CalibrationType.DARK.value, CalibrationType.SKYFLAT.value]),
        current_master(m_like),
        or_(and_(no_mask, ~done), job_is(stale, [MasterJobStatus.STALE.value])),
    ]


def _bpm_candidates(conn: Connection) -> list[tuple[GroupKey, float | None]]:
    """Nights (instrument, binning, readout mode) whose bad-pixel mask is due."""
    m = MasterCalibration.__table__.alias("m")
    query = (
        select(m.c.instrument_id, m.c.dayobs, m.c.binning, m.c.readout_mode, Site.longitude_deg)
        .join(Instrument, Instrument.id == m.c.instrument_id)
        .join(Site, Site.id == Instrument.site_id)
        .where(*_bpm_due(m, instrument_id=m.c.instrument_id, dayobs=m.c.dayobs,
                         binning=m.c.binning, readout_mode=m.c.readout_mode))
        .distinct()
    )  # fmt: skip
    return [
        (GroupKey(r.instrument_id, r.dayobs, "BPM", r.binning, r.readout_mode), r.longitude_deg)
        for r in conn.execute(query)
    ]


def _stale_candidates(conn: Connection) -> list[tuple[GroupKey, float | None]]:
    """Bias, dark and flat groups marked ``stale``: a master their inputs were prepared with
    was replaced, so they are rebuilt now (bad-pixel masks: :func:`_bpm_candidates`)."""
    j = _JOBS
    rows = conn.execute(
        select(j.c.instrument_id, j.c.dayobs, j.c.obstype, j.c.binning, j.c.readout_mode,
               j.c.filter_name, Site.longitude_deg)
        .join(Instrument, Instrument.id == j.c.instrument_id)
        .join(Site, Site.id == Instrument.site_id)
        .where(j.c.status == MasterJobStatus.STALE.value, j.c.obstype != CalibrationType.BPM.value)
    ).all()  # fmt: skip
    return [(GroupKey(r.instrument_id, r.dayobs, r.obstype, r.binning, r.readout_mode,
                      r.filter_name), r.longitude_deg) for r in rows]  # fmt: skip


def _finalize_candidates(conn: Connection, now: dt.datetime) -> list[tuple[GroupKey, float | None]]:
    """Groups whose current master is provisional while their night is over: built once more,
    which promotes the master to final when its group did not change (nothing is redone), or
    registers a final master from the group as it is now. Groups whose last build was given up
    are left as they are."""
    m, j = MasterCalibration.__table__, _JOBS
    given_up = exists().where(
        j.c.instrument_id == m.c.instrument_id, j.c.dayobs == m.c.dayobs,
        j.c.obstype == m.c.obstype, j.c.binning == m.c.binning,
        j.c.readout_mode == m.c.readout_mode, j.c.filter_name == m.c.filter_name,
        j.c.status.in_([MasterJobStatus.FAILED.value, MasterJobStatus.NOT_ENOUGH.value]),
    )  # fmt: skip
    rows = conn.execute(
        select(m.c.instrument_id, m.c.dayobs, m.c.obstype, m.c.binning, m.c.readout_mode,
               m.c.filter_name, Site.longitude_deg)
        .join(Instrument, Instrument.id == m.c.instrument_id)
        .join(Site, Site.id == Instrument.site_id)
        .where(m.c.calibration_status == CalibrationStatus.PROVISIONAL.value, current_master(m),
               ~given_up)
        .distinct()
    ).all()  # fmt: skip
    out = []
    for r in rows:
        if night_info(conn, r.instrument_id, r.dayobs).over(now):
            key = GroupKey(r.instrument_id, r.dayobs, r.obstype, r.binning, r.readout_mode,
                           r.filter_name)  # fmt: skip
            out.append((key, r.longitude_deg))
    return out


def _candidate_groups(conn: Connection, now: dt.datetime) -> list[tuple[GroupKey, float | None]]:
    f = _FRAMES
    filter_expr = sa.case(
        (f.c.obstype == "SKYFLAT", sa.func.coalesce(f.c.filter_name, "")), else_=""
    )
    query = (
        select(f.c.instrument_id, f.c.dayobs, f.c.obstype, f.c.binning,
               sa.func.coalesce(f.c.readout_mode, "").label("mode"), filter_expr.label("filt"),
               Site.longitude_deg)
        .join(Instrument, Instrument.id == f.c.instrument_id)
        .join(Site, Site.id == Instrument.site_id)
        .where(_undeferred_ready(f, now), f.c.obstype.in_(CALIBRATION_OBSTYPES))
        .group_by(f.c.instrument_id, f.c.dayobs, f.c.obstype, f.c.binning, "mode", "filt",
                  Site.longitude_deg)
    )  # fmt: skip
    rows = conn.execute(query).all()
    keyed = {
        GroupKey(r.instrument_id, r.dayobs, r.obstype, r.binning, r.mode, r.filt): r.longitude_deg
        for r in rows
    }
    for key, lon in (*_stale_candidates(conn), *_bpm_candidates(conn),
                     *_finalize_candidates(conn, now)):  # fmt: skip
        keyed.setdefault(key, lon)
    return sorted(keyed.items(), key=lambda kv: (
        kv[0].dayobs, _group_rank(kv[0].obstype), kv[0].instrument_id, kv[0].binning,
        kv[0].readout_mode, kv[0].filter_name))  # fmt: skip


def _group_status(
    conn: Connection,
    key: GroupKey,
    lon: float | None,
    now: dt.datetime,
    quiet_time_s: float,
    holder: GroupClaim | None = None,
) -> GroupStatus:
    if key.obstype == CalibrationType.BPM.value:
        return _bpm_status(conn, key, lon, now, holder)
    f = _FRAMES
    busy = conn.execute(
        select(sa.func.count())
        .select_from(f)
        .where(*_group_frames_clause(f, key), f.c.state.in_([_P, _W]))
    ).scalar_one()
    if busy:
        return GroupStatus(key, lon, False, f"{busy} frame(s) still to be checked")
    prerequisites = PREREQUISITES[key.obstype]
    if prerequisites:
        cal = _FRAMES.alias("cal")
        waiting = conn.execute(
            select(sa.func.count())
            .select_from(cal)
            .where(
                *_mode_clause(cal, key, prerequisites),
                or_(cal.c.state.in_([_P, _W]), _undeferred_ready(cal, now)),
            )
        ).scalar_one()
        if waiting:
            return GroupStatus(
                key, lon, False, f"{'/'.join(prerequisites)} frames of the night come first"
            )
        j = _JOBS
        building = conn.execute(
            select(sa.func.count())
            .select_from(j)
            .where(
                j.c.instrument_id == key.instrument_id,
                j.c.dayobs == key.dayobs,
                j.c.obstype.in_(list(prerequisites)),
                j.c.binning == key.binning,
                j.c.readout_mode == key.readout_mode,
                or_(and_(j.c.lease_owner.is_not(None), j.c.lease_expires_at > now),
                    j.c.status == MasterJobStatus.STALE.value),
            )
        ).scalar_one()  # fmt: skip
        if building:
            return GroupStatus(key, lon, False, "a master it needs is being built")
    job = conn.execute(select(_JOBS).where(*_job_key_clause(key))).first()
    if job is not None and not (holder is not None and holder.job_id == job.id):
        if job.lease_owner is not None and job.lease_expires_at > now:
            return GroupStatus(key, lon, False, f"being built by {job.lease_owner}")
        if job.next_attempt_at is not None and job.next_attempt_at > now:
            return GroupStatus(key, lon, False, f"retry after {job.next_attempt_at:%H:%M:%S}")
    last = conn.execute(
        select(sa.func.max(f.c.ingested_at)).where(
            *_group_frames_clause(f, key), f.c.state != FrameState.REJECTED.value
        )
    ).scalar_one()
    complete = group_is_complete(dayobs=key.dayobs, longitude_deg=lon,
                                 last_ingested_at=last or now, now=now,
                                 quiet_time_s=quiet_time_s,
                                 closed_at=closed_at(conn, key.instrument_id,
                                                     key.dayobs))  # fmt: skip
    if not complete:
        ready_at = last + _seconds(quiet_time_s) if last else now
        reason = f"night not over; quiet until {ready_at:%Y-%m-%d %H:%M:%S} UTC"
        return GroupStatus(key, lon, False, reason, deferred=True)
    return GroupStatus(key, lon, True)


def _bpm_status(
    conn: Connection, key: GroupKey, lon: float | None, now: dt.datetime, holder
) -> GroupStatus:
    cal = _FRAMES.alias("cal")
    sources = ("DARK", "SKYFLAT")
    waiting = conn.execute(
        select(sa.func.count())
        .select_from(cal)
        .where(*_mode_clause(cal, key, sources),
               or_(cal.c.state.in_([_P, _W]), _undeferred_ready(cal, now)))
    ).scalar_one()  # fmt: skip
    if waiting:
        return GroupStatus(key, lon, False, "the night's darks and flats come first")
    j = _JOBS
    jobs = conn.execute(
        select(j.c.id, j.c.obstype, j.c.lease_owner).where(
            j.c.instrument_id == key.instrument_id,
            j.c.dayobs == key.dayobs,
            j.c.obstype.in_([*sources, "BPM"]),
            j.c.binning == key.binning,
            j.c.readout_mode == key.readout_mode,
            j.c.lease_owner.is_not(None),
            j.c.lease_expires_at > now,
        )
    ).all()
    for job in jobs:
        if holder is None or job.id != holder.job_id:
            return GroupStatus(key, lon, False, f"a {job.obstype} master is being built")
    return GroupStatus(key, lon, True)


def group_statuses(engine: Engine, *, quiet_time_s: float) -> list[GroupStatus]:
    """Every calibration group with ``ready`` frames (not deferred), oldest night and bias
    first, each with whether its master can be built now."""
    with engine.connect() as conn:
        now = db_now(conn)
        return [
            _group_status(conn, key, lon, now, quiet_time_s)
            for key, lon in _candidate_groups(conn, now)
        ]


def group_status(
    engine: Engine, key: GroupKey, *, quiet_time_s: float, holder: GroupClaim | None = None
) -> GroupStatus | None:
    """:func:`group_statuses` for one group (``None``: it has no undeferred ``ready`` frame);
    ``holder``: our claim on it, whose lease does not count as someone else building it."""
    with engine.connect() as conn:
        now = db_now(conn)
        for candidate, lon in _candidate_groups(conn, now):
            if candidate == key:
                return _group_status(conn, key, lon, now, quiet_time_s, holder)
    return None


def claim_group(engine: Engine, key: GroupKey, owner: str, *, lease_s: float) -> GroupClaim | None:
    """Take the lease on building ``key``'s master (its ``master_jobs`` row, created on first
    claim); ``None`` when another worker holds it."""
    values = {
        "instrument_id": key.instrument_id,
        "dayobs": key.dayobs,
        "obstype": key.obstype,
        "binning": key.binning,
        "readout_mode": key.readout_mode,
        "filter_name": _group_filter(key.obstype, key.filter_name),
        "status": MasterJobStatus.PENDING.value,
        "attempts": 0,
        "lease_token": 0,
    }
    with _write_connection(engine) as conn, conn.begin():
        now = db_now(conn)
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(
            insert(_JOBS)
            .values(updated_at=now, **values)
            .on_conflict_do_nothing(index_elements=list(values)[:6])
        )
        j = _JOBS
        row = conn.execute(
            update(j)
            .where(*_job_key_clause(key),
                   or_(j.c.lease_owner.is_(None), j.c.lease_expires_at < now))
            .values(lease_owner=owner, lease_expires_at=now + _seconds(lease_s),
                    lease_token=j.c.lease_token + 1, updated_at=now)
            .returning(j.c.id, j.c.lease_token, j.c.attempts)
        ).first()  # fmt: skip
    if row is None:
        return None
    return GroupClaim(job_id=row.id, token=row.lease_token, owner=owner, key=key,
                      attempts=row.attempts)  # fmt: skip


def fence_group(session: Session, claim: GroupClaim) -> None:
    """Start the transaction that registers ``claim``'s master (see :func:`fence_frame`);
    :class:`LeaseLostError` when the group's lease was taken over."""
    session.commit()
    hold_marking_lock(session, shared=True)
    j = _JOBS
    result = session.execute(
        update(j)
        .where(j.c.id == claim.job_id, j.c.lease_token == claim.token)
        .values(lease_token=j.c.lease_token)
    )
    if result.rowcount != 1:
        session.rollback()
        msg = f"master job {claim.job_id}: lease {claim.token} was taken over; nothing recorded"
        raise LeaseLostError(msg)


def release_group(engine: Engine, claim: GroupClaim) -> None:
    """Give the group's lease back without changing its status (nothing to do, or shutdown)."""
    j = _JOBS
    with engine.begin() as conn:
        conn.execute(
            update(j)
            .where(j.c.id == claim.job_id, j.c.lease_token == claim.token)
            .values(lease_owner=None, lease_expires_at=None, updated_at=db_now(conn))
        )


def finish_group(
    engine: Engine,
    claim: GroupClaim,
    status: MasterJobStatus,
    *,
    error: str | None = None,
    master_id: int | None = None,
    retry_at: dt.datetime | None = None,
    retry_in_s: float | None = None,
    attempts: int | None = None,
    fail_ready: str | None = None,
    fail_frames: dict[str, str] | None = None,
    defer_until: dt.datetime | None = None,
) -> int:
    """Record a build's outcome on its job and release the lease, in one fenced transaction.

    The group's frames still ``ready`` are then ``failed`` with the reason ``fail_ready`` (the
    group is given up), or only those named in ``fail_frames`` (file name -> reason: flats the
    build left out; a frame that became ready during the build stays ready, for the next
    build), or deferred to ``defer_until`` (too few frames while the night goes on).
    ``retry_at`` (or ``retry_in_s`` from now) is when a ``retry``/``not_enough`` job is due.
    Returns how many frames were changed; :class:`LeaseLostError` when the lease was lost.
    """
    j, f = _JOBS, _FRAMES
    with engine.begin() as conn:
        now = db_now(conn)
        if retry_in_s is not None:
            retry_at = now + _seconds(retry_in_s)
        values = {"status": status.value, "last_error": error, "next_attempt_at": retry_at,
                  "lease_owner": None, "lease_expires_at": None, "updated_at": now}  # fmt: skip
        if master_id is not None:
            values["master_id"] = master_id
        if attempts is not None:
            values["attempts"] = attempts
        result = conn.execute(
            update(j).where(j.c.id == claim.job_id, j.c.lease_token == claim.token).values(values)
        )
        if result.rowcount != 1:
            msg = f"master job {claim.job_id}: lease {claim.token} was taken over"
            raise LeaseLostError(msg)
        ready = [*_group_frames_clause(f, claim.key), f.c.state == _R]
        changed = 0
        if fail_ready is not None or fail_frames:
            rows = conn.execute(select(f.c.id, f.c.filename).where(*ready)).all()
            reasons = {r.filename: fail_ready for r in rows} if fail_ready is not None else {}
            reasons.update({r.filename: fail_frames[r.filename] for r in rows
                            if r.filename in (fail_frames or {})})  # fmt: skip
            for row in rows:
                if row.filename not in reasons:
                    continue
                changed += conn.execute(
                    frame_transition(FrameEvent.GIVEN_UP, f.c.id == row.id,
                                     attempts=f.c.attempts + 1,
                                     last_error=reasons[row.filename], updated_at=now)
                ).rowcount  # fmt: skip
        elif defer_until is not None:
            changed = conn.execute(
                update(f).where(*ready).values(next_attempt_at=defer_until, updated_at=now)
            ).rowcount
    return changed


def wake_dependent_groups(engine: Engine, key: GroupKey) -> int:
    """A master of ``key`` was registered: the groups of the types that are prepared with it
    (same instrument, binning and readout mode: a dark's bias; a flat's bias and dark) that were
    deferred for want of frames or of a master are due now, not at the end of their night.
    Returns how many groups were woken."""
    dependents = [t for t, needs in PREREQUISITES.items() if key.obstype in needs]
    if not dependents:
        return 0
    j, f = _JOBS, _FRAMES
    with engine.begin() as conn:  # jobs before frames: a master build's lock order
        woken = conn.execute(
            update(j)
            .where(j.c.status == MasterJobStatus.NOT_ENOUGH.value, j.c.obstype.in_(dependents),
                   j.c.instrument_id == key.instrument_id, j.c.binning == key.binning,
                   j.c.readout_mode == key.readout_mode, j.c.next_attempt_at.is_not(None))
            .values(next_attempt_at=None)
        ).rowcount  # fmt: skip
        if woken:  # their checked frames were deferred with them
            conn.execute(
                update(f)
                .where(f.c.state == FrameState.READY.value, f.c.obstype.in_(dependents),
                       f.c.instrument_id == key.instrument_id, f.c.binning == key.binning,
                       f.c.readout_mode == key.readout_mode, f.c.next_attempt_at.is_not(None))
                .values(next_attempt_at=None)
            )  # fmt: skip
    return woken


# --- heartbeat ----------------------------------------------------------------------------
class Heartbeat:
    """Renews a lease every ``interval_s`` in a daemon thread while the work goes on.

    ``with Heartbeat(engine, claim, lease_s=60):`` renews ``raw_frames`` (a :class:`FrameClaim`)
    or ``master_jobs`` (a :class:`GroupClaim`) rows, fenced by the token. :attr:`lost` is set
    when the lease was found taken over (the work's result will be discarded by the fence). A
    database error is logged and retried at the next beat: the lease only lapses if the
    database stays unreachable for a whole lease.
    """

    def __init__(
        self,
        engine: Engine,
        claim: FrameClaim | GroupClaim,
        *,
        lease_s: float,
        interval_s: float | None = None,
    ) -> None:
        self.engine = engine
        self.claim = claim
        self.lease_s = lease_s
        self.interval_s = interval_s if interval_s is not None else max(lease_s / 4, 0.05)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pylcogt-heartbeat", daemon=True)

    def _statement(self, now: dt.datetime) -> sa.Update:
        expires = now + _seconds(self.lease_s)
        if isinstance(self.claim, FrameClaim):
            return (
                update(_FRAMES)
                .where(_fenced(self.claim.frame_id, self.claim.token))
                .values(lease_expires_at=expires)
            )
        j = _JOBS
        return (
            update(j)
            .where(j.c.id == self.claim.job_id, j.c.lease_token == self.claim.token,
                   j.c.lease_owner.is_not(None))
            .values(lease_expires_at=expires)
        )  # fmt: skip

    def beat(self) -> bool:
        """Renew once; False when the lease is no longer ours."""
        with self.engine.begin() as conn:
            renewed = conn.execute(self._statement(db_now(conn))).rowcount == 1
        if not renewed:
            self.lost.set()
        return renewed

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.beat():  # recorded meanwhile, or taken over (the fence will tell)
                    log.debug("lease no longer held: %s", self.claim)
                    return
            except DBAPIError as exc:
                log.warning("heartbeat failed (retrying at the next beat): %s", exc.orig)
            except Exception:  # a heartbeat must never kill the worker
                log.exception("heartbeat failed")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --- what is left -------------------------------------------------------------------------
@dataclass
class Outstanding:
    """Work that exists but cannot be claimed right now, and when to look again."""

    busy_frames: int = 0  # processing under a live lease (another worker)
    backoff_frames: int = 0  # pending, retried later
    busy_groups: int = 0  # masters being built
    retry_groups: int = 0  # master builds retried later
    next_at: dt.datetime | None = None
    now: dt.datetime = dataclasses.field(default_factory=utcnow)

    @property
    def any(self) -> bool:
        return bool(self.busy_frames or self.backoff_frames or self.busy_groups or
                    self.retry_groups)  # fmt: skip


def outstanding_work(engine: Engine) -> Outstanding:
    """What keeps ``--until-idle`` polling: other workers' live leases and retries due later
    (not groups deferred to the end of their night, nor frames waiting for a calibration)."""
    f, j = _FRAMES, _JOBS
    out = Outstanding()
    with engine.connect() as conn:
        now = out.now = db_now(conn)
        out.busy_frames, busy_until = conn.execute(
            select(sa.func.count(), sa.func.min(f.c.lease_expires_at)).where(
                f.c.state == _W, f.c.lease_expires_at >= now
            )
        ).one()
        out.backoff_frames, backoff_until = conn.execute(
            select(sa.func.count(), sa.func.min(f.c.next_attempt_at)).where(
                f.c.state == _P, f.c.next_attempt_at > now
            )
        ).one()
        out.busy_groups, group_until = conn.execute(
            select(sa.func.count(), sa.func.min(j.c.lease_expires_at)).where(
                j.c.lease_owner.is_not(None), j.c.lease_expires_at >= now
            )
        ).one()
        out.retry_groups, retry_until = conn.execute(
            select(sa.func.count(), sa.func.min(j.c.next_attempt_at)).where(
                j.c.status == MasterJobStatus.RETRY.value, j.c.next_attempt_at > now
            )
        ).one()
    times = [t for t in (busy_until, backoff_until, group_until, retry_until) if t is not None]
    out.next_at = min(times) if times else None
    return out


def frame_counts(engine: Engine) -> dict[str, int]:
    """Frames by state (progress display, summaries)."""
    f = _FRAMES
    with engine.connect() as conn:
        rows = conn.execute(select(f.c.state, sa.func.count()).group_by(f.c.state)).all()
    return {getattr(state, "value", state): int(n) for state, n in rows}


def masters_count(engine: Engine) -> int:
    """How many masters the registry holds (good or bad): the worker's progress display."""
    with engine.connect() as conn:
        return conn.execute(
            select(sa.func.count()).select_from(MasterCalibration.__table__)
        ).scalar_one()
