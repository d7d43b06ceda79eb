"""Provenance queries and the mark-bad cascade on both databases, on a registry seeded by hand.

The night (20261128, camera fa15): bias frames b1-b3 make master bias B; dark frames d1, d2,
prepared with B, make master dark D; flat frames f1, f2 (rp), prepared with B and D, make master
flat F; the bad-pixel mask P is derived from D and F (its inputs are d1, d2, f1, f2). Science
frames s1, s2 were reduced with B, D, F, P; s3 with D, F, P and the previous night's bias B0
(made from b0), with which s0 was reduced too. s2 is being processed by a worker.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from pylcogt import provenance as prov
from pylcogt.db import migrate
from pylcogt.db.models import (
    CalibrationRole,
    CalibrationStatus,
    CalibrationType,
    CameraFamily,
    FrameState,
    Instrument,
    MasterCalibration,
    MasterInput,
    RawFrame,
    Reduction,
    ReductionMaster,
    ReductionStatus,
    Site,
)
from pylcogt.db.session import get_engine, get_sessionmaker
from pylcogt.errors import PylcogtError

NIGHT = dt.date(2026, 11, 28)
T0 = dt.datetime(2026, 11, 28, 21, 0)
MIN = dt.timedelta(minutes=1)
NOW = dt.datetime(2026, 12, 1, 9, 30)
BIAS, DARK, FLAT, BPM = (CalibrationType.BIAS, CalibrationType.DARK, CalibrationType.SKYFLAT,
                         CalibrationType.BPM)  # fmt: skip
ROLE = {BIAS: CalibrationRole.BIAS, DARK: CalibrationRole.DARK, FLAT: CalibrationRole.FLAT,
        BPM: CalibrationRole.BPM}  # fmt: skip


def _seed(url: str) -> dict[str, int]:
    """The night of the module docstring; returns ids by name (frames and masters)."""
    ids: dict[str, int] = {}
    with get_sessionmaker(url)() as session:
        site = Site(code="lsc")
        session.add(site)
        session.flush()
        inst = Instrument(site_id=site.id, enclosure="doma", telescope="1m0a", camera="fa15",
                          family=CameraFamily.SINISTRO, nx=4096, ny=4096,
                          n_amplifiers=4)  # fmt: skip
        session.add(inst)
        session.flush()

        def frame(name: str, obstype: str, minutes: int, *, night: dt.date = NIGHT,
                  filter_name: str | None = None, **kw) -> RawFrame:  # fmt: skip
            kind = {"BIAS": "b", "DARK": "d", "SKYFLAT": "f"}.get(obstype, "e")
            filename = f"lsc1m009-fa15-{night:%Y%m%d}-{name}-{kind}00.fits"
            row = RawFrame(
                path=f"/raw/{filename}", filename=filename, checksum=name.ljust(64, "0"),
                file_size=1000, state=kw.pop("state", FrameState.DONE), obstype=obstype,
                instrument_id=inst.id, dateobs=T0 + minutes * MIN - (NIGHT - night),
                dayobs=night, exptime_s=0.0 if obstype == "BIAS" else 30.0,
                filter_name=filter_name, binning="1x1", readout_mode="full_frame", **kw,
            )  # fmt: skip
            session.add(row)
            session.flush()
            ids[name] = row.id
            return row

        def master(name: str, obstype: CalibrationType, inputs: list[RawFrame], *,
                   night: dt.date = NIGHT, filter_name: str = "",
                   prepared_with: tuple[MasterCalibration, ...] = (),
                   ) -> MasterCalibration:  # fmt: skip
            prep = {m.obstype: m.id for m in prepared_with}
            row = MasterCalibration(
                obstype=obstype, instrument_id=inst.id, binning="1x1", readout_mode="full_frame",
                filter_name=filter_name, dayobs=night,
                dateobs=T0 + 30 * MIN - (NIGHT - night),
                path=f"/data/lsc/fa15/{night:%Y%m%d}/masters/{name}.fits.fz", checksum="0" * 64,
                n_inputs=len(inputs),
            )  # fmt: skip
            session.add(row)
            session.flush()
            session.add_all(MasterInput(master_id=row.id, frame_id=f.id, frame_checksum=f.checksum,
                                        bias_master_id=prep.get(BIAS),
                                        dark_master_id=prep.get(DARK))
                            for f in inputs)  # fmt: skip
            ids[name] = row.id
            return row

        def used(frames: list[RawFrame], *masters: MasterCalibration) -> None:
            """Each science frame's current reduction used these masters."""
            for f in frames:
                reduction = Reduction(
                    frame_id=f.id, status=ReductionStatus.CURRENT,
                    calibration_status=CalibrationStatus.FINAL, reason="first reduction",
                    finished_at=T0, product_path=f.product_path, product_checksum="1" * 64,
                )  # fmt: skip
                reduction.masters = [ReductionMaster(role=ROLE[m.obstype], master_id=m.id,
                                                     master_checksum=m.checksum)
                                     for m in masters]  # fmt: skip
                session.add(reduction)
            session.flush()

        earlier = NIGHT - dt.timedelta(days=1)
        b0 = [frame("b0", "BIAS", 0, night=earlier)]
        B0 = master("B0", BIAS, b0, night=earlier)
        biases = [frame(f"b{i}", "BIAS", i) for i in (1, 2, 3)]
        darks = [frame(f"d{i}", "DARK", 10 + i) for i in (1, 2)]
        flats = [frame(f"f{i}", "SKYFLAT", 20 + i, filter_name="rp") for i in (1, 2)]
        B = master("B", BIAS, biases)
        D = master("D", DARK, darks, prepared_with=(B,))
        F = master("F", FLAT, flats, filter_name="rp", prepared_with=(B, D))
        P = master("P", BPM, darks, prepared_with=(B,))  # as each was prepared for D and F
        session.add_all(MasterInput(master_id=P.id, frame_id=f.id, frame_checksum=f.checksum,
                                    bias_master_id=B.id, dark_master_id=D.id) for f in flats)
        P.n_inputs = len(darks + flats)
        product = "/data/lsc/fa15/20261128/processed/{}.fits.fz"
        s1 = frame("s1", "EXPOSE", 100, filter_name="rp", product_path=product.format("s1"))
        s2 = frame("s2", "EXPOSE", 110, filter_name="rp", product_path=product.format("s2"),
                   state=FrameState.PROCESSING, lease_owner="worker-1", lease_token=5,
                   lease_expires_at=NOW)  # fmt: skip
        s3 = frame("s3", "EXPOSE", 120, filter_name="rp", product_path=product.format("s3"))
        s0 = frame("s0", "EXPOSE", 50, night=earlier, filter_name="rp",
                   product_path=product.format("s0"))  # fmt: skip
        used([s1, s2], B, D, F, P)
        used([s3], B0, D, F, P)
        used([s0], B0)
        session.commit()
    return ids


@pytest.fixture
def night(db_url: str) -> Iterator[tuple[str, dict[str, int]]]:
    migrate.upgrade(db_url)
    yield db_url, _seed(db_url)


def _snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of the tables mark-bad may change."""
    with get_engine(url).connect() as conn:
        return {
            table: sorted(tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table}")))
            for table in ("raw_frames", "master_calibrations", "master_inputs", "reductions",
                          "reduction_masters")
        }  # fmt: skip


def _frames(url: str) -> dict[int, RawFrame]:
    with get_sessionmaker(url)() as session:
        return {f.id: f for f in session.scalars(sa.select(RawFrame))}


def _masters(url: str) -> dict[int, MasterCalibration]:
    with get_sessionmaker(url)() as session:
        return {m.id: m for m in session.scalars(sa.select(MasterCalibration))}


def _shape(node: prov.RedoNode) -> tuple:
    """The tree as ids: (master, rebuild inputs, (role, frame) users, children)."""
    return (
        node.master.id,
        tuple(f.id for f in node.rebuild_inputs),
        tuple((u.role, u.frame.id) for u in node.frames),
        tuple(_shape(child) for child in node.dependents),
    )


def _names(ids: dict[str, int], *names: str) -> set[int]:
    return {ids[n] for n in names}


# --- provenance ---------------------------------------------------------------------------
def test_frame_provenance_lists_masters_and_their_inputs(night) -> None:
    url, ids = night
    product = "/data/lsc/fa15/20261128/processed/s1.fits.fz"
    p = prov.frame_provenance(url, product)
    assert p.frame.id == ids["s1"] and p.frame.product_path == product
    assert [(u.role, u.master.id) for u in p.masters] == [
        ("bias", ids["B"]), ("dark", ids["D"]), ("flat", ids["F"]), ("bpm", ids["P"]),
    ]  # fmt: skip
    by_role = {u.role: u for u in p.masters}
    assert [f.id for f in by_role["bias"].inputs] == [ids["b1"], ids["b2"], ids["b3"]]
    assert [f.id for f in by_role["dark"].inputs] == [ids["d1"], ids["d2"]]
    assert [(m.role, m.master.id) for m in by_role["dark"].prepared_with] == [("bias", ids["B"])]
    assert [(m.role, m.master.id) for m in by_role["flat"].prepared_with] == [
        ("bias", ids["B"]), ("dark", ids["D"]),
    ]  # fmt: skip
    assert {f.id for f in by_role["bpm"].inputs} == _names(ids, "d1", "d2", "f1", "f2")
    bias = by_role["bias"].master
    assert (bias.type, bias.instrument, bias.site, bias.n_inputs) == ("BIAS", "fa15", "lsc", 3)
    assert bias.effective_time == T0 + 30 * MIN and bias.path.endswith("/B.fits.fz")
    assert p.stacked_into == ()
    # the same frame by raw path, by file name, by id and as frame:ID; plain frozen objects
    assert prov.frame_provenance(url, p.frame.path) == p
    assert prov.frame_provenance(url, p.frame.filename) == p
    assert prov.provenance(url, ids["s1"]) == p
    assert prov.provenance(url, f"frame:{ids['s1']}") == p
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.frame.state = "pending"  # type: ignore[misc]


def test_calibration_frame_provenance_shows_preparation_and_masters(night) -> None:
    url, ids = night
    p = prov.frame_provenance(url, ids["f1"])
    assert [(u.role, u.master.id) for u in p.masters] == [("bias", ids["B"]), ("dark", ids["D"])]
    assert [m.id for m in p.stacked_into] == [ids["F"], ids["P"]]


def test_master_provenance_lists_inputs_users_and_derived_masters(night) -> None:
    url, ids = night
    p = prov.master_provenance(url, ids["D"])
    assert p.kind == "master" and p.master.type == "DARK"
    assert [f.id for f in p.inputs] == [ids["d1"], ids["d2"]]
    assert [(m.role, m.master.id) for m in p.prepared_with] == [("bias", ids["B"])]
    assert [(u.role, u.frame.id) for u in p.reduced_frames] == [
        ("dark", ids["s1"]), ("dark", ids["s2"]), ("dark", ids["s3"]),
    ]  # fmt: skip
    assert [(u.role, u.frame.id) for u in p.prepared_frames] == [
        ("dark", ids["f1"]), ("dark", ids["f2"]),
    ]  # fmt: skip
    assert [m.id for m in p.derived_masters] == [ids["F"], ids["P"]]
    assert prov.provenance(url, f"master:{ids['D']}") == p
    assert prov.provenance(url, p.master.path) == p
    bias = prov.master_provenance(url, ids["B"])
    assert [m.id for m in bias.derived_masters] == [ids["D"], ids["F"], ids["P"]]
    assert {u.frame.id for u in bias.reduced_frames} == _names(ids, "s1", "s2")
    flat = prov.master_provenance(url, ids["F"])
    assert [m.id for m in flat.derived_masters] == [ids["P"]]  # the mask derived from it


def test_list_masters_filters(night) -> None:
    url, ids = night
    everything = prov.list_masters(url)
    assert [m.id for m in everything][0] == ids["B0"] and len(everything) == 5
    assert [m.id for m in prov.list_masters(url, type="skyflat")] == [ids["F"]]
    assert [m.id for m in prov.list_masters(url, filter="rp")] == [ids["F"]]
    assert len(prov.list_masters(url, night=NIGHT, instrument="FA15")) == 4
    assert prov.list_masters(url, instrument="fa99") == []


# --- mark bad -----------------------------------------------------------------------------
def test_bad_bias_cascades_to_dark_flat_mask_and_their_frames(night) -> None:
    url, ids = night
    plan = prov.mark_bad(url, ids["B"], reason="light leak in  the\nafternoon set", now=NOW)
    assert plan.applied and not plan.dry_run and not plan.already_bad
    assert plan.masters == (ids["B"], ids["D"], ids["F"], ids["P"])
    redone = _names(ids, "d1", "d2", "f1", "f2", "s1", "s2", "s3")
    assert set(plan.frames) == redone and len(plan.frames) == len(redone)
    # the tree: each frame once, inputs under the master they rebuild
    assert _shape(plan.root) == (
        ids["B"], (), (("bias", ids["s1"]), ("bias", ids["s2"])),
        (
            (ids["D"], (ids["d1"], ids["d2"]), (("dark", ids["s3"]),), ()),
            (ids["F"], (ids["f1"], ids["f2"]), (), ()),
            (ids["P"], (), (), ()),  # a mask's inputs belong to the dark and flat
        ),
    )  # fmt: skip
    assert plan.root.reason == "2026-12-01T09:30:00Z light leak in the afternoon set"

    masters = _masters(url)
    assert masters[ids["B"]].is_bad and masters[ids["B"]].bad_reason == plan.root.reason
    for name in ("D", "F", "P"):
        assert masters[ids[name]].is_bad
        assert masters[ids[name]].bad_reason == (
            f"2026-12-01T09:30:00Z built from frames prepared with bad master {ids['B']}"
        )
    assert not masters[ids["B0"]].is_bad

    frames = _frames(url)
    for fid in redone:
        f = frames[fid]
        assert (f.state, f.attempts, f.next_attempt_at) == (FrameState.PENDING, 0, None)
        assert "re-queued 2026-12-01T09:30:00Z" in f.last_error
    for name in ("s1", "s2", "s3"):  # products are kept until the worker replaces them
        assert frames[ids[name]].product_path.endswith(f"/{name}.fits.fz")
    assert f"to rebuild master {ids['D']} (DARK D.fits.fz)" in frames[ids["d1"]].last_error
    assert f"master {ids['B']} (BIAS B.fits.fz), marked bad: light leak" in (
        frames[ids["s1"]].last_error
    )
    s2 = frames[ids["s2"]]  # the worker holding it is fenced off
    assert (s2.lease_owner, s2.lease_expires_at, s2.lease_token) == (None, None, 6)
    for name in ("b1", "b2", "b3", "b0", "s0"):  # the bad master's own inputs, other nights
        assert frames[ids[name]].state is FrameState.DONE and frames[ids[name]].last_error is None


def test_bad_dark_cascades_down_not_up(night) -> None:
    url, ids = night
    plan = prov.mark_bad(url, f"master:{ids['D']}", reason="hot column", now=NOW)
    assert plan.masters == (ids["D"], ids["F"], ids["P"])
    assert set(plan.frames) == _names(ids, "f1", "f2", "s1", "s2", "s3")
    assert not _masters(url)[ids["B"]].is_bad
    assert _frames(url)[ids["d1"]].state is FrameState.DONE  # same frames, same master


def test_bad_flat_takes_the_mask_derived_from_it(night) -> None:
    url, ids = night
    plan = prov.mark_bad(url, ids["F"], reason="clouds", now=NOW)
    assert plan.masters == (ids["F"], ids["P"])
    assert _shape(plan.root)[3] == ((ids["P"], (), (), ()),)
    assert plan.root.dependents[0].reason.endswith(f"derived from bad master {ids['F']}")
    assert set(plan.frames) == _names(ids, "s1", "s2", "s3")


def test_dry_run_changes_nothing_and_lists_the_same_tree(night) -> None:
    url, ids = night
    before = _snapshot(url)
    dry = prov.mark_bad(url, ids["B"], reason="light leak", dry_run=True, now=NOW)
    assert _snapshot(url) == before
    assert dry.dry_run and not dry.applied and "would re-queue 7 frame(s)" in dry.message
    assert prov.bad_cascade(url, ids["B"]).masters == dry.masters
    assert _snapshot(url) == before
    real = prov.mark_bad(url, ids["B"], reason="light leak", now=NOW)
    assert dataclasses.replace(dry, dry_run=False, applied=True, message=real.message) == real


def test_marking_again_changes_nothing_and_says_so(night) -> None:
    url, ids = night
    prov.mark_bad(url, ids["B"], reason="light leak", now=NOW)
    before = _snapshot(url)
    again = prov.mark_bad(url, ids["B"], reason="another reason")
    assert again.already_bad and not again.applied
    assert again.masters == () and again.frames == ()
    assert "already bad" in again.message and "light leak" in again.message
    assert prov.mark_bad(url, ids["B"], reason="x", dry_run=True).already_bad
    assert _snapshot(url) == before


def test_concurrent_marks_cascade_once(night) -> None:
    url, ids = night
    barrier = threading.Barrier(2)

    def mark(reason: str) -> prov.RedoPlan:
        barrier.wait(timeout=30)
        return prov.mark_bad(url, ids["B"], reason=reason)

    with ThreadPoolExecutor(2) as pool:
        plans = list(pool.map(mark, ["first", "second"]))
    assert sorted(p.applied for p in plans) == [False, True]
    assert sorted(p.already_bad for p in plans) == [False, True]
    winner = next(p for p in plans if p.applied)
    assert _masters(url)[ids["B"]].bad_reason.endswith(winner.reason)


def test_mark_good_reverses_that_master_only(night) -> None:
    url, ids = night
    prov.mark_bad(url, ids["B"], reason="light leak", now=NOW)
    result = prov.mark_good(url, ids["B"])
    assert result.changed and not result.master.is_bad
    assert "light leak" in result.previous_reason and "this master only" in result.message
    masters = _masters(url)
    assert not masters[ids["B"]].is_bad and masters[ids["B"]].bad_reason is None
    assert all(masters[ids[n]].is_bad for n in ("D", "F", "P"))
    assert _frames(url)[ids["s1"]].state is FrameState.PENDING  # the re-queue is not undone
    before = _snapshot(url)
    again = prov.mark_good(url, ids["B"])
    assert not again.changed and "not marked bad" in again.message
    assert _snapshot(url) == before


def test_mark_good_refused_when_the_night_has_a_rebuilt_master(night) -> None:
    url, ids = night
    prov.mark_bad(url, ids["D"], reason="hot column", now=NOW)
    with get_sessionmaker(url)() as session:  # the worker rebuilt the night's dark
        old = session.get(MasterCalibration, ids["D"])
        rebuilt = MasterCalibration(
            obstype=DARK, instrument_id=old.instrument_id, binning="1x1",
            readout_mode="full_frame", filter_name="", dayobs=NIGHT, dateobs=old.dateobs,
            path=old.path.replace(".fits.fz", "-r2.fits.fz"), checksum="1" * 64, n_inputs=2,
        )  # fmt: skip
        session.add(rebuilt)
        session.commit()
        rebuilt_id = rebuilt.id
    with pytest.raises(PylcogtError, match=f"master {rebuilt_id} is the good DARK master"):
        prov.mark_good(url, ids["D"])
    assert _masters(url)[ids["D"]].is_bad


def test_caller_session_owns_the_transaction(night) -> None:
    url, ids = night
    before = _snapshot(url)
    with get_sessionmaker(url)() as session:
        assert isinstance(session, Session)
        plan = prov.mark_bad(session, ids["B"], reason="light leak")
        assert plan.applied and session.get(MasterCalibration, ids["B"]).is_bad
        session.rollback()
    assert _snapshot(url) == before


def test_unknown_ids_give_clear_errors(night) -> None:
    url, ids = night
    with pytest.raises(prov.NotRegisteredError, match="no master calibration with id 999"):
        prov.mark_bad(url, 999, reason="x")
    with pytest.raises(prov.NotRegisteredError, match="no master calibration with id 999"):
        prov.mark_good(url, "999")
    with pytest.raises(prov.NotRegisteredError, match="no raw frame with id 999"):
        prov.provenance(url, "frame:999")
    with pytest.raises(prov.NotRegisteredError, match="not a registered raw frame, product"):
        prov.provenance(url, "/nowhere/x.fits")
    with pytest.raises(prov.NotRegisteredError, match="is a raw frame"):
        prov.mark_bad(url, "/raw/lsc1m009-fa15-20261128-s1-e00.fits", reason="x")
    with pytest.raises(prov.NotRegisteredError, match="use master_provenance"):
        prov.frame_provenance(url, f"master:{ids['B']}")
    with pytest.raises(PylcogtError, match="a reason is needed"):
        prov.mark_bad(url, ids["B"], reason="  ")
    assert not _masters(url)[ids["B"]].is_bad
