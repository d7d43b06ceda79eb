"""TAN-SIP fit of a WCS to matched (pixel, sky) pairs, and the matching loop around it.

Conventions: pixel positions ``x, y`` are 1-indexed FITS pixels (column, row; the centre of the
first pixel is 1.0); sky positions are degrees; residuals and rms are arcsec. The model is the
SIP convention (Shupe et al. 2005) with CRPIX fixed at the image centre
``((width + 1) / 2, (height + 1) / 2)``::

    u, v = x - CRPIX1, y - CRPIX2
    (xi, eta) = CD @ (u + f(u, v), v + g(u, v)),  f = sum A_p_q u^p v^q  (2 <= p + q <= order)

where ``(xi, eta)`` are the gnomonic (TAN) standard coordinates about CRVAL in degrees (the FITS
intermediate world coordinates). The fit is linear least squares of ``xi`` and ``eta`` as full
polynomials of ``(u, v)`` up to ``order``: the constant term is absorbed by moving CRVAL (and
refitting), the linear part is CD, and the higher terms give ``A, B = CD^-1 (higher terms)``.
The inverse polynomials ``AP, BP`` (all terms; order + 1, or higher up to 9 where the
distortion needs it for a 0.002 px round trip) are fitted on a grid over the image, so world ->
pixel needs no iteration. Outliers are rejected at 3 rstd on either axis, with
``rstd = 1.4826 * MAD`` (the project's convention, :mod:`pylcogt.stats`).

Order 0 means no distortion: a linear TAN fit (CRVAL and CD).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS, FITSFixedWarning, Sip

from pylcogt.astrometry.match import nearest_one_to_one
from pylcogt.stats import RSTD_PER_MAD

__all__ = [
    "FitError",
    "SipFit",
    "n_coeffs",
    "tan_project",
    "tan_deproject",
    "fit_tan_sip",
    "refine_wcs",
    "sip_order_of",
    "world_to_pixel",
    "make_wcs",
    "sky_separation_arcsec",
]

#: Residuals are clipped at this many rstd.
CLIP_SIGMA = 3.0
#: The inverse polynomials AP/BP get the lowest order (from SIP order + 1) whose round trip
#: pixel -> world -> pixel is this good over the image (pixels), up to MAX_INVERSE_ORDER.
INVERSE_TOLERANCE_PX = 0.002
MAX_INVERSE_ORDER = 9
#: Fit / clip passes at most (rejected stars may return during the first half).
MAX_CLIP_PASSES = 10
#: Floor of the clipping rstd (arcsec): noise-free positions must not lose good stars.
MIN_RSTD_ARCSEC = 1e-3
#: CRVAL is moved until the fit's constant term is below this (deg; 3.6 micro-arcsec).
CRVAL_TOLERANCE_DEG = 1e-9


class FitError(ValueError):
    """Too few matched stars for even a linear fit."""


@dataclass(frozen=True)
class SipFit:
    """A fitted WCS. ``sip_order`` is 0 for a plain TAN. ``source_index`` / ``ref_index`` index
    the source and reference arrays given, for the ``n_matched`` pairs kept in the final fit.
    ``note`` says why the order is lower than asked ('' when it is not)."""

    wcs: WCS
    sip_order: int
    n_matched: int
    rms_arcsec: float
    note: str
    source_index: np.ndarray
    ref_index: np.ndarray


def n_coeffs(order: int) -> int:
    """Coefficients per axis of a full 2-D polynomial of ``order`` (order 0 is fitted as 1)."""
    order = max(order, 1)
    return (order + 1) * (order + 2) // 2


def sip_order_of(wcs: WCS) -> int:
    """The SIP order of ``wcs`` (0 without SIP)."""
    return 0 if wcs.sip is None else int(wcs.sip.a_order)


def tan_project(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic standard coordinates ``(xi, eta)`` in degrees of ``(ra, dec)`` (deg) about the
    tangent point ``(ra0, dec0)``; xi grows towards east (increasing RA), eta towards north."""
    ra, dec = np.radians(np.asarray(ra, dtype=np.float64)), np.radians(np.asarray(dec, float))
    a0, d0 = np.radians(ra0), np.radians(dec0)
    dra = ra - a0
    cos_dec = np.cos(dec)
    den = np.sin(dec) * np.sin(d0) + cos_dec * np.cos(d0) * np.cos(dra)
    xi = cos_dec * np.sin(dra) / den
    eta = (np.sin(dec) * np.cos(d0) - cos_dec * np.sin(d0) * np.cos(dra)) / den
    return np.degrees(xi), np.degrees(eta)


def tan_deproject(xi, eta, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`tan_project`: ``(ra, dec)`` in degrees (ra in [0, 360))."""
    x, y = np.radians(np.asarray(xi, dtype=np.float64)), np.radians(np.asarray(eta, float))
    a0, d0 = np.radians(ra0), np.radians(dec0)
    den = np.cos(d0) - y * np.sin(d0)
    ra = a0 + np.arctan2(x, den)
    dec = np.arctan2(np.sin(d0) + y * np.cos(d0), np.hypot(x, den))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def sky_separation_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle distance in arcsec between positions in degrees (haversine)."""
    r1, d1, r2, d2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (ra1, dec1, ra2, dec2))
    s = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(s, 0.0, 1.0)))) * 3600.0


def _exponents(order: int) -> list[tuple[int, int]]:
    return [(n - q, q) for n in range(order + 1) for q in range(n + 1)]


def _powers(t: np.ndarray, order: int) -> list[np.ndarray]:
    out = [np.ones_like(t)]
    for _ in range(order):
        out.append(out[-1] * t)
    return out


def _design(u: np.ndarray, v: np.ndarray, exps: list[tuple[int, int]], scale: float) -> np.ndarray:
    order = max(p + q for p, q in exps)
    pu, pv = _powers(u / scale, order), _powers(v / scale, order)
    return np.stack([pu[p] * pv[q] for p, q in exps], axis=1)


def _poly(coeffs: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``sum coeffs[p, q] u^p v^q``."""
    order = coeffs.shape[0] - 1
    pu, pv = _powers(np.asarray(u, dtype=np.float64), order), _powers(np.asarray(v, float), order)
    out = np.zeros(np.broadcast(u, v).shape)
    for p in range(order + 1):
        for q in range(order + 1 - p):
            if coeffs[p, q] != 0.0:
                out += coeffs[p, q] * pu[p] * pv[q]
    return out


def make_wcs(
    crpix,
    crval,
    cd,
    a: np.ndarray | None = None,
    b: np.ndarray | None = None,
    ap: np.ndarray | None = None,
    bp: np.ndarray | None = None,
    *,
    width: int | None = None,
    height: int | None = None,
) -> WCS:
    """An ICRS ``RA---TAN`` WCS, ``RA---TAN-SIP`` when ``a`` and ``b`` are given (``a[p, q]`` is
    ``A_p_q``). CRPIX is 1-indexed; CRVAL and CD in degrees."""
    wcs = WCS(naxis=2)
    sip = a is not None and b is not None
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crpix = np.asarray(crpix, dtype=np.float64)
    wcs.wcs.crval = np.asarray(crval, dtype=np.float64)
    wcs.wcs.cd = np.asarray(cd, dtype=np.float64)
    wcs.wcs.radesys = "ICRS"
    if sip:
        wcs.sip = Sip(a, b, ap, bp, wcs.wcs.crpix)
    if width is not None and height is not None:
        wcs.pixel_shape = (int(width), int(height))
    with warnings.catch_warnings():
        # wcsset() on a WCS built here: nothing for astropy to fix, but be explicit about it
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs.wcs.set()
    return wcs


def _affordable_order(n: int, order: int, per_coeff: float) -> int:
    """The highest order <= ``order`` (a SIP order 2.., or 0 for linear) that ``n`` stars can
    fit; FitError below what a linear fit needs."""
    for candidate in range(order, 1, -1):
        if n >= per_coeff * n_coeffs(candidate):
            return candidate
    if n >= max(per_coeff * n_coeffs(1), n_coeffs(1) + 1):
        return 0
    raise FitError(f"{n} matched stars: a linear fit needs {per_coeff * n_coeffs(1):g}")


def _solve_poly(u, v, ra, dec, order: int, crval: np.ndarray, scale: float):
    """Least-squares coefficients of xi and eta (deg) in scaled ``(u, v)``, moving CRVAL until the
    constant terms vanish. Returns ``(coef_xi, coef_eta, crval, exponents)``."""
    exps = _exponents(max(order, 1))
    design = _design(u, v, exps, scale)
    for _ in range(10):
        xi, eta = tan_project(ra, dec, crval[0], crval[1])
        coef, *_ = np.linalg.lstsq(design, np.stack([xi, eta], axis=1), rcond=None)
        c_xi, c_eta = coef[:, 0], coef[:, 1]
        if np.hypot(c_xi[0], c_eta[0]) < CRVAL_TOLERANCE_DEG:
            break
        crval = np.array(tan_deproject(c_xi[0], c_eta[0], crval[0], crval[1]), dtype=np.float64)
    return c_xi, c_eta, crval, exps


def _clip(rx: np.ndarray, ry: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Stars within ``CLIP_SIGMA`` rstd of the median on both axes. One rstd for both axes, from
    the MAD of the kept residuals of both pooled (centroid errors are isotropic; twice the
    values make a steadier estimate when only a few tens of stars constrain the fit)."""
    med_x, med_y = np.median(rx[keep]), np.median(ry[keep])
    pooled = np.concatenate([rx[keep] - med_x, ry[keep] - med_y])
    rstd = max(RSTD_PER_MAD * float(np.median(np.abs(pooled))), MIN_RSTD_ARCSEC)
    with np.errstate(invalid="ignore"):
        return (np.abs(rx - med_x) <= CLIP_SIGMA * rstd) & (np.abs(ry - med_y) <= CLIP_SIGMA * rstd)


def _robust_fit(u, v, ra, dec, valid: np.ndarray, order: int, crval: np.ndarray, scale: float):
    """:func:`_solve_poly` of ``order`` on the ``valid`` pairs with iterated outlier rejection
    (a rejected star may come back during the first half of the passes). Returns
    ``(coef_xi, coef_eta, crval, exponents, kept)``."""
    keep = valid.copy()
    u0, v0 = np.nan_to_num(u), np.nan_to_num(v)
    for iteration in range(MAX_CLIP_PASSES):
        c_xi, c_eta, crval, exps = _solve_poly(
            u[keep], v[keep], ra[keep], dec[keep], order, crval, scale
        )
        design = _design(u0, v0, exps, scale)
        xi, eta = tan_project(ra, dec, crval[0], crval[1])
        rx, ry = (xi - design @ c_xi) * 3600.0, (eta - design @ c_eta) * 3600.0
        # studentized: a fitted star's residual shrinks by sqrt(1 - leverage), a rejected
        # star's prediction error grows by sqrt(1 + leverage)
        gram_inv = np.linalg.pinv(design[keep].T @ design[keep])
        leverage = np.einsum("ij,jk,ik->i", design, gram_inv, design)
        factor = np.sqrt(np.where(keep, np.clip(1.0 - leverage, 1e-6, None), 1.0 + leverage))
        new_keep = _clip(rx / factor, ry / factor, keep) & valid
        if iteration >= MAX_CLIP_PASSES // 2:
            new_keep &= keep
        if np.array_equal(new_keep, keep) or new_keep.sum() < n_coeffs(order) + 1:
            return c_xi, c_eta, crval, exps, keep
        keep = new_keep
    c_xi, c_eta, crval, exps = _solve_poly(
        u[keep], v[keep], ra[keep], dec[keep], order, crval, scale
    )
    return c_xi, c_eta, crval, exps, keep


def _fit_inverse(a, b, crpix, width: int, height: int, min_order: int, scale: float):
    """AP, BP (all terms) fitted on a grid over the image plus a 5% margin: the lowest order
    from ``min_order`` up to :data:`MAX_INVERSE_ORDER` whose pixel -> world -> pixel round trip
    is within :data:`INVERSE_TOLERANCE_PX` on a second, offset grid (else the best one)."""

    def grid(n: int, margin: float):
        mx, my = margin * width, margin * height
        gx = np.linspace(0.5 - mx, width + 0.5 + mx, n)
        gy = np.linspace(0.5 - my, height + 0.5 + my, n)
        xx, yy = np.meshgrid(gx, gy)
        u, v = xx.ravel() - crpix[0], yy.ravel() - crpix[1]
        return u, v, u + _poly(a, u, v), v + _poly(b, u, v)

    u, v, big_u, big_v = grid(50, 0.05)
    cu, cv, check_u, check_v = grid(41, 0.0)
    best = None
    for order in range(min_order, max(min_order, MAX_INVERSE_ORDER) + 1):
        exps = _exponents(order)
        design = _design(big_u, big_v, exps, scale)
        coef, *_ = np.linalg.lstsq(design, np.stack([u - big_u, v - big_v], axis=1), rcond=None)
        ap, bp = np.zeros((order + 1, order + 1)), np.zeros((order + 1, order + 1))
        for k, (p, q) in enumerate(exps):
            ap[p, q] = coef[k, 0] / scale ** (p + q)
            bp[p, q] = coef[k, 1] / scale ** (p + q)
        error = max(
            np.abs(check_u + _poly(ap, check_u, check_v) - cu).max(),
            np.abs(check_v + _poly(bp, check_u, check_v) - cv).max(),
        )
        if best is None or error < best[0]:
            best = (error, ap, bp)
        if error <= INVERSE_TOLERANCE_PX:
            break
    return best[1], best[2]


def fit_tan_sip(
    x,
    y,
    ra,
    dec,
    *,
    width: int,
    height: int,
    order: int,
    crval=None,
    min_stars_per_coeff: float = 2.0,
) -> SipFit:
    """Fit a TAN-SIP WCS of ``order`` (0: linear TAN) to matched pairs: pixels ``x, y``
    (1-indexed) and reference ``ra, dec`` (deg), rejecting outliers (3 rstd per axis, iterated).

    The order is lowered (to 2, then linear) when fewer than ``min_stars_per_coeff *
    n_coeffs(order)`` pairs remain; ``crval`` (deg) is the starting tangent point (default:
    the pairs' mean position). ``width`` x ``height`` is the image size in pixels; CRPIX is
    its centre. FitError when even a linear fit is out of reach.
    """
    x, y, ra, dec = (np.asarray(a, dtype=np.float64).ravel() for a in (x, y, ra, dec))
    order = 0 if order <= 1 else int(order)  # SIP order 1 is the linear TAN
    crpix = np.array([(width + 1) / 2.0, (height + 1) / 2.0])
    scale = max(width, height) / 2.0
    u, v = x - crpix[0], y - crpix[1]
    keep = np.isfinite(u) & np.isfinite(v) & np.isfinite(ra) & np.isfinite(dec)
    if crval is None:
        crval = _mean_position(ra[keep], dec[keep]) if keep.any() else (0.0, 0.0)
    crval = np.asarray(crval, dtype=np.float64)
    # the order the stars afford; if outlier rejection leaves too few for it, start again from
    # every pair at the order the survivors afford
    fit_order = _affordable_order(int(keep.sum()), order, min_stars_per_coeff)
    while True:
        c_xi, c_eta, crval, exps, kept = _robust_fit(u, v, ra, dec, keep, fit_order, crval, scale)
        lower = _affordable_order(int(kept.sum()), fit_order, min_stars_per_coeff)
        if lower == fit_order:
            break
        fit_order = lower
    keep = kept

    raw = {
        pq: (c_xi[k] / scale ** sum(pq), c_eta[k] / scale ** sum(pq)) for k, pq in enumerate(exps)
    }
    cd = np.array([[raw[(1, 0)][0], raw[(0, 1)][0]], [raw[(1, 0)][1], raw[(0, 1)][1]]])
    a = b = ap = bp = None
    if fit_order >= 2:
        cd_inv = np.linalg.inv(cd)
        a, b = np.zeros((fit_order + 1,) * 2), np.zeros((fit_order + 1,) * 2)
        for (p, q), (h_xi, h_eta) in raw.items():
            if p + q >= 2:
                a[p, q] = cd_inv[0, 0] * h_xi + cd_inv[0, 1] * h_eta
                b[p, q] = cd_inv[1, 0] * h_xi + cd_inv[1, 1] * h_eta
        ap, bp = _fit_inverse(a, b, crpix, width, height, fit_order + 1, scale)
    wcs = make_wcs(crpix, crval, cd, a, b, ap, bp, width=width, height=height)

    used = np.flatnonzero(keep)
    ra_fit, dec_fit = wcs.all_pix2world(x[used], y[used], 1)
    sep = sky_separation_arcsec(ra_fit, dec_fit, ra[used], dec[used])
    rms = float(np.sqrt(np.mean(sep**2)))
    note = ""
    if fit_order != order:
        asked = f"SIP order {order}" if order >= 2 else "linear"
        got = f"SIP order {fit_order}" if fit_order >= 2 else "a linear TAN"
        need = min_stars_per_coeff * n_coeffs(order)
        note = f"{got} instead of {asked}: {used.size} matched stars ({asked} needs {need:g})"
    return SipFit(wcs, fit_order, int(used.size), rms, note, used, used.copy())


def _mean_position(ra: np.ndarray, dec: np.ndarray) -> tuple[float, float]:
    r, d = np.radians(ra), np.radians(dec)
    vx, vy, vz = (np.cos(d) * np.cos(r)).mean(), (np.cos(d) * np.sin(r)).mean(), np.sin(d).mean()
    return float(np.degrees(np.arctan2(vy, vx)) % 360.0), float(
        np.degrees(np.arctan2(vz, np.hypot(vx, vy)))
    )


def world_to_pixel(wcs: WCS, ra, dec, *, width: int, height: int, margin: float = 0.1):
    """1-indexed pixel positions of ``(ra, dec)`` (deg) under ``wcs``, for the stars that land on
    the image or within ``margin`` (fraction of its size) of it. Returns ``(x, y, index)``."""
    ra, dec = np.asarray(ra, dtype=np.float64).ravel(), np.asarray(dec, dtype=np.float64).ravel()
    crval, crpix = wcs.wcs.crval, wcs.wcs.crpix
    xi, eta = tan_project(ra, dec, crval[0], crval[1])
    near_side = np.isfinite(xi) & (np.abs(xi) < 45) & (np.abs(eta) < 45)
    u, v = np.linalg.solve(wcs.pixel_scale_matrix, np.stack([xi, eta]))
    x, y = u + crpix[0], v + crpix[1]
    # a generous first cut with the linear part (distortion is a small fraction of the field)
    pad = 0.25
    near = near_side & (x > 0.5 - pad * width) & (x < width + 0.5 + pad * width)
    near &= (y > 0.5 - pad * height) & (y < height + 0.5 + pad * height)
    index = np.flatnonzero(near)
    if wcs.sip is not None and index.size:
        x, y = wcs.all_world2pix(ra[index], dec[index], 1, quiet=True)
    else:
        x, y = x[index], y[index]
    inside = np.isfinite(x) & np.isfinite(y)
    inside &= (x > 0.5 - margin * width) & (x < width + 0.5 + margin * width)
    inside &= (y > 0.5 - margin * height) & (y < height + 0.5 + margin * height)
    return x[inside], y[inside], index[inside]


def refine_wcs(
    wcs0: WCS,
    x,
    y,
    ref_ra,
    ref_dec,
    *,
    width: int,
    height: int,
    order: int,
    match_radius_arcsec: float,
    min_stars_per_coeff: float = 2.0,
    passes: int = 5,
) -> SipFit:
    """Match reference stars (deg) to sources (1-indexed pixels) under the current WCS, fit,
    and repeat with the new WCS (up to ``passes`` times).

    Each reference star takes its nearest source within the radius (one to one). The first
    radius is ``match_radius_arcsec``; each pass halves it, but not below 5x the last fit's rms
    or half a pixel. Stops early when a pass matches the same pairs at the same radius. The
    returned indices refer to ``x, y`` and ``ref_ra, ref_dec``.
    FitError when too few stars match for a linear fit.
    """
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    good = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    xs, ys = x[good], y[good]
    pixscale = float(np.sqrt(abs(np.linalg.det(wcs0.pixel_scale_matrix)))) * 3600.0
    centre = ((width + 1) / 2.0, (height + 1) / 2.0)
    wcs, radius, fit, previous = wcs0, float(match_radius_arcsec), None, None
    for _ in range(passes):
        rx, ry, ref_idx = world_to_pixel(wcs, ref_ra, ref_dec, width=width, height=height)
        i_ref, i_src = nearest_one_to_one(rx, ry, xs, ys, radius / pixscale)
        i_ref, i_src = ref_idx[i_ref], good[i_src]
        crval = np.array(wcs.all_pix2world([centre[0]], [centre[1]], 1)).ravel()
        fit = fit_tan_sip(
            x[i_src],
            y[i_src],
            np.asarray(ref_ra)[i_ref],
            np.asarray(ref_dec)[i_ref],
            width=width,
            height=height,
            order=order,
            crval=crval,
            min_stars_per_coeff=min_stars_per_coeff,
        )
        fit = SipFit(
            fit.wcs, fit.sip_order, fit.n_matched, fit.rms_arcsec, fit.note,
            i_src[fit.source_index], i_ref[fit.ref_index],
        )  # fmt: skip
        new_radius = min(radius, max(radius / 2, 5.0 * fit.rms_arcsec, 0.5 * pixscale))
        matched = (tuple(i_src), tuple(i_ref))
        if matched == previous and new_radius == radius:
            break
        wcs, radius, previous = fit.wcs, new_radius, matched
    assert fit is not None
    return fit
