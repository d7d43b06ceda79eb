"""Convert each amplifier to electrons and start the uncertainty plane.

``sci_e = sci_adu * GAIN`` per amplifier, and ``ERR = sqrt(RDNOISE^2 + max(sci_e, 0))``
(electrons, 1 sigma): read noise plus the Poisson noise of the signal above the bias.

ERR timing (decision): ERR is made here, for every camera. After an overscan subtraction the
data are signal above bias (plus the small offset the master bias removes), so the Poisson term
is right. A camera without an overscan (SBIG, ``L1STATOV = 0``) still has its bias level in the
data here, so its Poisson term also counts the bias: the stage writes ``ERRBIAS = T`` and the
bias stage must take the bias level's share out when it subtracts the master bias, with
:func:`remove_bias_from_err` (``sqrt(max(ERR^2 - bias_e, RDNOISE^2))``, exact whenever the raw
value is above zero). ``ERRBIAS = F`` when nothing is left to correct.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pylcogt.frame import RawImage

__all__ = ["apply_gain", "remove_bias_from_err"]


def apply_gain(raw: RawImage) -> RawImage:
    """Amplifiers in electrons (``unit = 'electron'``) with ERR; see the module docstring."""
    variance_rn = np.float32(raw.read_noise_e) ** 2
    amps = []
    for amp in raw.amps:
        sci = np.multiply(amp.data, np.float32(amp.gain), dtype=np.float32)
        err = np.maximum(sci, np.float32(0.0))
        err += variance_rn
        np.sqrt(err, out=err)
        amps.append(replace(amp, data=sci, err=err, unit="electron"))
    header = raw.header.copy()
    if len(amps) > 1:
        for index, amp in enumerate(raw.amps, start=1):
            header[f"GAIN{index}"] = (amp.gain, f"[e-/ADU] gain applied, amplifier {index}")
    header["BUNIT"] = ("electron", "unit of SCI and ERR")
    with_bias = raw.header.get("L1STATOV") != 1
    header["ERRBIAS"] = (with_bias, "ERR Poisson term still includes the bias level")
    return replace(raw, amps=tuple(amps), header=header)


def remove_bias_from_err(err: np.ndarray, bias_e: np.ndarray | float, read_noise_e: float):
    """ERR (electrons) without the bias level's Poisson share: ``sqrt(max(err^2 - bias_e,
    read_noise_e^2))``, float32, a new array. For frames with ``ERRBIAS = T``, where ``bias_e``
    is the bias subtracted (master bias structure + level, electrons)."""
    variance = np.square(err, dtype=np.float32)
    variance -= np.asarray(bias_e, dtype=np.float32)
    np.maximum(variance, np.float32(read_noise_e) ** 2, out=variance)
    return np.sqrt(variance, out=variance)
