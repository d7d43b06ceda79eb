"""The fused bias/dark/flat pass equals the three separate stages (the reference)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.frame import Frame, PixelFlag
from pylcogt.stages.bias import subtract_bias
from pylcogt.stages.calibrate import calibrate
from pylcogt.stages.dark import subtract_dark
from pylcogt.stages.flat import divide_flat

SHAPE = (64, 48)


def _frame(rng, loc, scale, unit, name, flags=0.0, **cards) -> Frame:
    sci = rng.normal(loc, scale, SHAPE).astype(np.float32)
    err = rng.uniform(0.5 * scale + 0.01, 1.5 * scale + 0.02, SHAPE).astype(np.float32)
    bpm = np.where(rng.random(SHAPE) < flags, np.uint8(PixelFlag.BAD), np.uint8(0))
    return Frame(sci=sci, err=err, bpm=bpm, header=fits.Header(cards), unit=unit, name=name)


@pytest.mark.parametrize("errbias", [False, True])
def test_fused_equals_the_separate_stages(errbias: bool) -> None:
    rng = np.random.default_rng(11)
    frame = _frame(rng, 2500.0, 60.0, "electron", "sci", flags=0.01, RDNOISE=13.5, ERRBIAS=errbias)
    bias = _frame(rng, 0.0, 3.0, "electron", "bias.fits", flags=0.01, BIASLVL=812.25)
    dark = _frame(rng, 0.15, 0.02, "electron/s", "dark.fits", flags=0.01)
    flat = _frame(rng, 1.0, 0.05, "", "flat.fits", flags=0.01)
    flat.sci[3, 4], flat.sci[5, 6], flat.sci[7, 8] = 0.01, np.nan, 0.2  # low, NaN, at the bound
    reference = divide_flat(
        subtract_dark(subtract_bias(frame, bias, master_id=1), dark, exptime_s=120.5, master_id=2),
        flat,
        master_id=3,
        fallback_later=True,
    )
    fused = calibrate(frame, bias=bias, dark=dark, flat=flat, exptime_s=120.5, bias_id=1,
                      dark_id=2, flat_id=3, fallback_later=True)  # fmt: skip
    np.testing.assert_array_equal(fused.sci, reference.sci)
    np.testing.assert_allclose(fused.err, reference.err, rtol=2e-7)
    np.testing.assert_array_equal(fused.bpm, reference.bpm)
    assert fused.bpm[3, 4] & PixelFlag.LOW_FLAT and fused.bpm[5, 6] & PixelFlag.LOW_FLAT
    assert not fused.bpm[7, 8] & PixelFlag.LOW_FLAT
    assert list(fused.header.items()) == list(reference.header.items())
    assert frame.header["ERRBIAS"] is errbias  # the input is untouched


def test_fused_needs_err_planes() -> None:
    rng = np.random.default_rng(1)
    frame = _frame(rng, 100.0, 5.0, "electron", "sci")
    masters = {k: _frame(rng, 1.0, 0.1, u, k) for k, u in
               (("bias", "electron"), ("dark", "electron/s"), ("flat", ""))}  # fmt: skip
    from dataclasses import replace

    masters["flat"] = replace(masters["flat"], err=None)
    with pytest.raises(ValueError, match="has no ERR plane"):
        calibrate(frame, exptime_s=1.0, **masters)
