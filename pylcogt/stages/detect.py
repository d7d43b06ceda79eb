"""Detect sources and measure them with SEP (Source Extractor's algorithms): the ``CAT`` table.

Steps (pipeline notes, "Source Detection"), on a background-subtracted copy of SCI (electrons):

1. Background: :class:`sep.Background` on 32 x 32 pixel boxes, median-filtered over 3 x 3 boxes,
   every pixel with a BPM bit set left out.
2. Detection: SEP's default 3 x 3 matched filter, threshold 3 x the global background rms,
   at least 5 connected pixels, SEP's deblending (32 levels, contrast 0.005) and cleaning.
   Pixels with a BPM bit in :attr:`DetectionConfig.mask_bits` (BAD, LOW_FLAT, COSMIC_RAY, and
   non-finite values) are masked: they never make a detection. SATURATED pixels are not
   masked: a saturated star is still detected, and flagged.
3. Photometry like Source Extractor's ``FLUX_AUTO`` (``PHOT_AUTOPARAMS 2.5, 3.5``): the Kron
   radius ``k`` (first moment of the light within 6 x the isophotal ellipse A, B, THETA), then
   the sum over the ellipse ``s A, s B`` with ``s = max(2.5 k, 3.5)``, pixel centres inside
   (``subpix=1``, as Source Extractor). If that ellipse is smaller than a circle of 1.75 pixels
   (``s sqrt(A B) < 1.75``, the SEP documentation's recipe) the circle is used. FLUXERR is
   ``sqrt(sum ERR^2)`` over the same pixels; without an ERR plane, the background rms map plus
   the Poisson noise of the source (the frame is in electrons). Masked pixels count as zero
   (flagged); the pixels of other detections (SEP's segmentation map) are left out of a
   source's Kron radius, sums and FWHM (flagged CROWDED; Source Extractor replaces them with
   their mirror image instead).
4. ``FWHM`` per source: twice the radius of the circle holding half of FLUX (exact for a
   Gaussian).

Conventions: ``X``, ``Y`` are 1-indexed FITS pixel coordinates (numpy index ``[row, col]`` is
``(X, Y) = (col + 1, row + 1)``); THETA is in degrees counter-clockwise from +X towards +Y,
in [-90, 90] (Source Extractor's ``THETA_IMAGE``). Flags are :class:`SourceFlag` bits.
The stage does no I/O and never modifies the input frame.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
from dataclasses import dataclass

import numpy as np
import sep
from astropy import units as u
from astropy.table import Table

from pylcogt.frame import Frame, PixelFlag
from pylcogt.stages._checks import require_unit

__all__ = [
    "SourceFlag",
    "DetectionConfig",
    "SourceCatalog",
    "CATALOG_COLUMNS",
    "detect_sources",
    "catalog_cards",
    "empty_catalog",
]

log = logging.getLogger(__name__)


class SourceFlag(enum.IntFlag):
    """Bits of the ``FLAG`` column (int16). A source may carry several; 0 is a clean source.

    The BPM flags count the pixels of the photometry aperture (pixel centres inside it).
    """

    SATURATED = 1  # a SATURATED pixel in the aperture: FLUX is a lower limit
    BAD_PIXELS = 2  # a BAD, LOW_FLAT (or other non-cosmic-ray) pixel, or a NaN, in the aperture
    EDGE = 4  # the aperture crosses the image edge, or the object's pixels touch it
    BLENDED = 8  # deblended from a blend of several objects (SEP's OBJ_MERGED)
    COSMIC_RAY = 16  # a COSMIC_RAY pixel in the aperture (set by a cosmic-ray stage in the BPM)
    CROWDED = 32  # pixels of another detection in the aperture: left out of the sums


_NOT_BAD = int(PixelFlag.SATURATED | PixelFlag.COSMIC_RAY)


@dataclass(frozen=True)
class DetectionConfig:
    """Source detection and photometry settings; the defaults are the pipeline's."""

    #: detection threshold, in units of the global background rms
    thresh_sigma: float = 3.0
    #: minimum number of connected pixels above the threshold
    minarea_px: int = 5
    #: background box size (SEP ``bw = bh``), pixels
    back_size_px: int = 32
    #: background median filter size (SEP ``fw = fh``), boxes
    back_filter_boxes: int = 3
    #: deblending levels and minimum contrast (1.0 turns deblending off)
    deblend_nthresh: int = 32
    deblend_cont: float = 0.005
    #: FLUX_AUTO aperture: ``max(kron_factor * k, kron_min_radius)`` times A and B
    kron_factor: float = 2.5
    kron_min_radius: float = 3.5
    #: the Kron radius is measured within ``kron_window`` times the isophotal ellipse
    kron_window: float = 6.0
    #: circular aperture radius (pixels) used when the Kron ellipse is smaller than it
    circle_min_radius_px: float = 1.75
    #: aperture sampling: 1 = whole pixels whose centre is inside (Source Extractor's AUTO)
    subpix: int = 1
    #: BPM bits masked for detection and photometry (SATURATED is only flagged)
    mask_bits: int = 0xFF & ~int(PixelFlag.SATURATED)
    #: minimum FLUX / FLUXERR of the sources used for the median FWHM and ellipticity
    psf_min_snr: float = 20.0
    #: SEP's limits: active pixels above the threshold (raised automatically on overflow),
    #: sub-objects per blend (on overflow, the frame is extracted without deblending)
    pixstack: int = 1_000_000
    sub_object_limit: int = 4096

    def __post_init__(self) -> None:
        positive = {
            "thresh_sigma": self.thresh_sigma,
            "minarea_px": self.minarea_px,
            "back_size_px": self.back_size_px,
            "back_filter_boxes": self.back_filter_boxes,
            "deblend_nthresh": self.deblend_nthresh,
            "kron_factor": self.kron_factor,
            "kron_window": self.kron_window,
            "circle_min_radius_px": self.circle_min_radius_px,
            "subpix": self.subpix,
            "pixstack": self.pixstack,
            "sub_object_limit": self.sub_object_limit,
        }
        for name, value in positive.items():
            if not value > 0:
                msg = f"DetectionConfig.{name} must be positive, got {value!r}"
                raise ValueError(msg)
        if not 0.0 < self.deblend_cont <= 1.0:
            msg = f"DetectionConfig.deblend_cont must be in (0, 1], got {self.deblend_cont!r}"
            raise ValueError(msg)
        if self.kron_min_radius < 0 or self.psf_min_snr < 0:
            msg = "DetectionConfig.kron_min_radius and psf_min_snr must not be negative"
            raise ValueError(msg)
        if not 0 <= self.mask_bits <= 0xFF:
            msg = f"DetectionConfig.mask_bits must be uint8 BPM bits, got {self.mask_bits!r}"
            raise ValueError(msg)


#: The ``CAT`` columns: name, dtype, unit, description (the TTYPEn comment: <= 47 characters).
CATALOG_COLUMNS: tuple[tuple[str, str, u.UnitBase | None, str], ...] = (
    ("X", "f8", u.pix, "x centroid, 1-indexed FITS pixels"),
    ("Y", "f8", u.pix, "y centroid, 1-indexed FITS pixels"),
    ("RA", "f8", u.deg, "right ascension, NaN until the astrometry stage"),
    ("DEC", "f8", u.deg, "declination, NaN until the astrometry stage"),
    ("FLUX", "f8", u.electron, "flux in the Kron aperture (FLUX_AUTO)"),
    ("FLUXERR", "f8", u.electron, "1-sigma error of FLUX"),
    ("A", "f4", u.pix, "semi-major axis rms of the isophotal profile"),
    ("B", "f4", u.pix, "semi-minor axis rms of the isophotal profile"),
    ("THETA", "f4", u.deg, "position angle of A from +X towards +Y, -90..90"),
    ("KRONRAD", "f4", None, "Kron radius in units of A and B"),
    ("FWHM", "f4", u.pix, "2 x half-light radius (FWHM of a Gaussian)"),
    ("PEAK", "f4", u.electron, "highest pixel above the background"),
    ("BACKGROUND", "f4", u.electron, "background per pixel at the centroid"),
    ("NPIX", "i4", u.pix**2, "isophotal area above the detection threshold"),
    ("FLAG", "i2", None, "bits: 1 sat 2 bad 4 edge 8 blend 16 CR 32 crowd"),
)


@dataclass(frozen=True)
class SourceCatalog:
    """The result of :func:`detect_sources`.

    ``table``: the ``CAT`` table (:data:`CATALOG_COLUMNS`, brightest first); ``background``:
    the median background level (median of the background boxes), electrons per pixel;
    ``background_rms``: the global background rms, electrons; ``fwhm_px`` and ``ellipticity``:
    medians of FWHM (pixels) and ``1 - B/A`` over the ``n_psf_sources`` point-like sources used
    (unflagged, FLUX/FLUXERR >= ``psf_min_snr``, FWHM within 3 robust sigma of the median);
    NaN when there are none. ``deblend_overflow``: SEP's deblending overflowed and the frame
    was extracted without deblending.
    """

    table: Table
    background: float
    background_rms: float
    fwhm_px: float
    ellipticity: float
    n_psf_sources: int = 0
    deblend_overflow: bool = False

    @property
    def n_sources(self) -> int:
        return len(self.table)


def empty_catalog(n: int = 0) -> Table:
    """A ``CAT`` table of ``n`` zeroed rows with the columns, dtypes, units and descriptions."""
    table = Table()
    for name, dtype, unit, description in CATALOG_COLUMNS:
        table[name] = np.zeros(n, dtype=dtype)
        table[name].unit = unit
        table[name].description = description
    return table


_LOCK = threading.Lock()  # SEP's limits are process-wide settings


def detect_sources(frame: Frame, config: DetectionConfig | None = None) -> SourceCatalog:
    """Detect and measure the sources of ``frame`` (electrons); see the module docstring.

    A frame without sources is not an error: the table is empty and a warning is logged.
    """
    config = DetectionConfig() if config is None else config
    require_unit(frame, "electron", "source detection")
    sci = np.ascontiguousarray(frame.sci, dtype=np.float32)  # SEP: C order, native bytes
    bpm = np.ascontiguousarray(frame.bpm, dtype=np.uint8)
    finite = np.isfinite(sci)
    nonfinite = None if finite.all() else ~finite
    if nonfinite is not None:
        sci = np.where(finite, sci, np.float32(0.0))
    del finite
    back_mask = _with(bpm != 0, nonfinite)
    bkg = sep.Background(
        sci,
        mask=back_mask,
        bw=config.back_size_px,
        bh=config.back_size_px,
        fw=config.back_filter_boxes,
        fh=config.back_filter_boxes,
    )
    del back_mask
    back = bkg.back(dtype=np.float32)
    data = sci - back  # a new array: the frame's planes are never written
    background, rms = float(bkg.globalback), float(bkg.globalrms)
    mask = _with((bpm & np.uint8(config.mask_bits)) != 0, nonfinite)
    any_masked = bool(mask.any())
    if any_masked:
        # masked pixels are zero for detection and photometry. (sep.extract's own mask= is
        # passed too, but in SEP 1.4.1 masked pixels in the first two rows still make objects.)
        data[mask] = 0.0

    found = _extract(data, rms, mask, config) if rms > 0 else None
    if found is None or len(found[0]) == 0:
        log.warning(
            "%s: no sources detected above %.1f x the background rms (%.3g electrons)",
            frame.name,
            config.thresh_sigma,
            rms,
            extra={"frame": frame.name},
        )
        return SourceCatalog(empty_catalog(), background, rms, math.nan, math.nan)
    objects, segmap, overflow = found
    ny, nx = data.shape
    rows = np.clip(np.rint(objects["y"]).astype(np.intp), 0, ny - 1)
    cols = np.clip(np.rint(objects["x"]).astype(np.intp), 0, nx - 1)
    local_back = back[rows, cols]
    del back

    if frame.err is not None:
        err, gain = np.ascontiguousarray(frame.err, dtype=np.float32), None
    else:
        err, gain = bkg.rms(dtype=np.float32), 1.0  # data in electrons: Poisson counts
    if any_masked:
        err = np.where(mask, np.float32(0.0), err)
    del mask
    table = _measure(data, err, gain, local_back, bpm, nonfinite, objects, segmap, config)
    fwhm, ellipticity, n_psf = _psf_summary(table, config.psf_min_snr)
    return SourceCatalog(table, background, rms, fwhm, ellipticity, n_psf, overflow)


def _with(mask: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
    return mask if extra is None else mask | extra


def _extract(
    data: np.ndarray, rms: float, mask: np.ndarray, config: DetectionConfig
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``sep.extract`` -> (objects, segmentation map, deblending overflowed), with SEP's limits
    raised for the call: on a pixel-buffer overflow the limit grows (up to the whole frame), on
    a deblending overflow the frame is extracted again without deblending."""
    pixstack, deblend = config.pixstack, True
    while True:
        with _LOCK:
            saved = sep.get_extract_pixstack(), sep.get_sub_object_limit()
            sep.set_extract_pixstack(int(pixstack))
            sep.set_sub_object_limit(int(config.sub_object_limit))
            try:
                objects, segmap = sep.extract(
                    data,
                    config.thresh_sigma,
                    err=rms,
                    mask=mask,
                    minarea=config.minarea_px,
                    deblend_nthresh=config.deblend_nthresh if deblend else 1,
                    deblend_cont=config.deblend_cont if deblend else 1.0,
                    segmentation_map=True,
                )
                return objects, segmap, not deblend
            except Exception as exc:  # SEP raises a bare Exception for its overflows
                text = str(exc)
                if "pixel buffer full" in text and pixstack < data.size:
                    pixstack = min(4 * pixstack, data.size)
                    log.warning("SEP pixel buffer full: retrying with %d pixels", pixstack)
                elif "deblending overflow" in text and deblend:
                    deblend = False  # one threshold level: no sub-objects at all
                    log.warning("SEP deblending overflow: extracting without deblending")
                else:
                    raise
            finally:
                sep.set_extract_pixstack(saved[0])
                sep.set_sub_object_limit(saved[1])


def _measure(
    data: np.ndarray,
    err: np.ndarray,
    gain: float | None,
    local_back: np.ndarray,
    bpm: np.ndarray,
    nonfinite: np.ndarray | None,
    objects: np.ndarray,
    segmap: np.ndarray,
    config: DetectionConfig,
) -> Table:
    """Kron photometry, flags and FWHM of the SEP ``objects`` -> the ``CAT`` table. ``data``
    and ``err`` are zero at masked pixels; the pixels of other objects (``segmap``) are left
    out of each source's sums."""
    x, y = objects["x"], objects["y"]
    ids = np.arange(1, len(objects) + 1, dtype=np.int32)
    neighbours = {"segmap": segmap, "seg_id": ids}
    a = objects["a"].astype(np.float64)
    b = objects["b"].astype(np.float64)
    theta = objects["theta"].astype(np.float64)
    shaped = np.isfinite(a) & np.isfinite(b) & np.isfinite(theta) & (b > 0) & (a >= b)
    a, b, theta = np.where(shaped, a, 0.0), np.where(shaped, b, 0.0), np.where(shaped, theta, 0.0)

    kronrad = np.zeros(len(objects))
    if shaped.any():
        kronrad[shaped], _ = sep.kron_radius(
            data, x[shaped], y[shaped], a[shaped], b[shaped], theta[shaped],
            config.kron_window, segmap=segmap, seg_id=ids[shaped],
        )  # fmt: skip
    scale = np.fmax(config.kron_factor * np.nan_to_num(kronrad), config.kron_min_radius)
    circle = ~shaped | (scale * np.sqrt(a * b) < config.circle_min_radius_px)
    r_min = config.circle_min_radius_px
    ap_a = np.where(circle, r_min, scale * a)
    ap_b = np.where(circle, r_min, scale * b)
    ap_theta = np.where(circle, 0.0, theta)

    def aperture_sum(image: np.ndarray, **kwargs):
        return sep.sum_ellipse(image, x, y, ap_a, ap_b, ap_theta, 1.0, subpix=config.subpix,
                               **kwargs)  # fmt: skip

    flux, fluxerr, aper_flag = aperture_sum(data, err=err, gain=gain, **neighbours)

    flags = np.zeros(len(objects), dtype=np.int16)
    obj_flag = objects["flag"]
    flags[(obj_flag & sep.OBJ_MERGED) != 0] |= SourceFlag.BLENDED
    flags[(aper_flag & sep.APER_HASMASKED) != 0] |= SourceFlag.CROWDED
    edge = ((obj_flag & sep.OBJ_TRUNC) != 0) | ((aper_flag & sep.APER_TRUNC) != 0)
    flags[edge] |= SourceFlag.EDGE
    for flag, bits, extra in (
        (SourceFlag.SATURATED, int(PixelFlag.SATURATED), None),
        (SourceFlag.COSMIC_RAY, int(PixelFlag.COSMIC_RAY), None),
        (SourceFlag.BAD_PIXELS, 0xFF & ~_NOT_BAD, nonfinite),
    ):
        plane = _with((bpm & np.uint8(bits)) != 0, extra)
        if plane.any():
            hits, _, _ = aperture_sum(plane.view(np.uint8))
            flags[hits > 0] |= flag

    positive = np.isfinite(flux) & (flux > 0)
    fwhm = np.full(len(objects), np.nan)
    if positive.any():
        radius, _ = sep.flux_radius(
            data, x[positive], y[positive], ap_a[positive], 0.5,
            normflux=flux[positive], segmap=segmap, seg_id=ids[positive], subpix=5,
        )  # fmt: skip
        fwhm[positive] = np.where(radius > 0, 2.0 * radius, np.nan)

    table = empty_catalog(len(objects))
    columns = {
        "X": x + 1.0,
        "Y": y + 1.0,
        "RA": np.nan,
        "DEC": np.nan,
        "FLUX": flux,
        "FLUXERR": fluxerr,
        "A": np.where(shaped, a, np.nan),
        "B": np.where(shaped, b, np.nan),
        "THETA": np.where(shaped, np.degrees(theta), np.nan),
        "KRONRAD": np.where(shaped, kronrad, np.nan),
        "FWHM": fwhm,
        "PEAK": objects["peak"],
        "BACKGROUND": local_back,
        "NPIX": objects["npix"],
        "FLAG": flags,
    }
    for name, values in columns.items():
        table[name][:] = values
    order = np.argsort(-table["FLUX"], kind="stable")  # NaN last
    return table[order]


def _psf_summary(table: Table, min_snr: float) -> tuple[float, float, int]:
    """Median FWHM (pixels) and ``1 - B/A`` of the clean point-like sources, and their number:
    unflagged, S/N >= ``min_snr``, FWHM within 3 robust sigma of the median (iterated twice)."""
    flux, fluxerr = np.asarray(table["FLUX"]), np.asarray(table["FLUXERR"])
    fwhm = np.asarray(table["FWHM"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / fluxerr
    use = (np.asarray(table["FLAG"]) == 0) & (snr >= min_snr) & np.isfinite(fwhm)
    use &= np.isfinite(np.asarray(table["A"])) & (np.asarray(table["A"]) > 0)
    for _ in range(2):
        if not use.any():
            return math.nan, math.nan, 0
        median = np.median(fwhm[use])
        sigma = 1.4826 * np.median(np.abs(fwhm[use] - median))
        use &= np.abs(fwhm - median) <= max(3.0 * sigma, 0.05 * median)
    if not use.any():
        return math.nan, math.nan, 0
    ratio = np.asarray(table["B"], dtype=np.float64)[use] / np.asarray(table["A"])[use]
    return float(np.median(fwhm[use])), float(np.median(1.0 - ratio)), int(use.sum())


def catalog_cards(
    cat: SourceCatalog, pixscale_arcsec: float | None
) -> list[tuple[str, object, str]]:
    """Summary header cards ``(keyword, value, comment)`` for the reduced frame's header.

    ``NSOURCES`` (rows of CAT), ``L1BKG`` / ``L1BKGRMS`` (background level and rms,
    electrons), ``L1FWHMPX`` (median FWHM, pixels), ``L1FWHM`` (arcsec, ``pixscale_arcsec``
    arcsec per pixel), ``L1ELLIP`` (median ``1 - B/A``), ``L1NPSF`` (sources behind those
    three), ``L1DBLOVF`` (True: SEP's deblending overflowed, sources not deblended) and the QC
    status ``L1DETQC``: ``'OK'`` or ``'NO SOURCES'``. Every keyword is always present; a value that
    is not known (no point sources, no pixel scale) is None, which FITS writes as an undefined
    value (blank value field, read back as None).
    """

    def known(value: float, digits: int) -> float | None:
        return round(float(value), digits) if math.isfinite(value) else None

    fwhm_arcsec = math.nan
    if pixscale_arcsec is not None and pixscale_arcsec > 0:
        fwhm_arcsec = cat.fwhm_px * pixscale_arcsec
    status = "OK" if cat.n_sources else "NO SOURCES"
    return [
        ("NSOURCES", cat.n_sources, "number of sources in the CAT extension"),
        ("L1BKG", known(cat.background, 3), "[electron] median sky background level"),
        ("L1BKGRMS", known(cat.background_rms, 3), "[electron] global background rms"),
        ("L1FWHMPX", known(cat.fwhm_px, 3), "[pixel] median FWHM of clean point sources"),
        ("L1FWHM", known(fwhm_arcsec, 3), "[arcsec] median FWHM of clean point sources"),
        ("L1ELLIP", known(cat.ellipticity, 4), "median ellipticity 1-B/A, clean point sources"),
        ("L1NPSF", cat.n_psf_sources, "sources used for L1FWHM and L1ELLIP"),
        ("L1DBLOVF", cat.deblend_overflow, "SEP deblending overflowed: not deblended"),
        ("L1DETQC", status, "source detection status: OK or NO SOURCES"),
    ]
