"""The photometric zero point (and colour term) of a frame from its ``CAT`` and reference stars.

Convention: ``L1ZP`` is the magnitude giving 1 electron per second, so a source's calibrated
magnitude is ``MAG = L1ZP - 2.5 log10(FLUX / EXPTIME)`` (FLUX in electrons, EXPTIME in
seconds): it does not depend on the exposure time. It includes the atmosphere of the frame
(no extinction correction). With a colour term (``L1COLTRM``, colour ``L1COLOR`` such as
``'g-r'`` in the reference catalogue's bands), the catalogue magnitude of a star of colour c
is ``L1ZP - 2.5 log10(FLUX / EXPTIME) + L1COLTRM * (c - L1COLREF)``: L1ZP is quoted at
``L1COLREF``, the median colour of the stars used, and ``MAG`` is the magnitude of a source of
that colour (colours of the frame's sources are unknown).

``MAGERR`` = sqrt((1.0857 FLUXERR / FLUX)^2 + L1ZPERR^2): the source's own photometric error and
the zero point's statistical error; not the colour term's (zero at L1COLREF), nor the
reference catalogue's systematic error (about 0.01 mag for Pan-STARRS 1).

Outcomes that are a property of the frame, not a failure (no exception): ``L1PHSTAT`` is
``'calibrated'`` or one of :data:`QC_STATUSES`; the magnitude cards are then undefined (None)
and ``MAG``/``MAGERR`` NaN. See :class:`~pylcogt.photometry.config.PhotometryConfig` for the
star selection and the fit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from pylcogt.astrometry.match import pairs_within
from pylcogt.photometry.config import PhotometryConfig
from pylcogt.photometry.refcat import (
    MAG_SYSTEM,
    ReferenceStars,
    angular_separation_deg,
    band_magnitudes,
    stars_from_table,
)

__all__ = [
    "PhotometryResult",
    "calibrate_photometry",
    "field_cone",
    "PHOTOMETRY_KEYWORDS",
    "QC_STATUSES",
    "CALIBRATED",
]

log = logging.getLogger(__name__)

CALIBRATED = "calibrated"
NO_WCS = "no WCS"
NO_EXPTIME = "no exposure time"
FILTER_NOT_SUPPORTED = "filter not supported"
NO_OVERLAP = "no overlap with catalogue"
TOO_FEW = "too few stars"
#: ``L1PHSTAT`` values other than ``'calibrated'``
QC_STATUSES = (NO_WCS, NO_EXPTIME, FILTER_NOT_SUPPORTED, NO_OVERLAP, TOO_FEW)

#: the header keywords :attr:`PhotometryResult.cards` writes (always all of them)
PHOTOMETRY_KEYWORDS = ("L1PHSTAT", "L1PHREAS", "L1PHREF", "L1PHBAND", "L1MAGSYS", "L1ZP",
                       "L1ZPERR", "L1ZPRMS", "L1ZPNUM", "L1COLOR", "L1COLTRM", "L1CTERR",
                       "L1COLREF")  # fmt: skip

_PSF_TO_MAG = 2.5 / math.log(10.0)  # 1.0857: magnitude error per fractional flux error
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class PhotometryResult:
    """The outcome of :func:`calibrate_photometry`.

    ``catalog``: the input table plus ``MAG``, ``MAGERR`` (mag, float32; NaN when uncalibrated
    or FLUX <= 0). ``status``: ``'calibrated'`` or a QC status, ``reason``: why, in words.
    ``zeropoint``/``zeropoint_err``/``rms`` (mag; NaN when uncalibrated), ``color``
    (``'g-r'``, None without a colour term), ``color_term``/``color_term_err`` (mag per mag of
    colour; NaN without one), ``color_ref`` (mag), ``n_stars`` (used in the final fit),
    ``n_matched`` (sources matched one-to-one to a reference star, any quality),
    ``reference`` (catalogue name and how the band was obtained), ``stars``: per calibration
    candidate ``SOURCE`` (row in ``catalog``), ``MAG_INST``, ``MAG_REF``, ``ERR`` (the fit's
    1-sigma, mag), ``COLOR``, ``RESID`` (m_ref - m_inst - model) and ``USED``. ``cards``:
    ``(keyword, value, comment)`` for the SCI header (:meth:`update_header`).
    """

    catalog: Table
    status: str
    reason: str
    band: str | None = None
    reference: str = ""
    mag_system: str | None = None
    zeropoint: float = math.nan
    zeropoint_err: float = math.nan
    rms: float = math.nan
    color: str | None = None
    color_term: float = math.nan
    color_term_err: float = math.nan
    color_ref: float = math.nan
    n_stars: int = 0
    n_matched: int = 0
    chi2_reduced: float = math.nan
    stars: Table = field(default_factory=Table)

    @property
    def calibrated(self) -> bool:
        return self.status == CALIBRATED

    @property
    def cards(self) -> list[tuple[str, object, str]]:
        def known(value: float, digits: int) -> float | None:
            ok = self.calibrated and math.isfinite(value)
            return round(float(value), digits) if ok else None

        has_color = self.calibrated and self.color is not None
        return [
            ("L1PHSTAT", self.status, "photometric calibration status"),
            _text_card("L1PHREAS", self.reason, "photometric calibration details"),
            _text_card("L1PHREF", self.reference, "reference catalogue and band"),
            ("L1PHBAND", self.band, "reference band of the filter"),
            ("L1MAGSYS", self.mag_system, "magnitude system of L1ZP (AB or Vega)"),
            ("L1ZP", known(self.zeropoint, 4), "[mag] MAG=L1ZP-2.5log10(FLUX/EXPTIME[e-/s])"),
            ("L1ZPERR", known(self.zeropoint_err, 4), "[mag] 1-sigma error of L1ZP"),
            ("L1ZPRMS", known(self.rms, 4), "[mag] robust rms of calibration stars"),
            ("L1ZPNUM", int(self.n_stars), "number of stars used for L1ZP"),
            ("L1COLOR", self.color if has_color else None, "colour of the colour term"),
            ("L1COLTRM", known(self.color_term, 4) if has_color else None,
             "catalogue mag = MAG+L1COLTRM*(col-L1COLREF)"),
            ("L1CTERR", known(self.color_term_err, 4) if has_color else None,
             "1-sigma error of L1COLTRM"),
            ("L1COLREF", known(self.color_ref, 4) if has_color else None,
             "[mag] median colour: L1ZP is quoted there"),
        ]  # fmt: skip

    def update_header(self, header: fits.Header) -> None:
        """Write :attr:`cards` into ``header`` (replacing older values)."""
        for key, value, comment in self.cards:
            header[key] = (value, comment)


def _text_card(key: str, text: str | None, comment: str) -> tuple[str, str | None, str]:
    """A string card that fits one 80-character card: the text shortened to 68 characters
    (``...``), the comment dropped when both do not fit."""
    if not text:
        return key, None, comment
    text = text.replace("'", "")
    if len(text) > 68:
        text = text[:65] + "..."
    if len(text) > 65 - len(comment):  # 10 for "KEYWORD= ", 2 quotes, 3 for " / "
        comment = ""
    return key, text, comment


def field_cone(catalog: Table, *, margin_arcsec: float = 10.0) -> tuple[float, float, float] | None:
    """``(ra, dec, radius)`` in degrees of a cone holding every source of ``catalog`` with a
    position, plus ``margin_arcsec``: what to ask :func:`reference_stars_near` for. None when no
    source has RA/DEC (no WCS)."""
    ra = np.asarray(catalog["RA"], dtype=np.float64) if "RA" in catalog.colnames else np.zeros(0)
    dec = np.asarray(catalog["DEC"], dtype=np.float64) if "DEC" in catalog.colnames else ra
    ok = np.isfinite(ra) & np.isfinite(dec)
    if not ok.any():
        return None
    ra0, dec0 = _centre(ra[ok], dec[ok])
    radius = float(np.max(angular_separation_deg(ra[ok], dec[ok], ra0, dec0)))
    return ra0, dec0, radius + margin_arcsec / 3600.0


def _centre(ra: np.ndarray, dec: np.ndarray) -> tuple[float, float]:
    """The direction of the mean unit vector (degrees)."""
    r, d = np.radians(ra), np.radians(dec)
    x, y, z = np.mean(np.cos(d) * np.cos(r)), np.mean(np.cos(d) * np.sin(r)), np.mean(np.sin(d))
    return float(np.degrees(np.arctan2(y, x)) % 360.0), float(
        np.degrees(np.arctan2(z, np.hypot(x, y)))
    )


def _tangent(ra, dec, ra0, dec0) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection about (ra0, dec0): standard coordinates in degrees."""
    r, d = np.radians(ra - ra0), np.radians(dec)
    d0 = math.radians(dec0)
    cos_c = math.sin(d0) * np.sin(d) + math.cos(d0) * np.cos(d) * np.cos(r)
    xi = np.cos(d) * np.sin(r) / cos_c
    eta = (math.cos(d0) * np.sin(d) - math.sin(d0) * np.cos(d) * np.cos(r)) / cos_c
    return np.degrees(xi), np.degrees(eta)


def _with_mags(catalog: Table, zp: float, zp_err: float, exptime: float | None) -> Table:
    table = catalog.copy()
    n = len(table)
    mag = np.full(n, np.nan)
    magerr = np.full(n, np.nan)
    if math.isfinite(zp) and exptime:
        flux = np.asarray(table["FLUX"], dtype=np.float64)
        fluxerr = np.asarray(table["FLUXERR"], dtype=np.float64)
        good = np.isfinite(flux) & (flux > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            mag[good] = zp - 2.5 * np.log10(flux[good] / exptime)
            magerr[good] = np.hypot(_PSF_TO_MAG * fluxerr[good] / flux[good], zp_err)
    table["MAG"] = mag.astype(np.float32)
    table["MAG"].unit = u.mag
    table["MAG"].description = "calibrated magnitude: L1ZP - 2.5 log10(FLUX/EXPTIME)"
    table["MAGERR"] = magerr.astype(np.float32)
    table["MAGERR"].unit = u.mag
    table["MAGERR"].description = "1-sigma error of MAG: FLUXERR and L1ZPERR"
    return table


def _exptime(header: fits.Header) -> float | None:
    try:
        value = float(header.get("EXPTIME"))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def calibrate_photometry(
    catalog: Table,
    header: fits.Header,
    refstars: ReferenceStars | Table | None,
    config: PhotometryConfig | None = None,
) -> PhotometryResult:
    """Fit the zero point of one frame (see the module doc): ``catalog`` is its ``CAT`` table
    (RA/DEC filled by the astrometry), ``header`` its SCI header (``FILTER``, ``EXPTIME``,
    ``ASTSTAT``), ``refstars`` the reference stars around the field
    (:func:`~pylcogt.photometry.refcat.reference_stars_near`; an astropy Table is read with the
    recognised column names; None: no catalogue here). Pure: nothing is read, written or
    modified."""
    config = config or PhotometryConfig()
    exptime = _exptime(header)
    filter_name = str(header.get("FILTER", "") or "").strip()

    def outcome(status: str, reason: str, **kw) -> PhotometryResult:
        if status != CALIBRATED:
            log.info("photometry not calibrated: %s (%s)", status, reason)
        zp = kw.get("zeropoint", math.nan)
        table = _with_mags(catalog, zp, kw.get("zeropoint_err", math.nan), exptime)
        return PhotometryResult(catalog=table, status=status, reason=reason, **kw)

    band = config.filter_bands.get(filter_name)
    if band is None:
        why = "unknown filter" if filter_name not in config.filter_bands else "no reference band"
        return outcome(FILTER_NOT_SUPPORTED, f"filter {filter_name or '(none)'}: {why}")
    if "RA" in catalog.colnames and "DEC" in catalog.colnames:
        ra = np.asarray(catalog["RA"], dtype=np.float64)
        dec = np.asarray(catalog["DEC"], dtype=np.float64)
    else:
        ra = dec = np.full(len(catalog), np.nan)
    aststat = str(header.get("ASTSTAT", "") or "").strip().lower()
    has_pos = np.isfinite(ra) & np.isfinite(dec)
    if (aststat and aststat != "solved") or not has_pos.any():
        why = f"ASTSTAT = {aststat}" if aststat and aststat != "solved" else "no source has RA/DEC"
        return outcome(NO_WCS, why, band=band)
    if exptime is None:
        return outcome(NO_EXPTIME, f"EXPTIME = {header.get('EXPTIME')}", band=band)
    if isinstance(refstars, Table):
        refstars = stars_from_table(refstars)
    if refstars is None or len(refstars) == 0:
        return outcome(NO_OVERLAP, "no reference stars in this field", band=band)
    ref_band = band_magnitudes(refstars, band, default_err=config.default_ref_err_mag,
                               color_range=config.transform_color_range)  # fmt: skip
    reference = refstars.name
    if ref_band is None:
        have = ",".join(refstars.bands) or "none"
        why = f"reference catalogue {refstars.name} has no {band} band (bands: {have})"
        return outcome(FILTER_NOT_SUPPORTED, why, band=band, reference=reference)
    reference = f"{refstars.name} {ref_band.source}".strip()
    system = MAG_SYSTEM.get(band)
    info = {"band": band, "reference": reference, "mag_system": system}

    # --- match: each source with a position to its nearest reference star, one-to-one
    ra0, dec0 = _centre(ra[has_pos], dec[has_pos])
    src_index = np.flatnonzero(has_pos)
    sx, sy = _tangent(ra[has_pos], dec[has_pos], ra0, dec0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rx, ry = _tangent(refstars.ra, refstars.dec, ra0, dec0)
    near = angular_separation_deg(refstars.ra, refstars.dec, ra0, dec0) < 60.0  # projectable
    rx[~near], ry[~near] = np.nan, np.nan
    front = np.isfinite(rx) & np.isfinite(ry)
    ref_index = np.flatnonzero(front)
    radius = config.match_radius_arcsec / 3600.0
    i, j, d = pairs_within(sx, sy, rx[front], ry[front], radius)
    order = np.lexsort((d, i))
    i, j = i[order], j[order]
    first = np.ones(i.size, bool)
    first[1:] = i[1:] != i[:-1]
    i, j = i[first], j[first]  # nearest reference star of each source
    ref_of = ref_index[j]
    unique_ref, ref_counts = np.unique(ref_of, return_counts=True)
    claimed_once = np.isin(ref_of, unique_ref[ref_counts == 1])
    source_rows, ref_rows = src_index[i[claimed_once]], ref_of[claimed_once]
    n_matched = int(source_rows.size)
    if n_matched == 0:
        why = f"no source within {config.match_radius_arcsec:g}\" of any of {len(refstars)} " \
              f"reference stars"  # fmt: skip
        return outcome(NO_OVERLAP, why, **info)

    # --- quality cuts on the matched pairs
    flux = np.asarray(catalog["FLUX"], dtype=np.float64)[source_rows]
    fluxerr = np.asarray(catalog["FLUXERR"], dtype=np.float64)[source_rows]
    if "FLAG" in catalog.colnames:
        flags = np.asarray(catalog["FLAG"]).astype(np.int64)[source_rows]
    else:
        flags = np.zeros(source_rows.size, np.int64)
    m_ref, e_ref = ref_band.mag[ref_rows], ref_band.err[ref_rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / fluxerr
        ok = (flags & config.flag_mask) == 0
        ok &= np.isfinite(flux) & (flux > 0) & np.isfinite(fluxerr) & (fluxerr > 0)
        ok &= snr >= config.min_snr
        ok &= np.isfinite(m_ref) & (e_ref <= config.max_ref_err_mag)
        if config.bright_mag is not None:
            ok &= m_ref >= config.bright_mag
        if config.faint_mag is not None:
            ok &= m_ref <= config.faint_mag
    ok &= _isolated(ref_band.mag, ref_rows, rx, ry, config)
    n_ok = int(ok.sum())
    if n_ok < config.min_stars:
        why = f"{n_ok} usable of {n_matched} matched stars (at least {config.min_stars} needed)"
        return outcome(TOO_FEW, why, n_matched=n_matched, **info)
    source_rows, ref_rows = source_rows[ok], ref_rows[ok]
    flux, fluxerr, m_ref, e_ref = flux[ok], fluxerr[ok], m_ref[ok], e_ref[ok]
    m_inst = -2.5 * np.log10(flux / exptime)
    sigma = np.sqrt((_PSF_TO_MAG * fluxerr / flux) ** 2 + e_ref**2 + config.error_floor_mag**2)
    y = m_ref - m_inst

    # --- colour
    color_name, colors, var_c, cov_yc = _colors(refstars, ref_band, ref_rows, config)
    use_color = False
    if config.fit_color_term and color_name is not None:
        has = np.isfinite(colors)
        if has.sum() >= config.min_stars_color_term:
            lo, hi = np.percentile(colors[has], [5, 95])
            spread = np.sum((colors[has] - np.median(colors[has])) ** 2)
            # the colours' own errors must be small against their spread (else the
            # errors-in-variables correction of the slope is unstable)
            use_color = hi - lo >= config.min_color_range_mag and np.sum(var_c[has]) < 0.5 * spread
    fit_rows = np.isfinite(colors) if use_color else np.ones(y.size, bool)
    if use_color:
        fit = _clipped_fit(y[fit_rows], sigma[fit_rows], config, colors[fit_rows],
                           var_c[fit_rows], cov_yc[fit_rows])  # fmt: skip
    else:
        fit = _clipped_fit(y, sigma, config)
    used = np.zeros(y.size, bool)
    used[np.flatnonzero(fit_rows)[fit.keep]] = True
    resid = np.full(y.size, np.nan)
    resid[fit_rows] = fit.residuals
    stars = Table({
        "SOURCE": source_rows, "MAG_INST": m_inst, "MAG_REF": m_ref, "ERR": sigma,
        "COLOR": colors, "RESID": resid, "USED": used,
    })  # fmt: skip
    n_used = int(used.sum())
    if n_used < config.min_stars or not math.isfinite(fit.zeropoint):
        why = f"{n_used} stars left after outlier rejection of {n_ok} (at least " \
              f"{config.min_stars} needed)"  # fmt: skip
        return outcome(TOO_FEW, why, n_matched=n_matched, stars=stars, **info)
    detail = f"{n_used} of {n_ok} usable stars ({n_matched} matched)"
    if color_name is not None and not use_color:
        detail += "; no colour term (too few stars or colours)"
    result = outcome(
        CALIBRATED,
        detail,
        zeropoint=fit.zeropoint,
        zeropoint_err=fit.zeropoint_err,
        rms=fit.rms,
        color=color_name if use_color else None,
        color_term=fit.color_term if use_color else math.nan,
        color_term_err=fit.color_term_err if use_color else math.nan,
        color_ref=fit.color_ref if use_color else math.nan,
        n_stars=n_used,
        n_matched=n_matched,
        chi2_reduced=fit.chi2_reduced,
        stars=stars,
        **info,
    )
    log.info("photometry: L1ZP %.4f +- %.4f (%s, %s)", fit.zeropoint, fit.zeropoint_err,
             reference, detail)  # fmt: skip
    return result


def _isolated(band_mag, ref_rows, rx, ry, config) -> np.ndarray:
    """True where the reference star has no neighbour within ``isolation_arcsec`` less than
    ``blend_delta_mag`` fainter in the band (a neighbour without a magnitude counts as faint)."""
    if config.isolation_arcsec <= 0 or ref_rows.size == 0:
        return np.ones(ref_rows.size, bool)
    radius = config.isolation_arcsec / 3600.0
    finite = np.flatnonzero(np.isfinite(rx) & np.isfinite(ry))
    a, b, _ = pairs_within(rx[ref_rows], ry[ref_rows], rx[finite], ry[finite], radius)
    b = finite[b]
    other = b != ref_rows[a]
    a, b = a[other], b[other]
    with np.errstate(invalid="ignore"):
        bright = band_mag[b] < band_mag[ref_rows[a]] + config.blend_delta_mag
    crowded = np.zeros(ref_rows.size, bool)
    crowded[a[bright]] = True
    return ~crowded


def _colors(refstars: ReferenceStars, ref_band, ref_rows, config):
    """The colour for the band's colour term at the matched stars: ``(name, colour, var,
    cov)``, name like ``'g-r'`` (the first pair of :attr:`PhotometryConfig.color_pairs` the
    catalogue has as columns, else the first it can derive), ``var`` the colour's variance from
    the catalogue errors and ``cov`` its covariance with the band's magnitude (shared
    catalogue bands, e.g. r in r and g-r). ``name`` None (and NaN arrays) when there is none."""
    pairs = config.color_pairs.get(ref_band.band, ())
    found = None
    for first, second in pairs:
        mags = [
            band_magnitudes(
                refstars,
                b,
                default_err=config.default_ref_err_mag,
                color_range=config.transform_color_range,
            )  # fmt: skip
            for b in (first, second)
        ]
        if mags[0] is None or mags[1] is None:
            continue
        candidate = (f"{first}-{second}", mags[0], mags[1])
        if mags[0].direct and mags[1].direct:
            found = candidate
            break
        found = found or candidate
    nan = np.full(ref_rows.size, np.nan)
    if found is None:
        return None, nan, nan, nan
    name, a, b = found
    coef: dict[str, np.ndarray] = {}
    errs: dict[str, np.ndarray] = {}
    for sign, mags in ((1.0, a), (-1.0, b)):
        for band, (c, e) in mags.terms.items():
            coef[band] = coef.get(band, 0.0) + sign * np.broadcast_to(c, e.shape)[ref_rows]
            errs[band] = e[ref_rows]
    var = sum((coef[band] * errs[band]) ** 2 for band in coef)
    cov = np.zeros(ref_rows.size)
    for band, (c, e) in ref_band.terms.items():
        if band in coef:
            cov = cov + np.broadcast_to(c, e.shape)[ref_rows] * coef[band] * e[ref_rows] ** 2
    colors = a.mag[ref_rows] - b.mag[ref_rows]
    return name, colors, np.where(np.isfinite(colors), var, np.nan), cov


@dataclass(frozen=True)
class _Fit:
    zeropoint: float
    zeropoint_err: float
    color_term: float
    color_term_err: float
    color_ref: float
    rms: float
    chi2_reduced: float
    keep: np.ndarray
    residuals: np.ndarray


def _wls(y, sigma, color_ref, color=None, var_c=None, cov_yc=None, slope=0.0):
    """Weighted least squares of ``y = a + b (color - color_ref)`` (``color`` None: ``y = a``).

    With a colour, its catalogue errors are accounted for (errors in variables, the moment
    correction of Fuller 1987): ``sum w (dc^2 - var_c)`` and ``sum w (dc y - cov_yc)`` replace
    ``sum w dc^2`` and ``sum w dc y`` (otherwise the slope is biased by the colour's own errors
    and their covariance with ``y``), and each star's variance is ``sigma^2 + b^2 var_c -
    2 b cov_yc`` with ``b = slope`` (the previous iteration's). Returns ``(params, covariance
    scaled by max(1, chi2/dof), chi2/dof, residuals / their sigma)``.
    """
    if color is None:
        w = 1.0 / sigma**2
        normal = np.array([[np.sum(w)]])
        rhs = np.array([np.sum(w * y)])
        design = np.ones((y.size, 1))
    else:
        w = 1.0 / np.maximum(sigma**2 + slope**2 * var_c - 2 * slope * cov_yc, 0.25 * sigma**2)
        dc = color - color_ref
        normal = np.array(
            [[np.sum(w), np.sum(w * dc)], [np.sum(w * dc), np.sum(w * (dc**2 - var_c))]]
        )
        rhs = np.array([np.sum(w * y), np.sum(w * (dc * y - cov_yc))])
        design = np.column_stack([np.ones(y.size), dc])
    try:
        cov = np.linalg.inv(normal)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(cov)) or np.any(np.diag(cov) <= 0):
        return None
    params = cov @ rhs
    resid = y - design @ params
    dof = y.size - design.shape[1]
    chi2 = float(np.sum(w * resid**2) / dof) if dof > 0 else math.nan
    scale = max(1.0, chi2) if math.isfinite(chi2) else 1.0
    return params, cov * scale, chi2


def _clipped_fit(y, sigma, config: PhotometryConfig, color=None, var_c=None, cov_yc=None) -> _Fit:
    """:func:`_wls` iterated with outlier rejection (see :class:`PhotometryConfig`)."""
    n_params = 1 if color is None else 2
    keep = np.ones(y.size, bool)
    result = None
    slope = 0.0
    for _ in range(config.max_iterations):
        if color is None:
            color_ref = 0.0
            solved = _wls(y[keep], sigma[keep], color_ref)
        else:
            color_ref = float(np.median(color[keep]))
            solved = _wls(y[keep], sigma[keep], color_ref, color[keep], var_c[keep],
                          cov_yc[keep], slope)  # fmt: skip
        if solved is None:
            break
        result = (solved, color_ref, keep, slope)
        params = solved[0]
        if color is None:
            model, var = params[0], sigma**2
        else:
            slope = float(params[1])
            model = params[0] + slope * (color - color_ref)
            var = np.maximum(sigma**2 + slope**2 * var_c - 2 * slope * cov_yc, 0.25 * sigma**2)
        z = (y - model) / np.sqrt(var)
        centre = np.median(z[keep])
        rstd = _MAD_TO_SIGMA * np.median(np.abs(z[keep] - centre))
        if not rstd > 0:
            break
        new_keep = np.abs(z - centre) <= config.clip_sigma * rstd
        if new_keep.sum() <= n_params or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if result is None:
        nan = math.nan
        return _Fit(nan, nan, nan, nan, nan, nan, nan, np.zeros(y.size, bool), y * nan)
    (params, cov, chi2), color_ref, keep, _ = result
    model = params[0] + (params[1] * (color - color_ref) if color is not None else 0.0)
    resid = y - model
    kept = resid[keep]
    rms = _MAD_TO_SIGMA * float(np.median(np.abs(kept - np.median(kept))))
    errors = np.sqrt(np.diag(cov))
    return _Fit(
        zeropoint=float(params[0]),
        zeropoint_err=float(errors[0]),
        color_term=float(params[1]) if color is not None else math.nan,
        color_term_err=float(errors[1]) if color is not None else math.nan,
        color_ref=color_ref if color is not None else math.nan,
        rms=rms,
        chi2_reduced=chi2,
        keep=keep,
        residuals=resid,
    )
