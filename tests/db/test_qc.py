"""The QC page's view of the registry, on both databases, from a hand-made registry whose masters
and products are real files with known content: which masters belong to the night, which
previous master each is compared with (same kind, earlier night, not bad), which frames were
left out and why, and the numbers the report computes from the files (known injected changes).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from pylcogt.db import migrate
from pylcogt.db.models import (
    CalibrationType,
    CameraFamily,
    FrameState,
    Instrument,
    MasterCalibration,
    MasterInput,
    RawFrame,
    Site,
)
from pylcogt.db.session import get_sessionmaker
from pylcogt.frame import Frame, PixelFlag
from pylcogt.io.products import write_product
from pylcogt.qc.inventory import night_inventory
from pylcogt.qc.night import night_report

NIGHT = dt.date(2026, 11, 28)
SHAPE = (200, 200)
SIGMA = 2.0  # e-, noise of each hand-made master bias (ERR says the same)
BLOCK = (slice(50, 60), slice(120, 130))  # 100 pixels changed by +40 e- (14 sigma) on NIGHT
OFFSET_ARCSEC = 0.4  # every reference star sits 0.4" north of where the WCS puts its source


def _bias(seed: int, *, change: bool = False) -> Frame:
    rng = np.random.default_rng(seed)
    sci = rng.normal(0.0, SIGMA, SHAPE).astype(np.float32)
    if change:
        sci[BLOCK] += 40.0
    err = np.full(SHAPE, SIGMA, np.float32)
    header = fits.Header({"OBSTYPE": "BIAS", "BIASLVL": 512.0})
    return Frame(sci=sci, err=err, bpm=np.zeros(SHAPE, np.uint8), header=header,
                 unit="electron")  # fmt: skip


def _flat(seed: int, scale: float) -> Frame:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    vignetting = 1.0 - 0.1 * ((xx - 100) ** 2 + (yy - 100) ** 2) / 100**2
    sci = (scale * vignetting + rng.normal(0, 0.002, SHAPE)).astype(np.float32)
    bpm = np.zeros(SHAPE, np.uint8)
    bpm[0, :] = PixelFlag.LOW_FLAT
    return Frame(sci=sci, err=np.full(SHAPE, 0.002, np.float32), bpm=bpm,
                 header=fits.Header({"OBSTYPE": "SKYFLAT"}), unit="")  # fmt: skip


def _science(path: Path) -> tuple[Frame, Table]:
    """A reduced frame with a solved TAN WCS and a catalogue whose REF_RA/REF_DEC are offset."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, -30.0]
    wcs.wcs.crpix = [100.5, 100.5]
    wcs.wcs.cd = [[-1.0 / 3600, 0], [0, 1.0 / 3600]]
    header = wcs.to_header()
    header["ASTSTAT"] = "solved"
    header["WCSRMS"] = OFFSET_ARCSEC
    header["WCSNMAT"] = 30
    header["NSOURCES"] = 40
    header["L1ZP"] = 23.1
    header["L1PHSTAT"] = "OK"
    rng = np.random.default_rng(5)
    x, y = rng.uniform(5, 195, 40), rng.uniform(5, 195, 40)
    ra, dec = wcs.all_pix2world(x, y, 1)
    ref_ra, ref_dec = ra.copy(), dec + OFFSET_ARCSEC / 3600
    ref_ra[30:], ref_dec[30:] = np.nan, np.nan  # not in the WCS fit
    catalog = Table({"X": x, "Y": y, "A": np.full(40, 1.5), "B": np.full(40, 1.2),
                     "THETA": np.zeros(40), "FLAG": np.zeros(40, np.int16), "RA": ra, "DEC": dec,
                     "REF_RA": ref_ra, "REF_DEC": ref_dec})  # fmt: skip
    sci = rng.normal(100.0, 10.0, SHAPE).astype(np.float32)
    frame = Frame(sci=sci, err=np.full(SHAPE, 10, np.float32), bpm=np.zeros(SHAPE, np.uint8),
                  header=header, unit="electron")  # fmt: skip
    write_product(path, frame, catalog=catalog)
    return frame, catalog


@dataclass
class Night:
    url: str
    ids: dict[str, int]
    root: Path


def _master(session, root: Path, name: str, obstype: CalibrationType, instrument: int,
            night: dt.date, frame: Frame | None, *, filter_name: str = "",
            is_bad: bool = False) -> MasterCalibration:  # fmt: skip
    path = root / f"{name}.fits.fz"
    if frame is not None:
        write_product(path, frame)
    row = MasterCalibration(
        obstype=obstype, instrument_id=instrument, binning="1x1", readout_mode="full_frame",
        filter_name=filter_name, dayobs=night,
        dateobs=dt.datetime.combine(night, dt.time(23, 0)), path=str(path), checksum="0" * 64,
        is_bad=is_bad, bad_reason="hot column appeared" if is_bad else None, n_inputs=3,
    )  # fmt: skip
    session.add(row)
    session.flush()
    return row


def _raw(session, name: str, instrument: int, night: dt.date, obstype: str, state: FrameState,
         *, error: str | None = None, filter_name: str | None = None,
         product: Path | None = None) -> RawFrame:  # fmt: skip
    row = RawFrame(
        path=f"/raw/{name}.fits", filename=f"{name}.fits", checksum="0" * 64, file_size=1,
        state=state, obstype=obstype, instrument_id=instrument, dayobs=night,
        dateobs=dt.datetime.combine(night, dt.time(22, 0)), exptime_s=60.0,
        filter_name=filter_name, binning="1x1", readout_mode="full_frame", object_name="M42",
        last_error=error, product_path=str(product) if product else None,
    )  # fmt: skip
    session.add(row)
    session.flush()
    return row


@pytest.fixture
def night(db_url: str, tmp_path: Path) -> Iterator[Night]:
    migrate.upgrade(db_url)
    root = tmp_path / "files"
    ids: dict[str, int] = {}
    with get_sessionmaker(db_url)() as s:
        site = Site(code="lsc")
        s.add(site)
        s.flush()
        cams = {}
        for camera in ("fa03", "fa04"):
            inst = Instrument(site_id=site.id, enclosure="doma", telescope="1m0a", camera=camera,
                              family=CameraFamily.SINISTRO, nx=4096, ny=4096,
                              n_amplifiers=4)  # fmt: skip
            s.add(inst)
            s.flush()
            cams[camera] = inst.id
        fa03, fa04 = cams["fa03"], cams["fa04"]
        bias, flat, dark = CalibrationType.BIAS, CalibrationType.SKYFLAT, CalibrationType.DARK
        d = dt.timedelta(days=1)
        ids["old_bias"] = _master(s, root, "bias-25", bias, fa03, NIGHT - 3 * d, _bias(1)).id
        ids["bad_bias"] = _master(s, root, "bias-27", bias, fa03, NIGHT - d, _bias(2),
                                  is_bad=True).id  # fmt: skip
        ids["bias"] = _master(s, root, "bias-28", bias, fa03, NIGHT, _bias(3, change=True)).id
        ids["old_flat"] = _master(s, root, "flat-27-rp", flat, fa03, NIGHT - d, _flat(4, 1.0),
                                  filter_name="rp").id  # fmt: skip
        ids["other_filter"] = _master(s, root, "flat-27-v", flat, fa03, NIGHT - d, _flat(6, 0.5),
                                      filter_name="V").id  # fmt: skip
        ids["flat"] = _master(s, root, "flat-28-rp", flat, fa03, NIGHT, _flat(7, 1.02),
                              filter_name="rp").id  # fmt: skip
        ids["lost_dark"] = _master(s, root, "dark-28", dark, fa03, NIGHT, None).id  # no file
        ids["fa04_bias"] = _master(s, root, "fa04-bias-28", bias, fa04, NIGHT, _bias(8)).id
        ids["fa04_bad"] = _master(s, root, "fa04-bias-28-bad", bias, fa04, NIGHT, _bias(9),
                                  is_bad=True).id  # fmt: skip
        ids["next_bias"] = _master(s, root, "bias-29", bias, fa03, NIGHT + d, _bias(10)).id
        for i in range(3):
            frame = _raw(s, f"b{i}", fa03, NIGHT, "BIAS", FrameState.DONE)
            s.add(MasterInput(master_id=ids["bias"], frame_id=frame.id))
        ids["failed_bias"] = _raw(s, "b-truncated", fa03, NIGHT, "BIAS", FrameState.FAILED,
                                  error="b-truncated.fits is truncated: re-transfer it").id
        ids["late_bias"] = _raw(s, "b-late", fa03, NIGHT, "BIAS", FrameState.READY).id
        _raw(s, "b-other-night", fa03, NIGHT - d, "BIAS", FrameState.FAILED, error="elsewhere")
        _raw(s, "b-fa04", fa04, NIGHT, "BIAS", FrameState.FAILED, error="other camera")
        ids["saturated_flat"] = _raw(s, "f-sat", fa03, NIGHT, "SKYFLAT", FrameState.FAILED,
                                     filter_name="rp",
                                     error="3.0% of the pixels saturated (limit 1.0%)").id
        _raw(s, "f-v", fa03, NIGHT, "SKYFLAT", FrameState.FAILED, filter_name="V", error="V")
        product = root / "sci-28.fits.fz"
        _science(product)
        ids["science"] = _raw(s, "e1", fa03, NIGHT, "EXPOSE", FrameState.DONE, filter_name="rp",
                              product=product).id  # fmt: skip
        ids["failed_science"] = _raw(s, "e2", fa03, NIGHT, "EXPOSE", FrameState.FAILED,
                                     filter_name="rp",
                                     error="no BIAS master for fa03: run the worker").id
        ids["waiting_science"] = _raw(s, "e3", fa03, NIGHT, "EXPOSE",
                                      FrameState.WAITING_CALIBRATION, filter_name="rp").id
        s.commit()
    yield Night(db_url, ids, tmp_path)


def test_inventory_finds_the_nights_masters_their_previous_ones_and_left_out_frames(
    night: Night,
) -> None:
    ids = night.ids
    with get_sessionmaker(night.url)() as s:
        inv = night_inventory(s, NIGHT)
        by_id = {m.id: m for m in inv.masters}
        assert set(by_id) == {ids[k] for k in ("bias", "flat", "lost_dark", "fa04_bias",
                                                "fa04_bad")}  # fmt: skip
        # the previous master of the same kind, skipping the bad one of the night before
        assert by_id[ids["bias"]].previous_id == ids["old_bias"]
        assert by_id[ids["bias"]].previous_dayobs == NIGHT - dt.timedelta(days=3)
        # same filter only (the V flat is as recent)
        assert by_id[ids["flat"]].previous_id == ids["old_flat"]
        assert by_id[ids["fa04_bias"]].previous_id is None
        assert by_id[ids["fa04_bad"]].is_bad and by_id[ids["fa04_bad"]].bad_reason
        left = {f.frame_id: f for f in by_id[ids["bias"]].left_out}
        assert set(left) == {ids["failed_bias"], ids["late_bias"]}
        assert "truncated" in left[ids["failed_bias"]].reason
        assert left[ids["failed_bias"]].state == "failed"
        assert "arrived later" in left[ids["late_bias"]].reason
        flat_left = by_id[ids["flat"]].left_out
        assert [f.frame_id for f in flat_left] == [ids["saturated_flat"]]
        assert "saturated" in flat_left[0].reason
        frames = {f.id: f for f in inv.frames}
        assert set(frames) == {ids["science"], ids["failed_science"], ids["waiting_science"]}
        assert frames[ids["science"]].product_path
        assert frames[ids["failed_science"]].product_path is None
        assert "no BIAS master" in frames[ids["failed_science"]].reason
        assert frames[ids["waiting_science"]].reason == "state waiting_calibration"
        assert inv.cameras == ["fa03", "fa04"]
        only = night_inventory(s, NIGHT, "fa04")
        assert {m.id for m in only.masters} == {ids["fa04_bias"], ids["fa04_bad"]}
        assert only.frames == []


def test_report_numbers_follow_the_files(night: Night) -> None:
    ids = night.ids
    out = night.root / "qc"
    with get_sessionmaker(night.url)() as s:
        report = night_report(s, NIGHT, out, database="test")
    data = json.loads((out / "qc.json").read_text())
    assert data == report.data
    masters = {m["id"]: m for m in data["masters"]}
    bias = masters[ids["bias"]]
    # the master's own noise and ERR, and the comparison with the master 3 nights before
    assert bias["stats"]["rstd"] == pytest.approx(SIGMA, rel=0.05)
    assert bias["stats"]["median_err"] == pytest.approx(SIGMA, rel=0.01)
    assert bias["stats"]["biaslvl"] == 512.0
    assert bias["stats"]["outliers"] == 100  # the changed block: 20 sigma of one master
    cmp = bias["comparison"]
    assert cmp["mode"] == "difference"
    assert cmp["changed"] == 100  # 14 sigma of the difference; Gaussian tails: 0.02 expected
    assert cmp["z_rstd"] == pytest.approx(1.0, abs=0.05)
    assert abs(cmp["median"]) < 0.05
    assert bias["previous"]["id"] == ids["old_bias"]
    assert {f["id"] for f in bias["left_out"]} == {ids["failed_bias"], ids["late_bias"]}
    flat = masters[ids["flat"]]
    assert flat["comparison"]["mode"] == "ratio"
    assert flat["comparison"]["median"] == pytest.approx(1.02, abs=0.001)
    assert flat["stats"]["flagged"]["low_flat"] == SHAPE[1]
    assert flat["stats"]["n_good"] == SHAPE[0] * SHAPE[1] - SHAPE[1]
    assert masters[ids["fa04_bias"]]["comparison"] is None
    assert "no earlier good master" in masters[ids["fa04_bias"]]["comparison_note"]
    # a master whose file is gone: an error entry, and the rest of the night is still there
    lost = masters[ids["lost_dark"]]
    assert lost["error"] and "dark-28" in lost["error"] and lost["stats"] is None
    assert data["summary"]["errors"] == 1 and report.errors == [lost["error"]]
    # the reduced frame: residuals recomputed from REF_RA/REF_DEC through its WCS
    (frame,) = data["frames"]
    assert frame["id"] == ids["science"]
    assert frame["residual_n"] == 30
    assert frame["residual_rms_arcsec"] == pytest.approx(OFFSET_ARCSEC, abs=1e-4)
    assert frame["wcs"] == "solved" and frame["zeropoint"] == 23.1
    not_reduced = {f["id"]: f for f in data["not_reduced"]}
    assert set(not_reduced) == {ids["failed_science"], ids["waiting_science"]}
    # every picture the JSON names exists and is a PNG; the page names the same ones
    page = (out / "index.html").read_text()
    names = [n for m in data["masters"] for n in m["images"].values()]
    names += [n for f in data["frames"] for n in f["images"].values()]
    assert len(names) == 4 + 2 + 1  # previews: all but the lost dark; comparisons: bias, flat
    names.append(data["images"]["trends"])
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{name}"' in page
    for text in ("truncated: re-transfer it", "3.0% of the pixels saturated", "MARKED BAD",
                 "hot column appeared", "no BIAS master for fa03"):  # fmt: skip
        assert text in page, text


def test_report_is_idempotent(night: Night) -> None:
    out = night.root / "qc"
    with get_sessionmaker(night.url)() as s:
        first = night_report(s, NIGHT, out, camera="fa03")
        files = sorted(p.name for p in out.iterdir())
        second = night_report(s, NIGHT, out, camera="fa03")
    assert sorted(p.name for p in out.iterdir()) == files  # nothing new, no temporary files
    assert not [f for f in files if f.endswith(".tmp")]
    strip = lambda d: {k: v for k, v in d.items() if k != "generated_at"}  # noqa: E731
    assert strip(first.data) == strip(second.data)
    assert first.data["cameras"] == ["fa03"]


def _add_product(night: Night, name: str, product: Path) -> int:
    with get_sessionmaker(night.url)() as s:
        fa03 = s.scalar(sa.select(Instrument.id).where(Instrument.camera == "fa03"))
        frame_id = _raw(s, name, fa03, NIGHT, "EXPOSE", FrameState.DONE, filter_name="rp",
                        product=product).id  # fmt: skip
        s.commit()
    return frame_id


def test_a_damaged_product_is_an_error_entry_and_the_night_goes_on(night: Night) -> None:
    root = night.root / "files"
    # a catalogue cut short on disk (the image before it is intact)
    truncated = root / "sci-truncated.fits.fz"
    _science(truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) - 2000])
    # a catalogue without the shape columns: a thumbnail without ellipses, not an error
    frame, catalog = _science(root / "tmp.fits.fz")
    bare = root / "sci-bare.fits.fz"
    write_product(bare, frame, catalog=catalog["X", "Y", "RA", "DEC"])
    # "solved" with a WCS astropy cannot parse
    broken = root / "sci-badwcs.fits.fz"
    header = frame.header.copy()
    header["CTYPE1"] = "RA---XYZ"
    header["CTYPE2"] = "RA---XYZ"
    write_product(broken, Frame(sci=frame.sci, err=frame.err, bpm=frame.bpm, header=header,
                                unit="electron"), catalog=catalog)  # fmt: skip
    ids = {name: _add_product(night, name, path) for name, path in
           (("e-trunc", truncated), ("e-bare", bare), ("e-badwcs", broken))}  # fmt: skip
    with get_sessionmaker(night.url)() as s:
        report = night_report(s, NIGHT, night.root / "qc")
        assert not s.in_transaction()  # the registry is not held while pictures are drawn
    frames = {f["id"]: f for f in report.data["frames"]}
    assert frames[ids["e-trunc"]]["error"] and "sci-truncated" in frames[ids["e-trunc"]]["error"]
    assert frames[ids["e-badwcs"]]["error"] and "sci-badwcs" in frames[ids["e-badwcs"]]["error"]
    assert frames[ids["e-bare"]]["error"] is None and frames[ids["e-bare"]]["images"]
    assert frames[ids["e-bare"]]["residual_n"] == 0  # no REF_RA column: nothing to recompute
    assert frames[night.ids["science"]]["images"]  # the good frame is still drawn
    assert len(report.errors) == 3  # the two products and the lost dark master
    # a frame left out of a bad master and of its rebuild is counted once
    assert report.data["summary"]["frames_left_out_of_masters"] == 4


def test_pictures_no_longer_on_the_page_are_removed(night: Night) -> None:
    out = night.root / "qc"
    (out).mkdir()
    (out / "notes.png").write_bytes(b"not ours")
    with get_sessionmaker(night.url)() as s:
        first = night_report(s, NIGHT, out)
        gone = night.ids["fa04_bias"]
        pictures = {n for m in first.data["masters"] if m["id"] == gone
                    for n in m["images"].values()}  # fmt: skip
        assert pictures and all((out / n).exists() for n in pictures)
        s.execute(sa.delete(MasterCalibration).where(MasterCalibration.id == gone))
        s.commit()
        second = night_report(s, NIGHT, out)
    assert gone not in {m["id"] for m in second.data["masters"]}
    assert not any((out / n).exists() for n in pictures)
    assert (out / "notes.png").exists()  # not a name qc writes: left alone
    for entry in [*second.data["masters"], *second.data["frames"]]:
        assert all((out / n).exists() for n in entry["images"].values())
