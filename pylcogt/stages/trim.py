"""Trim a frame to TRIMSEC (DATASEC when TRIMSEC is ``UNKNOWN``).

TRIMSEC is in raw pixels for single-amplifier cameras and in mosaic pixels for Sinistro: the
``LTV1``/``LTV2`` cards the mosaic stage wrote (``image = TRIMSEC pixel + LTV``) map it onto the
frame. Afterwards ``TRIMSEC`` and ``DATASEC`` are ``[1:nx,1:ny]`` of the trimmed frame, ``LTV``
and ``CRPIX1/2`` move with the cut, and the original TRIMSEC is kept in ``ORIGTRIM`` and HISTORY.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import Frame
from pylcogt.sections import Section, parse_section

__all__ = ["trim"]


def trim(frame: Frame) -> Frame:
    """The frame cut to TRIMSEC; arrays are shared when TRIMSEC is the whole frame."""
    header = frame.header.copy()
    try:
        trimsec = parse_section(str(header.get("TRIMSEC", "UNKNOWN")))
    except ValueError as exc:
        msg = f"{frame.name}: TRIMSEC: {exc}"
        raise UnprocessableFrameError(msg, keyword="TRIMSEC") from None
    ltv1, ltv2 = int(header.get("LTV1", 0)), int(header.get("LTV2", 0))
    rows, cols = frame.shape
    if trimsec is None:  # DATASEC: what the mosaic stage kept
        trimsec = Section(1 - ltv1, cols - ltv1, 1 - ltv2, rows - ltv2)
    x1, x2, y1, y2 = trimsec.x1 + ltv1, trimsec.x2 + ltv1, trimsec.y1 + ltv2, trimsec.y2 + ltv2
    if trimsec.x_flipped or trimsec.y_flipped or x1 < 1 or y1 < 1 or x2 > cols or y2 > rows:
        msg = (
            f"{frame.name}: TRIMSEC {trimsec} (frame pixels [{x1}:{x2},{y1}:{y2}]) does not lie "
            f"inside the {cols}x{rows} frame"
        )
        raise UnprocessableFrameError(msg, keyword="TRIMSEC")
    region = Section(x1, x2, y1, y2).to_slices()
    whole = (x1, x2, y1, y2) == (1, cols, 1, rows)

    def cut(array):
        if array is None or whole:
            return array
        return np.ascontiguousarray(array[region])

    sci, err, bpm = cut(frame.sci), cut(frame.err), cut(frame.bpm)
    ny, nx = sci.shape
    dx, dy = x1 - 1, y1 - 1
    header["ORIGTRIM"] = (str(trimsec), "TRIMSEC of the raw frame (raw or mosaic pixels)")
    header["TRIMSEC"] = (f"[1:{nx},1:{ny}]", "trimmed; raw TRIMSEC in ORIGTRIM")
    header["DATASEC"] = (f"[1:{nx},1:{ny}]", "trimmed frame")
    header["LTV1"] = (ltv1 - dx, header.comments["LTV1"] if "LTV1" in header else "")
    header["LTV2"] = (ltv2 - dy, header.comments["LTV2"] if "LTV2" in header else "")
    for key, delta in (("CRPIX1", dx), ("CRPIX2", dy)):
        value = header.get(key)
        if delta and isinstance(value, (int, float)) and not isinstance(value, bool):
            header[key] = value - delta
    header.add_history(f"Trimmed to TRIMSEC {trimsec}: {nx}x{ny} pixels")
    return replace(frame, sci=sci, err=err, bpm=bpm, header=header)
