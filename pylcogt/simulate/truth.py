"""``truth.json`` and ``truth_maps.npz``: everything the simulator used, with units."""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from pylcogt.simulate.cameras import FILTERS, CameraSpec
from pylcogt.simulate.sky import CR_RATE_PER_CM2_PER_MIN

__all__ = ["write_truth", "write_maps", "truth_wcs", "truth_entry"]

_UNITS = {
    "gain_e_per_adu": "electrons per ADU",
    "read_noise_e": "electrons (rms per pixel)",
    "bias_level_adu": "raw ADU: overscan level per amplifier; light-sensitive bias = this + "
    "data_offset_adu + bias_structure",
    "bias_structure": "ADU (truth_maps.npz), light-sensitive pixels, final orientation",
    "dark_current": "electrons per second per (binned) pixel (truth_maps.npz)",
    "flat_<filter>": "dimensionless response, mean 1 over the central 25% (truth_maps.npz)",
    "saturate_adu": "raw ADU including bias; saturated pixels read exactly this value",
    "sky_e": "electrons per pixel before the flat response (pixel gets sky_e * flat)",
    "flux_e": "total electrons of a star before the flat response",
    "cosmic_rays": "[x, y, electrons], deposited charge (not flat-fielded)",
    "zeropoint_mag": "magnitude giving 1 e-/s (airmass included for per-file values)",
    "x, y": "1-indexed FITS pixel coordinates of the final (mosaicked/trimmed) frame",
    "ra, dec": "degrees (ICRS)",
    "exptime": "seconds",
    "crosstalk": "c[i][j]: fraction of amp i+1's overscan-subtracted raw ADU added to amp j+1 "
    "at the same readout position (raw array row, column)",
    "wcs": "light frames: FITS cards (TAN-SIP) of the true WCS in final-frame 1-indexed pixels; "
    "read with pylcogt.simulate.truth.truth_wcs(truth, filename)",
    "pointing_error_arcsec": "[east, north] offset of CRVAL from the header RA/DEC pointing",
    "tycho2": "per star: true for a real Tycho-2 star of the astrometry.net index files "
    "(tycho2_index: the query; null for synthetic stars only)",
    "pixscale_arcsec": "arcsec per binned pixel in use (header PIXSCALE; the camera's own value "
    "is nominal_pixscale_arcsec)",
    "fwhm_arcsec, fwhm_px": "Gaussian PSF full width at half maximum",
}


def write_maps(path: Path, det, filters) -> None:
    """Truth maps (float32, final orientation) of the light-sensitive region."""
    maps = {
        "bias_structure": det.final(det.bias_structure),
        "dark_current": det.final(det.dark),
        **{f"flat_{f}": det.final(det.flat(f)) for f in filters},
    }
    maps["units"] = np.array(
        json.dumps({"bias_structure": "ADU", "dark_current": "e-/s", "flat_<filter>": "normalised"})
    )
    _savez(path, maps)


def write_truth(
    path: Path, det, seed, spec, site, dayobs, size, cat, centre, filters, files, extra=None
):
    """``truth.json``; ``extra``: more top-level keys (inserted before ``catalogue``)."""
    truth = _truth(det, seed, spec, site, dayobs, size, cat, centre, filters, files, extra or {})
    path.write_text(json.dumps(truth, indent=1) + "\n")


_RAW_SUFFIX = re.compile(r"(\.fits)?(\.fz|\.gz)?$")
_LEVEL_SUFFIX = re.compile(r"-[a-z]\d\d$")


def truth_entry(truth: dict | str | os.PathLike, filename: str | os.PathLike) -> dict:
    """The ``files`` entry of a frame: by file name, name without ``.fits[.fz|.gz]``, or frame
    root without the ``-e00``-style level (so a reduced ``...-e91.fits`` finds its raw frame).
    ``truth``: the parsed ``truth.json`` or its path."""
    if not isinstance(truth, dict):
        truth = json.loads(Path(truth).read_text())
    name = Path(filename).name
    stem = _RAW_SUFFIX.sub("", name)
    root = _LEVEL_SUFFIX.sub("", stem)
    for key in (
        lambda e: e["name"] == name,
        lambda e: _RAW_SUFFIX.sub("", e["name"]) == stem,
        lambda e: _LEVEL_SUFFIX.sub("", _RAW_SUFFIX.sub("", e["name"])) == root,
    ):
        found = [e for e in truth["files"] if key(e)]
        if len(found) == 1:
            return found[0]
    msg = f"no single frame named {name!r} in the truth file"
    raise KeyError(msg)


def truth_wcs(truth: dict | str | os.PathLike, filename: str | os.PathLike) -> WCS:
    """The true TAN-SIP WCS of a light frame (final-frame pixels: ``all_world2pix(..., 1)``
    gives 1-indexed FITS x, y); ValueError for a frame without one (bias, dark)."""
    entry = truth_entry(truth, filename)
    if "wcs" not in entry:
        msg = f"{entry['name']} ({entry['obstype']}) has no sky, so no WCS"
        raise ValueError(msg)
    header = fits.Header()
    for key, value in entry["wcs"].items():
        header[key] = value
    return WCS(header)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` (``np.load`` reads it) but with fast deflate level 1 and fixed
    timestamps, so a full-size night's maps take seconds and the bytes are reproducible."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(
                info, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1
            )


def _truth(
    det, seed, spec: CameraSpec, site, dayobs, size, cat, centre, filters, files, extra
) -> dict:
    layout = det.layout
    return {
        "units": _UNITS,
        "seed": seed,
        "camera": spec.family,
        "instrument": spec.instrument,
        "site": site,
        "dayobs": dayobs,
        "size": size,
        "binning": spec.binning,
        "final_shape_yx": list(layout.final_shape),
        "trimsec": layout.trimsec,
        "trim_offset_xy": [layout.trim[0] - 1, layout.trim[2] - 1],
        "pixscale_arcsec": spec.pixscale,
        "gain_e_per_adu": list(spec.gain),
        "read_noise_e": spec.read_noise,
        "bias_level_adu": list(spec.bias_level),
        "bias_drift_rms_adu": spec.bias_drift,
        "data_offset_adu": spec.data_offset,
        "bias_structure_mean_adu": round(float(np.mean(det.final(det.bias_structure))), 4),
        "dark_current_e_per_s": {
            "median": round(float(np.median(det.final(det.dark))), 5),
            "mean": round(float(np.mean(det.final(det.dark))), 5),
        },
        "hot_pixels": [list(h) for h in det.hot_pixels],
        "bad_columns": [list(b) for b in det.bad_columns],
        "flat": det.flat_params,
        "crosstalk": [list(r) for r in spec.crosstalk] if spec.crosstalk else None,
        "saturate_adu": spec.saturate,
        "cosmic_ray_rate_per_cm2_per_min": CR_RATE_PER_CM2_PER_MIN,
        "zero_points_mag": {f: round(FILTERS[f].zp + spec.zp_offset, 4) for f in filters},
        "extinction_mag_per_airmass": {f: FILTERS[f].ext for f in filters},
        **extra,
        "catalogue": {
            "centre_ra_dec": [round(centre[0], 7), round(centre[1], 7)],
            "columns": ["id", "ra", "dec", "mag_rp", "color", "tycho2"],
            "stars": [
                [
                    i,
                    round(float(r), 7),
                    round(float(d), 7),
                    round(float(m), 4),
                    round(float(c), 4),
                    bool(t),
                ]
                for i, (r, d, m, c, t) in enumerate(
                    zip(cat.ra, cat.dec, cat.mag, cat.color, cat.tycho2, strict=True)
                )
            ],
        },
        "files": files,
    }
