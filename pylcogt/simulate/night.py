"""Simulate one night of raw frames from one camera, plus the truth used to make them.

The night plan is in :mod:`pylcogt.simulate.schedule`, the detector in ``detector``/``frames``.
Truth coordinates are 1-indexed FITS ``x, y`` of the final frame: the Sinistro mosaic, or the
SBIG/Spectral TRIMSEC region (raw pixel = final pixel + ``trim_offset_xy``).

Light frames are projected through a true WCS (:mod:`pylcogt.simulate.optics`: TAN + a radial
cubic SIP distortion, a small rotation, and a pointing error: CRVAL is near, not at, the header
RA/DEC), written per frame to the truth file (:func:`pylcogt.simulate.truth.truth_wcs`). The
header keeps the telescope's nominal TAN WCS about the pointing. Stars are synthetic, or the real
Tycho-2 stars of the astrometry.net index files plus fainter synthetic ones (``stars="tycho2"``).

Wide-field mode (``pixscale`` given): the camera sits on a small telescope of the same focal
ratio, so the sky per pixel is unchanged and the zero point drops by 5 log10(pixscale /
nominal); the PSF is at least 2.2 pixels FWHM (optics-limited), and each filter's science
exposure is chosen so a magnitude-8.5 star peaks at half the saturation level (capped at the
filter's default exposure, at least 1 s): Tycho-2 stars (V_T ~7-12) are then mostly unsaturated.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import zlib
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
from pylcogt.simulate.optics import SipWcs, radial_sip
from pylcogt.simulate.refcat import write_reference_catalog
from pylcogt.simulate.schedule import Plan, schedule
from pylcogt.simulate.sky import (
    Catalogue,
    alt_airmass,
    cosmic_rays,
    format_dec,
    format_ra,
    galactic_latitude,
    lst_hours,
    make_catalogue,
    parse_sexagesimal,
    render_stars,
    tan_deproject,
)
from pylcogt.simulate.truth import write_maps, write_truth
from pylcogt.simulate.tycho import DEFAULT_INDEX_DIR, index_files, query_tycho2

__all__ = ["SimulatedNight", "simulate_night", "STAR_SOURCES", "DEFAULT_DAYOBS"]

DETECTOR_SEED = 20261128  # with the camera's name: the seed of its detector model
DEFAULT_DAYOBS = "20261128"  # the night simulated when none is given (DAY-OBS, YYYYMMDD)
STARS_PER_FRAME = 300  # per 4096^2 unbinned pixels, scaled with area (at least 20)
STAR_SOURCES = ("synthetic", "tycho2")
DISTORTION_ARCSEC = 5.0  # default corner displacement at the nominal pixel scale
WIDE_DISTORTION_ARCSEC = 25.0  # default when the pixel scale is overridden (wide field)
DEFAULT_DISTORTION_MAX = 0.02  # ... but by default at most this fraction of the corner radius
MAX_DISTORTION = 0.1  # larger |distortion| / corner radius: ValueError
POINTING_RMS_ARCSEC = 15.0  # per axis, the same all night (less on small frames)
POINTING_JITTER_ARCSEC = 2.0  # per axis, frame to frame (less on small frames)
ROTATION_MAX_DEG = 0.5  # camera rotation, uniform in +-this, the same all night
MIN_FWHM_PX = 2.2  # optics-limited PSF floor (wide field); seeing 1.6" maps to this
NOMINAL_SEEING = 2.0  # arcsec, middle of the science seeing draw
WIDE_PEAK_MAG = 8.5  # wide field: this magnitude peaks at WIDE_PEAK_LEVEL of saturation
WIDE_PEAK_LEVEL = 0.5
TYCHO2_FAINT_MAG = 12.0  # faint synthetic stars added to the Tycho-2 ones start here
FAINT_LIMIT_E = 300.0  # ... and end where a star gives this many electrons (at most mag 20)
FAINT_PER_DEG2_AT_16 = 300.0  # synthetic stars brighter than 16 per deg^2, N(<m) ~ 10^(0.3 m)
MAX_FAINT_STARS = 20000
MIN_GALACTIC_LATITUDE = 30.0  # tycho2 fields: |b| at least this, if near transit allows
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
    #: Pan-STARRS-like reference catalogue of the science field (``pylcogt refcat load``)
    refcat_path: Path | None = None


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
    dayobs: str = DEFAULT_DAYOBS,
    site: str = "lsc",
    n_bias: int = 5,
    n_dark: int = 3,
    n_flat: int = 3,
    n_science: int = 3,
    filters: tuple[str, ...] = ("rp", "V"),
    compress: str = "none",
    progress: Callable[[int, int, str], None] | None = None,
    stars: str = "synthetic",
    index_dir: str | os.PathLike | None = None,
    pixscale: float | None = None,
    distortion: float | None = None,
    faint_stars: bool = True,
) -> SimulatedNight:
    """Write a night of raw frames, ``truth.json`` and ``truth_maps.npz`` into ``outdir``.

    Counts are per set: ``n_bias``/``n_dark`` in the afternoon and again in the morning;
    ``n_flat`` per filter in evening and again in morning twilight; ``n_science`` per filter.
    ``size``: light-sensitive width = height in unbinned pixels (default 4096). ``progress(i, n,
    filename)`` is called after file i (1-based) of n is written. Same arguments -> same bytes.
    The detector model (bias structure, dark current, hot pixels, flat response, dust) depends
    on the camera only, as a real camera's does: nights of one camera with different seeds
    share it, so their masters agree within their noise.

    ``stars``: ``"synthetic"``, or ``"tycho2"`` for the real stars of the astrometry.net Tycho-2
    index files in ``index_dir`` (default /usr/share/astrometry; ConfigurationError if missing)
    on a field at galactic latitude >= 30 deg near transit, plus (``faint_stars``) synthetic
    stars from mag 12 down to the detection limit. ``pixscale``: arcsec per binned pixel instead
    of the camera's (wide-field mode, see the module docstring; 6.0 with size 1024 gives 1.7 deg).
    ``distortion``: arcsec between the true SIP WCS and its linear part at the frame corner
    farthest from CRPIX (radial cubic; positive barrel, negative pincushion; at most 10% of the
    corner's distance; default 5, or 25 with ``pixscale``, but at most 2% of that distance, so
    small test frames are not distorted out of proportion).
    """
    filters = tuple(filters)
    counts = {"n_bias": n_bias, "n_dark": n_dark, "n_flat": n_flat, "n_science": n_science}
    day = _check_args(camera, site, dayobs, counts, filters, compress)
    spec, wide, distortion = _optical_setup(CAMERAS[camera], stars, pixscale, distortion)
    index_dir = Path(DEFAULT_INDEX_DIR if index_dir is None else index_dir)
    if stars == "tycho2":
        index_files(index_dir)  # fail before writing anything
    size = 4096 if size is None else size
    layout = camera_layout(spec, size)
    place = SITES[site]
    suffix = raw_suffix(compress)
    exptimes = _wide_exptimes(spec, filters) if wide else None

    _, cat_ss, sched_ss, files_ss, optics_ss = np.random.SeedSequence(seed).spawn(5)
    # the detector (bias columns, dark current, hot pixels, flat response, dust) belongs to the
    # camera, not to the night: every night of one camera has the same one, whatever its seed
    det_ss = np.random.SeedSequence([DETECTOR_SEED, zlib.crc32(spec.instrument.encode())])
    sched_rng = np.random.Generator(np.random.PCG64(sched_ss))
    plans = schedule(spec, place.lon, day, *counts.values(), filters, sched_rng, exptimes)
    optics_rng = np.random.Generator(np.random.PCG64(optics_ss))
    optics = _Optics(spec, layout, distortion, wide, optics_rng)
    fields = _Fields(
        spec,
        layout.n,
        size,
        place,
        day,
        np.random.Generator(np.random.PCG64(cat_ss)),
        margin=optics.margin_deg,
        stars=stars,
        index_dir=index_dir,
        faint_limit=_faint_limit(spec, plans, filters) if faint_stars else None,
    )
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    det = make_detector(spec, layout, np.random.Generator(np.random.PCG64(det_ss)), filters)
    file_rngs = [np.random.Generator(np.random.PCG64(s)) for s in files_ss.spawn(len(plans))]
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
            wcs = optics.frame_wcs(ra, dec, entry)
            expected += _light(det, plan, rng, cat, wcs, entry)
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
        extra={
            "nominal_pixscale_arcsec": CAMERAS[camera].pixscale,
            "wide_field": wide,
            "stars_source": stars,
            "optics": optics.truth(),
            "tycho2_index": fields.tycho_truth,
        },
    )
    write_maps(maps_path, det, filters)
    refcat_path = write_reference_catalog(truth_path, outdir / "refcat-ps1.csv", rng_seed=seed)
    return SimulatedNight(outdir, files, truth_path, camera, spec.instrument, maps_path,
                          refcat_path)  # fmt: skip


def _optical_setup(
    spec: CameraSpec, stars: str, pixscale: float | None, distortion: float | None
) -> tuple[CameraSpec, bool, float | None]:
    """(camera with the pixel scale and zero point in use, wide-field?, distortion arcsec)."""
    if stars not in STAR_SOURCES:
        msg = f"stars must be one of {list(STAR_SOURCES)}, got {stars!r}"
        raise ValueError(msg)
    if pixscale is not None:
        if not isinstance(pixscale, (int, float)) or not math.isfinite(pixscale) or pixscale <= 0:
            msg = f"pixscale must be a positive number of arcsec per pixel, got {pixscale!r}"
            raise ValueError(msg)
        # same focal ratio: aperture ~ focal length ~ 1 / pixscale, sky per pixel unchanged
        zp_offset = spec.zp_offset - 5.0 * math.log10(pixscale / spec.pixscale)
        spec = dataclasses.replace(spec, pixscale=float(pixscale), zp_offset=round(zp_offset, 4))
    if distortion is not None and (
        not isinstance(distortion, (int, float)) or not math.isfinite(distortion)
    ):
        msg = f"distortion must be a number of arcsec, got {distortion!r}"
        raise ValueError(msg)
    return spec, pixscale is not None, distortion


def _fwhm_arcsec(seeing: float, pixscale: float) -> float:
    """PSF FWHM: the seeing, or on undersampled (wide-field) cameras the optics, scaled so that
    1.6 arcsec of seeing gives MIN_FWHM_PX pixels."""
    return seeing * max(1.0, MIN_FWHM_PX * pixscale / 1.6)


def _wide_exptimes(spec: CameraSpec, filters) -> dict[str, float]:
    """Science exposure (s) per filter putting a WIDE_PEAK_MAG star's peak pixel (centred,
    NOMINAL_SEEING, airmass 1) at WIDE_PEAK_LEVEL of the smallest full well in electrons."""
    sigma = _fwhm_arcsec(NOMINAL_SEEING, spec.pixscale) / spec.pixscale / 2.3548
    peak_fraction = math.erf(0.5 / (math.sqrt(2.0) * sigma)) ** 2
    full_well = min(
        (spec.saturate - level - spec.data_offset) * gain
        for level, gain in zip(spec.bias_level, spec.gain, strict=True)
    )
    out = {}
    for f in filters:
        rate = peak_fraction * 10 ** (-0.4 * (WIDE_PEAK_MAG - FILTERS[f].zp - spec.zp_offset))
        out[f] = float(min(max(round(WIDE_PEAK_LEVEL * full_well / rate), 1), FILTERS[f].exptime))
    return out


def _faint_limit(spec: CameraSpec, plans: list[Plan], filters) -> float:
    """Faintest synthetic magnitude for tycho2 fields: FAINT_LIMIT_E electrons in the longest
    science exposure of the deepest filter at airmass 1, at most 20."""
    limits = []
    for f in filters:
        times = [p.exptime for p in plans if p.obstype == "EXPOSE" and p.filter == f]
        t = max(times, default=FILTERS[f].exptime)
        limits.append(FILTERS[f].zp + spec.zp_offset + 2.5 * math.log10(t / FAINT_LIMIT_E))
    return min(20.0, max(limits, default=20.0))


class _Optics:
    """The true WCS of each light frame (:func:`radial_sip` in final-frame pixels).

    CRPIX: the centre of the light-sensitive array (the optical axis), in final-frame pixels.
    The camera rotation and a systematic pointing error are drawn once per night; each frame adds
    a small pointing jitter. CRVAL = the header pointing offset by the pointing error.
    """

    def __init__(self, spec: CameraSpec, layout, distortion, wide: bool, rng: np.random.Generator):
        n = layout.n
        self.rng = rng
        self.scale = spec.pixscale
        tx, ty = layout.trim[0] - 1, layout.trim[2] - 1
        self.crpix = ((n + 1) / 2 - tx, (n + 1) / 2 - ty)
        fny, fnx = layout.final_shape
        self.corner_radius = max(
            math.hypot(cx - self.crpix[0], cy - self.crpix[1]) for cx in (1, fnx) for cy in (1, fny)
        )
        corner_arcsec = self.corner_radius * spec.pixscale
        if distortion is None:
            default = WIDE_DISTORTION_ARCSEC if wide else DISTORTION_ARCSEC
            distortion = min(default, round(DEFAULT_DISTORTION_MAX * corner_arcsec, 4))
        if abs(distortion) > MAX_DISTORTION * corner_arcsec:
            msg = (
                f"distortion {distortion} arcsec is more than {MAX_DISTORTION:.0%} of the "
                f"{corner_arcsec:.1f} arcsec from the frame centre to its corner"
            )
            raise ValueError(msg)
        self.distortion = float(distortion)
        field = n * spec.pixscale  # arcsec
        self.pointing_rms = min(POINTING_RMS_ARCSEC, 0.05 * field)
        self.jitter_rms = min(POINTING_JITTER_ARCSEC, 0.01 * field)
        self.rotation = float(rng.uniform(-ROTATION_MAX_DEG, ROTATION_MAX_DEG))
        self.pointing_error = rng.normal(0.0, self.pointing_rms, 2)
        # sky beyond the nominal field a frame can see: distortion, pointing, rotation (deg)
        self.margin_deg = (
            abs(distortion) + 4 * (self.pointing_rms + self.jitter_rms)
        ) / 3600.0 + field / 2 * math.sqrt(2) * math.radians(ROTATION_MAX_DEG) / 3600.0

    def frame_wcs(self, ra: float, dec: float, entry: dict) -> SipWcs:
        """The true WCS of a frame pointed (header) at ``ra, dec``; recorded in ``entry``."""
        error = self.pointing_error + self.rng.normal(0.0, self.jitter_rms, 2)  # arcsec E, N
        crval = tan_deproject(error[0] / 3600.0, error[1] / 3600.0, ra, dec)
        wcs = radial_sip(
            self.crpix,
            (float(crval[0]), float(crval[1])),
            self.scale,
            self.rotation,
            self.distortion,
            self.corner_radius,
        )
        entry["pointing_error_arcsec"] = [round(float(e), 4) for e in error]
        entry["wcs"] = wcs.cards()
        return wcs

    def truth(self) -> dict:
        return {
            "model": "TAN + SIP radial cubic: (u, v) -> (u, v) * (1 + k r^2), u = x - CRPIX1, "
            "v = y - CRPIX2, r^2 = u^2 + v^2 (final-frame pixels); per-file WCS in files[].wcs",
            "distortion_corner_arcsec": self.distortion,
            "corner_radius_px": round(self.corner_radius, 4),
            "sip_k_per_px2": self.distortion / self.scale / max(self.corner_radius, 1e-9) ** 3,
            "crpix_xy": list(self.crpix),
            "rotation_deg": round(self.rotation, 6),
            "pointing_error_rms_arcsec": self.pointing_rms,
            "pointing_jitter_rms_arcsec": self.jitter_rms,
            "pointing_error_systematic_arcsec": [round(float(e), 4) for e in self.pointing_error],
        }


class _Fields:
    """Fixed star fields and per-frame pointings (degrees; header-string precision).

    The science field transits in mid-window; the flat fields are sparse regions near the zenith
    at each twilight. ``crpix``: reference pixel (centre of the light-sensitive array). The
    science catalogue covers the frame plus ``margin`` degrees; with ``stars="tycho2"`` it holds
    the index's Tycho-2 stars plus (``faint_limit``) synthetic stars from TYCHO2_FAINT_MAG down
    to ``faint_limit``, on a field at galactic latitude >= MIN_GALACTIC_LATITUDE.
    """

    def __init__(
        self,
        spec: CameraSpec,
        n: int,
        size: int,
        site,
        day: dt.date,
        rng,
        *,
        margin: float = 0.0,
        stars: str = "synthetic",
        index_dir: Path = DEFAULT_INDEX_DIR,
        faint_limit: float | None = None,
    ):
        self.site = site
        self.scale = spec.pixscale / 3600.0
        self.crpix = ((n + 1) / 2, (n + 1) / 2)
        midnight = dt.datetime(day.year, day.month, day.day)
        shift_h = (SITES["lsc"].lon - site.lon) / 15.0

        def zenith(hours: float) -> float:
            return lst_hours(midnight + dt.timedelta(hours=hours + shift_h), site.lon) * 15.0

        frame_half = n * self.scale / 2
        half = frame_half * 1.15
        self.dither = min(10.0 / 3600, 0.03 * n * self.scale)  # rms: 10", less on small frames
        n_stars = max(20, round(STARS_PER_FRAME * (size / 4096) ** 2))
        science_half = half + margin
        centre = (zenith(28.25), min(site.lat + 10.0, 85.0))
        self.tycho_truth = None
        if stars == "tycho2":
            centre = _high_latitude(*centre)
        self.centre = _rounded_pointing(*centre)
        if stars == "tycho2":
            radius = science_half * math.sqrt(2)
            tycho = query_tycho2(*self.centre, radius, index_dir)
            color = rng.normal(0.6, 0.3, len(tycho))
            real = Catalogue(
                tycho.ra, tycho.dec, tycho.mag_vt - 0.4 * color, color, np.ones(len(tycho), bool)
            )
            self.science = real
            if faint_limit is not None and faint_limit > TYCHO2_FAINT_MAG:

                def density(m: float) -> float:
                    return FAINT_PER_DEG2_AT_16 * 10 ** (0.3 * (m - 16.0))

                area = (2 * science_half) ** 2
                n_faint = round((density(faint_limit) - density(TYCHO2_FAINT_MAG)) * area)
                faint = make_catalogue(
                    rng,
                    *self.centre,
                    science_half,
                    min(n_faint, MAX_FAINT_STARS),
                    n_bright=0,
                    mag_range=(TYCHO2_FAINT_MAG, faint_limit),
                )
                self.science = Catalogue.concatenate(real, faint)
            self.tycho_truth = {
                "index_dir": str(index_dir),
                "index_files": list(tycho.files),
                "query_ra_dec_radius_deg": [*self.centre, round(radius, 6)],
                "n_stars": len(tycho),
                "galactic_latitude_deg": round(galactic_latitude(*self.centre), 4),
                "faint_synthetic_mag_range": [TYCHO2_FAINT_MAG, round(faint_limit, 4)]
                if faint_limit is not None and faint_limit > TYCHO2_FAINT_MAG
                else None,
                "magnitudes": "V = Tycho V_T (MAG_VT); colour drawn N(0.6, 0.3), rp = V - 0.4 * "
                "colour; duplicates within 1 arcsec across index files merged",
            }
        else:
            count = round(n_stars * (science_half / frame_half) ** 2)
            self.science = make_catalogue(rng, *self.centre, science_half, count)
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


def _high_latitude(ra: float, dec: float) -> tuple[float, float]:
    """The first of (ra, dec) shifted by 0, +-1, +-2, +-3 hours (then dec -+20 deg) at galactic
    latitude >= MIN_GALACTIC_LATITUDE, else the one farthest from the plane."""
    candidates = [
        ((ra + 15.0 * dh) % 360.0, max(-85.0, min(85.0, dec + dd)))
        for dd in (0.0, -20.0, 20.0)
        for dh in (0, 1, -1, 2, -2, 3, -3)
    ]
    for c in candidates:
        if abs(galactic_latitude(*c)) >= MIN_GALACTIC_LATITUDE:
            return c
    return max(candidates, key=lambda c: abs(galactic_latitude(*c)))


def _light(det: DetectorModel, plan: Plan, rng, cat: Catalogue, wcs: SipWcs, entry: dict):
    """Sky + stars (e-) times the flat response; records sky, zero point and stars in ``entry``.

    Star positions come from the true ``wcs`` (final-frame pixels), shifted by the trim offset
    to the light-sensitive array that is rendered (the Sinistro mosaic: no offset).
    """
    spec, layout = det.spec, det.layout
    n = layout.n
    flt = FILTERS[plan.filter]
    zp = flt.zp + spec.zp_offset - flt.ext * (entry["airmass"] - 1.0)
    if plan.obstype == "EXPOSE":
        sky_rate = 10 ** (-0.4 * (flt.sky - zp)) * spec.pixscale**2
        sky = sky_rate * plan.exptime * float(1 + rng.normal(0.0, 0.05))
        fwhm = _fwhm_arcsec(float(rng.uniform(1.6, 2.4)), spec.pixscale)
    else:
        sky, fwhm = plan.sky_e, _fwhm_arcsec(float(rng.uniform(1.8, 2.8)), spec.pixscale)
    tx, ty = layout.trim[0] - 1, layout.trim[2] - 1
    fx, fy = wcs.linear().world_to_pixel(cat.ra, cat.dec)  # without distortion: preselect
    pad = 30 + abs(wcs.a.get((3, 0), 0.0)) * (1.5 * n) ** 3  # pixels: > the distortion
    near = (fx > -pad) & (fx < n + pad) & (fy > -pad) & (fy < n + pad)
    fx[near], fy[near] = wcs.world_to_pixel(cat.ra[near], cat.dec[near])  # final, 1-indexed
    fx[~near], fy[~near] = np.nan, np.nan
    x, y = fx + tx, fy + ty  # light-sensitive array, 1-indexed
    mag = cat.mag + flt.color * cat.color
    flux = plan.exptime * 10 ** (-0.4 * (mag - zp))
    sigma = fwhm / spec.pixscale / (2 * math.sqrt(2 * math.log(2)))
    near = (x > -20) & (x < n + 20) & (y > -20) & (y < n + 20)
    image = np.full((n, n), sky, dtype=np.float32)
    render_stars(image, x[near], y[near], flux[near], sigma)
    fny, fnx = layout.final_shape
    inside = np.flatnonzero((fx >= 0.5) & (fx < fnx + 0.5) & (fy >= 0.5) & (fy < fny + 0.5))
    entry.update(
        sky_e=round(sky, 3),
        zeropoint_mag=round(zp, 4),
        fwhm_arcsec=round(fwhm, 3),
        fwhm_px=round(fwhm / spec.pixscale, 4),
        stars=[
            {
                "id": int(i),
                "x": round(float(fx[i]), 4),
                "y": round(float(fy[i]), 4),
                "ra": round(float(cat.ra[i]), 7),
                "dec": round(float(cat.dec[i]), 7),
                "mag": round(float(mag[i]), 4),
                "flux_e": round(float(flux[i]), 2),
                "tycho2": bool(cat.tycho2[i]),
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
