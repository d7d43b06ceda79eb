"""Header validation against real LCO headers of every camera family, and the real frame."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from astropy.io import fits

from pylcogt.db.models import CameraFamily
from pylcogt.errors import UnprocessableFrameError
from pylcogt.io.raw_header import metadata_from_headers, read_frame_metadata
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
