"""Subtract the overscan: one robust level per amplifier, from its BIASSEC.

The level is :func:`pylcogt.stats.sigma_clipped_mean` of the BIASSEC pixels (median and
``rstd = 1.4826 * MAD`` of all of them, keep ``|x - median| <= 3.5 rstd``, mean of the kept;
pixels flagged in the BPM, e.g. saturated, are left out), subtracted from the whole amplifier
array (one value, not row by row, as the pipeline notes say).

Header cards (units: raw ADU, before the gain):

- ``BIASLVL``: the level subtracted, ADU. For a multi-amplifier camera (Sinistro) also
  ``BIASLVL1`` .. ``BIASLVL4``, one per amplifier, and ``BIASLVL`` is their mean.
- ``OVERSCAN = 'BIASSEC'`` and ``L1STATOV = 1`` when subtracted. An amplifier whose BIASSEC is
  ``UNKNOWN`` (SBIG) is left alone: ``OVERSCAN = 'none'``, ``L1STATOV = 0`` and no ``BIASLVL``
  (the bias level then comes from the master bias).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import RawImage
from pylcogt.sections import parse_section
from pylcogt.stats import sigma_clipped_mean

__all__ = ["subtract_overscan", "OVERSCAN_CLIP_RSTD"]

#: Overscan pixels further than this many rstd from their median are left out of the level.
OVERSCAN_CLIP_RSTD = 3.5


def subtract_overscan(raw: RawImage) -> RawImage:
    """Each amplifier minus the clipped mean of its BIASSEC; see the module docstring."""
    sections = [parse_section(amp.biassec) for amp in raw.amps]
    header = raw.header.copy()
    if all(section is None for section in sections):
        header["OVERSCAN"] = ("none", "no BIASSEC: bias level comes from the master bias")
        header["L1STATOV"] = (0, "Status flag for overscan correction")
        return replace(raw, header=header)
    if any(section is None for section in sections):
        missing = [i for i, s in enumerate(sections, start=1) if s is None]
        msg = f"{raw.name}: amplifier(s) {missing} have no BIASSEC but the others do"
        raise UnprocessableFrameError(msg, path=raw.extra.get("path"), keyword="BIASSEC")

    amps = []
    levels = []
    for index, (amp, section) in enumerate(zip(raw.amps, sections, strict=True), start=1):
        region = section.to_slices()
        stats = sigma_clipped_mean(amp.data[region], amp.bpm[region], k=OVERSCAN_CLIP_RSTD)
        if stats.n_used == 0 or not math.isfinite(stats.mean):
            msg = f"{raw.name}: amplifier {index} BIASSEC {section} has no usable pixel"
            raise UnprocessableFrameError(msg, path=raw.extra.get("path"), keyword="BIASSEC")
        data = np.subtract(amp.data, np.float32(stats.mean), dtype=np.float32)
        amps.append(replace(amp, data=data))
        levels.append(stats.mean)

    if len(levels) > 1:
        for index, level in enumerate(levels, start=1):
            header[f"BIASLVL{index}"] = (round(level, 4), f"[ADU] overscan, amp {index}")
        mean = float(np.mean(levels))
        header["BIASLVL"] = (round(mean, 4), "[ADU] mean of BIASLVLn, overscan subtracted")
    else:
        header["BIASLVL"] = (round(levels[0], 4), "[ADU] overscan level subtracted")
    header["OVERSCAN"] = ("BIASSEC", "overscan: 3.5-rstd clipped mean of BIASSEC")
    header["L1STATOV"] = (1, "Status flag for overscan correction")
    extra = {**raw.extra, "overscan_adu": tuple(levels)}
    return replace(raw, amps=tuple(amps), header=header, extra=extra)
