"""Subtract the master bias: its structure and its level.

A master bias holds the bias *structure* (mean of level-subtracted frames, electrons) in ``sci``
and the mean of its inputs' levels in the ``BIASLVL`` card (electrons). Subtracting both removes
read-out structure and any offset between the overscan and the light-sensitive region; cameras
without an overscan (SBIG) get their whole bias level from here, as the notes say.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pylcogt.frame import Frame
from pylcogt.stages._checks import require_same_shape, require_unit
from pylcogt.stages.gain import remove_bias_from_err

__all__ = ["subtract_bias", "bias_cards"]


def bias_cards(header, master: Frame, master_id: int | None, level: float) -> None:
    """The cards recording which master bias was subtracted (in place on ``header``)."""
    header["L1IDBIAS"] = (master.name, "master bias used")
    if master_id is not None:
        header["L1RIBIAS"] = (master_id, "registry id of the master bias")
    header["L1BIASLV"] = (round(level, 4), "[e-] level removed with the master bias")


def subtract_bias(frame: Frame, master: Frame, *, master_id: int | None = None) -> Frame:
    """``sci - (master.sci + BIASLVL)``; ERR adds the master's in quadrature; BPM flags merge."""
    require_unit(frame, "electron", "bias subtraction")
    require_same_shape(frame, master, "bias")
    level = float(master.header.get("BIASLVL", 0.0))
    sci = frame.sci - master.sci
    sci -= np.float32(level)
    header = frame.header.copy()
    err = frame.err
    if err is not None and header.get("ERRBIAS", False):
        # no overscan: the Poisson term of ERR counted the bias level too; take it out now
        read_noise = float(header.get("RDNOISE", 0.0))
        err = remove_bias_from_err(err, master.sci + np.float32(level), read_noise)
        header["ERRBIAS"] = (False, "ERR Poisson term still includes the bias level")
    if err is not None and master.err is not None:
        err = np.hypot(err, master.err)
    bias_cards(header, master, master_id, level)
    return replace(frame, sci=sci, err=err, bpm=frame.bpm | master.bpm, header=header)
