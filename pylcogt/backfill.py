"""Backfill: ingest and schedule everything a range of nights needs, then (optionally) run it.

:func:`plan_backfill` finds, without changing anything, what a backfill of nights ``since`` ..
``until`` (DAY-OBS, inclusive; optionally one site and/or camera) would do; :func:`apply_backfill`
does it. Both are idempotent: once applied, a new plan is empty.

1. **Ingest** (with a raw directory): FITS files found recursively whose header DAY-OBS (and
   site, camera) is in the range are registered as by ``pylcogt ingest``; files outside it are
   left alone; unreadable files are recorded as ``rejected`` (their night cannot be known).
   Registered files of unchanged size not modified since they were ingested are not re-read.
2. **Reset**: frames of those nights that are ``failed``, ``waiting_calibration`` or ``pending``
   with a retry delay or an error go back to ``pending`` with their attempts cleared, so that the
   worker takes them now. Calibration frames are reset only in groups that have no good master
   yet (a night's master is rebuilt with ``pylcogt calibrations mark-bad``, not by a backfill);
   such a group's failed or deferred ``master_jobs`` row is reset too. With ``redo``, ``done``
   science frames are reset as well (this part is not idempotent by design: it redoes them).
3. **As-of rule**: every frame ingested or reset by the backfill gets ``calibration_cutoff``
   = the end of its night (:func:`pylcogt.scheduling.night_end`, local noon of DAY-OBS + 1 at
   the site). The worker then reduces it, or prepares it for its master, with masters observed
   (``master_calibrations.dateobs``, the mean DATE-OBS of their inputs) at or before that time
   only: what the night should have used, whenever those masters were built (not
   ``created_at``: a backfill builds masters now). ``pylcogt ingest`` clears the cutoff of a
   file it registers again.
4. The worker does the rest, in its own order: a night's bias, dark and flats (and their
   masters) before its science frames, oldest night first.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from pylcogt.db.models import (
    FrameState,
    Instrument,
    MasterCalibration,
    MasterJob,
    MasterJobStatus,
    RawFrame,
    Site,
    current_master,
)
from pylcogt.db.session import writer
from pylcogt.ingest import FileFacts, _record_with_retry, read_file
from pylcogt.lifecycle import FrameEvent, frame_transition
from pylcogt.scheduling import night_end
from pylcogt.watch import is_registered_unchanged, known_unchanged, scan_fits_tree

__all__ = ["BackfillScope", "BackfillPlan", "plan_backfill", "apply_backfill"]

CALIBRATION_OBSTYPES = ("BIAS", "DARK", "SKYFLAT")
SCIENCE_OBSTYPES = ("EXPOSE", "STANDARD")
_RESETTABLE = (FrameState.FAILED, FrameState.WAITING_CALIBRATION, FrameState.PENDING)


@dataclass(frozen=True)
class BackfillScope:
    since: dt.date
    until: dt.date
    site: str | None = None
    instrument: str | None = None
    raw_dir: str | None = None
    redo: bool = False

    def covers(self, dayobs: dt.date | None, site: str | None, camera: str | None) -> bool:
        return (
            dayobs is not None
            and self.since <= dayobs <= self.until
            and (self.site is None or site == self.site)
            and (self.instrument is None or camera == self.instrument)
        )


@dataclass
class BackfillPlan:
    """What a backfill does: files to ingest, frames to reset, groups whose master is missing."""

    scope: BackfillScope
    to_ingest: list[FileFacts] = field(default_factory=list)
    ingest_status: dict[str, str] = field(default_factory=dict)  # path -> new|updated|rejected
    outside_range: int = 0
    to_reset: list[int] = field(default_factory=list)
    reset_details: list[dict] = field(default_factory=list)
    jobs_to_reset: list[int] = field(default_factory=list)
    masters_missing: list[dict] = field(default_factory=list)
    nights: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def nothing_to_do(self) -> bool:
        return not (self.to_ingest or self.to_reset or self.jobs_to_reset)

    def to_json(self) -> dict:
        return {
            "since": self.scope.since.isoformat(),
            "until": self.scope.until.isoformat(),
            "site": self.scope.site,
            "instrument": self.scope.instrument,
            "ingest": {
                "files": [
                    {"path": str(f.path), "status": self.ingest_status[str(f.path)]}
                    for f in self.to_ingest
                ],  # fmt: skip
                "counts": dict(Counter(self.ingest_status.values())),
                "outside_range": self.outside_range,
            },
            "reset": {
                "frames": len(self.to_reset),
                "by_state": dict(Counter(d["state"] for d in self.reset_details)),
            },  # fmt: skip
            "master_jobs_reset": len(self.jobs_to_reset),
            "masters_to_build": self.masters_missing,
            "nights": self.nights,
            "nothing_to_do": self.nothing_to_do,
        }


def _planned_ingest(maker: sessionmaker[Session], plan: BackfillPlan) -> None:
    scope = plan.scope
    assert scope.raw_dir is not None
    registered = known_unchanged(maker, [scope.raw_dir])
    with maker() as session:
        checksums = dict(session.execute(sa.select(RawFrame.path, RawFrame.checksum)).all())
    for path, signature in scan_fits_tree(scope.raw_dir):
        if is_registered_unchanged(signature, registered.get(path)):
            continue
        facts = read_file(Path(path))
        known = checksums.get(str(facts.path))
        if known is not None and known == facts.checksum:
            continue  # unchanged content (only touched)
        if facts.meta is not None and not scope.covers(
            facts.meta.dayobs, facts.meta.site, facts.meta.camera
        ):
            plan.outside_range += 1
            continue
        status = "rejected" if facts.meta is None else ("updated" if known else "new")
        plan.to_ingest.append(facts)
        plan.ingest_status[str(facts.path)] = status


def _scoped(query, scope: BackfillScope):
    query = query.join(Instrument, Instrument.id == RawFrame.instrument_id).join(
        Site, Site.id == Instrument.site_id
    )
    query = query.where(RawFrame.dayobs >= scope.since, RawFrame.dayobs <= scope.until)
    if scope.site:
        query = query.where(Site.code == scope.site)
    if scope.instrument:
        query = query.where(Instrument.camera == scope.instrument)
    return query


def _group_filter(obstype: str, filter_name: str | None) -> str:
    return (filter_name or "") if obstype == "SKYFLAT" else ""


def _planned_resets(session: Session, plan: BackfillPlan) -> None:
    scope = plan.scope
    frames = session.scalars(_scoped(sa.select(RawFrame), scope).order_by(RawFrame.id)).all()
    masters = {
        (m.instrument_id, m.dayobs, m.obstype.value, m.binning, m.readout_mode, m.filter_name)
        for m in session.scalars(
            sa.select(MasterCalibration).where(
                current_master(MasterCalibration),
                MasterCalibration.dayobs >= scope.since,
                MasterCalibration.dayobs <= scope.until,
            )
        )
    }
    missing: set[tuple] = set()
    for frame in frames:
        night = plan.nights.setdefault(frame.dayobs.strftime("%Y%m%d"), Counter())
        night[frame.state.value] += 1
        filt = _group_filter(frame.obstype, frame.filter_name)
        key = (frame.instrument_id, frame.dayobs, frame.obstype, frame.binning,
               frame.readout_mode or "", filt)  # fmt: skip
        is_cal = frame.obstype in CALIBRATION_OBSTYPES
        if is_cal and frame.state is not FrameState.REJECTED and key not in masters:
            missing.add(key)
        if frame.state in _RESETTABLE:
            idle = (
                frame.state is FrameState.PENDING
                and frame.attempts == 0
                and frame.next_attempt_at is None
                and frame.last_error is None
            )
            if idle or (is_cal and key in masters):
                continue
        elif not (scope.redo and frame.state is FrameState.DONE and not is_cal):
            continue
        plan.to_reset.append(frame.id)
        plan.reset_details.append({"id": frame.id, "filename": frame.filename,
                                   "obstype": frame.obstype, "state": frame.state.value,
                                   "dayobs": frame.dayobs.isoformat()})  # fmt: skip
    plan.nights = {k: dict(v) for k, v in sorted(plan.nights.items())}
    for inst_id, dayobs, obstype, binning, mode, filt in sorted(missing, key=str):
        plan.masters_missing.append({"instrument_id": inst_id, "dayobs": dayobs.isoformat(),
                                     "type": obstype, "binning": binning, "readout_mode": mode,
                                     "filter": filt})  # fmt: skip
        job = session.scalars(
            sa.select(MasterJob).where(
                MasterJob.instrument_id == inst_id, MasterJob.dayobs == dayobs,
                MasterJob.obstype == obstype, MasterJob.binning == binning,
                MasterJob.readout_mode == mode, MasterJob.filter_name == filt,
                MasterJob.status.in_([MasterJobStatus.FAILED, MasterJobStatus.NOT_ENOUGH,
                                      MasterJobStatus.RETRY]),
            )
        ).first()  # fmt: skip
        if job is not None and job.lease_owner is None:
            plan.jobs_to_reset.append(job.id)


def _set_cutoffs(session: Session, frame_ids: list[int]) -> None:
    """The as-of rule: these frames use only masters observed by the end of their night."""
    if not frame_ids:
        return
    rows = session.execute(
        sa.select(RawFrame.id, RawFrame.dayobs, Site.longitude_deg)
        .join(Instrument, Instrument.id == RawFrame.instrument_id)
        .join(Site, Site.id == Instrument.site_id)
        .where(RawFrame.id.in_(sorted(set(frame_ids))), RawFrame.state != FrameState.PROCESSING)
    ).all()
    for frame_id, dayobs, longitude in rows:
        session.execute(
            sa.update(RawFrame)
            .where(RawFrame.id == frame_id)
            .values(calibration_cutoff=night_end(dayobs, longitude))
        )


def plan_backfill(maker: sessionmaker[Session], scope: BackfillScope) -> BackfillPlan:
    """What :func:`apply_backfill` would do; changes nothing. Files to ingest are read (hashed
    and scanned) to learn their night; the resets are computed on the registry as it is now."""
    plan = BackfillPlan(scope)
    if scope.raw_dir is not None:
        _planned_ingest(maker, plan)
    with maker() as session:
        _planned_resets(session, plan)
    return plan


def apply_backfill(maker: sessionmaker[Session], scope: BackfillScope) -> BackfillPlan:
    """Ingest the range's files, then reset its frames and failed master jobs (one transaction);
    returns the plan that was applied (resets computed after the ingest)."""
    plan = BackfillPlan(scope)
    ingested_ids: list[int | None] = []
    if scope.raw_dir is not None:
        _planned_ingest(maker, plan)
        for facts in plan.to_ingest:
            result = _record_with_retry(maker, facts)
            plan.ingest_status[str(facts.path)] = result.status
            if result.status != "rejected":
                ingested_ids.append(result.frame_id)
    ingested = [frame_id for frame_id in ingested_ids if frame_id is not None]
    with writer(maker)() as session:
        _planned_resets(session, plan)
        _set_cutoffs(session, [*ingested, *plan.to_reset])
        if plan.to_reset:
            f = RawFrame.__table__
            redo = f"backfill --redo of nights {scope.since:%Y%m%d}..{scope.until:%Y%m%d}"
            session.execute(
                frame_transition(
                    FrameEvent.RESET, f.c.id.in_(plan.to_reset), attempts=0, last_error=None,
                    next_attempt_at=None, lease_owner=None, lease_expires_at=None,
                    redo_reason=sa.case((f.c.state == FrameState.DONE.value, redo),
                                        else_=f.c.redo_reason),
                ).execution_options(synchronize_session=False)
            )  # fmt: skip
        if plan.jobs_to_reset:
            session.execute(
                sa.update(MasterJob)
                .where(MasterJob.id.in_(plan.jobs_to_reset), MasterJob.lease_owner.is_(None))
                .values(
                    status=MasterJobStatus.PENDING,
                    attempts=0,
                    next_attempt_at=None,
                    last_error=None,
                )  # fmt: skip
            )
        session.commit()
    return plan
