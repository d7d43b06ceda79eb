"""Read a calibrated image for ``pylcogt solve``: this project's products or any reduced FITS.

- A product of this project, or any file with a ``SCI`` image extension, is read as written
  (:func:`pylcogt.io.products.read_product`): ``ERR`` and ``BPM`` when present; without a
  ``BPM`` every pixel is good.
- Any other FITS file: the first HDU holding a 2-D image is ``SCI`` (float32), no ``ERR``, an
  empty ``BPM``. Its header, merged over the primary header's cards it lacks (observatory files
  often keep RA/DEC there), is the frame's.

The image must be calibrated (sky background in counts, not raw ADU with overscan); the caller
checks the header for what astrometry needs (RA, DEC, PIXSCALE).

Pixels that are not finite are flagged ``BAD`` (and set to 0) in either case. A file that cannot
be used (not FITS, truncated, an unparsable header, no 2-D image) is an
:class:`~pylcogt.errors.UnprocessableFrameError` with a one-line reason naming the file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from pylcogt.errors import UnprocessableFrameError, one_line
from pylcogt.frame import Frame, PixelFlag
from pylcogt.io.products import read_product
from pylcogt.io.scan import scan_fits

__all__ = ["read_calibrated_image"]

_SKIP = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "XTENSION", "PCOUNT",
         "GCOUNT", "EXTNAME", "BSCALE", "BZERO", "ZIMAGE", "ZBITPIX", "ZNAXIS"}  # fmt: skip


def read_calibrated_image(path: Path) -> Frame:
    """The image in ``path`` as a :class:`Frame` (see module doc); unit from ``BUNIT``."""
    path = Path(path)
    try:
        scan_fits(path)  # empty, truncated or not FITS: UnprocessableFrameError naming the file
        with fits.open(path, memmap=False) as hdul:
            if "SCI" in hdul:
                frame = read_product(path)
                unit = frame.unit.strip().lower() or "electron"  # as for other images
                return _flag_non_finite(dataclasses.replace(frame, unit=unit))
            primary = hdul[0].header
            for hdu in hdul:
                if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
                    data = np.asarray(hdu.data, dtype=np.float32)
                    header = hdu.header.copy()
                    break
            else:
                msg = f"{path}: no 2-D image in any HDU; give a calibrated image"
                raise UnprocessableFrameError(msg, path=str(path))
    except (OSError, ValueError, TypeError, KeyError, IndexError, VerifyError) as exc:
        msg = f"{path}: cannot be read as FITS ({one_line(exc)}); is it a complete FITS file?"
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
    unit = str(header.get("BUNIT", "electron")).strip().lower() or "electron"
    frame = Frame(sci=sci, err=None, bpm=np.zeros(sci.shape, dtype=np.uint8), header=header,
                  unit=unit, name=path.name)  # fmt: skip
    return _flag_non_finite(frame)


def _flag_non_finite(frame: Frame) -> Frame:
    """``frame`` with its pixels that are not finite flagged BAD and set to 0."""
    bad = ~np.isfinite(frame.sci)
    if not bad.any():
        return frame
    sci = np.where(bad, 0, frame.sci).astype(np.float32)
    bpm = (frame.bpm | np.where(bad, PixelFlag.BAD, 0)).astype(np.uint8)
    return dataclasses.replace(frame, sci=sci, bpm=bpm)
