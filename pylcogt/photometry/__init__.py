"""Photometric calibration: the zero point (and colour term) of a frame against a reference
catalogue (Pan-STARRS 1 and the like), the ``MAG``/``MAGERR`` columns of its ``CAT``.

Science chain, per frame with a solved WCS::

    cone = field_cone(catalog)                       # None: no RA/DEC
    stars = reference_stars_near(source, *cone) if cone else None
    result = calibrate_photometry(catalog, header, stars, config)
    result.update_header(header); catalog = result.catalog

``source``: a FITS/CSV file path (read once, cached) or the registry (Session, sessionmaker or
Engine; catalogues loaded by ``pylcogt refcat load``). See :mod:`.zeropoint` for the header
cards and conventions, :mod:`.refcat` for catalogue columns and the B/V/R/I transformation.
"""

from __future__ import annotations

from pylcogt.photometry.config import PhotometryConfig
from pylcogt.photometry.refcat import (
    ReferenceStars,
    band_magnitudes,
    load_reference_file,
    reference_stars_near,
    stars_from_table,
)
from pylcogt.photometry.zeropoint import (
    CALIBRATED,
    PHOTOMETRY_KEYWORDS,
    QC_STATUSES,
    PhotometryResult,
    calibrate_photometry,
    field_cone,
)

__all__ = [
    "PhotometryConfig",
    "ReferenceStars",
    "band_magnitudes",
    "load_reference_file",
    "reference_stars_near",
    "stars_from_table",
    "CALIBRATED",
    "PHOTOMETRY_KEYWORDS",
    "QC_STATUSES",
    "PhotometryResult",
    "calibrate_photometry",
    "field_cone",
]
