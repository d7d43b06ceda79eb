"""Products: atomic writes, faithful read-back, and paths no header can escape."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import Frame, PixelFlag
from pylcogt.io import products
from pylcogt.io.products import read_product, write_product
from pylcogt.paths import master_path, product_path

NIGHT = dt.date(2026, 11, 28)


def _frame(seed: int = 3) -> Frame:
    rng = np.random.default_rng(seed)
    sci = rng.normal(1000.0, 10.0, (128, 96)).astype(np.float32)
    err = np.full(sci.shape, 10.0, np.float32)
    bpm = np.zeros(sci.shape, np.uint8)
    bpm[5, 7] = PixelFlag.SATURATED | PixelFlag.BAD
    header = fits.Header(
        [("OBSTYPE", "EXPOSE"), ("NAXIS1", 4), ("BZERO", 32768), ("L1IDBIAS", "b.fits")]
    )
    return Frame(sci=sci, err=err, bpm=bpm, header=header, unit="electron", name="x")


def test_round_trip_keeps_values_noise_and_flags(tmp_path: Path) -> None:
    frame = _frame()
    path = tmp_path / "p.fits.fz"
    checksum = write_product(path, frame)
    assert len(checksum) == 64
    back = read_product(path)
    assert back.unit == "electron"
    np.testing.assert_array_equal(back.bpm, frame.bpm)
    diff = back.sci - frame.sci
    assert np.abs(diff).max() < 10.0 / 16 * 1.01  # one quantisation step at most
    assert np.std(back.sci) == pytest.approx(np.std(frame.sci), rel=0.01)  # noise preserved
    assert abs(diff.mean()) < 0.05  # dithered: no bias
    np.testing.assert_allclose(back.err, 10.0, atol=10.0 / 32)  # absolute step
    assert back.header["L1IDBIAS"] == "b.fits"
    assert "BZERO" not in back.header  # structural cards of the raw never leak


def test_failed_write_leaves_the_old_product(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.fits.fz"
    write_product(path, _frame(1))
    before = path.read_bytes()

    def explode(self, fileobj, **kwargs):
        fileobj.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(products.fits.HDUList, "writeto", explode)
    with pytest.raises(OSError, match="disk full"):
        write_product(path, _frame(2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.fits.fz"]  # no temporary left behind


def test_paths_follow_the_layout(tmp_path: Path) -> None:
    p = product_path(
        tmp_path,
        site="lsc",
        camera="fa15",
        dayobs=NIGHT,
        raw_filename="lsc1m009-fa15-20261128-0042-e00.fits.fz",
    )
    assert (
        p
        == tmp_path.resolve()
        / "lsc/fa15/20261128/processed/lsc1m009-fa15-20261128-0042-e91.fits.fz"
    )
    m = master_path(
        tmp_path,
        site="lsc",
        camera="fa15",
        dayobs=NIGHT,
        obstype="SKYFLAT",
        binning="1x1",
        readout_mode="full_frame",
        filter_name="rp",
    )
    assert m.name == "fa15-skyflat-20261128-bin1x1-full_frame-rp.fits.fz"
    assert m.parent == tmp_path.resolve() / "lsc/fa15/20261128/masters"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("site", "../../etc"),
        ("camera", "fa15/../../x"),
        ("raw_filename", "..e00.fits"),
        ("site", "/abs"),
        ("camera", "a b"),
        ("site", ""),
        ("camera", "fa\x0015"),
    ],
)
def test_hostile_header_values_are_refused(tmp_path: Path, field: str, value: str) -> None:
    kwargs = {"site": "lsc", "camera": "fa15", "dayobs": NIGHT, "raw_filename": "a-e00.fits"}
    kwargs[field] = value
    with pytest.raises(UnprocessableFrameError, match="cannot be used in a file name"):
        product_path(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_hostile_filter_in_master_path(tmp_path: Path) -> None:
    with pytest.raises(UnprocessableFrameError, match="FILTER"):
        master_path(
            tmp_path,
            site="lsc",
            camera="fa15",
            dayobs=NIGHT,
            obstype="SKYFLAT",
            binning="1x1",
            filter_name="../../../tmp/evil",
        )


def test_long_cards_are_shortened_without_warnings(tmp_path: Path) -> None:
    frame = _frame()
    frame.header["L1IDFLAT"] = (
        "fa15-skyflat-20261128-bin1x1-full_frame-rp.fits.fz",
        "master flat used",
    )
    frame.header["ORIGNAME"] = ("x" * 100, "a long string value keeps its CONTINUE cards")
    frame.header["L1XTALK"] = ("header", "crosstalk removed: exact 4x4 inverse, coeffs from")
    path = tmp_path / "long.fits.fz"
    write_product(path, frame)  # filterwarnings=error: a truncation warning would fail here
    back = read_product(path)
    assert back.header["L1IDFLAT"] == "fa15-skyflat-20261128-bin1x1-full_frame-rp.fits.fz"
    assert back.header.comments["L1IDFLAT"].startswith("master")
    assert back.header["ORIGNAME"] == "x" * 100


def test_err_keeps_its_relative_precision(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    frame = _frame()
    err = np.sqrt(7.5**2 + rng.uniform(0, 5000, frame.shape)).astype(np.float32)
    frame = Frame(sci=frame.sci, err=err, bpm=frame.bpm, header=frame.header, unit="electron")
    write_product(tmp_path / "e.fits.fz", frame)
    back = read_product(tmp_path / "e.fits.fz")
    relative = (back.err - err) / err
    assert np.sqrt(np.mean(relative**2)) < 0.005
    assert np.abs(relative).max() < 0.025


def test_each_master_is_read_once_per_process(tmp_path: Path, monkeypatch) -> None:
    """The per-process master cache: same id and checksum -> one read; another master -> read;
    the file's sha256 is checked against the registry's on every read."""
    from types import SimpleNamespace

    from pylcogt.calibrations import build as build_module
    from pylcogt.db.models import CalibrationStatus
    from pylcogt.io.scan import sha256_file

    def master(master_id: int, path: Path) -> SimpleNamespace:
        return SimpleNamespace(id=master_id, checksum=sha256_file(path), path=str(path),
                               calibration_status=CalibrationStatus.PROVISIONAL)  # fmt: skip

    path, other = tmp_path / "m.fits.fz", tmp_path / "m-v2.fits.fz"
    write_product(path, _frame())
    write_product(other, _frame(seed=5))
    reads = []
    real = build_module.read_product
    monkeypatch.setattr(build_module, "read_product", lambda p: reads.append(p) or real(p))
    monkeypatch.setattr(build_module, "_master_cache", type(build_module._master_cache)())
    first = build_module.load_master(master(7, path), fallback_later=False)
    again = build_module.load_master(master(7, path), fallback_later=True)
    assert len(reads) == 1 and again.frame is first.frame and again.fallback_later
    assert first.checksum == sha256_file(path) and first.calibration_status == "provisional"
    build_module.load_master(master(8, other), fallback_later=False)
    assert len(reads) == 2
    for i in range(build_module.MASTER_CACHE_SIZE + 1):
        build_module.load_master(master(100 + i, path), fallback_later=False)
    assert len(build_module._master_cache) == build_module.MASTER_CACHE_SIZE
    # a master file changed on disk is not used: provenance would name content that was not
    changed = master(200, path)
    changed.checksum = "0" * 64
    with pytest.raises(build_module.MasterIntegrityError, match="changed on disk.*mark-bad 200"):
        build_module.load_master(changed, fallback_later=False)


def test_the_same_frame_gives_the_same_bytes(tmp_path: Path) -> None:
    """Dithering seeded from the tiles, not the clock: a product can be reproduced bit for bit
    (``reduce --as-of``); with astropy's default clock seed the quantised values would differ."""
    import time

    frame = _frame()
    first = write_product(tmp_path / "a.fits.fz", frame)
    time.sleep(1.1)  # the clock seed changes every second
    assert write_product(tmp_path / "b.fits.fz", frame) == first
    a, b = read_product(tmp_path / "a.fits.fz"), read_product(tmp_path / "b.fits.fz")
    assert np.array_equal(a.sci, b.sci) and np.array_equal(a.err, b.err)


def test_a_sci_image_without_bpm_is_all_good_and_bad_shapes_are_refused(tmp_path: Path) -> None:
    sci = np.ones((16, 8), np.float32)
    path = tmp_path / "sci-only.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, name="SCI")]).writeto(path)
    frame = read_product(path)
    assert frame.bpm.shape == (16, 8) and not frame.bpm.any() and frame.err is None
    for name, data, why in [
        ("BPM", np.zeros((8, 8), np.uint8), "BPM extension holds shape"),
        ("ERR", np.ones(16, np.float32), "ERR extension holds shape"),
    ]:
        bad = tmp_path / f"bad-{name}.fits"
        extra = fits.ImageHDU(data, name=name)
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, name="SCI"), extra]).writeto(bad)
        with pytest.raises(UnprocessableFrameError, match=f"bad-{name}.fits: its {why}"):
            read_product(bad)
    cube = tmp_path / "cube.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((2, 3, 4)), name="SCI")]).writeto(cube)
    with pytest.raises(UnprocessableFrameError, match=r"SCI extension holds shape \(2, 3, 4\)"):
        read_product(cube)


def test_a_truncated_or_garbled_mask_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "mask.fits"
    fits.PrimaryHDU(np.zeros((64, 64), np.uint8)).writeto(good)
    cut = tmp_path / "cut.fits"
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(UnprocessableFrameError, match="cut.fits is truncated"):
        products.read_mask(cut)
    garbled = tmp_path / "garbled.fits"
    data = bytearray(good.read_bytes())
    at = data.index(b"NAXIS1")
    data[at : at + 80] = b"NAXIS1  = garbage".ljust(80)
    garbled.write_bytes(bytes(data))
    with pytest.raises(UnprocessableFrameError, match="garbled.fits: unparsable FITS header"):
        products.read_mask(garbled)
