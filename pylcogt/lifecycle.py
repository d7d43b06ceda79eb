"""The lifecycle of frames, masters and reductions: every change of state is written here.

The allowed transitions are data: :data:`FRAME_TRANSITIONS` maps each event to the states it
may leave and the state it enters; the statements that change state
(:func:`frame_transition`) are built from it, with the source states in their ``WHERE``, so a
transition from any other state changes no row: it cannot be written by accident. A frame row
changed through the ORM is checked too (:func:`check_frame_state`, an attribute listener: an
illegal assignment of a stored row raises :class:`IllegalTransitionError`). Nothing else in
pylcogt sets a frame's ``state`` (a unit test reads the source to keep it so).

Frames (``raw_frames.state``):

.. code-block:: text

    ingest ─> pending ─claimed─> processing ─checked─> ready ─stacked─> done  (calibration)
                                     ├─reduced─> done                         (science)
                                     ├─waiting─> waiting_calibration ─woken─> pending
                                     ├─failed─> failed
                                     └─retried, released─> pending
    ingest ─> rejected (unreadable, a duplicate); a changed file ─updated─> pending (or rejected)
    processing ─screened out─> rejected (a calibration frame no master can use: a shutter
                               failure, a saturated flat; the reason has the measured level)
    done, failed, waiting... ─requeued─> pending (mark-bad, a better master, backfill)

Masters (``master_calibrations``) are immutable: their states are standings, each with its
time so the registry can be read as it was (``--as-of``):

.. code-block:: text

    registered (provisional | final) ──promoted──> final
          │ current ──superseded──> superseded (superseded_at, superseded_by_id)
          └ good ──marked bad──> bad (bad_at) ──marked good──> good

Reductions (``reductions``): recorded ``current`` (``provisional`` | ``final``); the next
reduction of the frame makes it ``superseded``; a provisional one may be promoted to ``final``.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import sqlalchemy as sa
from sqlalchemy import event, update
from sqlalchemy.orm import Session, attributes

from pylcogt.db.models import (
    CalibrationStatus,
    FrameState,
    MasterCalibration,
    RawFrame,
    Reduction,
    ReductionMaster,
    ReductionStatus,
    current_master,
)
from pylcogt.errors import PylcogtError

__all__ = [
    "FrameEvent",
    "Transition",
    "FRAME_TRANSITIONS",
    "INITIAL_STATES",
    "IllegalTransitionError",
    "frame_transition",
    "target_values",
    "apply_frame_event",
    "check_frame_state",
    "allowed_pairs",
    "requeue_values",
    "register_master",
    "promote_master",
    "mark_master_bad",
    "mark_master_good",
    "record_reduction",
    "supersede_current_reduction",
    "promote_reduction",
    "MARKING_LOCK_KEY",
    "hold_marking_lock",
    "begin_record",
    "bad_masters",
]

P, W, R, D = FrameState.PENDING, FrameState.PROCESSING, FrameState.READY, FrameState.DONE
WAITING, FAILED, REJECTED = (
    FrameState.WAITING_CALIBRATION,
    FrameState.FAILED,
    FrameState.REJECTED,
)


class IllegalTransitionError(PylcogtError):
    """A change of state the lifecycle does not allow: a bug in the caller."""


class FrameEvent(str, enum.Enum):
    """What happens to a frame (see the module doc)."""

    UPDATED = "updated"  # ingest: the raw file's content changed
    REJECTED = "rejected"  # ingest: the (changed) file cannot be used
    CLAIMED = "claimed"  # a worker takes it (or takes it over after a lease expired)
    CHECKED = "checked"  # a calibration frame passed its check: waits for its master
    SCREENED_OUT = "screened_out"  # a calibration frame failed its check (shutter, saturation)
    REDUCED = "reduced"  # a science frame's product was recorded
    REDUCED_BY_HAND = "reduced_by_hand"  # `pylcogt reduce` (no claim)
    WAITING = "waiting"  # a master it needs does not exist yet
    FAILED = "failed"  # bad data, a bug, or too many attempts
    RETRIED = "retried"  # a transient error: pending again after a delay
    RELEASED = "released"  # shutdown: given back, no attempt counted
    STACKED = "stacked"  # went into its group's master
    LEFT_OUT = "left_out"  # unusable in its group's master (unreadable, shutter failure...)
    GIVEN_UP = "given_up"  # its group's master could not be built
    WOKEN = "woken"  # the masters it waited for exist now
    REQUEUED = "requeued"  # redo: a master it used was marked bad or replaced, or by hand
    RESET = "reset"  # backfill: take it again now


@dataclass(frozen=True)
class Transition:
    """An event's allowed source states and its target state."""

    sources: frozenset[FrameState]
    target: FrameState


def _t(sources: Iterable[FrameState], target: FrameState) -> Transition:
    return Transition(frozenset(sources), target)


_READABLE = (P, W, R, D, WAITING, FAILED)

#: event -> (states it may leave, state it enters)
FRAME_TRANSITIONS: Mapping[FrameEvent, Transition] = MappingProxyType(
    {
        FrameEvent.UPDATED: _t((*_READABLE, REJECTED), P),
        FrameEvent.REJECTED: _t((*_READABLE, REJECTED), REJECTED),
        FrameEvent.CLAIMED: _t((P, W), W),
        FrameEvent.CHECKED: _t((W,), R),
        FrameEvent.SCREENED_OUT: _t((W,), REJECTED),
        FrameEvent.REDUCED: _t((W,), D),
        FrameEvent.REDUCED_BY_HAND: _t((P, D, WAITING, FAILED), D),
        FrameEvent.WAITING: _t((W, P, D, FAILED), WAITING),
        FrameEvent.FAILED: _t((W, P, D, WAITING), FAILED),
        FrameEvent.RETRIED: _t((W,), P),
        FrameEvent.RELEASED: _t((W,), P),
        FrameEvent.STACKED: _t((P, R, D, FAILED), D),
        FrameEvent.LEFT_OUT: _t((P, R, D, FAILED), FAILED),
        FrameEvent.GIVEN_UP: _t((R,), FAILED),
        FrameEvent.WOKEN: _t((WAITING,), P),
        FrameEvent.REQUEUED: _t((P, W, R, D, WAITING, FAILED), P),
        FrameEvent.RESET: _t((P, D, WAITING, FAILED), P),
    }
)

#: states a frame is registered in by ingest
INITIAL_STATES = frozenset({P, REJECTED})


def allowed_pairs() -> frozenset[tuple[FrameState, FrameState]]:
    """Every ``(from, to)`` change of state some event allows (staying put is always allowed)."""
    pairs = {(s, t.target) for t in FRAME_TRANSITIONS.values() for s in t.sources}
    return frozenset(pairs | {(s, s) for s in FrameState})


_ALLOWED = allowed_pairs()


def _state(value) -> FrameState:
    return value if isinstance(value, FrameState) else FrameState(value)


@event.listens_for(RawFrame.state, "set", propagate=True, active_history=True)
def check_frame_state(target: RawFrame, value, oldvalue, _initiator):
    """ORM guard: a frame's state may change only along an allowed transition."""
    if value is None or oldvalue in (None, attributes.NO_VALUE, attributes.NEVER_SET):
        return value  # a row being created: no transition (ingest creates pending/rejected)
    new = _state(value)
    old = _state(oldvalue)
    if (old, new) not in _ALLOWED:
        msg = f"frame {target.filename or target.id}: {old.value} -> {new.value} is not allowed"
        raise IllegalTransitionError(msg)
    return value


def frame_transition(frame_event: FrameEvent, *where, **values) -> sa.Update:
    """``UPDATE raw_frames SET state = <target>, **values WHERE state IN (<sources>) AND
    *where``: the event's transition on the frames ``where`` selects (Core columns of
    ``raw_frames``); frames in another state are left alone."""
    transition = FRAME_TRANSITIONS[frame_event]
    table = RawFrame.__table__
    sources = sorted(s.value for s in transition.sources)
    statement = update(table).where(table.c.state.in_(sources), *where)
    return statement.values(state=transition.target.value, **values)


def target_values(frame_event: FrameEvent) -> dict[str, str]:
    """``{"state": <target>}`` for a statement whose ``WHERE`` already holds the event's source
    states in another form (the worker's claim: its claimable-frame predicate, written as the
    claim index's)."""
    return {"state": FRAME_TRANSITIONS[frame_event].target.value}


def apply_frame_event(frame: RawFrame, frame_event: FrameEvent) -> bool:
    """The event's transition on an ORM row; ``False`` (nothing changed) when the frame is not
    in one of its source states. A frame that is new (not yet stored) may only start as
    ``pending`` (:attr:`FrameEvent.UPDATED`) or ``rejected``."""
    transition = FRAME_TRANSITIONS[frame_event]
    if frame.state is None:
        if transition.target not in INITIAL_STATES:
            raise IllegalTransitionError(f"a new frame cannot be {transition.target.value}")
        frame.state = transition.target
        return True
    if _state(frame.state) not in transition.sources:
        return False
    frame.state = transition.target
    return True


def requeue_values(reason: str, *, last_error: str | None = None) -> dict:
    """Column values of a re-queued frame (:attr:`FrameEvent.REQUEUED`): due now, attempts
    cleared, any lease taken away (the fencing token moves on, so a worker still holding the
    frame records nothing), and why, for its next reduction."""
    table = RawFrame.__table__
    return {
        "attempts": 0,
        "next_attempt_at": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "lease_token": table.c.lease_token + 1,
        "redo_reason": reason,
        "last_error": last_error,
    }


# --- masters ------------------------------------------------------------------------------
#: PostgreSQL advisory lock: mark-bad/mark-good hold it exclusively for their transaction, a
#: worker's record transaction (a reduction, a master) holds it shared from its first statement
MARKING_LOCK_KEY = 0x70796C636F67  # "pylcog"


def hold_marking_lock(session: Session, *, shared: bool, write: bool = False) -> None:
    """Take the marking lock for the rest of the transaction (the first statement of it).

    A record transaction holds it shared, then checks its masters (:func:`bad_masters`): a
    master marked bad before that is seen, and a marking that comes later waits for the record
    to commit and then finds the reduction (or master) to redo. On SQLite the database's write
    lock does the same: exclusive, or ``write`` (a record transaction whose next statement is
    not a write), is a write of no row that holds the write lock until commit; shared alone is a
    no-op there (the caller's next statement writes: a fence)."""
    if session.get_bind().dialect.name == "postgresql":
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        session.execute(sa.text(f"SELECT {function}(:key)"), {"key": MARKING_LOCK_KEY})
    elif write or not shared:
        m = MasterCalibration.__table__
        session.execute(update(m).where(m.c.id == -1).values(is_bad=m.c.is_bad))


def begin_record(session: Session) -> None:
    """Start the transaction that records work done without a lease (``pylcogt reduce``,
    ``pylcogt stack``): the read transaction ends, and the new one holds the marking lock and
    (SQLite) the write lock from its first statement, as a worker's fence does."""
    session.commit()
    hold_marking_lock(session, shared=True, write=True)


def bad_masters(session: Session, master_ids: Iterable[int]) -> dict[int, str]:
    """``{id: bad reason}`` of the masters among ``master_ids`` marked bad (read in the record
    transaction, after :func:`hold_marking_lock`)."""
    ids = sorted(set(master_ids))
    if not ids:
        return {}
    m = MasterCalibration.__table__
    rows = session.execute(sa.select(m.c.id, m.c.bad_reason).where(m.c.id.in_(ids), m.c.is_bad))
    return {row.id: row.bad_reason or "marked bad" for row in rows}


def register_master(
    session: Session, new: MasterCalibration, *, replaces: int | None, now: dt.datetime
) -> MasterCalibration:
    """Register master ``new`` (flushed), superseding master ``replaces`` (its group's current
    master, or ``None``) in the same transaction: the old one stops being current first, so
    the group never has two current masters (``uq_master_calibrations_current``), then it is
    linked to its successor. A crash before the commit leaves the old master as it was."""
    m = MasterCalibration.__table__
    if replaces is not None:
        result = session.execute(
            update(m)
            .where(m.c.id == replaces, m.c.superseded_at.is_(None))
            .values(superseded_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            msg = f"master {replaces} is not current: it cannot be superseded"
            raise IllegalTransitionError(msg)
    new.created_at = now
    if new.calibration_status is CalibrationStatus.FINAL:
        new.finalized_at = now
    session.add(new)
    session.flush()
    if replaces is not None:
        session.execute(
            update(m).where(m.c.id == replaces).values(superseded_by_id=new.id)
            .execution_options(synchronize_session=False)
        )  # fmt: skip
    return new


def promote_master(session: Session, master_id: int, now: dt.datetime) -> bool:
    """A current provisional master becomes final (its content does not change)."""
    m = MasterCalibration.__table__
    result = session.execute(
        update(m)
        .where(m.c.id == master_id, m.c.calibration_status == CalibrationStatus.PROVISIONAL.value,
               current_master(m))
        .values(calibration_status=CalibrationStatus.FINAL.value, finalized_at=now)
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    return result.rowcount == 1


def mark_master_bad(master: MasterCalibration, reason: str, now: dt.datetime) -> bool:
    """Mark a good master bad (``bad_reason`` already stamped by the caller)."""
    if master.is_bad:
        return False
    master.is_bad = True
    master.bad_reason = reason
    master.bad_at = now
    return True


def mark_master_good(master: MasterCalibration) -> str | None:
    """Clear a master's bad mark; returns the reason removed (``None``: it was not bad)."""
    if not master.is_bad:
        return None
    previous = master.bad_reason
    master.is_bad = False
    master.bad_reason = None
    master.bad_at = None
    return previous


# --- reductions ---------------------------------------------------------------------------
def supersede_current_reduction(
    session: Session, frame_id: int, now: dt.datetime, *, kept_path: str | None = None
) -> int | None:
    """The frame's current reduction (if any) becomes superseded; returns its id."""
    r = Reduction.__table__
    current = session.execute(
        sa.select(r.c.id).where(r.c.frame_id == frame_id, r.c.status == ReductionStatus.CURRENT)
    ).scalar_one_or_none()
    if current is None:
        return None
    values: dict = {"status": ReductionStatus.SUPERSEDED.value, "superseded_at": now}
    if kept_path is not None:
        values["kept_path"] = kept_path
    session.execute(
        update(r).where(r.c.id == current).values(values)
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    return current


@dataclass(frozen=True)
class UsedMaster:
    """A master a reduction used: role, id, the sha256 of the file as read, fallback flag."""

    role: str
    master_id: int
    checksum: str
    fallback_later: bool = False


def record_reduction(
    session: Session,
    *,
    frame_id: int,
    masters: Iterable[UsedMaster],
    product_path: str,
    product_checksum: str,
    calibration_status: CalibrationStatus,
    reason: str,
    started_at: dt.datetime | None,
    now: dt.datetime,
    pipeline_version: str,
    worker: str | None = None,
    as_of: dt.datetime | None = None,
    kept_path: str | None = None,
) -> Reduction:
    """Record a new current reduction of ``frame_id`` (flushed): the previous current one is
    superseded (``kept_path``: where its product was kept, if it was), in the caller's
    transaction, which also records the frame ``done``."""
    previous = supersede_current_reduction(session, frame_id, now, kept_path=kept_path)
    final = calibration_status is CalibrationStatus.FINAL
    row = Reduction(
        frame_id=frame_id, status=ReductionStatus.CURRENT, calibration_status=calibration_status,
        reason=reason, started_at=started_at, finished_at=now, finalized_at=now if final else None,
        pipeline_version=pipeline_version, worker=worker, as_of=as_of, product_path=product_path,
        product_checksum=product_checksum,
    )  # fmt: skip
    row.masters = [
        ReductionMaster(role=m.role, master_id=m.master_id, master_checksum=m.checksum,
                        fallback_later=m.fallback_later)
        for m in masters
    ]  # fmt: skip
    session.add(row)
    session.flush()
    if previous is not None:
        r = Reduction.__table__
        session.execute(
            update(r).where(r.c.id == previous).values(superseded_by_id=row.id)
            .execution_options(synchronize_session=False)
        )  # fmt: skip
    return row


def promote_reduction(session: Session, reduction_id: int, now: dt.datetime) -> bool:
    """A current provisional reduction becomes final (nothing to redo: its masters are the
    final ones)."""
    r = Reduction.__table__
    result = session.execute(
        update(r)
        .where(r.c.id == reduction_id, r.c.status == ReductionStatus.CURRENT.value,
               r.c.calibration_status == CalibrationStatus.PROVISIONAL.value)
        .values(calibration_status=CalibrationStatus.FINAL.value, finalized_at=now)
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    return result.rowcount == 1
