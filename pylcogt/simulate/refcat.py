"""A Pan-STARRS-like reference catalogue of a simulated night's science field.

The simulator gives each star a magnitude in rp (``mag_rp``) and a colour ``c``; its magnitude
in LCO filter f is ``mag_rp + FILTERS[f].color * c`` (:func:`pylcogt.simulate.night._light`),
and the frame's flux ``exptime * 10**(-0.4 (mag - zeropoint_mag))`` electrons. The catalogue's
band magnitudes are those same magnitudes (g from gp, r from rp, i from ip, z from zs, y from
Y; with ``johnson``, B and V from the simulator's B and V), so a zero point fitted against it
recovers the truth's ``zeropoint_mag``, plus catalogue noise: ``err = hypot(0.01, 0.217 *
10**(0.4 (m - depth)))`` (0.01 mag floor, S/N 5 at ``depth``, Pan-STARRS 1 single-epoch-like
depths), magnitudes drawn from N(true, err), fainter than the depth: missing.

Without ``johnson``, frames in V or B calibrate through the Tonry et al. (2012) transformation
from g, r. The simulator's colours are not those of real stars (its V - r = 0.667 (g - r), the
real one 0.005 + 0.462 (g - r); its B has no Vega-AB offset), so L1ZP then differs from the
truth's zero point (measured: V about -0.06 mag with a colour term of -0.2, B about +0.28): a
property of the simulator's photometric system, not of the calibration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from astropy.table import Table

from pylcogt.simulate.cameras import FILTERS

__all__ = ["write_reference_catalog", "SIMULATED_BANDS", "DEPTHS", "STYLES"]

#: catalogue band -> the simulator's filter whose colour coefficient defines it
SIMULATED_BANDS = {"g": "gp", "r": "rp", "i": "ip", "z": "zs", "y": "Y", "B": "B", "V": "V"}
#: 5-sigma depth per band (mag): Pan-STARRS 1 single-epoch-like; APASS-like for B, V (deeper
#: than APASS, so that a small simulated field has stars)
DEPTHS = {"g": 22.0, "r": 21.8, "i": 21.5, "z": 20.9, "y": 19.7, "B": 21.0, "V": 21.0}
#: column styles: Pan-STARRS DR2 at MAST (missing: -999), VizieR II/349 (missing: empty), plain
STYLES = ("ps1", "vizier", "simple")
ERROR_FLOOR = 0.01
POSITION_RMS_ARCSEC = 0.02


def _names(style: str, band: str) -> tuple[str, str]:
    if band in "BV":
        return (f"{band}mag", f"e_{band}mag") if style != "simple" else (band, f"{band}_err")
    if style == "ps1":
        return f"{band}MeanPSFMag", f"{band}MeanPSFMagErr"
    if style == "vizier":
        return f"{band}mag", f"e_{band}mag"
    return band, f"{band}_err"


def write_reference_catalog(
    truth: dict | str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    rng_seed: int,
    style: str = "ps1",
    johnson: bool = True,
    bright_limit: float | None = None,
    depths: dict[str, float] | None = None,
) -> Path:
    """Write the reference catalogue of the truth's science field (``truth.json`` or its parsed
    dict) to ``out_path`` (``.csv``, ``.ecsv`` or ``.fits``, optionally ``.gz``); see the module
    doc. ``style``: one of :data:`STYLES`; ``johnson``: also B and V columns;
    ``bright_limit``: stars brighter than this in a band have no value there (Pan-STARRS
    saturates near 13.5); ``depths``: override :data:`DEPTHS`. Seeded: same arguments, same
    bytes. Returns the path written."""
    from pylcogt.io.refcat_files import write_reference_table

    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if not isinstance(truth, dict):
        truth = json.loads(Path(truth).read_text())
    stars = truth["catalogue"]["stars"]
    names = truth["catalogue"]["columns"]
    rows = np.array([[float(s[names.index(k)]) for k in ("id", "ra", "dec", "mag_rp", "color")]
                     for s in stars], dtype=np.float64).reshape(-1, 5)  # fmt: skip
    ident, ra, dec, mag_rp, color = rows.T
    rng = np.random.default_rng(rng_seed)
    depth = {**DEPTHS, **(depths or {})}
    bands = [b for b in SIMULATED_BANDS if johnson or b not in "BV"]
    n = len(ident)
    dra, ddec = rng.normal(0.0, POSITION_RMS_ARCSEC / 3600.0, (2, n))
    table = Table()
    if style == "ps1":
        table["objID"] = (100_000_000_000 + ident).astype(np.int64)
    table[{"ps1": "raMean", "vizier": "RAJ2000"}.get(style, "ra")] = np.round(
        np.mod(ra + dra / np.cos(np.radians(dec)), 360.0), 8
    )
    table[{"ps1": "decMean", "vizier": "DEJ2000"}.get(style, "dec")] = np.round(dec + ddec, 8)
    detected = np.zeros(n, bool)
    for band in bands:
        true = mag_rp + FILTERS[SIMULATED_BANDS[band]].color * color
        err = np.hypot(ERROR_FLOOR, 0.2171 * 10 ** (0.4 * (true - depth[band])))
        mag = true + rng.normal(0.0, 1.0, n) * err
        missing = true > depth[band]
        if bright_limit is not None:
            missing |= true < bright_limit
        detected |= ~missing
        fill = -999.0 if style == "ps1" else np.nan
        mag_name, err_name = _names(style, band)
        table[mag_name] = np.where(missing, fill, np.round(mag, 4))
        table[err_name] = np.where(missing, fill, np.round(err, 4))
    table = table[detected]
    write_reference_table(table, out_path)
    return Path(out_path)
