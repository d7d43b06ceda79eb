"""Astrometric solution of reduced frames: astrometry.net finds the field, then pylcogt fits a
TAN-SIP WCS to reference stars from the same index files.

Entry points: :func:`solve` (sources -> :class:`SolveResult`), :func:`wcs_cards` /
:func:`apply_solution` (the SCI header cards) and :func:`radec_for` (catalogue RA/DEC).
"""

from __future__ import annotations

from pylcogt.astrometry.config import AstrometryConfig
from pylcogt.astrometry.solver import SolveResult, apply_solution, radec_for, solve, wcs_cards

__all__ = [
    "AstrometryConfig",
    "SolveResult",
    "solve",
    "wcs_cards",
    "apply_solution",
    "radec_for",
]
