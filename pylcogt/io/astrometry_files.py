"""The FITS files exchanged with astrometry.net: the source list given to ``solve-field``, the
``.wcs`` header it writes, ``query-starkd``'s star table and the primary header of an index file.

Pixel positions are in the FITS convention (1-indexed; the centre of the first pixel is 1.0),
which is also astrometry.net's convention for xylists. Sky positions are ICRS degrees.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy.io import fits

__all__ = ["IndexHeader", "write_xylist", "read_wcs_header", "read_star_table", "read_index_header"]

# cards of the .wcs file that describe the file or the image, not the WCS
_NOT_WCS = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "DATE", "IMAGEW", "IMAGEH", "COMMENT", "HISTORY"}
# tag-along columns that hold a magnitude, by preference (Tycho-2, Gaia, 2MASS index series)
_MAG_COLUMNS = ("MAG_VT", "MAG", "PHOT_G_MEAN_MAG", "G", "MAG_BT", "J", "H", "K")


class IndexHeader(NamedTuple):
    """What pylcogt needs from an index file's primary header.

    ``healpix`` is -1 for an all-sky index; otherwise the tile number in astrometry.net's
    ``xy`` healpix scheme at ``nside``. ``scale_*_arcmin`` is the range of quad sizes.
    """

    index_id: int
    healpix: int
    nside: int
    scale_low_arcmin: float
    scale_high_arcmin: float


def write_xylist(path: Path, x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> None:
    """A source list for ``solve-field``: a binary table with float64 columns ``X``, ``Y``
    (1-indexed FITS pixels) and ``FLUX``, in the given row order."""
    columns = [
        fits.Column(name="X", format="D", array=np.asarray(x, dtype=np.float64)),
        fits.Column(name="Y", format="D", array=np.asarray(y, dtype=np.float64)),
        fits.Column(name="FLUX", format="D", array=np.asarray(flux, dtype=np.float64)),
    ]
    table = fits.BinTableHDU.from_columns(columns, name="SOURCES")
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(Path(path), overwrite=True)


def read_wcs_header(path: Path) -> fits.Header:
    """The WCS cards of the ``.wcs`` file ``solve-field`` wrote (TAN or TAN-SIP), without the
    file-structure and image-size cards (with them astropy's WCS warns about a 0-axis image)."""
    header = fits.getheader(Path(path), 0)
    out = fits.Header()
    for card in header.cards:
        if card.keyword not in _NOT_WCS and card.keyword:
            out.append(card, end=True)
    return out


def read_star_table(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ra, dec, mag)`` from a ``query-starkd -o`` table, degrees and magnitudes (NaN when the
    index carries no magnitude column). float64 from the table's own float64 columns: the ASCII
    listing ``query-starkd`` prints has only about three decimals."""
    with fits.open(Path(path)) as hdul:
        data = hdul[1].data
        names = {name.upper(): name for name in data.columns.names}
        ra = np.array(data[names["RA"]], dtype=np.float64)
        dec = np.array(data[names["DEC"]], dtype=np.float64)
        mag_name = next((names[c] for c in _MAG_COLUMNS if c in names), None)
        if mag_name is None:
            mag = np.full(ra.shape, np.nan)
        else:
            mag = np.array(data[mag_name], dtype=np.float64)
    return ra, dec, mag


def read_index_header(path: Path) -> IndexHeader | None:
    """The coverage and scale of an astrometry.net index file; None if ``path`` is a FITS file
    but not an index (no ``INDEXID``) or not FITS at all."""
    try:
        header = fits.getheader(Path(path), 0)
    except (OSError, ValueError):
        return None
    if "INDEXID" not in header:
        return None
    rad_to_arcmin = 180.0 / np.pi * 60.0
    healpix = int(header.get("HEALPIX", -1))
    if header.get("ALLSKY", False):
        healpix = -1
    return IndexHeader(
        index_id=int(header["INDEXID"]),
        healpix=healpix,
        nside=int(header.get("HPNSIDE", 1) or 1),
        scale_low_arcmin=float(header.get("SCALE_L", 0.0)) * rad_to_arcmin,
        scale_high_arcmin=float(header.get("SCALE_U", 0.0)) * rad_to_arcmin,
    )
