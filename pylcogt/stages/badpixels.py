"""Merge the instrument's bad-pixel mask master into the frame's BPM."""

from __future__ import annotations

from dataclasses import replace

from pylcogt.frame import Frame
from pylcogt.stages._checks import require_same_shape

__all__ = ["apply_bpm"]


def apply_bpm(frame: Frame, master: Frame, *, master_id: int | None = None) -> Frame:
    """``bpm |= master.bpm`` (the master's flag bits are kept as they are)."""
    require_same_shape(frame, master, "bad-pixel mask")
    header = frame.header.copy()
    header["L1IDMASK"] = (master.name, "bad-pixel mask master used")
    if master_id is not None:
        header["L1RIMASK"] = (master_id, "registry id of the bad-pixel mask")
    return replace(frame, bpm=frame.bpm | master.bpm, header=header)
