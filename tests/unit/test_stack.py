"""The streaming stacker and its band sources: band-size invariance, memory budget, FITS reads."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.calibrations.stack import (
    BandSource,
    choose_band_rows,
    estimate_peak_bytes,
    stack_sources,
)
from pylcogt.errors import UnprocessableFrameError
from pylcogt.io.bands import ArrayBandSource, FitsBandSource, open_fits_band_sources
from pylcogt.stats import clip_stack_band

from .test_stats import reference_stack


def frames(n=7, shape=(23, 17), seed=0):
    """SCI/ERR/BPM planes with outliers, NaNs and flags (all masking kinds)."""
    rng = np.random.default_rng(seed)
    sci = rng.normal(500, 5, (n, *shape)).astype(np.float32)
    sci[rng.random(sci.shape) < 0.03] += 1000
    sci[rng.random(sci.shape) < 0.01] = np.nan
    err = rng.uniform(4, 6, sci.shape).astype(np.float32)
    bpm = np.where(rng.random(sci.shape) < 0.05, 2, 0).astype(np.uint8)
    bpm[rng.random(sci.shape) < 0.02] |= 8
    bpm[:, 3, 4] = 1  # bad in every frame
    return sci, err, bpm


def sources_of(sci, err=None, bpm=None):
    return [
        ArrayBandSource(sci[i], None if err is None else err[i], None if bpm is None else bpm[i])
        for i in range(len(sci))
    ]


class MinimalSource:
    """Only what the protocol asks for: ``shape`` and ``read_rows``."""

    def __init__(self, sci, err=None, bpm=None):
        self.shape = sci.shape
        self._planes = (sci, err, bpm)
        self.reads = []

    def read_rows(self, r0, r1):
        self.reads.append((r0, r1))
        return tuple(None if p is None else p[r0:r1] for p in self._planes)


# --- the orchestrator ---------------------------------------------------------------------
def test_stack_equals_the_kernel_on_the_whole_frame_and_the_reference():
    sci, err, bpm = frames()
    result = stack_sources(sources_of(sci, err, bpm))
    whole = clip_stack_band(sci, bpm, err)
    for got, want in zip((result.mean, result.err, result.bpm, result.n_kept), whole, strict=True):
        np.testing.assert_array_equal(got, want)
    mean, _, bpm_ref, n_kept = reference_stack(sci, bpm, err)
    np.testing.assert_array_equal(result.mean, mean)
    np.testing.assert_array_equal(result.n_kept, n_kept)
    np.testing.assert_array_equal(result.bpm, bpm_ref)
    assert result.bpm[3, 4] == 1 and np.isnan(result.mean[3, 4]) and result.n_kept[3, 4] == 0
    assert result.n_frames == 7 and result.band_rows == 23


@pytest.mark.parametrize("band_rows", [1, 2, 5, 22, 100])
def test_results_are_bit_identical_for_any_band_size(band_rows):
    sci, err, bpm = frames(seed=1)
    whole = stack_sources(sources_of(sci, err, bpm))
    banded = stack_sources(sources_of(sci, err, bpm), band_rows=band_rows)
    assert banded.band_rows == min(band_rows, 23)
    for name in ("mean", "err", "bpm", "n_kept"):
        a, b = getattr(whole, name), getattr(banded, name)
        assert a.tobytes() == b.tobytes(), name


def test_budget_sets_the_band_height_and_each_source_is_read_once_in_row_order():
    sci, _, _ = frames(n=5, shape=(40, 10))
    sources = [MinimalSource(s) for s in sci]
    per_row = 10 * 5 * 4  # cols * N * float32
    budget = estimate_peak_bytes(5, (40, 10), 0, has_err=False, has_bpm=False) + 7 * per_row
    seen = []
    result = stack_sources(
        sources, memory_budget_bytes=budget, progress=lambda d, t: seen.append((d, t))
    )
    assert result.band_rows == 7
    assert result.peak_bytes_estimate <= budget
    assert seen == [(7, 40), (14, 40), (21, 40), (28, 40), (35, 40), (40, 40)]
    for source in sources:  # one zero-row probe for the planes, then every band once
        assert source.reads == [(0, 0), (0, 7), (7, 14), (14, 21), (21, 28), (28, 35), (35, 40)]
    np.testing.assert_array_equal(result.mean, clip_stack_band(sci).mean)
    assert result.err is None


def test_choose_band_rows_and_the_peak_estimate():
    shape = (4096, 4096)
    per_row = 4096 * 64 * (4 + 4 + 1)
    # a roomy budget: bands of ~64 MiB of inputs, which stay in cache between read and kernel
    assert choose_band_rows(64, shape, has_err=True, has_bpm=True) == (64 << 20) // per_row
    # a tight one: the largest band that fits
    tight = estimate_peak_bytes(64, shape, 10, has_err=True, has_bpm=True) + per_row - 1
    rows = choose_band_rows(64, shape, has_err=True, has_bpm=True, memory_budget_bytes=tight)
    assert rows == 10
    outputs = 4096 * 4096 * (4 + 4 + 1 + 2)
    scratch = estimate_peak_bytes(64, shape, 0, has_err=True, has_bpm=True) - outputs
    assert 2 << 20 < scratch < 8 << 20  # read buffers, a ~1 MiB chunk per thread, padding
    assert estimate_peak_bytes(64, shape, 10, has_err=True, has_bpm=True) == (
        outputs + scratch + 10 * per_row
    )
    assert choose_band_rows(3, (10, 10), has_err=False, has_bpm=False) == 10  # capped
    with pytest.raises(ValueError, match="cannot stack 64 frames of 4096x4096"):
        choose_band_rows(64, shape, has_err=True, has_bpm=True, memory_budget_bytes=180 << 20)


def test_mask_bits_choose_which_flags_mask_an_input():
    sci, err, bpm = frames(seed=2)
    only_bad = stack_sources(sources_of(sci, err, bpm), mask_bits=1)
    np.testing.assert_array_equal(only_bad.mean, clip_stack_band(sci, bpm & 1, err).mean)
    nothing = stack_sources(sources_of(sci, err, bpm), mask_bits=0)
    np.testing.assert_array_equal(nothing.mean, clip_stack_band(sci, None, err).mean)
    with pytest.raises(ValueError, match="mask_bits"):
        stack_sources(sources_of(sci), mask_bits=256)


def test_sources_without_bpm_mask_nothing_and_minimal_sources_work():
    sci, err, bpm = frames(n=4, seed=3)
    mixed = [MinimalSource(sci[0], err[0], bpm[0])] + sources_of(sci[1:], err[1:])
    result = stack_sources(mixed, band_rows=4)
    masks = bpm.copy()
    masks[1:] = 0
    want = clip_stack_band(sci, masks, err)
    np.testing.assert_array_equal(result.mean, want.mean)
    np.testing.assert_array_equal(result.err, want.err)
    assert isinstance(mixed[0], BandSource)


def test_stack_argument_checks():
    sci, err, _ = frames(n=3)
    with pytest.raises(ValueError, match="zero frames"):
        stack_sources([])
    with pytest.raises(ValueError, match="source 1 has shape"):
        stack_sources([ArrayBandSource(sci[0]), ArrayBandSource(sci[1, :5])])
    with pytest.raises(ValueError, match="ERR planes must be given by every source or by none"):
        stack_sources([ArrayBandSource(sci[0], err[0]), ArrayBandSource(sci[1])])
    with pytest.raises(ValueError, match="band_rows must be at least 1"):
        stack_sources(sources_of(sci), band_rows=0)


# --- band sources -------------------------------------------------------------------------
def write_product(path, sci, err=None, bpm=None, *, sci_hdu=fits.ImageHDU, **kw):
    hdus = [fits.PrimaryHDU(), sci_hdu(sci, name="SCI", **kw)]
    if err is not None:
        hdus.append(fits.ImageHDU(err, name="ERR"))
    if bpm is not None:
        hdus.append(fits.ImageHDU(bpm, name="BPM"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_fits_sources_read_mef_products_and_stack_like_arrays(tmp_path):
    sci, err, bpm = frames(n=5, seed=4)
    paths = [write_product(tmp_path / f"f{i}.fits", sci[i], err[i], bpm[i]) for i in range(5)]
    with open_fits_band_sources(paths) as sources:
        assert sources[0].has_err and sources[0].has_bpm and sources[0].hdu_indices == (1, 2, 3)
        s, e, b = sources[2].read_rows(4, 9)
        np.testing.assert_array_equal(s, sci[2, 4:9])
        np.testing.assert_array_equal(e, err[2, 4:9])
        np.testing.assert_array_equal(b, bpm[2, 4:9])
        assert s.dtype == np.float32 and s.dtype.isnative and b.dtype == np.uint8
        from_files = stack_sources(sources, band_rows=6)
    from_arrays = stack_sources(sources_of(sci, err, bpm))
    for name in ("mean", "err", "bpm", "n_kept"):
        assert getattr(from_files, name).tobytes() == getattr(from_arrays, name).tobytes()
    with pytest.raises(ValueError, match="closed"):
        sources[0].read_rows(0, 1)


def test_fits_source_plane_selection(tmp_path):
    sci, err, bpm = frames(n=1, seed=5)
    path = write_product(tmp_path / "p.fits", sci[0], err[0], bpm[0])
    with FitsBandSource(path, err=None, bpm=None) as source:
        assert not source.has_err and not source.has_bpm
        assert source.read_rows(0, 2)[1:] == (None, None)
    with FitsBandSource(path, sci=2, err=None, bpm=None) as source:  # by index
        np.testing.assert_array_equal(source.read_rows(0, 23)[0], err[0])
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(sci[0]).writeto(plain)  # a single-HDU frame: the primary image is SCI
    with FitsBandSource(plain) as source:
        assert source.hdu_indices == (0, None, None)
        np.testing.assert_array_equal(source.read_rows(0, 23)[0], sci[0])
    with pytest.raises(UnprocessableFrameError, match="no HDU named 'ERR'"):
        FitsBandSource(plain, err="ERR")
    with pytest.raises(UnprocessableFrameError, match="has no HDU 5"):
        FitsBandSource(plain, sci=5)
    short = write_product(tmp_path / "short.fits", sci[0], err[0][:5])
    with pytest.raises(UnprocessableFrameError, match="ERR plane .* has shape"):
        FitsBandSource(short)


def test_fits_source_scales_uint16_and_handles_blank(tmp_path):
    raw = np.array([[0, 1, 32768, 65535], [100, 200, 300, 400]], np.uint16)
    path = tmp_path / "u16.fits"
    fits.PrimaryHDU(raw).writeto(path)  # astropy writes BITPIX=16, BZERO=32768
    assert fits.getheader(path)["BZERO"] == 32768
    with FitsBandSource(path) as source:
        np.testing.assert_array_equal(source.read_rows(0, 2)[0], raw.astype(np.float32))
        np.testing.assert_array_equal(source.read_rows(1, 2)[0], raw[1:].astype(np.float32))
    # BSCALE, BLANK on int16 data: physical = BZERO + BSCALE * stored, BLANK -> NaN
    stored = np.array([[1, 2, -999, 4]], np.int16)
    hdu = fits.PrimaryHDU(stored)
    hdu.header["BSCALE"], hdu.header["BZERO"], hdu.header["BLANK"] = 0.5, 10.0, -999
    blank_path = tmp_path / "blank.fits"
    hdu.writeto(blank_path)
    with FitsBandSource(blank_path) as source:
        np.testing.assert_array_equal(source.read_rows(0, 1)[0], [[10.5, 11, np.nan, 12]])
    with fits.open(blank_path) as hdul:  # same as astropy
        np.testing.assert_array_equal(hdul[0].data, [[10.5, 11, np.nan, 12]])


def test_fits_source_float64_and_int32(tmp_path):
    data = np.arange(12, dtype=np.float64).reshape(3, 4) / 3
    fits.PrimaryHDU(data).writeto(tmp_path / "f64.fits")
    fits.PrimaryHDU(np.arange(12, dtype=np.int32).reshape(3, 4)).writeto(tmp_path / "i32.fits")
    with FitsBandSource(tmp_path / "f64.fits") as source:
        np.testing.assert_array_equal(source.read_rows(0, 3)[0], data.astype(np.float32))
    with FitsBandSource(tmp_path / "i32.fits") as source:
        np.testing.assert_array_equal(source.read_rows(1, 3)[0], np.arange(4, 12).reshape(2, 4))


def test_fits_source_bpm_must_hold_8_bit_flags(tmp_path):
    sci = np.zeros((2, 3), np.float32)
    bad = write_product(
        tmp_path / "b.fits", sci, None, np.array([[0, 1, 300], [0, 0, 0]], np.int16)
    )
    with FitsBandSource(bad) as source, pytest.raises(UnprocessableFrameError, match="8-bit"):
        source.read_rows(0, 2)
    good = write_product(
        tmp_path / "g.fits", sci, None, np.array([[0, 1, 200], [0, 0, 0]], np.int16)
    )
    with FitsBandSource(good) as source:
        assert source.read_rows(0, 1)[2].tolist() == [[0, 1, 200]]


def test_fits_source_reads_tile_compressed_images(tmp_path):
    sci, _, bpm = frames(n=1, seed=6)
    path = tmp_path / "c.fits.fz"
    quantised = np.round(sci[0])
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.CompImageHDU(quantised, name="SCI", compression_type="GZIP_2", quantize_level=0),
            fits.CompImageHDU(bpm[0], name="BPM", compression_type="RICE_1"),
        ]
    ).writeto(path)
    with FitsBandSource(path) as source:
        assert source.compressed and not source.has_err and source.has_bpm
        s, _, b = source.read_rows(5, 12)
        np.testing.assert_array_equal(s, quantised[5:12])
        np.testing.assert_array_equal(b, bpm[0, 5:12])


def test_fits_source_refuses_gzip_and_reports_truncation(tmp_path):
    sci = np.ones((4, 4), np.float32)
    plain = write_product(tmp_path / "p.fits", sci)
    gz = tmp_path / "p.fits.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(UnprocessableFrameError, match="gzip-compressed"):
        FitsBandSource(gz)
    source = FitsBandSource(plain)
    with open(plain, "r+b") as f:  # truncated after it was opened
        f.truncate(2880 * 2 + 10)
    with pytest.raises(UnprocessableFrameError, match="was it truncated since"):
        source.read_rows(0, 4)
    source.close()
    source.close()


def test_array_source_checks_and_read_only_views():
    sci = np.zeros((3, 4), np.float64)
    source = ArrayBandSource(sci, bpm=np.zeros((3, 4), bool))
    s, e, b = source.read_rows(1, 3)
    assert s.dtype == np.float32 and e is None and b.dtype == np.uint8 and not s.flags.writeable
    with pytest.raises(ValueError, match="rows 2:5 are outside 0:3"):
        source.read_rows(2, 5)
    with pytest.raises(ValueError, match="err shape"):
        ArrayBandSource(sci, err=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="must be 2-D"):
        ArrayBandSource(np.zeros(3))
