"""Instrument-signature stages (overscan, crosstalk, gain, mosaic, trim) against known answers:
the simulator's truth per family, synthetic noise-free amplifiers, and the real Sinistro frame."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import AmpImage, RawImage
from pylcogt.io.raw_read import read_raw
from pylcogt.sections import Section, parse_section
from pylcogt.simulate import mosaic_to_amps, simulate_night, sinistro_geometry
from pylcogt.stages.crosstalk import crosstalk_inverse, remove_crosstalk
from pylcogt.stages.gain import apply_gain, remove_bias_from_err
from pylcogt.stages.isr import ISR_CHAINS, remove_instrument_signature
from pylcogt.stages.mosaic import mosaic_amplifiers
from pylcogt.stages.overscan import subtract_overscan
from pylcogt.stages.trim import trim

SIZE = 256


class Night:
    def __init__(self, night):
        self.files = night.files
        self.truth = json.loads(night.truth_path.read_text())
        self.maps = dict(np.load(night.maps_path))

    def entry(self, path: Path) -> dict:
        return next(f for f in self.truth["files"] if f["name"] == path.name)

    def file(self, obstype: str) -> Path:
        return next(p for p in self.files if self.entry(p)["obstype"] == obstype)


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> dict[str, Night]:
    out = {}
    for camera in ("sinistro", "sbig", "spectral"):
        night = simulate_night(
            tmp_path_factory.mktemp(camera),
            camera=camera,
            size=SIZE,
            n_bias=1,
            n_dark=1,
            n_flat=1,
            n_science=1,
            filters=("rp",),
        )
        out[camera] = Night(night)
    return out


def _amp_raw(arrays, geometry, *, binning=(1, 1), crosstalk=None, header=None) -> RawImage:
    amps = tuple(
        AmpImage(
            data=np.asarray(a, dtype=np.float32),
            bpm=np.zeros(a.shape, np.uint8),
            gain=1.0,
            biassec=geo.biassec_str,
            datasec=geo.datasec_str,
            detsec=geo.detsec_str,
        )
        for a, geo in zip(arrays, geometry.amps, strict=True)
    )
    return RawImage(
        amps=amps,
        header=header if header is not None else fits.Header({"L1STATOV": 1}),
        name="synthetic",
        family="sinistro",
        read_noise_e=0.0,
        saturate_adu=65535.0,
        crosstalk=crosstalk,
        extra={"binning": binning},
    )


# --- mosaic orientation -----------------------------------------------------------------------


def test_mosaic_inverts_mosaic_to_amps_pixel_exact() -> None:
    """An asymmetric pattern through the simulator's mapping and back: identity."""
    geometry = sinistro_geometry(SIZE)
    pattern = np.arange(SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    arrays = mosaic_to_amps(pattern, geometry, edge_row=-1.0, fill=-2.0)
    frame = mosaic_amplifiers(_amp_raw(arrays, geometry))
    np.testing.assert_array_equal(frame.sci, pattern)
    assert frame.header["DATASEC"] == f"[1:{SIZE},1:{SIZE}]"
    assert frame.header["DETSEC1"] == geometry.amps[0].detsec_str
    # a wrong flip breaks it
    flipped = _amp_raw(arrays, geometry)
    amp3 = flipped.amps[2]
    detsec = parse_section(amp3.detsec)
    wrong = Section(detsec.x2, detsec.x1, detsec.y1, detsec.y2)
    broken = replace(
        flipped, amps=(*flipped.amps[:2], replace(amp3, detsec=str(wrong)), flipped.amps[3])
    )
    assert not np.array_equal(mosaic_amplifiers(broken).sci, pattern)


def _binned_offset(section: tuple[int, int, int, int], binning: int, offset: int) -> str:
    """A section of an n-pixel binned mosaic as DETSEC in unbinned pixels starting at offset+1."""

    def axis(a: int, b: int) -> tuple[int, int]:
        lo, hi = (a - 1) * binning + 1 + offset, b * binning + offset
        if a <= b:
            return (lo, hi)
        return (a * binning + offset, (b - 1) * binning + 1 + offset)

    x1, x2 = axis(*section[:2])
    y1, y2 = axis(*section[2:])
    return f"[{x1}:{x2},{y1}:{y2}]"


def test_mosaic_binned_subframe_detsec_offset() -> None:
    """central_2k_2x2: DETSEC in unbinned pixels starting at 1025, binned 2x2."""
    geometry = sinistro_geometry(SIZE)
    pattern = np.random.default_rng(1).normal(size=(SIZE, SIZE)).astype(np.float32)
    raw = _amp_raw(mosaic_to_amps(pattern, geometry), geometry, binning=(2, 2))
    amps = tuple(
        replace(amp, detsec=_binned_offset(geo.detsec, 2, 1024))
        for amp, geo in zip(raw.amps, geometry.amps, strict=True)
    )
    assert amps[0].detsec == f"[1025:{1024 + SIZE * 2 // 2},{1024 + 2 * SIZE}:{1025 + SIZE}]"
    frame = mosaic_amplifiers(replace(raw, amps=amps))
    np.testing.assert_array_equal(frame.sci, pattern)


# --- overscan ---------------------------------------------------------------------------------


@pytest.mark.parametrize("camera", ["sinistro", "spectral"])
def test_overscan_level_recovered_per_file_and_amp(nights, camera) -> None:
    night = nights[camera]
    gain = night.truth["gain_e_per_adu"]
    for path in night.files:
        raw = read_raw(path)
        out = subtract_overscan(raw)
        truth = night.entry(path)["bias_level_adu"]
        levels = out.extra["overscan_adu"]
        # noise of a clipped mean of the overscan: rdnoise/gain/sqrt(n), well under 0.3 ADU
        np.testing.assert_allclose(levels, truth, atol=0.3)
        if camera == "sinistro":
            assert [out.header[f"BIASLVL{i}"] for i in range(1, 5)] == pytest.approx(truth, abs=0.3)
            assert out.header["BIASLVL"] == pytest.approx(np.mean(truth), abs=0.3)
        else:
            assert out.header["BIASLVL"] == pytest.approx(truth[0], abs=0.3)
        assert out.header["OVERSCAN"] == "BIASSEC" and out.header["L1STATOV"] == 1
        # subtracted from the whole array; the input is untouched
        for before, after, level in zip(raw.amps, out.amps, levels, strict=True):
            np.testing.assert_allclose(after.data, before.data - np.float32(level), atol=1e-2)
            assert after.data is not before.data
        assert "BIASLVL" not in raw.header and len(gain) == len(raw.amps)


def test_sbig_without_biassec_skips_overscan(nights) -> None:
    raw = read_raw(nights["sbig"].file("EXPOSE"))
    assert raw.amps[0].biassec == "UNKNOWN"
    out = subtract_overscan(raw)
    assert out.header["OVERSCAN"] == "none" and out.header["L1STATOV"] == 0
    assert "BIASLVL" not in out.header
    assert out.amps[0].data is raw.amps[0].data
    frame = remove_instrument_signature(raw)
    assert frame.header["ERRBIAS"] is True  # Poisson term still holds the bias level


def test_overscan_clipping_ignores_outliers() -> None:
    geometry = sinistro_geometry(128)
    rng = np.random.default_rng(5)
    arrays = [rng.normal(1000.0 + 10 * i, 5.0, geo.shape) for i, geo in enumerate(geometry.amps)]
    x1, x2, y1, y2 = geometry.amps[0].biassec
    arrays[0][y1 - 1 : y1 + 9, x1 - 1 : x2] = 60000.0  # a streak through the overscan
    out = subtract_overscan(_amp_raw(arrays, geometry, header=fits.Header()))
    np.testing.assert_allclose(out.extra["overscan_adu"], [1000, 1010, 1020, 1030], atol=0.3)


# --- crosstalk --------------------------------------------------------------------------------


def _forward_crosstalk(true: list[np.ndarray], c: np.ndarray) -> list[np.ndarray]:
    """obs_j = t_j + sum_i c[i, j] t_i, in float64."""
    return [
        true[j] + sum(c[i, j] * true[i] for i in range(len(true)) if i != j)
        for j in range(len(true))
    ]


def test_crosstalk_exact_inversion_beats_one_pass() -> None:
    geometry = sinistro_geometry(128)
    rng = np.random.default_rng(7)
    true = [rng.uniform(0, 40000, geo.shape) for geo in geometry.amps]
    c = rng.uniform(0.0, 0.02, (4, 4))  # large, dense coefficients: second order matters
    np.fill_diagonal(c, 0.0)
    observed = _forward_crosstalk(true, c)
    raw = _amp_raw(observed, geometry, crosstalk=c)
    out = remove_crosstalk(raw)
    exact_error = max(np.abs(a.data - t).max() for a, t in zip(out.amps, true, strict=True))
    assert all(a.data.dtype == np.float32 for a in out.amps)
    assert exact_error < 40000 * 2e-6  # float32 precision
    # one approximate pass t ~ o - C^T o leaves second-order terms
    approx = [
        observed[j] - sum(c[i, j] * observed[i] for i in range(4) if i != j) for j in range(4)
    ]
    approx_error = max(np.abs(a - t).max() for a, t in zip(approx, true, strict=True))
    assert approx_error > 100 * exact_error
    assert out.header["L1XTALK"] == "header"
    np.testing.assert_allclose(crosstalk_inverse(c) @ (np.eye(4) + c).T, np.eye(4), atol=1e-12)
    assert raw.amps[0].data is not out.amps[0].data  # input untouched
    np.testing.assert_array_equal(raw.amps[1].data, np.float32(observed[1]))


def test_crosstalk_needs_equal_shapes_and_coefficients() -> None:
    geometry = sinistro_geometry(128)
    arrays = [np.zeros(geo.shape) for geo in geometry.amps]
    raw = _amp_raw(arrays, geometry, crosstalk=np.zeros((4, 4)))
    small = replace(raw.amps[2], data=raw.amps[2].data[:-1], bpm=raw.amps[2].bpm[:-1])
    odd = replace(raw, amps=(*raw.amps[:2], small, raw.amps[3]))
    with pytest.raises(UnprocessableFrameError, match="differ in shape"):
        remove_crosstalk(odd)
    with pytest.raises(UnprocessableFrameError, match="CRSTLK"):
        remove_crosstalk(replace(raw, crosstalk=None))


# --- gain -------------------------------------------------------------------------------------


def test_gain_and_err() -> None:
    geometry = sinistro_geometry(128)
    arrays = [np.full(geo.shape, 100.0 * (i + 1)) for i, geo in enumerate(geometry.amps)]
    arrays[0][0, 0] = -50.0
    raw = _amp_raw(arrays, geometry)
    raw = replace(
        raw,
        read_noise_e=7.0,
        amps=tuple(replace(a, gain=g) for a, g in zip(raw.amps, (1.5, 2.0, 2.5, 3.0), strict=True)),
    )
    out = apply_gain(raw)
    for amp, gain, level in zip(out.amps, (1.5, 2.0, 2.5, 3.0), (100, 200, 300, 400), strict=True):
        assert amp.unit == "electron" and amp.data.dtype == np.float32
        assert amp.data[5, 5] == pytest.approx(level * gain)
        assert amp.err[5, 5] == pytest.approx(np.sqrt(49 + level * gain), rel=1e-6)
    assert out.amps[0].err[0, 0] == pytest.approx(7.0)  # negative signal: read noise only
    assert out.header["GAIN3"] == 2.5 and out.header["BUNIT"] == "electron"
    assert out.header["ERRBIAS"] is False
    assert raw.amps[0].unit == "adu" and raw.amps[0].err is None


def test_remove_bias_from_err() -> None:
    err = np.sqrt(np.float32([49 + 1000 + 300, 49 + 1000 - 20, 49 + 1000]))
    out = remove_bias_from_err(err, 1000.0, 7.0)
    np.testing.assert_allclose(out, np.sqrt([49 + 300, 49, 49]), rtol=1e-5)


# --- full chains against the truth ------------------------------------------------------------


def _quadrant_gain(truth: dict) -> np.ndarray:
    """Gain of the amplifier behind each final pixel (the real frame's DETSEC layout)."""
    g1, g2, g3, g4 = truth["gain_e_per_adu"]
    h = SIZE // 2
    gains = np.empty((SIZE, SIZE), np.float32)
    gains[:h, :h], gains[:h, h:], gains[h:, :h], gains[h:, h:] = g2, g3, g1, g4
    return gains


@pytest.mark.parametrize("camera", ["sinistro", "sbig", "spectral"])
def test_science_frame_matches_truth_within_noise(nights, camera) -> None:
    """Overscan-subtracted electrons = sky*flat + dark*t + (data offset + bias structure)*gain,
    plus stars; checked per quadrant with the ERR plane (so gain, orientation, ERR all count)."""
    night = nights[camera]
    path = night.file("EXPOSE")
    entry = night.entry(path)
    truth = night.truth
    frame = remove_instrument_signature(read_raw(path))
    assert frame.shape == tuple(truth["final_shape_yx"]) and frame.unit == "electron"
    flat = night.maps["flat_rp"]
    gain = _quadrant_gain(truth) if camera == "sinistro" else truth["gain_e_per_adu"][0]
    bias_e = night.maps["bias_structure"] * gain
    if camera != "sbig":  # overscan removed: only the light-region offset is left
        bias_e = bias_e + truth["data_offset_adu"] * gain
    else:  # no overscan: the whole bias level is still there
        bias_e = bias_e + truth["bias_level_adu"][0] * gain
    expected = entry["sky_e"] * flat + night.maps["dark_current"] * entry["exptime"] + bias_e
    if camera == "sbig":
        err = remove_bias_from_err(frame.err, bias_e, truth["read_noise_e"])
    else:
        err = frame.err
    z = (frame.sci - expected) / err
    z[frame.bpm != 0] = np.nan
    yy, xx = np.mgrid[1 : frame.shape[0] + 1, 1 : frame.shape[1] + 1]
    for star in entry["stars"]:  # leave out the stars' wings (not in `expected`)
        radius = 3 + 2 * np.log10(max(star["flux_e"], 10.0))
        z[(xx - star["x"]) ** 2 + (yy - star["y"]) ** 2 < radius**2] = np.nan
    edge = 12  # and the border, where stars just outside the frame (not listed) shine in
    z[:edge], z[-edge:], z[:, :edge], z[:, -edge:] = np.nan, np.nan, np.nan, np.nan
    n = frame.shape[0] // 2
    for rows in (slice(0, n), slice(n, None)):
        for cols in (slice(0, n), slice(n, None)):
            values = z[rows, cols][np.isfinite(z[rows, cols])]
            median = np.median(values)
            rstd = 1.4826 * np.median(np.abs(values - median))
            assert abs(median) < 0.1, (camera, rows, cols, median)
            assert 0.9 < rstd < 1.1, (camera, rows, cols, rstd)
    # the brightest stars sit where the truth puts them (1-indexed final-frame x, y): the
    # light-weighted centroid of a 15x15 box (saturated tops are flat, so no argmax; the flat
    # top of a 2e7 e- star is ~10 pixels wide and must fit in the box)
    for star in sorted(entry["stars"], key=lambda s: -s["flux_e"])[:3]:
        x, y = round(star["x"]) - 1, round(star["y"]) - 1
        if 7 <= x < frame.shape[1] - 7 and 7 <= y < frame.shape[0] - 7:
            box = frame.sci[y - 7 : y + 8, x - 7 : x + 8] - np.median(frame.sci)
            box = np.clip(box, 0, None)
            yy, xx = np.mgrid[y - 7 : y + 8, x - 7 : x + 8] + 1.0
            cx, cy = (box * xx).sum() / box.sum(), (box * yy).sum() / box.sum()
            assert abs(cx - star["x"]) < 0.5 and abs(cy - star["y"]) < 0.5, (star, cx, cy)
            assert box.max() > 100 * entry["sky_e"]


@pytest.mark.parametrize("camera", ["sinistro", "sbig", "spectral"])
def test_trim_sizes_match_trimsec(nights, camera) -> None:
    night = nights[camera]
    for path in night.files:
        raw = read_raw(path)
        frame = remove_instrument_signature(raw)
        assert frame.shape == tuple(night.truth["final_shape_yx"])
        trimsec = parse_section(raw.header["TRIMSEC"])
        assert frame.shape == (trimsec.ny, trimsec.nx)
        assert frame.header["ORIGTRIM"] == night.truth["trimsec"]
        assert frame.header["TRIMSEC"] == f"[1:{trimsec.nx},1:{trimsec.ny}]"
        assert frame.header["DATASEC"] == frame.header["TRIMSEC"]
        assert frame.sci.flags.c_contiguous and frame.err.shape == frame.shape
        assert frame.header["LTV1"] == -night.truth["trim_offset_xy"][0]
        # CRPIX follows the cut: still the centre of the light-sensitive array
        n = SIZE // night.truth["binning"]
        assert frame.header["CRPIX1"] == pytest.approx(
            (n + 1) / 2 - night.truth["trim_offset_xy"][0]
        )


def test_trim_unknown_uses_datasec() -> None:
    geometry = sinistro_geometry(128)
    arrays = [np.ones(geo.shape) for geo in geometry.amps]
    frame = mosaic_amplifiers(_amp_raw(arrays, geometry))
    same = trim(frame)
    assert same.shape == (128, 128) and same.sci is frame.sci
    header = frame.header.copy()
    header["TRIMSEC"] = "[3:100,5:120]"
    cut = trim(replace(frame, header=header))
    assert cut.shape == (116, 98) and cut.header["LTV1"] == -2 and cut.header["LTV2"] == -4
    header["TRIMSEC"] = "[3:200,5:120]"
    with pytest.raises(UnprocessableFrameError, match="TRIMSEC"):
        trim(replace(frame, header=header))


def test_chains_are_data() -> None:
    assert remove_crosstalk in ISR_CHAINS["sinistro"]
    assert remove_crosstalk not in ISR_CHAINS["sbig"]
    assert ISR_CHAINS["sinistro"][-1] is trim


# --- the real Sinistro frame ------------------------------------------------------------------


def _boundary_profiles(sci: np.ndarray, width: int = 8, block: int = 32):
    """For each amplifier boundary, medians of ``width``-pixel strips either side, in blocks of
    ``block`` pixels along the boundary: (name, side A, side B) arrays."""
    h = sci.shape[0] // 2
    out = []
    for name, a, b in (
        ("bottom, x", sci[:h, h - width : h], sci[:h, h : h + width]),
        ("top, x", sci[h:, h - width : h], sci[h:, h : h + width]),
    ):
        out.append((name, _block_medians(a, block), _block_medians(b, block)))
    for name, a, b in (
        ("left, y", sci[h - width : h, :h], sci[h : h + width, :h]),
        ("right, y", sci[h - width : h, h:], sci[h : h + width, h:]),
    ):
        out.append((name, _block_medians(a.T, block), _block_medians(b.T, block)))
    return out


def _block_medians(strip: np.ndarray, block: int) -> np.ndarray:
    n = strip.shape[0] // block
    return np.median(strip[: n * block].reshape(n, -1), axis=1)


def _boundary_mismatch(sci: np.ndarray) -> list[tuple[str, float, float]]:
    """(boundary, level step, rms of the profile difference after the step) in electrons."""
    result = []
    for name, a, b in _boundary_profiles(sci):
        diff = a - b
        step = float(np.median(diff))
        result.append((name, step, float(np.sqrt(np.mean((diff - step) ** 2)))))
    return result


def test_real_sinistro_frame_boundaries_match(real_data: Path) -> None:
    """The binned central-2k frame: 1024x1024, and the sky continuous across all four amplifier
    boundaries. The sky along each boundary (8-pixel strips, 32-pixel blocks) must match in shape
    (a wrong flip mirrors one side: every such variant matches worse) and in level to 3% (a wrong
    gain or amplifier fails).

    The raw frame has no bias subtracted here: each amplifier keeps its own small offset between
    overscan and light-sensitive region (1-8 ADU on this frame, consistent round the loop of
    four boundaries), removed later by the master bias; so levels agree to a few percent, not to
    the strip noise.
    """
    raw = read_raw(real_data / "elp1m008-fa05-20211007-0042-e00.fits")
    frame = remove_instrument_signature(raw)
    assert frame.shape == (1024, 1024) and frame.header["ORIGTRIM"] == "[1:1024,1:1024]"
    sky = float(np.median(frame.sci))
    good = _boundary_mismatch(frame.sci)
    for name, step, rms in good:
        assert abs(step) < 0.03 * sky, (name, step, sky)
        assert rms < 25.0, (name, rms)  # noise of 256-pixel medians + real sky structure
    # the four steps close round the loop: per-amplifier offsets, not a broken geometry
    steps = {name: step for name, step, _ in good}
    loop = steps["bottom, x"] + steps["right, y"] - steps["top, x"] - steps["left, y"]
    assert abs(loop) < 0.006 * sky  # vs steps of up to 2.6% of the sky

    # deliberately broken: every single wrong flip matches worse (the sky profile along the
    # boundary mirrored on one side), and a wrong gain breaks the levels
    good_total = sum(rms for _, _, rms in good)
    staged = apply_gain(remove_crosstalk(subtract_overscan(raw)))
    for index in range(4):
        amp = staged.amps[index]
        det = parse_section(amp.detsec)
        for flip_x, flip_y in ((True, False), (False, True), (True, True)):
            wrong = Section(
                det.x2 if flip_x else det.x1,
                det.x1 if flip_x else det.x2,
                det.y2 if flip_y else det.y1,
                det.y1 if flip_y else det.y2,
            )
            amps = list(staged.amps)
            amps[index] = replace(amp, detsec=str(wrong))
            broken = mosaic_amplifiers(replace(staged, amps=tuple(amps))).sci
            broken_total = sum(rms for _, _, rms in _boundary_mismatch(broken))
            assert good_total < 0.85 * broken_total, (index, flip_x, flip_y, broken_total)
    amps = list(staged.amps)
    amps[1] = replace(amps[1], data=amps[1].data * np.float32(1.1))  # a 10% gain error
    bad = _boundary_mismatch(mosaic_amplifiers(replace(staged, amps=tuple(amps))).sci)
    assert any(abs(step) >= 0.03 * sky for _, step, _ in bad)
