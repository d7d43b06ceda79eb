"""What the registry knows about one observing night, for the quality-control page.

Repository functions: they take a Session and read only. A night is a DAY-OBS.

- the masters made that night (good and bad ones, bad ones with their reason), each with the
  previous master of the same kind: same instrument, type, binning, readout mode and filter, from
  an earlier night, not marked bad, the latest such;
- for each master, the frames of its group that are not in it and why: frames the worker failed
  or rejected (unreadable, left out of the stack by the flat checks), or frames that arrived
  after the master was built;
- the night's science frames: reduced ones with their products, the others with their state and
  reason.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from pylcogt.db.models import (
    CalibrationType,
    FrameState,
    Instrument,
    MasterCalibration,
    MasterInput,
    RawFrame,
    current_master,
)
from pylcogt.instruments import SCIENCE_OBSTYPES

__all__ = ["LeftOut", "MasterEntry", "FrameEntry", "NightInventory", "night_inventory"]


@dataclass(frozen=True)
class LeftOut:
    """A frame of a master's group that is not in the master, with its state and why."""

    frame_id: int
    filename: str
    state: str
    reason: str


@dataclass(frozen=True)
class MasterEntry:
    """A master made on the night (``dayobs``), and the previous good master of its kind."""

    id: int
    obstype: str
    camera: str
    site: str
    binning: str
    readout_mode: str
    filter_name: str
    dayobs: dt.date
    dateobs: dt.datetime
    path: str
    n_inputs: int
    is_bad: bool
    bad_reason: str | None
    previous_id: int | None = None
    standing: str = "final"  # provisional, final, superseded (by a rebuild) or bad
    superseded_by: int | None = None
    previous_path: str | None = None
    previous_dayobs: dt.date | None = None
    left_out: tuple[LeftOut, ...] = ()

    @property
    def label(self) -> str:
        """e.g. ``fa03 SKYFLAT 1x1 rp``."""
        parts = [self.camera, self.obstype, self.binning, self.readout_mode, self.filter_name]
        return " ".join(p for p in parts if p)


@dataclass(frozen=True)
class FrameEntry:
    """A science frame of the night: ``product_path`` when reduced, else ``reason``."""

    id: int
    filename: str
    camera: str
    obstype: str
    object_name: str
    filter_name: str
    exptime_s: float | None
    dateobs: dt.datetime | None
    state: str
    product_path: str | None
    reason: str | None


@dataclass
class NightInventory:
    night: dt.date
    camera: str | None
    masters: list[MasterEntry] = field(default_factory=list)
    frames: list[FrameEntry] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)


def _previous(session: Session, master: MasterCalibration) -> MasterCalibration | None:
    return session.scalar(
        select(MasterCalibration)
        .where(
            MasterCalibration.instrument_id == master.instrument_id,
            MasterCalibration.obstype == master.obstype,
            MasterCalibration.binning == master.binning,
            MasterCalibration.readout_mode == master.readout_mode,
            MasterCalibration.filter_name == master.filter_name,
            MasterCalibration.dayobs < master.dayobs,
            current_master(MasterCalibration),
        )
        .order_by(MasterCalibration.dayobs.desc(), MasterCalibration.dateobs.desc(),
                  MasterCalibration.id.desc())  # fmt: skip
        .limit(1)
    )


def _left_out(session: Session, master: MasterCalibration) -> tuple[LeftOut, ...]:
    """Frames of ``master``'s group (same instrument, night, raw OBSTYPE, binning, readout mode
    and filter) that are not among its inputs. A BPM's inputs are its masters' frames: none."""
    if master.obstype is CalibrationType.BPM:
        return ()
    inputs = select(MasterInput.frame_id).where(MasterInput.master_id == master.id)
    query = select(RawFrame).where(
        RawFrame.instrument_id == master.instrument_id,
        RawFrame.dayobs == master.dayobs,
        RawFrame.obstype == master.obstype.value,
        RawFrame.binning == master.binning,
        RawFrame.id.not_in(inputs),
    )
    rows = session.scalars(query.order_by(RawFrame.dateobs, RawFrame.id)).all()
    out = []
    for frame in rows:
        if (frame.readout_mode or "") != master.readout_mode:
            continue
        if master.obstype is CalibrationType.SKYFLAT and (frame.filter_name or "") != (
            master.filter_name
        ):
            continue
        if frame.last_error:
            reason = frame.last_error
        elif frame.state in (FrameState.PENDING, FrameState.READY, FrameState.PROCESSING):
            reason = ("not processed when the master was built (arrived later?), or left out "
                      "by `pylcogt stack` (its output said why)")
        else:
            reason = "not in this master"
        out.append(LeftOut(frame.id, frame.filename, frame.state.value, reason))
    return tuple(out)


def night_inventory(session: Session, night: dt.date, camera: str | None = None) -> NightInventory:
    """The masters and science frames of ``night`` (DAY-OBS), for one camera or all."""
    inventory = NightInventory(night=night, camera=camera)
    masters_q = (
        select(MasterCalibration)
        .join(Instrument, Instrument.id == MasterCalibration.instrument_id)
        .options(joinedload(MasterCalibration.instrument).joinedload(Instrument.site))
        .where(MasterCalibration.dayobs == night)
    )
    frames_q = (
        select(RawFrame)
        .join(Instrument, Instrument.id == RawFrame.instrument_id)
        .options(joinedload(RawFrame.instrument))
        .where(RawFrame.dayobs == night, RawFrame.obstype.in_(sorted(SCIENCE_OBSTYPES)))
    )
    if camera is not None:
        masters_q = masters_q.where(Instrument.camera == camera)
        frames_q = frames_q.where(Instrument.camera == camera)
    order = {"BIAS": 0, "DARK": 1, "SKYFLAT": 2, "BPM": 3}
    masters = sorted(
        session.scalars(masters_q).unique().all(),
        key=lambda m: (m.instrument.camera, order.get(m.obstype.value, 9), m.binning,
                       m.readout_mode, m.filter_name, m.dateobs, m.id),  # fmt: skip
    )
    for m in masters:
        prev = _previous(session, m)
        inventory.masters.append(
            MasterEntry(
                id=m.id,
                obstype=m.obstype.value,
                camera=m.instrument.camera,
                site=m.instrument.site.code,
                binning=m.binning,
                readout_mode=m.readout_mode,
                filter_name=m.filter_name,
                dayobs=m.dayobs,
                dateobs=m.dateobs,
                path=m.path,
                n_inputs=m.n_inputs,
                is_bad=m.is_bad,
                bad_reason=m.bad_reason,
                previous_id=prev.id if prev else None,
                previous_path=prev.path if prev else None,
                previous_dayobs=prev.dayobs if prev else None,
                left_out=_left_out(session, m),
                standing="bad" if m.is_bad else "superseded" if m.superseded_at else
                m.calibration_status.value,
                superseded_by=m.superseded_by_id,
            )
        )
    for f in session.scalars(frames_q.order_by(RawFrame.dateobs, RawFrame.id)).unique().all():
        done = f.state is FrameState.DONE and f.product_path
        inventory.frames.append(
            FrameEntry(
                id=f.id,
                filename=f.filename,
                camera=f.instrument.camera,
                obstype=f.obstype or "",
                object_name=f.object_name or "",
                filter_name=f.filter_name or "",
                exptime_s=f.exptime_s,
                dateobs=f.dateobs,
                state=f.state.value,
                product_path=f.product_path if done else None,
                reason=None if done else (f.last_error or f"state {f.state.value}"),
            )
        )
    cameras = {m.camera for m in inventory.masters} | {f.camera for f in inventory.frames}
    inventory.cameras = sorted(cameras)
    return inventory
