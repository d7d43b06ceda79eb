"""Reference stars for photometric calibration: positions and magnitudes per band.

:class:`ReferenceStars` holds ICRS positions (degrees) and, per band, magnitudes and their
1-sigma errors (NaN where the catalogue has none). Bands: Pan-STARRS 1 / SDSS ``u g r i z y``
(AB) and Johnson/Cousins ``B V R I`` (Vega), case-sensitive (``r`` is not ``R``).

Sources: a file (FITS or CSV, :func:`load_reference_file`, read once and cached), the registry
table loaded by ``pylcogt refcat load`` (:mod:`pylcogt.photometry.store`), or an in-memory
table (:func:`stars_from_table`). Column names are recognised (:data:`RA_COLUMNS`,
:func:`band_column_candidates`): Pan-STARRS DR1/DR2 MAST (``raMean``, ``gMeanPSFMag``,
``gMeanPSFMagErr``), VizieR II/349 (``RAJ2000``, ``gmag``, ``e_gmag``), APASS-like ``Vmag``,
``e_Vmag``, and plain ``ra``, ``dec``, ``g``, ``g_err``; ``columns={"g": "gKronMag", "g_err":
"gKronMagErr", "ra": ...}`` overrides. Pan-STARRS' missing value -999 becomes NaN.

B, V, R, I from g, r (and i) when the catalogue has no such column, with Tonry et al. (2012,
ApJ 750, 99; Table 6, quadratic in x = (g - r)_P1)::

    B = g + 0.212 + 0.556 x + 0.034 x^2   (scatter 0.032)
    V = r + 0.005 + 0.462 x + 0.013 x^2   (scatter 0.012)
    R = r - 0.137 - 0.108 x - 0.029 x^2   (scatter 0.015)
    I = i - 0.366 - 0.136 x - 0.018 x^2   (scatter 0.017)

The error of a transformed magnitude propagates the g, r (i) errors and adds the fit's scatter
in quadrature.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from pylcogt.errors import ConfigurationError

__all__ = [
    "BANDS",
    "MAG_SYSTEM",
    "TONRY2012",
    "RA_COLUMNS",
    "DEC_COLUMNS",
    "ReferenceStars",
    "BandMagnitudes",
    "band_column_candidates",
    "stars_from_table",
    "load_reference_file",
    "catalog_name_for",
    "band_magnitudes",
    "reference_stars_near",
    "angular_separation_deg",
    "clear_file_cache",
]

BANDS = ("u", "g", "r", "i", "z", "y", "B", "V", "R", "I")
MAG_SYSTEM = {b: "AB" for b in "ugrizy"} | {b: "Vega" for b in "BVRI"}

#: band -> (band it is added to, (a0, a1, a2) of a0 + a1 x + a2 x^2 with x = g - r, scatter);
#: Tonry et al. 2012, ApJ 750, 99, Table 6
TONRY2012: Mapping[str, tuple[str, tuple[float, float, float], float]] = {
    "B": ("g", (0.212, 0.556, 0.034), 0.032),
    "V": ("r", (0.005, 0.462, 0.013), 0.012),
    "R": ("r", (-0.137, -0.108, -0.029), 0.015),
    "I": ("i", (-0.366, -0.136, -0.018), 0.017),
}

RA_COLUMNS = ("raMean", "RAJ2000", "RA_ICRS", "_RAJ2000", "RAdeg", "raStack", "ra", "RA", "Ra",
              "ra_deg", "RA_deg", "ALPHA_J2000")  # fmt: skip
DEC_COLUMNS = ("decMean", "DEJ2000", "DE_ICRS", "_DEJ2000", "DEdeg", "decStack", "dec", "DEC",
               "Dec", "dec_deg", "DEC_deg", "DELTA_J2000")  # fmt: skip

_MISSING_BELOW = -90.0  # Pan-STARRS writes -999 for "no measurement"
_MAX_MAG = 50.0


def band_column_candidates(band: str) -> tuple[str, ...]:
    """Magnitude column names recognised for ``band``, by preference (case-sensitive)."""
    return (f"{band}MeanPSFMag", f"{band}mag", f"{band}_mag", f"mag_{band}", f"{band}MAG", band)


def _error_candidates(band: str, mag_column: str) -> tuple[str, ...]:
    m = mag_column
    by_column = (f"{m}Err", f"e_{m}", f"{m}_err", f"{m}err", f"{m}_error", f"err_{m}")
    by_band = (f"e_{band}", f"{band}_err", f"{band}err", f"err_{band}", f"magerr_{band}",
               f"{band}_magerr")  # fmt: skip
    return by_column + by_band


@dataclass(frozen=True)
class ReferenceStars:
    """Reference stars: ``ra``, ``dec`` (ICRS degrees, RA in [0, 360)), and per band
    ``mags[band]`` / ``errs[band]`` (magnitudes and 1-sigma errors, NaN where unknown).
    ``name``: the catalogue's name; ``columns``: which source column gave what."""

    name: str
    ra: np.ndarray
    dec: np.ndarray
    mags: Mapping[str, np.ndarray]
    errs: Mapping[str, np.ndarray]
    columns: Mapping[str, str] | None = None

    def __len__(self) -> int:
        return int(self.ra.size)

    @property
    def bands(self) -> tuple[str, ...]:
        """Bands with at least one magnitude, in :data:`BANDS` order."""
        return tuple(b for b in BANDS if b in self.mags and np.isfinite(self.mags[b]).any())

    @classmethod
    def empty(cls, name: str = "") -> ReferenceStars:
        return cls(name, np.zeros(0), np.zeros(0), {}, {})

    def subset(self, index) -> ReferenceStars:
        """The stars selected by ``index`` (boolean mask or integer indices)."""
        return ReferenceStars(
            self.name,
            self.ra[index],
            self.dec[index],
            {b: m[index] for b, m in self.mags.items()},
            {b: e[index] for b, e in self.errs.items()},
            self.columns,
        )

    def cone(self, ra_deg: float, dec_deg: float, radius_deg: float) -> ReferenceStars:
        """The stars within ``radius_deg`` of (``ra_deg``, ``dec_deg``)."""
        near = np.abs(self.dec - dec_deg) <= radius_deg
        index = np.flatnonzero(near)
        sep = angular_separation_deg(self.ra[index], self.dec[index], ra_deg, dec_deg)
        return self.subset(index[sep <= radius_deg])


def angular_separation_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle distance in degrees (haversine; arguments in degrees, broadcast)."""
    ra1, dec1, ra2, dec2 = (
        np.radians(np.asarray(a, dtype=np.float64)) for a in (ra1, dec1, ra2, dec2)
    )
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def _clean_mags(values: np.ndarray) -> np.ndarray:
    values = np.array(values, dtype=np.float64)
    bad = ~np.isfinite(values) | (values < _MISSING_BELOW) | (values > _MAX_MAG)
    values[bad] = np.nan
    return values


def _clean_errs(values: np.ndarray) -> np.ndarray:
    values = np.array(values, dtype=np.float64)
    values[~np.isfinite(values) | (values <= 0) | (values > _MAX_MAG)] = np.nan
    return values


def _pick(names: list[str], candidates: tuple[str, ...], what: str) -> str | None:
    present = set(names)
    found = next((c for c in candidates if c in present), None)
    if found is None:  # positions only: also case-insensitively
        lower = {n.lower(): n for n in names}
        if what in ("ra", "dec"):
            found = next((lower[c.lower()] for c in candidates if c.lower() in lower), None)
    return found


def stars_from_table(
    table: Table, *, name: str = "", columns: Mapping[str, str] | None = None
) -> ReferenceStars:
    """:class:`ReferenceStars` from a table's columns (see the module doc). ``columns``: explicit
    names for ``"ra"``, ``"dec"``, a band (``"g"``) or its error (``"g_err"``).
    ConfigurationError when positions or every magnitude column are missing, or an explicit
    name is not a column. Rows without a finite position are dropped."""
    names = list(table.colnames)
    columns = dict(columns or {})
    allowed = {"ra", "dec", *BANDS, *(f"{b}_err" for b in BANDS)}
    unknown = sorted(set(columns) - allowed)
    if unknown:
        msg = f"unknown column mapping key(s) {unknown}: use ra, dec, a band {BANDS} or BAND_err"
        raise ConfigurationError(msg)
    missing = sorted(c for c in columns.values() if c not in names)
    if missing:
        raise ConfigurationError(f"{name or 'reference table'} has no column(s) {missing}")
    used: dict[str, str] = {}
    for key, candidates in (("ra", RA_COLUMNS), ("dec", DEC_COLUMNS)):
        column = columns.get(key) or _pick(names, candidates, key)
        if column is None:
            msg = (f"{name or 'reference table'}: no {key.upper()} column (tried "
                   f"{', '.join(candidates)}); columns are {names}")  # fmt: skip
            raise ConfigurationError(msg)
        used[key] = column
    ra = np.array(table[used["ra"]], dtype=np.float64)
    dec = np.array(table[used["dec"]], dtype=np.float64)
    mags, errs = {}, {}
    for band in BANDS:
        candidates = band_column_candidates(band)
        if band == "y" and "x" in names:  # plain x, y: pixel coordinates, not a y magnitude
            candidates = candidates[:-1]
        column = columns.get(band) or _pick(names, candidates, band)
        if column is None or column in (used["ra"], used["dec"]):
            continue
        if table[column].dtype.kind not in "fiu":
            continue
        used[band] = column
        mags[band] = _clean_mags(table[column])
        err_column = columns.get(f"{band}_err") or _pick(
            names, _error_candidates(band, column), band
        )
        if err_column is not None and table[err_column].dtype.kind in "fiu":
            used[f"{band}_err"] = err_column
            errs[band] = _clean_errs(table[err_column])
        else:
            errs[band] = np.full(ra.shape, np.nan)
    if not mags:
        msg = (f"{name or 'reference table'}: no magnitude column recognised (e.g. gMeanPSFMag, "
               f"gmag, g, Vmag); columns are {names}")  # fmt: skip
        raise ConfigurationError(msg)
    ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
    stars = ReferenceStars(name, np.mod(ra, 360.0), dec, mags, errs, used)
    return stars if ok.all() else stars.subset(ok)


# --- files --------------------------------------------------------------------------------
_FILE_CACHE_SIZE = 4
_file_cache: OrderedDict[tuple, ReferenceStars] = OrderedDict()
_file_lock = threading.Lock()


def catalog_name_for(path: str | os.PathLike) -> str:
    """Default catalogue name of a file: its name without ``.gz`` and the table suffix."""
    name = Path(path).name
    for suffix in (".gz", ".fits", ".fit", ".fts", ".csv", ".ecsv"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def load_reference_file(
    path: str | os.PathLike, *, name: str | None = None, columns: Mapping[str, str] | None = None
) -> ReferenceStars:
    """The stars of a FITS/CSV reference file, read once per process and kept (the last few
    files; re-read when the file's size or modification time changes)."""
    from pylcogt.io.refcat_files import read_reference_table

    path = Path(path).expanduser().resolve()
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigurationError(f"reference catalogue {path}: {exc.strerror}") from exc
    key = (str(path), st.st_mtime_ns, st.st_size, name,
           tuple(sorted((columns or {}).items())))  # fmt: skip
    with _file_lock:
        if key in _file_cache:
            _file_cache.move_to_end(key)
            return _file_cache[key]
    stars = stars_from_table(
        read_reference_table(path), name=name or catalog_name_for(path), columns=columns
    )
    with _file_lock:
        _file_cache[key] = stars
        while len(_file_cache) > _FILE_CACHE_SIZE:
            _file_cache.popitem(last=False)
    return stars


def clear_file_cache() -> None:
    """Forget every cached reference file."""
    with _file_lock:
        _file_cache.clear()


def reference_stars_near(
    source,
    ra_deg: float,
    dec_deg: float,
    radius_deg: float,
    *,
    name: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> ReferenceStars:
    """Reference stars within ``radius_deg`` of (``ra_deg``, ``dec_deg``), from ``source``:

    - a FITS/CSV file path (str or PathLike): read once and cached; ``name``/``columns`` as in
      :func:`load_reference_file`;
    - the registry: a SQLAlchemy ``Session``, ``sessionmaker`` or ``Engine``; ``name`` selects a
      catalogue loaded by ``pylcogt refcat load`` (default: every one, and where several cover
      the field, the one with the most stars there);
    - a :class:`ReferenceStars` or an astropy Table (already in memory).
    """
    if not (math.isfinite(ra_deg) and math.isfinite(dec_deg) and radius_deg >= 0):
        raise ValueError(f"bad cone ({ra_deg}, {dec_deg}, {radius_deg})")
    if isinstance(source, ReferenceStars):
        return source.cone(ra_deg, dec_deg, radius_deg)
    if isinstance(source, Table):
        return stars_from_table(source, columns=columns).cone(ra_deg, dec_deg, radius_deg)
    if isinstance(source, (str, os.PathLike)):
        stars = load_reference_file(source, name=name, columns=columns)
        return stars.cone(ra_deg, dec_deg, radius_deg)
    from pylcogt.photometry.store import query_cone

    return query_cone(source, ra_deg, dec_deg, radius_deg, name=name)


# --- band magnitudes ----------------------------------------------------------------------
@dataclass(frozen=True)
class BandMagnitudes:
    """Magnitudes of every reference star in one band: ``mag`` and ``err`` (1 sigma, finite
    wherever ``mag`` is), ``source``: how they were obtained (``"r"``, ``"V from g, r (Tonry et
    al. 2012)"``), ``direct``: a catalogue column (not a transformation). ``terms``: catalogue
    band -> ``(coefficient, error)`` per star, the linearised dependence of ``mag`` on that
    band's catalogue magnitude, so that errors shared with a colour can be accounted for."""

    band: str
    mag: np.ndarray
    err: np.ndarray
    source: str
    direct: bool
    terms: Mapping[str, tuple[np.ndarray, np.ndarray]]


def band_magnitudes(
    stars: ReferenceStars,
    band: str,
    *,
    default_err: float = 0.03,
    color_range: tuple[float, float] = (-0.3, 1.6),
) -> BandMagnitudes | None:
    """``band`` for every star: the catalogue's own column when it has any value, else (B, V,
    R, I) the Tonry et al. (2012) transformation from g, r (and i) for stars with g - r inside
    ``color_range``; None when neither is possible. A missing error is ``default_err``."""
    if band in stars.mags and np.isfinite(stars.mags[band]).any():
        mag = stars.mags[band]
        err = np.where(np.isfinite(stars.errs[band]), stars.errs[band], default_err)
        err = np.where(np.isfinite(mag), err, np.nan)
        return BandMagnitudes(band, mag, err, band, True, {band: (np.ones(mag.shape), err)})
    if band not in TONRY2012:
        return None
    base, (a0, a1, a2), scatter = TONRY2012[band]
    inputs = {}
    for b in {"g", "r", base}:
        got = band_magnitudes(stars, b, default_err=default_err) if b in "gri" else None
        if got is None or not got.direct:
            return None
        inputs[b] = got
    x = inputs["g"].mag - inputs["r"].mag
    inside = (x >= color_range[0]) & (x <= color_range[1])
    mag = np.where(inside, inputs[base].mag + a0 + a1 * x + a2 * x * x, np.nan)
    slope = a1 + 2 * a2 * x  # d(mag)/dx
    d_g = slope + (1.0 if base == "g" else 0.0)
    d_r = -slope + (1.0 if base == "r" else 0.0)
    terms = {"g": (d_g, inputs["g"].err), "r": (d_r, inputs["r"].err)}
    if base == "i":
        terms["i"] = (np.ones(mag.shape), inputs["i"].err)
    var = sum((c * e) ** 2 for c, e in terms.values()) + scatter**2
    err = np.where(np.isfinite(mag), np.sqrt(var), np.nan)
    inputs_text = "g, r" if base != "i" else "g, r, i"
    source = f"{band} from {inputs_text} (Tonry et al. 2012)"
    return BandMagnitudes(band, mag, err, source, False, terms)
