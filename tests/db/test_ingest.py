"""Ingest on both databases: idempotent, change-aware, and loud about bad files."""

from __future__ import annotations

import datetime as dt
import os
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
from pylcogt.io.raw_read import pixel_digest
from pylcogt.lifecycle import UsedMaster, record_reduction

from ..fitsmaker import replace_header_bytes, write_frame


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


def test_copy_of_a_frame_is_rejected_as_duplicate(maker, tmp_path: Path) -> None:
    """The same bytes are the same exposure, frame number or not: the copy is not registered
    a second time (it was, with a warning, before issue 14)."""
    a = write_frame(tmp_path / "a-b00.fits")
    b = tmp_path / "copy" / "a-b00.fits"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    report = ingest_paths(maker, [a, b])
    first, copy = report.results
    assert (first.status, copy.status) == ("new", "rejected")
    assert copy.duplicate_of == first.frame_id
    assert f"duplicate of the same bytes already registered as {first.path}" in copy.reason


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


# --- issue 14: hostile header values, one exposure once, one clock ------------------------
def _assert_one_line_reason(result, *words: str) -> None:
    assert result.status == "rejected", (result.path, result.status)
    reason = result.reason or ""
    assert "\n" not in reason and "Traceback" not in reason, reason
    for word in words:
        assert word in reason, (word, reason)


def _hostile_files(raw: Path) -> dict[str, tuple[str, ...] | None]:
    """Files with hostile header values, by name: the words their one-line rejection must
    hold, or None for a value stored in full. Written in this (name) order, with a good frame
    after each bad one."""
    cases: dict[str, tuple[str, ...] | None] = {}

    def frame(name: str, expect: tuple[str, ...] | None, **cards) -> Path:
        cases[name] = expect
        minute = len(cases)  # every file its own exposure (its own bytes)
        return write_frame(raw / name, DATE_OBS=f"2026-11-28T21:{minute:02d}:00", **cards)

    science = {"OBSTYPE": "EXPOSE", "EXPTIME": 30.0}
    frame("a01-filter40-e00.fits", None, FILTER="f" * 40, **science)
    frame("a02-filter200-e00.fits", ("FILTER", "200 characters", "at most 128"),
          FILTER="g" * 200, **science)  # fmt: skip
    frame("a03-filter5000-e00.fits", ("FILTER", "5000 characters", "fix the header"),
          FILTER="h" * 5000, **science)  # fmt: skip
    frame("a04-object5000-e00.fits", None, OBJECT="o" * 5000, **science)
    frame("a05-telescop5000-b00.fits", None, TELESCOP="t" * 5000, TELID="1m0z")  # new telescope
    frame("a06-confmode300-b00.fits", ("CONFMODE", "300 characters"), CONFMODE="c" * 300)
    frame("a07-instrume5000-b00.fits", ("INSTRUME",), INSTRUME="kb" + "7" * 4998)
    frame("a08-exptime-nan-e00.fits", ("EXPTIME", "not a finite number"), OBSTYPE="EXPOSE",
          EXPTIME="NaN", FILTER="rp")  # fmt: skip
    inf = frame("a09-exptime-inf-e00.fits", ("EXPTIME", "not a finite number"),
                OBSTYPE="EXPOSE", EXPTIME=12345.0, FILTER="rp")  # fmt: skip
    replace_header_bytes(inf, b"12345.0", b"1.0E999")  # astropy refuses to write inf
    frame("a10-gain-nan-b00.fits", ("GAIN", "not a finite number"), GAIN="nan")
    frame("a11-latitude-inf-b00.fits", ("LATITUDE", "not a finite number"), LATITUDE="inf")
    unquoted = frame("a11b-gain-nan-b00.fits", ("'GAIN'", "cannot be parsed"), GAIN=12345.0)
    replace_header_bytes(unquoted, b"12345.0", b"    NaN")  # not a FITS value at all
    frame("a12-ccdsum-b00.fits", ("CCDSUM", "not a binning"), CCDSUM="99999 99999")
    frame("a13-framenum-b00.fits", ("FRAMENUM", "not a frame number"), FRAMENUM="abc")
    # bytes astropy refuses to write: non-ASCII, a control character, NUL
    for name, placeholder, value, keyword in (
        ("a14-filter-utf8-e00.fits", "QQQQQQQQ", "é日本".encode(), "FILTER"),
        ("a15-object-bell-e00.fits", "QQQQQQQQ", b"ab\x07cdefg", "OBJECT"),
        ("a16-filter-nul-e00.fits", "QQQQQQQQ", b"r\x00\x00\x00\x00\x00\x00\x00", "FILTER"),
    ):
        path = frame(name, (keyword, "not printable ASCII"), **{**science, "FILTER": "rp",
                                                                 keyword: placeholder})  # fmt: skip
        replace_header_bytes(path, placeholder.encode(), value)
    # file names the registry stores as they are
    frame("é-日本-b00.fits", None)
    frame("bell\x07-b00.fits", None)
    return cases


def test_hostile_header_values_never_stop_the_batch(maker, tmp_path: Path) -> None:
    """Long, non-ASCII, control-character, NUL and NaN/inf values: each bad file is rejected
    with a one-line reason naming the keyword, long free text is stored in full, and every good
    file after a bad one is registered (PostgreSQL refused a 40-character FILTER before)."""
    raw = tmp_path / "raw"
    cases = _hostile_files(raw)
    goods = [write_frame(raw / f"{name}-good-b00.fits", DATE_OBS=f"2026-11-28T22:{i:02d}:00")
             for i, name in enumerate(cases)]  # fmt: skip
    report = ingest_paths(maker, [raw])
    results = _by_name(report)
    assert len(report.results) == len(cases) + len(goods)
    for good in goods:
        assert results[good.name].status == "new", results[good.name]
    for name, expect in cases.items():
        if expect is None:
            assert results[name].status == "new", results[name]
        else:
            _assert_one_line_reason(results[name], *expect)
    with maker() as session:
        frames = {f.filename: f for f in session.scalars(select(RawFrame))}
        assert frames["a01-filter40-e00.fits"].filter_name == "f" * 40
        assert frames["a04-object5000-e00.fits"].object_name == "o" * 5000
        assert frames["é-日本-b00.fits"].state is FrameState.PENDING
        telescopes = {i.telescope_name for i in session.scalars(select(Instrument))}
        assert "t" * 5000 in telescopes
        errors = [f.last_error for f in frames.values() if f.last_error]
        assert errors and not any("Traceback" in e or "\n" in e for e in errors)
    # and nothing changes the second time
    again = ingest_paths(maker, [raw])
    assert again.counts()["unchanged"] == len(report.results)


def test_a_long_filter_can_have_its_master(maker, tmp_path: Path) -> None:
    """A 40-character FILTER and CONFMODE fit the master tables too (String(32) before)."""
    from pylcogt.db.models import MasterJob

    long_filter, long_mode = "SDSS-r-prime-with-neutral-density-2.0-ND" + "x", "m" * 40
    path = write_frame(tmp_path / "f-f00.fits", OBSTYPE="SKYFLAT", EXPTIME=3.0,
                       FILTER=long_filter, CONFMODE=long_mode)  # fmt: skip
    (result,) = ingest_paths(maker, [path]).results
    assert result.status == "new"
    with maker() as session:
        frame = session.get(RawFrame, result.frame_id)
        key = {"instrument_id": frame.instrument_id, "binning": "2x2", "dayobs": frame.dayobs,
               "readout_mode": long_mode, "filter_name": long_filter}  # fmt: skip
        session.add(MasterJob(obstype=CalibrationType.SKYFLAT, **key))
        session.add(MasterCalibration(obstype=CalibrationType.SKYFLAT, dateobs=frame.dateobs,
                                      path="/m/flat.fits.fz", checksum="0" * 64, n_inputs=3,
                                      **key))  # fmt: skip
        session.commit()
        stored = session.scalars(select(MasterCalibration.filter_name)).one()
    assert stored == long_filter


def test_a_path_the_registry_cannot_store_is_reported_and_the_batch_goes_on(
    maker, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    undecodable = Path(os.fsdecode(str(raw).encode() + b"/bad\xff-b00.fits"))
    write_frame(undecodable)
    after = write_frame(raw / "z-b00.fits", DATE_OBS="2026-11-28T22:00:00")
    results = _by_name(ingest_paths(maker, [raw]))
    (bad,) = [r for r in results.values() if "bad" in r.path]
    _assert_one_line_reason(bad, "not valid UTF-8", "rename the file")
    assert bad.frame_id is None and "\\xff" in bad.path  # printable, not recorded
    assert results[after.name].status == "new"


def test_a_value_the_database_refuses_rejects_that_file_only(
    maker, db_url: str, tmp_path: Path, monkeypatch
) -> None:
    """Past ingest's own checks (the key limit raised for the test), a FILTER of 5000 random
    characters does not fit in a PostgreSQL index entry: the database's error rejects that
    file (rolled back alone) and the next file is registered. SQLite has no such limit."""
    import random
    import string

    from pylcogt.io import raw_header

    monkeypatch.setattr(raw_header, "MAX_KEY_CHARS", 100_000)
    rng = random.Random(14)
    hostile = "".join(rng.choice(string.ascii_letters) for _ in range(5000))
    bad = write_frame(tmp_path / "a-e00.fits", OBSTYPE="EXPOSE", EXPTIME=30.0, FILTER=hostile)
    good = write_frame(tmp_path / "b-e00.fits", OBSTYPE="EXPOSE", EXPTIME=30.0, FILTER="rp")
    results = _by_name(ingest_paths(maker, [bad, good]))
    assert results["b-e00.fits"].status == "new"
    if db_url.startswith("postgresql"):
        _assert_one_line_reason(results["a-e00.fits"], "the registry refused its values",
                                "index row size")  # fmt: skip
        with maker() as session:
            row = repo.frame_by_path(session, str(bad.resolve()))
            assert row.state is FrameState.REJECTED and row.filter_name is None
    else:
        assert results["a-e00.fits"].status == "new"


def test_a_constraint_violation_rejects_that_file_only(maker, tmp_path: Path, monkeypatch) -> None:
    """An integrity error that retrying does not cure (here: the duplicate check switched off,
    so the unique exposure index refuses the copy) rejects the one file, with the reason."""
    from pylcogt import ingest

    monkeypatch.setattr(ingest, "_exposure_holder", lambda *args: None)
    first = write_frame(tmp_path / "a-b00.fits", FRAMENUM=7)
    copy = tmp_path / "copy" / "a-b00.fits"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    after = write_frame(tmp_path / "z-b00.fits", FRAMENUM=8)
    report = ingest_paths(maker, [first, copy, after])
    assert [r.status for r in report.results] == ["new", "rejected", "new"]
    _assert_one_line_reason(report.results[1], "the registry refused its values")


def _exposure(raw: Path, name: str, **cards) -> Path:
    base = {"FRAMENUM": 42, "ORIGNAME": "lsc1m005-kb78-20261128-0042-b00.fits"}
    return write_frame(raw / name, **{**base, **cards})


def test_one_exposure_is_registered_once(maker, tmp_path: Path, monkeypatch) -> None:
    """x.fits, x.fits.fz and a copy of x.fits are one exposure: registered once, the others
    rejected as duplicates naming the first; a file whose pixels (or header facts) differ under
    the same key is a conflict, reported apart; a genuinely new exposure is registered."""
    from pylcogt import ingest

    digests: list[str] = []

    def counting_digest(path):
        digests.append(Path(path).name)
        return pixel_digest(path)

    monkeypatch.setattr(ingest, "pixel_digest", counting_digest)
    raw = tmp_path / "raw"
    first = _exposure(raw / "a", "x.fits")
    _exposure(raw / "b", "x.fits.fz", compress="fz")
    (raw / "c").mkdir()
    (raw / "c" / "x.fits").write_bytes(first.read_bytes())
    _exposure(raw / "d", "x.fits", value=999)  # same key, other pixels
    _exposure(raw / "e", "x.fits", EXPTIME=0.5)  # same key, other header facts
    _exposure(raw / "f", "y.fits", FRAMENUM=43, DATE_OBS="2026-11-28T21:01:00")
    # no FRAMENUM: the frame number of ORIGNAME
    origname = {"drop": ("FRAMENUM",), "ORIGNAME": "lsc1m005-kb78-20261128-0050-b00.fits",
                "DATE_OBS": "2026-11-28T21:02:00"}  # fmt: skip
    _exposure(raw / "g", "z.fits", **origname)
    _exposure(raw / "h", "z.fits.fz", compress="fz", **origname)

    report = ingest_paths(maker, [raw])
    by_dir = {Path(r.path).parent.name + "/" + Path(r.path).name: r for r in report.results}
    x = by_dir["a/x.fits"]
    assert x.status == "new" and x.state == "pending"
    key = "lsc/kb78/20261128/0042"
    for name in ("b/x.fits.fz", "c/x.fits"):
        dup = by_dir[name]
        _assert_one_line_reason(dup, f"duplicate of exposure {key} already registered as "
                                     f"{x.path} (frame {x.frame_id})")  # fmt: skip
        assert dup.duplicate_of == x.frame_id and dup.conflicts_with is None
    pixels = by_dir["d/x.fits"]
    _assert_one_line_reason(pixels, f"conflicts with {x.path}", "same exposure key",
                            "different pixels", "an operator must decide which is right")
    facts = by_dir["e/x.fits"]
    _assert_one_line_reason(facts, "different header facts", "exptime_s 0.5 vs 0.0",
                            "an operator must decide")  # fmt: skip
    assert pixels.conflicts_with == facts.conflicts_with == x.frame_id
    assert by_dir["f/y.fits"].status == "new"
    assert by_dir["g/z.fits"].status == "new"
    assert by_dir["h/z.fits.fz"].duplicate_of == by_dir["g/z.fits"].frame_id
    assert [r.path for r in report.conflicts()] == [pixels.path, facts.path]
    as_json = report.to_json()
    assert [c["conflicts_with"] for c in as_json["conflicts"]] == [x.frame_id, x.frame_id]
    # pixels were decoded only for the keys that collided with other bytes (fz, conflict)
    assert sorted(digests) == ["x.fits", "x.fits", "x.fits", "x.fits.fz", "z.fits",
                               "z.fits.fz"]  # fmt: skip

    with maker() as session:
        registered = session.scalars(
            select(RawFrame).where(RawFrame.state != FrameState.REJECTED)).all()  # fmt: skip
        assert sorted((f.exposure_key or "") for f in registered) == [
            key, "lsc/kb78/20261128/0043", "lsc/kb78/20261128/0050"]  # fmt: skip

    # idempotent: nothing happens the second time
    digests.clear()
    again = ingest_paths(maker, [raw])
    assert again.counts() == {"new": 0, "unchanged": 8, "updated": 0, "rejected": 0,
                              "ignored": 0}  # fmt: skip
    assert digests == []
    # the registered file itself changed at its path: updated, as before (its copies, all
    # rejected, do not hold the exposure)
    _exposure(raw / "a", "x.fits", value=1234)
    (changed,) = ingest_paths(maker, [first]).results
    assert (changed.status, changed.state) == ("updated", "pending")


def test_normal_ingest_decodes_no_pixels(maker, tmp_path: Path, monkeypatch) -> None:
    from pylcogt import ingest

    def forbidden(path):
        raise AssertionError(f"pixels of {path} decoded without a collision")

    monkeypatch.setattr(ingest, "pixel_digest", forbidden)
    for i in range(3):
        _exposure(tmp_path, f"f{i}.fits", FRAMENUM=i, DATE_OBS=f"2026-11-28T21:0{i}:00")
    assert ingest_paths(maker, [tmp_path]).counts()["new"] == 3


class _MachineClockBehind(dt.datetime):
    """``datetime`` on a machine whose clock is ten years behind."""

    @classmethod
    def now(cls, tz=None):
        return dt.datetime.now(tz) - dt.timedelta(days=3650)


def test_ingest_stamps_the_registrys_clock(maker, db_url: str, tmp_path: Path,
                                           monkeypatch) -> None:  # fmt: skip
    """A host whose clock is far behind must not make a group complete early: ingested_at and
    updated_at (quiet time) come from the database server (on SQLite, one machine by design,
    from this machine: the registry's clock either way)."""
    import types

    from pylcogt.db import models
    from pylcogt.db.clock import db_now
    from pylcogt.watch import known_unchanged

    shim = types.SimpleNamespace(datetime=_MachineClockBehind, timezone=dt.timezone,
                                 timedelta=dt.timedelta, date=dt.date)  # fmt: skip
    monkeypatch.setattr(models, "dt", shim)
    machine = models.utcnow()
    assert (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - machine).days >= 3649
    path = write_frame(tmp_path / "raw" / "a-b00.fits")
    ingest_paths(maker, [path])
    with maker() as session:
        registry = db_now(session)
        frame = session.scalars(select(RawFrame)).one()
        inst = session.scalars(select(Instrument)).one()
        stamps = [frame.ingested_at, frame.updated_at, inst.created_at, inst.site.created_at]
    assert all(abs((s - registry).total_seconds()) < 60 for s in stamps), (stamps, registry)
    if db_url.startswith("postgresql"):  # the server's clock, not the machine's
        assert all((s - machine).days >= 3649 for s in stamps)
    # the watcher compares modification times with ingested_at in this machine's clock
    ((size, local),) = known_unchanged(maker, [tmp_path / "raw"]).values()
    assert size == path.stat().st_size and abs((local - machine).total_seconds()) < 60
