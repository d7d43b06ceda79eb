"""Read a calibrated image for ``pylcogt solve``: this project's products or any reduced FITS.

- A product of this project (``SCI`` extension, with ``ERR`` and ``BPM`` when present) is read
  as written (:func:`pylcogt.io.products.read_product`).
- Any other FITS file: the first HDU holding a 2-D image is ``SCI`` (float32), no ``ERR``, an
  empty ``BPM``; pixels that are not finite are flagged ``BAD``. Its header, merged over the
  primary header's cards it lacks (observatory files often keep RA/DEC there), is the frame's.

The image must be calibrated (sky background in counts, not raw ADU with overscan); the caller
checks the header for what astrometry needs (RA, DEC, PIXSCALE).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import Frame, PixelFlag
from pylcogt.io.products import read_product
from pylcogt.io.scan import scan_fits

__all__ = ["read_calibrated_image"]

_SKIP = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "XTENSION", "PCOUNT",
         "GCOUNT", "EXTNAME", "BSCALE", "BZERO", "ZIMAGE", "ZBITPIX", "ZNAXIS"}  # fmt: skip


def read_calibrated_image(path: Path) -> Frame:
    """The image in ``path`` as a :class:`Frame` (see module doc); unit from ``BUNIT``."""
    path = Path(path)
    scan_fits(path)  # empty, truncated or not FITS: UnprocessableFrameError naming the file
    try:
        with fits.open(path, memmap=False) as hdul:
            names = {hdu.name for hdu in hdul}
            if "SCI" in names:
                return read_product(path)
            primary = hdul[0].header
            for hdu in hdul:
                if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
                    data = np.asarray(hdu.data, dtype=np.float32)
                    header = hdu.header.copy()
                    break
            else:
                msg = f"{path}: no 2-D image in any HDU; give a calibrated image"
                raise UnprocessableFrameError(msg, path=str(path))
    except (OSError, ValueError, TypeError) as exc:
        msg = f"{path}: cannot be read as FITS ({exc}); is it a complete FITS file?"
        raise UnprocessableFrameError(msg, path=str(path)) from None
    for card in primary.cards:
        if card.keyword not in _SKIP and card.keyword not in header and card.keyword:
            if card.keyword in ("COMMENT", "HISTORY"):
                continue
            header.append(card)
    for key in list(header):
        if key in _SKIP:
            del header[key]
    sci = np.ascontiguousarray(data)
    bpm = np.where(np.isfinite(sci), 0, PixelFlag.BAD).astype(np.uint8)
    if bpm.any():
        sci = np.where(bpm == 0, sci, 0).astype(np.float32)
    unit = str(header.get("BUNIT", "electron")).strip().lower() or "electron"
    return Frame(sci=sci, err=None, bpm=bpm, header=header, unit=unit, name=path.name)
