"""Provisional and final reductions on both databases, on a hand-made registry: what makes a
reduction final, what a master change re-queues or promotes, --no-rereduce, closed nights."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from pylcogt.db import migrate
from pylcogt.db.models import (
    CalibrationRole,
    CalibrationStatus,
    CalibrationType,
    CameraFamily,
    FrameState,
    Instrument,
    MasterCalibration,
    MasterJob,
    MasterJobStatus,
    RawFrame,
    Reduction,
    ReductionMaster,
    ReductionStatus,
    Site,
)
from pylcogt.db.session import get_sessionmaker
from pylcogt.nights import close_night, night_info
from pylcogt.recalibrate import reduction_status, refresh_due, refresh_reductions

NIGHT = dt.date(2026, 11, 28)  # at lsc (-70.8 deg): from 16:43 UTC on the 28th to the 29th
T0 = dt.datetime(2026, 11, 29, 3, 0)
DURING = dt.datetime(2026, 11, 29, 8, 0)  # the night goes on
AFTER = dt.datetime(2026, 11, 29, 18, 0)  # the night is over
P, F = CalibrationStatus.PROVISIONAL, CalibrationStatus.FINAL
_PATHS = itertools.count()
ROLE = {"BIAS": CalibrationRole.BIAS, "DARK": CalibrationRole.DARK,
        "SKYFLAT": CalibrationRole.FLAT}  # fmt: skip


@dataclass
class Night:
    session: Session
    instrument_id: int
    masters: dict[str, MasterCalibration]
    frame: RawFrame

    def master(self, obstype: str, status=P, night: dt.date = NIGHT, **kw) -> MasterCalibration:
        row = MasterCalibration(
            obstype=CalibrationType(obstype), instrument_id=self.instrument_id, binning="1x1",
            readout_mode="full_frame", filter_name="rp" if obstype == "SKYFLAT" else "",
            dayobs=night, dateobs=kw.pop("dateobs", T0 - dt.timedelta(hours=4)),
            version=kw.pop("version", 1), path=f"/m/{obstype}-{night}-{next(_PATHS)}.fits.fz",
            checksum=kw.pop("checksum", "c" * 64), n_inputs=5, calibration_status=status,
            created_at=T0 - dt.timedelta(hours=3), **kw,
        )  # fmt: skip
        self.session.add(row)
        self.session.flush()
        return row

    def reduce(self, masters: list[MasterCalibration], status=P) -> Reduction:
        """Record a current reduction of the science frame with these masters."""
        reduction = Reduction(frame_id=self.frame.id, status=ReductionStatus.CURRENT,
                              calibration_status=status, reason="first reduction",
                              finished_at=T0, product_path="/p/x-e91.fits.fz",
                              product_checksum="1" * 64)  # fmt: skip
        reduction.masters = [ReductionMaster(role=ROLE[m.obstype.value], master_id=m.id,
                                             master_checksum=m.checksum) for m in masters]
        self.session.add(reduction)
        self.session.flush()
        return reduction

    def refresh(self, now: dt.datetime, **kw):
        return refresh_reductions(self.session, instrument_id=self.instrument_id, binning="1x1",
                                  readout_mode="full_frame", now=now, **kw)  # fmt: skip

    def state(self) -> tuple[str, str | None]:
        self.session.expire_all()
        frame = self.session.get(RawFrame, self.frame.id)
        return frame.state.value, frame.redo_reason


@pytest.fixture
def night(db_url: str) -> Iterator[Night]:
    migrate.upgrade(db_url)
    with get_sessionmaker(db_url)() as session:
        site = Site(code="lsc", longitude_deg=-70.8)
        session.add(site)
        session.flush()
        inst = Instrument(site_id=site.id, enclosure="doma", telescope="1m0a", camera="fa15",
                          family=CameraFamily.SINISTRO, nx=4096, ny=4096, n_amplifiers=4)
        session.add(inst)
        session.flush()
        frame = RawFrame(path="/raw/x-e00.fits", filename="x-e00.fits", checksum="0" * 64,
                         file_size=1, state=FrameState.DONE, obstype="EXPOSE",
                         instrument_id=inst.id, dateobs=T0, dayobs=NIGHT, exptime_s=30.0,
                         filter_name="rp", binning="1x1", readout_mode="full_frame",
                         attempts=0, lease_token=1, product_path="/p/x-e91.fits.fz")  # fmt: skip
        session.add(frame)
        session.flush()
        n = Night(session, inst.id, {}, frame)
        yield n
        session.rollback()


def test_night_info_and_closures(night: Night) -> None:
    info = night_info(night.session, night.instrument_id, NIGHT)
    assert info.ends_at == dt.datetime(2026, 11, 29, 16, 43, 12) and info.closed_at is None
    assert not info.over(DURING) and info.over(AFTER)
    closed = close_night(night.session, NIGHT, reason="dome closed", now=DURING)
    assert closed == [("fa15", DURING, True)]
    again = close_night(night.session, NIGHT, cameras=["FA15"], now=DURING + dt.timedelta(1))
    assert again == [("fa15", DURING, False)]  # idempotent: the first closure stands
    assert night_info(night.session, night.instrument_id, NIGHT).over(DURING)
    with pytest.raises(LookupError, match="no instrument fa99"):
        close_night(night.session, NIGHT, cameras=["fa99"], now=DURING)


def test_a_reduction_is_final_only_after_its_night_with_final_masters(night: Night) -> None:
    masters = [night.master(t, F) for t in ("BIAS", "DARK", "SKYFLAT")]
    frame = night.frame
    assert reduction_status(night.session, frame, masters, DURING) is P  # the night goes on
    assert reduction_status(night.session, frame, masters, AFTER) is F
    masters[2].calibration_status = P
    assert reduction_status(night.session, frame, masters, AFTER) is P  # a provisional master
    masters[2].calibration_status = F
    # a flat frame of the night still to be stacked: its master may change
    night.session.add(RawFrame(path="/raw/f.fits", filename="f.fits", checksum="2" * 64,
                               file_size=1, state=FrameState.READY, obstype="SKYFLAT",
                               instrument_id=night.instrument_id, dateobs=T0, dayobs=NIGHT,
                               exptime_s=5.0, filter_name="rp", binning="1x1",
                               readout_mode="full_frame", attempts=0, lease_token=1))
    night.session.flush()
    assert reduction_status(night.session, frame, masters, AFTER) is P
    night.session.execute(sa.update(RawFrame).where(RawFrame.filename == "f.fits")
                          .values(filter_name="V"))  # another filter's flats do not matter
    assert reduction_status(night.session, frame, masters, AFTER) is F
    # another worker holding a built group's lease (to look at it) is not a build
    job = MasterJob(instrument_id=night.instrument_id, dayobs=NIGHT,
                    obstype=CalibrationType.DARK, binning="1x1", readout_mode="full_frame",
                    filter_name="", status=MasterJobStatus.BUILT, attempts=0, lease_token=1,
                    lease_owner="other:1", lease_expires_at=AFTER)  # fmt: skip
    night.session.add(job)
    night.session.flush()
    assert reduction_status(night.session, frame, masters, AFTER) is F
    # a master of the night due for a rebuild
    job.status = MasterJobStatus.STALE
    night.session.flush()
    assert reduction_status(night.session, frame, masters, AFTER) is P


def test_a_better_master_requeues_and_names_it(night: Night) -> None:
    bias, dark = night.master("BIAS"), night.master("DARK")
    old_flat = night.master("SKYFLAT", F, night=NIGHT - dt.timedelta(days=3),
                            dateobs=T0 - dt.timedelta(days=3))  # fmt: skip
    night.reduce([bias, dark, old_flat])
    assert night.refresh(DURING).requeued == {}  # nothing better: nothing redone
    assert night.state() == ("done", None)
    flat = night.master("SKYFLAT")  # tonight's flat
    result = night.refresh(DURING)
    assert list(result.requeued) == [night.frame.id]
    state, why = night.state()
    assert state == "pending"
    assert why == f"better calibration: flat master {old_flat.id} -> {flat.id} (provisional)"


def test_no_rereduce_keeps_provisional_products(night: Night) -> None:
    bias, dark = night.master("BIAS"), night.master("DARK")
    old_flat = night.master("SKYFLAT", F, night=NIGHT - dt.timedelta(days=3),
                            dateobs=T0 - dt.timedelta(days=3))  # fmt: skip
    night.reduce([bias, dark, old_flat])
    night.master("SKYFLAT")
    result = night.refresh(DURING, rereduce=False)
    assert result.requeued == {} and result.kept == [night.frame.id]
    assert night.state() == ("done", None)


def test_a_final_reduction_is_redone_when_its_master_is_replaced(night: Night) -> None:
    """Late frames after the night: a final master superseded by a new one (rereduce off too)."""
    bias, dark, flat = (night.master(t, F) for t in ("BIAS", "DARK", "SKYFLAT"))
    night.reduce([bias, dark, flat], status=F)
    flat.superseded_at = AFTER
    night.session.flush()
    new = night.master("SKYFLAT", F, version=2)
    result = night.refresh(AFTER, master_ids=[flat.id], rereduce=False)
    assert list(result.requeued) == [night.frame.id]
    assert night.state()[1] == f"better calibration: flat master {flat.id} -> {new.id} (final)"


def test_the_same_masters_made_final_promote_without_redoing(night: Night) -> None:
    masters = [night.master(t) for t in ("BIAS", "DARK", "SKYFLAT")]
    reduction = night.reduce(masters)
    assert night.refresh(AFTER).promoted == []  # the masters are still provisional
    for m in masters:
        m.calibration_status, m.finalized_at = F, AFTER
    night.session.flush()
    assert night.refresh(DURING).promoted == []  # final masters, but the night goes on
    result = night.refresh(AFTER)
    assert result.promoted == [reduction.id] and result.requeued == {}
    night.session.refresh(reduction)
    assert (reduction.calibration_status, reduction.finalized_at) == (F, AFTER)
    assert night.state() == ("done", None)


def test_refresh_due_finds_nights_over(night: Night) -> None:
    masters = [night.master(t, F) for t in ("BIAS", "DARK", "SKYFLAT")]
    reduction = night.reduce(masters)
    assert refresh_due(night.session, now=DURING).promoted == []
    close_night(night.session, NIGHT, now=DURING)
    # looked at after the close while something was unsettled: looked at again later
    night.session.add(RawFrame(path="/raw/b.fits", filename="b.fits", checksum="3" * 64,
                               file_size=1, state=FrameState.PROCESSING, obstype="BIAS",
                               instrument_id=night.instrument_id, dateobs=T0, dayobs=NIGHT,
                               exptime_s=0.0, filter_name="air", binning="1x1",
                               readout_mode="full_frame", attempts=0, lease_token=1))
    night.session.flush()
    assert refresh_due(night.session, now=DURING).promoted == []
    night.session.execute(sa.update(RawFrame).where(RawFrame.filename == "b.fits")
                          .values(state="done"))
    assert refresh_due(night.session, now=DURING).promoted == [reduction.id]


def test_refresh_due_does_not_keep_looking_at_kept_reductions(night: Night) -> None:
    bias, dark = night.master("BIAS", F), night.master("DARK", F)
    old_flat = night.master("SKYFLAT", F, night=NIGHT - dt.timedelta(days=3),
                            dateobs=T0 - dt.timedelta(days=3))  # fmt: skip
    night.reduce([bias, dark, old_flat])
    night.master("SKYFLAT", F)  # a better flat; re-reduction off
    assert refresh_due(night.session, now=AFTER, rereduce=False).kept == [night.frame.id]
    assert refresh_due(night.session, now=AFTER, rereduce=False).kept == []  # not again


def test_a_master_changed_during_a_reduction_is_noticed(night: Night) -> None:
    """The refresh a master triggers cannot see a reduction still being made: the worker asks
    afterwards whether any master of the mode changed since the reduction selected its own."""
    from pylcogt.recalibrate import masters_changed_since

    def changed(since: dt.datetime) -> bool:
        return masters_changed_since(night.session, instrument_id=night.instrument_id,
                                     binning="1x1", readout_mode="full_frame", since=since)

    bias = night.master("BIAS")  # created T0 - 3 h
    assert changed(T0 - dt.timedelta(hours=4)) and not changed(T0)
    bias.superseded_at = T0 + dt.timedelta(minutes=1)
    night.session.flush()
    assert changed(T0) and not changed(T0 + dt.timedelta(minutes=2))
    assert not masters_changed_since(night.session, instrument_id=night.instrument_id,
                                     binning="2x2", readout_mode="full_frame", since=T0)
