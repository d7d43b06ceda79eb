"""pylcogt's TAN-SIP fit (pure numpy, no astrometry.net): recovery of a known distorted WCS,
noise, outliers, order fallback, the inverse polynomials and the matching loop."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from pylcogt.astrometry.match import nearest_one_to_one, pairs_within
from pylcogt.astrometry.sip import (
    FitError,
    fit_tan_sip,
    make_wcs,
    n_coeffs,
    refine_wcs,
    sky_separation_arcsec,
    tan_deproject,
    tan_project,
)

WIDTH, HEIGHT = 2048, 2000
SCALE = 1.0  # arcsec/pixel
CRPIX = ((WIDTH + 1) / 2, (HEIGHT + 1) / 2)


def _cd(scale_arcsec: float, angle_deg: float) -> np.ndarray:
    s, t = scale_arcsec / 3600, np.radians(angle_deg)
    return np.array([[-s * np.cos(t), s * np.sin(t)], [s * np.sin(t), s * np.cos(t)]])


def _truth() -> WCS:
    """TAN-SIP order 3 at 1"/px: ~30" (30 px) of distortion in the corners, ~2" from the
    quadratic terms, the rest cubic."""
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[2, 0], a[1, 1], b[0, 2] = 1.5e-6, -1.0e-6, 2.0e-6
    a[3, 0], a[1, 2], b[0, 3], b[2, 1] = 2.0e-8, 1.0e-8, -1.5e-8, 0.8e-8
    return make_wcs(CRPIX, (210.3, -47.2), _cd(SCALE, -35.0), a, b, width=WIDTH, height=HEIGHT)


def _grid(n: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """1-indexed pixel positions over the whole image, edges and corners included."""
    gx, gy = np.meshgrid(np.linspace(0.5, WIDTH + 0.5, n), np.linspace(0.5, HEIGHT + 0.5, n))
    return gx.ravel(), gy.ravel()


def _error_arcsec(wcs: WCS, truth: WCS) -> np.ndarray:
    gx, gy = _grid()
    r1, d1 = truth.all_pix2world(gx, gy, 1)
    r2, d2 = wcs.all_pix2world(gx, gy, 1)
    return sky_separation_arcsec(r1, d1, r2, d2)


def _stars(n: int, seed: int, truth: WCS | None = None):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0.5, WIDTH + 0.5, n), rng.uniform(0.5, HEIGHT + 0.5, n)
    ra, dec = (truth or _truth()).all_pix2world(x, y, 1)
    return x, y, ra, dec, rng


def test_truth_has_tens_of_arcsec_of_distortion_in_the_corners():
    truth = _truth()
    linear = make_wcs(CRPIX, truth.wcs.crval, truth.wcs.cd)
    err = _error_arcsec(linear, truth)
    assert 20 < err.max() < 60


def test_tan_projection_agrees_with_astropy_intermediate_coordinates():
    wcs = make_wcs(CRPIX, (359.9, 62.0), _cd(7.0, 25.0))
    gx, gy = _grid(7)
    ra, dec = wcs.all_pix2world(gx, gy, 1)
    xi, eta = tan_project(ra, dec, 359.9, 62.0)
    imgcrd = wcs.wcs.p2s(np.column_stack([gx, gy]), 1)["imgcrd"]
    np.testing.assert_allclose(xi, imgcrd[:, 0], atol=1e-11)
    np.testing.assert_allclose(eta, imgcrd[:, 1], atol=1e-11)
    back_ra, back_dec = tan_deproject(xi, eta, 359.9, 62.0)
    assert sky_separation_arcsec(back_ra, back_dec, ra, dec).max() < 1e-7


def test_exact_positions_recover_the_wcs_everywhere():
    truth = _truth()
    x, y, ra, dec, _ = _stars(60, seed=1)
    fit = fit_tan_sip(x, y, ra, dec, width=WIDTH, height=HEIGHT, order=3)
    assert fit.sip_order == 3 and fit.n_matched == 60 and fit.note == ""
    assert fit.rms_arcsec < 1e-6
    assert _error_arcsec(fit.wcs, truth).max() < 1e-4  # << 0.1", corners included
    assert list(fit.wcs.wcs.ctype) == ["RA---TAN-SIP", "DEC--TAN-SIP"]
    np.testing.assert_allclose(fit.wcs.wcs.crpix, CRPIX)
    np.testing.assert_allclose(fit.wcs.sip.a, truth.sip.a, atol=1e-12)


def test_centroid_noise_gives_the_expected_rms():
    truth = _truth()
    sigma_px, n = 0.05, 200
    x, y, ra, dec, rng = _stars(n, seed=2)
    x_noisy, y_noisy = x + rng.normal(0, sigma_px, n), y + rng.normal(0, sigma_px, n)
    fit = fit_tan_sip(x_noisy, y_noisy, ra, dec, width=WIDTH, height=HEIGHT, order=3)
    # 2-D rms of least-squares residuals: sigma * sqrt(2 (n - p) / n), p coefficients per axis
    expected = sigma_px * SCALE * np.sqrt(2 * (n - n_coeffs(3)) / n)
    assert fit.rms_arcsec == pytest.approx(expected, rel=0.15)
    assert fit.n_matched >= 0.97 * n  # 3-rstd clipping loses a few good stars at most
    err = _error_arcsec(fit.wcs, truth)
    assert np.sqrt(np.mean(err**2)) < 0.02 and err.max() < 0.06  # arcsec


def test_outliers_are_rejected():
    truth = _truth()
    n, n_bad = 120, 12
    x, y, ra, dec, rng = _stars(n, seed=3)
    x, y = x + rng.normal(0, 0.03, n), y + rng.normal(0, 0.03, n)
    bad = rng.choice(n, n_bad, replace=False)
    x[bad] += rng.choice([-1, 1], n_bad) * rng.uniform(2, 30, n_bad)  # mismatches, moving stars
    fit = fit_tan_sip(x, y, ra, dec, width=WIDTH, height=HEIGHT, order=3)
    assert not set(bad) & set(fit.source_index.tolist())
    assert fit.n_matched >= n - n_bad - 3
    assert _error_arcsec(fit.wcs, truth).max() < 0.05


@pytest.mark.parametrize(
    ("n_stars", "order"),
    [(20, 3), (19, 2), (12, 2), (11, 0), (6, 0)],
)
def test_too_few_stars_fall_back_to_a_lower_order(n_stars, order):
    # min_stars_per_coeff=2: order 3 needs 20 stars, order 2 12, the linear TAN 6. Exact
    # positions of an undistorted WCS: every order fits exactly, nothing is clipped.
    linear = make_wcs(CRPIX, (210.3, -47.2), _cd(SCALE, -35.0))
    x, y, ra, dec, _ = _stars(n_stars, seed=4, truth=linear)
    fit = fit_tan_sip(x, y, ra, dec, width=WIDTH, height=HEIGHT, order=3, min_stars_per_coeff=2)
    assert fit.sip_order == order and fit.n_matched == n_stars
    assert _error_arcsec(fit.wcs, linear).max() < 1e-6
    if order == 3:
        assert fit.note == ""
    else:
        assert "instead of SIP order 3" in fit.note and f"{n_stars} matched stars" in fit.note
    if order == 0:
        assert fit.wcs.sip is None
        assert list(fit.wcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"]


def test_rejected_outliers_can_lower_the_order():
    # 21 stars afford order 3 (20); with 3 of them wrong only order 2 (12) is left, which fits
    # this purely quadratic distortion exactly
    a, b = np.zeros((3, 3)), np.zeros((3, 3))
    a[2, 0], a[1, 1], b[0, 2] = 1.5e-6, -1.0e-6, 2.0e-6
    truth = make_wcs(CRPIX, (210.3, -47.2), _cd(SCALE, -35.0), a, b)
    x, y, ra, dec, _ = _stars(21, seed=10, truth=truth)
    x[:3] += 25.0
    fit = fit_tan_sip(x, y, ra, dec, width=WIDTH, height=HEIGHT, order=3)
    assert fit.sip_order == 2 and fit.n_matched == 18
    assert fit.note == "SIP order 2 instead of SIP order 3: 18 matched stars (SIP order 3 needs 20)"
    assert not {0, 1, 2} & set(fit.source_index.tolist())
    assert _error_arcsec(fit.wcs, truth).max() < 1e-4


def test_fewer_stars_than_a_linear_fit_needs_is_an_error():
    x, y, ra, dec, _ = _stars(5, seed=5)
    with pytest.raises(FitError, match="5 matched stars"):
        fit_tan_sip(x, y, ra, dec, width=WIDTH, height=HEIGHT, order=3)


def test_inverse_polynomials_round_trip_pixels():
    truth = _truth()
    x, y, ra, dec, _ = _stars(80, seed=6)
    fit = fit_tan_sip(x, y, ra, dec, width=WIDTH, height=HEIGHT, order=3)
    # order 4 (SIP order + 1) is not enough for 30 px of distortion: a higher one is chosen
    assert 4 < fit.wcs.sip.ap_order == fit.wcs.sip.bp_order <= 9
    gx, gy = _grid(41)
    world = np.column_stack(fit.wcs.all_pix2world(gx, gy, 1))
    crpix = fit.wcs.wcs.crpix

    def world_to_pixel(world):
        """Without iteration: the linear inverse (focal-plane offsets from CRPIX), then AP/BP."""
        return fit.wcs.sip_foc2pix(fit.wcs.wcs_world2pix(world, 1) - crpix, 1)

    assert np.abs(world_to_pixel(world) - np.column_stack([gx, gy])).max() < 0.01
    # the truth's own sky positions land on the truth's pixels
    truth_world = np.column_stack(truth.all_pix2world(gx, gy, 1))
    assert np.abs(world_to_pixel(truth_world) - np.column_stack([gx, gy])).max() < 0.01
    # astropy's iterative world -> pixel agrees
    pix = fit.wcs.all_world2pix(world, 1, tolerance=1e-8)
    assert np.abs(pix - np.column_stack([gx, gy])).max() < 1e-6


def test_agrees_with_astropy_fit_wcs_from_points():
    pytest.importorskip("scipy")
    from astropy.wcs.utils import fit_wcs_from_points

    truth = _truth()
    n = 150
    x, y, ra, dec, rng = _stars(n, seed=7)
    x, y = x + rng.normal(0, 0.01, n), y + rng.normal(0, 0.01, n)
    ours = fit_tan_sip(x, y, ra, dec, width=WIDTH, height=HEIGHT, order=3).wcs
    # astropy's fitter takes 0-indexed pixels
    theirs = fit_wcs_from_points(
        (x - 1, y - 1), SkyCoord(ra, dec, unit="deg"), projection="TAN", sip_degree=3
    )
    gx, gy = _grid()
    r1, d1 = ours.all_pix2world(gx, gy, 1)
    r2, d2 = theirs.all_pix2world(gx - 1, gy - 1, 0)
    # astropy's fitter (pixel-space residuals, CRPIX free) lands within 0.1" of the truth here
    assert sky_separation_arcsec(r1, d1, r2, d2).max() < 0.15
    assert _error_arcsec(ours, truth).max() < 0.03
    assert _error_arcsec(theirs, truth).max() < 0.15


def test_matching_is_nearest_and_one_to_one():
    x_ref = np.array([0.0, 10.0, 10.5, 50.0])
    y_ref = np.zeros(4)
    x_src = np.array([0.2, 10.4, 30.0, 49.0])
    y_src = np.array([0.0, 0.0, 0.0, 0.5])
    i, j = nearest_one_to_one(x_ref, y_ref, x_src, y_src, 2.0)
    # refs 1 and 2 both want source 1: the nearer (ref 2) gets it
    assert i.tolist() == [0, 2, 3] and j.tolist() == [0, 1, 3]
    i, j, d = pairs_within(x_ref, y_ref, x_src, y_src, 0.5)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 0), (1, 1), (2, 1)]
    np.testing.assert_allclose(np.sort(d), [0.1, 0.2, 0.4])


def test_matching_grid_agrees_with_brute_force():
    rng = np.random.default_rng(8)
    x1, y1 = rng.uniform(0, 500, 300), rng.uniform(0, 500, 300)
    x2, y2 = rng.uniform(0, 500, 2000), rng.uniform(0, 500, 2000)
    i, j, _ = pairs_within(x1, y1, x2, y2, 7.0)
    dist = np.hypot(x1[:, None] - x2[None, :], y1[:, None] - y2[None, :])
    expected = set(zip(*np.nonzero(dist <= 7.0), strict=True))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(int(a), int(b)) for a, b in expected}


def test_refine_from_a_rough_linear_wcs():
    """The matching loop: start from a TAN that is off by 8" and 0.2 deg of rotation, with
    twice as many unrelated sources as stars and a third of the reference stars undetected."""
    truth = _truth()
    x, y, ra, dec, rng = _stars(150, seed=9)
    x, y = x + rng.normal(0, 0.05, 150), y + rng.normal(0, 0.05, 150)
    detected = rng.random(150) > 0.33
    x_src = np.concatenate([x[detected], rng.uniform(0.5, WIDTH + 0.5, 300)])
    y_src = np.concatenate([y[detected], rng.uniform(0.5, HEIGHT + 0.5, 300)])
    crval = tan_deproject(8 / 3600, -3 / 3600, *truth.wcs.crval)
    rough = make_wcs(CRPIX, crval, _cd(SCALE * 1.0005, -35.2))
    fit = refine_wcs(
        rough, x_src, y_src, ra, dec, width=WIDTH, height=HEIGHT, order=3, match_radius_arcsec=40
    )
    assert fit.sip_order == 3
    # every pair kept is a detected star with its own reference star
    assert np.all(fit.source_index < detected.sum())
    np.testing.assert_array_equal(np.flatnonzero(detected)[fit.source_index], fit.ref_index)
    assert fit.n_matched >= 0.95 * detected.sum()
    err = _error_arcsec(fit.wcs, truth)
    # 0.05" centroid noise per axis, ~100 stars, 10 coefficients per axis
    assert np.sqrt(np.mean(err**2)) < 0.05 and err.max() < 0.2


def test_refine_with_no_reference_star_is_a_fit_error():
    rough = make_wcs(CRPIX, (10.0, 10.0), _cd(SCALE, 0.0))
    with pytest.raises(FitError):
        refine_wcs(
            rough,
            np.array([10.0, 20.0]),
            np.array([10.0, 30.0]),
            np.zeros(0),
            np.zeros(0),
            width=WIDTH,
            height=HEIGHT,
            order=3,
            match_radius_arcsec=10,
        )
