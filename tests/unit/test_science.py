"""The science chain's glue: header pointing and scale, reading foreign images, output names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.cli_solve import solved_path
from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import PixelFlag
from pylcogt.io.images import read_calibrated_image
from pylcogt.science import catalog_and_wcs, pixel_scale, pointing


@pytest.mark.parametrize(
    ("ra", "dec", "expected"),
    [
        (
            "11:11:15.827",
            "-79:54:52.99",
            (15 * (11 + 11 / 60 + 15.827 / 3600), -(79 + 54 / 60 + 52.99 / 3600)),
        ),  # fmt: skip
        ("00:42:14.400", "+00:21:24.42", (15 * (42 / 60 + 14.4 / 3600), 21 / 60 + 24.42 / 3600)),
        ("-00:00:00", "-00:30:00", (0.0, -0.5)),  # the sign of a zero-degree declination
        (150.25, -20.5, (150.25, -20.5)),  # numbers are degrees
        ("150.25", "-20.5", (150.25, -20.5)),
    ],
)
def test_pointing_reads_lco_sexagesimal_and_degrees(ra, dec, expected) -> None:
    header = fits.Header({"RA": ra, "DEC": dec})
    got = pointing(header)
    assert got == pytest.approx(expected, abs=1e-9)


def test_pointing_falls_back_to_crval_and_rejects_nonsense() -> None:
    assert pointing(fits.Header({"CRVAL1": 10.0, "CRVAL2": 5.0})) == (10.0, 5.0)
    assert pointing(fits.Header({"RA": "N/A", "DEC": "N/A"})) == (None, None)
    assert pointing(fits.Header({"RA": 10.0, "DEC": 95.0}))[1] is None
    assert pixel_scale(fits.Header({"PIXSCALE": 0.389})) == 0.389
    for bad in ("N/A", -1.0, 0.0, "NaN"):
        assert pixel_scale(fits.Header({"PIXSCALE": bad})) is None
    assert pixel_scale(fits.Header()) is None


def test_solved_path_is_never_the_input(tmp_path: Path) -> None:
    for name in ("a.fits", "a.fits.fz", "a.fits.gz", "a.fit", "a"):
        out = solved_path(tmp_path / name)
        assert out == tmp_path / "a-solved.fits.fz" and out != tmp_path / name
    assert solved_path(tmp_path / "a.fits", tmp_path / "x") == tmp_path / "x" / "a-solved.fits.fz"


def test_a_foreign_image_is_read_with_the_primary_headers_pointing(tmp_path: Path) -> None:
    data = np.arange(20 * 30, dtype=np.int16).reshape(20, 30).astype(np.float64)
    data[3, 4] = np.nan
    cards = {"RA": "01:00:00", "DEC": "+10:00:00", "PIXSCALE": 1.5, "BUNIT": "ELECTRON"}
    primary = fits.PrimaryHDU(header=fits.Header(cards))
    image = fits.ImageHDU(data, name="IMAGE")
    path = tmp_path / "x.fits"
    fits.HDUList([primary, image]).writeto(path)
    frame = read_calibrated_image(path)
    assert frame.sci.dtype == np.float32 and frame.shape == (20, 30)
    assert frame.bpm[3, 4] == PixelFlag.BAD and frame.sci[3, 4] == 0
    assert np.count_nonzero(frame.bpm) == 1 and frame.err is None
    assert pointing(frame.header) == pytest.approx((15.0, 10.0)) and frame.unit == "electron"
    assert pixel_scale(frame.header) == 1.5


def test_unreadable_images_say_what_is_wrong(tmp_path: Path) -> None:
    table = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="A", format="E", array=np.zeros(3))])]).writeto(table)  # fmt: skip
    with pytest.raises(UnprocessableFrameError, match="no 2-D image"):
        read_calibrated_image(table)
    truncated = tmp_path / "cut.fits"
    fits.PrimaryHDU(np.zeros((100, 100), np.float32)).writeto(truncated)
    truncated.write_bytes(truncated.read_bytes()[:4000])
    with pytest.raises(UnprocessableFrameError, match="cut.fits"):
        read_calibrated_image(truncated)


def test_astrometry_off_and_missing_header_facts_are_statuses_not_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = rng.normal(100.0, 5.0, (64, 64)).astype(np.float32)
    data[30:33, 30:33] += 2000.0
    path = tmp_path / "img.fits"
    fits.PrimaryHDU(data, header=fits.Header({"CTYPE1": "RA---TAN", "CRVAL1": 1.0,
                                              "CRVAL2": 2.0})).writeto(path)  # fmt: skip
    frame = read_calibrated_image(path)
    off = catalog_and_wcs(frame, None)
    assert off.frame.header["ASTSTAT"] == "failed" and "off" in off.frame.header["ASTREASN"]
    assert "CTYPE1" not in off.frame.header, "no solution: no WCS in the product"
    assert off.frame.header["NSOURCES"] == len(off.catalog) >= 1
    assert "CTYPE1" in frame.header, "the input frame is not modified"
    from pylcogt.astrometry.config import AstrometryConfig

    no_scale = catalog_and_wcs(frame, AstrometryConfig())
    assert "PIXSCALE" in no_scale.frame.header["ASTREASN"]
    # neither ERR nor RDNOISE: no cosmic-ray mask, said so, and the rest goes on
    assert off.frame.header["L1CRSTAT"] == "NOT RUN" and "RDNOISE" in off.frame.header["L1CRREAS"]
