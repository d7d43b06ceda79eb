"""Header validation against real LCO headers of every camera family, and the real frame."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from astropy.io import fits

from pylcogt.db.models import CameraFamily
from pylcogt.errors import UnprocessableFrameError
from pylcogt.io.raw_header import MAX_KEY_CHARS, metadata_from_headers, read_frame_metadata
from pylcogt.io.scan import scan_fits


def _headers_from_text(path: Path) -> tuple[list[fits.Header], list[tuple[int, ...]]]:
    """Split a header dump ('===== HDU n ...' lines between 80-character cards) into headers."""
    blocks: list[list[str]] = [[]]
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("====="):
            if blocks[-1]:
                blocks.append([])
            continue
        blocks[-1].append(line.ljust(80)[:80])
    headers, shapes = [], []
    for cards in blocks:
        header = fits.Header.fromstring("".join(c for c in cards if c.strip()), sep="")
        headers.append(header)
        naxis = int(header.get("ZNAXIS", header.get("NAXIS", 0)))
        prefix = "ZNAXIS" if "ZNAXIS" in header else "NAXIS"
        shape = tuple(int(header.get(f"{prefix}{i}", 0)) for i in range(naxis, 0, -1))
        if (
            shape
            and all(shape)
            and header.get("XTENSION", "IMAGE").strip() != "BINTABLE"
            or "ZNAXIS" in header
        ):
            shapes.append(shape)
    return headers, shapes


EXPECTED = {
    # file: (obstype, camera, family, binning, dayobs, exptime, filter)
    "coj1m011-fl08-20151216-0049-b00.fits.fz.header.txt": (
        "BIAS",
        "fl08",
        CameraFamily.SINISTRO,
        "2x2",
        "20151216",
        0.0,
        "rp",
    ),
    "coj1m011-fl08-20151216-0083-d00.fits.fz.header.txt": (
        "DARK",
        "fl08",
        CameraFamily.SINISTRO,
        None,
        "20151216",
        None,
        None,
    ),
    "cpt1m012-fl10-20151216-0044-f00.fits.fz.header.txt": (
        "SKYFLAT",
        "fl10",
        CameraFamily.SINISTRO,
        None,
        None,
        None,
        None,
    ),
    "cpt1m012-fl10-20151216-0073-e00.fits.fz.header.txt": (
        "EXPOSE",
        "fl10",
        CameraFamily.SINISTRO,
        None,
        None,
        None,
        None,
    ),
    "cpt1m012-fl10-20151216-0075-s00.fits.fz.header.txt": (
        "STANDARD",
        "fl10",
        CameraFamily.SINISTRO,
        None,
        None,
        None,
        None,
    ),
    "lsc1m005-kb78-20151109-0179-e90.fits.header.txt": (
        "EXPOSE",
        "kb78",
        CameraFamily.SBIG,
        "2x2",
        "20151109",
        40.0,
        "V",
    ),
    "coj0m403-kb98-20170816-0395-e91.fits.fz.header.txt": (
        "EXPOSE",
        "kb98",
        CameraFamily.SBIG,
        "2x2",
        "20170816",
        12.291,
        "rp",
    ),
    "bias_kb70_20151221_bin2x2.fits.header.txt": (
        "BIAS",
        "kb70",
        CameraFamily.SBIG,
        "2x2",
        "20151221",
        0.0,
        "Y",
    ),
    "ogg2m001-fs02-20150827-0106-e91_ldac.fits.LDAC_IMHEAD.header.txt": (
        "EXPOSE",
        "fs02",
        CameraFamily.SPECTRAL,
        "2x2",
        "20150827",
        30.0,
        "gp",
    ),
    "elp1m008-fa05-20211007-0042-e00.fits.header.txt": (
        "EXPOSE",
        "fa05",
        CameraFamily.SINISTRO,
        "2x2",
        "20211007",
        94.975,
        "w",
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_headers(real_data: Path, name: str) -> None:
    headers, shapes = _headers_from_text(real_data / "headers" / name)
    meta = metadata_from_headers(Path(name), headers, shapes)
    obstype, camera, family, binning, dayobs, exptime, filt = EXPECTED[name]
    assert (meta.obstype, meta.camera, meta.family) == (obstype, camera, family)
    if binning:
        assert meta.binning == binning
        assert meta.dayobs == dt.datetime.strptime(dayobs, "%Y%m%d").date()
        assert meta.exptime_s == pytest.approx(exptime)
        assert meta.filter_name == filt
    assert meta.site and meta.enclosure and meta.telescope
    assert meta.n_amplifiers == (4 if family is CameraFamily.SINISTRO else 1)


def test_real_guide_frame_is_rejected(real_data: Path) -> None:
    headers, shapes = _headers_from_text(
        real_data / "headers" / "sqa0m801-kb35-20151208-0021-g00.fits.header.txt"
    )
    with pytest.raises(UnprocessableFrameError, match="OBSTYPE 'GUIDE' is not reduced"):
        metadata_from_headers(Path("sqa0m801-kb35-20151208-0021-g00.fits"), headers, shapes)


def test_real_sinistro_frame(real_data: Path) -> None:
    meta = read_frame_metadata(scan_fits(real_data / "elp1m008-fa05-20211007-0042-e00.fits"))
    assert (meta.site, meta.enclosure, meta.telescope, meta.telescope_name) == (
        "elp",
        "doma",
        "1m0a",
        "1m0-08",
    )
    assert (meta.camera, meta.family, meta.n_amplifiers) == ("fa05", CameraFamily.SINISTRO, 4)
    assert (meta.binning, meta.readout_mode) == ("2x2", "central_2k_2x2")
    assert meta.dateobs == dt.datetime(2021, 10, 8, 1, 55, 17, 144000)
    assert meta.dayobs == dt.date(2021, 10, 7)
    assert meta.exptime_s == pytest.approx(94.975)
    assert meta.latitude_deg == pytest.approx(30.679833)


# --- values the registry can store, and the exposure a file holds (issue 14) ---------------
_CARDS = {"OBSTYPE": "EXPOSE", "SITEID": "lsc", "ENCID": "doma", "TELID": "1m0a",
          "INSTRUME": "kb78", "DATE-OBS": "2026-11-28T21:00:01", "DAY-OBS": "20261128",
          "EXPTIME": 30.0, "FILTER": "rp", "CCDSUM": "2 2", "DATASEC": "[1:64,1:64]"}  # fmt: skip


def _meta(**cards):
    """Metadata of a header given as a mapping: values no astropy header can hold (control
    characters) reach the checks the way another caller's header could bring them."""
    header = {**_CARDS, **{k.replace("_", "-"): v for k, v in cards.items()}}
    header = {k: v for k, v in header.items() if v is not None}
    return metadata_from_headers(Path("x-e00.fits"), [header], [(64, 64)])


def test_long_free_text_is_kept_and_long_keys_are_refused() -> None:
    meta = _meta(OBJECT="o" * 5000, TELESCOP="t" * 300, FILTER="f" * MAX_KEY_CHARS)
    assert (len(meta.object_name), len(meta.telescope_name)) == (5000, 300)
    assert meta.filter_name == "f" * MAX_KEY_CHARS
    with pytest.raises(UnprocessableFrameError, match=r"FILTER is 129 characters long") as exc:
        _meta(FILTER="f" * (MAX_KEY_CHARS + 1))
    assert exc.value.keyword == "FILTER"


@pytest.mark.parametrize("keyword", ["FILTER", "INSTRUME", "SITEID", "CONFMODE"])
def test_control_characters_in_a_key_are_refused(keyword: str) -> None:
    with pytest.raises(UnprocessableFrameError, match=rf"{keyword} contains the control "
                                                      r"character '\\x00'") as exc:  # fmt: skip
        _meta(**{keyword: "kb7\x008"})
    assert exc.value.keyword == keyword


def test_control_characters_in_free_text_are_replaced() -> None:
    meta = _meta(OBJECT="M31\x00\x07 core", SITE="Cerro\x1bTololo")
    assert meta.object_name == "M31\ufffd\ufffd core" and meta.site_name == "Cerro\ufffdTololo"


@pytest.mark.parametrize(
    ("cards", "keyword"),
    [({"EXPTIME": float("nan")}, "EXPTIME"), ({"EXPTIME": "inf"}, "EXPTIME"),
     ({"LONGITUD": float("-inf")}, "LONGITUD"), ({"HEIGHT": "NaN"}, "HEIGHT"),
     ({"GAIN": float("nan")}, "GAIN"), ({"RDNOISE": "-Infinity"}, "RDNOISE"),
     ({"SATURATE": float("inf")}, "SATURATE")],
)  # fmt: skip
def test_numbers_that_are_not_finite_are_refused(cards: dict, keyword: str) -> None:
    with pytest.raises(UnprocessableFrameError, match=f"{keyword} = .* is not a finite number"):
        _meta(**cards)


def test_gain_lists_and_numbers_pass() -> None:
    assert _meta(GAIN="[2.01, 1.99, 2.05, 2.02]", RDNOISE=7.5, SATURATE=0).exptime_s == 30.0


@pytest.mark.parametrize("ccdsum", ["0 0", "65 1", "99999 99999"])
def test_binning_out_of_range_is_refused(ccdsum: str) -> None:
    with pytest.raises(UnprocessableFrameError, match="is not a binning"):
        _meta(CCDSUM=ccdsum)


@pytest.mark.parametrize(
    ("cards", "exposure"),
    [({"FRAMENUM": 42}, "lsc/kb78/20261128/0042"),
     ({"FRAMENUM": 42.0}, "lsc/kb78/20261128/0042"),
     ({"FRAMENUM": "0395"}, "lsc/kb78/20261128/0395"),
     ({"FRAMENUM": 12345}, "lsc/kb78/20261128/12345"),
     ({"ORIGNAME": "lsc1m005-kb78-20261128-0179-e00.fits"}, "lsc/kb78/20261128/0179"),
     ({"ORIGNAME": "lsc1m005-kb78-20261127-0179-e00.fits"}, None),  # another night's name
     ({"ORIGNAME": "whatever.fits"}, None),
     ({}, None)],
)  # fmt: skip
def test_exposure_from_framenum_or_origname(cards: dict, exposure: str | None) -> None:
    assert _meta(**cards).exposure == exposure


@pytest.mark.parametrize("value", ["abc", -1, 1.5, True])
def test_a_malformed_framenum_is_refused(value) -> None:
    with pytest.raises(UnprocessableFrameError, match="FRAMENUM = .* is not a frame number"):
        _meta(FRAMENUM=value)


def test_real_headers_name_their_exposure(real_data: Path) -> None:
    name = "coj0m403-kb98-20170816-0395-e91.fits.fz.header.txt"
    headers, shapes = _headers_from_text(real_data / "headers" / name)
    assert metadata_from_headers(Path(name), headers, shapes).exposure == "coj/kb98/20170816/0395"
