"""Bias, dark and flat in one pass: the science chain's hot path.

:func:`calibrate` gives the same result as :func:`~pylcogt.stages.bias.subtract_bias`, then
:func:`~pylcogt.stages.dark.subtract_dark`, then :func:`~pylcogt.stages.flat.divide_flat`
(the same float32 arithmetic in the same order; ERR hypotenuses are rounded once instead of
twice, so ERR may differ by one unit in the last place), and writes the same header cards, but
reads each input plane once and allocates only the three output planes: 0.1 s instead of 0.9 s
for a 4k frame. The three separate stages stay the reference it is tested against.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numba
import numpy as np

from pylcogt.frame import Frame, PixelFlag
from pylcogt.stages._checks import require_same_shape, require_unit
from pylcogt.stages.bias import bias_cards
from pylcogt.stages.dark import dark_cards
from pylcogt.stages.flat import DEFAULT_MIN_RESPONSE, flat_cards

__all__ = ["calibrate"]


@numba.njit(cache=True, nogil=True)
def _kernel(sci, err, bpm, bias, bias_err, bias_bpm, level, errbias, rn2, dark, dark_err,
            dark_bpm, exptime, flat, flat_err, flat_bpm, min_response, low_flag,
            out_sci, out_err, out_bpm):  # fmt: skip
    ny, nx = sci.shape
    for i in range(ny):
        for j in range(nx):
            s = sci[i, j] - bias[i, j]
            s = s - level
            e = err[i, j]
            if errbias:  # ERR still counted the bias level's Poisson noise (no overscan)
                v = e * e - (bias[i, j] + level)
                if v < rn2:
                    v = rn2
                e = np.float32(math.sqrt(v))
            e = np.float32(math.hypot(e, bias_err[i, j]))
            s = s - dark[i, j] * exptime
            e = np.float32(math.hypot(e, dark_err[i, j] * exptime))
            flags = bpm[i, j] | bias_bpm[i, j] | dark_bpm[i, j] | flat_bpm[i, j]
            r = flat[i, j]
            if not r >= min_response:  # NaN counts as low
                r = min_response
                flags |= low_flag
            s = s / r
            e = e / r
            out_sci[i, j] = s
            out_err[i, j] = np.float32(math.hypot(e, s * (flat_err[i, j] / r)))
            out_bpm[i, j] = flags


def calibrate(
    frame: Frame,
    *,
    bias: Frame,
    dark: Frame,
    flat: Frame,
    exptime_s: float,
    bias_id: int | None = None,
    dark_id: int | None = None,
    flat_id: int | None = None,
    min_response: float = DEFAULT_MIN_RESPONSE,
    fallback_later: bool = False,
) -> Frame:
    """Subtract bias (structure + ``BIASLVL``) and dark (rate x ``exptime_s``), divide by the
    flat; ERR and BPM propagate exactly as in the three separate stages. Needs ERR planes on the
    frame and on every master."""
    require_unit(frame, "electron", "calibration")
    for master, role in ((bias, "bias"), (dark, "dark"), (flat, "flat")):
        require_same_shape(frame, master, role)
        if master.err is None:
            raise ValueError(f"the {role} master {master.name} has no ERR plane")
    if frame.err is None:
        raise ValueError(f"{frame.name}: calibrate needs an ERR plane")
    if dark.unit != "electron/s":
        raise ValueError(f"master dark {dark.name} must be a rate in electron/s, got {dark.unit}")
    level = float(bias.header.get("BIASLVL", 0.0))
    header = frame.header.copy()
    errbias = bool(header.get("ERRBIAS", False))
    read_noise = float(header.get("RDNOISE", 0.0))
    out_sci = np.empty(frame.shape, np.float32)
    out_err = np.empty(frame.shape, np.float32)
    out_bpm = np.empty(frame.shape, np.uint8)
    f32 = np.float32
    _kernel(frame.sci, frame.err, frame.bpm, bias.sci, bias.err, bias.bpm, f32(level), errbias,
            f32(read_noise) ** 2, dark.sci, dark.err, dark.bpm, f32(exptime_s), flat.sci,
            flat.err, flat.bpm, f32(min_response), np.uint8(PixelFlag.LOW_FLAT),
            out_sci, out_err, out_bpm)  # fmt: skip
    if errbias:
        header["ERRBIAS"] = (False, "ERR Poisson term still includes the bias level")
    bias_cards(header, bias, bias_id, level)
    dark_cards(header, dark, dark_id, exptime_s)
    flat_cards(header, flat, flat_id, fallback_later)
    return replace(frame, sci=out_sci, err=out_err, bpm=out_bpm, header=header)
