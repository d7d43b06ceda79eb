"""Synthetic raw LCO frames (Sinistro, SBIG, Spectral) with known truth, for tests and demos.

Entry point: :func:`simulate_night`. :func:`mosaic_to_amps` is the mosaic -> raw Sinistro
amplifier mapping the simulator uses (the reduction pipeline implements the inverse).
:func:`truth_wcs` reads a light frame's true TAN-SIP WCS back from ``truth.json``.
"""

from pylcogt.simulate.geometry import SinistroGeometry, mosaic_to_amps, sinistro_geometry
from pylcogt.simulate.night import SimulatedNight, simulate_night
from pylcogt.simulate.truth import truth_wcs

__all__ = [
    "SimulatedNight",
    "simulate_night",
    "SinistroGeometry",
    "sinistro_geometry",
    "mosaic_to_amps",
    "truth_wcs",
]
