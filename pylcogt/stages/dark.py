"""Subtract the master dark, scaled to the frame's exposure time.

A master dark is a rate: ``sci`` in electrons per second (``BUNIT = 'electron/s'``), with its
uncertainty in ``err``. The frame loses ``rate * EXPTIME`` and gains ``(err * EXPTIME)^2`` of
variance.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pylcogt.frame import Frame
from pylcogt.stages._checks import require_same_shape, require_unit

__all__ = ["subtract_dark", "dark_cards"]


def dark_cards(header, master: Frame, master_id: int | None, exptime_s: float) -> None:
    """The cards recording which master dark was subtracted (in place on ``header``)."""
    header["L1IDDARK"] = (master.name, "master dark used")
    if master_id is not None:
        header["L1RIDARK"] = (master_id, "registry id of the master dark")
    header["L1DRKSCL"] = (float(exptime_s), "[s] master dark rate scaled by")


def subtract_dark(
    frame: Frame, master: Frame, *, exptime_s: float, master_id: int | None = None
) -> Frame:
    """``sci - master.sci * exptime_s`` (electrons); ERR and BPM propagate."""
    require_unit(frame, "electron", "dark subtraction")
    require_same_shape(frame, master, "dark")
    if master.unit != "electron/s":
        raise ValueError(
            f"master dark {master.name} must be a rate in electron/s, got {master.unit}"
        )
    scale = np.float32(exptime_s)
    sci = frame.sci - master.sci * scale
    err = None
    if frame.err is not None:
        err = frame.err if master.err is None else np.hypot(frame.err, master.err * scale)
    header = frame.header.copy()
    dark_cards(header, master, master_id, exptime_s)
    return replace(frame, sci=sci, err=err, bpm=frame.bpm | master.bpm, header=header)
