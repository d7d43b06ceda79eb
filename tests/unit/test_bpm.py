"""Bad-pixel masks derived from masters: hot, dead, high and column defects."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.calibrations.bpm import derive_bpm
from pylcogt.frame import Frame, PixelFlag


def frame(sci, unit, name, bpm=None) -> Frame:
    sci = np.asarray(sci, np.float32)
    bpm = np.zeros(sci.shape, np.uint8) if bpm is None else bpm
    return Frame(sci=sci, err=None, bpm=bpm, header=fits.Header(), unit=unit, name=name)


def test_known_defects_are_found_and_nothing_else() -> None:
    rng = np.random.default_rng(5)
    shape = (200, 160)
    dark = rng.normal(0.15, 0.01, shape)
    hot = [(10, 20), (150, 3), (199, 159)]
    for y, x in hot:
        dark[y, x] = 7.0
    flat = rng.normal(1.0, 0.01, shape)
    flat[50, 50] = 0.0  # dead
    flat[60, 70] = 1.8  # high
    flat[:, 100] = 0.2  # bad column
    flat[:30, 120] = 0.3  # partial column: 15% of its pixels, not a bad column
    empty = np.zeros(shape, np.uint8)
    empty[5, 5] = PixelFlag.BAD  # no valid input in the master
    out = derive_bpm(frame(dark, "electron/s", "dark.fits"), [frame(flat, "", "flat.fits", empty)])
    expected = np.zeros(shape, bool)
    for y, x in [*hot, (50, 50), (60, 70), (5, 5)]:
        expected[y, x] = True
    expected[:, 100] = True
    expected[:30, 120] = True
    np.testing.assert_array_equal(out.bpm != 0, expected)
    assert set(np.unique(out.bpm)) == {0, PixelFlag.BAD}
    assert out.header["NHOTPIX"] == 3 and out.header["NBADCOL"] == 1
    assert out.header["BPMSRC01"] == "dark.fits"


def test_needs_a_source() -> None:
    with pytest.raises(ValueError, match="needs a master dark or at least one master flat"):
        derive_bpm(None, [])
