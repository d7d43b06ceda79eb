"""Turn instrument-signature-corrected frames into master inputs, and check them (no I/O).

The notes' recipe, with every parameter:

- **bias**: each frame's level is its 3.5-rstd clipped mean (electrons); it is recorded and
  removed, so the stack holds the structure only. The master keeps the mean level (``BIASLVL``).
- **dark**: bias-subtracted, divided by EXPTIME: a rate in electron/s.
- **sky flat**: bias- and dark-subtracted, divided by the 3.5-rstd clipped mean of its central
  region (the middle half of each axis, i.e. the central 25% of the pixels).

Screening (a frame that cannot be used is left out with a one-line reason, never the group):

- when a flat is *checked* (instrument signature removed, before any master):
  :func:`screen_flat` rejects a central level below :data:`FLAT_MIN_LEVEL_E` electrons or
  :data:`FLAT_MIN_READ_NOISES` read noises above the bias (a shutter that never opened), and
  more than :data:`MAX_SATURATED_FRACTION` of the pixels saturated;
- when a master is *built*: :func:`check_flats` (saturation, shutter gradients relative to the
  night's other flats) and :func:`outlying_levels` for biases and darks (a level further from
  the group's median than :data:`LEVEL_OUTLIER_K` robust standard deviations of the group's
  levels, and at least :data:`LEVEL_OUTLIER_READ_NOISES` read noises).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import Frame, PixelFlag
from pylcogt.stages.gain import remove_bias_from_err
from pylcogt.stats import sigma_clipped_mean

__all__ = [
    "LEVEL_K",
    "central_region",
    "remove_bias_level",
    "to_dark_rate",
    "normalise_flat",
    "FlatCheck",
    "check_flats",
    "FLAT_MIN_LEVEL_E",
    "FLAT_MIN_READ_NOISES",
    "MAX_SATURATED_FRACTION",
    "LEVEL_OUTLIER_K",
    "LEVEL_OUTLIER_READ_NOISES",
    "screen_flat",
    "flat_level_reason",
    "header_float",
    "outlying_levels",
]

LEVEL_K = 3.5  # rstd: per-image clipped means (bias level, flat normalisation)
LEVEL_SUBSAMPLE = 4  # bias level from every 4th row and column
FLAT_MIN_LEVEL_E = 1000.0  # e-: a twilight flat below this has too little signal to use
FLAT_MIN_READ_NOISES = 10.0  # a flat must stand this many read noises above its bias
MAX_SATURATED_FRACTION = 0.01  # of the pixels flagged SATURATED: a flat over this is not used
LEVEL_OUTLIER_K = 5.0  # rstd of the group's levels: a bias or dark further off is left out
LEVEL_OUTLIER_READ_NOISES = 3.0  # ... and at least this many read noises off


def central_region(shape: tuple[int, int]) -> tuple[slice, slice]:
    """The middle half of each axis (the central 25% of the pixels), numpy slices."""
    ny, nx = shape
    return slice(ny // 4, ny // 4 + ny // 2), slice(nx // 4, nx // 4 + nx // 2)


def remove_bias_level(frame: Frame) -> tuple[Frame, float]:
    """``(frame - level, level)`` with level the 3.5-rstd clipped mean (masked pixels ignored).

    A frame without overscan (``ERRBIAS = T``) leaves with ERR = read noise (``RDNOISE``): its
    ERR counted the bias as Poisson signal."""
    # every 4th row and column: 1/16 of the pixels measure the level to ~0.03 e- (read noise
    # ~8 e-), 17x faster; the level only shifts the stack's inputs, whose per-pixel clipping
    # and the master's BIASLVL absorb such differences
    step = LEVEL_SUBSAMPLE
    level = sigma_clipped_mean(frame.sci[::step, ::step], frame.bpm[::step, ::step], k=LEVEL_K).mean
    if not np.isfinite(level):
        msg = f"{frame.name}: no valid pixel to measure the bias level (all masked or saturated)"
        raise UnprocessableFrameError(msg)
    header = frame.header.copy()
    header["BIASLVL"] = (round(level, 4), "[e-] clipped-mean level of this bias frame")
    err = frame.err
    if err is not None and header.get("ERRBIAS", False):
        # no overscan (SBIG, Spectral): ERR's Poisson term counted each pixel's bias value, which
        # is all a bias frame holds; without it ERR is the read noise (as subtract_bias does)
        err = remove_bias_from_err(err, np.maximum(frame.sci, np.float32(0)),
                                   float(header.get("RDNOISE", 0.0)))  # fmt: skip
        header["ERRBIAS"] = (False, "ERR Poisson term still includes the bias level")
    return replace(frame, sci=frame.sci - np.float32(level), err=err, header=header), level


def to_dark_rate(frame: Frame, exptime_s: float) -> Frame:
    """A bias-subtracted dark as a rate (electron/s); ERR scales the same way."""
    if not exptime_s > 0:
        msg = f"{frame.name}: a dark needs EXPTIME > 0, got {exptime_s}; fix the header's EXPTIME"
        raise UnprocessableFrameError(msg, keyword="EXPTIME")
    scale = np.float32(1.0 / exptime_s)
    err = None if frame.err is None else frame.err * scale
    return replace(frame, sci=frame.sci * scale, err=err, unit="electron/s")


def normalise_flat(frame: Frame) -> tuple[Frame, float]:
    """``frame / norm`` with norm the 3.5-rstd clipped mean of the central region."""
    rows, cols = central_region(frame.shape)
    norm = sigma_clipped_mean(frame.sci[rows, cols], frame.bpm[rows, cols], k=LEVEL_K).mean
    if not (np.isfinite(norm) and norm > 0):
        msg = (f"{frame.name}: flat level {norm:.4g} e- above the bias in the central region "
               f"is not positive: shutter failure or no sky light; not used")
        raise UnprocessableFrameError(msg)
    scale = np.float32(1.0 / norm)
    err = None if frame.err is None else frame.err * scale
    header = frame.header.copy()
    header["FLATLVL"] = (round(norm, 3), "[e-] central clipped mean, divided out")
    return replace(frame, sci=frame.sci * scale, err=err, unit="", header=header), norm


@dataclass(frozen=True)
class FlatCheck:
    """Why a sky flat is left out of its master (``reason`` None: kept)."""

    name: str
    saturated_fraction: float
    gradient: float
    reason: str | None


def _block_profile(sci: np.ndarray, axis: int, blocks: int = 16) -> np.ndarray:
    """Median level in ``blocks`` bands along ``axis`` (0: rows, 1: columns)."""
    n = sci.shape[axis]
    edges = np.linspace(0, n, blocks + 1).astype(int)
    out = np.empty(blocks)
    for i in range(blocks):
        band = sci[edges[i] : edges[i + 1], :] if axis == 0 else sci[:, edges[i] : edges[i + 1]]
        out[i] = np.median(band[::4, ::4])
    return out


def check_flats(
    flats: list[Frame],
    *,
    max_saturated_fraction: float = MAX_SATURATED_FRACTION,
    max_gradient: float = 0.05,
) -> list[FlatCheck]:
    """Flag normalised sky flats with too much saturation or a shutter failure.

    Saturation: more than ``max_saturated_fraction`` of the pixels flagged SATURATED.
    Shutter failure: an illumination gradient along the columns or rows of the frame, relative
    to the median of the night's flats, larger than ``max_gradient`` (fractional change across the
    frame): a shutter that opens or closes slowly leaves one side brighter. With fewer than three
    flats there is no reliable reference and only saturation is checked.
    """
    profiles = [(_block_profile(f.sci, 0), _block_profile(f.sci, 1)) for f in flats]
    reference = None
    if len(flats) >= 3:
        reference = (
            np.median([p[0] for p in profiles], axis=0),
            np.median([p[1] for p in profiles], axis=0),
        )
    checks = []
    for frame, profile in zip(flats, profiles, strict=True):
        saturated = float(np.mean((frame.bpm & PixelFlag.SATURATED) != 0))
        gradient = 0.0
        if reference is not None:
            for own, ref in zip(profile, reference, strict=True):
                ratio = own / ref
                ratio = ratio / np.median(ratio)
                gradient = max(gradient, float(ratio.max() - ratio.min()))
        reason = None
        if saturated > max_saturated_fraction:
            reason = f"{saturated:.1%} of the pixels saturated (limit {max_saturated_fraction:.1%})"
        elif gradient > max_gradient:
            reason = (
                f"illumination differs from the night's other flats by {gradient:.1%} across the "
                f"frame (limit {max_gradient:.0%}): shutter failure?"
            )
        checks.append(FlatCheck(frame.name, saturated, gradient, reason))
    return checks


def screen_flat(frame: Frame, *, bias_level_e: float | None = None) -> tuple[float, str | None]:
    """``(level, reason)`` for a sky flat just out of instrument signature removal (electrons):
    the level is the central region's 3.5-rstd clipped mean above the bias; ``reason`` (None:
    usable) says why the flat cannot be used, with the measured numbers.

    A frame without overscan (``ERRBIAS = T``) still holds its bias: ``bias_level_e`` (the
    latest master bias's ``BIASLVL``) is subtracted first; without it only saturation is
    checked (the master build checks the level after subtracting the bias master)."""
    saturated = float(np.mean((frame.bpm & PixelFlag.SATURATED) != 0))
    if saturated > MAX_SATURATED_FRACTION:
        return float("nan"), (f"saturated flat: {saturated:.1%} of the pixels saturated (limit "
                               f"{MAX_SATURATED_FRACTION:.0%}); not used")  # fmt: skip
    no_overscan = bool(frame.header.get("ERRBIAS", False))
    if no_overscan and bias_level_e is None:
        return float("nan"), None
    rows, cols = central_region(frame.shape)
    step = LEVEL_SUBSAMPLE // 2
    level = sigma_clipped_mean(frame.sci[rows, cols][::step, ::step],
                               frame.bpm[rows, cols][::step, ::step], k=LEVEL_K).mean
    level = float(level) - (float(bias_level_e) if no_overscan else 0.0)
    return level, flat_level_reason(level, header_float(frame.header, "RDNOISE"))


def header_float(header, keyword: str) -> float:
    """``header[keyword]`` as a number; 0.0 when absent or not a number (a read noise unknown:
    the limits that use it fall back to their absolute floors)."""
    try:
        return float(header.get(keyword, 0.0) or 0.0)
    except (TypeError, ValueError):
        return 0.0


def flat_level_reason(level: float | None, read_noise_e: float) -> str | None:
    """Why a flat of central ``level`` (electrons above the bias) is too faint to use, or None:
    below :data:`FLAT_MIN_LEVEL_E` or :data:`FLAT_MIN_READ_NOISES` read noises."""
    if level is None:
        return None
    limit = max(FLAT_MIN_LEVEL_E, FLAT_MIN_READ_NOISES * read_noise_e)
    if np.isfinite(level) and level >= limit:
        return None
    return (f"flat level {level:.4g} e- above the bias in the central region, below the "
            f"{limit:.4g} e- a sky flat needs: shutter failure or no sky light; not used")


def outlying_levels(levels: list[float], *, read_noise_e: float = 0.0,
                    what: str = "frame") -> list[str | None]:  # fmt: skip
    """For each of a group's levels (electrons), why it is too far from the others (None: it is
    not). Robust: the median and rstd (1.4826 MAD) of the group's levels; a level is an outlier
    further than :data:`LEVEL_OUTLIER_K` rstd and :data:`LEVEL_OUTLIER_READ_NOISES` read noises
    from the median. Fewer than three levels: nothing to compare with, all kept."""
    values = np.asarray(levels, dtype=float)
    if values.size < 3:
        return [None] * values.size
    median = float(np.median(values))
    rstd = 1.4826 * float(np.median(np.abs(values - median)))
    limit = max(LEVEL_OUTLIER_K * rstd, LEVEL_OUTLIER_READ_NOISES * read_noise_e, 1.0)
    reasons: list[str | None] = []
    for value in values:
        off = value - median
        if not np.isfinite(value) or abs(off) > limit:
            reasons.append(f"{what} level {value:.4g} e- is {off:+.4g} e- from the night's median "
                           f"{median:.4g} e- (limit {limit:.3g} e-); not used")  # fmt: skip
        else:
            reasons.append(None)
    return reasons
