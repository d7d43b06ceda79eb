"""The numbers of the quality-control page, from in-memory frames and catalogues (no I/O).

Conventions: images are numpy ``(rows, columns)``, 0-indexed; statistics are over the *good*
pixels (BPM 0, finite), in the frame's own unit (electrons for a bias, electrons per second for a
dark, dimensionless for a flat). ``rstd`` is the robust standard deviation, 1.4826 x MAD, as in
:mod:`pylcogt.stats`.

- :func:`image_stats`: median, 3.5-rstd clipped mean, rstd, the fraction of flagged pixels (per
  BPM bit), and the pixels more than 5 rstd from the median (hot or cold).
- :func:`compare_masters`: a master against the previous one of the same kind. Bias and dark
  are compared by difference, flats by ratio. ``z_rstd`` is the rstd of the difference divided
  by its expected 1-sigma noise (both masters' ERR in quadrature): near 1 when the two agree
  within their noise, larger when the detector changed.
- :func:`astrometric_residuals`: on-sky residuals (arcsec) of the WCS fit's stars, from the
  catalogue's ``X, Y`` through the product's WCS to ``REF_RA, REF_DEC``.
- :func:`profiles`: median row and column profiles.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning

from pylcogt.frame import Frame, PixelFlag
from pylcogt.stats import RSTD_PER_MAD, sigma_clipped_mean

__all__ = [
    "OUTLIER_RSTD",
    "ImageStats",
    "Comparison",
    "Residuals",
    "good_pixels",
    "flag_counts",
    "image_stats",
    "compare_masters",
    "profiles",
    "astrometric_residuals",
]

#: Pixels further than this many rstd from the median are counted as outliers.
OUTLIER_RSTD = 5.0


def good_pixels(frame: Frame) -> np.ndarray:
    """Boolean image: BPM 0 and a finite ``sci``."""
    return (frame.bpm == 0) & np.isfinite(frame.sci)


@dataclass(frozen=True)
class ImageStats:
    """Summary of one image over its good pixels (unit: ``unit``). ``flagged`` counts pixels
    per BPM bit name; ``outliers`` are good pixels beyond :data:`OUTLIER_RSTD` rstd of the
    median; ``median_err`` is the median of ERR (NaN without ERR)."""

    unit: str
    n_pixels: int
    n_good: int
    median: float
    clipped_mean: float
    rstd: float
    median_err: float
    p01: float
    p99: float
    outliers: int
    flagged: dict[str, int]

    def as_dict(self) -> dict:
        return asdict(self)


def flag_counts(bpm: np.ndarray) -> dict[str, int]:
    """Pixels carrying each :class:`~pylcogt.frame.PixelFlag` bit (a pixel may count twice)."""
    return {flag.name.lower(): int(np.count_nonzero(bpm & np.uint8(flag))) for flag in PixelFlag}


def image_stats(frame: Frame) -> ImageStats:
    """:class:`ImageStats` of ``frame`` (clipped mean at 3.5 rstd, one pass, as the notes'
    per-image levels)."""
    good = good_pixels(frame)
    values = frame.sci[good]
    flagged = flag_counts(frame.bpm)
    median_err = math.nan
    if frame.err is not None and values.size:
        median_err = float(np.median(frame.err[good]))
    if values.size == 0:
        nan = math.nan
        return ImageStats(frame.unit, int(frame.sci.size), 0, nan, nan, nan, median_err, nan,
                          nan, 0, flagged)  # fmt: skip
    clipped = sigma_clipped_mean(values, k=3.5)
    p01, p99 = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    outliers = int(np.count_nonzero(np.abs(values - clipped.median) > OUTLIER_RSTD * clipped.rstd))
    return ImageStats(
        unit=frame.unit,
        n_pixels=int(frame.sci.size),
        n_good=int(values.size),
        median=clipped.median,
        clipped_mean=clipped.mean,
        rstd=clipped.rstd,
        median_err=median_err,
        p01=p01,
        p99=p99,
        outliers=outliers,
        flagged=flagged,
    )


@dataclass(frozen=True)
class Comparison:
    """A master against the previous master of its kind.

    ``mode`` is 'difference' (``current - previous``, bias and dark, in ``unit``) or 'ratio'
    (``current / previous``, flats). ``median`` and ``rstd`` are those of that image over the
    pixels good in both; ``z_rstd`` the rstd of the difference over its expected noise
    (NaN without ERR); ``changed`` counts pixels whose difference is further than
    :data:`OUTLIER_RSTD` times the expected noise (or rstd, without ERR) from the median
    difference: local changes, not a change of the overall level. ``image`` is the compared
    image (NaN where either is flagged); ``z`` the normalised difference (None without ERR).
    """

    mode: str
    unit: str
    n_good: int
    median: float
    rstd: float
    z_rstd: float
    changed: int
    image: np.ndarray
    z: np.ndarray | None

    def as_dict(self) -> dict:
        return {key: getattr(self, key) for key in
                ("mode", "unit", "n_good", "median", "rstd", "z_rstd", "changed")}  # fmt: skip


def _median_rstd(values: np.ndarray) -> tuple[float, float]:
    """Median and rstd (1.4826 MAD) of a 1-D float array (which is reordered in place)."""
    median = float(np.median(values, overwrite_input=True))
    np.subtract(values, values.dtype.type(median), out=values)
    np.abs(values, out=values)
    return median, float(RSTD_PER_MAD * np.median(values, overwrite_input=True))


def compare_masters(current: Frame, previous: Frame, obstype: str) -> Comparison:
    """Compare two masters of one kind (same shape, else ValueError saying so).

    float32 throughout (the masters' own precision): a 4k pair costs ~0.5 GiB of temporaries.
    """
    if current.shape != previous.shape:
        msg = f"the masters' shapes differ ({current.shape} vs {previous.shape}): not comparable"
        raise ValueError(msg)
    good = good_pixels(current)
    good &= good_pixels(previous)
    cur, prev = current.sci, previous.sci
    ratio = obstype == "SKYFLAT"
    with np.errstate(divide="ignore", invalid="ignore"):
        if ratio:
            good &= prev > 0
            image = np.divide(cur, prev, dtype=np.float32)
        else:
            image = np.subtract(cur, prev, dtype=np.float32)
        z = None
        if current.err is not None and previous.err is not None:
            if ratio:  # error of a ratio: relative errors in quadrature, times the ratio
                variance = np.square(current.err / cur, dtype=np.float32)
                variance += np.square(previous.err / prev, dtype=np.float32)
                np.sqrt(variance, out=variance)
                variance *= np.abs(image)
                z = np.subtract(image, np.float32(1.0), dtype=np.float32)
            else:
                variance = np.square(current.err, dtype=np.float32)
                variance += np.square(previous.err, dtype=np.float32)
                np.sqrt(variance, out=variance)
                z = image.copy()
            sigma = variance
            z /= sigma
            z[~good | ~(sigma > 0)] = np.nan
            del sigma, variance
    image[~good] = np.nan
    n_good = int(np.count_nonzero(good))
    mode = "ratio" if ratio else "difference"
    unit = "" if ratio else current.unit
    if n_good == 0:
        nan = math.nan
        return Comparison(mode, unit, 0, nan, nan, nan, 0, image, z)
    median, rstd = _median_rstd(image[good])
    z_rstd = math.nan
    if z is not None:
        z_values = z[np.isfinite(z)]
        changed = 0
        if z_values.size:  # beyond 5 sigma of the typical (median) change: a uniform shift of
            # a dark's level or a flat's ratio is in the median, not in every pixel
            z_median = float(np.median(z_values))
            changed = int(np.count_nonzero(np.abs(z_values - np.float32(z_median))
                                           > OUTLIER_RSTD))  # fmt: skip
            z_rstd = _median_rstd(z_values)[1]
    else:
        changed = int(np.count_nonzero(np.abs(image[good] - median) > OUTLIER_RSTD * rstd))
    return Comparison(mode, unit, n_good, median, rstd, z_rstd, changed, image, z)


def profiles(image: np.ndarray, good: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Median of each row and of each column over the good pixels: ``(row_profile,
    column_profile)``, lengths ``(rows, columns)``; NaN for a row or column without one."""
    data = np.array(image, dtype=np.float32, copy=True)
    if good is not None:
        data[~good] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN is the answer
        return np.nanmedian(data, axis=1), np.nanmedian(data, axis=0)


@dataclass(frozen=True)
class Residuals:
    """On-sky residuals of the WCS fit's stars: ``x, y`` (1-indexed pixels), ``dx, dy``
    (arcsec, along +RA x cos(Dec) and +Dec: WCS position minus reference), ``rms`` (arcsec,
    rms of the on-sky distances, as ``WCSRMS``)."""

    x: np.ndarray
    y: np.ndarray
    dx: np.ndarray
    dy: np.ndarray

    @property
    def n(self) -> int:
        return int(self.x.size)

    @property
    def rms(self) -> float:
        if self.x.size == 0:
            return math.nan
        return float(np.sqrt(np.mean(self.dx**2 + self.dy**2)))


def astrometric_residuals(catalog: Table, header) -> Residuals | None:
    """Residuals of the stars that entered the WCS fit (rows with finite ``REF_RA``,
    ``REF_DEC``, ``X`` and ``Y``), or None when the product has no solved WCS or the catalogue
    lacks one of those columns."""
    columns = {"X", "Y", "REF_RA", "REF_DEC"}
    if header.get("ASTSTAT") != "solved" or not columns <= set(catalog.colnames):
        return None
    ref_ra = np.asarray(catalog["REF_RA"], dtype=np.float64)
    ref_dec = np.asarray(catalog["REF_DEC"], dtype=np.float64)
    x = np.asarray(catalog["X"], dtype=np.float64)
    y = np.asarray(catalog["Y"], dtype=np.float64)
    rows = np.isfinite(ref_ra) & np.isfinite(ref_dec) & np.isfinite(x) & np.isfinite(y)
    x, y = x[rows], y[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2)
    ra, dec = wcs.all_pix2world(x, y, 1)
    dra = (ra - ref_ra[rows] + 180.0) % 360.0 - 180.0
    dx = dra * np.cos(np.radians(ref_dec[rows])) * 3600.0
    dy = (dec - ref_dec[rows]) * 3600.0
    return Residuals(x, y, dx, dy)
