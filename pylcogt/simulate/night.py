"""Simulate one night of raw frames from one camera, plus the truth used to make them.

The night plan is in :mod:`pylcogt.simulate.schedule`, the detector in ``detector``/``frames``.
Truth coordinates are 1-indexed FITS ``x, y`` of the final frame: the Sinistro mosaic, or the
SBIG/Spectral TRIMSEC region (raw pixel = final pixel + ``trim_offset_xy``).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pylcogt.io.raw_write import raw_suffix, write_raw_mef, write_raw_single
from pylcogt.simulate.cameras import CAMERAS, FILTERS, SITES, CameraSpec, camera_layout
from pylcogt.simulate.detector import DetectorModel, make_detector
from pylcogt.simulate.frames import readout
from pylcogt.simulate.geometry import sinistro_geometry
from pylcogt.simulate.headers import FrameInfo, frame_cards, sinistro_amp_cards
from pylcogt.simulate.schedule import Plan, schedule
from pylcogt.simulate.sky import (
    Catalogue,
    alt_airmass,
    cosmic_rays,
    format_dec,
    format_ra,
    lst_hours,
    make_catalogue,
    parse_sexagesimal,
    render_stars,
    tan_deproject,
    tan_project,
)
from pylcogt.simulate.truth import write_maps, write_truth

__all__ = ["SimulatedNight", "simulate_night"]

STARS_PER_FRAME = 300  # per 4096^2 unbinned pixels, scaled with area (at least 20)
_SUFFIX = {"BIAS": "b00", "DARK": "d00", "SKYFLAT": "f00", "EXPOSE": "e00"}


@dataclass(frozen=True)
class SimulatedNight:
    """What :func:`simulate_night` wrote; ``files`` are in time (FRAMENUM) order."""

    outdir: Path
    files: list[Path]
    truth_path: Path
    camera: str
    instrument: str
    maps_path: Path | None = None


def _check_args(camera, site, dayobs, counts, filters, compress) -> dt.date:
    if camera not in CAMERAS:
        msg = f"camera must be one of {sorted(CAMERAS)}, got {camera!r}"
        raise ValueError(msg)
    if site not in SITES:
        msg = f"site must be one of {sorted(SITES)}, got {site!r}"
        raise ValueError(msg)
    try:
        day = dt.datetime.strptime(dayobs, "%Y%m%d").date()
    except (TypeError, ValueError):
        msg = f"dayobs must be a YYYYMMDD date, got {dayobs!r}"
        raise ValueError(msg) from None
    for name, value in counts.items():
        if not isinstance(value, int) or value < 0:
            msg = f"{name} must be a non-negative integer, got {value!r}"
            raise ValueError(msg)
    unknown = [f for f in filters if f not in FILTERS]
    if unknown or len(set(filters)) != len(filters):
        msg = f"filters must be distinct names from {sorted(FILTERS)}, got {filters!r}"
        raise ValueError(msg)
    if not filters and (counts["n_flat"] or counts["n_science"]):
        raise ValueError("flats and science frames need at least one filter")
    raw_suffix(compress)
    return day


def _rounded_pointing(ra: float, dec: float) -> tuple[float, float]:
    """The pointing the header strings represent exactly (so RA/DEC and CRVAL agree)."""
    return parse_sexagesimal(format_ra(ra), hours=True), parse_sexagesimal(format_dec(dec))


def simulate_night(
    outdir: str | os.PathLike,
    *,
    camera: str = "sinistro",
    size: int | None = None,
    seed: int = 1,
    dayobs: str = "20261128",
    site: str = "lsc",
    n_bias: int = 5,
    n_dark: int = 3,
    n_flat: int = 3,
    n_science: int = 3,
    filters: tuple[str, ...] = ("rp", "V"),
    compress: str = "none",
    progress: Callable[[int, int, str], None] | None = None,
) -> SimulatedNight:
    """Write a night of raw frames, ``truth.json`` and ``truth_maps.npz`` into ``outdir``.

    Counts are per set: ``n_bias``/``n_dark`` in the afternoon and again in the morning;
    ``n_flat`` per filter in evening and again in morning twilight; ``n_science`` per filter.
    ``size``: light-sensitive width = height in unbinned pixels (default 4096). ``progress(i, n,
    filename)`` is called after file i (1-based) of n is written. Same arguments -> same bytes.
    """
    filters = tuple(filters)
    counts = {"n_bias": n_bias, "n_dark": n_dark, "n_flat": n_flat, "n_science": n_science}
    day = _check_args(camera, site, dayobs, counts, filters, compress)
    spec = CAMERAS[camera]
    size = 4096 if size is None else size
    layout = camera_layout(spec, size)
    place = SITES[site]
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    suffix = raw_suffix(compress)

    det_ss, cat_ss, sched_ss, files_ss = np.random.SeedSequence(seed).spawn(4)
    det = make_detector(spec, layout, np.random.Generator(np.random.PCG64(det_ss)), filters)
    sched_rng = np.random.Generator(np.random.PCG64(sched_ss))
    plans = schedule(spec, place.lon, day, *counts.values(), filters, sched_rng)
    file_rngs = [np.random.Generator(np.random.PCG64(s)) for s in files_ss.spawn(len(plans))]
    fields = _Fields(spec, layout.n, size, place, day, np.random.Generator(np.random.PCG64(cat_ss)))
    geometry = sinistro_geometry(layout.n) if spec.family == "sinistro" else None
    telescope = f"{place.code}{spec.telclass}{spec.telnum}"

    files: list[Path] = []
    file_truth = []
    for framenum, (plan, rng) in enumerate(zip(plans, file_rngs, strict=True), start=1):
        orig = f"{telescope}-{spec.instrument}-{dayobs}-{framenum:04d}-{_SUFFIX[plan.obstype]}"
        ra, dec, obj, cat = fields.pointing(plan, rng)
        lst = lst_hours(plan.start, place.lon)
        entry = {
            "name": orig + suffix,
            "obstype": plan.obstype,
            "filter": plan.filter,
            "exptime": plan.exptime,
            "dateobs": plan.start.isoformat(timespec="milliseconds"),
            "framenum": framenum,
            "pointing_ra_dec": [round(ra, 7), round(dec, 7)],
            "airmass": round(alt_airmass(ra, dec, place.lat, lst)[1], 4),
        }
        expected = det.dark * np.float32(plan.exptime)
        if cat is not None:
            expected += _light(det, plan, rng, cat, ra, dec, entry)
        else:
            entry["sky_e"] = 0.0
        _add_cosmic_rays(det, rng, plan.exptime, expected, entry)
        levels = tuple(
            level + (float(rng.normal(0.0, spec.bias_drift)) if spec.bias_drift else 0.0)
            for level in spec.bias_level
        )
        entry["bias_level_adu"] = [round(v, 4) for v in levels]
        arrays = readout(det, rng, expected, poisson=plan.exptime > 0, bias_levels=levels)

        info = FrameInfo(
            obstype=plan.obstype,
            filter=plan.filter,
            exptime=plan.exptime,
            start=plan.start,
            dayobs=dayobs,
            framenum=framenum,
            filename=orig + ".fits",
            ra=ra,
            dec=dec,
            object=obj,
            molnum=plan.molnum,
            molfrnum=plan.molfrnum,
            frmtotal=plan.frmtotal,
            ccd_temp_actual=round(spec.ccd_temp + float(rng.normal(0.0, 0.01)), 4),
        )
        cards = frame_cards(spec, layout, place, info, crpix=fields.crpix)
        path = outdir / (orig + suffix)
        if geometry is not None:
            write_raw_mef(path, cards, arrays, sinistro_amp_cards(spec, geometry), compress)
        else:
            write_raw_single(path, arrays[0], cards, compress)
        files.append(path)
        file_truth.append(entry)
        if progress is not None:
            progress(framenum, len(plans), path.name)

    truth_path, maps_path = outdir / "truth.json", outdir / "truth_maps.npz"
    write_truth(
        truth_path,
        det,
        seed,
        spec,
        place.code,
        dayobs,
        size,
        fields.science,
        fields.centre,
        filters,
        file_truth,
    )
    write_maps(maps_path, det, filters)
    return SimulatedNight(outdir, files, truth_path, camera, spec.instrument, maps_path)


class _Fields:
    """Fixed synthetic star fields and per-frame pointings (degrees; header-string precision).

    The science field transits in mid-window; the flat fields are sparse regions near the zenith
    at each twilight. ``crpix``: reference pixel (centre of the light-sensitive array).
    """

    def __init__(self, spec: CameraSpec, n: int, size: int, site, day: dt.date, rng):
        self.site = site
        self.scale = spec.pixscale / 3600.0
        self.crpix = ((n + 1) / 2, (n + 1) / 2)
        midnight = dt.datetime(day.year, day.month, day.day)
        shift_h = (SITES["lsc"].lon - site.lon) / 15.0

        def zenith(hours: float) -> float:
            return lst_hours(midnight + dt.timedelta(hours=hours + shift_h), site.lon) * 15.0

        half = n * self.scale / 2 * 1.15
        self.dither = min(10.0 / 3600, 0.03 * n * self.scale)  # rms: 10", less on small frames
        n_stars = max(20, round(STARS_PER_FRAME * (size / 4096) ** 2))
        self.centre = _rounded_pointing(zenith(28.25), min(site.lat + 10.0, 85.0))
        self.science = make_catalogue(rng, *self.centre, half, round(n_stars * 1.15**2))
        self.flats = {}
        for name, hours in (("evening", 23.5), ("morning", 33.5)):
            centre = _rounded_pointing(zenith(hours), site.lat)
            cat = make_catalogue(
                rng, *centre, half * 1.3, max(5, n_stars // 5), n_bright=0, mag_range=(9.0, 16.0)
            )
            self.flats[name] = centre, cat

    def pointing(self, plan: Plan, rng) -> tuple[float, float, str, Catalogue | None]:
        """(ra, dec, OBJECT, catalogue or None for closed-shutter frames)."""
        if plan.obstype == "EXPOSE":
            offset = rng.normal(0.0, self.dither, 2)
            ra, dec = _rounded_pointing(*tan_deproject(*offset, *self.centre))
            return float(ra), float(dec), "SIMFIELD-01", self.science
        if plan.obstype == "SKYFLAT":
            offset = rng.uniform(-60.0 / 3600, 60.0 / 3600, 2)
            centre, cat = self.flats[plan.twilight]
            ra, dec = _rounded_pointing(*tan_deproject(*offset, *centre))
            return float(ra), float(dec), "Flat", cat
        lst = lst_hours(plan.start, self.site.lon)
        ra, dec = _rounded_pointing(lst * 15.0, self.site.lat)
        return float(ra), float(dec), "N/A", None


def _light(det: DetectorModel, plan: Plan, rng, cat: Catalogue, ra, dec, entry: dict):
    """Sky + stars (e-) times the flat response; records sky, zero point and stars in ``entry``."""
    spec, layout = det.spec, det.layout
    n, scale = layout.n, spec.pixscale / 3600.0
    flt = FILTERS[plan.filter]
    zp = flt.zp + spec.zp_offset - flt.ext * (entry["airmass"] - 1.0)
    if plan.obstype == "EXPOSE":
        sky_rate = 10 ** (-0.4 * (flt.sky - zp)) * spec.pixscale**2
        sky = sky_rate * plan.exptime * float(1 + rng.normal(0.0, 0.05))
        fwhm = float(rng.uniform(1.6, 2.4))
    else:
        sky, fwhm = plan.sky_e, float(rng.uniform(1.8, 2.8))
    xi, eta = tan_project(cat.ra, cat.dec, ra, dec)
    x, y = (n + 1) / 2 - xi / scale, (n + 1) / 2 + eta / scale  # CD1_1 < 0: east left
    mag = cat.mag + flt.color * cat.color
    flux = plan.exptime * 10 ** (-0.4 * (mag - zp))
    sigma = fwhm / spec.pixscale / (2 * math.sqrt(2 * math.log(2)))
    near = (x > -20) & (x < n + 20) & (y > -20) & (y < n + 20)
    image = np.full((n, n), sky, dtype=np.float32)
    render_stars(image, x[near], y[near], flux[near], sigma)
    fx, fy = x - (layout.trim[0] - 1), y - (layout.trim[2] - 1)
    fny, fnx = layout.final_shape
    inside = np.flatnonzero((fx >= 0.5) & (fx < fnx + 0.5) & (fy >= 0.5) & (fy < fny + 0.5))
    entry.update(
        sky_e=round(sky, 3),
        zeropoint_mag=round(zp, 4),
        fwhm_arcsec=round(fwhm, 3),
        stars=[
            {
                "id": int(i),
                "x": round(float(fx[i]), 4),
                "y": round(float(fy[i]), 4),
                "ra": round(float(cat.ra[i]), 7),
                "dec": round(float(cat.dec[i]), 7),
                "mag": round(float(mag[i]), 4),
                "flux_e": round(float(flux[i]), 2),
            }
            for i in inside
        ],
    )
    return image * det.flat(plan.filter)


def _add_cosmic_rays(det: DetectorModel, rng, exptime: float, expected, entry: dict) -> None:
    """Add hits (exposure + half the readout) to ``expected``; truth keeps those in the frame."""
    spec, layout = det.spec, det.layout
    n = layout.n
    area_cm2 = n * n * (spec.pixel_um * spec.binning * 1e-4) ** 2
    crs = cosmic_rays(rng, (n, n), area_cm2, exptime + spec.readout_s / 2)
    if len(crs):
        rows, cols = crs[:, 1].astype(int) - 1, crs[:, 0].astype(int) - 1
        expected[rows, cols] += crs[:, 2].astype(np.float32)
    final = crs - [layout.trim[0] - 1, layout.trim[2] - 1, 0]
    fny, fnx = layout.final_shape
    ok = (final[:, 0] >= 1) & (final[:, 0] <= fnx) & (final[:, 1] >= 1) & (final[:, 1] <= fny)
    entry["cosmic_rays"] = [[int(a), int(b), round(float(e), 1)] for a, b, e in final[ok]]
