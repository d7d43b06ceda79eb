"""Checks shared by the stages that apply a master calibration."""

from __future__ import annotations

from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import Frame


def require_same_shape(frame: Frame, master: Frame, role: str) -> None:
    """A master must cover exactly the frame's (trimmed) pixels."""
    if master.shape != frame.shape:
        msg = (
            f"{frame.name}: the {role} master {master.name} is {master.shape[1]}x{master.shape[0]} "
            f"pixels but the frame is {frame.shape[1]}x{frame.shape[0]}; the master was made with "
            f"another readout mode or trim section: mark it bad and rebuild it"
        )
        raise UnprocessableFrameError(msg)


def require_unit(frame: Frame, unit: str, stage: str) -> None:
    if frame.unit != unit:
        msg = f"{frame.name}: {stage} needs a frame in {unit}, got {frame.unit or 'no unit'}"
        raise ValueError(msg)
