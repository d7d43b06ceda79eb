"""Tests of the raw-frame simulator against answers computed here, independently of its code.

Sections are parsed and amplifiers mosaicked by helpers written in this file (FITS 1-indexed,
inclusive, reversed range = flipped axis), not by ``pylcogt.simulate``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from pylcogt.simulate import mosaic_to_amps, simulate_night, sinistro_geometry
from pylcogt.simulate.cameras import CAMERAS, camera_layout
from pylcogt.simulate.truth import truth_wcs

SEC_RE = re.compile(r"^\[(\d+):(\d+),(\d+):(\d+)\]$")
PARTNER = {1: 2, 2: 1, 3: 4, 4: 3}


def sec(text: str) -> tuple[int, int, int, int]:
    match = SEC_RE.match(text.strip())
    assert match, text
    return tuple(int(g) for g in match.groups())


def box(section: str) -> tuple[slice, slice]:
    x1, x2, y1, y2 = sec(section)
    return slice(min(y1, y2) - 1, max(y1, y2)), slice(min(x1, x2) - 1, max(x1, x2))


def axis_map(d1: int, d2: int, n: int) -> np.ndarray:
    """0-indexed destination index of the k-th source pixel along a (possibly reversed) range."""
    step = 1 if d2 >= d1 else -1
    assert abs(d2 - d1) + 1 == n
    return d1 - 1 + step * np.arange(n)


def read(path):
    """(primary-or-image header with the keywords, [(ext header, uint16 data), ...])."""
    with fits.open(path) as hdul:
        images = [(h.header, h.data.copy()) for h in hdul if h.data is not None]
        keys = hdul[0].header if "OBSTYPE" in hdul[0].header else hdul[1].header
        return keys.copy(), images


def mosaic(images, size: int, subtract_overscan: bool = True, gains=None) -> np.ndarray:
    """Independent vectorised mosaic of Sinistro amplifiers (overscan-subtracted, optionally e-)."""
    out = np.full((size, size), np.nan)
    for k, (header, data) in enumerate(images):
        x1, x2, y1, y2 = sec(header["DATASEC"])
        d = data.astype(float)
        if subtract_overscan:
            d = d - d[box(header["BIASSEC"])].mean()  # the mean: a median of integers is coarse
        if gains is not None:
            d = d * gains[k]
        block = d[y1 - 1 : y2, x1 - 1 : x2]
        dx1, dx2, dy1, dy2 = sec(header["DETSEC"])
        cols = axis_map(dx1, dx2, block.shape[1])
        rows = axis_map(dy1, dy2, block.shape[0])
        out[np.ix_(rows, cols)] = block
    assert not np.isnan(out).any()
    return out


def isolated(star, stars, sigma: float, radius: float = 5.0) -> bool:
    """No other star puts more than 2% of this star's flux into its centroid box (Gaussian PSF)."""
    for other in stars:
        if other is star:
            continue
        d = max(np.hypot(other["x"] - star["x"], other["y"] - star["y"]) - radius, 0.0)
        if other["flux_e"] * np.exp(-0.5 * (d / sigma) ** 2) > 0.02 * star["flux_e"]:
            return False
    return True


def amp_region_mean(truth_map: np.ndarray, header) -> float:
    return float(truth_map[box(header["DETSEC"])].mean())


@pytest.fixture(scope="module")
def sinistro(tmp_path_factory):
    out = tmp_path_factory.mktemp("sinistro")
    calls = []
    night = simulate_night(
        out,
        camera="sinistro",
        size=256,
        seed=3,
        n_bias=3,
        n_dark=2,
        n_flat=2,
        n_science=2,
        progress=lambda i, n, name: calls.append((i, n, name)),
    )
    truth = json.loads(night.truth_path.read_text())
    maps = dict(np.load(out / "truth_maps.npz"))
    return night, truth, maps, calls


@pytest.fixture(scope="module")
def sbig(tmp_path_factory):
    night = simulate_night(
        tmp_path_factory.mktemp("sbig"),
        camera="sbig",
        size=256,
        seed=4,
        n_bias=2,
        n_dark=1,
        n_flat=1,
        n_science=1,
        filters=("gp",),
    )
    return night, json.loads(night.truth_path.read_text())


@pytest.fixture(scope="module")
def spectral(tmp_path_factory):
    night = simulate_night(
        tmp_path_factory.mktemp("spectral"),
        camera="spectral",
        size=256,
        seed=5,
        n_bias=2,
        n_dark=1,
        n_flat=1,
        n_science=1,
        filters=("rp",),
    )
    return night, json.loads(night.truth_path.read_text())


def by_type(night, truth, obstype):
    return [
        (p, e) for p, e in zip(night.files, truth["files"], strict=True) if e["obstype"] == obstype
    ]


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs",
    [
        {"camera": "sinistro", "size": 100},
        {"camera": "sinistro", "size": 257},
        {"camera": "sbig", "size": 62},
        {"camera": "spectral", "size": 65},
        {"camera": "nres"},
        {"compress": "bz2"},
        {"filters": ("nope",)},
        {"dayobs": "2026-11-28"},
        {"n_bias": -1},
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs):
    with pytest.raises(ValueError):
        simulate_night(tmp_path, **{"size": 128, **kwargs})
    assert not list(tmp_path.glob("*.fits*"))


def test_full_size_sections_match_real_frames():
    geometry = sinistro_geometry(4096)
    assert geometry.raw_shape == (2058, 2080)
    strings = [(a.datasec_str, a.biassec_str, a.detsec_str) for a in geometry.amps]
    assert strings == [
        ("[1:2048,2:2049]", "[2055:2080,2:2049]", "[1:2048,4096:2049]"),
        ("[1:2048,1:2048]", "[2055:2080,1:2048]", "[1:2048,1:2048]"),
        ("[1:2048,1:2048]", "[2055:2080,1:2048]", "[4096:2049,1:2048]"),
        ("[1:2048,2:2049]", "[2055:2080,2:2049]", "[4096:2049,4096:2049]"),
    ]
    sbig = camera_layout(CAMERAS["sbig"], 4096)  # kb78
    assert (sbig.raw_shape, sbig.datasec, sbig.trimsec) == (
        (2048, 2048),
        "[1:2048,1:2048]",
        "[11:2037,11:2037]",
    )
    spectral = camera_layout(CAMERAS["spectral"], 4096)  # fs02
    assert (spectral.raw_shape, spectral.biassec, spectral.trimsec) == (
        (2048, 2080),
        "[2049:2080,1:2048]",
        "[20:2028,20:2028]",
    )


# --------------------------------------------------------------------------- files and headers


@pytest.mark.parametrize("name", ["sinistro", "sbig", "spectral"])
def test_files_obstypes_and_on_disk_format(name, request):
    night, truth = request.getfixturevalue(name)[:2]
    n_bias, n_dark, n_flat, n_sci, filters = {
        "sinistro": (3, 2, 2, 2, ("rp", "V")),
        "sbig": (2, 1, 1, 1, ("gp",)),
        "spectral": (2, 1, 1, 1, ("rp",)),
    }[name]
    expected = {
        "BIAS": 2 * n_bias,
        "DARK": 2 * n_dark,
        "SKYFLAT": 2 * n_flat * len(filters),
        "EXPOSE": n_sci * len(filters),
    }
    assert len(night.files) == sum(expected.values()) == len(truth["files"])
    prefix = {"sinistro": "fa", "sbig": "kb", "spectral": "fs"}[name]
    seen, times = {}, []
    for i, path in enumerate(night.files, start=1):
        assert path.exists() and path.name == truth["files"][i - 1]["name"]
        header, images = read(path)
        obstype = header["OBSTYPE"]
        seen[obstype] = seen.get(obstype, 0) + 1
        suffix = {"BIAS": "b00", "DARK": "d00", "SKYFLAT": "f00", "EXPOSE": "e00"}[obstype]
        assert re.fullmatch(rf"lsc\dm0\d\d-{prefix}\d\d-20261128-{i:04d}-{suffix}\.fits", path.name)
        assert header["FRAMENUM"] == i and header["ORIGNAME"] == path.name
        assert header["DAY-OBS"] == "20261128"
        assert header["INSTRUME"] == night.instrument and header["INSTRUME"].startswith(prefix)
        assert header["SITEID"] == "lsc" and header["ENCID"] in ("doma", "clma")
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", header["RA"])
        assert re.fullmatch(r"[+-]\d\d:\d\d:\d\d\.\d\d", header["DEC"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", header["DATE-OBS"])
        times.append(header["DATE-OBS"])
        if obstype in ("BIAS", "DARK"):
            assert header["FILTER"] == "air"
            assert header["EXPTIME"] == (0.0 if obstype == "BIAS" else 300.0)
        else:
            assert header["FILTER"] in filters and header["EXPTIME"] > 0
        assert header["CCDSUM"] == ("1 1" if name == "sinistro" else "2 2")
        assert len(images) == (4 if name == "sinistro" else 1)
        for _, data in images:
            assert data.dtype == np.uint16
        with fits.open(path, do_not_scale_image_data=True) as raw:
            image_hdus = [h for h in raw if h.data is not None]
            for hdu in image_hdus:
                assert hdu.header["BITPIX"] == 16 and hdu.header["BZERO"] == 32768
                assert hdu.data.dtype == np.dtype(">i2")
            if name == "sinistro":
                assert raw[0].header["NAXIS"] == 0
                assert [h.name for h in raw[1:]] == ["SCI"] * 4
    assert times == sorted(times) and len(set(times)) == len(times)
    assert seen == expected


def test_progress_called_after_each_file(sinistro):
    night, _, _, calls = sinistro
    assert calls == [(i + 1, len(night.files), p.name) for i, p in enumerate(night.files)]


def test_flat_exposures_lengthen_in_evening_and_shorten_in_morning(sinistro):
    night, truth, _, _ = sinistro
    flats = [e for e in truth["files"] if e["obstype"] == "SKYFLAT"]
    evening = [e for e in flats if e["dateobs"].startswith("2026-11-28")]
    morning = [e for e in flats if e["dateobs"].startswith("2026-11-29")]
    for f in ("rp", "V"):
        ev = [e["exptime"] for e in evening if e["filter"] == f]
        mo = [e["exptime"] for e in morning if e["filter"] == f]
        assert len(ev) == len(mo) == 2
        assert ev[0] < ev[1] and mo[0] > mo[1]
    for e in flats:
        assert 15000 < e["sky_e"] < 30000
    science = [e for e in truth["files"] if e["obstype"] == "EXPOSE"]
    for e in science:
        assert "2026-11-29T00:30" <= e["dateobs"] <= "2026-11-29T08:00"
        assert 30 <= e["exptime"] <= 300 and 100 < e["sky_e"] < 2000


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_same_bytes_other_seed_other_pixels(tmp_path):
    kwargs = {
        "size": 128,
        "n_bias": 1,
        "n_dark": 1,
        "n_flat": 1,
        "n_science": 1,
        "filters": ("rp",),
    }
    a = simulate_night(tmp_path / "a", seed=11, **kwargs)
    b = simulate_night(tmp_path / "b", seed=11, **kwargs)
    c = simulate_night(tmp_path / "c", seed=12, **kwargs)
    for pa, pb in zip(a.files, b.files, strict=True):
        assert pa.read_bytes() == pb.read_bytes()
    assert (tmp_path / "a" / "truth.json").read_bytes() == (
        tmp_path / "b" / "truth.json"
    ).read_bytes()
    for pa, pc in zip(a.files, c.files, strict=True):
        da, dc = read(pa)[1][0][1], read(pc)[1][0][1]
        assert not np.array_equal(da, dc)


@pytest.mark.parametrize("camera", ["sinistro", "sbig"])
def test_fz_and_gz_hold_the_same_pixels(tmp_path, camera):
    kwargs = {
        "camera": camera,
        "size": 128,
        "seed": 9,
        "n_bias": 1,
        "n_dark": 0,
        "n_flat": 1,
        "n_science": 1,
        "filters": ("V",),
    }
    nights = {c: simulate_night(tmp_path / c, compress=c, **kwargs) for c in ("none", "fz", "gz")}
    assert all(p.name.endswith(".fits.fz") for p in nights["fz"].files)
    assert all(p.name.endswith(".fits.gz") for p in nights["gz"].files)
    for plain, packed, zipped in zip(*(nights[c].files for c in ("none", "fz", "gz")), strict=True):
        ref_header, ref = read(plain)
        for other in (packed, zipped):
            header, images = read(other)
            assert header["OBSTYPE"] == ref_header["OBSTYPE"]
            assert len(images) == len(ref)
            for (_, d1), (_, d2) in zip(ref, images, strict=True):
                assert d2.dtype == np.uint16 and np.array_equal(d1, d2)
        with fits.open(packed) as hdul:
            assert hdul[0].data is None
            assert all(isinstance(h, fits.CompImageHDU) for h in hdul[1:])
            assert hdul[1].header["ZCMPTYPE"] == "RICE_1" if "ZCMPTYPE" in hdul[1].header else True
            if camera == "sbig":
                assert "INSTRUME" not in hdul[0].header and hdul[1].header["INSTRUME"] == "kb95"
            else:
                assert hdul[0].header["INSTRUME"] == "fa15" and len(hdul) == 5


def test_headers_fit_without_fits_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for camera in ("sinistro", "spectral"):
            simulate_night(
                tmp_path / camera,
                camera=camera,
                size=128,
                n_bias=1,
                n_dark=0,
                n_flat=0,
                n_science=1,
                filters=("rp",),
                compress="fz",
            )


# --------------------------------------------------------------------------- Sinistro geometry


def test_mosaic_to_amps_against_slow_reference():
    size = 128
    geometry = sinistro_geometry(size)
    image = np.arange(size * size, dtype=float).reshape(size, size) + 1.0
    amps = mosaic_to_amps(image, geometry, edge_row=0.5, fill=-1.0)
    rebuilt = np.zeros_like(image)
    hits = np.zeros(image.shape, dtype=int)
    for amp, raw in zip(geometry.amps, amps, strict=True):
        assert raw.shape == (size // 2 + 10, size // 2 + 32)
        x1, x2, y1, y2 = sec(amp.datasec_str)
        dx1, dx2, dy1, dy2 = sec(amp.detsec_str)
        sx, sy = (1 if dx2 >= dx1 else -1), (1 if dy2 >= dy1 else -1)
        for j in range(y1, y2 + 1):
            for i in range(x1, x2 + 1):
                mx, my = dx1 + sx * (i - x1), dy1 + sy * (j - y1)
                rebuilt[my - 1, mx - 1] = raw[j - 1, i - 1]
                hits[my - 1, mx - 1] += 1
        outside = np.ones(raw.shape, dtype=bool)
        outside[y1 - 1 : y2, x1 - 1 : x2] = False
        if amp.amp in (1, 4):  # top amplifiers: raw row 1 is the extra, discarded edge row
            assert (y1, y2) == (2, size // 2 + 1)
            assert np.array_equal(raw[0, x1 - 1 : x2], 0.5 * raw[1, x1 - 1 : x2])
            # the row next to it is the top row of the detector (mosaic row S)
            assert set(raw[1, x1 - 1 : x2]) == set(
                image[size - 1, :][slice(0, size // 2) if amp.amp == 1 else slice(size // 2, size)]
            )
            outside[0, x1 - 1 : x2] = False
        else:
            assert (y1, y2) == (1, size // 2)
        assert np.all(raw[outside] == -1.0)
    assert np.array_equal(rebuilt, image) and np.all(hits == 1)


def test_sinistro_sections_consistent_with_naxis(sinistro):
    night = sinistro[0]
    size = 256
    for path in night.files[:2]:
        primary, images = read(path)
        assert primary["TRIMSEC"] == f"[1:{size},1:{size}]" and primary["GAIN"] == 0.0
        assert primary["SATURATE"] == 40000
        cover = np.zeros((size, size), dtype=int)
        for k, (header, data) in enumerate(images, start=1):
            ny, nx = data.shape
            assert (
                (header["NAXIS1"], header["NAXIS2"]) == (nx, ny) == (size // 2 + 32, size // 2 + 10)
            )
            d, b, t = sec(header["DATASEC"]), sec(header["BIASSEC"]), sec(header["DETSEC"])
            for x1, x2, y1, y2 in (d, b):
                assert 1 <= x1 <= x2 <= nx and 1 <= y1 <= y2 <= ny
            assert b[0] > d[1]  # overscan columns after the light columns
            assert abs(t[1] - t[0]) + 1 == d[1] - d[0] + 1
            assert abs(t[3] - t[2]) + 1 == d[3] - d[2] + 1
            cover[box(header["DETSEC"])] += 1
            assert header["EXTVER"] == k and header["GAIN"] > 0
        assert np.all(cover == 1)


# --------------------------------------------------------------------------- detector physics


def test_bias_overscan_noise_and_data_offset(sinistro):
    night, truth, maps, _ = sinistro
    biases = by_type(night, truth, "BIAS")
    assert len(biases) == 6
    residuals = [[] for _ in range(4)]
    for path, entry in biases:
        _, images = read(path)
        for k, (header, data) in enumerate(images):
            gain = truth["gain_e_per_adu"][k]
            sigma = truth["read_noise_e"] / gain
            assert header["GAIN"] == gain
            over = data[box(header["BIASSEC"])].astype(float)
            assert abs(over.mean() - entry["bias_level_adu"][k]) < 0.5
            residuals[k].append(over.ravel() - entry["bias_level_adu"][k])
            light = data[box(header["DATASEC"])].astype(float)
            clipped = light[np.abs(light - np.median(light)) < 5 * sigma]
            expected = truth["data_offset_adu"] + amp_region_mean(maps["bias_structure"], header)
            assert abs((clipped.mean() - over.mean()) - expected) < 0.5
    for k, res in enumerate(residuals):  # read noise / gain, plus rounding to integer ADU
        sigma = np.hypot(truth["read_noise_e"] / truth["gain_e_per_adu"][k], 12**-0.5)
        assert abs(np.concatenate(res).std() / sigma - 1) < 0.02


def test_spectral_and_sbig_bias_levels(spectral, sbig):
    night, truth = spectral
    n = 128  # size 256 binned 2x2
    for path, entry in by_type(night, truth, "BIAS"):
        header, [(_, data)] = read(path)
        assert data.shape == (n, n + 32)
        assert (
            header["BIASSEC"] == f"[{n + 1}:{n + 32},1:{n}]"
            and header["DATASEC"] == f"[1:{n},1:{n}]"
        )
        over = data[box(header["BIASSEC"])].astype(float)
        assert abs(over.mean() - entry["bias_level_adu"][0]) < 0.5
        assert abs(over.std() / np.hypot(11.0 / 8.0, 12**-0.5) - 1) < 0.08
    night, truth = sbig
    for path, _ in by_type(night, truth, "BIAS"):
        header, [(_, data)] = read(path)
        assert header["BIASSEC"] == "UNKNOWN" and data.shape == (n, n)
        assert header["GAIN"] == 1.4 and header["RDNOISE"] == 13.5 and header["SATURATE"] == 46000
        clipped = data[np.abs(data - np.median(data)) < 50].astype(float)
        assert abs(clipped.mean() - 812.0 - truth["bias_structure_mean_adu"]) < 1.0


def test_dark_current_and_hot_pixels(sinistro):
    night, truth, maps, _ = sinistro
    size, gains = 256, truth["gain_e_per_adu"]
    master = np.mean(
        [mosaic(read(p)[1], size, gains=gains) for p, _ in by_type(night, truth, "BIAS")], axis=0
    )
    darks = by_type(night, truth, "DARK")
    rates = np.mean(
        [(mosaic(read(p)[1], size, gains=gains) - master) / e["exptime"] for p, e in darks], axis=0
    )
    _, images = read(darks[0][0])
    for header, _ in images:  # per amplifier: checks each amp's gain and orientation
        region = box(header["DETSEC"])
        truth_rate = maps["dark_current"][region]
        assert abs(np.median(rates[region] - truth_rate)) < 0.01 * np.median(truth_rate)
    hot = np.array(truth["hot_pixels"])
    assert len(hot) >= 10
    measured = rates[hot[:, 1].astype(int) - 1, hot[:, 0].astype(int) - 1]
    assert np.median(measured / hot[:, 2]) == pytest.approx(1.0, abs=0.1)


def test_cosmic_rays_where_truth_says(sinistro):
    night, truth, _, _ = sinistro
    size, gains = 256, truth["gain_e_per_adu"]
    master = np.mean(
        [mosaic(read(p)[1], size, gains=gains) for p, _ in by_type(night, truth, "BIAS")], axis=0
    )
    n_checked = 0
    for path, entry in zip(night.files, truth["files"], strict=True):
        if not entry["cosmic_rays"]:
            continue
        electrons = mosaic(read(path)[1], size, gains=gains) - master
        hit = np.zeros(electrons.shape, dtype=bool)
        for x, y, _ in entry["cosmic_rays"]:
            hit[y - 1, x - 1] = True
        for x, y, deposit in entry["cosmic_rays"]:
            r, c = y - 1, x - 1
            if not (2 <= r < size - 2 and 2 <= c < size - 2):
                continue
            if any(  # on a star's profile the 5x5 median is no background
                s["flux_e"] > 1000 and np.hypot(s["x"] - x, s["y"] - y) < 8
                for s in entry.get("stars", [])
            ):
                continue
            around = electrons[r - 2 : r + 3, c - 2 : c + 3][~hit[r - 2 : r + 3, c - 2 : c + 3]]
            background = np.median(around)
            noise = np.sqrt(deposit + max(background, 0) + 7.5**2)
            assert electrons[r, c] - background == pytest.approx(
                deposit, abs=5 * noise + 0.03 * deposit
            )
            n_checked += 1
    assert n_checked >= 3


def test_flats_follow_sky_level_and_flat_response(sinistro):
    night, truth, maps, _ = sinistro
    size, gains = 256, truth["gain_e_per_adu"]
    master = np.mean(
        [mosaic(read(p)[1], size, gains=gains) for p, _ in by_type(night, truth, "BIAS")], axis=0
    )
    c = slice(size // 4, 3 * size // 4)
    for path, entry in by_type(night, truth, "SKYFLAT"):
        electrons = mosaic(read(path)[1], size, gains=gains) - master
        assert np.median(electrons[c, c]) == pytest.approx(entry["sky_e"], rel=0.015)
        ratio = electrons / (entry["sky_e"] * maps[f"flat_{entry['filter']}"])
        robust_std = 1.4826 * np.median(np.abs(ratio - np.median(ratio)))
        poisson = np.sqrt(entry["sky_e"] + 7.5**2) / entry["sky_e"]
        assert np.median(ratio) == pytest.approx(1.0, abs=0.01)
        # Poisson noise only: the 1% pixel-to-pixel pattern is where the truth map says it is
        assert 0.9 * poisson < robust_std < 1.15 * poisson
        for x, response in truth["bad_columns"]:
            column = electrons[:, int(x) - 1] / entry["sky_e"]
            assert np.median(column) < response + 0.1
    flat = maps["flat_rp"]
    assert flat.dtype == np.float32 and flat.shape == (size, size)
    assert flat[c, c].mean() == pytest.approx(1.0, abs=1e-5)


def test_saturated_pixels_stick_at_saturate(sinistro):
    night, truth, _, _ = sinistro
    n_saturated = 0
    for path, _ in by_type(night, truth, "EXPOSE"):
        primary, images = read(path)
        for _, data in images:
            assert data.max() <= primary["SATURATE"]
            n_saturated += int((data == primary["SATURATE"]).sum())
    assert n_saturated > 20


def test_crosstalk_matches_crstlk_keywords(tmp_path, monkeypatch):
    """Same seed with and without crosstalk (crosstalk draws no random numbers): every pixel of
    amp j must differ by sum_i CRSTLKij * (raw_i - overscan level_i), to within rounding."""
    kwargs = {
        "camera": "sinistro",
        "size": 256,
        "seed": 3,
        "n_bias": 0,
        "n_dark": 0,
        "n_flat": 0,
        "n_science": 1,
        "filters": ("rp",),
    }
    with_xt = simulate_night(tmp_path / "xt", **kwargs)
    truth = json.loads(with_xt.truth_path.read_text())
    zero = tuple((0.0,) * 4 for _ in range(4))
    monkeypatch.setitem(
        CAMERAS, "sinistro", dataclasses.replace(CAMERAS["sinistro"], crosstalk=zero)
    )
    without = simulate_night(tmp_path / "no", **kwargs)
    (path,) = with_xt.files
    primary, images = read(path)
    raw = [d.astype(float) for _, d in images]
    clean = [d.astype(float) for _, d in read(without.files[0])[1]]
    levels = truth["files"][0]["bias_level_adu"]
    saturate = primary["SATURATE"]
    assert sum(int((c == saturate).sum()) for c in clean) > 20  # bright stars in the frame
    for j in range(4):
        model = clean[j] + sum(
            primary[f"CRSTLK{i + 1}{j + 1}"] * (clean[i] - levels[i]) for i in range(4) if i != j
        )
        ok = clean[j] < saturate
        assert np.all(np.abs(raw[j][ok] - model[ok]) <= 1.0)
        partner = PARTNER[j + 1] - 1
        sat = clean[partner] == saturate
        if sat.any():  # the ghost of a saturated star is c * (SATURATE - level), ~20 ADU
            expected = primary[f"CRSTLK{partner + 1}{j + 1}"] * (saturate - levels[partner])
            assert 15 < expected < 30
            assert np.median((raw[j] - clean[j])[sat & ok]) == pytest.approx(expected, abs=1.0)
    assert [[primary.get(f"CRSTLK{i}{j}", 0.0) for j in range(1, 5)] for i in range(1, 5)] == (
        truth["crosstalk"]
    )


def test_stars_peak_where_truth_wcs_puts_them_near_the_header_wcs(sinistro):
    """The true WCS (truth file) puts the stars exactly; the header's nominal TAN WCS about the
    pointing is off by the pointing error, the rotation and the distortion, no more."""
    night, truth, _, _ = sinistro
    optics = truth["optics"]
    size, gains = 256, truth["gain_e_per_adu"]
    n_checked = 0
    for path, entry in by_type(night, truth, "EXPOSE"):
        primary, images = read(path)
        image = mosaic(images, size, gains=gains)
        wcs_keys = fits.Header()
        for key in (
            "CTYPE1",
            "CTYPE2",
            "CRPIX1",
            "CRPIX2",
            "CRVAL1",
            "CRVAL2",
            "CD1_1",
            "CD1_2",
            "CD2_1",
            "CD2_2",
            "CUNIT1",
            "CUNIT2",
        ):
            wcs_keys[key] = primary[key]
        wcs = WCS(wcs_keys)
        stars = entry["stars"]
        assert len(stars) >= 10
        xy = np.array([[s["x"], s["y"]] for s in stars])
        radec = np.array([[s["ra"], s["dec"]] for s in stars])
        assert np.allclose(truth_wcs(truth, path.name).all_world2pix(radec, 1), xy, atol=0.01)
        off = np.hypot(*(wcs.all_world2pix(radec, 1) - xy).T)
        rotation = np.radians(abs(optics["rotation_deg"])) * optics["corner_radius_px"]
        arcsec = np.hypot(*entry["pointing_error_arcsec"]) + optics["distortion_corner_arcsec"]
        assert off.max() < arcsec / 0.389 + rotation + 0.01
        sky_sigma = np.sqrt(entry["sky_e"] + 7.5**2)
        sigma = entry["fwhm_arcsec"] / 0.389 / 2.3548
        blemishes = truth["hot_pixels"] + entry["cosmic_rays"]
        for s in stars:
            peak = s["flux_e"] / (2 * np.pi * sigma**2)
            x, y = s["x"], s["y"]
            if peak < 30 * sky_sigma or peak > 40000 or not (8 < x < size - 8 and 8 < y < size - 8):
                continue
            if not isolated(s, stars, sigma) or any(
                max(abs(hx - x), abs(hy - y)) < 7 for hx, hy, *_ in blemishes
            ):
                continue
            r, c = int(round(y)) - 1, int(round(x)) - 1
            stamp = image[r - 5 : r + 6, c - 5 : c + 6] - entry["sky_e"]
            stamp = np.clip(stamp, 0, None)
            yy, xx = np.mgrid[r - 5 : r + 6, c - 5 : c + 6] + 1.0
            cx, cy = (stamp * xx).sum() / stamp.sum(), (stamp * yy).sum() / stamp.sum()
            assert np.hypot(cx - x, cy - y) < 0.5, s
            n_checked += 1
    assert n_checked >= 5


def test_sbig_stars_use_trimmed_coordinates(sbig):
    night, truth = sbig
    dx, dy = truth["trim_offset_xy"]
    assert truth["trimsec"] == "[2:127,2:127]" and (dx, dy) == (1, 1)
    ((path, entry),) = by_type(night, truth, "EXPOSE")
    header, [(_, data)] = read(path)
    image = (data.astype(float) - 812.0) * 1.4 - entry["sky_e"]
    sigma = entry["fwhm_arcsec"] / 0.467 / 2.3548
    # the raw frame is neither dark-subtracted nor flat-fielded: stars whose stamp holds a hot
    # pixel or a dust donut are no test of their coordinates (final = raw - offset)
    maps = np.load(night.outdir / "truth_maps.npz")
    hot = maps["dark_current"] * entry["exptime"] > 200.0
    flat = maps["flat_gp"]
    found = 0
    for s in entry["stars"]:
        x, y = s["x"] + dx, s["y"] + dy  # raw pixel = final pixel + offset
        peak = s["flux_e"] / (2 * np.pi * sigma**2)
        if not (300 < peak < 20000) or not (6 < x < 122 and 6 < y < 122):
            continue
        if not isolated(s, entry["stars"], sigma):
            continue
        r, c = int(round(y)) - 1, int(round(x)) - 1
        final = (slice(r - 4 - dy, r + 5 - dy), slice(c - 4 - dx, c + 5 - dx))
        if hot[final].any() or flat[final].min() < 0.95 * np.median(flat[final]):
            continue
        stamp = np.clip(image[r - 4 : r + 5, c - 4 : c + 5], 0, None)
        yy, xx = np.mgrid[r - 4 : r + 5, c - 4 : c + 5] + 1.0
        cx, cy = (stamp * xx).sum() / stamp.sum(), (stamp * yy).sum() / stamp.sum()
        assert np.hypot(cx - x, cy - y) < 0.6, s
        found += 1
    assert found >= 3
    assert header["PIXSCALE"] == 0.467 and header["TRIMSEC"] == "[2:127,2:127]"


def test_truth_documents_units_and_maps(sinistro, spectral):
    night, truth, maps, _ = sinistro
    for key in (
        "units",
        "gain_e_per_adu",
        "read_noise_e",
        "bias_level_adu",
        "data_offset_adu",
        "hot_pixels",
        "bad_columns",
        "flat",
        "crosstalk",
        "saturate_adu",
        "zero_points_mag",
    ):
        assert key in truth
    assert set(maps) >= {"bias_structure", "dark_current", "flat_rp", "flat_V", "units"}
    for key in ("bias_structure", "dark_current", "flat_rp"):
        assert maps[key].dtype == np.float32 and maps[key].shape == (256, 256)
    science = [e for e in truth["files"] if e["obstype"] == "EXPOSE"]
    assert all("zeropoint_mag" in e and e["stars"] for e in science)
    for s in science[0]["stars"]:
        assert s["flux_e"] == pytest.approx(
            science[0]["exptime"] * 10 ** (-0.4 * (s["mag"] - science[0]["zeropoint_mag"])),
            rel=1e-3,
        )
    spec_night, spec_truth = spectral
    spec_maps = np.load(spec_night.outdir / "truth_maps.npz")
    assert spec_maps["flat_rp"].shape == tuple(spec_truth["final_shape_yx"])
