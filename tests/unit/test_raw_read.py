"""read_raw: formats (MEF, legacy cube, single image; .fits/.fz/.gz), keyword precedence,
saturation flags, and every bad-input path naming the file and the keyword."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import PixelFlag
from pylcogt.io.raw_read import frame_name, read_raw
from pylcogt.simulate import mosaic_to_amps, simulate_night, sinistro_geometry
from pylcogt.stages.isr import remove_instrument_signature
from pylcogt.stages.mosaic import mosaic_amplifiers

SIZE = 256
XTALK = np.array(
    [
        [0.0, 0.00055, 0.0, 0.0],
        [0.00062, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.00058],
        [0.0, 0.0, 0.00060, 0.0],
    ]
)


def _night(tmp_path_factory, camera: str, compress: str = "none", **counts):
    outdir = tmp_path_factory.mktemp(f"{camera}_{compress}")
    counts = {"n_bias": 0, "n_dark": 0, "n_flat": 0, "n_science": 1, **counts}
    night = simulate_night(
        outdir, camera=camera, size=SIZE, filters=("rp",), compress=compress, **counts
    )
    return night


@pytest.fixture(scope="module", params=["sinistro", "sbig", "spectral"])
def nights(request, tmp_path_factory):
    """One science frame per compression, same seed: identical pixels."""
    return {c: _night(tmp_path_factory, request.param, c) for c in ("none", "fz", "gz")}


@pytest.fixture(scope="module")
def sinistro_file(tmp_path_factory) -> Path:
    return _night(tmp_path_factory, "sinistro").files[0]


@pytest.fixture(scope="module")
def sbig_file(tmp_path_factory) -> Path:
    return _night(tmp_path_factory, "sbig").files[0]


def _edited(src: Path, dst: Path, edit) -> Path:
    """Copy of a plain FITS file with ``edit(hdul)`` applied to its headers/data."""
    with fits.open(src) as hdul:
        hdul = fits.HDUList([hdu.copy() for hdu in hdul])
    edit(hdul)
    hdul.writeto(dst, overwrite=True)
    return dst


# --- formats ----------------------------------------------------------------------------------


def test_compressed_files_read_to_identical_arrays(nights) -> None:
    plain = read_raw(nights["none"].files[0])
    for compress in ("fz", "gz"):
        other = read_raw(nights[compress].files[0])
        assert other.name == plain.name and other.extra["compression"] == compress
        assert len(other.amps) == len(plain.amps)
        for a, b in zip(plain.amps, other.amps, strict=True):
            assert b.data.dtype == np.float32 and b.data.flags.c_contiguous
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.bpm, b.bpm)
            assert (a.gain, a.biassec, a.datasec, a.detsec) == (
                b.gain,
                b.biassec,
                b.datasec,
                b.detsec,
            )
        assert plain.header["INSTRUME"] == other.header["INSTRUME"]
        assert "BZERO" not in other.header and "NAXIS1" not in other.header


def test_uint16_values_are_exact(sbig_file: Path) -> None:
    raw = read_raw(sbig_file)
    stored = fits.getdata(sbig_file)  # astropy's own uint16 view
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(raw.amps[0].data, stored.astype(np.float32))


def test_sinistro_mef_keywords_primary_and_extension(sinistro_file: Path) -> None:
    raw = read_raw(sinistro_file)
    truth = json.loads((sinistro_file.parent / "truth.json").read_text())
    assert raw.family == "sinistro" and raw.extra["format"] == "mef"
    assert [a.gain for a in raw.amps] == truth["gain_e_per_adu"]  # primary GAIN is 0.0
    assert raw.saturate_adu == truth["saturate_adu"]  # SATURATE only in the primary
    assert raw.read_noise_e == truth["read_noise_e"]
    np.testing.assert_array_equal(raw.crosstalk, np.array(truth["crosstalk"]))
    geometry = sinistro_geometry(SIZE)
    for amp, geo in zip(raw.amps, geometry.amps, strict=True):
        assert amp.data.shape == geo.shape
        assert (amp.datasec, amp.detsec, amp.biassec) == (
            geo.datasec_str,
            geo.detsec_str,
            geo.biassec_str,
        )
    assert frame_name(sinistro_file) == raw.name == sinistro_file.name.removesuffix(".fits")


def test_saturation_flags_where_raw_reaches_saturate(sbig_file: Path, tmp_path: Path) -> None:
    def edit(hdul):
        data = hdul[0].data.copy()
        data[10, 20] = 46000  # exactly SATURATE
        data[30, 40] = 50000
        data[50, 60] = 45999
        hdul[0].data = data

    path = _edited(sbig_file, tmp_path / "sat.fits", edit)
    raw = read_raw(path)
    bpm = raw.amps[0].bpm
    assert bpm.dtype == np.uint8
    assert bpm[10, 20] == PixelFlag.SATURATED and bpm[30, 40] == PixelFlag.SATURATED
    assert bpm[50, 60] == 0
    np.testing.assert_array_equal(bpm != 0, raw.amps[0].data >= 46000)
    # the flags follow the pixels through the trim (raw pixel = final pixel + trim offset)
    frame = remove_instrument_signature(raw)
    offset = json.loads((sbig_file.parent / "truth.json").read_text())["trim_offset_xy"]
    assert frame.bpm[10 - offset[1], 20 - offset[0]] & PixelFlag.SATURATED


def test_saturate_zero_uses_family_default(sbig_file: Path, tmp_path: Path) -> None:
    def edit(hdul):
        hdul[0].header["SATURATE"] = 0.0

    raw = read_raw(_edited(sbig_file, tmp_path / "sat0.fits", edit))
    assert raw.saturate_adu == 46000.0 and raw.extra["saturate_source"] == "family default"
    assert raw.header["SATURATE"] == 46000.0


def test_sinistro_science_saturated_stars_flagged(sinistro_file: Path) -> None:
    raw = read_raw(sinistro_file)
    for amp in raw.amps:
        np.testing.assert_array_equal(amp.bpm == PixelFlag.SATURATED, amp.data >= 40000.0)
    assert sum(int((a.bpm != 0).sum()) for a in raw.amps) > 0  # bright stars saturate


def _cube_file(path: Path, pattern: np.ndarray, cards: dict, *, binning: int = 1) -> Path:
    """A legacy single-HDU cube from a mosaic-orientation pattern (geometry of the MEF)."""
    amps = mosaic_to_amps(pattern, sinistro_geometry(pattern.shape[0]), dtype=np.float32)
    cube = np.stack(amps).astype(np.uint16)
    header = fits.Header()
    header.update(cards)
    fits.PrimaryHDU(cube, header=header).writeto(path)
    return path


LEGACY_CARDS = {
    "INSTRUME": "fl10",
    "OBSTYPE": "EXPOSE",
    "GAIN": "[3.3,3.4,3.3,3.4]",
    "RDNOISE": 14.9,
    "SATURATE": 47500.0,
    "CCDSUM": "1 1",
    "BIASSEC": "UNKNOWN",
    "DATASEC": "[1:4094,1:4096]",
    "TRIMSEC": "UNKNOWN",
    "DETSEC": "UNKNOWN",
}


def test_legacy_cube_with_numbered_sections(tmp_path: Path) -> None:
    pattern = np.arange(SIZE * SIZE, dtype=np.float64).reshape(SIZE, SIZE) % 50000 + 100
    geometry = sinistro_geometry(SIZE)
    cards = dict(LEGACY_CARDS)
    for amp in geometry.amps:
        cards[f"DATASEC{amp.amp}"] = amp.datasec_str
        cards[f"DETSEC{amp.amp}"] = amp.detsec_str
        cards[f"BIASSEC{amp.amp}"] = amp.biassec_str
    path = _cube_file(tmp_path / "cube.fits", pattern, cards)
    raw = read_raw(path, crosstalk=XTALK)
    assert raw.extra["format"] == "cube" and raw.extra["crosstalk_source"] == "configuration"
    assert [a.gain for a in raw.amps] == [3.3, 3.4, 3.3, 3.4]
    np.testing.assert_array_equal(raw.crosstalk, XTALK)
    np.testing.assert_array_equal(mosaic_amplifiers(raw).sci, pattern.astype(np.float32))


def test_legacy_cube_sections_derived(tmp_path: Path) -> None:
    """A 2x2 legacy cube (4 x 1024 x 1040, the fl10 header's cards) without per-amplifier
    sections: DATASEC/BIASSEC/DETSEC derived; TRIMSEC [1:4096,1:4096] (unbinned) scaled."""
    n, over = 1024, 16
    rng = np.random.default_rng(3)
    pattern = rng.integers(1000, 3000, size=(2 * n, 2 * n)).astype(np.float32)
    geometry = sinistro_geometry(2 * n)
    amps = []
    for amp, geo in zip(mosaic_to_amps(pattern, geometry), geometry.amps, strict=True):
        x1, x2, y1, y2 = geo.datasec
        plane = np.full((n, n + over), 500.0, dtype=np.float32)
        plane[:, :n] = amp[y1 - 1 : y2, x1 - 1 : x2]  # no parallel overscan, no edge row
        amps.append(plane)
    cards = dict(LEGACY_CARDS, CCDSUM="2 2", TRIMSEC="[1:4096,1:4096]")
    path = tmp_path / "legacy.fits"
    fits.PrimaryHDU(np.stack(amps).astype(np.uint16), header=fits.Header(cards)).writeto(path)
    raw = read_raw(path, crosstalk=np.zeros((4, 4)))
    assert raw.amps[0].datasec == f"[1:{n},1:{n}]"
    assert raw.amps[0].biassec == f"[{n + 1 + over // 4}:{n + over},1:{n}]"
    assert raw.amps[0].detsec == "[1:2048,4096:2049]"
    assert raw.header["TRIMSEC"] == f"[1:{2 * n},1:{2 * n}]"
    frame = remove_instrument_signature(raw)
    assert frame.shape == (2 * n, 2 * n)
    # overscan (500 ADU) removed, gains applied per amplifier, orientation right
    gains = np.array([[3.4, 3.3], [3.3, 3.4]])  # quadrants [bottom, top] x [left, right]
    expected = (pattern - 500).reshape(2, n, 2, n) * gains[:, None, :, None]
    np.testing.assert_allclose(frame.sci, expected.reshape(2 * n, 2 * n), rtol=1e-6)


def test_real_sinistro_frame_header(real_data: Path) -> None:
    raw = read_raw(real_data / "elp1m008-fa05-20211007-0042-e00.fits")
    assert raw.family == "sinistro" and raw.extra["binning"] == (2, 2)
    assert [a.gain for a in raw.amps] == [6.42, 6.23, 6.27, 6.26]
    assert raw.saturate_adu == 40000.0 and raw.read_noise_e == 7.0
    assert {a.data.shape for a in raw.amps} == {(522, 544)}
    assert raw.amps[0].biassec == "[520:540,1:512]"
    assert raw.crosstalk[0, 1] == 0.00053 and raw.crosstalk[3, 2] == 0.00061
    assert raw.crosstalk[0, 0] == 0.0


# --- bad inputs -------------------------------------------------------------------------------


def _raises(path: Path, keyword: str | None, pattern: str, **kwargs) -> UnprocessableFrameError:
    with pytest.raises(UnprocessableFrameError, match=pattern) as info:
        read_raw(path, **kwargs)
    assert path.name in str(info.value) and info.value.path == str(path)
    if keyword is not None:
        assert keyword in str(info.value)
        assert info.value.keyword == keyword
    return info.value


def test_missing_gain(sinistro_file: Path, sbig_file: Path, tmp_path: Path) -> None:
    def drop_ext_gain(hdul):
        del hdul[2].header["GAIN"]  # the primary's GAIN = 0.0 is then no fallback

    path = _edited(sinistro_file, tmp_path / "nogain-e00.fits", drop_ext_gain)
    _raises(path, "GAIN", r"nogain-e00\.fits: amplifier 2 .*GAIN = 0\.0 e-/ADU must be > 0")

    def drop_gain(hdul):
        del hdul[0].header["GAIN"]

    path = _edited(sbig_file, tmp_path / "sbig-nogain.fits", drop_gain)
    _raises(path, "GAIN", r"sbig-nogain\.fits: GAIN is missing")


def test_bad_gain_values(sbig_file: Path, tmp_path: Path) -> None:
    for value, text in ((-1.4, "must be > 0"), ("abc", "is not a number")):

        def edit(hdul, value=value):
            hdul[0].header["GAIN"] = value

        path = _edited(sbig_file, tmp_path / f"gain{text[:3]}.fits", edit)
        _raises(path, "GAIN", text)


def test_bad_biassec(sinistro_file: Path, tmp_path: Path) -> None:
    def outside(hdul):
        hdul[3].header["BIASSEC"] = "[150:170,2:129]"  # the array is 160 wide

    path = _edited(sinistro_file, tmp_path / "biassec-out.fits", outside)
    _raises(path, "BIASSEC", r"amplifier 3 .*BIASSEC \[150:170,2:129\] lies outside the 160x138")

    def garbage(hdul):
        hdul[1].header["BIASSEC"] = "[1:2,3]"

    path = _edited(sinistro_file, tmp_path / "biassec-bad.fits", garbage)
    _raises(path, "BIASSEC", r"BIASSEC: '\[1:2,3\]' is not a FITS section")

    def overlap(hdul):
        hdul[1].header["BIASSEC"] = "[120:140,2:129]"

    path = _edited(sinistro_file, tmp_path / "biassec-overlap.fits", overlap)
    _raises(path, "BIASSEC", "overlaps DATASEC")


def test_sinistro_without_crosstalk(sinistro_file: Path, tmp_path: Path) -> None:
    def drop(hdul):
        for key in [k for k in hdul[0].header if k.startswith("CRSTLK")]:
            del hdul[0].header[key]

    path = _edited(sinistro_file, tmp_path / "noxtalk.fits", drop)
    _raises(path, "CRSTLK", "without crosstalk coefficients")
    raw = read_raw(path, crosstalk=XTALK)  # from the instrument configuration
    assert raw.extra["crosstalk_source"] == "configuration"
    np.testing.assert_array_equal(raw.crosstalk, XTALK)

    def drop_one(hdul):
        del hdul[0].header["CRSTLK34"]

    path = _edited(sinistro_file, tmp_path / "xtalk34.fits", drop_one)
    _raises(path, "CRSTLK34", "CRSTLK34 is missing")


def test_datasec_detsec_size_mismatch(sinistro_file: Path, tmp_path: Path) -> None:
    def edit(hdul):
        hdul[3].header["DETSEC"] = "[256:130,1:128]"  # 127 wide for a 128-wide DATASEC

    path = _edited(sinistro_file, tmp_path / "detsec.fits", edit)
    _raises(path, "DETSEC", r"amplifier 3: DETSEC \[256:130,1:128\] covers 127x128")

    def overlap(hdul):
        hdul[3].header["DETSEC"] = "[128:1,1:128]"  # on top of amplifier 2

    path = _edited(sinistro_file, tmp_path / "detsec-overlap.fits", overlap)
    _raises(path, "DETSEC", "amplifiers 2 and 3 overlap")


def test_truncated_file(sinistro_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated-e00.fits"
    data = sinistro_file.read_bytes()
    path.write_bytes(data[: len(data) - 20000])
    _raises(path, None, r"truncated-e00\.fits is truncated")


def test_truncated_and_corrupt_gzip(sinistro_file: Path, tmp_path: Path) -> None:
    fits_bytes = sinistro_file.read_bytes()
    short = tmp_path / "short-e00.fits.gz"  # a complete gzip stream of a truncated FITS file
    short.write_bytes(gzip.compress(fits_bytes[:-20000], mtime=0))
    _raises(short, None, r"short-e00\.fits\.gz: is truncated: HDU 4")
    cut = tmp_path / "cut-e00.fits.gz"  # a truncated gzip stream
    cut.write_bytes(gzip.compress(fits_bytes, mtime=0)[:-5000])
    _raises(cut, None, r"cut-e00\.fits\.gz: is a truncated or corrupt gzip stream")
    junk = tmp_path / "junk.fits.gz"
    junk.write_bytes(gzip.compress(b"hello" * 1000))
    _raises(junk, None, "is not a FITS file")
    missing = tmp_path / "missing.fits"
    _raises(missing, None, "does not exist")


def test_other_header_faults(sbig_file: Path, sinistro_file: Path, tmp_path: Path) -> None:
    cases = [
        (sbig_file, 0, "RDNOISE", None, "RDNOISE is missing"),
        (sbig_file, 0, "RDNOISE", -2.0, "RDNOISE = -2.0"),
        (sbig_file, 0, "SATURATE", -5.0, "SATURATE = -5.0"),
        (sbig_file, 0, "INSTRUME", "xx01", "not a known camera family"),
        (sbig_file, 0, "TRIMSEC", "[1:300,1:20]", "TRIMSEC .* does not lie inside DATASEC"),
        (sbig_file, 0, "DATASEC", "[1:129,1:128]", r"DATASEC \[1:129,1:128\] lies outside"),
        (sbig_file, 0, "CCDSUM", "2x2", "CCDSUM '2x2' is not of the form"),
        (sinistro_file, 0, "TRIMSEC", "[1:257,1:256]", "does not lie inside the 256x256 mosaic"),
        (sinistro_file, 2, "CCDSUM", "2 2", "amplifier 2 .*CCDSUM '2 2' differs"),
    ]
    for index, (src, hdu, key, value, pattern) in enumerate(cases):

        def edit(hdul, hdu=hdu, key=key, value=value):
            if value is None:
                del hdul[hdu].header[key]
            else:
                hdul[hdu].header[key] = value

        path = _edited(src, tmp_path / f"fault{index}.fits", edit)
        _raises(path, key, pattern)


def test_wrong_amplifier_count(sinistro_file: Path, tmp_path: Path) -> None:
    def drop(hdul):
        del hdul[4]

    path = _edited(sinistro_file, tmp_path / "three-amps.fits", drop)
    _raises(path, None, "needs 4 amplifiers, found 3")


def test_not_a_fits_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.fits"
    path.write_bytes(b"")
    _raises(path, None, "empty")


# --- pixel_digest: one exposure, whatever the file stores ----------------------------------
def test_pixel_digest_is_the_exposures_not_the_files(tmp_path: Path) -> None:
    from pylcogt.io.raw_read import pixel_digest

    from ..fitsmaker import write_frame

    plain = write_frame(tmp_path / "x.fits", value=1234)
    same = [
        write_frame(tmp_path / "x.fits.fz", compress="fz", value=1234),
        write_frame(tmp_path / "y.fits.gz", compress="gz", value=1234),
        write_frame(tmp_path / "z.fits", value=1234, OBJECT="edited header"),
    ]
    digest = pixel_digest(plain)
    assert [pixel_digest(p) for p in same] == [digest] * 3
    assert pixel_digest(write_frame(tmp_path / "w.fits", value=1235)) != digest
    mef = write_frame(tmp_path / "m.fits", mef=True, value=1234)  # four amplifiers
    assert pixel_digest(mef) != digest
    assert pixel_digest(write_frame(tmp_path / "m2.fits", mef=True, value=1234, OBJECT="b")) == (
        pixel_digest(mef)
    )
    with pytest.raises(UnprocessableFrameError, match="does not exist"):
        pixel_digest(tmp_path / "gone.fits")


def test_pixel_digest_applies_the_scaling(tmp_path: Path) -> None:
    """The same values stored as uint16 (int16 + BZERO) and as int32 are the same pixels."""
    from pylcogt.io.raw_read import pixel_digest

    values = np.arange(40000, 40000 + 64 * 64, dtype=np.uint32).reshape(64, 64) % 65536
    fits.PrimaryHDU(values.astype(np.uint16)).writeto(tmp_path / "u16.fits")
    fits.PrimaryHDU(values.astype(np.int32)).writeto(tmp_path / "i32.fits")
    assert pixel_digest(tmp_path / "u16.fits") == pixel_digest(tmp_path / "i32.fits")
