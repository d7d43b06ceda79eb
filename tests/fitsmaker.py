"""Tiny raw frames with chosen headers, for ingest tests (independent of the simulator)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
from astropy.io import fits

BASE_CARDS = {
    "OBSTYPE": "BIAS",
    "SITEID": "lsc",
    "ENCID": "doma",
    "TELID": "1m0a",
    "TELESCOP": "1m0-05",
    "INSTRUME": "kb78",
    "DATE-OBS": "2026-11-28T21:00:01.123",
    "DAY-OBS": "20261128",
    "EXPTIME": 0.0,
    "FILTER": "air",
    "CCDSUM": "2 2",
    "CONFMODE": "N/A",
    "GAIN": 1.4,
    "RDNOISE": 13.5,
    "SATURATE": 46000.0,
    "BIASSEC": "UNKNOWN",
    "DATASEC": "[1:64,1:64]",
    "TRIMSEC": "[3:62,3:62]",
    "LATITUDE": -30.1673,
    "LONGITUD": -70.8049,
    "HEIGHT": 2201.0,
}


def write_frame(
    path: Path,
    *,
    drop: tuple[str, ...] = (),
    shape: tuple[int, int] = (64, 64),
    value: int = 1000,
    compress: str = "none",
    mef: bool = False,
    **cards,
) -> Path:
    """Write a uint16 raw frame; ``cards`` override BASE_CARDS (``DATE_OBS`` for DATE-OBS)."""
    header_cards = dict(BASE_CARDS)
    header_cards.update(
        {k.replace("_", "-") if k in ("DATE_OBS", "DAY_OBS") else k: v for k, v in cards.items()}
    )
    for key in drop:
        header_cards.pop(key, None)
    data = np.full(shape, value, dtype=np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mef:
        primary = fits.PrimaryHDU()
        primary.header.update(header_cards)
        amps = [fits.ImageHDU(data + i, name="SCI") for i in range(4)]
        hdul = fits.HDUList([primary, *amps])
    elif compress == "fz":
        comp = fits.CompImageHDU(data, compression_type="RICE_1")
        comp.header.update(header_cards)
        hdul = fits.HDUList([fits.PrimaryHDU(), comp])
    else:
        primary = fits.PrimaryHDU(data)
        primary.header.update(header_cards)
        hdul = fits.HDUList([primary])
    if compress == "gz":
        plain = path.with_suffix("")  # x.fits.gz -> x.fits
        hdul.writeto(plain, overwrite=True)
        with open(plain, "rb") as src, gzip.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        plain.unlink()
    else:
        hdul.writeto(path, overwrite=True)
    return path


def replace_header_bytes(path: Path, old: bytes, new: bytes) -> Path:
    """Replace ``old`` by ``new`` (same length) once in the file's bytes: header values astropy
    refuses to write (NUL, control characters, non-ASCII), written anyway."""
    if len(old) != len(new):
        raise ValueError(f"{old!r} and {new!r} differ in length")
    data = path.read_bytes()
    if data.count(old) != 1:
        raise ValueError(f"{old!r} occurs {data.count(old)} times in {path.name}")
    path.write_bytes(data.replace(old, new))
    return path
