"""Derive a bad-pixel mask from a night's masters (no I/O).

A pixel is bad (``PixelFlag.BAD``) when:

- its dark rate is hot: above ``median + max(hot_rstd * rstd, hot_min_e_per_s)`` of the master
  dark (defaults 25 rstd and 0.5 e-/s: a 0.15 e-/s camera's hot pixels run at 5-50 e-/s);
- its response in any master flat is below ``low_response`` (0.5) or above ``high_response``
  (1.5), the flats being normalised to 1 in the centre: dead, low and high pixels;
- a source master had no valid input there (already flagged BAD);
- it lies in a bad column: one where more than ``column_fraction`` (25%) of the pixels are bad
  by the rules above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from pylcogt.frame import Frame, PixelFlag
from pylcogt.stats import sigma_clipped_mean

__all__ = ["BpmRules", "derive_bpm"]


@dataclass(frozen=True)
class BpmRules:
    hot_rstd: float = 25.0
    hot_min_e_per_s: float = 0.5
    low_response: float = 0.5
    high_response: float = 1.5
    column_fraction: float = 0.25


def derive_bpm(dark: Frame | None, flats: Sequence[Frame], rules: BpmRules = BpmRules()) -> Frame:
    """A BPM master frame: ``bpm`` holds the flags, ``sci`` the same as 0/1 floats."""
    sources = ([dark] if dark is not None else []) + list(flats)
    if not sources:
        raise ValueError("a bad-pixel mask needs a master dark or at least one master flat")
    shape = sources[0].shape
    for source in sources:
        if source.shape != shape:
            raise ValueError(f"{source.name} is {source.shape}, {sources[0].name} is {shape}")
    bad = np.zeros(shape, bool)
    counts = {}
    if dark is not None:
        stats = sigma_clipped_mean(dark.sci, dark.bpm, k=3.5)
        threshold = stats.median + max(rules.hot_rstd * stats.rstd, rules.hot_min_e_per_s)
        hot = dark.sci > threshold
        counts["hot"] = int(hot.sum())
        bad |= hot
    for flat in flats:
        low = ~(flat.sci >= rules.low_response)
        high = flat.sci > rules.high_response
        counts[f"flat {flat.name}"] = int((low | high).sum())
        bad |= low | high
    for source in sources:
        bad |= (source.bpm & PixelFlag.BAD) != 0
    columns = bad.mean(axis=0) > rules.column_fraction
    counts["columns"] = int(columns.sum())
    bad[:, columns] = True
    bpm = np.where(bad, np.uint8(PixelFlag.BAD), np.uint8(0))
    header = fits.Header()
    header["NBADPIX"] = (int(bad.sum()), "pixels flagged bad")
    header["NHOTPIX"] = (counts.get("hot", 0), "hot pixels from the dark rate")
    header["NBADCOL"] = (counts["columns"], "bad columns")
    header["BPMHOTK"] = (rules.hot_rstd, "[rstd] hot-pixel threshold above the median dark")
    header["BPMLOW"] = (rules.low_response, "flat response below this is bad")
    header["BPMHIGH"] = (rules.high_response, "flat response above this is bad")
    for i, source in enumerate(sources, start=1):
        header[f"BPMSRC{i:02d}"] = (source.name, "master this mask was derived from")
    return Frame(sci=bpm.astype(np.float32), err=None, bpm=bpm, header=header, unit="", name="")
