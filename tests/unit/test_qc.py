"""Quality-control numbers, pictures and page (:mod:`pylcogt.qc`), without a database.

Numbers: seeded synthetic frames with known answers (Gaussian noise of known sigma, injected
hot/cold pixels, flagged pixels carrying absurd values, a known WCS with a known offset of the
reference stars) and, for each statistic, the obvious slow reference written here (numpy's
median over the good pixels, 1.4826 x MAD, per-row/per-block loops).

Pictures: real PNG files read back with matplotlib (size = figure inches x ``render.DPI``,
not blank, replaced on re-rendering without a temporary file left behind).

Page: a ``qc.json``-shaped dict with hostile text, parsed back with :mod:`html.parser`.
"""

from __future__ import annotations

import html
import math
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning
from matplotlib.image import imread

from pylcogt.frame import Frame, PixelFlag
from pylcogt.qc import metrics, page, render
from pylcogt.stats import RSTD_PER_MAD

# ---------------------------------------------------------------------------------------------
# obvious references and helpers
# ---------------------------------------------------------------------------------------------


def ref_median_rstd(values) -> tuple[float, float]:
    """Median and 1.4826 x median absolute deviation, float64, straight from the definition."""
    x = np.asarray(values, dtype=np.float64).ravel()
    med = float(np.median(x))
    return med, float(1.4826 * np.median(np.abs(x - med)))


def gaussian_tail(k: float) -> float:
    """P(|N(0, 1)| > k)."""
    return math.erfc(k / math.sqrt(2.0))


def make_frame(sci, bpm=None, err=None, unit="electron") -> Frame:
    sci = np.asarray(sci, dtype=np.float32)
    if bpm is None:
        bpm = np.zeros(sci.shape, np.uint8)
    if err is not None:
        err = np.asarray(err, dtype=np.float32)
    return Frame(sci=sci, err=err, bpm=np.asarray(bpm, np.uint8), header=fits.Header(),
                 unit=unit, name="synthetic")  # fmt: skip


def distinct_positions(rng, shape, n):
    flat = rng.choice(shape[0] * shape[1], size=n, replace=False)
    return np.unravel_index(flat, shape)


# ---------------------------------------------------------------------------------------------
# metrics.image_stats
# ---------------------------------------------------------------------------------------------

SHAPE = (300, 300)
SIGMA = 7.0
LEVEL = 100.0


def test_rstd_constant_is_the_gaussian_mad_factor():
    # 1 / Phi^-1(3/4) = 1.482602...; the docs and the references here use 1.4826
    assert abs(RSTD_PER_MAD - 1.4826) < 1e-12


def test_image_stats_gaussian_level_noise_and_hot_pixels():
    rng = np.random.default_rng(1)
    sci = rng.normal(LEVEL, SIGMA, SHAPE)
    # With 90000 Gaussian pixels the expected number beyond 5 sigma is ~0.05: any count above
    # the injected ones would be a miscount, not noise.
    expected_tail = SHAPE[0] * SHAPE[1] * gaussian_tail(metrics.OUTLIER_RSTD)
    assert expected_tail < 0.1
    n_hot, n_cold = 37, 11
    rows, cols = distinct_positions(rng, SHAPE, n_hot + n_cold)
    sci[rows[:n_hot], cols[:n_hot]] += 50 * SIGMA
    sci[rows[n_hot:], cols[n_hot:]] -= 50 * SIGMA
    stats = metrics.image_stats(make_frame(sci))

    assert stats.n_pixels == SHAPE[0] * SHAPE[1]
    assert stats.n_good == SHAPE[0] * SHAPE[1]
    assert stats.rstd == pytest.approx(SIGMA, rel=0.03)
    assert stats.median == pytest.approx(LEVEL, abs=0.2)  # sd of the median ~0.03
    assert stats.clipped_mean == pytest.approx(LEVEL, abs=0.2)
    assert stats.outliers == n_hot + n_cold
    assert stats.unit == "electron"
    assert math.isnan(stats.median_err)  # no ERR plane
    assert all(v == 0 for v in stats.flagged.values())

    # against the obvious reference on the float32 values the frame holds
    values = sci.astype(np.float32).astype(np.float64)
    med, rstd = ref_median_rstd(values)
    assert stats.median == pytest.approx(med, rel=1e-12)
    assert stats.rstd == pytest.approx(rstd, rel=1e-12)
    kept = values[np.abs(values - med) <= 3.5 * rstd]
    assert stats.clipped_mean == pytest.approx(kept.mean(), rel=1e-12)
    assert stats.outliers == int(np.sum(np.abs(values - med) > 5 * rstd))
    assert stats.p01 == pytest.approx(np.percentile(values, 1), rel=1e-12)
    assert stats.p99 == pytest.approx(np.percentile(values, 99), rel=1e-12)


def test_image_stats_flagged_pixels_counted_per_bit_and_left_out():
    rng = np.random.default_rng(2)
    sci = rng.normal(LEVEL, SIGMA, SHAPE)
    bpm = np.zeros(SHAPE, np.uint8)
    counts = {PixelFlag.BAD: 40, PixelFlag.SATURATED: 25, PixelFlag.LOW_FLAT: 15,
              PixelFlag.COSMIC_RAY: 9}  # fmt: skip
    n_double = 6  # BAD | COSMIC_RAY: counted under both bits
    n_nan = 4  # BPM 0 but not finite: not good, not flagged
    n_hot = 13
    total = sum(counts.values()) + n_double + n_nan + n_hot
    rows, cols = distinct_positions(rng, SHAPE, total)
    start = 0
    for flag, n in counts.items():
        bpm[rows[start : start + n], cols[start : start + n]] = flag
        start += n
    double = slice(start, start + n_double)
    bpm[rows[double], cols[double]] = PixelFlag.BAD | PixelFlag.COSMIC_RAY
    start += n_double
    flagged = bpm != 0
    # absurd values under the flags: if any entered the statistics, outliers/median/p99 would
    # show it
    sci[flagged] = np.where(rng.random(int(flagged.sum())) < 0.5, 1e9, -1e9)
    nan = slice(start, start + n_nan)
    sci[rows[nan], cols[nan]] = np.nan
    start += n_nan
    hot = slice(start, start + n_hot)
    sci[rows[hot], cols[hot]] += 50 * SIGMA
    err = np.full(SHAPE, SIGMA)
    err[flagged] = 1e6

    stats = metrics.image_stats(make_frame(sci, bpm, err))
    expected_flags = {
        "bad": counts[PixelFlag.BAD] + n_double,
        "saturated": counts[PixelFlag.SATURATED],
        "low_flat": counts[PixelFlag.LOW_FLAT],
        "cosmic_ray": counts[PixelFlag.COSMIC_RAY] + n_double,
    }
    assert stats.flagged == expected_flags
    n_flagged = sum(counts.values()) + n_double
    assert stats.n_good == SHAPE[0] * SHAPE[1] - n_flagged - n_nan
    assert stats.outliers == n_hot
    assert stats.rstd == pytest.approx(SIGMA, rel=0.03)
    assert stats.median == pytest.approx(LEVEL, abs=0.2)
    assert stats.median_err == pytest.approx(SIGMA)
    assert stats.p01 > LEVEL - 5 * SIGMA and stats.p99 < LEVEL + 5 * SIGMA

    good = (bpm == 0) & np.isfinite(sci)
    values = sci.astype(np.float32)[good].astype(np.float64)
    med, rstd = ref_median_rstd(values)
    assert stats.median == pytest.approx(med, rel=1e-12)
    assert stats.rstd == pytest.approx(rstd, rel=1e-12)
    assert np.array_equal(metrics.good_pixels(make_frame(sci, bpm)), good)


def test_image_stats_ignores_a_large_flagged_fraction():
    """40% flagged at +1e9: median and rstd over all pixels would be nowhere near 100 / 7."""
    rng = np.random.default_rng(3)
    sci = rng.normal(LEVEL, SIGMA, (200, 200))
    bpm = np.zeros(sci.shape, np.uint8)
    bpm[:80, :] = PixelFlag.SATURATED
    sci[:80, :] = 1e9
    stats = metrics.image_stats(make_frame(sci, bpm))
    assert stats.n_good == 120 * 200
    assert stats.median == pytest.approx(LEVEL, abs=0.3)
    assert stats.rstd == pytest.approx(SIGMA, rel=0.03)
    assert stats.clipped_mean == pytest.approx(LEVEL, abs=0.3)
    assert stats.p99 < LEVEL + 5 * SIGMA
    assert stats.flagged["saturated"] == 80 * 200
    assert stats.outliers == 0


def test_image_stats_all_flagged():
    sci = np.full((20, 30), 5.0)
    bpm = np.full(sci.shape, PixelFlag.BAD, np.uint8)
    bpm[0, :4] |= np.uint8(PixelFlag.SATURATED)
    stats = metrics.image_stats(make_frame(sci, bpm, err=np.ones(sci.shape)))
    assert stats.n_good == 0
    assert stats.n_pixels == 600
    for name in ("median", "clipped_mean", "rstd", "p01", "p99", "median_err"):
        assert math.isnan(getattr(stats, name)), name
    assert stats.outliers == 0
    assert stats.flagged == {"bad": 600, "saturated": 4, "low_flat": 0, "cosmic_ray": 0}
    assert stats.as_dict()["flagged"]["bad"] == 600


# ---------------------------------------------------------------------------------------------
# metrics.compare_masters (float32 arithmetic, as the masters: tolerances of float32 rounding)
# ---------------------------------------------------------------------------------------------

BIAS_SIGMA = 5.0


def bias_pair(seed, shape=SHAPE, err=True):
    rng = np.random.default_rng(seed)
    pattern = rng.normal(0.0, 20.0, shape)  # fixed structure, identical in both: cancels
    prev = 500.0 + pattern + rng.normal(0.0, BIAS_SIGMA, shape)
    cur = 500.0 + pattern + rng.normal(0.0, BIAS_SIGMA, shape)
    e = np.full(shape, BIAS_SIGMA) if err else None
    return make_frame(cur, err=e), make_frame(prev, err=e)


def test_compare_bias_masters_agreeing_within_noise():
    cur, prev = bias_pair(10)
    c = metrics.compare_masters(cur, prev, "BIAS")
    assert c.mode == "difference"
    assert c.unit == "electron"
    assert c.n_good == SHAPE[0] * SHAPE[1]
    assert c.z_rstd == pytest.approx(1.0, rel=0.05)
    assert c.median == pytest.approx(0.0, abs=0.15)  # sd of the median ~0.03
    assert c.rstd == pytest.approx(BIAS_SIGMA * math.sqrt(2), rel=0.03)
    expected_changed = c.n_good * gaussian_tail(5.0)  # ~0.05
    assert expected_changed < 0.1
    assert c.changed <= 1

    diff = cur.sci.astype(np.float64) - prev.sci.astype(np.float64)
    np.testing.assert_allclose(c.image, diff, rtol=0, atol=1e-4)
    z = diff / np.sqrt(cur.err.astype(np.float64) ** 2 + prev.err.astype(np.float64) ** 2)
    np.testing.assert_allclose(c.z, z, rtol=1e-5, atol=1e-5)
    med, rstd = ref_median_rstd(diff)
    assert c.median == pytest.approx(med, abs=1e-4)
    assert c.rstd == pytest.approx(rstd, rel=1e-5)
    assert c.z_rstd == pytest.approx(ref_median_rstd(z)[1], rel=1e-5)
    assert c.changed == int(np.sum(np.abs(z) > 5))
    assert set(c.as_dict()) == {"mode", "unit", "n_good", "median", "rstd", "z_rstd", "changed"}


def test_compare_bias_masters_changed_block():
    cur, prev = bias_pair(11)
    injected = 20 * BIAS_SIGMA * math.sqrt(2)
    sci = cur.sci.copy()
    block = (slice(100, 110), slice(40, 52))
    sci[block] += injected
    cur = make_frame(sci, err=cur.err)
    c = metrics.compare_masters(cur, prev, "DARK")
    n_block = 10 * 12
    assert n_block <= c.changed <= n_block + 2  # Gaussian tails elsewhere: ~0.05 expected
    diff = cur.sci.astype(np.float64) - prev.sci.astype(np.float64)
    z = diff / (BIAS_SIGMA * math.sqrt(2))
    assert c.changed == int(np.sum(np.abs(z) > 5))
    # sd of the median of 120 differences of sd 7.07: ~0.8
    assert float(np.median(c.image[block])) == pytest.approx(injected, abs=3.0)
    assert float(np.median(c.image[block])) == pytest.approx(np.median(diff[block]), abs=1e-4)
    assert c.z_rstd == pytest.approx(1.0, rel=0.05)  # 120 pixels do not move a robust spread


def test_compare_flat_masters_by_ratio():
    rng = np.random.default_rng(12)
    shape = (200, 200)
    flat = 1.0 + 0.05 * np.sin(np.arange(shape[1]) / 15.0)[None, :] + rng.normal(0, 0.01, shape)
    rel = 0.001
    prev = flat * (1 + rng.normal(0, rel, shape))
    cur = 1.02 * flat * (1 + rng.normal(0, rel, shape))
    c = metrics.compare_masters(make_frame(cur, err=rel * cur, unit=""),
                                make_frame(prev, err=rel * prev, unit=""), "SKYFLAT")  # fmt: skip
    assert c.mode == "ratio"
    assert c.unit == ""
    assert c.median == pytest.approx(1.02, abs=2e-4)
    assert c.rstd == pytest.approx(1.02 * rel * math.sqrt(2), rel=0.05)
    # the flat changed by 2% (14 sigma of the ratio) everywhere: that is the median ratio, not a
    # local change, so no pixel is "changed" (Gaussian tails beyond 5 sigma: 0.02 expected)
    assert c.n_good == shape[0] * shape[1]
    assert c.changed == 0
    assert c.z_rstd == pytest.approx(1.0, rel=0.05)
    ratio = cur.astype(np.float32).astype(np.float64) / prev.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(c.image, ratio, rtol=1e-6)
    med, rstd = ref_median_rstd(ratio)
    assert c.median == pytest.approx(med, rel=1e-6)
    assert c.rstd == pytest.approx(rstd, rel=1e-4)  # |x - median| of x ~ 1 in float32


def test_compare_masters_flagged_in_either_frame_left_out():
    cur, prev = bias_pair(13, shape=(50, 60))
    cur_bpm = np.zeros(cur.shape, np.uint8)
    prev_bpm = np.zeros(cur.shape, np.uint8)
    cur_bpm[3, 4] = PixelFlag.BAD
    cur_bpm[10, 10:15] = PixelFlag.SATURATED
    prev_bpm[20, 30] = PixelFlag.COSMIC_RAY
    prev_bpm[3, 4] = PixelFlag.BAD  # flagged in both: still one pixel
    cur_sci = cur.sci.copy()
    prev_sci = prev.sci.copy()
    cur_sci[cur_bpm != 0] = 1e9
    prev_sci[prev_bpm != 0] = -1e9
    prev_sci[40, 50] = np.nan  # not finite in the previous master
    flat_ = prev_sci.copy()
    c = metrics.compare_masters(make_frame(cur_sci, cur_bpm, cur.err),
                                make_frame(flat_, prev_bpm, prev.err), "BIAS")  # fmt: skip
    bad = (cur_bpm != 0) | (prev_bpm != 0) | ~np.isfinite(prev_sci)
    assert int(bad.sum()) == 1 + 5 + 1 + 1
    assert np.array_equal(np.isnan(c.image), bad)
    assert np.array_equal(np.isnan(c.z), bad)
    assert c.n_good == 50 * 60 - int(bad.sum())
    assert c.changed == 0  # the 1e9 values are not there
    med, rstd = ref_median_rstd((cur_sci - prev_sci)[~bad])
    assert c.median == pytest.approx(med, abs=1e-4)
    assert c.rstd == pytest.approx(rstd, rel=1e-5)


def test_compare_flats_previous_not_positive_left_out():
    rng = np.random.default_rng(14)
    prev = 1.0 + rng.normal(0, 0.01, (30, 40))
    cur = prev * 1.01
    prev[5, 6] = 0.0
    prev[7, 8] = -0.5
    c = metrics.compare_masters(make_frame(cur, unit=""), make_frame(prev, unit=""), "SKYFLAT")
    assert np.isnan(c.image[5, 6]) and np.isnan(c.image[7, 8])
    assert np.isfinite(np.delete(c.image.ravel(), [5 * 40 + 6, 7 * 40 + 8])).all()
    assert c.n_good == 30 * 40 - 2
    assert c.median == pytest.approx(1.01, abs=1e-6)


def test_compare_masters_shapes_differ():
    a = make_frame(np.zeros((10, 12)))
    b = make_frame(np.zeros((12, 10)))
    with pytest.raises(ValueError, match=r"shape") as info:
        metrics.compare_masters(a, b, "BIAS")
    assert "(10, 12)" in str(info.value) and "(12, 10)" in str(info.value)


def test_compare_masters_without_err_uses_rstd():
    cur, prev = bias_pair(15, err=False)
    sci = cur.sci.copy()
    block = (slice(0, 8), slice(290, 300))
    sci[block] += 30 * BIAS_SIGMA * math.sqrt(2)
    c = metrics.compare_masters(make_frame(sci), prev, "BIAS")
    assert c.z is None
    assert math.isnan(c.z_rstd)
    diff = sci.astype(np.float64) - prev.sci.astype(np.float64)
    med, rstd = ref_median_rstd(diff)
    assert c.changed == int(np.sum(np.abs(diff - med) > 5 * rstd))
    assert 80 <= c.changed <= 82
    # ERR on only one of the two is no ERR
    one = metrics.compare_masters(make_frame(sci, err=np.full(SHAPE, BIAS_SIGMA)), prev, "BIAS")
    assert one.z is None and math.isnan(one.z_rstd)
    assert one.changed == c.changed


def test_compare_masters_nothing_in_common():
    cur, prev = bias_pair(16, shape=(8, 9))
    bpm = np.full((8, 9), PixelFlag.BAD, np.uint8)
    c = metrics.compare_masters(make_frame(cur.sci, bpm, cur.err), prev, "BIAS")
    assert c.n_good == 0 and c.changed == 0
    assert math.isnan(c.median) and math.isnan(c.rstd) and math.isnan(c.z_rstd)
    assert np.isnan(c.image).all()


# ---------------------------------------------------------------------------------------------
# metrics.profiles
# ---------------------------------------------------------------------------------------------


def ref_profiles(image, good):
    ny, nx = image.shape
    rows = np.full(ny, np.nan)
    cols = np.full(nx, np.nan)
    for r in range(ny):
        v = [float(image[r, c]) for c in range(nx) if good[r, c] and np.isfinite(image[r, c])]
        if v:
            rows[r] = np.median(v)
    for c in range(nx):
        v = [float(image[r, c]) for r in range(ny) if good[r, c] and np.isfinite(image[r, c])]
        if v:
            cols[c] = np.median(v)
    return rows, cols


def test_profiles_against_a_loop():
    rng = np.random.default_rng(20)
    image = (rng.normal(0, 1, (23, 17)) + np.arange(23)[:, None] * 0.5
             + np.arange(17)[None, :] * 0.1).astype(np.float32)  # fmt: skip
    good = rng.random(image.shape) > 0.2
    good[6, :] = False  # a fully flagged row
    good[:, 11] = False  # a fully flagged column
    rows, cols = metrics.profiles(image, good)
    ref_rows, ref_cols = ref_profiles(image, good)
    assert rows.shape == (23,) and cols.shape == (17,)
    assert np.isnan(rows[6]) and np.isnan(cols[11])
    np.testing.assert_allclose(rows, ref_rows, rtol=1e-6, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(cols, ref_cols, rtol=1e-6, atol=1e-6, equal_nan=True)
    # the row trend (0.5 per row) is what the row profile shows
    assert np.nanmedian(np.diff(rows)) == pytest.approx(0.5, abs=0.3)


def test_profiles_without_mask_skip_nan():
    rng = np.random.default_rng(21)
    image = rng.normal(0, 1, (9, 13)).astype(np.float32)
    image[2, 3] = np.nan
    image[:, 5] = np.nan
    rows, cols = metrics.profiles(image)
    ref_rows, ref_cols = ref_profiles(image, np.ones(image.shape, bool))
    np.testing.assert_allclose(rows, ref_rows, rtol=1e-6, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(cols, ref_cols, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert np.isnan(cols[5]) and np.isfinite(rows).all()
    assert np.isnan(image[2, 3])  # the input is not modified


# ---------------------------------------------------------------------------------------------
# metrics.astrometric_residuals
# ---------------------------------------------------------------------------------------------

SCALE = 1.0 / 3600.0  # 1"/px


def tan_header(ra0: float, dec0: float, status: str = "solved") -> fits.Header:
    h = fits.Header()
    h["NAXIS"] = 2
    h["NAXIS1"] = 400
    h["NAXIS2"] = 300
    h["CTYPE1"] = "RA---TAN"
    h["CTYPE2"] = "DEC--TAN"
    h["CUNIT1"] = "deg"
    h["CUNIT2"] = "deg"
    h["RADESYS"] = "ICRS"
    h["EQUINOX"] = 2000.0
    h["CRPIX1"] = 200.5
    h["CRPIX2"] = 150.5
    h["CRVAL1"] = ra0
    h["CRVAL2"] = dec0
    rot = math.radians(3.0)  # a small rotation, East left
    h["CD1_1"] = -SCALE * math.cos(rot)
    h["CD1_2"] = SCALE * math.sin(rot)
    h["CD2_1"] = SCALE * math.sin(rot)
    h["CD2_2"] = SCALE * math.cos(rot)
    h["ASTSTAT"] = status
    return h


def sky_of_pixels(header, x, y):
    """Sky positions of 1-indexed pixels, through astropy with 0-indexed pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2)
    ra, dec = wcs.all_pix2world(np.asarray(x) - 1.0, np.asarray(y) - 1.0, 0)
    return np.asarray(ra, float), np.asarray(dec, float)


def offset_catalog(header, x, y, dx_arcsec, dy_arcsec):
    """A catalogue whose reference stars sit ``dx`` (on the sky, +RA) and ``dy`` (+Dec)
    arcsec from where the WCS puts the stars at ``x, y``."""
    ra, dec = sky_of_pixels(header, x, y)
    ref_dec = dec + dy_arcsec / 3600.0
    ref_ra = (ra + dx_arcsec / 3600.0 / np.cos(np.radians(ref_dec))) % 360.0
    return Table({"X": np.asarray(x, float), "Y": np.asarray(y, float), "REF_RA": ref_ra,
                  "REF_DEC": ref_dec})  # fmt: skip


def test_astrometric_residuals_known_offset():
    rng = np.random.default_rng(30)
    header = tan_header(150.25, 40.0)
    x = rng.uniform(1, 400, 25)
    y = rng.uniform(1, 300, 25)
    catalog = offset_catalog(header, x, y, 0.3, 0.5)
    res = metrics.astrometric_residuals(catalog, header)
    assert res is not None
    assert res.n == 25
    np.testing.assert_array_equal(res.x, x)
    np.testing.assert_array_equal(res.y, y)
    # WCS minus reference: the reference is +0.3" East and +0.5" North of the WCS position
    np.testing.assert_allclose(res.dx, -0.3, atol=1e-6)
    np.testing.assert_allclose(res.dy, -0.5, atol=1e-6)
    assert res.rms == pytest.approx(math.hypot(0.3, 0.5), abs=1e-6)

    # an independent reference: astropy's offsets of the WCS position seen from the reference
    ra, dec = sky_of_pixels(header, x, y)
    ref = SkyCoord(catalog["REF_RA"] * u.deg, catalog["REF_DEC"] * u.deg)
    dlon, dlat = ref.spherical_offsets_to(SkyCoord(ra * u.deg, dec * u.deg))
    np.testing.assert_allclose(res.dx, dlon.to_value(u.arcsec), atol=1e-5)
    np.testing.assert_allclose(res.dy, dlat.to_value(u.arcsec), atol=1e-5)


def test_astrometric_residuals_pixels_are_one_indexed():
    """A catalogue made with 0-indexed pixels is off by one pixel = 1": it must show."""
    header = tan_header(10.0, -20.0)
    x = np.array([10.0, 200.0, 390.0])
    y = np.array([5.0, 150.0, 290.0])
    ra, dec = sky_of_pixels(header, x + 1.0, y + 1.0)  # where pixel x+1, y+1 is
    catalog = Table({"X": x, "Y": y, "REF_RA": ra, "REF_DEC": dec})
    res = metrics.astrometric_residuals(catalog, header)
    np.testing.assert_allclose(np.hypot(res.dx, res.dy), math.sqrt(2.0), rtol=1e-3)


def test_astrometric_residuals_rows_without_reference_ignored():
    header = tan_header(150.25, 40.0)
    x = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    y = np.array([15.0, 25.0, 35.0, 45.0, 55.0])
    catalog = offset_catalog(header, x, y, 0.3, 0.5)
    catalog["REF_RA"][1] = np.nan
    catalog["REF_DEC"][3] = np.nan
    res = metrics.astrometric_residuals(catalog, header)
    assert res.n == 3
    np.testing.assert_array_equal(res.x, [10.0, 30.0, 50.0])
    np.testing.assert_array_equal(res.y, [15.0, 35.0, 55.0])
    np.testing.assert_allclose(res.dy, -0.5, atol=1e-6)

    catalog["REF_RA"] = np.nan
    empty = metrics.astrometric_residuals(catalog, header)
    assert empty.n == 0 and math.isnan(empty.rms)


def test_astrometric_residuals_none_without_solution_or_reference():
    header = tan_header(150.25, 40.0, status="failed")
    catalog = offset_catalog(header, [10.0], [10.0], 0.3, 0.5)
    assert metrics.astrometric_residuals(catalog, header) is None
    del header["ASTSTAT"]
    assert metrics.astrometric_residuals(catalog, header) is None
    solved = tan_header(150.25, 40.0)
    no_ref = Table({"X": [10.0], "Y": [10.0]})
    assert metrics.astrometric_residuals(no_ref, solved) is None


def test_astrometric_residuals_across_ra_zero():
    dec0 = 40.0
    header = tan_header(0.0001, dec0)
    x = np.array([150.0, 200.5, 250.0, 300.0])  # the field straddles RA 0
    y = np.array([150.5, 150.5, 100.0, 200.0])
    ra, dec = sky_of_pixels(header, x, y)
    assert (ra > 359.0).any() and (ra < 1.0).any()
    ref_ra = (ra - 0.0002) % 360.0  # 0.0001 -> 359.9999 for the star at the centre
    catalog = Table({"X": x, "Y": y, "REF_RA": ref_ra, "REF_DEC": dec})
    assert ref_ra[1] == pytest.approx(359.9999, abs=1e-9)
    res = metrics.astrometric_residuals(catalog, header)
    expected = 0.0002 * 3600.0 * np.cos(np.radians(dec))  # ~0.55"
    np.testing.assert_allclose(res.dx, expected, atol=1e-5)
    np.testing.assert_allclose(res.dy, 0.0, atol=1e-6)
    assert res.rms < 1.0


# ---------------------------------------------------------------------------------------------
# render.block_mean, robust_limits, asinh_stretch
# ---------------------------------------------------------------------------------------------


def ref_block_mean(image, good, factor):
    ny, nx = image.shape
    by, bx = -(-ny // factor), -(-nx // factor)
    out = np.full((by, bx), np.nan)
    for i in range(by):
        for j in range(bx):
            v = []
            for r in range(i * factor, min((i + 1) * factor, ny)):
                for c in range(j * factor, min((j + 1) * factor, nx)):
                    ok = np.isfinite(image[r, c]) and (good is None or good[r, c])
                    if ok:
                        v.append(float(image[r, c]))
            if v:
                out[i, j] = sum(v) / len(v)
    return out


@pytest.mark.parametrize("factor", [1, 3, 4])
@pytest.mark.parametrize("with_mask", [True, False])
def test_block_mean_against_a_loop(factor, with_mask):
    rng = np.random.default_rng(40)
    image = rng.normal(10, 3, (10, 7)).astype(np.float32)
    image[9, 6] = np.nan  # not finite: never used
    good = rng.random(image.shape) > 0.3
    good[3:6, 0:3] = False  # the block (1, 0) at factor 3 is fully flagged
    # flagged: absurd values (would show in a mean); without a mask: not finite instead
    image[~good] = 1e6 if with_mask else np.nan
    g = good if with_mask else None
    out = render.block_mean(image, g, factor)
    ref = ref_block_mean(image, g, factor)
    assert out.shape == (-(-10 // factor), -(-7 // factor))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-6, equal_nan=True)
    if factor == 3:
        assert np.isnan(out[1, 0])
        assert np.isnan(out[3, 2])  # the corner block's one pixel is not finite
        assert out[3, 0] == pytest.approx(
            np.mean([v for v, ok in zip(image[9, :3], good[9, :3], strict=True) if ok])
        )
    assert np.nanmax(out) < 100  # no 1e6 in any mean


def test_robust_limits_known_values():
    image = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, np.nan, np.inf, -np.inf]])
    # finite values 0..8: median 4, |deviations| 4 3 2 1 0 1 2 3 4 -> MAD 2
    rstd = 1.4826 * 2
    lo, hi = render.robust_limits(image)
    assert lo == pytest.approx(4 - 5 * rstd, rel=1e-12)
    assert hi == pytest.approx(4 + 5 * rstd, rel=1e-12)
    lo, hi = render.robust_limits(image, k=2.0)
    assert (lo, hi) == pytest.approx((4 - 2 * rstd, 4 + 2 * rstd), rel=1e-12)


def test_robust_limits_against_reference_on_noise():
    rng = np.random.default_rng(41)
    image = rng.normal(3.0, 2.0, (50, 60))
    med, rstd = ref_median_rstd(image)
    lo, hi = render.robust_limits(image, k=3.0)
    assert (lo, hi) == pytest.approx((med - 3 * rstd, med + 3 * rstd), rel=1e-12)
    assert (lo + hi) / 2 == pytest.approx(3.0, abs=0.2)
    assert (hi - lo) / 6 == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("value", [0.0, 7.0, -1234.5, 1e-9, 6.5e4])
def test_robust_limits_constant_image_not_degenerate(value):
    lo, hi = render.robust_limits(np.full((5, 6), value))
    assert math.isfinite(lo) and math.isfinite(hi)
    assert lo < value < hi
    assert (lo + hi) / 2 == pytest.approx(value, rel=1e-9, abs=1e-12)


def test_robust_limits_mad_zero_but_not_constant():
    image = np.array([0.0] * 7 + [1.0, 1.0])  # MAD 0, standard deviation not
    lo, hi = render.robust_limits(image)
    assert lo < 0.0 < hi


def test_robust_limits_no_finite_value():
    assert render.robust_limits(np.full((3, 3), np.nan)) == (0.0, 1.0)


def test_asinh_stretch_range_monotonic_nan():
    rng = np.random.default_rng(42)
    image = rng.normal(100.0, 5.0, (40, 50))
    stars = distinct_positions(rng, image.shape, 40)
    image[stars] += rng.uniform(50, 5000, 40)
    image[0, 0] = np.nan
    image[1, 1] = -1e4
    out = render.asinh_stretch(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.isnan(out[0, 0])
    assert np.isnan(out).sum() == 1
    finite = np.isfinite(image)
    assert out[finite].min() >= 0.0 and out[finite].max() <= 1.0
    assert out[1, 1] == 0.0  # far below the median: clipped to black
    order = np.argsort(image[finite])
    assert (np.diff(out[finite][order]) >= 0).all()
    assert out[finite].max() == 1.0  # the brightest stars saturate


def test_asinh_stretch_known_values():
    """Where the 99.7th percentile is well above median + 10 rstd, the docstring's formula."""
    rng = np.random.default_rng(43)
    sky = rng.normal(50.0, 2.0, 10_000)
    sky[:100] = 500.0 + np.arange(100.0)  # 1% bright pixels: p99.7 ~ 570
    image = sky.reshape(100, 100)
    med, rstd = ref_median_rstd(image)
    lo = med - 2 * rstd
    hi = float(np.percentile(image, 99.7))
    assert hi > med + 10 * rstd
    soft = 3 * rstd
    expected = np.clip(np.arcsinh((image - lo) / soft) / np.arcsinh((hi - lo) / soft), 0, 1)
    out = render.asinh_stretch(image)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # in words: median - 2 rstd is black, the 99.7th percentile white
    probe = np.array([lo, med, hi, hi + 100.0])
    probe_out = render.asinh_stretch(np.concatenate([image.ravel(), probe]))[-4:]
    assert probe_out[0] == pytest.approx(0.0, abs=1e-3)
    assert 0.05 < probe_out[1] < 0.5
    assert probe_out[2] == pytest.approx(1.0, abs=1e-3)
    assert probe_out[3] == 1.0


def test_asinh_stretch_constant_and_empty():
    out = render.asinh_stretch(np.full((4, 5), 42.0))
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    assert np.isnan(render.asinh_stretch(np.full((3, 2), np.nan))).all()


# ---------------------------------------------------------------------------------------------
# render: the PNG files
# ---------------------------------------------------------------------------------------------

# The figure sizes (inches) drawn by render.master_preview / comparison_preview / frame_thumbnail
FIGSIZE = {"master": (12, 8.5), "comparison": (12, 4.8), "thumbnail": (12, 5.6)}


def check_png(path: Path, kind: str) -> np.ndarray:
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    width, height = FIGSIZE[kind]
    assert pixels.shape[:2] == (round(height * render.DPI), round(width * render.DPI))
    assert float(pixels[..., :3].std()) > 0.01  # drawn, not blank
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    return pixels


def synthetic_master(seed, shape=(60, 80)):
    rng = np.random.default_rng(seed)
    sci = (rng.normal(0, 3, shape) + np.linspace(0, 20, shape[1])[None, :]).astype(np.float32)
    bpm = np.zeros(shape, np.uint8)
    bpm[5:8, 10:12] = PixelFlag.BAD
    bpm[:, 3] = PixelFlag.SATURATED
    return make_frame(sci, bpm, err=np.full(shape, 3.0))


@pytest.mark.parametrize("shape", [(60, 80), (700, 30)])  # the second is shown 2x2-binned
def test_master_preview_png(tmp_path, shape):
    frame = synthetic_master(50, shape)
    good = metrics.good_pixels(frame)
    stats = metrics.image_stats(frame)
    rows, cols = metrics.profiles(frame.sci, good)
    path = tmp_path / "master-1-bias.png"
    render.master_preview(path, frame.sci, good, stats, rows, cols, "master 1: <bias> & 50%")
    first = check_png(path, "master")
    first_bytes = path.read_bytes()

    other = make_frame(frame.sci[::-1, ::-1].copy() * 3.0, frame.bpm, frame.err)
    render.master_preview(
        path,
        other.sci,
        metrics.good_pixels(other),
        metrics.image_stats(other),
        *metrics.profiles(other.sci, metrics.good_pixels(other)),
        "again",
    )
    second = check_png(path, "master")
    assert path.read_bytes() != first_bytes
    assert not np.array_equal(first, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master-1-bias.png"]


def test_master_preview_all_flagged(tmp_path):
    frame = synthetic_master(51)
    bpm = np.full(frame.shape, PixelFlag.BAD, np.uint8)
    frame = make_frame(frame.sci, bpm)
    good = metrics.good_pixels(frame)
    render.master_preview(tmp_path / "m.png", frame.sci, good, metrics.image_stats(frame),
                          *metrics.profiles(frame.sci, good), "all flagged")  # fmt: skip
    check_png(tmp_path / "m.png", "master")


@pytest.mark.parametrize("with_err", [True, False])
def test_comparison_preview_png(tmp_path, with_err):
    cur, prev = bias_pair(52, shape=(64, 48), err=with_err)
    sci = cur.sci.copy()
    sci[10:20, 10:20] += 100.0
    c = metrics.compare_masters(make_frame(sci, err=cur.err), prev, "BIAS")
    assert (c.z is not None) == with_err
    path = tmp_path / "master-2-vs-1.png"
    render.comparison_preview(path, c, "master 2 vs 1")
    first = path.read_bytes()
    check_png(path, "comparison")
    render.comparison_preview(path, metrics.compare_masters(prev, cur, "BIAS"), "master 1 vs 2")
    check_png(path, "comparison")
    assert path.read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["master-2-vs-1.png"]


def test_comparison_preview_flats(tmp_path):
    rng = np.random.default_rng(53)
    prev = 1 + rng.normal(0, 0.01, (40, 40))
    cur = prev * 1.02 * (1 + rng.normal(0, 0.001, prev.shape))
    c = metrics.compare_masters(
        make_frame(cur, err=0.001 * cur, unit=""),
        make_frame(prev, err=0.001 * prev, unit=""),
        "SKYFLAT",
    )
    render.comparison_preview(tmp_path / "f.png", c, "flat vs flat")
    check_png(tmp_path / "f.png", "comparison")


def science_frame(seed, shape=(120, 160)):
    rng = np.random.default_rng(seed)
    sci = rng.normal(200.0, 10.0, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    xs = rng.uniform(10, shape[1] - 10, 12)
    ys = rng.uniform(10, shape[0] - 10, 12)
    for x0, y0 in zip(xs, ys, strict=True):
        sci += 3000.0 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5**2))
    sources = {
        "X": xs + 1,
        "Y": ys + 1,
        "A": np.full(12, 1.6),
        "B": np.full(12, 1.3),
        "THETA": rng.uniform(-90, 90, 12),
        "FLAG": (np.arange(12) % 4 == 0).astype(int),
    }
    return sci.astype(np.float32), sources


def test_frame_thumbnail_png_with_sources_and_residuals(tmp_path):
    sci, sources = science_frame(54)
    header = tan_header(150.25, 40.0)
    rng = np.random.default_rng(55)
    ra, dec = sky_of_pixels(header, sources["X"], sources["Y"])
    catalog = Table({"X": sources["X"], "Y": sources["Y"],
                     "REF_RA": ra + rng.normal(0, 0.2, 12) / 3600 / np.cos(np.radians(dec)),
                     "REF_DEC": dec + rng.normal(0, 0.2, 12) / 3600})  # fmt: skip
    residuals = metrics.astrometric_residuals(catalog, header)
    assert residuals.n == 12 and 0 < residuals.rms < 1
    good = np.isfinite(sci)
    path = tmp_path / "frame-7-x.png"
    render.frame_thumbnail(path, sci, good, sources, residuals, "x.fits: M 31 & <b>, rp, 30 s")
    first = check_png(path, "thumbnail")
    render.frame_thumbnail(path, sci, good, None, None, "x.fits again",
                           no_wcs_reason="too few stars matched (3 < 6) <script>")  # fmt: skip
    second = check_png(path, "thumbnail")
    assert not np.array_equal(first, second)
    assert [p.name for p in tmp_path.iterdir()] == ["frame-7-x.png"]


def test_frame_thumbnail_without_solution(tmp_path):
    sci, _ = science_frame(56, shape=(50, 70))
    good = np.ones(sci.shape, bool)
    good[:5] = False
    render.frame_thumbnail(
        tmp_path / "a.png",
        sci,
        good,
        None,
        None,
        "no wcs",
        no_wcs_reason="astrometry.net not installed; " + "long " * 40,
    )
    check_png(tmp_path / "a.png", "thumbnail")
    render.frame_thumbnail(tmp_path / "b.png", sci, good, None, None, "no wcs, no reason")
    check_png(tmp_path / "b.png", "thumbnail")


def test_frame_thumbnail_residuals_exactly_zero(tmp_path):
    """BUG (render.frame_thumbnail): a solution whose residuals are all exactly 0 (e.g. one
    star, or a reference computed from the WCS itself) gives rms 0 and sets identical axis
    limits on the residual plot: matplotlib's UserWarning, an error under this test suite."""
    header = tan_header(150.25, 40.0)
    catalog = offset_catalog(header, [30.0, 60.0], [20.0, 40.0], 0.0, 0.0)
    residuals = metrics.astrometric_residuals(catalog, header)
    assert residuals.n == 2
    residuals = metrics.Residuals(residuals.x, residuals.y, np.zeros(2), np.zeros(2))
    sci, _ = science_frame(57, shape=(50, 70))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        render.frame_thumbnail(tmp_path / "z.png", sci, np.ones(sci.shape, bool), None,
                               residuals, "perfect fit")  # fmt: skip
    messages = [str(w.message) for w in caught]
    assert messages == [], (
        "BUG in pylcogt/qc/render.py frame_thumbnail: all-zero astrometric residuals make "
        f"rms = 0 and right.set_xlim(-0, 0) -> matplotlib warns: {messages}"
    )
    check_png(tmp_path / "z.png", "thumbnail")


@pytest.mark.parametrize(
    ("title", "reason"),
    [
        ("frame.fits: $\\foo$ field, rp, 30 s", ""),  # OBJECT from the observer's header
        ("frame.fits: field, rp, 30 s", "solver said: $\\undefined$"),
    ],  # ASTREASN
)
def test_frame_thumbnail_header_text_with_dollars(tmp_path, title, reason):
    """BUG (render): header-derived text (title from OBJECT/filename, ASTREASN) goes to
    matplotlib as mathtext: a pair of '$' around an unknown TeX command raises ValueError
    at savefig, which night_report does not catch (the whole QC run stops)."""
    sci, _ = science_frame(58, shape=(40, 50))
    try:
        render.frame_thumbnail(tmp_path / "d.png", sci, np.ones(sci.shape, bool), None, None,
                               title, no_wcs_reason=reason)  # fmt: skip
    except ValueError as exc:
        pytest.fail(
            "BUG in pylcogt/qc/render.py: header text is parsed as matplotlib mathtext "
            f"('$...$' not escaped), drawing raised ValueError: {exc!s:.120}"
        )
    check_png(tmp_path / "d.png", "thumbnail")


# ---------------------------------------------------------------------------------------------
# page
# ---------------------------------------------------------------------------------------------

HOSTILE = '<script>alert(1)</script> "quotes" & ampersands'


class PageParser(HTMLParser):
    """Collects img srcs, link hrefs, element ids, tag names, text and table rows."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.imgs: list[str] = []
        self.hrefs: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src"))
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def row(self, first: str) -> list[str]:
        found = [r for r in self.rows if r and r[0] == first]
        assert found, f"no table row starting with {first!r}"
        return found[0]


def parse(text: str) -> PageParser:
    p = PageParser()
    p.feed(text)
    p.close()
    return p


def page_data():
    frame = synthetic_master(60, shape=(40, 50))
    stats = metrics.image_stats(frame).as_dict()
    stats["biaslvl"] = 512.25
    cur, prev = bias_pair(61, shape=(40, 50))
    comparison = metrics.compare_masters(cur, prev, "BIAS").as_dict()
    master = {
        "id": 7, "label": f"fa03 BIAS 1x1 {HOSTILE}", "type": "BIAS", "camera": "fa03",
        "site": "lsc", "binning": "1x1", "readout_mode": "full_frame", "filter": "",
        "dateobs": "2024-03-01T12:00:00", "file": "bias-fa03-20240301.fits.fz",
        "path": "/data/masters/bias-fa03-20240301.fits.fz", "n_inputs": 11,
        "is_bad": True, "bad_reason": f"bad by hand: {HOSTILE}",
        "left_out": [{"id": 101, "file": "fa03-b00.fits.fz", "state": "rejected",
                      "reason": f"too bright {HOSTILE}"}],
        "previous": {"id": 5, "dayobs": "20240228", "file": "bias-fa03-20240228.fits.fz"},
        "stats": stats, "comparison": comparison, "comparison_note": "",
        "images": {"preview": "master-7-bias.png", "comparison": "master-7-vs-5.png"},
        "error": None,
    }  # fmt: skip
    reduced = {
        "id": 42, "file": "lsc1m005-fa03-20240301-0042-e91.fits.fz", "camera": "fa03",
        "obstype": "EXPOSE", "object": HOSTILE, "filter": "rp", "exptime_s": 30.0,
        "dateobs": "2024-03-02T03:00:00", "state": "reduced", "product": "/p/x.fits.fz",
        "images": {"thumbnail": "frame-42-lsc1m005-fa03-20240301-0042-e91.png"},
        "error": None, "sources": 321, "fwhm_arcsec": 2.34567, "ellipticity": 0.05,
        "background": 1234.5678, "background_rms": 12.3, "cosmic_ray_pixels": 17,
        "wcs": "failed", "wcs_reason": f"too few stars {HOSTILE}", "wcs_rms_arcsec": None,
        "wcs_n_matched": 3, "wcs_sip_order": None, "zeropoint": 23.456789,
        "zeropoint_err": 0.0123456, "zeropoint_n": 40, "photometry": "NO_WCS",
        "photometry_reason": HOSTILE, "bias": 7, "dark": None, "flat": None,
        "residual_rms_arcsec": None, "residual_n": 0,
    }  # fmt: skip
    broken = {"id": 43, "file": "broken.fits.fz", "camera": "fa03", "obstype": "EXPOSE",
              "object": "M 31", "filter": "V", "exptime_s": 10, "dateobs": "2024-03-02",
              "state": "reduced", "product": "/p/broken.fits.fz", "images": {},
              "error": f"cannot read /p/broken.fits.fz: {HOSTILE}"}  # fmt: skip
    return {
        "night": "2024-03-01",
        "dayobs": "20240301",
        "camera": "fa03",
        "cameras": ["fa03", "kb95 " + HOSTILE],
        "generated_at": "2024-03-02T10:00:00+00:00",
        "pylcogt_version": "0.1.0",
        "database": "sqlite:///registry.db",
        "summary": {
            "masters": 1,
            "masters_bad": 1,
            "frames_left_out_of_masters": 1,
            "frames_reduced": 2,
            "frames_not_reduced": 1,
            "frames_solved": 0,
            "frames_with_zeropoint": 1,
            "errors": 1,
        },  # fmt: skip
        "masters": [master],
        "frames": [reduced, broken],
        "not_reduced": [
            {
                "id": 44,
                "file": "fa03-e92.fits.fz",
                "camera": "fa03",
                "state": "failed",
                "reason": f"no flat {HOSTILE}",
            }
        ],  # fmt: skip
        "errors": [broken["error"]],
    }


def test_page_escapes_and_is_self_contained(tmp_path):
    data = page_data()
    text = page.render_page(data)
    assert "<script" not in text.lower()
    assert "http://" not in text and "https://" not in text
    assert '"quotes" & ampersands' not in text  # only escaped forms
    assert html.escape(HOSTILE, quote=True) in text
    parsed = parse(text)
    assert "script" not in parsed.tags
    all_text = "".join(parsed.text)
    # every hostile text is there, as text: escaped, not dropped
    assert all_text.count(HOSTILE) >= 9
    for src in parsed.imgs:
        assert src and "/" not in src and ":" not in src and "\\" not in src, src
        assert src.endswith(".png")
    assert sorted(parsed.imgs) == sorted(
        ["master-7-bias.png", "master-7-vs-5.png", "frame-42-lsc1m005-fa03-20240301-0042-e91.png"]
    )
    for href in parsed.hrefs:
        if href.startswith("#"):
            assert href[1:] in parsed.ids, f"link to a missing anchor {href}"
        else:
            assert "/" not in href and ":" not in href, href
    assert "qc.json" in parsed.hrefs
    assert {"#master-7", "#frame-42", "#frame-43"} <= set(parsed.hrefs)


def test_page_numbers_and_rows(tmp_path):
    data = page_data()
    parsed = parse(page.render_page(data))
    s = data["masters"][0]["stats"]
    c = data["masters"][0]["comparison"]
    assert parsed.row("median")[1] == page.fmt(s["median"])
    assert parsed.row("rstd (noise, 1.4826 MAD)")[1] == page.fmt(s["rstd"])
    assert parsed.row("good pixels")[1] == f"{s['n_good']} of {s['n_pixels']}"
    assert parsed.row("median ERR")[1] == page.fmt(s["median_err"])
    assert parsed.row("bias level of the inputs (BIASLVL, e-)")[1] == "512.2"
    flagged = parsed.row("flagged pixels")[1]
    assert f"bad {s['flagged']['bad']}" in flagged
    assert f"saturated {s['flagged']['saturated']}" in flagged
    assert "low_flat" not in flagged  # zero counts left out
    assert parsed.row("rstd of (difference / expected noise); 1 = agree")[1] == page.fmt(
        c["z_rstd"]
    )
    assert parsed.row("pixels changed by more than 5 sigma")[1] == str(c["changed"])
    assert parsed.row("masters made this night")[1] == "1"
    assert parsed.row("science frames not reduced")[1] == "1"
    frame_row = parsed.row("lsc1m005-fa03-20240301-0042-e91.fits.fz")
    assert frame_row[1] == HOSTILE
    assert frame_row[4:8] == ["321", "2.346", "1235", "17"]
    assert frame_row[12:14] == ["23.46", "0.01235"]
    broken_row = parsed.row("broken.fits.fz")
    assert broken_row[4].startswith("cannot read")
    assert parsed.row("fa03-e92.fits.fz") == [
        "fa03-e92.fits.fz",
        "fa03",
        "failed",
        f"no flat {HOSTILE}",
    ]
    assert parsed.row("fa03-b00.fits.fz")[2] == f"too bright {HOSTILE}"
    assert "MARKED BAD" in "".join(parsed.text)


def test_page_empty_night():
    data = page_data()
    data.update(
        masters=[], frames=[], not_reduced=[], errors=[], camera=None, cameras=[], database=""
    )
    text = page.render_page(data)
    parsed = parse(text)
    words = " ".join(parsed.text)
    assert "No master was made this night." in words
    assert "No reduced science frame this night." in words
    assert "no master and no science frame" in words
    assert parsed.imgs == []
    assert "Errors" not in words


def test_write_page_replaces_the_file(tmp_path):
    data = page_data()
    path = tmp_path / "index.html"
    path.write_text("old contents")
    assert page.write_page(path, data) == path
    assert path.read_text(encoding="utf-8") == page.render_page(data)
    data["dayobs"] = "20240302"
    page.write_page(path, data)
    assert "20240302" in path.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (math.nan, "-"), (math.inf, "-"), (-math.inf, "-"),
     (0, "0"), (7, "7"), (-12, "-12"), (123456789, "123456789"),
     (True, "yes"), (False, "no"),
     (3.14159265, "3.142"), (2.0 / 3.0, "0.6667"), (100.0, "100"), (0.000123456, "0.0001235"),
     (98765.4, "9.877e+04"), (-1.23456, "-1.235"), ("rp", "rp")],
)  # fmt: skip
def test_fmt(value, text):
    assert page.fmt(value) == text


def test_fmt_four_significant_digits():
    rng = np.random.default_rng(70)
    for x in rng.lognormal(0, 8, 200) * rng.choice([-1, 1], 200):
        x = float(x)
        s = page.fmt(x)
        assert float(s) == pytest.approx(x, rel=5.001e-4), s
        mantissa = s.split("e")[0].lstrip("-").replace(".", "").lstrip("0")
        assert len(mantissa.rstrip("0") or "0") <= 4, s
    assert page.fmt(3.14159, digits=2) == "3.1"


def test_night_trends_draws_every_frame_with_a_time_and_tolerates_missing_numbers(tmp_path):
    frames = [
        {"dateobs": f"2026-11-29T0{h}:10:00", "camera": "fa03", "filter": f,
         "fwhm_arcsec": 1.5 + h / 10, "background": 200.0 + h, "zeropoint": None,
         "wcs_rms_arcsec": float("nan") if h == 2 else 0.2}
        for h, f in ((1, "rp"), (2, "V"), (3, "rp"))
    ]
    frames.append({"dateobs": None, "camera": "fa03", "filter": "rp", "fwhm_arcsec": 9.9,
                   "background": 1.0, "zeropoint": 23.0, "wcs_rms_arcsec": 0.1})
    path = tmp_path / "night-trends.png"
    assert render.night_trends(path, frames, "night $x$ trends") == 3  # the one without a time
    image = imread(path)
    assert image.shape[:2] == (round(7.5 * render.DPI), 12 * render.DPI)
    assert float(np.std(image)) > 0
