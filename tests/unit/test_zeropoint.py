"""Photometric calibration: zero point and colour term against a reference catalogue.

Synthetic frames (seeded): reference stars with catalogue errors, instrumental fluxes from a
known zero point and colour term, Poisson + background flux errors, an intrinsic 0.01 mag
scatter (the default error floor). End to end: a simulated night, its Pan-STARRS-like reference
catalogue and the truth stars' fluxes give back the truth's zero points.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from pylcogt.errors import ConfigurationError
from pylcogt.io.refcat_files import read_reference_table
from pylcogt.photometry import (
    CALIBRATED,
    PHOTOMETRY_KEYWORDS,
    PhotometryConfig,
    ReferenceStars,
    band_magnitudes,
    calibrate_photometry,
    field_cone,
    reference_stars_near,
    stars_from_table,
)
from pylcogt.photometry.refcat import clear_file_cache, load_reference_file
from pylcogt.photometry.zeropoint import (
    FILTER_NOT_SUPPORTED,
    NO_EXPTIME,
    NO_OVERLAP,
    NO_WCS,
    TOO_FEW,
)
from pylcogt.simulate import simulate_night
from pylcogt.simulate.refcat import write_reference_catalog
from pylcogt.stages.detect import SourceFlag, empty_catalog

RA0, DEC0 = 150.0, 2.0
ZP, CT, PIVOT = 23.4, 0.08, 0.5  # truth: m_ref - m_inst = ZP + CT * ((g-r) - PIVOT)


def _header(filter_name: str = "rp", exptime: float = 60.0, aststat: str = "solved"):
    return fits.Header({"FILTER": filter_name, "EXPTIME": exptime, "ASTSTAT": aststat})


def synthetic(seed: int, n: int = 80, *, zp: float = ZP, ct: float = CT, exptime: float = 60.0,
              band: str = "r", scatter: float = 0.01):  # fmt: skip
    """(catalog, reference stars, truth dict) of one synthetic frame calibrated in ``band``
    (r: reference r; V: reference V computed from g, r with Tonry et al. 2012, written out
    here independently of the code under test)."""
    rng = np.random.default_rng(seed)
    ra = RA0 + rng.uniform(-0.1, 0.1, n) / math.cos(math.radians(DEC0))
    dec = DEC0 + rng.uniform(-0.1, 0.1, n)
    r = rng.uniform(14.5, 19.5, n)
    gr = rng.normal(0.6, 0.3, n)
    g = r + gr
    err_r = 0.01 + 0.004 * (r - 14.5)
    err_g = 0.01 + 0.004 * (g - 14.5)
    observed = {"g": g + rng.normal(0, err_g), "r": r + rng.normal(0, err_r)}
    ref = ReferenceStars("synth", ra, dec, observed, {"g": err_g, "r": err_r})
    if band == "V":  # the true V of each star (Tonry et al. 2012, Table 6, quadratic)
        true_mag = r + 0.005 + 0.462 * gr + 0.013 * gr**2
        true_mag = true_mag + rng.normal(0, 0.012, n)  # the transformation's own scatter
    else:
        true_mag = r
    m_inst = true_mag - zp - ct * (gr - PIVOT) + rng.normal(0, scatter, n)
    flux_true = exptime * 10 ** (-0.4 * m_inst)
    fluxerr = np.sqrt(flux_true + 3000.0)
    cat = empty_catalog(n)
    cat["RA"], cat["DEC"] = ra, dec
    cat["FLUX"] = flux_true + rng.normal(0, 1, n) * fluxerr
    cat["FLUXERR"] = fluxerr
    return cat, ref, {"zp": zp, "ct": ct}


def truth_at(result, truth) -> float:
    """The true zero point at the colour where the result quotes it."""
    if result.color is None:
        return truth["zp"]
    return truth["zp"] + truth["ct"] * (result.color_ref - PIVOT)


# --- the fit --------------------------------------------------------------------------------
def test_known_zero_point_and_color_term_recovered() -> None:
    cat, ref, truth = synthetic(1, n=200)
    result = calibrate_photometry(cat, _header(), ref)
    assert result.status == CALIBRATED
    assert result.color == "g-r"
    assert abs(result.zeropoint - truth_at(result, truth)) < 3 * result.zeropoint_err
    assert abs(result.color_term - CT) < 3 * result.color_term_err
    assert result.zeropoint_err < 0.005 and result.color_term_err < 0.02
    assert abs(result.color_ref - np.median(result.stars["COLOR"][result.stars["USED"]])) < 1e-12
    assert 190 <= result.n_stars <= 200 and result.n_matched == 200
    cards = {k: v for k, v, _ in result.cards}
    assert set(cards) == set(PHOTOMETRY_KEYWORDS)
    assert cards["L1PHSTAT"] == "calibrated" and cards["L1PHBAND"] == "r"
    assert cards["L1COLOR"] == "g-r" and cards["L1MAGSYS"] == "AB"
    assert cards["L1ZP"] == round(result.zeropoint, 4)
    assert cards["L1ZPNUM"] == result.n_stars


@pytest.mark.parametrize("fit_color", [True, False])
def test_stated_uncertainty_is_honest(fit_color: bool) -> None:
    """Over many seeds the pulls (fit - truth) / stated error have mean ~0 and width ~1."""
    config = PhotometryConfig(fit_color_term=fit_color)
    zp_pulls, ct_pulls = [], []
    for seed in range(300):
        cat, ref, truth = synthetic(1000 + seed, ct=CT if fit_color else 0.0)
        result = calibrate_photometry(cat, _header(), ref, config)
        assert result.calibrated
        zp_pulls.append((result.zeropoint - truth_at(result, truth)) / result.zeropoint_err)
        if fit_color:
            ct_pulls.append((result.color_term - truth["ct"]) / result.color_term_err)
    for pulls in (zp_pulls, ct_pulls) if fit_color else (zp_pulls,):
        pulls = np.asarray(pulls)
        assert abs(pulls.mean()) < 0.2, pulls.mean()
        assert 0.85 < pulls.std() < 1.15, pulls.std()


def test_outliers_rejected() -> None:
    """Variables (+-0.3..1 mag) and blends (a neighbour adds 30-100% of the flux) are rejected;
    the zero point stays within its uncertainty."""
    cat, ref, truth = synthetic(7, n=120)
    rng = np.random.default_rng(70)
    bad = rng.choice(len(cat), 18, replace=False)
    variables, blends = bad[:9], bad[9:]
    cat["FLUX"][variables] *= 10 ** (-0.4 * rng.choice([-1, 1], 9) * rng.uniform(0.3, 1.0, 9))
    cat["FLUX"][blends] *= 1 + rng.uniform(0.3, 1.0, 9)
    result = calibrate_photometry(cat, _header(), ref)
    assert result.calibrated
    used = set(np.asarray(result.stars["SOURCE"])[np.asarray(result.stars["USED"])].tolist())
    assert not used & set(bad.tolist())
    assert result.n_stars >= 95
    assert abs(result.zeropoint - truth_at(result, truth)) < 3 * result.zeropoint_err
    assert abs(result.color_term - CT) < 3 * result.color_term_err


def test_saturated_and_flagged_sources_ignored() -> None:
    cat, ref, truth = synthetic(8, n=100)
    saturated, bad_pixels, edge = np.arange(0, 10), np.arange(10, 15), np.arange(15, 18)
    cat["FLAG"][saturated] = int(SourceFlag.SATURATED)
    cat["FLUX"][saturated] *= 0.4  # a lower limit
    cat["FLAG"][bad_pixels] = int(SourceFlag.BAD_PIXELS | SourceFlag.CROWDED)
    cat["FLUX"][bad_pixels] *= 3.0
    cat["FLAG"][edge] = int(SourceFlag.EDGE)
    cat["FLUX"][edge] *= 0.5
    result = calibrate_photometry(cat, _header(), ref)
    assert result.calibrated
    assert not set(np.asarray(result.stars["SOURCE"]).tolist()) & set(range(18))
    assert result.n_matched == 100 and result.n_stars <= 82
    assert abs(result.zeropoint - truth_at(result, truth)) < 3 * result.zeropoint_err
    # flagged sources still get a calibrated magnitude
    assert np.isfinite(result.catalog["MAG"][saturated]).all()


def test_snr_and_magnitude_limits() -> None:
    cat, ref, _ = synthetic(9, n=100)
    config = PhotometryConfig(bright_mag=16.0, faint_mag=18.0, min_snr=50.0)
    result = calibrate_photometry(cat, _header(), ref, config)
    assert result.calibrated
    m_ref = np.asarray(result.stars["MAG_REF"])
    assert (m_ref >= 16.0).all() and (m_ref <= 18.0).all()
    src = np.asarray(result.stars["SOURCE"])
    snr = np.asarray(cat["FLUX"])[src] / np.asarray(cat["FLUXERR"])[src]
    assert (snr >= 50.0).all()


def test_exposure_time_does_not_change_l1zp() -> None:
    cat, ref, _ = synthetic(10, exptime=60.0)
    base = calibrate_photometry(cat, _header(exptime=60.0), ref)
    for factor in (0.1, 5.0):
        scaled = cat.copy()
        scaled["FLUX"] = cat["FLUX"] * factor
        scaled["FLUXERR"] = cat["FLUXERR"] * factor
        other = calibrate_photometry(scaled, _header(exptime=60.0 * factor), ref)
        assert other.zeropoint == pytest.approx(base.zeropoint, abs=1e-9)
        assert other.zeropoint_err == pytest.approx(base.zeropoint_err, rel=1e-9)
        np.testing.assert_allclose(other.catalog["MAG"], base.catalog["MAG"], atol=1e-5)


def test_mag_columns_and_purity() -> None:
    cat, ref, _ = synthetic(11)
    cat["FLUX"][3] = -5.0  # a negative flux has no magnitude
    header = _header()
    before_cat, before_header = cat.copy(), header.copy()
    result = calibrate_photometry(cat, header, ref)
    assert cat.colnames == before_cat.colnames and all(
        np.array_equal(cat[c], before_cat[c]) for c in cat.colnames
    )
    assert header == before_header
    out = result.catalog
    assert str(out["MAG"].unit) == "mag" and str(out["MAGERR"].unit) == "mag"
    flux, fluxerr = np.asarray(cat["FLUX"]), np.asarray(cat["FLUXERR"])
    good = flux > 0
    expected = result.zeropoint - 2.5 * np.log10(flux[good] / 60.0)
    np.testing.assert_allclose(out["MAG"][good], expected, atol=2e-5)
    expected_err = np.hypot(1.0857362 * fluxerr[good] / flux[good], result.zeropoint_err)
    np.testing.assert_allclose(out["MAGERR"][good], expected_err, rtol=1e-5)
    assert np.isnan(out["MAG"][3]) and np.isnan(out["MAGERR"][3])


def test_header_cards_round_trip_through_fits(tmp_path) -> None:
    """Every card fits in 80 characters, and an uncalibrated frame's cards are undefined."""
    cat, ref, _ = synthetic(12)
    long_name = ReferenceStars("a-reference-catalogue-with-a-long-name-from-somewhere-far-away",
                               ref.ra, ref.dec, ref.mags, ref.errs)  # fmt: skip
    for result in (calibrate_photometry(cat, _header(), ref),
                   calibrate_photometry(cat, _header(filter_name="V"), long_name),
                   calibrate_photometry(cat, _header(filter_name="ip"), long_name),
                   calibrate_photometry(cat, _header(), None)):  # fmt: skip
        header = fits.Header()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "Card is too long, comment will be truncated"
            result.update_header(header)
            for card in header.cards:
                assert len(str(card)) == 80
        path = tmp_path / f"{result.status.replace(' ', '_')}-{result.band}.fits"
        fits.PrimaryHDU(header=header).writeto(path)
        back = fits.getheader(path)
        assert back["L1PHSTAT"] == result.status
        if result.calibrated:
            assert back["L1ZP"] == pytest.approx(result.zeropoint, abs=1e-4)
        else:
            assert back["L1ZP"] is None and back["L1ZPNUM"] == 0


def test_color_term_not_fitted_with_few_stars_or_narrow_colours() -> None:
    cat, ref, _ = synthetic(13, n=15, ct=0.0)
    result = calibrate_photometry(cat, _header(), ref)
    assert result.calibrated and result.color is None and math.isnan(result.color_term)
    assert "no colour term" in result.reason
    cards = {k: v for k, v, _ in result.cards}
    assert cards["L1COLTRM"] is None and cards["L1COLOR"] is None


# --- matching ------------------------------------------------------------------------------
def test_ambiguous_and_crowded_matches_excluded() -> None:
    cat, ref, _ = synthetic(14, n=60)
    # a second detection 1" from source 0: both claim the same reference star
    extra = cat[0:1].copy()
    extra["DEC"] = extra["DEC"] + 1.0 / 3600
    cat2 = Table(np.concatenate([np.asarray(cat), np.asarray(extra)]))
    # reference star 1 gets a neighbour 3" away, 1 mag fainter (inside isolation 5", < 3 mag)
    # and reference star 2 one 3" away but 5 mag fainter (harmless)
    ra = np.append(ref.ra, [ref.ra[1], ref.ra[2]])
    dec = np.append(ref.dec, [ref.dec[1] + 3 / 3600, ref.dec[2] + 3 / 3600])
    mags = {b: np.append(m, [m[1] + 1.0, m[2] + 5.0]) for b, m in ref.mags.items()}
    errs = {b: np.append(e, [0.02, 0.02]) for b, e in ref.errs.items()}
    ref2 = ReferenceStars("synth", ra, dec, mags, errs)
    result = calibrate_photometry(cat2, _header(), ref2)
    sources = set(np.asarray(result.stars["SOURCE"]).tolist())
    assert 0 not in sources and 60 not in sources  # the ambiguous pair
    assert 1 not in sources  # crowded in the reference catalogue
    assert 2 in sources
    assert result.n_matched == 59


# --- QC statuses ----------------------------------------------------------------------------
def test_no_overlap_is_a_status() -> None:
    cat, ref, _ = synthetic(15)
    far = ReferenceStars("far", ref.ra + 2.0, ref.dec, ref.mags, ref.errs)
    for refstars in (far, None, ReferenceStars.empty("x")):
        result = calibrate_photometry(cat, _header(), refstars)
        assert result.status == NO_OVERLAP
        assert np.isnan(result.catalog["MAG"]).all() and np.isnan(result.catalog["MAGERR"]).all()
        assert {k: v for k, v, _ in result.cards}["L1ZP"] is None


def test_too_few_stars_is_a_status() -> None:
    cat, ref, _ = synthetic(16, n=4)
    result = calibrate_photometry(cat, _header(), ref)
    assert result.status == TOO_FEW and result.n_matched == 4
    assert "4 usable of 4 matched" in result.reason
    assert calibrate_photometry(cat, _header(), ref, PhotometryConfig(min_stars=3)).calibrated


def test_other_statuses() -> None:
    cat, ref, _ = synthetic(17)
    assert calibrate_photometry(cat, _header(aststat="failed"), ref).status == NO_WCS
    no_radec = cat.copy()
    no_radec["RA"] = np.nan
    assert calibrate_photometry(no_radec, _header(aststat=""), ref).status == NO_WCS
    assert calibrate_photometry(cat, _header(exptime=0.0), ref).status == NO_EXPTIME
    for name in ("up", "w", "H-Alpha", ""):  # PS1 has no u; w, narrow bands: no band
        result = calibrate_photometry(cat, _header(filter_name=name), ref)
        assert result.status == FILTER_NOT_SUPPORTED, name
    # i is a supported filter, but this catalogue has only g and r
    result = calibrate_photometry(cat, _header(filter_name="ip"), ref)
    assert result.status == FILTER_NOT_SUPPORTED and "no i band" in result.reason


# --- V from g, r ------------------------------------------------------------------------------
def test_v_from_g_r_transformation() -> None:
    cat, ref, truth = synthetic(18, n=150, band="V", ct=0.0)
    got = band_magnitudes(ref, "V")
    g, r = ref.mags["g"], ref.mags["r"]
    x = g - r
    expected = r + 0.005 + 0.462 * x + 0.013 * x**2  # Tonry et al. 2012, Table 6
    inside = (x >= -0.3) & (x <= 1.6)
    np.testing.assert_allclose(got.mag[inside], expected[inside], rtol=0, atol=1e-12)
    assert np.isnan(got.mag[~inside]).all()
    slope = 0.462 + 2 * 0.013 * x
    expected_err = np.sqrt((slope * ref.errs["g"]) ** 2 + ((1 - slope) * ref.errs["r"]) ** 2
                           + 0.012**2)  # fmt: skip
    np.testing.assert_allclose(got.err[inside], expected_err[inside], rtol=1e-12)
    assert not got.direct and "Tonry" in got.source
    result = calibrate_photometry(cat, _header(filter_name="V"), ref)
    assert result.calibrated and result.mag_system == "Vega"
    assert "Tonry et al. 2012" in result.reference
    assert abs(result.zeropoint - truth["zp"]) < 3 * result.zeropoint_err
    assert abs(result.color_term) < 3 * result.color_term_err
    # a catalogue with its own V column is used as is
    direct = ReferenceStars("apass", ref.ra, ref.dec, {**ref.mags, "V": expected},
                            {**ref.errs, "V": np.full(len(ref), 0.02)})  # fmt: skip
    assert band_magnitudes(direct, "V").direct
    b = band_magnitudes(ref, "B")
    np.testing.assert_allclose(b.mag[inside], (g + 0.212 + 0.556 * x + 0.034 * x**2)[inside])


# --- reference catalogue columns -----------------------------------------------------------
def test_catalogue_column_names() -> None:
    ps1 = Table({"objID": [1, 2], "raMean": [10.0, 10.1], "decMean": [-5.0, -5.1],
                 "gMeanPSFMag": [15.0, -999.0], "gMeanPSFMagErr": [0.01, -999.0],
                 "rMeanPSFMag": [14.5, 16.0], "rMeanPSFMagErr": [0.01, 0.02]})  # fmt: skip
    stars = stars_from_table(ps1, name="ps1")
    assert stars.bands == ("g", "r")
    assert np.isnan(stars.mags["g"][1]) and np.isnan(stars.errs["g"][1])
    assert stars.columns["g_err"] == "gMeanPSFMagErr" and stars.columns["ra"] == "raMean"
    vizier = Table({"RAJ2000": [359.9], "DEJ2000": [1.0], "imag": [15.0], "e_imag": [0.02],
                    "Rmag": [14.0], "Vmag": [15.5], "e_Vmag": [0.05]})  # fmt: skip
    stars = stars_from_table(vizier)
    assert stars.bands == ("i", "V", "R")  # Rmag is Cousins R, not r
    assert stars.errs["V"][0] == 0.05 and np.isnan(stars.errs["R"][0])
    plain = Table({"ra": [1.0], "dec": [2.0], "x": [5.0], "y": [6.0], "g": [15.0], "g_err": [0.03]})
    stars = stars_from_table(plain)
    assert stars.bands == ("g",)  # y beside x is a pixel coordinate
    custom = Table({"RA_x": [1.0], "DEC_x": [2.0], "gK": [15.0], "gKe": [0.1]})
    stars = stars_from_table(
        custom, columns={"ra": "RA_x", "dec": "DEC_x", "g": "gK", "g_err": "gKe"}
    )
    assert stars.mags["g"][0] == 15.0 and stars.errs["g"][0] == 0.1
    with pytest.raises(ConfigurationError, match="no RA column"):
        stars_from_table(Table({"g": [1.0]}))
    with pytest.raises(ConfigurationError, match="no magnitude column"):
        stars_from_table(Table({"ra": [1.0], "dec": [2.0]}))
    with pytest.raises(ConfigurationError, match="unknown column mapping"):
        stars_from_table(custom, columns={"gee": "gK"})
    with pytest.raises(ConfigurationError, match="no column"):
        stars_from_table(custom, columns={"g": "nope"})


def test_file_catalogue_cone_and_cache(tmp_path) -> None:
    rng = np.random.default_rng(3)
    n = 500
    table = Table({"ra": np.mod(rng.uniform(-1, 1, n), 360.0), "dec": rng.uniform(-1, 1, n),
                   "r": rng.uniform(14, 20, n), "r_err": np.full(n, 0.02)})  # fmt: skip
    for suffix in ("csv", "fits"):
        path = tmp_path / f"cat.{suffix}"
        if suffix == "csv":
            table.write(path, format="ascii.csv")
        else:
            table.write(path)
        clear_file_cache()
        near = reference_stars_near(path, 0.0, 0.0, 0.5)
        sep = np.degrees(np.arccos(np.clip(np.cos(np.radians(table["dec"]))
                                           * np.cos(np.radians(table["ra"])), -1, 1)))  # fmt: skip
        assert len(near) == int((sep <= 0.5).sum()) > 0
        assert near.name == "cat"
        assert load_reference_file(path) is load_reference_file(str(path))  # cached
    with pytest.raises(ConfigurationError):
        reference_stars_near(tmp_path / "missing.csv", 0.0, 0.0, 0.1)


def test_field_cone_covers_the_sources() -> None:
    cat, _, _ = synthetic(19)
    ra, dec, radius = field_cone(cat)
    assert abs(ra - RA0) < 0.01 and abs(dec - DEC0) < 0.01
    assert 0.13 < radius < 0.16
    empty = cat.copy()
    empty["RA"] = np.nan
    assert field_cone(empty) is None


def test_config_is_validated() -> None:
    with pytest.raises(ConfigurationError):
        PhotometryConfig(match_radius_arcsec=0)
    with pytest.raises(ConfigurationError):
        PhotometryConfig(bright_mag=20, faint_mag=15)
    with pytest.raises(ConfigurationError):
        PhotometryConfig(min_stars=0)
    with pytest.raises((AttributeError, TypeError)):
        PhotometryConfig().filter_bands["rp"] = "g"  # read-only


# --- end to end: a simulated night ---------------------------------------------------------
@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("photnight")
    simulated = simulate_night(out, size=512, seed=21, n_bias=1, n_dark=0, n_flat=0,
                               n_science=2, filters=("rp", "gp", "ip", "V"))  # fmt: skip
    return json.loads(simulated.truth_path.read_text()), out


def _frames_from_truth(truth, seed):
    """(entry, CAT, header) for each science frame: the truth stars' positions and fluxes
    (electrons before the flat: what a reduced frame measures) with Poisson and sky noise."""
    rng = np.random.default_rng(seed)
    for entry in truth["files"]:
        if entry["obstype"] != "EXPOSE" or not entry.get("stars"):
            continue
        stars = entry["stars"]
        cat = empty_catalog(len(stars))
        flux = np.array([s["flux_e"] for s in stars])
        fluxerr = np.sqrt(flux + 40.0 * entry["sky_e"])  # a ~40-pixel aperture
        cat["FLUX"] = flux + rng.normal(0, 1, flux.size) * fluxerr
        cat["FLUXERR"] = fluxerr
        cat["RA"] = [s["ra"] for s in stars]
        cat["DEC"] = [s["dec"] for s in stars]
        yield entry, cat, _header(entry["filter"], entry["exptime"])


@pytest.mark.parametrize(("style", "suffix"), [("ps1", "csv"), ("vizier", "fits")])
def test_simulated_night_zero_points_match_truth(night, style, suffix) -> None:
    truth, out = night
    path = write_reference_catalog(truth, out / f"refcat_{style}.{suffix}", rng_seed=5,
                                   style=style)  # fmt: skip
    table = read_reference_table(path)
    assert ("raMean" if style == "ps1" else "RAJ2000") in table.colnames
    config = PhotometryConfig(bright_mag=None)  # the simulated stars start at mag 10
    pulls = []
    for entry, cat, header in _frames_from_truth(truth, seed=6):
        stars = reference_stars_near(path, *field_cone(cat))
        result = calibrate_photometry(cat, header, stars, config)
        assert result.calibrated, (entry["name"], result.reason)
        assert result.n_stars >= 12  # 20-30 stars per 512^2 frame
        pull = (result.zeropoint - entry["zeropoint_mag"]) / result.zeropoint_err
        assert abs(pull) < 4, (entry["name"], entry["filter"], result.zeropoint,
                               entry["zeropoint_mag"], result.zeropoint_err)  # fmt: skip
        assert result.zeropoint_err < 0.01
        pulls.append(pull)
        # the truth's magnitudes come back (up to flux noise and the zero point error)
        mags = np.array([s["mag"] for s in entry["stars"]])
        bright = mags < 17
        np.testing.assert_allclose(result.catalog["MAG"][bright], mags[bright], atol=0.05)
    assert len(pulls) == 8
    assert abs(np.mean(pulls)) < 1.5


def test_simulated_catalogue_is_realistic_and_seeded(night, tmp_path) -> None:
    truth, _ = night
    a = write_reference_catalog(truth, tmp_path / "a.csv", rng_seed=1)
    b = write_reference_catalog(truth, tmp_path / "b.csv", rng_seed=1)
    assert a.read_bytes() == b.read_bytes()
    table = read_reference_table(a)
    r, e = np.asarray(table["rMeanPSFMag"]), np.asarray(table["rMeanPSFMagErr"])
    ok = r > -900
    assert (e[ok] >= 0.01).all() and (e[ok][r[ok] < 17] < 0.02).all()
    by_mag = e[ok][np.argsort(r[ok])]
    thirds = np.array_split(by_mag, 3)
    assert np.median(thirds[0]) < np.median(thirds[1]) < np.median(thirds[2])  # grows with mag
    assert (e[ok][r[ok] > 20] > 0.03).all()
    # without Johnson columns, V frames use the Tonry et al. transformation from g, r
    plain = write_reference_catalog(truth, tmp_path / "plain.fits", rng_seed=1, johnson=False)
    stars = stars_from_table(read_reference_table(plain))
    assert "V" not in stars.bands and band_magnitudes(stars, "V") is not None
