"""Remove inter-amplifier crosstalk exactly, by inverting the 4x4 mixing.

Model (``CRSTLKij``, the simulator and the instrument): at every readout position (raw row,
column), the overscan-subtracted signal ``o_j`` seen in amplifier j is its own signal ``t_j``
plus ``C[i, j]`` times every other amplifier's: ``o_j = t_j + sum_i C[i, j] t_i``, i.e.
``o = (I + C)^T t`` per pixel. So ``t = A o`` with ``A = ((I + C)^T)^-1``: one 4x4 inverse (in
float64), applied to all pixels of the stacked amplifiers in one float32 matrix product. This
is exact (no first-order approximation ``t ~ o - C^T o``), and it needs the overscan already
subtracted (the model is in overscan-subtracted ADU) and all amplifiers of one raw shape.

Without an overscan (a legacy cube with no overscan columns) the bias levels are still in the
data and leak a constant ``C^T level`` (about a few ADU); the master bias, which carries the same
constant, removes it.

A pixel saturated in one amplifier leaks its clipped value, as on the detector; such pixels are
already flagged SATURATED and their crosstalk image is removed like any other.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import RawImage

__all__ = ["remove_crosstalk", "crosstalk_inverse"]


def crosstalk_inverse(coefficients: np.ndarray) -> np.ndarray:
    """``A = ((I + C)^T)^-1`` (float64) such that ``true = A @ observed`` per pixel."""
    c = np.asarray(coefficients, dtype=np.float64)
    mixing = np.eye(c.shape[0]) + c - np.diag(np.diag(c))
    return np.linalg.inv(mixing.T)


def remove_crosstalk(raw: RawImage) -> RawImage:
    """Undo the crosstalk of ``raw.crosstalk`` on overscan-subtracted amplifiers."""
    path = raw.extra.get("path")
    if raw.crosstalk is None:
        msg = f"{raw.name}: no crosstalk coefficients (CRSTLKij) to remove crosstalk with"
        raise UnprocessableFrameError(msg, path=path, keyword="CRSTLK")
    n = len(raw.amps)
    if raw.crosstalk.shape != (n, n):
        msg = f"{raw.name}: crosstalk matrix is {raw.crosstalk.shape} for {n} amplifiers"
        raise UnprocessableFrameError(msg, path=path, keyword="CRSTLK")
    shapes = {amp.data.shape for amp in raw.amps}
    if len(shapes) != 1:
        msg = (
            f"{raw.name}: crosstalk needs the amplifiers read out in step, but their raw "
            f"arrays differ in shape: {sorted(shapes)}"
        )
        raise UnprocessableFrameError(msg, path=path, keyword="NAXIS1")
    inverse = crosstalk_inverse(raw.crosstalk).astype(np.float32)
    (shape,) = shapes
    stacked = np.empty((n, shape[0] * shape[1]), dtype=np.float32)
    for i, amp in enumerate(raw.amps):
        stacked[i] = amp.data.reshape(-1)
    true = np.matmul(inverse, stacked)  # float32 (n, pixels)
    del stacked
    amps = tuple(replace(amp, data=true[i].reshape(shape)) for i, amp in enumerate(raw.amps))
    header = raw.header.copy()
    source = raw.extra.get("crosstalk_source", "header")
    header["L1XTALK"] = (str(source), "crosstalk removed: exact 4x4 inverse, coeffs from")
    return replace(raw, amps=amps, header=header)
