"""Divide by the normalised master flat.

The master flat is normalised to 1 in the central region. Pixels whose response is below
``min_response`` (default 0.2) cannot be corrected: they are flagged ``LOW_FLAT`` and divided by
``min_response`` only to keep numbers finite. ERR: ``(err/f)^2 + (sci * err_f / f^2)^2``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pylcogt.frame import Frame, PixelFlag
from pylcogt.stages._checks import require_same_shape, require_unit

__all__ = ["divide_flat", "flat_cards", "DEFAULT_MIN_RESPONSE"]

DEFAULT_MIN_RESPONSE = 0.2


def flat_cards(header, master: Frame, master_id: int | None, fallback_later: bool) -> None:
    """The cards recording which master flat divided the frame (in place on ``header``)."""
    header["L1IDFLAT"] = (master.name, "master flat used")
    if master_id is not None:
        header["L1RIFLAT"] = (master_id, "registry id of the master flat")
    if fallback_later:
        header["L1FLATLT"] = (True, "no flat before the frame: the next later one used")


def divide_flat(
    frame: Frame,
    master: Frame,
    *,
    master_id: int | None = None,
    min_response: float = DEFAULT_MIN_RESPONSE,
    fallback_later: bool = False,
) -> Frame:
    """``sci / flat``; flags ``LOW_FLAT`` where the flat is below ``min_response``."""
    require_unit(frame, "electron", "flat fielding")
    require_same_shape(frame, master, "flat")
    low = ~(master.sci >= np.float32(min_response))  # NaN counts as low
    response = np.where(low, np.float32(min_response), master.sci).astype(np.float32, copy=False)
    sci = frame.sci / response
    err = None
    if frame.err is not None:
        err = frame.err / response
        if master.err is not None:
            err = np.hypot(err, sci * (master.err / response))
    bpm = frame.bpm | master.bpm
    bpm[low] |= np.uint8(PixelFlag.LOW_FLAT)
    header = frame.header.copy()
    flat_cards(header, master, master_id, fallback_later)
    return replace(frame, sci=sci, err=err, bpm=bpm, header=header)
