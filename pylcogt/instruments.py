"""Camera families and what pylcogt assumes about each when a header does not say.

The family comes from the camera name's prefix (``INSTRUME``), as on the LCO network:
``fa``/``fl`` Sinistro, ``kb`` SBIG, ``fs`` Spectral.
"""

from __future__ import annotations

from dataclasses import dataclass

from pylcogt.db.models import CameraFamily

__all__ = [
    "FamilyDefaults",
    "FAMILY_DEFAULTS",
    "family_from_camera",
    "SCIENCE_OBSTYPES",
    "CALIBRATION_OBSTYPES",
    "REDUCED_OBSTYPES",
]

CALIBRATION_OBSTYPES = ("BIAS", "DARK", "SKYFLAT")
SCIENCE_OBSTYPES = ("EXPOSE", "STANDARD")
REDUCED_OBSTYPES = CALIBRATION_OBSTYPES + SCIENCE_OBSTYPES


@dataclass(frozen=True)
class FamilyDefaults:
    """Nominal properties of a camera family.

    ``detector_px``: light-sensitive size, unbinned pixels (nx, ny); ``saturate_adu``: used when
    the header's SATURATE is 0 (unknown).
    """

    family: CameraFamily
    prefixes: tuple[str, ...]
    n_amplifiers: int
    detector_px: tuple[int, int]
    saturate_adu: float


FAMILY_DEFAULTS: dict[CameraFamily, FamilyDefaults] = {
    CameraFamily.SINISTRO: FamilyDefaults(
        CameraFamily.SINISTRO, ("fa", "fl"), 4, (4096, 4096), 47500.0
    ),
    CameraFamily.SBIG: FamilyDefaults(CameraFamily.SBIG, ("kb",), 1, (4096, 4096), 46000.0),
    CameraFamily.SPECTRAL: FamilyDefaults(CameraFamily.SPECTRAL, ("fs",), 1, (4096, 4096), 60000.0),
}


def family_from_camera(camera: str) -> CameraFamily | None:
    """The camera family for an ``INSTRUME`` value such as ``fa03``, or None if unknown."""
    name = camera.strip().lower()
    for defaults in FAMILY_DEFAULTS.values():
        if name.startswith(defaults.prefixes):
            return defaults.family
    return None
