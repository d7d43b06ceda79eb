"""Ingest on both databases: idempotent, change-aware, and loud about bad files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pylcogt.db import migrate, repo
from pylcogt.db.models import (
    CalibrationStatus,
    CalibrationType,
    FrameState,
    Instrument,
    MasterCalibration,
    RawFrame,
    Reduction,
    ReductionStatus,
    Site,
)
from pylcogt.db.session import get_sessionmaker
from pylcogt.ingest import ingest_paths
from pylcogt.lifecycle import UsedMaster, record_reduction

from ..fitsmaker import write_frame


@pytest.fixture
def maker(db_url: str):
    migrate.upgrade(db_url)
    return get_sessionmaker(db_url)


def _by_name(report) -> dict[str, object]:
    return {Path(r.path).name: r for r in report.results}


def test_ingest_registers_frames_and_instruments(maker, tmp_path: Path) -> None:
    tmp_path = tmp_path / "raw"  # the SQLite registry sits in tmp_path itself
    write_frame(tmp_path / "a-b00.fits")
    write_frame(
        tmp_path / "sub" / "a-e00.fits.fz",
        compress="fz",
        OBSTYPE="EXPOSE",
        EXPTIME=30.0,
        FILTER="rp",
        DATE_OBS="2026-11-29T03:00:00",
    )
    write_frame(tmp_path / "a-d00.fits.gz", compress="gz", OBSTYPE="DARK", EXPTIME=300.0)
    write_frame(
        tmp_path / "fa-e00.fits",
        mef=True,
        INSTRUME="fa15",
        OBSTYPE="EXPOSE",
        EXPTIME=10.0,
        FILTER="V",
        CCDSUM="1 1",
        CONFMODE="full_frame",
    )
    (tmp_path / "notes.txt").write_text("not a frame")

    report = ingest_paths(maker, [tmp_path])
    assert report.counts() == {"new": 4, "unchanged": 0, "updated": 0, "rejected": 0, "ignored": 1}

    with maker() as session:
        frames = {f.filename: f for f in session.scalars(select(RawFrame))}
        assert set(frames) == {"a-b00.fits", "a-e00.fits.fz", "a-d00.fits.gz", "fa-e00.fits"}
        science = frames["a-e00.fits.fz"]
        assert science.state is FrameState.PENDING
        assert science.obstype == "EXPOSE"
        assert science.dateobs == dt.datetime(2026, 11, 29, 3, 0, 0)
        assert science.dayobs == dt.date(2026, 11, 28)
        assert science.exptime_s == 30.0
        assert science.filter_name == "rp"
        assert science.binning == "2x2"
        assert len(science.checksum) == 64
        assert frames["a-d00.fits.gz"].exptime_s == 300.0

        instruments = {i.camera: i for i in session.scalars(select(Instrument))}
        assert set(instruments) == {"kb78", "fa15"}
        assert instruments["kb78"].family.value == "sbig"
        assert (instruments["kb78"].nx, instruments["kb78"].n_amplifiers) == (
            128,
            1,
        )  # 64 binned 2x2
        assert instruments["fa15"].family.value == "sinistro"
        assert (instruments["fa15"].nx, instruments["fa15"].n_amplifiers) == (4096, 4)
        site = session.scalars(select(Site)).one()
        assert (site.code, site.longitude_deg) == ("lsc", pytest.approx(-70.8049))
        assert frames["fa-e00.fits"].readout_mode == "full_frame"


def test_second_ingest_changes_nothing(maker, tmp_path: Path) -> None:
    tmp_path = tmp_path / "raw"
    for i in range(3):
        write_frame(tmp_path / f"f{i}-b00.fits", DATE_OBS=f"2026-11-28T21:0{i}:00")
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  =  this is not FITS")
    first = ingest_paths(maker, [tmp_path])
    assert first.counts()["new"] == 3 and first.counts()["rejected"] == 1
    with maker() as session:
        before = {
            f.id: (f.state, f.updated_at, f.ingested_at) for f in session.scalars(select(RawFrame))
        }

    second = ingest_paths(maker, [tmp_path])
    assert second.counts() == {"new": 0, "unchanged": 4, "updated": 0, "rejected": 0, "ignored": 0}
    with maker() as session:
        after = {
            f.id: (f.state, f.updated_at, f.ingested_at) for f in session.scalars(select(RawFrame))
        }
        assert session.scalar(select(func.count()).select_from(Instrument)) == 1
    assert after == before
    broken = [r for r in second.results if r.path.endswith("broken.fits")][0]
    assert broken.state == "rejected" and "not a standard FITS file" in broken.reason


def test_changed_content_is_reregistered_and_reset(maker, tmp_path: Path) -> None:
    path = write_frame(tmp_path / "x-e00.fits", OBSTYPE="EXPOSE", EXPTIME=10.0, FILTER="V")
    ingest_paths(maker, [path])
    with maker() as session:
        frame = session.scalars(select(RawFrame)).one()
        frame.state = FrameState.DONE
        frame.attempts = 2
        frame.product_path = "/products/x-e91.fits"
        inst = session.get(Instrument, frame.instrument_id)
        master = MasterCalibration(
            obstype=CalibrationType.BIAS,
            instrument=inst,
            binning="2x2",
            dayobs=dt.date(2026, 11, 28),
            dateobs=dt.datetime(2026, 11, 28, 21),
            path="/m/bias.fits",
            checksum="0" * 64,
            n_inputs=5,
        )
        session.add(master)
        session.flush()
        record_reduction(session, frame_id=frame.id, masters=[UsedMaster("bias", master.id,
                         master.checksum)], product_path=frame.product_path,
                         product_checksum="1" * 64, calibration_status=CalibrationStatus.FINAL,
                         reason="first reduction", started_at=None, now=dt.datetime(2026, 11, 29),
                         pipeline_version="test")  # fmt: skip
        session.commit()
        old_checksum, frame_id, master_id = frame.checksum, frame.id, master.id

    write_frame(path, OBSTYPE="EXPOSE", EXPTIME=20.0, FILTER="V", value=1234)
    report = ingest_paths(maker, [path])
    assert [r.status for r in report.results] == ["updated"]
    with maker() as session:
        frame = session.get(RawFrame, frame_id)
        assert frame.checksum != old_checksum
        assert frame.exptime_s == 20.0
        assert (frame.state, frame.attempts, frame.product_path) == (FrameState.PENDING, 0, None)
        # the reduction made from the old content is history now, not deleted
        (reduction,) = session.scalars(select(Reduction)).all()
        assert reduction.status is ReductionStatus.SUPERSEDED and reduction.superseded_at
        assert [m.master_id for m in reduction.masters] == [master_id]
        assert session.scalar(select(func.count()).select_from(RawFrame)) == 1


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"drop": ("OBSTYPE",)}, "required keyword OBSTYPE is missing"),
        ({"drop": ("DATE-OBS",)}, "required keyword DATE-OBS is missing"),
        ({"OBSTYPE": "GUIDE"}, "OBSTYPE 'GUIDE' is not reduced"),
        ({"INSTRUME": "ef12"}, "INSTRUME 'ef12' is not a known camera family"),
        ({"DATE_OBS": "yesterday"}, "DATE-OBS 'yesterday' is not an ISO 8601"),
        ({"DAY_OBS": "2026-11-28"}, "DAY-OBS '2026-11-28' is not a night"),
        ({"OBSTYPE": "DARK", "EXPTIME": 0.0}, "EXPTIME = 0.0 s is not valid for a DARK"),
        ({"CCDSUM": "2x2"}, "CCDSUM '2x2' is not of the form"),
    ],
)
def test_bad_header_is_rejected_with_reason(maker, tmp_path: Path, kwargs, reason) -> None:
    good = write_frame(tmp_path / "good-b00.fits")
    bad = write_frame(tmp_path / "bad-b00.fits", **kwargs)
    report = ingest_paths(maker, [good, bad])
    results = _by_name(report)
    assert results["good-b00.fits"].status == "new"
    assert results["bad-b00.fits"].status == "rejected"
    assert reason in results["bad-b00.fits"].reason
    assert "bad-b00.fits" in results["bad-b00.fits"].reason
    with maker() as session:
        row = repo.frame_by_path(session, str(bad.resolve()))
        assert row.state is FrameState.REJECTED and reason in row.last_error


def test_truncated_files_are_rejected_and_the_batch_goes_on(maker, tmp_path: Path) -> None:
    tmp_path = tmp_path / "raw"
    whole = write_frame(tmp_path / "a-b00.fits")
    cut = write_frame(tmp_path / "b-b00.fits")
    cut.write_bytes(cut.read_bytes()[:-100])
    cut_fz = write_frame(tmp_path / "c-b00.fits.fz", compress="fz")
    cut_fz.write_bytes(cut_fz.read_bytes()[:-3000])
    cut_gz = write_frame(tmp_path / "d-b00.fits.gz", compress="gz")
    cut_gz.write_bytes(cut_gz.read_bytes()[:-20])
    (tmp_path / "e-b00.fits").write_bytes(b"")
    report = ingest_paths(maker, [tmp_path])
    results = _by_name(report)
    assert results[whole.name].status == "new"
    for name in ("b-b00.fits", "c-b00.fits.fz", "d-b00.fits.gz", "e-b00.fits"):
        assert results[name].status == "rejected", name
        assert results[name].reason
    with maker() as session:
        assert repo.list_frames(session, state="rejected")[0].last_error
        assert len(repo.list_frames(session, state="rejected")) == 4
        assert len(repo.list_frames(session, state="pending")) == 1


def test_fixed_file_recovers_from_rejection(maker, tmp_path: Path) -> None:
    path = write_frame(tmp_path / "a-b00.fits", drop=("DAY-OBS",))
    assert ingest_paths(maker, [path]).results[0].status == "rejected"
    write_frame(path)
    result = ingest_paths(maker, [path]).results[0]
    assert (result.status, result.state, result.reason) == ("updated", "pending", None)


def test_copy_of_a_frame_is_flagged_as_duplicate(maker, tmp_path: Path) -> None:
    a = write_frame(tmp_path / "a-b00.fits")
    b = tmp_path / "copy" / "a-b00.fits"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    report = ingest_paths(maker, [a, b])
    assert report.results[1].duplicate_of == report.results[0].frame_id


def test_list_frames_filters(maker, tmp_path: Path) -> None:
    tmp_path = tmp_path / "raw"
    write_frame(tmp_path / "a-b00.fits")
    write_frame(tmp_path / "b-e00.fits", OBSTYPE="EXPOSE", EXPTIME=5.0, FILTER="V")
    write_frame(
        tmp_path / "c-e00.fits",
        OBSTYPE="EXPOSE",
        EXPTIME=5.0,
        FILTER="V",
        DAY_OBS="20261127",
        DATE_OBS="2026-11-27T23:00:00",
    )
    ingest_paths(maker, [tmp_path])
    with maker() as session:
        assert len(repo.list_frames(session, obstype="expose")) == 2
        assert len(repo.list_frames(session, night=dt.date(2026, 11, 27))) == 1
        assert len(repo.list_frames(session, instrument="KB78")) == 3
        assert repo.list_frames(session, instrument="fa01") == []
        assert [f.filename for f in repo.list_frames(session)][0] == "c-e00.fits"  # oldest first
        ((inst, n),) = repo.list_instruments(session)
        assert (inst.camera, n) == ("kb78", 3)
