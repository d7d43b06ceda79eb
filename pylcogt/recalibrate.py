"""Provisional and final reductions: when a reduction is final, and what to redo when masters
change.

A reduction is **final** when its frame's night is over (or closed, :mod:`pylcogt.nights`),
every master it used is final, and nothing of the night's calibrations is still to come: no
bias, dark or flat frame (of the frame's filter) of its night, instrument, binning and readout
mode waits to be stacked (``pending``, ``processing`` or ``ready``), and no master of that night
and mode is being built or due for a rebuild (``stale``). Otherwise it is **provisional**: a
better calibration may still come, and the frame is reduced again when it does.

After masters change (a master built or promoted, a night over), :func:`refresh_reductions`
looks at the current reductions that may be affected: the provisional ones of the same
instrument and mode, those of the master's night, and those that used a master just replaced.
For each it runs the selection again (:func:`pylcogt.calibrations.select.select_reduction_masters`):

- the same masters: nothing is redone; a provisional reduction whose status is now final is
  promoted (:func:`pylcogt.lifecycle.promote_reduction`);
- other masters (tonight's master exists now, the morning flats made a new one, a master was
  superseded): the frame is re-queued (``pending``, its ``redo_reason`` saying which master
  changed), unless re-reduction is switched off (``--no-rereduce``, ``PYLCOGT_REREDUCE=0``) and
  the reduction is provisional: then its product stays as it is, provisional.

:func:`refresh_due` does it for every night that is over with provisional reductions left (the
worker's idle pass), so a night whose frames were reduced with earlier nights' masters ends
final too.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session, joinedload

from pylcogt import lifecycle
from pylcogt.calibrations.select import Selection, select_reduction_masters
from pylcogt.db.models import (
    CalibrationRole,
    CalibrationStatus,
    CalibrationType,
    FrameState,
    MasterCalibration,
    MasterJob,
    MasterJobStatus,
    RawFrame,
    Reduction,
    ReductionMaster,
    ReductionStatus,
)
from pylcogt.errors import CalibrationNotFoundError
from pylcogt.lifecycle import FrameEvent, frame_transition, requeue_values
from pylcogt.nights import night_info
from pylcogt.scheduling import night_is_over

__all__ = [
    "ROLE",
    "BETTER",
    "describe_change",
    "RefreshResult",
    "calibrations_settled",
    "reduction_status",
    "refresh_reductions",
    "refresh_due",
    "masters_changed_since",
]

log = logging.getLogger(__name__)

#: The role each master type plays in a science frame's reduction.
ROLE: Mapping[CalibrationType, CalibrationRole] = {
    CalibrationType.BIAS: CalibrationRole.BIAS,
    CalibrationType.DARK: CalibrationRole.DARK,
    CalibrationType.SKYFLAT: CalibrationRole.FLAT,
    CalibrationType.BPM: CalibrationRole.BPM,
}
_WAITING = (FrameState.PENDING.value, FrameState.PROCESSING.value, FrameState.READY.value)


@dataclass
class RefreshResult:
    """Frame ids re-queued (with why), reductions promoted to final, and provisional reductions
    kept as they are although a better master exists (re-reduction switched off)."""

    requeued: dict[int, str] = field(default_factory=dict)
    promoted: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)

    def merge(self, other: RefreshResult) -> None:
        self.requeued.update(other.requeued)
        self.promoted.extend(other.promoted)
        self.kept.extend(other.kept)


def calibrations_settled(conn: Connection | Session, frame: RawFrame) -> bool:
    """Nothing of ``frame``'s night's calibrations is still to come (module doc): no bias, dark
    or flat frame (of its filter) of its night and mode waits to be stacked, and no master of
    that night and mode is being built or stale."""
    f = RawFrame.__table__
    mode = [f.c.instrument_id == frame.instrument_id, f.c.dayobs == frame.dayobs,
            f.c.binning == frame.binning, f.c.readout_mode == frame.readout_mode]  # fmt: skip
    kinds = sa.or_(f.c.obstype.in_(["BIAS", "DARK"]),
                   sa.and_(f.c.obstype == "SKYFLAT", f.c.filter_name == frame.filter_name))
    waiting = conn.execute(
        select(f.c.id).where(*mode, kinds, f.c.state.in_(_WAITING)).limit(1)
    ).first()  # fmt: skip
    if waiting is not None:
        return False
    j = MasterJob.__table__
    done = [MasterJobStatus.BUILT.value, MasterJobStatus.FAILED.value,
            MasterJobStatus.NOT_ENOUGH.value]  # fmt: skip
    busy = conn.execute(
        select(j.c.id).where(
            j.c.instrument_id == frame.instrument_id, j.c.dayobs == frame.dayobs,
            j.c.binning == frame.binning, j.c.readout_mode == (frame.readout_mode or ""),
            # a lease taken only to look at a group that is built is not a build
            sa.or_(j.c.status == MasterJobStatus.STALE.value,
                   sa.and_(j.c.lease_owner.is_not(None), j.c.status.not_in(done))),
        ).limit(1)
    ).first()  # fmt: skip
    return busy is None


def reduction_status(
    conn: Connection | Session,
    frame: RawFrame,
    masters: Iterable[MasterCalibration],
    now: dt.datetime,
    *,
    as_of: dt.datetime | None = None,
) -> CalibrationStatus:
    """``final`` or ``provisional`` for a reduction of ``frame`` with ``masters`` (module doc).
    With ``as_of``, as the registry stood then: masters final by then, the night over by then
    (what was still to come then is not known, so it is not asked)."""
    info = night_info(conn, frame.instrument_id, frame.dayobs)
    when = now if as_of is None else as_of
    if not night_is_over(frame.dayobs, info.longitude_deg, when, info.closed_at):
        return CalibrationStatus.PROVISIONAL
    for master in masters:
        if as_of is None and master.calibration_status is not CalibrationStatus.FINAL:
            return CalibrationStatus.PROVISIONAL
        if as_of is not None and (master.finalized_at is None or master.finalized_at >= as_of):
            return CalibrationStatus.PROVISIONAL
    if as_of is None and not calibrations_settled(conn, frame):
        return CalibrationStatus.PROVISIONAL
    return CalibrationStatus.FINAL


#: How the reason of a reduction redone for a better master starts.
BETTER = "better calibration: "


def describe_change(used: dict[str, int], chosen: dict[CalibrationType, Selection]) -> str:
    """``better calibration: flat master 12 -> 15 (final); ...``: the masters that differ
    between a reduction (``used``: role -> master id) and a selection now."""
    changes = []
    for role in sorted(set(used) | {ROLE[t].value for t in chosen}):
        new = next((s.master for t, s in chosen.items() if ROLE[t].value == role), None)
        old = used.get(role)
        if new is not None and old == new.id:
            continue
        if old is None:
            changes.append(f"{role} master {new.id} now exists")
        elif new is None:
            changes.append(f"{role} master {old} is no longer current")
        else:
            changes.append(f"{role} master {old} -> {new.id} ({new.calibration_status.value})")
    return BETTER + "; ".join(changes)


def _candidates(
    session: Session,
    *,
    instrument_id: int,
    binning: str,
    readout_mode: str,
    dayobs: dt.date | None,
    master_ids: Iterable[int],
) -> list[tuple[Reduction, RawFrame]]:
    r, f = Reduction, RawFrame
    reasons = [r.calibration_status == CalibrationStatus.PROVISIONAL]
    if dayobs is not None:
        reasons.append(f.dayobs == dayobs)
    master_ids = [m for m in master_ids if m is not None]
    if master_ids:
        reasons.append(
            r.id.in_(select(ReductionMaster.reduction_id).where(
                ReductionMaster.master_id.in_(master_ids)))
        )  # fmt: skip
    query = (
        select(r, f)
        .join(f, f.id == r.frame_id)
        .options(joinedload(r.masters))
        .where(r.status == ReductionStatus.CURRENT, f.state == FrameState.DONE,
               f.instrument_id == instrument_id, f.binning == binning,
               f.readout_mode == readout_mode, sa.or_(*reasons))
        .order_by(f.dateobs, f.id)
    )  # fmt: skip
    return [(row[0], row[1]) for row in session.execute(query).unique()]


def refresh_reductions(
    session: Session,
    *,
    instrument_id: int,
    binning: str,
    readout_mode: str,
    now: dt.datetime,
    dayobs: dt.date | None = None,
    master_ids: Iterable[int] = (),
    rereduce: bool = True,
) -> RefreshResult:
    """Re-queue or promote the current reductions that masters changed (module doc): the
    provisional ones of this instrument and mode, those of night ``dayobs`` and those that used
    ``master_ids`` (masters just replaced). In the caller's transaction (flushed)."""
    out = RefreshResult()
    candidates = _candidates(session, instrument_id=instrument_id, binning=binning,
                             readout_mode=readout_mode, dayobs=dayobs, master_ids=master_ids)
    r = Reduction.__table__
    for reduction, frame in candidates:
        used = {m.role.value: m.master_id for m in reduction.masters}
        try:
            chosen = select_reduction_masters(session, frame)
        except CalibrationNotFoundError:
            continue  # nothing usable now (all marked bad?): the mark-bad cascade decides
        now_ids = {ROLE[t].value: s.master.id for t, s in chosen.items()}
        provisional = reduction.calibration_status is CalibrationStatus.PROVISIONAL
        if now_ids != used:
            if provisional and not rereduce:
                out.kept.append(frame.id)  # refresh_due does not look at it again and again
                session.execute(update(r).where(r.c.id == reduction.id).values(kept_at=now)
                                .execution_options(synchronize_session=False))  # fmt: skip
                continue
            why = describe_change(used, chosen)
            changed = session.execute(
                frame_transition(FrameEvent.REQUEUED, RawFrame.__table__.c.id == frame.id,
                                 RawFrame.__table__.c.state == FrameState.DONE.value,
                                 updated_at=now, **requeue_values(why))
                .execution_options(synchronize_session=False)
            ).rowcount  # fmt: skip
            if changed:
                out.requeued[frame.id] = why
            continue
        if provisional:
            status = reduction_status(session, frame, [s.master for s in chosen.values()], now)
            if status is CalibrationStatus.FINAL and lifecycle.promote_reduction(
                session, reduction.id, now
            ):
                out.promoted.append(reduction.id)
    session.flush()
    if out.requeued or out.promoted:
        log.info("instrument %d %s %s: %d frame(s) re-queued for a better calibration, %d "
                 "reduction(s) now final", instrument_id, binning, readout_mode or "-",
                 len(out.requeued), len(out.promoted))  # fmt: skip
    return out


def masters_changed_since(
    conn: Connection | Session, *, instrument_id: int, binning: str, readout_mode: str,
    since: dt.datetime,
) -> bool:
    """Whether a master of this instrument and mode was registered, superseded, promoted or
    marked bad at or after ``since`` (a reduction that selected its masters then may be out of
    date already: its refresh ran while it was being made)."""
    m = MasterCalibration.__table__
    changed = conn.execute(
        select(m.c.id).where(
            m.c.instrument_id == instrument_id, m.c.binning == binning,
            m.c.readout_mode == readout_mode,
            sa.or_(m.c.created_at >= since, m.c.superseded_at >= since,
                   m.c.finalized_at >= since, m.c.bad_at >= since),
        ).limit(1)
    ).first()  # fmt: skip
    return changed is not None


def refresh_due(session: Session, *, now: dt.datetime, rereduce: bool = True) -> RefreshResult:
    """:func:`refresh_reductions` for every instrument and mode with provisional reductions of
    a night that is over (or closed), except those a refresh kept provisional (``rereduce``
    off) since the night ended: they would be kept again at every pass."""
    r, f = Reduction, RawFrame
    rows = session.execute(
        select(f.instrument_id, f.binning, f.readout_mode, f.dayobs,
               sa.func.count(r.id).label("n"), sa.func.count(r.kept_at).label("kept"),
               sa.func.min(r.kept_at).label("first_kept"))
        .join(r, r.frame_id == f.id)
        .where(r.status == ReductionStatus.CURRENT,
               r.calibration_status == CalibrationStatus.PROVISIONAL,
               f.state == FrameState.DONE)
        .group_by(f.instrument_id, f.binning, f.readout_mode, f.dayobs)
    ).all()  # fmt: skip
    out = RefreshResult()
    scopes = set()
    for row in rows:
        info = night_info(session, row.instrument_id, row.dayobs)
        if not info.over(now):
            continue
        ended = min(info.ends_at, info.closed_at or info.ends_at)
        if row.kept < row.n or row.first_kept < ended:
            scopes.add((row.instrument_id, row.binning, row.readout_mode))
    for instrument_id, binning, mode in sorted(scopes):
        out.merge(refresh_reductions(session, instrument_id=instrument_id, binning=binning,
                                     readout_mode=mode, now=now, rereduce=rereduce))  # fmt: skip
    return out
