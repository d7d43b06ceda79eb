"""Cosmic-ray flags (L.A.Cosmic via astroscrappy) on seeded synthetic frames: completeness and
false positives against injected hits, stars and saturated stars left alone, the tiled run
equal to astroscrappy's whole-frame one, QC cards, an untouched input.

The frame helpers here (:func:`simulate_frame`, :func:`score`) are also used by
``benchmarks/bench_cosmics.py``.
"""

from __future__ import annotations

import logging
import math

import astroscrappy
import numpy as np
import pytest
from astropy.io import fits

from pylcogt.frame import Frame, PixelFlag
from pylcogt.simulate.sky import cosmic_rays, render_stars
from pylcogt.stages.cosmics import (
    CosmicRayConfig,
    cosmic_ray_mask,
    detect_cosmic_rays,
    lacosmic_inputs,
    lacosmic_reach,
)
from pylcogt.stages.detect import SourceFlag, detect_sources

#: a 1m0 Sinistro in r' after the calibrations: sky of a 300 s exposure, read noise and the
#: saturation level in electrons, 15 micron pixels
SKY_E, READ_NOISE_E, SATURATION_E, PIXEL_CM = 700.0, 7.5, 60000.0, 15e-4
BAD, SATURATED, LOW_FLAT, COSMIC_RAY = (
    np.uint8(flag)
    for flag in (PixelFlag.BAD, PixelFlag.SATURATED, PixelFlag.LOW_FLAT, PixelFlag.COSMIC_RAY)
)


# --- synthetic frames ---------------------------------------------------------------------
def render_moffat(image: np.ndarray, x, y, flux, fwhm: float, beta: float) -> None:
    """Add circular Moffat profiles (``flux`` e- each, FITS 1-indexed centres) in place,
    integrated over 5 x 5 sub-pixels, out to where they drop below 0.1 e- per pixel."""
    ny, nx = image.shape
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    sub = (np.arange(5) + 0.5) / 5 - 0.5
    for xc, yc, f in zip(np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(flux), strict=True):
        peak = f * (beta - 1) / (math.pi * alpha**2)
        half = int(math.ceil(alpha * math.sqrt(max(peak / 0.1, 1.0) ** (1 / beta) - 1))) + 2
        c0, r0 = int(round(xc)) - 1, int(round(yc)) - 1
        cols = np.arange(max(0, c0 - half), min(nx, c0 + half + 1))
        rows = np.arange(max(0, r0 - half), min(ny, r0 + half + 1))
        if cols.size == 0 or rows.size == 0:
            continue
        dx = (cols[:, None] + 1 + sub[None, :]).ravel() - xc
        dy = (rows[:, None] + 1 + sub[None, :]).ravel() - yc
        profile = (1 + (dy[:, None] ** 2 + dx[None, :] ** 2) / alpha**2) ** -beta
        profile = profile.reshape(rows.size, 5, cols.size, 5).mean(axis=(1, 3))
        image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] += peak * profile


def worm_hits(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """Curved tracks ("worms") as rows ``(x, y, electrons)``, 1-indexed: random walks of 5-15
    steps; per-pixel deposits log-normal around 800 e- (a factor 1.8 scatter)."""
    ny, nx = shape
    rows = []
    for _ in range(n):
        y, x = rng.uniform(0, ny), rng.uniform(0, nx)
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(5, 16))):
            angle += rng.normal(0.0, 0.4)
            y, x = y + math.sin(angle), x + math.cos(angle)
            if 0 <= y < ny and 0 <= x < nx:
                rows.append((int(x) + 1, int(y) + 1, rng.lognormal(math.log(800.0), 0.6)))
    return np.array(rows, dtype=float).reshape(-1, 3)


def cosmic_ray_image(rng, shape: tuple[int, int], seconds: float) -> np.ndarray:
    """Deposited electrons of the hits of ``seconds`` on a Sinistro-like detector: the
    simulator's straight 1-5 pixel tracks (:func:`pylcogt.simulate.sky.cosmic_rays`, 500-5000
    e- each) and a tenth as many worms (:func:`worm_hits`)."""
    area_cm2 = shape[0] * shape[1] * PIXEL_CM**2
    tracks = cosmic_rays(rng, shape, area_cm2, seconds)
    hits = np.concatenate([tracks, worm_hits(rng, shape, len(tracks) // 10)])
    deposit = np.zeros(shape)
    np.add.at(deposit, (hits[:, 1].astype(int) - 1, hits[:, 0].astype(int) - 1), hits[:, 2])
    return deposit


def star_fluxes(rng, n: int, low: float = 2e3, high: float = 3e6) -> np.ndarray:
    """Fluxes (e-) of a field: ``N(> f) ~ f^-0.75`` (counts growing 10^0.3 per magnitude)."""
    u = rng.uniform(0.0, 1.0, n)
    return (low**-0.75 - u * (low**-0.75 - high**-0.75)) ** (-1 / 0.75)


def make_frame(sci, bpm=None, *, header=None, with_err: bool = True) -> Frame:
    """A calibrated frame (electrons) with ERR = sqrt(max(SCI, 0) + RDNOISE^2)."""
    sci = np.asarray(sci, dtype=np.float32)
    err = None
    if with_err:
        err = np.sqrt(np.maximum(np.nan_to_num(sci), 0) + READ_NOISE_E**2).astype(np.float32)
    bpm = np.zeros(sci.shape, np.uint8) if bpm is None else bpm
    header = fits.Header([("RDNOISE", READ_NOISE_E)]) if header is None else header
    return Frame(sci=sci, err=err, bpm=bpm, header=header, unit="electron", name="synthetic")


def observe(rng, expected: np.ndarray, deposit: np.ndarray | None = None) -> Frame:
    """Poisson + read noise on ``expected + deposit``; clipped at the saturation level, those
    pixels flagged SATURATED."""
    total = expected if deposit is None else expected + deposit
    sci = rng.poisson(total) + rng.normal(0.0, READ_NOISE_E, total.shape)
    saturated = sci >= SATURATION_E
    sci[saturated] = SATURATION_E
    bpm = np.where(saturated, SATURATED, np.uint8(0))
    return make_frame(sci, bpm)


def simulate_frame(
    shape: tuple[int, int],
    *,
    n_stars: int,
    seconds: float = 300.0,
    fwhm_px: float = 2.5,
    moffat_beta: float | None = None,
    seed: int = 0,
) -> tuple[Frame, np.ndarray, np.ndarray]:
    """(frame, expected image without hits, deposited hit electrons): sky, ``n_stars`` stars
    (:func:`star_fluxes`, the brightest saturate; Gaussian, or Moffat with ``moffat_beta``) and
    the cosmic rays of ``seconds`` plus half the Sinistro readout (14 s)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    expected = np.full(shape, SKY_E)
    x, y = rng.uniform(1, nx, n_stars), rng.uniform(1, ny, n_stars)
    flux = star_fluxes(rng, n_stars)
    if moffat_beta is None:
        render_stars(expected, x, y, flux, fwhm_px / (2 * math.sqrt(2 * math.log(2))))
    else:
        render_moffat(expected, x, y, flux, fwhm_px, moffat_beta)
    deposit = cosmic_ray_image(rng, shape, seconds + 14.0) if seconds > 0 else np.zeros(shape)
    return observe(rng, expected, deposit), expected, deposit


def _grow1(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


def score(flags: np.ndarray, expected: np.ndarray, deposit: np.ndarray, nsigma: float = 5.0):
    """(completeness, n_strong, false_positives): the fraction of the ``n_strong`` hit pixels
    whose deposit exceeds ``nsigma`` times the noise there (``sqrt(expected + RN^2)``) that are
    flagged, and the number of flagged pixels farther than 1 pixel from any hit pixel."""
    strong = deposit > nsigma * np.sqrt(expected + READ_NOISE_E**2)
    n_strong = int(strong.sum())
    completeness = float(flags[strong].mean()) if n_strong else math.nan
    false_positives = int((flags & ~_grow1(deposit > 0)).sum())
    return completeness, n_strong, false_positives


# --- detection quality ------------------------------------------------------------------------
@pytest.mark.parametrize("moffat_beta", [None, 3.0], ids=["gauss", "moffat"])
def test_completeness_and_false_positives(moffat_beta):
    shape = (1024, 1024)
    # ~240 hits (~1000 pixels) on 2.4 cm^2: 6000 s worth, for the statistics
    frame, expected, deposit = simulate_frame(
        shape, n_stars=150, seconds=6000.0, moffat_beta=moffat_beta, seed=11
    )
    flags = cosmic_ray_mask(frame)
    completeness, n_strong, false_positives = score(flags, expected, deposit)
    per_mpix = false_positives / (flags.size / 1e6)
    print(
        f"completeness {completeness:.4f} of {n_strong} hit pixels above 5 sigma; "
        f"{false_positives} false positives ({per_mpix:.1f} per Mpix); {flags.sum()} flagged"
    )
    assert n_strong > 800
    assert completeness >= 0.97
    assert per_mpix <= 60  # noise peaks above sigclip = 4.5 (astroscrappy's default)


def test_no_cosmic_rays_few_flags():
    frame, _, deposit = simulate_frame((512, 512), n_stars=60, seconds=0.0, seed=3)
    assert not deposit.any()
    out = detect_cosmic_rays(frame)
    n_flagged = int(((out.bpm & PixelFlag.COSMIC_RAY) != 0).sum())
    assert n_flagged <= 25  # noise peaks only (~30-60 pixels per Mpix)
    assert out.header["L1NCRPIX"] == n_flagged
    assert out.header["L1CRSTAT"] == "OK"


@pytest.mark.parametrize("fwhm_px", [2.5, 3.0])
@pytest.mark.parametrize("moffat_beta", [None, 3.0], ids=["gauss", "moffat"])
def test_star_cores_not_flagged(fwhm_px, moffat_beta):
    """Isolated unsaturated stars, peaks 1000 e- (35 sigma) to 55 000 e- above the sky: nothing
    within 3 pixels of a centre is flagged. (Measured, not asserted: at FWHM 2.5 px the core of
    a faint star, peak ~8 sigma, is flagged now and then; at 2 px also bright ones, at 1.5 px
    most: L.A.Cosmic's objlim = 5 assumes well-sampled stars.)"""
    rng = np.random.default_rng(int(10 * fwhm_px) + (moffat_beta is not None))
    shape = (512, 512)
    centres = 32.0 * (np.arange(16) + 0.5)
    gx, gy = np.meshgrid(centres, centres)
    x, y = gx.ravel() + rng.uniform(-0.5, 0.5, 256), gy.ravel() + rng.uniform(-0.5, 0.5, 256)
    peak = np.geomspace(1000.0, 55000.0, 256)
    expected = np.full(shape, SKY_E)
    if moffat_beta is None:
        sigma = fwhm_px / (2 * math.sqrt(2 * math.log(2)))
        render_stars(expected, x, y, peak * 2 * math.pi * sigma**2, sigma)
    else:
        alpha = fwhm_px / (2 * math.sqrt(2 ** (1 / moffat_beta) - 1))
        render_moffat(expected, x, y, peak * math.pi * alpha**2 / (moffat_beta - 1), fwhm_px,
                      moffat_beta)  # fmt: skip
    frame = observe(rng, expected)
    assert not (frame.bpm & PixelFlag.SATURATED).any()
    flags = cosmic_ray_mask(frame)
    rows, cols = np.nonzero(flags)
    if rows.size:
        distance = np.hypot(cols[:, None] + 1 - x, rows[:, None] + 1 - y).min(axis=1)
        assert distance.min() > 3.0
    assert flags.sum() <= 25  # noise peaks only (~30-60 pixels per Mpix)


def test_saturated_star_and_bleed_trail_not_flagged_saturated_hit_is():
    rng = np.random.default_rng(5)
    shape = (256, 256)
    expected = np.full(shape, SKY_E)
    beta, fwhm = 3.0, 2.5
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    peak = 20 * SATURATION_E
    render_moffat(expected, 128.3, 128.6, peak * math.pi * alpha**2 / (beta - 1), fwhm, beta)
    frame = observe(rng, expected)
    sci, bpm = frame.sci.copy(), frame.bpm.copy()
    sci[100:160, 127] = SATURATION_E  # a bleed trail along the column
    bpm[100:160, 127] |= SATURATED
    sci[60, 60] = SATURATION_E  # a hit that saturated one pixel, far from the star
    bpm[60, 60] |= SATURATED
    frame = make_frame(sci, bpm)
    star = np.zeros(shape, bool)
    star[90:170, 100:156] = True  # the star, its wings and the trail

    out = detect_cosmic_rays(frame)
    cosmic = (out.bpm & PixelFlag.COSMIC_RAY) != 0
    assert not cosmic[star].any()
    assert cosmic[60, 60]
    # the saturated-star mask is what protects it: without it, its edges are flagged
    unprotected = CosmicRayConfig(saturated_star_fraction=1.0, saturated_star_min_px=26)
    assert cosmic_ray_mask(frame, unprotected)[star].sum() > 10


def test_masked_pixels_never_flagged_and_bits_kept():
    rng = np.random.default_rng(8)
    frame, _, _ = simulate_frame((256, 256), n_stars=20, seconds=0.0, seed=8)
    sci, bpm = frame.sci.copy(), frame.bpm.copy()
    hot = rng.choice(sci.size, 40, replace=False)
    sci.flat[hot] += 5000.0  # hot pixels: as sharp as a hit, but flagged BAD
    bpm.flat[hot] |= BAD
    sci[200, 200] += 5000.0  # a real hit
    sci[:, 50] += 3000.0
    bpm[:, 50] |= LOW_FLAT
    sci[10, 10] = np.nan
    bpm[10, 10] |= BAD
    out = detect_cosmic_rays(make_frame(sci, bpm))
    cosmic = (out.bpm & PixelFlag.COSMIC_RAY) != 0
    assert not cosmic.flat[hot].any() and not cosmic[:, 50].any() and not cosmic[10, 10]
    assert cosmic[200, 200]
    assert np.array_equal(out.bpm & ~np.uint8(PixelFlag.COSMIC_RAY), bpm)


# --- the tiled run is astroscrappy's whole-frame run --------------------------------------
def _busy_frame(seed: int = 2) -> Frame:
    """Stars, hits (some large: a 7 x 7 blob), a BAD column, hot pixels, NaNs, a saturated star."""
    rng = np.random.default_rng(seed)
    frame, _, _ = simulate_frame((300, 340), n_stars=40, seconds=3000.0, seed=seed)
    sci, bpm = frame.sci.copy(), frame.bpm.copy()
    sci[:, 120] += 2000.0
    bpm[:, 120] |= BAD
    hot = rng.choice(sci.size, 30, replace=False)
    sci.flat[hot] += 4000.0
    bpm.flat[hot] |= BAD
    nan = rng.choice(sci.size, 5, replace=False)
    sci.flat[nan] = np.nan
    bpm.flat[nan] |= BAD
    sci[40:47, 117:124] += 4000.0  # larger than 5 x 5, next to the BAD column
    expected = np.zeros(sci.shape)
    render_stars(expected, [200.4], [150.7], [3e7], 1.1)
    sci += expected.astype(np.float32)
    saturated = sci >= SATURATION_E
    sci[saturated] = SATURATION_E
    bpm[saturated] |= SATURATED
    return make_frame(sci, bpm)


@pytest.mark.parametrize(
    "config",
    [
        CosmicRayConfig(tile_px=64),
        CosmicRayConfig(tile_px=100, workers=1, niter=2),
        CosmicRayConfig(tile_px=64, use_err=False, sigclip=3.0, objlim=2.0),  # many flags
        CosmicRayConfig(tile_px=64, cleantype="idw", niter=3),
        CosmicRayConfig(tile_px=64, cleantype="medmask", sepmed=False),
        CosmicRayConfig(tile_px=64, fsmode="convolve", psfmodel="moffat", niter=2),
        CosmicRayConfig(tile_px=0, niter=1),
    ],
    ids=["default", "niter2", "many", "idw", "medmask-fullmed", "convolve", "untiled"],
)
def test_tiled_flags_equal_whole_frame_astroscrappy(config):
    frame = _busy_frame()
    flags = cosmic_ray_mask(frame, config)
    whole, _ = astroscrappy.detect_cosmics(**lacosmic_inputs(frame, config), niter=config.niter)
    assert flags.any()
    assert np.array_equal(flags, whole), f"{(flags != whole).sum()} pixels differ"


@pytest.mark.parametrize("where", [(1, 1), (2, 30), (3, 3), (60, 61)])
def test_hits_near_the_frame_edge(where):
    """astroscrappy flags nothing in the 3 outermost rows and columns (its median filters leave
    them out); hits farther in are found; the tiled run agrees with the whole-frame call."""
    rng = np.random.default_rng(12)
    deposit = np.zeros((64, 64))
    deposit[where] = 5000.0
    deposit[where[0], where[1] + 1] = 3000.0
    frame = observe(rng, np.full((64, 64), SKY_E), deposit)
    for config in (CosmicRayConfig(tile_px=16), CosmicRayConfig(tile_px=16, cleantype="idw")):
        flags = cosmic_ray_mask(frame, config)
        whole, _ = astroscrappy.detect_cosmics(**lacosmic_inputs(frame, config), niter=4)
        assert np.array_equal(flags, whole)
        assert flags[where] == (min(*where, 63 - where[0], 63 - where[1]) >= 3)


def test_reach():
    assert lacosmic_reach(CosmicRayConfig()) == 8
    assert lacosmic_reach(CosmicRayConfig(sepmed=False)) == 6
    assert lacosmic_reach(CosmicRayConfig(fsmode="convolve", psfsize_px=9)) == 13


# --- the frame, the header ----------------------------------------------------------------
def test_input_untouched_and_arrays_shared():
    frame = _busy_frame(4)
    sci, err, bpm = frame.sci.copy(), frame.err.copy(), frame.bpm.copy()
    header = frame.header.copy()
    out = detect_cosmic_rays(frame)
    assert np.array_equal(frame.sci, sci, equal_nan=True)
    assert np.array_equal(frame.err, err) and np.array_equal(frame.bpm, bpm)
    assert frame.header == header and "L1NCRPIX" not in frame.header
    assert out.sci is frame.sci and out.err is frame.err and out.bpm is not frame.bpm
    assert out.unit == "electron" and out.name == frame.name


def test_qc_cards_and_high_status(caplog):
    frame = _busy_frame(6)
    out = detect_cosmic_rays(frame)
    n_flagged = int(((out.bpm & PixelFlag.COSMIC_RAY) != 0).sum())
    assert n_flagged > 0
    assert out.header["L1NCRPIX"] == n_flagged
    assert out.header["L1CRFRAC"] == pytest.approx(n_flagged / frame.sci.size, rel=1e-3)
    assert out.header["L1CRSTAT"] == "OK"
    with caplog.at_level(logging.WARNING, logger="pylcogt.stages.cosmics"):
        high = detect_cosmic_rays(frame, CosmicRayConfig(max_flagged_fraction=1e-6))
    assert high.header["L1CRSTAT"] == "HIGH"
    assert "flagged as cosmic rays" in caplog.text


def test_without_err_uses_rdnoise_and_needs_it():
    frame = _busy_frame(7)
    no_err = make_frame(frame.sci, frame.bpm, with_err=False)
    flags = cosmic_ray_mask(no_err)
    assert np.array_equal(flags, cosmic_ray_mask(frame, CosmicRayConfig(use_err=False)))
    with pytest.raises(ValueError, match="RDNOISE"):
        cosmic_ray_mask(make_frame(frame.sci, frame.bpm, header=fits.Header(), with_err=False))


def test_catalogue_flags_sources_touching_a_cosmic_ray():
    rng = np.random.default_rng(9)
    expected = np.full((128, 128), SKY_E)
    render_stars(expected, [40.2, 90.6], [40.7, 90.3], [5e4, 5e4], 1.1)  # peaks 6600 e-
    deposit = np.zeros_like(expected)
    deposit[42, 41] = 3000.0  # a hit 3 pixels from the first star's centre
    out = detect_cosmic_rays(observe(rng, expected, deposit))
    assert out.bpm[42, 41] & PixelFlag.COSMIC_RAY
    table = detect_sources(out).table
    first = np.argmin(np.hypot(table["X"] - 40.2, table["Y"] - 40.7))
    second = np.argmin(np.hypot(table["X"] - 90.6, table["Y"] - 90.3))
    assert table["FLAG"][first] & SourceFlag.COSMIC_RAY
    assert not table["FLAG"][second] & SourceFlag.COSMIC_RAY


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigclip": 0},
        {"niter": 0},
        {"cleantype": "mean"},
        {"fsmode": "fft"},
        {"psfmodel": "airy"},
        {"psfsize_px": 6},
        {"mask_bits": int(PixelFlag.COSMIC_RAY)},
        {"saturation_grow_px": -1},
        {"saturated_star_fraction": 0.0},
        {"tile_px": 10},
        {"workers": 0},
    ],
)
def test_config_rejects(kwargs):
    with pytest.raises(ValueError):
        CosmicRayConfig(**kwargs)


def test_needs_electrons_and_a_real_frame():
    frame = _busy_frame()
    with pytest.raises(ValueError, match="electron"):
        detect_cosmic_rays(Frame(frame.sci, frame.err, frame.bpm, frame.header, unit="adu"))
    tiny = make_frame(np.full((4, 50), SKY_E))
    with pytest.raises(ValueError, match="at least"):
        detect_cosmic_rays(tiny)
