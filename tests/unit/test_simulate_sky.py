"""The simulator's sky: the true TAN-SIP WCS of each light frame, real Tycho-2 stars, wide field.

Answers are computed here independently of ``pylcogt.simulate`` where it matters: the Sinistro
mosaic is rebuilt from the raw sections, the Tycho-2 stars are read by running ``query-starkd``
directly, and sky <-> pixel goes through astropy's WCS built from the truth file's cards.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.cli import main
from pylcogt.errors import ConfigurationError
from pylcogt.simulate import simulate_night
from pylcogt.simulate.truth import truth_entry, truth_wcs

INSTALL = "apt-get install --no-install-recommends astrometry.net astrometry-data-tycho2-10-19"
SEC_RE = re.compile(r"^\[(\d+):(\d+),(\d+):(\d+)\]$")
WIDE = {"size": 1024, "pixscale": 6.0, "n_bias": 1, "n_dark": 0, "n_flat": 0, "n_science": 1}


def require_astrometry(index_dir: Path) -> None:
    """query-starkd and the Tycho-2 index files (scales 10-19, linked into ``index_dir`` by the
    ``tycho2_index_dir`` fixture): a failure under CI, else a skip."""
    problems = []
    if shutil.which("query-starkd") is None:
        problems.append("query-starkd is not on PATH")
    if not sorted(index_dir.glob("index-tycho2-*.fits")):
        problems.append("no index-tycho2-1[0-9]*.fits in /usr/share/astrometry")
    if problems:
        msg = "; ".join(problems) + f": install with `{INSTALL}`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def simulate(tmp_path_factory, name: str, **kwargs):
    night = simulate_night(tmp_path_factory.mktemp(name), **kwargs)
    return night, json.loads(night.truth_path.read_text())


@pytest.fixture(scope="module")
def wide_sinistro(tmp_path_factory, tycho2_index_dir):
    require_astrometry(tycho2_index_dir)
    return simulate(
        tmp_path_factory, "wide-sinistro", camera="sinistro", seed=21, stars="tycho2",
        filters=("rp",), index_dir=tycho2_index_dir, **WIDE,
    )  # fmt: skip


@pytest.fixture(scope="module")
def wide_sbig(tmp_path_factory, tycho2_index_dir):
    """2048 unbinned = 1024 binned pixels: 1.7 deg, like the Sinistro at 1024."""
    require_astrometry(tycho2_index_dir)
    return simulate(
        tmp_path_factory, "wide-sbig", camera="sbig", seed=22, stars="tycho2", filters=("V",),
        index_dir=tycho2_index_dir, **{**WIDE, "size": 2048},
    )  # fmt: skip


@pytest.fixture(scope="module")
def small_nights(tmp_path_factory):
    """Synthetic stars at the nominal pixel scale (no astrometry.net needed)."""
    common = {"size": 256, "n_bias": 1, "n_dark": 0, "n_flat": 1, "n_science": 1}
    return {
        "sinistro": simulate(
            tmp_path_factory, "sin", camera="sinistro", seed=23, distortion=4.0, **common
        ),
        "sbig": simulate(
            tmp_path_factory, "sbig", camera="sbig", seed=24, distortion=-3.0, **common
        ),
        "spectral": simulate(tmp_path_factory, "spec", camera="spectral", seed=25, **common),
    }


def science(night, truth):
    return [
        (p, e) for p, e in zip(night.files, truth["files"], strict=True) if e["obstype"] == "EXPOSE"
    ]


def sec(text: str) -> tuple[int, int, int, int]:
    match = SEC_RE.match(text.strip())
    assert match, text
    return tuple(int(g) for g in match.groups())


def final_image_e(path: Path, truth: dict) -> np.ndarray:
    """Raw frame -> electrons in final-frame orientation, numpy [y - 1, x - 1]: the Sinistro
    amplifiers overscan-subtracted and placed by DETSEC (reversed range = flipped axis); SBIG
    minus its bias level, cut to TRIMSEC."""
    gains = truth["gain_e_per_adu"]
    with fits.open(path) as hdul:
        hdus = [h for h in hdul if h.data is not None]
        if len(hdus) == 1:
            data = hdus[0].data.astype(float)
            x1, x2, y1, y2 = sec(hdus[0].header["TRIMSEC"])
            return (data[y1 - 1 : y2, x1 - 1 : x2] - truth["bias_level_adu"][0]) * gains[0]
        size = truth["size"]
        out = np.full((size, size), np.nan)
        for k, hdu in enumerate(hdus):
            d = hdu.data.astype(float)
            bx1, bx2, by1, by2 = sec(hdu.header["BIASSEC"])
            d = (d - d[by1 - 1 : by2, bx1 - 1 : bx2].mean()) * gains[k]
            x1, x2, y1, y2 = sec(hdu.header["DATASEC"])
            block = d[y1 - 1 : y2, x1 - 1 : x2]
            dx1, dx2, dy1, dy2 = sec(hdu.header["DETSEC"])
            if dx1 > dx2:
                block = block[:, ::-1]
            if dy1 > dy2:
                block = block[::-1, :]
            out[min(dy1, dy2) - 1 : max(dy1, dy2), min(dx1, dx2) - 1 : max(dx1, dx2)] = block
        assert not np.isnan(out).any()
        return out


def peak_fraction(fwhm_px: float) -> float:
    """Fraction of a Gaussian's flux in the pixel it is centred on."""
    return math.erf(0.5 / (math.sqrt(2) * fwhm_px / 2.3548)) ** 2


def full_well_e(truth: dict) -> float:
    return min(
        (truth["saturate_adu"] - level - truth["data_offset_adu"]) * gain
        for level, gain in zip(truth["bias_level_adu"], truth["gain_e_per_adu"], strict=True)
    )


def centroid(image: np.ndarray, x: float, y: float, half: int = 5) -> tuple[float, float]:
    """First moments (1-indexed FITS x, y) in a (2 half + 1)^2 box around the nearest pixel of
    (x, y), after subtracting the median of the ring between half + 2 and half + 5 pixels."""
    c, r = int(round(x)) - 1, int(round(y)) - 1
    outer = half + 5
    cut = image[r - outer : r + outer + 1, c - outer : c + outer + 1]
    yy, xx = np.mgrid[-outer : outer + 1, -outer : outer + 1]
    ring = np.maximum(abs(xx), abs(yy)) >= half + 2
    box = np.maximum(abs(xx), abs(yy)) <= half
    signal = cut[box] - np.median(cut[ring])
    return (
        c + 1 + float((signal * xx[box]).sum() / signal.sum()),
        r + 1 + float((signal * yy[box]).sum() / signal.sum()),
    )


def sky_light_e(night, path: Path, entry: dict, truth: dict) -> np.ndarray:
    """Sky + stars in electrons, final-frame orientation: the raw electrons minus the truth dark
    current (hot pixels) and cosmic rays, divided by the truth flat (bad columns, dust)."""
    maps = np.load(night.maps_path)
    image = final_image_e(path, truth) - maps["dark_current"] * entry["exptime"]
    for x, y, deposit in entry["cosmic_rays"]:
        image[y - 1, x - 1] -= deposit
    return image / maps[f"flat_{entry['filter']}"]


def isolated_unsaturated(entry: dict, truth: dict, shape, *, tycho: bool):
    """Well-exposed unsaturated stars away from the edges, no other star's light near them."""
    sigma = entry["fwhm_px"] / 2.3548
    ny, nx = shape
    out = []
    for s in entry["stars"]:
        if tycho and not s["tycho2"]:
            continue
        peak = s["flux_e"] * peak_fraction(entry["fwhm_px"]) + entry["sky_e"]
        if not (s["flux_e"] > 5e3 and peak < 0.7 * full_well_e(truth)):
            continue
        if not (15 < s["x"] < nx - 15 and 15 < s["y"] < ny - 15):
            continue
        crowded = False
        for o in entry["stars"]:
            d = max(math.hypot(o["x"] - s["x"], o["y"] - s["y"]) - 8.0, 0.0)
            if o is not s and o["flux_e"] * math.exp(-0.5 * (d / sigma) ** 2) > 1e-3 * s["flux_e"]:
                crowded = True
                break
        if not crowded:
            out.append(s)
    return out


# --------------------------------------------------------------------------- truth WCS


@pytest.mark.parametrize("camera", ["sinistro", "sbig", "spectral"])
def test_truth_wcs_maps_stars_to_truth_pixels(small_nights, camera):
    night, truth = small_nights[camera]
    n_frames = 0
    for path, entry in zip(night.files, truth["files"], strict=True):
        if entry["obstype"] not in ("EXPOSE", "SKYFLAT"):
            with pytest.raises(ValueError):
                truth_wcs(truth, path.name)
            continue
        wcs = truth_wcs(truth, path.name)
        assert wcs.wcs.ctype[0] == "RA---TAN-SIP" and wcs.sip is not None
        stars = entry["stars"]
        if not stars:  # sparse flat fields may have none
            assert entry["obstype"] == "SKYFLAT"
            continue
        xy = np.array([[s["x"], s["y"]] for s in stars])
        radec = np.array([[s["ra"], s["dec"]] for s in stars])
        assert np.abs(wcs.all_world2pix(radec, 1, tolerance=1e-8) - xy).max() < 0.01
        back = wcs.all_pix2world(xy, 1)
        dra = (back[:, 0] - radec[:, 0] + 180) % 360 - 180
        arcsec = np.hypot(dra * np.cos(np.radians(radec[:, 1])), back[:, 1] - radec[:, 1]) * 3600
        assert arcsec.max() < 0.01 * truth["pixscale_arcsec"]
        # the reference pixel is the detector centre, in final-frame pixels
        dx, dy = truth["trim_offset_xy"]
        n = truth["size"] // truth["binning"]
        assert tuple(wcs.wcs.crpix) == ((n + 1) / 2 - dx, (n + 1) / 2 - dy)
        # CRVAL is near, not at, the header pointing (pointing error)
        err = np.hypot(*entry["pointing_error_arcsec"])
        ra, dec = entry["pointing_ra_dec"]
        sep = (
            np.hypot((wcs.wcs.crval[0] - ra) * np.cos(np.radians(dec)), wcs.wcs.crval[1] - dec)
            * 3600
        )
        assert sep == pytest.approx(err, abs=0.01) and 0 < err < 60
        n_frames += 1
    assert n_frames >= 3
    # the same entry by raw name, plain .fits name, or a reduced product's name (-e91)
    name = science(night, truth)[0][0].name
    stem = name.removesuffix(".fits")
    for other in (name, stem, stem + ".fits.fz", stem[:-4] + "-e91.fits"):
        assert truth_entry(night.truth_path, other)["name"] == name


@pytest.mark.parametrize(
    ("fixture", "camera", "expected"),
    [
        ("small_nights", "sinistro", 4.0),
        ("small_nights", "sbig", -3.0),
        ("wide_sinistro", "", 25.0),
    ],
)
def test_distortion_at_the_corners_is_the_requested_amount(request, fixture, camera, expected):
    """As asked (4 arcsec; -3: pincushion), or the default (25 arcsec in wide mode)."""
    value = request.getfixturevalue(fixture)
    night, truth = value[camera] if camera else value
    ny, nx = truth["final_shape_yx"]
    corners = np.array([[1, 1], [nx, 1], [1, ny], [nx, ny]], dtype=float)
    for path, _ in science(night, truth):
        wcs = truth_wcs(truth, path)
        centre = np.array(wcs.wcs.crval)
        full, linear = wcs.all_pix2world(corners, 1), wcs.wcs_pix2world(corners, 1)
        cosd = np.cos(np.radians(linear[:, 1]))
        shift = np.hypot((full[:, 0] - linear[:, 0]) * cosd, full[:, 1] - linear[:, 1]) * 3600
        assert shift.max() == pytest.approx(abs(expected), rel=0.1)
        # barrel (positive): the corner pixel sees sky farther out than the linear part says
        r_full = np.hypot((full[:, 0] - centre[0]) * cosd, full[:, 1] - centre[1])
        r_lin = np.hypot((linear[:, 0] - centre[0]) * cosd, linear[:, 1] - centre[1])
        assert np.all(np.sign(r_full - r_lin) == np.sign(expected))


def test_wide_field_linear_fit_is_measurably_worse(wide_sinistro):
    """A TAN fit without SIP (best affine in the tangent plane) leaves pixel-level residuals."""
    night, truth = wide_sinistro
    ((path, entry),) = science(night, truth)
    wcs = truth_wcs(truth, path)
    stars = entry["stars"]
    xy = np.array([[s["x"], s["y"]] for s in stars])
    radec = np.array([[s["ra"], s["dec"]] for s in stars])
    plane = wcs.wcs_world2pix(radec, 1)  # the linear part's pixels: an affine map of the plane
    design = np.column_stack([plane, np.ones(len(plane))])
    coeffs, *_ = np.linalg.lstsq(design, xy, rcond=None)
    residual = np.hypot(*(design @ coeffs - xy).T)
    assert residual.max() > 1.0 and np.sqrt(np.mean(residual**2)) > 0.2


# --------------------------------------------------------------------------- stars in the pixels


@pytest.mark.parametrize("fixture", ["wide_sinistro", "wide_sbig"])
def test_tycho_stars_are_where_the_truth_wcs_says(request, fixture):
    """Centroids in the raw pixels (electrons, 1-indexed final-frame x, y) are where the truth
    WCS puts the Tycho-2 stars."""
    night, truth = request.getfixturevalue(fixture)
    ((path, entry),) = science(night, truth)
    image = sky_light_e(night, path, entry, truth)
    assert image.shape == tuple(truth["final_shape_yx"])
    wcs = truth_wcs(truth, path)
    checked = 0
    for s in isolated_unsaturated(entry, truth, image.shape, tycho=True):
        cx, cy = centroid(image, s["x"], s["y"])
        ((tx, ty),) = wcs.all_world2pix([[s["ra"], s["dec"]]], 1)
        assert math.hypot(cx - tx, cy - ty) < 0.1, (s, cx, cy)
        checked += 1
    assert checked >= 3


def test_wide_mode_header_and_brightness(wide_sinistro, wide_sbig):
    for night, truth in (wide_sinistro, wide_sbig):
        assert truth["pixscale_arcsec"] == 6.0 and truth["wide_field"]
        assert truth["stars_source"] == "tycho2"
        for path, entry in science(night, truth):
            with fits.open(path) as hdul:
                header = hdul[0].header if "PIXSCALE" in hdul[0].header else hdul[1].header
            assert header["PIXSCALE"] == 6.0
            assert abs(header["CD1_1"]) == pytest.approx(6.0 / 3600) and header["CD1_1"] < 0
            wcs = truth_wcs(truth, path)
            scale = np.sqrt(abs(np.linalg.det(wcs.wcs.cd))) * 3600
            assert scale == pytest.approx(6.0, rel=1e-9)
            assert entry["fwhm_px"] >= 2.2 - 1e-3
            # a mag 8-9 star peaks at roughly half the full well
            bright = [s for s in entry["stars"] if 8.0 < s["mag"] < 9.0]
            for s in bright:
                level = (s["flux_e"] * peak_fraction(entry["fwhm_px"]) + entry["sky_e"]) / (
                    full_well_e(truth)
                )
                assert 0.2 < level < 1.0, (s, level)
            tycho = [s for s in entry["stars"] if s["tycho2"]]
            saturated = [
                s
                for s in tycho
                if s["flux_e"] * peak_fraction(entry["fwhm_px"]) + entry["sky_e"]
                > full_well_e(truth)
            ]
            assert len(saturated) < 0.5 * len(tycho)  # Tycho-2 V_T: ~25% brighter than 8
            # many faint (synthetic) sources as well, still above the noise
            faint = [s for s in entry["stars"] if not s["tycho2"]]
            assert len(faint) > 200 and len(faint) > 5 * len(tycho)
            assert 1.0 <= entry["exptime"] <= 180.0


# --------------------------------------------------------------------------- Tycho-2 content


def query_starkd_direct(
    ra: float, dec: float, radius: float, tmp_path: Path, index_dir: Path
) -> np.ndarray:
    """(ra, dec, mag_vt) rows of all index files, duplicates within 1 arcsec removed."""
    rows = []
    for k, index in enumerate(sorted(index_dir.glob("index-tycho2-*.fits"))):
        out = tmp_path / f"direct-{k}.fits"
        subprocess.run(
            ["query-starkd", "-o", str(out), "-r", str(ra), "-d", str(dec), "-R", str(radius),
             "-T", str(index)],
            check=True, capture_output=True,
        )  # fmt: skip
        if out.exists():
            with fits.open(out) as hdul:
                d = hdul[1].data
                rows += [(float(r), float(e), float(m)) for r, e, m in zip(
                    d["RA"], d["DEC"], d["MAG_VT"], strict=True)]  # fmt: skip
    unique: list[tuple[float, float, float]] = []
    for r, e, m in rows:
        if not any(
            math.hypot((r - u[0]) * math.cos(math.radians(e)), e - u[1]) * 3600 < 1.0
            for u in unique
        ):
            unique.append((r, e, m))
    return np.array(unique)


@pytest.mark.parametrize("fixture", ["wide_sinistro", "wide_sbig"])
def test_tycho_mode_contains_the_index_stars(request, fixture, tmp_path, tycho2_index_dir):
    night, truth = request.getfixturevalue(fixture)
    ((path, entry),) = science(night, truth)
    wcs = truth_wcs(truth, path)
    ny, nx = truth["final_shape_yx"]
    ((ra, dec),) = wcs.all_pix2world([[(nx + 1) / 2, (ny + 1) / 2]], 1)
    direct = query_starkd_direct(ra, dec, 1.6, tmp_path, tycho2_index_dir)
    x, y = wcs.all_world2pix(direct[:, 0], direct[:, 1], 1)
    inside = (x >= 0.5) & (x < nx + 0.5) & (y >= 0.5) & (y < ny + 0.5)
    tycho = [s for s in entry["stars"] if s["tycho2"]]
    assert len(tycho) == int(inside.sum()) >= 10  # ~11 per square degree, 2.9 square degrees
    for s in tycho:
        d = np.hypot(
            (direct[:, 0] - s["ra"]) * np.cos(np.radians(s["dec"])), direct[:, 1] - s["dec"]
        )
        k = int(np.argmin(d))
        assert d[k] * 3600 < 0.01
        if entry["filter"] == "V":  # V = Tycho V_T
            assert s["mag"] == pytest.approx(direct[k, 2], abs=1e-3)
    # away from the galactic plane
    assert abs(truth["tycho2_index"]["galactic_latitude_deg"]) >= 30


def test_missing_index_files_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="astrometry-data-tycho2-10-19"):
        simulate_night(tmp_path / "out", stars="tycho2", index_dir=tmp_path / "nowhere", **WIDE)
    assert not (tmp_path / "out").exists()


def test_missing_query_starkd_is_a_configuration_error(tmp_path, monkeypatch, tycho2_index_dir):
    require_astrometry(tycho2_index_dir)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigurationError, match="query-starkd"):
        simulate_night(tmp_path / "out", stars="tycho2", index_dir=tycho2_index_dir, **WIDE)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs", [{"stars": "gaia"}, {"pixscale": 0.0}, {"pixscale": -1.0}, {"distortion": math.nan}]
)
def test_bad_sky_arguments_raise_value_error(tmp_path, kwargs):
    with pytest.raises(ValueError):
        simulate_night(tmp_path, size=128, **kwargs)
    assert not list(tmp_path.glob("*.fits*"))


def test_nominal_pixscale_and_distortion_by_default(small_nights):
    """5 arcsec at the corners, but at most 2% of the corner distance on small frames."""
    night, truth = small_nights["spectral"]
    assert truth["pixscale_arcsec"] == truth["nominal_pixscale_arcsec"] == 0.301
    corner = truth["optics"]["corner_radius_px"] * 0.301
    assert corner < 250  # a small frame: the cap applies
    assert truth["optics"]["distortion_corner_arcsec"] == pytest.approx(0.02 * corner, abs=1e-4)
    assert not truth["wide_field"]
    assert truth["stars_source"] == "synthetic" and truth["tycho2_index"] is None
    for path, entry in science(night, truth):
        with fits.open(path) as hdul:
            assert hdul[0].header["PIXSCALE"] == 0.301
        assert not any(s["tycho2"] for s in entry["stars"])
        assert 30 <= entry["exptime"] <= 300


def test_too_much_distortion_is_refused(tmp_path):
    with pytest.raises(ValueError, match="distortion"):
        simulate_night(tmp_path, camera="sinistro", size=128, distortion=10.0)
    assert not list(tmp_path.glob("*.fits*"))


# --------------------------------------------------------------------------- CLI


def test_cli_simulate_wide_tycho2(tmp_path, capsys, tycho2_index_dir):
    require_astrometry(tycho2_index_dir)
    out = tmp_path / "raw"
    code = main(["simulate", str(out), "--camera", "sbig", "--size", "1024", "--n-bias", "0",
                 "--n-dark", "0", "--n-flat", "0", "--n-science", "1", "--filters", "rp",
                 "--stars", "tycho2", "--pixscale", "6", "--distortion", "20",
                 "--index-dir", str(tycho2_index_dir), "--no-faint-stars", "-q",
                 "--json"])  # fmt: skip
    assert code == 0
    files = json.loads(capsys.readouterr().out)["files"]
    truth = json.loads((out / "truth.json").read_text())
    assert truth["pixscale_arcsec"] == 6.0 and truth["optics"]["distortion_corner_arcsec"] == 20
    (entry,) = truth["files"]
    assert entry["stars"] and all(s["tycho2"] for s in entry["stars"])
    assert truth_wcs(truth, files[0]).sip is not None


def test_cli_simulate_errors(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "a"), "--stars", "tycho2", "--index-dir",
                 str(tmp_path / "none"), "-q"]) == 2  # fmt: skip
    assert "apt-get install" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "b"), "--pixscale", "0", "-q"]) == 2
    assert "--pixscale" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", str(tmp_path / "c"), "--stars", "nope"])
