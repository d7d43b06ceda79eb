"""A simulated night of each camera family end to end through the CLI: masters and reduced
frames are compared with the simulator's truth (known answers), and provenance is recorded.

Sinistro (overscan, crosstalk, four amplifiers), SBIG (no overscan: the bias level comes from the
master bias) and Spectral (overscan, 2x2 binning).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from pylcogt.frame import PixelFlag
from pylcogt.io.products import read_product

from .test_cli import run

N_BIAS, N_DARK, N_FLAT = 4, 2, 2  # per set: afternoon + morning


SIZES = {"sinistro": 512, "sbig": 1024, "spectral": 1024}  # unbinned; SBIG/Spectral bin 2x2


@pytest.fixture(scope="module", params=sorted(SIZES))
def night(request, tmp_path_factory) -> dict:
    camera = request.param
    work = tmp_path_factory.mktemp(f"night-{camera}")
    raw = work / "raw"
    run("simulate", str(raw), "--camera", camera, "--size", str(SIZES[camera]),
        "--n-bias", str(N_BIAS), "--n-dark", str(N_DARK), "--n-flat", str(N_FLAT),
        "--n-science", "1", "-q", cwd=work)  # fmt: skip
    run("ingest", str(raw), "-q", cwd=work)
    instrument = json.loads((raw / "truth.json").read_text())["instrument"]
    built = {}
    for kind in ("bias", "dark", "skyflat", "bpm"):
        out = run("stack", "--instrument", instrument, "--night", "20261128", "--type", kind,
                  "--json", "-q", cwd=work)  # fmt: skip
        built[kind] = json.loads(out.stdout)
    science = sorted(raw.glob("*-e00.fits"))
    reduced = json.loads(run("reduce", *map(str, science), "--json", "-q", cwd=work).stdout)
    truth = json.loads((raw / "truth.json").read_text())
    maps = dict(np.load(raw / "truth_maps.npz"))
    return {"work": work, "built": built, "reduced": reduced, "truth": truth, "maps": maps,
            "camera": camera, "instrument": instrument}  # fmt: skip


def _gain_map(truth: dict) -> np.ndarray:
    """Per-pixel gain (e-/ADU) in the final orientation; Sinistro: amps 2|3 bottom, 1|4 top
    (the real frame's DETSEC layout)."""
    ny, nx = truth["final_shape_yx"]
    g = truth["gain_e_per_adu"]
    if len(g) == 1:
        return np.full((ny, nx), g[0])
    out = np.empty((ny, nx))
    out[: ny // 2, : nx // 2], out[: ny // 2, nx // 2 :] = g[1], g[2]
    out[ny // 2 :, : nx // 2], out[ny // 2 :, nx // 2 :] = g[0], g[3]
    return out


def test_master_bias_noise_is_read_noise_over_sqrt_n(night) -> None:
    (bias,) = night["built"]["bias"]
    assert bias["n_inputs"] == 2 * N_BIAS
    master = read_product(Path(bias["path"]))
    truth = night["truth"]
    residual = master.sci - _gain_map(truth) * night["maps"]["bias_structure"]
    expected = truth["read_noise_e"] / np.sqrt(2 * N_BIAS)
    h = residual.shape[0] // 2
    for quadrant in (residual[:h, :h], residual[:h, h:], residual[h:, :h], residual[h:, h:]):
        core = quadrant[2:-2, 2:-2]
        assert np.std(core) == pytest.approx(expected, rel=0.25)
    assert master.header["NINPUTS"] == 2 * N_BIAS
    assert "BIASLVL" in master.header


def test_master_dark_is_the_dark_rate(night) -> None:
    (dark,) = night["built"]["dark"]
    master = read_product(Path(dark["path"]))
    assert master.unit == "electron/s"
    truth_rate = night["maps"]["dark_current"]
    assert np.median(master.sci) == pytest.approx(np.median(truth_rate), abs=0.01)
    for x, y, rate in night["truth"]["hot_pixels"][:20]:
        assert master.sci[y - 1, x - 1] == pytest.approx(rate, rel=0.2, abs=0.3)


def test_master_flats_match_the_truth(night) -> None:
    flats = {f["filter"]: f for f in night["built"]["skyflat"]}
    assert set(flats) == {"rp", "V"}
    for name, entry in flats.items():
        assert entry["n_inputs"] == 2 * N_FLAT
        master = read_product(Path(entry["path"]))
        ratio = master.sci / night["maps"][f"flat_{name}"]
        good = master.bpm == 0
        assert np.median(ratio[good]) == pytest.approx(1.0, abs=0.01)
        assert np.std(ratio[good]) < 0.01
        for x, response in night["truth"]["bad_columns"]:
            assert (master.bpm[:, x - 1] & PixelFlag.LOW_FLAT).mean() > 0.9 or response >= 0.2


def test_science_frames_recover_sky_and_star_fluxes(night) -> None:
    truth_files = {f["name"]: f for f in night["truth"]["files"]}
    assert len(night["reduced"]) == 2
    ratios = []
    for entry in night["reduced"]:
        assert entry["state"] == "done", entry
        assert set(entry["masters"]) == {"bias", "dark", "flat", "bpm"}
        frame = read_product(Path(entry["product"]))
        info = truth_files[Path(entry["path"]).name]
        sky = np.median(frame.sci[frame.bpm == 0])
        assert sky == pytest.approx(info["sky_e"], rel=0.03)
        yy, xx = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]]
        stars = info["stars"]
        for star in stars:
            x, y = star["x"] - 1, star["y"] - 1
            inside = 12 < x < frame.shape[1] - 12 and 12 < y < frame.shape[0] - 12
            bright = 2e4 < star["flux_e"] < 1e6  # well measured, not saturated
            isolated = all(
                (o["x"] - star["x"]) ** 2 + (o["y"] - star["y"]) ** 2 > 25**2
                or o["flux_e"] < 0.01 * star["flux_e"]
                for o in stars
                if o is not star
            )
            aperture = (xx - x) ** 2 + (yy - y) ** 2 < 10**2
            if inside and bright and isolated and not frame.bpm[aperture].any():
                ratios.append(float(np.sum(frame.sci[aperture] - sky)) / star["flux_e"])
    assert len(ratios) >= 2
    assert np.median(ratios) == pytest.approx(1.0, abs=0.03)


def test_provenance_is_recorded(night) -> None:
    with sqlite3.connect(night["work"] / "pylcogt.db") as db:
        roles = db.execute(
            "SELECT f.filename, c.role, m.obstype FROM reduction_masters c "
            "JOIN reductions r ON r.id = c.reduction_id AND r.status = 'current' "
            "JOIN raw_frames f ON f.id = r.frame_id "
            "JOIN master_calibrations m ON m.id = c.master_id"
        ).fetchall()
        assert {(r[1], r[2]) for r in roles} == {
            ("bias", "BIAS"),
            ("dark", "DARK"),
            ("flat", "SKYFLAT"),
            ("bpm", "BPM"),
        }
        prepared_with = dict(
            db.execute(
                "SELECT f.obstype, sum((i.bias_master_id IS NOT NULL) + (i.dark_master_id IS NOT "
                "NULL)) FROM master_inputs i JOIN raw_frames f ON f.id = i.frame_id "
                "JOIN master_calibrations m ON m.id = i.master_id AND m.obstype = f.obstype "
                "GROUP BY f.obstype"
            ).fetchall()
        )
        # darks were prepared with a bias, flats with a bias and a dark: recorded per input
        assert prepared_with["DARK"] == 2 * N_DARK
        assert prepared_with["SKYFLAT"] == 2 * 2 * 2 * N_FLAT
        inputs = db.execute("SELECT count(*) FROM master_inputs").fetchone()[0]
        masters = 2 * N_BIAS + 2 * N_DARK + 2 * 2 * N_FLAT
        bpm_inputs = 2 * N_DARK + 2 * 2 * N_FLAT  # the raw frames of the dark and flats
        assert inputs == masters + bpm_inputs
        states = dict(
            db.execute(
                "SELECT obstype, count(*) FROM raw_frames WHERE state='done' GROUP BY obstype"
            )
        )
        assert states == {
            "BIAS": 2 * N_BIAS,
            "DARK": 2 * N_DARK,
            "SKYFLAT": 4 * N_FLAT,
            "EXPOSE": 2,
        }


def test_bad_pixel_mask_flags_hot_pixels_in_products(night) -> None:
    (bpm,) = night["built"]["bpm"]
    mask = read_product(Path(bpm["path"]))
    hot = night["truth"]["hot_pixels"]
    flagged = [mask.bpm[y - 1, x - 1] & PixelFlag.BAD for x, y, rate in hot if rate > 2.0]
    assert len(flagged) > 5 and all(flagged)
    for x, _ in night["truth"]["bad_columns"]:
        assert (mask.bpm[:, x - 1] & PixelFlag.BAD).all()
    assert mask.header["NBADPIX"] < 0.02 * mask.bpm.size
    product = read_product(Path(night["reduced"][0]["product"]))
    assert all(product.bpm[y - 1, x - 1] & PixelFlag.BAD for x, y, rate in hot if rate > 2.0)


def test_reducing_again_replaces_product_and_provenance(night) -> None:
    entry = night["reduced"][0]
    before = Path(entry["product"]).stat().st_mtime_ns
    again = json.loads(run("reduce", entry["path"], "--json", "-q", cwd=night["work"]).stdout)
    assert again[0]["state"] == "done" and again[0]["product"] == entry["product"]
    assert Path(entry["product"]).stat().st_mtime_ns >= before
    with sqlite3.connect(night["work"] / "pylcogt.db") as db:
        rows = db.execute(
            "SELECT count(*) FROM reduction_masters c JOIN reductions r ON r.id = c.reduction_id "
            "AND r.status = 'current' JOIN raw_frames f ON f.id = r.frame_id WHERE f.path = ?",
            (entry["path"],),
        ).fetchone()[0]
        history = db.execute(
            "SELECT r.status, r.reason FROM reductions r JOIN raw_frames f ON f.id = r.frame_id "
            "WHERE f.path = ? ORDER BY r.id", (entry["path"],),
        ).fetchall()  # fmt: skip
    assert rows == 4  # bias, dark, flat, bpm of the current reduction
    # the earlier reduction is kept in the history, superseded by the one `reduce` made
    assert [status for status, _ in history] == ["superseded", "current"]
    assert history[-1][1] == "pylcogt reduce"


def test_external_bad_pixel_mask_is_registered(night) -> None:
    from astropy.io import fits

    work = night["work"]
    flags = np.zeros(night["truth"]["final_shape_yx"], np.uint8)
    flags[100, 200] = 1
    fits.PrimaryHDU(flags).writeto(work / "mask.fits")
    frames = json.loads(run("frames", "list", "--json", cwd=work).stdout)
    binning, mode = frames[0]["binning"], frames[0]["readout_mode"]
    out = json.loads(run("calibrations", "add", str(work / "mask.fits"), "--type", "bpm",
                         "--instrument", night["instrument"], "--night", "20261128",
                         "--binning", binning, "--readout-mode", mode, "--json",
                         cwd=work).stdout)  # fmt: skip
    listed = json.loads(run("calibrations", "list", "--type", "bpm", "--json", cwd=work).stdout)
    assert out["master_id"] in {m["id"] for m in listed} and len(listed) == 2
    assert read_product(Path(out["path"])).bpm[100, 200] == 1
    (work / "junk.fits").write_text("not fits")
    bad = run("calibrations", "add", str(work / "junk.fits"), "--type", "BPM", "--instrument",
              night["instrument"], "--night", "20261128", cwd=work, check=False)  # fmt: skip
    assert bad.returncode == 1 and "junk.fits is not a FITS file" in bad.stderr  # bad input
    # a truncated mask is refused too (it was registered, padded with zeros, before)
    (work / "cut.fits").write_bytes((work / "mask.fits").read_bytes()[:5000])
    cut = run("calibrations", "add", str(work / "cut.fits"), "--type", "BPM", "--instrument",
              night["instrument"], "--night", "20261128", cwd=work, check=False)  # fmt: skip
    assert cut.returncode == 1 and "cut.fits is truncated" in cut.stderr
    assert "Traceback" not in bad.stderr + cut.stderr
