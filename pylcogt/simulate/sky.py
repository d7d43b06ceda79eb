"""Sky side of the simulation: synthetic star catalogue, TAN projection, PSF stamps, cosmic rays.

Pixel positions here are 1-indexed FITS coordinates (the centre of the first pixel is 1.0) of the
image being rendered; numpy index = FITS - 1. Fluxes and deposits are electrons.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

from pylcogt.astrometry.sip import tan_deproject, tan_project

__all__ = [
    "Catalogue",
    "make_catalogue",
    "tan_project",
    "tan_deproject",
    "format_ra",
    "format_dec",
    "parse_sexagesimal",
    "render_stars",
    "cosmic_rays",
    "lst_hours",
    "alt_airmass",
    "galactic_latitude",
    "mjd",
]

CR_RATE_PER_CM2_PER_MIN = 1.0
_erf = np.vectorize(math.erf, otypes=[float])


class Catalogue:
    """Stars around (ra0, dec0): ``ra``, ``dec`` deg, ``mag`` (rp), ``color`` (mag_f = mag +
    color * Filter.color), ``tycho2`` (bool: a real Tycho-2 star, else synthetic)."""

    def __init__(self, ra, dec, mag, color, tycho2=None):
        self.ra, self.dec, self.mag, self.color = ra, dec, mag, color
        self.tycho2 = np.zeros(len(ra), dtype=bool) if tycho2 is None else np.asarray(tycho2)

    @classmethod
    def concatenate(cls, *cats: Catalogue) -> Catalogue:
        def cat(name):
            return np.concatenate([getattr(c, name) for c in cats])

        return cls(cat("ra"), cat("dec"), cat("mag"), cat("color"), cat("tycho2"))

    def __len__(self) -> int:
        return len(self.ra)


def make_catalogue(
    rng: np.random.Generator,
    ra0: float,
    dec0: float,
    half_width_deg: float,
    n: int,
    *,
    n_bright: int = 3,
    mag_range: tuple[float, float] = (12.0, 20.0),
    bright_range: tuple[float, float] = (10.0, 11.5),
) -> Catalogue:
    """``n`` stars uniform over a square of half-width ``half_width_deg`` in the tangent plane,
    N(<m) ~ 10^(0.3 m); the first ``n_bright`` are brighter, inside the central 70%."""
    lo, hi = mag_range
    u = rng.uniform(0, 1, n)
    mag = np.log10(10 ** (0.3 * lo) + u * (10 ** (0.3 * hi) - 10 ** (0.3 * lo))) / 0.3
    xi = rng.uniform(-half_width_deg, half_width_deg, n)
    eta = rng.uniform(-half_width_deg, half_width_deg, n)
    k = min(n_bright, n)
    mag[:k] = rng.uniform(*bright_range, k)
    xi[:k] = rng.uniform(-0.7, 0.7, k) * half_width_deg / 1.15
    eta[:k] = rng.uniform(-0.7, 0.7, k) * half_width_deg / 1.15
    color = rng.normal(0.6, 0.3, n)
    ra, dec = tan_deproject(xi, eta, ra0, dec0)
    return Catalogue(ra, dec, mag, color)


def format_ra(ra_deg: float) -> str:
    """'HH:MM:SS.sss' like the RA keyword of real headers."""
    ms = round((ra_deg % 360.0) / 15.0 * 3600 * 1000) % (24 * 3600 * 1000)
    h, rem = divmod(ms, 3600 * 1000)
    m, rem = divmod(rem, 60 * 1000)
    return f"{h:02d}:{m:02d}:{rem // 1000:02d}.{rem % 1000:03d}"


def format_dec(dec_deg: float) -> str:
    """'sDD:MM:SS.ss' like the DEC keyword of real headers."""
    sign = "-" if dec_deg < 0 else "+"
    cs = round(abs(dec_deg) * 3600 * 100)
    d, rem = divmod(cs, 3600 * 100)
    m, rem = divmod(rem, 60 * 100)
    return f"{sign}{d:02d}:{m:02d}:{rem // 100:02d}.{rem % 100:02d}"


def parse_sexagesimal(text: str, hours: bool = False) -> float:
    """'HH:MM:SS.s' / 'sDD:MM:SS.s' -> degrees."""
    sign = -1.0 if text.strip().startswith("-") else 1.0
    a, b, c = (abs(float(p)) for p in text.strip().lstrip("+-").split(":"))
    value = sign * (a + b / 60 + c / 3600)
    return value * 15.0 if hours else value


def render_stars(image: np.ndarray, x, y, flux, sigma: float) -> None:
    """Add pixel-integrated circular Gaussians (``flux`` e- each, ``sigma`` pixels) in place."""
    ny, nx = image.shape
    s2 = math.sqrt(2.0) * sigma
    for xc, yc, f in zip(np.asarray(x), np.asarray(y), np.asarray(flux), strict=True):
        peak = f / (2 * math.pi * sigma**2)
        half = int(math.ceil(sigma * math.sqrt(2 * math.log(max(peak, 1.0) / 0.01)))) + 1
        half = max(half, int(math.ceil(3 * sigma)))
        c0, r0 = int(round(xc)) - 1, int(round(yc)) - 1  # nearest pixel, 0-indexed
        cols = np.arange(max(0, c0 - half), min(nx, c0 + half + 1))
        rows = np.arange(max(0, r0 - half), min(ny, r0 + half + 1))
        if cols.size == 0 or rows.size == 0:
            continue
        gx = np.diff(_erf((np.append(cols, cols[-1] + 1) + 0.5 - xc) / s2)) / 2
        gy = np.diff(_erf((np.append(rows, rows[-1] + 1) + 0.5 - yc) / s2)) / 2
        # pixel k (0-indexed) spans FITS [k + 0.5, k + 1.5]
        image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] += f * np.outer(gy, gx)


def cosmic_rays(
    rng: np.random.Generator, shape: tuple[int, int], area_cm2: float, seconds: float
) -> np.ndarray:
    """Cosmic-ray hits as rows ``(x, y, electrons)`` (1-indexed pixels of ``shape``): Poisson
    number of events at CR_RATE_PER_CM2_PER_MIN, each a straight 1-5 pixel track carrying
    500-5000 e- in total. Pixels hit twice are merged."""
    n = rng.poisson(CR_RATE_PER_CM2_PER_MIN * area_cm2 * seconds / 60.0)
    if n == 0:
        return np.zeros((0, 3))
    ny, nx = shape
    length = rng.integers(1, 6, n)
    total = rng.uniform(500.0, 5000.0, n)
    x0, y0 = rng.uniform(0, nx, n), rng.uniform(0, ny, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    event = np.repeat(np.arange(n), length)
    step = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    col = np.floor(x0[event] + step * np.cos(angle[event])).astype(int)
    row = np.floor(y0[event] + step * np.sin(angle[event])).astype(int)
    e = total[event] / length[event] * rng.uniform(0.6, 1.4, event.size)
    keep = (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
    key = row[keep] * nx + col[keep]
    uniq, inverse = np.unique(key, return_inverse=True)
    dep = np.zeros(uniq.size)
    np.add.at(dep, inverse, e[keep])
    r, c = np.divmod(uniq, nx)
    return np.column_stack([c + 1, r + 1, dep])


def mjd(t: dt.datetime) -> float:
    return (t - dt.datetime(1858, 11, 17)).total_seconds() / 86400.0


def lst_hours(t: dt.datetime, lon_deg: float) -> float:
    """Local mean sidereal time, hours (GMST from the standard linear formula)."""
    d = mjd(t) - 51544.5
    return (18.697374558 + 24.06570982441908 * d + lon_deg / 15.0) % 24.0


def galactic_latitude(ra: float, dec: float) -> float:
    """Galactic latitude (deg) of ICRS (ra, dec) degrees (north galactic pole 192.85948,
    27.12825)."""
    d, dp = math.radians(dec), math.radians(27.12825)
    sin_b = math.sin(d) * math.sin(dp) + math.cos(d) * math.cos(dp) * math.cos(
        math.radians(ra - 192.85948)
    )
    return math.degrees(math.asin(max(-1.0, min(1.0, sin_b))))


def alt_airmass(ra: float, dec: float, lat: float, lst_h: float) -> tuple[float, float]:
    """Altitude (deg) and plane-parallel airmass (capped at 10) of (ra, dec)."""
    ha = math.radians(lst_h * 15.0 - ra)
    phi, d = math.radians(lat), math.radians(dec)
    sin_alt = math.sin(phi) * math.sin(d) + math.cos(phi) * math.cos(d) * math.cos(ha)
    alt = math.degrees(math.asin(max(-1.0, min(1.0, sin_alt))))
    return alt, (1.0 / sin_alt if sin_alt > 0.1 else 10.0)
