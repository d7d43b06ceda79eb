"""Master inputs: bias level, dark rate, flat normalisation and flat rejection."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.calibrations.prepare import (
    FLAT_MIN_LEVEL_E,
    central_region,
    check_flats,
    normalise_flat,
    outlying_levels,
    remove_bias_level,
    screen_flat,
    to_dark_rate,
)
from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import Frame, PixelFlag


def frame(sci, *, unit="electron", name="f", bpm=None, err=None) -> Frame:
    sci = np.asarray(sci, np.float32)
    return Frame(sci=sci, err=None if err is None else np.asarray(err, np.float32),
                 bpm=np.zeros(sci.shape, np.uint8) if bpm is None else bpm,
                 header=fits.Header(), unit=unit, name=name)  # fmt: skip


def test_bias_level_ignores_cosmic_rays_and_hot_pixels() -> None:
    rng = np.random.default_rng(0)
    sci = rng.normal(812.0, 7.0, (800, 800))  # the level uses 1/16 of the pixels: 40000
    sci[rng.integers(0, 800, 6400), rng.integers(0, 800, 6400)] += 5000.0  # 1% outliers
    out, level = remove_bias_level(frame(sci))
    assert level == pytest.approx(812.0, abs=0.1)
    assert out.header["BIASLVL"] == pytest.approx(level, abs=1e-3)
    assert np.median(out.sci) == pytest.approx(0.0, abs=0.1)


def test_bias_level_ignores_masked_pixels() -> None:
    sci = np.full((50, 50), 100.0)
    bpm = np.zeros((50, 50), np.uint8)
    sci[:, :20] = 1e4
    bpm[:, :20] = PixelFlag.BAD
    _, level = remove_bias_level(frame(sci, bpm=bpm))
    assert level == 100.0


def test_bias_without_overscan_leaves_with_err_of_the_read_noise() -> None:
    """SBIG/Spectral (no overscan, ``ERRBIAS = T``): ERR = sqrt(RN^2 + value) counted the bias
    as signal; a bias frame holds nothing else, so its ERR must become the read noise. (The QC
    page found SBIG master biases with ERR 2.7x their measured noise.)"""
    rng = np.random.default_rng(3)
    read_noise = 13.5
    sci = rng.normal(1300.0, read_noise, (200, 200)).astype(np.float32)
    err = np.sqrt(read_noise**2 + np.maximum(sci, 0)).astype(np.float32)
    with_bias = frame(sci, err=err)
    with_bias.header["ERRBIAS"] = True
    with_bias.header["RDNOISE"] = read_noise
    out, _ = remove_bias_level(with_bias)
    np.testing.assert_allclose(out.err, read_noise, rtol=1e-5)
    assert out.header["ERRBIAS"] is False
    # with an overscan (ERRBIAS = F) ERR is already the read noise and stays as it is
    plain = frame(sci - 1300, err=np.full(sci.shape, read_noise))
    assert remove_bias_level(plain)[0].err is plain.err


def test_dark_rate_is_exact() -> None:
    out = to_dark_rate(frame(np.full((4, 4), 45.0), err=np.full((4, 4), 9.0)), 300.0)
    assert out.unit == "electron/s"
    np.testing.assert_allclose(out.sci, 0.15, rtol=1e-6)
    np.testing.assert_allclose(out.err, 0.03, rtol=1e-6)
    with pytest.raises(UnprocessableFrameError, match="EXPTIME > 0"):
        to_dark_rate(frame(np.ones((2, 2))), 0.0)


def test_flat_normalised_to_one_in_the_central_quarter() -> None:
    y, x = np.mgrid[0:400, 0:300]
    vignetting = 1.0 - 0.2 * (((x - 150) / 150) ** 2 + ((y - 200) / 200) ** 2)
    sci = 20000.0 * vignetting
    out, norm = normalise_flat(frame(sci))
    rows, cols = central_region(sci.shape)
    assert (rows, cols) == (slice(100, 300), slice(75, 225))
    assert np.mean(out.sci[rows, cols]) == pytest.approx(1.0, abs=1e-3)
    assert norm == pytest.approx(np.mean(sci[rows, cols]), rel=1e-3)
    assert out.unit == ""


def _flats(n: int, seed: int = 1) -> list[Frame]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:256]
    pattern = 1.0 - 0.1 * (((x - 128) / 128) ** 2 + ((y - 128) / 128) ** 2)
    return [
        frame(pattern * rng.normal(1.0, 0.003, pattern.shape), name=f"flat{i}") for i in range(n)
    ]


def test_good_flats_are_kept() -> None:
    checks = check_flats(_flats(6))
    assert [c.reason for c in checks] == [None] * 6
    assert max(c.gradient for c in checks) < 0.01


def test_shutter_failure_and_saturation_are_rejected() -> None:
    flats = _flats(6)
    ramp = np.linspace(0.85, 1.0, 256)[:, None]  # one side darker: slow shutter
    flats[2] = frame(flats[2].sci * ramp, name="shutter")
    bpm = np.zeros((256, 256), np.uint8)
    bpm[:40, :] = PixelFlag.SATURATED
    flats[4] = frame(flats[4].sci, bpm=bpm, name="saturated")
    reasons = {c.name: c.reason for c in check_flats(flats)}
    assert "shutter failure" in reasons["shutter"]
    assert "saturated" in reasons["saturated"]
    assert sum(r is None for r in reasons.values()) == 4


def _flat(level: float, *, rdnoise: float = 7.5, errbias: bool = False, seed: int = 1,
          saturated: float = 0.0) -> Frame:  # fmt: skip
    rng = np.random.default_rng(seed)
    sci = rng.normal(level, max(np.sqrt(max(level, 1.0)), rdnoise), (200, 300))
    bpm = np.zeros(sci.shape, np.uint8)
    bpm.flat[: int(saturated * bpm.size)] = PixelFlag.SATURATED
    f = frame(sci, bpm=bpm)
    f.header["RDNOISE"] = rdnoise
    f.header["ERRBIAS"] = errbias
    return f


def test_screen_flat_rejects_a_closed_shutter_and_keeps_a_sky_flat() -> None:
    level, reason = screen_flat(_flat(22000.0))
    assert reason is None and level == pytest.approx(22000.0, rel=1e-3)
    # the shutter never opened: a bias frame's pixels after overscan (a few e- of structure)
    level, reason = screen_flat(_flat(3.0))
    assert level == pytest.approx(3.0, abs=1.0)
    assert reason is not None and "shutter failure" in reason and "\n" not in reason
    assert f"{FLAT_MIN_LEVEL_E:.4g} e-" in reason  # the limit is named with the measured level
    # a noisy camera: ten read noises are more than the absolute floor
    assert screen_flat(_flat(1500.0, rdnoise=200.0))[1] is not None
    assert screen_flat(_flat(1500.0, rdnoise=20.0))[1] is None


def test_screen_flat_subtracts_the_bias_of_a_camera_without_overscan() -> None:
    raw_bias_only = _flat(1100.0, errbias=True)  # SBIG-like: the pedestal is still there
    assert screen_flat(raw_bias_only, bias_level_e=None)[1] is None  # cannot tell: not judged
    level, reason = screen_flat(raw_bias_only, bias_level_e=1098.0)
    assert level == pytest.approx(2.0, abs=1.0) and reason is not None
    assert screen_flat(_flat(21100.0, errbias=True), bias_level_e=1100.0)[1] is None


def test_screen_flat_rejects_saturation_over_one_percent() -> None:
    assert screen_flat(_flat(22000.0, saturated=0.005))[1] is None
    reason = screen_flat(_flat(22000.0, saturated=0.2))[1]
    assert reason is not None and "20.0% of the pixels saturated" in reason


def _slow_outliers(levels, read_noise, k=5.0, n_rn=3.0):
    """The obvious version: median, MAD, limit, compare."""
    med = sorted(levels)[len(levels) // 2] if len(levels) % 2 else \
        (sorted(levels)[len(levels) // 2 - 1] + sorted(levels)[len(levels) // 2]) / 2
    devs = sorted(abs(v - med) for v in levels)
    n = len(devs)
    mad = devs[n // 2] if n % 2 else (devs[n // 2 - 1] + devs[n // 2]) / 2
    limit = max(k * 1.4826 * mad, n_rn * read_noise, 1.0)
    return [abs(v - med) > limit for v in levels]


def test_outlying_levels_finds_a_wild_bias_and_matches_the_obvious_version() -> None:
    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.integers(3, 12))
        levels = list(rng.normal(0.0, rng.uniform(0.05, 5.0), n))
        if trial % 2:
            levels[int(rng.integers(0, n))] += float(rng.uniform(-400, 400))
        rn = float(rng.uniform(0.0, 15.0))
        got = [r is not None for r in outlying_levels(levels, read_noise_e=rn)]
        assert got == _slow_outliers(levels, rn)
    reasons = outlying_levels([0.1, -0.2, 0.05, 310.0, 0.0], read_noise_e=7.5, what="bias")
    assert reasons[:3] == [None, None, None] and reasons[4] is None
    assert reasons[3].startswith("bias level 310 e- is +309.9 e- from the night's median 0.05 e-")


def test_outlying_levels_needs_three_frames() -> None:
    assert outlying_levels([0.0, 500.0]) == [None, None]
