"""Calibration selection on both databases: matching, time rules, ties, as-of, errors, plans."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from pylcogt.calibrations.select import (
    RULES,
    Selection,
    TimeRule,
    select_master,
    select_masters_for_frame,
)
from pylcogt.db import migrate
from pylcogt.db.models import (
    CalibrationRole,
    CalibrationType,
    CameraFamily,
    FrameState,
    Instrument,
    MasterCalibration,
    RawFrame,
    Site,
)
from pylcogt.db.session import dispose_engines, get_engine, get_sessionmaker
from pylcogt.errors import CalibrationNotFoundError

T0 = dt.datetime(2026, 11, 29, 3, 0, 0)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)
BIAS, DARK, FLAT, BPM = (
    CalibrationType.BIAS,
    CalibrationType.DARK,
    CalibrationType.SKYFLAT,
    CalibrationType.BPM,
)
CLOSEST_TYPES = [BIAS, DARK, BPM]
_nights = itertools.count()
_paths = itertools.count()


def night_of(t: dt.datetime) -> dt.date:
    """The tests' night rule: a night runs from noon to noon UTC."""
    return (t.replace(tzinfo=None) - 12 * H).date() if t.tzinfo is None else night_of(
        t.astimezone(dt.timezone.utc).replace(tzinfo=None))


def _fake_night() -> dt.date:
    return dt.date(2000, 1, 1) + dt.timedelta(days=next(_nights))


@dataclass
class Registry:
    session: Session
    fa03: int  # camera fa03 on lsc 1m0a doma
    fa04: int  # a second camera on the same telescope

    def add(
        self,
        obstype: CalibrationType,
        dateobs: dt.datetime,
        *,
        instrument_id: int | None = None,
        binning: str = "1x1",
        readout_mode: str = "full_frame",
        filter_name: str | None = None,
        is_bad: bool = False,
        created_at: dt.datetime | None = None,
        dayobs: dt.date | None = None,
        bad_at: dt.datetime | None = None,
    ) -> MasterCalibration:
        if filter_name is None:
            filter_name = "rp" if obstype is FLAT else ""
        if dayobs is None:
            # flats are chosen by night (the test convention: a night ends at noon UTC); the
            # closest-in-time types never read dayobs: a distinct night per master keeps these
            # hand-made registries legal under "one current master per night and group"
            dayobs = night_of(dateobs) if obstype is FLAT else _fake_night()
        master = MasterCalibration(
            obstype=obstype,
            instrument_id=self.fa03 if instrument_id is None else instrument_id,
            binning=binning,
            readout_mode=readout_mode,
            filter_name=filter_name,
            dayobs=dayobs,
            dateobs=dateobs,
            path=f"/masters/{next(_paths)}.fits",
            checksum="0" * 64,
            is_bad=is_bad,
            bad_at=bad_at if bad_at is not None or not is_bad else dateobs + 7 * H,
            n_inputs=5,
            created_at=created_at or dateobs + 6 * H,
        )
        self.session.add(master)
        self.session.flush()
        return master

    def select(self, obstype: CalibrationType | str, dateobs: dt.datetime, **kw) -> Selection:
        options = {
            "instrument_id": self.fa03,
            "binning": "1x1",
            "readout_mode": "full_frame",
            "filter_name": "rp",
            "dayobs": night_of(dateobs),
        }
        options.update(kw)
        return select_master(self.session, obstype=obstype, dateobs=dateobs, **options)


def _instruments(session: Session, n: int = 2) -> list[int]:
    site = Site(code="lsc", name="Cerro Tololo")
    session.add(site)
    session.flush()
    instruments = [
        Instrument(
            site_id=site.id,
            enclosure="doma",
            telescope="1m0a",
            camera=f"fa{3 + i:02d}",
            family=CameraFamily.SINISTRO,
            nx=4096,
            ny=4096,
            n_amplifiers=4,
        )
        for i in range(n)
    ]
    session.add_all(instruments)
    session.flush()
    return [i.id for i in instruments]


@pytest.fixture
def reg(db_url: str) -> Iterator[Registry]:
    migrate.upgrade(db_url)
    with get_sessionmaker(db_url)() as session:
        fa03, fa04 = _instruments(session)
        yield Registry(session, fa03, fa04)
        session.rollback()


def test_rules_cover_every_type() -> None:
    assert set(RULES) == set(CalibrationType)
    for obstype, rule in RULES.items():
        assert rule.obstype is obstype
        assert {"instrument_id", "binning", "readout_mode"} <= set(rule.match)
        assert rule.matches_filter is (obstype is FLAT)
        expected = TimeRule.NIGHT if obstype is FLAT else TimeRule.CLOSEST
        assert rule.time_rule is expected


# --- time rules ---------------------------------------------------------------------------
@pytest.mark.parametrize("obstype", CLOSEST_TYPES)
def test_closest_picks_nearer_of_before_and_after(reg: Registry, obstype) -> None:
    early = reg.add(obstype, T0 - 3 * H)
    late = reg.add(obstype, T0 + 1 * H)
    chosen = reg.select(obstype, T0)
    assert chosen.master.id == late.id and not chosen.fallback_later
    assert chosen.rule.time_rule is TimeRule.CLOSEST
    assert reg.select(obstype, T0 - 2 * H).master.id == early.id
    assert reg.select(obstype, T0 - 10 * D).master.id == early.id  # only later ones exist
    assert reg.select(obstype, T0 + 10 * D).master.id == late.id


@pytest.mark.parametrize("obstype", CLOSEST_TYPES)
def test_closest_equal_distance_prefers_earlier(reg: Registry, obstype) -> None:
    late = reg.add(obstype, T0 + 2 * H)  # registered first: ids do not decide this tie
    early = reg.add(obstype, T0 - 2 * H)
    assert reg.select(obstype, T0).master.id == early.id
    assert reg.select(obstype, T0 + dt.timedelta(microseconds=1)).master.id == late.id


def test_equal_dateobs_prefers_highest_id(reg: Registry) -> None:
    before = [reg.add(BIAS, T0 - 1 * H) for _ in range(3)]
    assert reg.select(BIAS, T0).master.id == max(m.id for m in before)
    after = [reg.add(BIAS, T0 + 5 * D, instrument_id=reg.fa04) for _ in range(3)]
    chosen = reg.select(BIAS, T0 + 4 * D, instrument_id=reg.fa04)  # only later ones
    assert chosen.master.id == max(m.id for m in after)
    exact = [reg.add(BIAS, T0 + 10 * D) for _ in range(2)]  # dateobs == frame time
    assert reg.select(BIAS, T0 + 10 * D).master.id == max(m.id for m in exact)


def test_flat_of_the_frames_night_wins_even_when_taken_after_it(reg: Registry) -> None:
    old = reg.add(FLAT, T0 - 5 * D)
    reg.add(FLAT, T0 + 1 * D)  # the next night's: closer in time than `old`, never before it
    chosen = reg.select(FLAT, T0)
    assert chosen.master.id == old.id and not chosen.fallback_later
    assert chosen.rule.time_rule is TimeRule.NIGHT
    assert chosen.rule.role is CalibrationRole.FLAT
    # tonight's flat (evening and morning frames together: dated after this 03:00 frame)
    tonight = reg.add(FLAT, T0 + 2 * H)
    assert tonight.dayobs == night_of(T0)
    chosen = reg.select(FLAT, T0)
    assert chosen.master.id == tonight.id and not chosen.fallback_later
    # every frame of tonight, evening or morning, gets it; the next night keeps its own
    assert reg.select(FLAT, T0 - 8 * H).master.id == tonight.id
    assert reg.select(FLAT, T0 + 8 * H).master.id == tonight.id
    assert reg.select(FLAT, T0 + 1 * D).master.id != tonight.id


def test_flat_falls_back_to_earliest_later_night_with_flag(reg: Registry) -> None:
    reg.add(FLAT, T0 + 2 * D)
    first_later = reg.add(FLAT, T0 + 1 * D)
    reg.add(FLAT, T0 - 1 * D, is_bad=True)
    chosen = reg.select(FLAT, T0)
    assert chosen.master.id == first_later.id
    assert chosen.fallback_later is True


def test_flat_needs_the_frames_night(reg: Registry) -> None:
    reg.add(FLAT, T0)
    with pytest.raises(ValueError, match="DAY-OBS"):
        reg.select(FLAT, T0, dayobs=None)


def _supersede(reg: Registry, old: MasterCalibration, new: MasterCalibration,
               when: dt.datetime) -> None:  # fmt: skip
    old.superseded_at, old.superseded_by_id = when, new.id
    reg.session.flush()


@pytest.mark.parametrize("obstype", [BIAS, FLAT])
def test_superseded_masters_are_skipped_but_seen_as_of_before(reg: Registry, obstype) -> None:
    night = night_of(T0)
    first = reg.add(obstype, T0 - 2 * H, created_at=T0 + 1 * H, dayobs=night)
    first.superseded_at = T0 + 9 * H  # (a rebuild with the morning frames comes)
    reg.session.flush()
    second = reg.add(obstype, T0 + 1 * H, created_at=T0 + 9 * H, dayobs=night)
    _supersede(reg, first, second, T0 + 9 * H)
    assert reg.select(obstype, T0).master.id == second.id
    # the registry as it stood: before the rebuild the first master, after it the second
    assert reg.select(obstype, T0, as_of=T0 + 5 * H).master.id == first.id
    assert reg.select(obstype, T0, as_of=T0 + 9 * H).master.id == first.id  # strictly before
    assert reg.select(obstype, T0, as_of=T0 + 10 * H).master.id == second.id
    with pytest.raises(CalibrationNotFoundError):
        reg.select(obstype, T0, as_of=T0 + 1 * H)


def test_as_of_sees_masters_marked_bad_later(reg: Registry) -> None:
    older = reg.add(BIAS, T0 - 1 * D)
    bias = reg.add(BIAS, T0, created_at=T0 + 1 * H, is_bad=True, bad_at=T0 + 5 * H)
    assert reg.select(BIAS, T0).master.id == older.id
    assert reg.select(BIAS, T0, as_of=T0 + 4 * H).master.id == bias.id
    assert reg.select(BIAS, T0, as_of=T0 + 6 * H).master.id == older.id
    # bad before revision 0007 recorded no time: bad all along
    bias.bad_at = None
    reg.session.flush()
    assert reg.select(BIAS, T0, as_of=T0 + 4 * H).master.id == older.id


# --- matching -----------------------------------------------------------------------------
@pytest.mark.parametrize("obstype", [BIAS, DARK, FLAT, BPM])
def test_bad_masters_are_skipped(reg: Registry, obstype) -> None:
    good = reg.add(obstype, T0 - 2 * D)
    reg.add(obstype, T0 - 1 * H, is_bad=True)
    reg.add(obstype, T0, is_bad=True)
    reg.add(obstype, T0 + 1 * H, is_bad=True)
    assert reg.select(obstype, T0).master.id == good.id
    good.is_bad = True
    reg.session.flush()
    with pytest.raises(CalibrationNotFoundError, match=f"no good {obstype.value} master"):
        reg.select(obstype, T0)


@pytest.mark.parametrize("obstype", [BIAS, DARK, FLAT, BPM])
def test_other_instrument_binning_readout_or_filter_never_chosen(reg: Registry, obstype) -> None:
    far = reg.add(obstype, T0 - 30 * D)
    for when in (T0 - 1 * H, T0, T0 + 1 * H):
        night = _fake_night()  # one current master per night and group
        reg.add(obstype, when, instrument_id=reg.fa04, dayobs=night)  # other camera, same scope
        reg.add(obstype, when, binning="2x2", dayobs=night)
        reg.add(obstype, when, readout_mode="central_2k_2x2", dayobs=night)
        if obstype is FLAT:
            reg.add(obstype, when, filter_name="V", dayobs=night)
    assert reg.select(obstype, T0).master.id == far.id
    far.is_bad = True
    reg.session.flush()
    with pytest.raises(CalibrationNotFoundError):
        reg.select(obstype, T0)


def test_filter_ignored_for_types_without_filter(reg: Registry) -> None:
    bias = reg.add(BIAS, T0 - 1 * D)
    assert reg.select(BIAS, T0, filter_name="V").master.id == bias.id
    assert reg.select(BIAS, T0, filter_name=None).master.id == bias.id
    assert RULES[BIAS].match == ("instrument_id", "binning", "readout_mode")
    assert RULES[FLAT].match == ("instrument_id", "binning", "readout_mode", "filter_name")


def test_other_type_never_chosen(reg: Registry) -> None:
    dark = reg.add(DARK, T0 - 2 * D)
    reg.add(BIAS, T0)
    reg.add(BPM, T0)
    reg.add(FLAT, T0, filter_name="")
    assert reg.select(DARK, T0).master.id == dark.id


def test_missing_readout_mode_matches_empty(reg: Registry) -> None:
    unknown = reg.add(BIAS, T0 - 1 * D, readout_mode="")
    reg.add(BIAS, T0, readout_mode="full_frame")
    assert reg.select(BIAS, T0, readout_mode=None).master.id == unknown.id


# --- as-of ----------------------------------------------------------------------------------
def test_as_of_excludes_masters_created_later(reg: Registry) -> None:
    old = reg.add(BIAS, T0 - 1 * D, created_at=T0 - 1 * D + 2 * H)
    new = reg.add(BIAS, T0 + 30 * dt.timedelta(minutes=1), created_at=T0 + 3 * H)
    assert reg.select(BIAS, T0).master.id == new.id
    assert reg.select(BIAS, T0, as_of=T0 + 2 * H).master.id == old.id
    assert reg.select(BIAS, T0, as_of=new.created_at).master.id == old.id  # strictly before
    later = new.created_at + dt.timedelta(microseconds=1)
    assert reg.select(BIAS, T0, as_of=later).master.id == new.id
    with pytest.raises(CalibrationNotFoundError, match=r"created before 2026-11-27 00:00:00"):
        reg.select(BIAS, T0, as_of=T0 - 2 * D - 3 * H)


def test_as_of_flat_falls_back_when_earlier_one_created_later(reg: Registry) -> None:
    # reprocessed: a flat of an earlier night registered long after the frame was reduced
    reg.add(FLAT, T0 - 1 * D, created_at=T0 + 20 * D)
    later = reg.add(FLAT, T0 + 1 * D, created_at=T0 + 1 * D + 2 * H)
    chosen = reg.select(FLAT, T0, as_of=T0 + 5 * D)
    assert chosen.master.id == later.id and chosen.fallback_later


# --- observed_before (the backfill as-of rule) ------------------------------------------------
def test_observed_before_excludes_masters_observed_later(reg: Registry) -> None:
    old = reg.add(BIAS, T0 - 1 * D, created_at=T0 + 30 * D)  # built long after: still a candidate
    new = reg.add(BIAS, T0 + 2 * H)
    assert reg.select(BIAS, T0).master.id == new.id
    assert reg.select(BIAS, T0, observed_before=T0 + 1 * H).master.id == old.id
    assert reg.select(BIAS, T0, observed_before=new.dateobs).master.id == new.id  # inclusive
    early = new.dateobs - dt.timedelta(microseconds=1)
    assert reg.select(BIAS, T0, observed_before=early).master.id == old.id
    pattern = r"observed at or before 2026-11-27 00:00:00 \(backfill cutoff\)"
    with pytest.raises(CalibrationNotFoundError, match=pattern):
        reg.select(BIAS, T0, observed_before=T0 - 2 * D - 3 * H)


def test_observed_before_with_as_of(reg: Registry) -> None:
    old = reg.add(BIAS, T0 - 1 * D, created_at=T0 - 1 * D + 1 * H)
    reg.add(BIAS, T0 - 1 * H, created_at=T0 + 10 * D)
    reg.add(BIAS, T0 + 1 * H, created_at=T0 + 2 * H)
    chosen = reg.select(BIAS, T0, as_of=T0 + 5 * D, observed_before=T0)
    assert chosen.master.id == old.id


@pytest.mark.parametrize("obstype", CLOSEST_TYPES)
def test_observed_before_closest_types(reg: Registry, obstype) -> None:
    before = reg.add(obstype, T0 - 10 * H)
    reg.add(obstype, T0 + 1 * H)
    assert (
        reg.select(obstype, T0, observed_before=T0 + 30 * dt.timedelta(minutes=1)).master.id
        == before.id
    )


def test_observed_before_flat(reg: Registry) -> None:
    older = reg.add(FLAT, T0 - 1 * D)
    reg.add(FLAT, T0 - 2 * H)
    later = reg.add(FLAT, T0 + 1 * D)
    assert reg.select(FLAT, T0, observed_before=T0 - 3 * H).master.id == older.id
    # nothing at or before the frame: the earliest later one, if observed by the cutoff
    chosen = reg.select(FLAT, T0 - 2 * D, observed_before=T0 - 3 * H)
    assert chosen.master.id == older.id and chosen.fallback_later
    with pytest.raises(CalibrationNotFoundError):
        reg.select(FLAT, T0 - 2 * D, observed_before=T0 - 2 * D)
    assert reg.select(FLAT, T0 + 2 * D, observed_before=later.dateobs).master.id == later.id


def test_select_masters_for_frame_honours_calibration_cutoff(reg: Registry) -> None:
    bias = reg.add(BIAS, T0 - 1 * D)
    reg.add(BIAS, T0 + 1 * H)
    frame = _frame(reg, calibration_cutoff=T0 + 30 * dt.timedelta(minutes=1))
    assert select_masters_for_frame(reg.session, frame, [BIAS])[BIAS].master.id == bias.id
    frame.calibration_cutoff = T0 - 2 * D
    with pytest.raises(CalibrationNotFoundError, match=r"backfill cutoff"):
        select_masters_for_frame(reg.session, frame, [BIAS])


def test_timezone_aware_times_are_utc(reg: Registry) -> None:
    early = reg.add(BIAS, T0 - 3 * H)
    late = reg.add(BIAS, T0 + 1 * H)
    chile = dt.timezone(dt.timedelta(hours=-3))
    # 01:00 at UTC-3 is 04:00 UTC: exactly the later master (read as UTC it would be the earlier)
    assert reg.select(BIAS, dt.datetime(2026, 11, 29, 1, 0, tzinfo=chile)).master.id == late.id
    as_of = (late.created_at + 1 * H).replace(tzinfo=dt.timezone.utc).astimezone(chile)
    assert reg.select(BIAS, T0, as_of=as_of).master.id == late.id
    assert reg.select(BIAS, T0, as_of=as_of.replace(tzinfo=None)).master.id == early.id


# --- errors ---------------------------------------------------------------------------------
def test_no_master_error_names_what_and_what_to_do(reg: Registry) -> None:
    reg.add(FLAT, T0, filter_name="V")  # wrong filter: still nothing for rp
    pattern = (
        r"no good SKYFLAT master for camera fa03 at site lsc \(1m0a doma, instrument id \d+\), "
        r"filter rp, binning 1x1, readout mode full_frame \(frame DATE-OBS 2026-11-29 03:00:00\)"
        r": build one with `pylcogt stack --type skyflat --instrument fa03 --night YYYYMMDD "
        r"--filter rp --binning 1x1` \(YYYYMMDD: a night with SKYFLAT frames of this camera"
    )
    with pytest.raises(CalibrationNotFoundError, match=pattern):
        reg.select(FLAT, T0)
    pattern = (
        r"no good BPM master for camera fa03 .*: build one with `pylcogt stack --type bpm "
        r"--instrument fa03 --night YYYYMMDD --binning 1x1` or register one made elsewhere with "
        r"`pylcogt calibrations add FILE --type BPM --instrument fa03 --night YYYYMMDD "
        r"--binning 1x1 --readout-mode full_frame`$"
    )
    with pytest.raises(CalibrationNotFoundError, match=pattern):
        reg.select(BPM, T0)
    with pytest.raises(CalibrationNotFoundError, match=r"BIAS master for camera fa04") as info:
        reg.select("bias", T0, instrument_id=reg.fa04, binning="2x2", readout_mode="")
    assert "filter" not in str(info.value)
    assert "binning 2x2, readout mode ''" in str(info.value)
    with pytest.raises(CalibrationNotFoundError, match=r"instrument id 999999 \(not in"):
        reg.select(DARK, T0, instrument_id=999_999)


def test_unknown_type_is_a_value_error(reg: Registry) -> None:
    with pytest.raises(ValueError, match="unknown calibration type 'FRINGE'"):
        reg.select("FRINGE", T0)


# --- per frame ------------------------------------------------------------------------------
def _frame(reg: Registry, **kw) -> RawFrame:
    values = {
        "path": f"/raw/{uuid.uuid4().hex}.fits",
        "filename": "lsc1m005-fa03-20261128-0100-e00.fits",
        "checksum": "1" * 64,
        "file_size": 1,
        "state": FrameState.PENDING,
        "obstype": "EXPOSE",
        "instrument_id": reg.fa03,
        "dateobs": T0,
        "dayobs": (T0 - 12 * H).date(),
        "exptime_s": 30.0,
        "filter_name": "rp",
        "binning": "1x1",
        "readout_mode": "full_frame",
    }
    values.update(kw)
    frame = RawFrame(**values)
    reg.session.add(frame)
    reg.session.flush()
    return frame


def test_select_masters_for_frame(reg: Registry) -> None:
    bias = reg.add(BIAS, T0 - 1 * H)
    dark = reg.add(DARK, T0 + 1 * H)
    flat = reg.add(FLAT, T0 + 1 * D)
    reg.add(FLAT, T0 - 1 * D, filter_name="V")
    chosen = select_masters_for_frame(reg.session, _frame(reg), ["bias", DARK, FLAT, BIAS])
    assert list(chosen) == [BIAS, DARK, FLAT]
    assert {t: s.master.id for t, s in chosen.items()} == {
        BIAS: bias.id,
        DARK: dark.id,
        FLAT: flat.id,
    }
    assert chosen[FLAT].fallback_later and not chosen[BIAS].fallback_later
    assert [s.rule.role for s in chosen.values()] == [
        CalibrationRole.BIAS,
        CalibrationRole.DARK,
        CalibrationRole.FLAT,
    ]


def test_select_masters_for_frame_names_every_missing_type(reg: Registry) -> None:
    reg.add(BIAS, T0 - 1 * H, readout_mode="")
    frame = _frame(reg, filter_name="V", readout_mode=None)
    pattern = (
        r"^lsc1m005-fa03-20261128-0100-e00\.fits: no good DARK master .*readout mode ''.*; "
        r"no good SKYFLAT master .*filter V, binning 1x1"
    )
    with pytest.raises(CalibrationNotFoundError, match=pattern) as info:
        select_masters_for_frame(reg.session, frame, [BIAS, DARK, FLAT])
    assert "BIAS" not in str(info.value)
    with pytest.raises(CalibrationNotFoundError, match=r"no good BIAS master .*created before"):
        select_masters_for_frame(reg.session, frame, [BIAS], as_of=T0 - 1 * D)


# --- query plans ------------------------------------------------------------------------------
def _seed_many(session: Session, n_instruments: int = 30, nights: int = 100) -> list[int]:
    """Thousands of masters (bias, dark, flats in 4 filters) on many instruments."""
    ids = _instruments(session, n_instruments)
    rows = []
    for k, iid in enumerate(ids):
        for night in range(nights):
            t = T0 - night * D + (k % 7) * H
            for obstype, filt in (
                (BIAS, ""),
                (DARK, ""),
                (FLAT, ("gp", "rp", "ip", "zs")[night % 4]),
            ):
                rows.append(
                    {
                        "obstype": obstype,
                        "instrument_id": iid,
                        "binning": "1x1",
                        "readout_mode": "full_frame",
                        "filter_name": filt,
                        "dayobs": t.date(),
                        "dateobs": t,
                        "path": f"/m/{uuid.uuid4().hex}",
                        "checksum": "0" * 64,
                        "is_bad": night % 17 == 0,
                        "n_inputs": 5,
                        "created_at": t + 6 * H,
                    }
                )
    session.execute(sa.insert(MasterCalibration), rows)
    session.commit()
    return ids


def _lookup_sql(url: str, session: Session, **kw) -> list[tuple[str, object]]:
    """The SELECTs that :func:`select_master` sends, with parameters as the driver got them."""
    captured: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, parameters))

    engine = get_engine(url)
    event.listen(engine, "before_cursor_execute", capture)
    try:
        select_master(session, **kw)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return captured


# (lookup, index probes per statement): closest sends both probes in one statement; a flat
# sends one, and a second only when nothing is at or before the frame (seeded: 100 nights back)
_LOOKUPS = [
    ({"obstype": BIAS, "dateobs": T0 - 40 * D - 3 * H}, [2]),
    ({"obstype": DARK, "dateobs": T0 - 40 * D, "as_of": T0 - 20 * D}, [2]),
    ({"obstype": FLAT, "dateobs": T0 - 40 * D}, [1]),
    ({"obstype": FLAT, "dateobs": T0 - 200 * D, "as_of": T0}, [1, 1]),
    ({"obstype": BIAS, "dateobs": T0 - 40 * D, "observed_before": T0 - 39 * D}, [2]),
    ({"obstype": FLAT, "dateobs": T0 - 40 * D, "observed_before": T0 - 39 * D}, [1]),
    ({"obstype": FLAT, "dateobs": T0 - 200 * D, "observed_before": T0}, [1, 1]),
]
_KEY = {"binning": "1x1", "readout_mode": "full_frame", "filter_name": "rp"}


def _index(lookup: dict) -> str:
    """Closest-in-time probes walk the lookup index (by dateobs), flat probes the night one."""
    return "ix_master_calibrations_nights" if lookup["obstype"] is FLAT else (
        "ix_master_calibrations_lookup")


def _with_night(lookup: dict) -> dict:
    return {**lookup, "dayobs": (lookup["dateobs"] - 12 * H).date()}


@pytest.mark.postgres
def test_lookup_is_an_index_probe_on_postgresql(postgres_url: str) -> None:
    migrate.upgrade(postgres_url)
    with get_sessionmaker(postgres_url)() as session:
        ids = _seed_many(session)
        session.execute(sa.text("ANALYZE master_calibrations"))
        session.commit()
        for lookup, probes in _LOOKUPS:
            sent = _lookup_sql(postgres_url, session, instrument_id=ids[17], **_KEY,
                               **_with_night(lookup))  # fmt: skip
            assert len(sent) == len(probes), lookup
            for (sql, params), n_probes in zip(sent, probes, strict=True):
                with get_engine(postgres_url).connect() as conn:
                    plan = "\n".join(conn.exec_driver_sql("EXPLAIN " + sql, params).scalars())
                assert plan.count(f"using {_index(lookup)}") == n_probes, plan
                assert plan.count("Limit") == n_probes, plan
                assert "Seq Scan" not in plan and "Bitmap" not in plan, plan


def test_lookup_is_an_index_probe_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    migrate.upgrade(url)
    equal = "instrument_id=? AND obstype=? AND binning=? AND readout_mode=? AND filter_name=?"
    searches = {
        "ix_master_calibrations_lookup": "SEARCH master_calibrations USING INDEX "
        f"ix_master_calibrations_lookup ({equal} AND dateobs",
        "ix_master_calibrations_nights": "SEARCH master_calibrations USING INDEX "
        f"ix_master_calibrations_nights ({equal} AND dayobs",
    }
    try:
        with get_sessionmaker(url)() as session:
            ids = _seed_many(session, n_instruments=5)
            session.execute(sa.text("ANALYZE"))
            session.commit()
            for lookup, probes in _LOOKUPS:
                sent = _lookup_sql(url, session, instrument_id=ids[3], **_KEY,
                                   **_with_night(lookup))  # fmt: skip
                probe = searches[_index(lookup)]
                assert len(sent) == len(probes), lookup
                for (sql, params), n_probes in zip(sent, probes, strict=True):
                    with get_engine(url).connect() as conn:
                        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params).all()
                    plan = [str(r[-1]) for r in rows]
                    reads = [line for line in plan if "master_calibrations" in line]
                    assert len(reads) == n_probes, plan
                    assert all(line.startswith(probe) for line in reads), plan
    finally:
        dispose_engines()
