"""Remove the instrument signature: raw amplifiers -> one trimmed frame in electrons.

Each camera family's chain is a tuple of stage functions, run in order; a stage runs because it
is in the chain. Saturation flags are set when the frame is read
(:func:`pylcogt.io.raw_read.read_raw`); bias, dark and flat follow in their own stages.
"""

from __future__ import annotations

from collections.abc import Callable

from pylcogt.frame import Frame, RawImage
from pylcogt.stages.crosstalk import remove_crosstalk
from pylcogt.stages.gain import apply_gain
from pylcogt.stages.mosaic import mosaic_amplifiers
from pylcogt.stages.overscan import subtract_overscan
from pylcogt.stages.trim import trim

__all__ = ["ISR_CHAINS", "remove_instrument_signature"]

Stage = Callable  # RawImage -> RawImage, then RawImage -> Frame, then Frame -> Frame

#: Per-family chains. Sinistro: overscan, crosstalk, gain, mosaic, trim; single-amplifier
#: cameras have no crosstalk (their "mosaic" cuts to DATASEC).
ISR_CHAINS: dict[str, tuple[Stage, ...]] = {
    "sinistro": (subtract_overscan, remove_crosstalk, apply_gain, mosaic_amplifiers, trim),
    "sbig": (subtract_overscan, apply_gain, mosaic_amplifiers, trim),
    "spectral": (subtract_overscan, apply_gain, mosaic_amplifiers, trim),
}


def remove_instrument_signature(raw: RawImage) -> Frame:
    """Run the chain of ``raw.family`` on a frame from ``read_raw``."""
    result = raw
    for stage in ISR_CHAINS[raw.family]:
        result = stage(result)
    return result
