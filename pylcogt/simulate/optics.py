"""The true WCS of a simulated light frame: TAN plus a SIP distortion polynomial.

Pixel coordinates are 1-indexed FITS ``x, y`` of the final (trimmed / mosaicked) frame; the SIP
offsets ``u = x - CRPIX1``, ``v = y - CRPIX2`` are in pixels; angles are degrees. Pixel -> sky
follows the FITS SIP convention: intermediate world coordinates = CD @ (u + f(u, v), v + g(u, v))
with ``f = sum A_p_q u^p v^q`` (and ``g`` from B), then the gnomonic (TAN) deprojection about
CRVAL. Sky -> pixel inverts that exactly (Newton iteration to 1e-10 pixel), so star positions are
exact for the WCS written to the truth file; no approximate inverse (AP/BP) is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pylcogt.simulate.sky import tan_deproject, tan_project

__all__ = ["SipWcs", "radial_sip"]

_NEWTON_TOL = 1e-10  # pixels
_NEWTON_MAXITER = 50


@dataclass(frozen=True)
class SipWcs:
    """TAN-SIP WCS; ``a``/``b`` map ``(p, q)`` to the coefficient of ``u^p v^q`` (pixels)."""

    crpix: tuple[float, float]
    crval: tuple[float, float]
    cd: tuple[tuple[float, float], tuple[float, float]]  # deg per pixel, [[CD1_1, CD1_2], ...]
    a: dict[tuple[int, int], float] = field(default_factory=dict)
    b: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def order(self) -> int:
        return max((p + q for p, q in (*self.a, *self.b)), default=2)

    def cards(self) -> dict[str, object]:
        """FITS header cards (keyword -> value); ``astropy.wcs.WCS(fits.Header(cards))``."""
        (c11, c12), (c21, c22) = self.cd
        out: dict[str, object] = {
            "WCSAXES": 2,
            "CTYPE1": "RA---TAN-SIP",
            "CTYPE2": "DEC--TAN-SIP",
            "CUNIT1": "deg",
            "CUNIT2": "deg",
            "RADESYS": "ICRS",
            "CRPIX1": float(self.crpix[0]),
            "CRPIX2": float(self.crpix[1]),
            "CRVAL1": float(self.crval[0]),
            "CRVAL2": float(self.crval[1]),
            "CD1_1": float(c11),
            "CD1_2": float(c12),
            "CD2_1": float(c21),
            "CD2_2": float(c22),
        }
        for name, coeffs in (("A", self.a), ("B", self.b)):
            out[f"{name}_ORDER"] = self.order
            for (p, q), value in sorted(coeffs.items()):
                out[f"{name}_{p}_{q}"] = float(value)
        return out

    def linear(self) -> SipWcs:
        """The same WCS without the distortion polynomial."""
        return SipWcs(self.crpix, self.crval, self.cd)

    def _focal(self, u, v):
        """(u + f, v + g) and the Jacobian terms (df/du, df/dv, dg/du, dg/dv)."""
        fu, fv, gu, gv = (np.zeros_like(u) for _ in range(4))
        f, g = u.copy(), v.copy()
        for coeffs, out, du, dv in ((self.a, f, fu, fv), (self.b, g, gu, gv)):
            for (p, q), c in coeffs.items():
                out += c * u**p * v**q
                if p:
                    du += c * p * u ** (p - 1) * v**q
                if q:
                    dv += c * q * u**p * v ** (q - 1)
        return f, g, fu, fv, gu, gv

    def pixel_to_world(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) degrees of 1-indexed pixel positions."""
        u = np.asarray(x, dtype=float) - self.crpix[0]
        v = np.asarray(y, dtype=float) - self.crpix[1]
        f, g = self._focal(u, v)[:2]
        (c11, c12), (c21, c22) = self.cd
        return tan_deproject(c11 * f + c12 * g, c21 * f + c22 * g, *self.crval)

    def world_to_pixel(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """Exact inverse of :meth:`pixel_to_world` (1-indexed pixels; Newton iteration).

        NaN where the iteration does not converge: far outside the frame a pincushion
        polynomial folds over and some sky has no pixel.
        """
        ra, dec = np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)
        xi, eta = tan_project(ra, dec, *self.crval)
        (c11, c12), (c21, c22) = self.cd
        det = c11 * c22 - c12 * c21
        pu, pv = (c22 * xi - c12 * eta) / det, (-c21 * xi + c11 * eta) / det
        u, v = pu.copy(), pv.copy()
        step = np.full(u.shape, np.inf)
        with np.errstate(all="ignore"):
            for _ in range(_NEWTON_MAXITER):
                f, g, fu, fv, gu, gv = self._focal(u, v)
                ru, rv = f - pu, g - pv
                jdet = fu * gv - fv * gu + fu + gv + 1.0  # det of [[1 + fu, fv], [gu, 1 + gv]]
                du = ((1.0 + gv) * ru - fv * rv) / jdet
                dv = (-gu * ru + (1.0 + fu) * rv) / jdet
                u, v = u - du, v - dv
                step = np.abs(du) + np.abs(dv)
                if not np.any(step > _NEWTON_TOL):
                    break
        bad = ~(step <= _NEWTON_TOL)
        u[bad], v[bad] = np.nan, np.nan
        return u + self.crpix[0], v + self.crpix[1]


def radial_sip(
    crpix: tuple[float, float],
    crval: tuple[float, float],
    scale_arcsec: float,
    rotation_deg: float,
    corner_arcsec: float,
    corner_radius_px: float,
) -> SipWcs:
    """TAN-SIP with a pure radial cubic distortion ``(u, v) * (1 + k r^2)``, r in pixels.

    North up, east left (CD1_1 < 0) rotated by ``rotation_deg`` (counter-clockwise on the
    pixel grid). ``k`` gives a sky displacement of ``corner_arcsec`` between the SIP WCS and its
    linear part at ``corner_radius_px`` from CRPIX; positive: the corner pixel sees sky farther
    from the centre than the linear part says (barrel distortion: stars image closer to the
    centre), negative: pincushion.
    """
    s, t = scale_arcsec / 3600.0, math.radians(rotation_deg)
    cd = ((-s * math.cos(t), s * math.sin(t)), (s * math.sin(t), s * math.cos(t)))
    k = corner_arcsec / scale_arcsec / corner_radius_px**3 if corner_radius_px > 0 else 0.0
    a = {(3, 0): k, (1, 2): k}
    b = {(2, 1): k, (0, 3): k}
    return SipWcs((float(crpix[0]), float(crpix[1])), (float(crval[0]), float(crval[1])), cd, a, b)
