"""The last steps of the science chain: cosmic rays, the source catalogue (``CAT``), the WCS
and the zero point.

:func:`~pylcogt.stages.cosmics.detect_cosmic_rays` first flags cosmic-ray hits in the BPM
(L.A.Cosmic, astroscrappy's defaults; ``L1NCRPIX``), so that they make no detections and are
left out of the photometry. Then :func:`catalog_and_wcs` runs
:func:`~pylcogt.stages.detect.detect_sources`, solves the field with astrometry.net from that
catalogue (the brightest clean sources: no saturated, bad-pixel, cosmic-ray or edge sources;
never a re-detection on the image), fits the distortion against every matched reference star
(:mod:`pylcogt.astrometry`), fills the catalogue's ``RA``/``DEC`` (and ``REF_RA``/``REF_DEC``, the
reference star of each source in the WCS fit: the astrometric residuals) and returns the frame with
the catalogue and WCS cards in its header.

Then the zero point (``L1ZP``, the magnitude giving 1 electron per second) from the catalogue
matched to a reference catalogue (:mod:`pylcogt.photometry`), and ``MAG``/``MAGERR`` columns;
no overlap or too few stars is a QC status (``L1PHSTAT``), not a failure.

A field that cannot be solved is not a failed frame: the product is written without a WCS and
``ASTSTAT = 'failed'`` with ``ASTREASN`` saying why; so is a field on which ``solve-field``
crashes, exits with an error or times out (the reason names its exit status and the last line of
its error output). A missing astrometry.net installation is a
:class:`~pylcogt.errors.ConfigurationError` (the operator installs it or sets ``--index-dir
none``). The reduction worker and ``pylcogt solve`` both call this.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from pylcogt.astrometry.config import AstrometryConfig
from pylcogt.astrometry.solver import (
    SolveResult,
    apply_solution,
    radec_for,
    remove_wcs,
    solve,
)
from pylcogt.frame import Frame
from pylcogt.photometry.config import PhotometryConfig
from pylcogt.photometry.refcat import reference_stars_near
from pylcogt.photometry.zeropoint import PhotometryResult, calibrate_photometry, field_cone
from pylcogt.stages.cosmics import detect_cosmic_rays
from pylcogt.stages.detect import SourceCatalog, SourceFlag, catalog_cards, detect_sources

__all__ = [
    "ScienceResult",
    "catalog_and_wcs",
    "pointing",
    "pixel_scale",
    "astrometry_config",
]

log = logging.getLogger(__name__)

#: sources with any of these flags never go to the solver nor into the distortion fit
UNFIT_FLAGS = SourceFlag.SATURATED | SourceFlag.BAD_PIXELS | SourceFlag.EDGE | SourceFlag.COSMIC_RAY


@dataclass(frozen=True)
class ScienceResult:
    """The frame with its new header cards, its catalogue (``RA``/``DEC`` filled when solved),
    and what detection and astrometry found."""

    frame: Frame
    catalog: Table
    sources: SourceCatalog
    solution: SolveResult
    photometry: PhotometryResult | None = None
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds


def _parse_angle(value, *, hours: bool) -> float | None:
    """Degrees from a header value: a number (degrees) or sexagesimal text (hours for RA)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.split(r"[:\s]+", text)
    try:
        numbers = [float(p) for p in parts if p]
    except ValueError:
        return None
    if not 1 <= len(numbers) <= 3:
        return None
    sign = -1.0 if text.startswith("-") else 1.0
    magnitude = sum(abs(n) / 60**i for i, n in enumerate(numbers))
    return sign * magnitude * (15.0 if hours else 1.0)


def pointing(header: fits.Header) -> tuple[float | None, float | None]:
    """The telescope pointing (RA, DEC in degrees) from ``RA``/``DEC`` (LCO: sexagesimal, RA in
    hours; numbers are degrees), else ``CRVAL1/2``; ``None`` where absent or unreadable."""
    ra = _parse_angle(header.get("RA"), hours=True)
    dec = _parse_angle(header.get("DEC"), hours=False)
    if ra is None or dec is None:
        ra = _parse_angle(header.get("CRVAL1"), hours=False) if ra is None else ra
        dec = _parse_angle(header.get("CRVAL2"), hours=False) if dec is None else dec
    if dec is not None and not -90.0 <= dec <= 90.0:
        dec = None
    return ra, dec


def pixel_scale(header: fits.Header) -> float | None:
    """``PIXSCALE`` (arcsec per pixel of this frame, binning included, as LCO headers give it)."""
    value = header.get("PIXSCALE")
    try:
        scale = float(value)
    except (TypeError, ValueError):
        return None
    return scale if math.isfinite(scale) and scale > 0 else None


def astrometry_config(index_dir: Path | None, **overrides) -> AstrometryConfig | None:
    """The solver's settings for an index directory; ``None``: astrometry turned off."""
    if index_dir is None:
        return None
    return AstrometryConfig(index_dir=Path(index_dir), **overrides)


def _not_attempted(reason: str) -> SolveResult:
    return SolveResult("failed", reason)


def catalog_and_wcs(
    frame: Frame,
    config: AstrometryConfig | None,
    *,
    refcat=None,
    photometry: PhotometryConfig | None = None,
) -> ScienceResult:
    """Detect, solve (``config`` ``None``: astrometry off), calibrate the photometry against
    ``refcat`` (a reference file path, the registry's sessionmaker, or ``None``: not calibrated)
    and annotate ``frame`` (see module doc). The input frame is not modified; the returned one
    has a new header."""
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    try:  # COSMIC_RAY bits: left out of detection and photometry
        frame = detect_cosmic_rays(frame)
    except ValueError as exc:  # e.g. a foreign image with neither ERR nor RDNOISE: not fatal
        log.warning("%s: no cosmic-ray mask: %s", frame.name, exc)
        header = frame.header.copy()
        header["L1CRSTAT"] = ("NOT RUN", "cosmic-ray detection: see L1CRREAS")
        header["L1CRREAS"] = (str(exc)[:68], "why there is no cosmic-ray mask")
        frame = dataclasses.replace(frame, header=header)
    timings["cosmics"] = time.perf_counter() - tick
    tick = time.perf_counter()
    sources = detect_sources(frame)
    timings["sources"] = time.perf_counter() - tick
    table = sources.table.copy()
    header = frame.header.copy()
    scale = pixel_scale(header)
    ra0, dec0 = pointing(header)
    if config is None:
        solution = _not_attempted("astrometry is turned off (--index-dir none)")
    elif scale is None:
        solution = _not_attempted("no PIXSCALE in the header: the pixel scale is needed")
    elif ra0 is None or dec0 is None:
        solution = _not_attempted("no RA/DEC in the header: the pointing is needed")
    else:
        clean = (np.asarray(table["FLAG"]) & int(UNFIT_FLAGS)) == 0
        ny, nx = frame.shape
        solution = solve(np.asarray(table["X"])[clean], np.asarray(table["Y"])[clean],
                         np.asarray(table["FLUX"])[clean], width=nx, height=ny, ra_deg=ra0,
                         dec_deg=dec0, pixscale_arcsec=scale, config=config)  # fmt: skip
    timings["astrometry"] = solution.elapsed_s
    ref_ra, ref_dec = np.full(len(table), np.nan), np.full(len(table), np.nan)
    if solution.solved:
        ra, dec = radec_for(solution, table["X"], table["Y"])  # X, Y: 1-indexed, as solve's
        table["RA"][:] = ra
        table["DEC"][:] = dec
        rows = np.flatnonzero(clean)[solution.match_index]
        ref_ra[rows], ref_dec[rows] = solution.match_ra, solution.match_dec
    for name, values, text in (("REF_RA", ref_ra, "right ascension"),
                               ("REF_DEC", ref_dec, "declination")):  # fmt: skip
        table[name] = values
        table[name].unit = "deg"
        table[name].description = f"{text} of the WCS fit's reference star, or NaN"
    remove_wcs(header)  # the telescope's approximate WCS: replaced below, or none when unsolved
    for key, value, comment in catalog_cards(sources, scale):
        header[key] = (value, comment)
    apply_solution(header, solution)
    phot = None
    if refcat is not None:
        tick = time.perf_counter()
        cone = field_cone(table)
        stars = reference_stars_near(refcat, *cone) if cone else None
        phot = calibrate_photometry(table, header, stars, photometry)
        phot.update_header(header)
        table = phot.catalog
        timings["photometry"] = time.perf_counter() - tick
    if solution.solved:
        log.info("%s: %d sources; WCS solved, %d stars matched, rms %.2f\"", frame.name,
                 len(table), solution.n_matched, solution.rms_arcsec)  # fmt: skip
    else:
        log.info("%s: %d sources; no WCS: %s", frame.name, len(table), solution.reason)
    if phot is not None:
        log.info("%s: photometry %s%s", frame.name, phot.status,
                 f", L1ZP {phot.zeropoint:.3f} from {phot.n_stars} stars" if phot.calibrated
                 else f": {phot.reason}")  # fmt: skip
    frame = dataclasses.replace(frame, header=header)
    return ScienceResult(frame=frame, catalog=table, sources=sources, solution=solution,
                         photometry=phot, timings=timings)  # fmt: skip
