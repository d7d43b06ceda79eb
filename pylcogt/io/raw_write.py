"""Write raw frames the way the LCO instrument control system (and fpack) does.

Pixel data are uint16 and land on disk as BITPIX=16 with BZERO=32768. ``compress``:
``"none"`` plain ``.fits``; ``"fz"`` tile-compressed (lossless RICE_1), empty primary HDU + the
image in a compressed extension (single-HDU cameras) or header-only primary + compressed ``SCI``
extensions (Sinistro), as fpack'd LCO frames; ``"gz"`` the ``.fits`` bytes gzipped (mtime 0, so
output is reproducible). Cards are ``(keyword, value, comment)``; over-long comments are cut.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

__all__ = ["COMPRESSIONS", "raw_suffix", "write_raw_single", "write_raw_mef"]

COMPRESSIONS = {"none": ".fits", "fz": ".fits.fz", "gz": ".fits.gz"}
Card = tuple[str, object, str]


def raw_suffix(compress: str) -> str:
    """File suffix for a compression mode; ValueError for an unknown mode."""
    try:
        return COMPRESSIONS[compress]
    except KeyError:
        msg = f"compress must be one of {sorted(COMPRESSIONS)}, got {compress!r}"
        raise ValueError(msg) from None


def _header(cards: Iterable[Card]) -> fits.Header:
    header = fits.Header()
    for key, value, comment in cards:
        # value field: at least up to column 30, then ' / ' and the comment
        room = 80 - max(len(fits.Card(key, value).image.rstrip()), 30) - 3
        header.append(fits.Card(key, value, comment[: max(room, 0)]), end=True)
    return header


def _check_uint16(data: np.ndarray) -> np.ndarray:
    if data.dtype != np.uint16:
        msg = f"raw pixel data must be uint16, got {data.dtype}"
        raise TypeError(msg)
    return data


def _write(hdus: fits.HDUList, path: Path, compress: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress == "gz":
        buffer = io.BytesIO()
        hdus.writeto(buffer)
        with (
            open(path, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        ):
            gz.write(buffer.getvalue())
    else:
        hdus.writeto(path, overwrite=True)


def write_raw_single(
    path: str | os.PathLike, data: np.ndarray, cards: Sequence[Card], compress: str = "none"
) -> Path:
    """One-image raw frame (SBIG, Spectral). ``path`` must carry the suffix of ``compress``."""
    raw_suffix(compress)
    path = Path(path)
    header = _header(cards)
    data = _check_uint16(data)
    if compress == "fz":
        hdus = fits.HDUList(
            [fits.PrimaryHDU(), fits.CompImageHDU(data, header=header, compression_type="RICE_1")]
        )
    else:
        hdus = fits.HDUList([fits.PrimaryHDU(data, header=header)])
    _write(hdus, path, compress)
    return path


def write_raw_mef(
    path: str | os.PathLike,
    primary_cards: Sequence[Card],
    amps: Sequence[np.ndarray],
    amp_cards: Sequence[Sequence[Card]],
    compress: str = "none",
) -> Path:
    """Sinistro MEF: header-only primary + one ``SCI`` image extension per amplifier."""
    raw_suffix(compress)
    path = Path(path)
    hdus = fits.HDUList([fits.PrimaryHDU(header=_header(primary_cards))])
    for data, cards in zip(amps, amp_cards, strict=True):
        header = _header(cards)
        data = _check_uint16(data)
        if compress == "fz":
            hdus.append(
                fits.CompImageHDU(data, header=header, compression_type="RICE_1", name="SCI")
            )
        else:
            hdus.append(fits.ImageHDU(data, header=header, name="SCI"))
    _write(hdus, path, compress)
    return path
