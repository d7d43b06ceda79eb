"""Bias, dark, flat and BPM application: known answers, ERR propagation, flags, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import Frame, PixelFlag
from pylcogt.stages.badpixels import apply_bpm
from pylcogt.stages.bias import subtract_bias
from pylcogt.stages.dark import subtract_dark
from pylcogt.stages.flat import divide_flat

SHAPE = (20, 30)


def frame(sci, err=None, bpm=None, unit="electron", name="f", **cards) -> Frame:
    sci = np.asarray(sci, dtype=np.float32)
    header = fits.Header(cards)
    return Frame(
        sci=sci,
        err=None if err is None else np.asarray(err, dtype=np.float32),
        bpm=np.zeros(sci.shape, np.uint8) if bpm is None else bpm,
        header=header,
        unit=unit,
        name=name,
    )


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def test_bias_removes_structure_and_level(rng) -> None:
    structure = rng.normal(0, 3, SHAPE)
    truth = rng.normal(500, 20, SHAPE)
    raw = frame(truth + structure + 12.5, err=np.full(SHAPE, 4.0))
    master_bpm = np.zeros(SHAPE, np.uint8)
    master_bpm[3, 4] = PixelFlag.BAD
    master = frame(
        structure, err=np.full(SHAPE, 3.0), bpm=master_bpm, name="bias-master", BIASLVL=12.5
    )
    out = subtract_bias(raw, master, master_id=7)
    np.testing.assert_allclose(out.sci, truth, atol=1e-3)
    np.testing.assert_allclose(out.err, 5.0, rtol=1e-6)  # hypot(4, 3)
    assert out.bpm[3, 4] == PixelFlag.BAD and out.bpm.sum() == PixelFlag.BAD
    assert out.header["L1IDBIAS"] == "bias-master" and out.header["L1RIBIAS"] == 7
    assert raw.bpm.sum() == 0 and raw.header.get("L1IDBIAS") is None  # input untouched


def test_dark_is_scaled_by_exposure_time(rng) -> None:
    rate = rng.uniform(0.1, 0.2, SHAPE)
    rate[5, 5] = 40.0  # hot pixel
    truth = rng.normal(1000, 30, SHAPE)
    exptime = 123.4
    raw = frame(truth + rate * exptime, err=np.full(SHAPE, 10.0))
    master = frame(rate, err=np.full(SHAPE, 0.01), unit="electron/s", name="dark-master")
    out = subtract_dark(raw, master, exptime_s=exptime)
    np.testing.assert_allclose(out.sci, truth, atol=2e-3)
    np.testing.assert_allclose(out.err, np.hypot(10.0, 0.01 * exptime), rtol=1e-6)
    assert out.header["L1IDDARK"] == "dark-master"
    assert out.header["L1DRKSCL"] == pytest.approx(exptime)


def test_dark_must_be_a_rate() -> None:
    with pytest.raises(ValueError, match="must be a rate in electron/s"):
        subtract_dark(frame(np.ones(SHAPE)), frame(np.ones(SHAPE), unit="electron"), exptime_s=1)


def test_flat_divides_and_flags_low_response(rng) -> None:
    flat = rng.uniform(0.8, 1.2, SHAPE).astype(np.float32)
    flat[2, 2] = 0.05
    flat[2, 3] = np.nan
    truth = rng.normal(2000, 40, SHAPE)
    raw = frame(truth * np.nan_to_num(flat, nan=1.0), err=np.full(SHAPE, 45.0))
    master = frame(flat, err=np.full(SHAPE, 0.01), unit="", name="flat-master")
    out = divide_flat(raw, master, fallback_later=True)
    good = np.ones(SHAPE, bool)
    good[2, 2:4] = False
    np.testing.assert_allclose(out.sci[good], truth[good], rtol=1e-5)
    assert out.bpm[2, 2] & PixelFlag.LOW_FLAT and out.bpm[2, 3] & PixelFlag.LOW_FLAT
    assert (out.bpm[good] == 0).all()
    assert np.isfinite(out.sci).all()
    # slow reference for ERR: each pixel by the propagation formula
    for y, x in [(0, 0), (7, 11), (19, 29)]:
        f, s = flat[y, x], truth[y, x]
        expect = np.sqrt((45.0 / f) ** 2 + (s * 0.01 / f) ** 2)
        assert out.err[y, x] == pytest.approx(expect, rel=1e-4)
    assert out.header["L1FLATLT"] is True


def test_bpm_master_merges_flags() -> None:
    bpm = np.zeros(SHAPE, np.uint8)
    bpm[0, 0] = PixelFlag.SATURATED
    mask = np.zeros(SHAPE, np.uint8)
    mask[0, 0] = PixelFlag.BAD
    mask[1, 1] = PixelFlag.BAD
    out = apply_bpm(frame(np.ones(SHAPE), bpm=bpm), frame(np.zeros(SHAPE), bpm=mask, name="bpm"))
    assert out.bpm[0, 0] == PixelFlag.BAD | PixelFlag.SATURATED
    assert out.bpm[1, 1] == PixelFlag.BAD
    assert out.header["L1IDMASK"] == "bpm"


@pytest.mark.parametrize("stage", ["bias", "dark", "flat", "bpm"])
def test_master_of_another_shape_is_refused(stage) -> None:
    raw = frame(np.ones(SHAPE), name="lsc-frame.fits")
    master = frame(
        np.ones((10, 10)), unit="electron/s" if stage == "dark" else "electron", name="m.fits"
    )
    call = {
        "bias": lambda: subtract_bias(raw, master),
        "dark": lambda: subtract_dark(raw, master, exptime_s=1.0),
        "flat": lambda: divide_flat(raw, master),
        "bpm": lambda: apply_bpm(raw, master),
    }[stage]
    with pytest.raises(
        UnprocessableFrameError, match=r"lsc-frame.fits: the .* master m.fits is 10x10"
    ):
        call()


def test_stages_need_electrons() -> None:
    with pytest.raises(ValueError, match="needs a frame in electron"):
        subtract_bias(frame(np.ones(SHAPE), unit="adu"), frame(np.ones(SHAPE)))


def test_bias_takes_the_bias_out_of_err_without_overscan() -> None:
    """SBIG: ERR was made with the bias level still in the data (ERRBIAS = T)."""
    read_noise, level, signal = 13.5, 1400.0, 900.0
    structure = np.zeros(SHAPE)
    raw_err = np.sqrt(read_noise**2 + signal + level)  # as the gain stage made it
    raw = frame(np.full(SHAPE, signal + level), err=np.full(SHAPE, raw_err), ERRBIAS=True,
                RDNOISE=read_noise)  # fmt: skip
    master = frame(structure, err=np.full(SHAPE, 2.0), BIASLVL=level)
    out = subtract_bias(raw, master)
    np.testing.assert_allclose(out.sci, signal, rtol=1e-6)
    np.testing.assert_allclose(out.err, np.sqrt(read_noise**2 + signal + 2.0**2), rtol=1e-5)
    assert out.header["ERRBIAS"] is False


def test_common_master_err_adds_a_shared_error_once_with_the_mean_coefficient() -> None:
    """n inputs that all subtracted the same master (error E, entering input i as c_i E): the
    mean holds (mean c_i) E, fully correlated, not reduced by sqrt(n). Checked against a
    simulation of many stacks, and against the formula for two masters."""
    from pylcogt.pipeline import common_master_err

    rng = np.random.default_rng(7)
    n, trials = 4, 200_000
    own, shared = 3.0, 2.0
    coefficients = np.array([1 / 30, 1 / 30, 1 / 60, 1 / 60])
    # each trial: independent own errors per input, one shared draw for all inputs
    draws = (rng.normal(0, own, (trials, n)) * coefficients
             + rng.normal(0, shared, (trials, 1)) * coefficients)  # fmt: skip
    measured = draws.mean(axis=1).std()
    stacked = np.float32(np.sqrt(np.sum((own * coefficients) ** 2)) / n)  # what the stack gives
    master = np.full((2, 2), shared, np.float32)
    err = common_master_err(np.full((2, 2), stacked, np.float32),
                            [("bias", master, float(c)) for c in coefficients], n)  # fmt: skip
    assert err.dtype == np.float32
    np.testing.assert_allclose(err, measured, rtol=0.01)
    # two masters (by key; the same master read twice is still one): each once, in quadrature
    other = np.full((2, 2), 5.0, np.float32)
    both = common_master_err(np.zeros((2, 2), np.float32),
                             [("b", master, 0.5), ("d", other, 1.0), ("b", master.copy(), 0.5),
                              ("d", other, 3.0)], 2)  # fmt: skip
    np.testing.assert_allclose(both, np.hypot(2.0 * 0.5, 5.0 * 2.0), rtol=1e-6)
