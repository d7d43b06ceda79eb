"""Camera families and what pylcogt assumes about each when a header does not say.

The family comes from the camera name's prefix (``INSTRUME``), as on the LCO network:
``fa``/``fl`` Sinistro, ``kb`` SBIG, ``fs`` Spectral.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pylcogt.db.models import CameraFamily
from pylcogt.errors import ConfigurationError

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


@functools.lru_cache(maxsize=8)
def load_crosstalk_table(path: str) -> dict[tuple[str, int], np.ndarray]:
    """Crosstalk coefficients per (camera, binning) from a table in the LCO commissioning format:
    lines ``camera binning primary_quadrant c1 c2 c3 c4`` ('#' starts a comment), where row
    ``primary_quadrant`` p gives the fraction of quadrant q's signal induced in p. Returned in
    pylcogt's convention, ``[i, j]`` = fraction of amplifier i+1's signal seen in amplifier j+1
    (the transpose of the file's rows)."""
    rows: dict[tuple[str, int], dict[int, list[float]]] = {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the crosstalk file {path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            camera, binning, primary = fields[0].lower(), int(fields[1]), int(fields[2])
            values = [float(v) for v in fields[3:]]
        except (IndexError, ValueError):
            raise ConfigurationError(
                f"{path}:{number}: not 'camera binning quadrant c1..cN'"
            ) from None
        rows.setdefault((camera, binning), {})[primary] = values
    table = {}
    for key, by_primary in rows.items():
        n = len(by_primary)
        if sorted(by_primary) != list(range(1, n + 1)) or any(
            len(v) != n for v in by_primary.values()
        ):
            raise ConfigurationError(f"{path}: camera {key[0]} binning {key[1]} is not {n}x{n}")
        into = np.array([by_primary[p] for p in range(1, n + 1)])  # [receiving p, source q]
        table[key] = into.T
    return table


def crosstalk_lookup(
    path: str | os.PathLike | None,
) -> Callable[[str, str], np.ndarray | None] | None:
    """A ``(INSTRUME, CCDSUM) -> matrix or None`` lookup over the table at ``path`` (None: no
    configured coefficients) for :func:`pylcogt.io.raw_read.read_raw`."""
    if not path:
        return None
    table = load_crosstalk_table(str(path))

    def lookup(camera, ccdsum) -> np.ndarray | None:
        try:
            binning = int(str(ccdsum).split()[0])
        except (IndexError, ValueError):
            return None
        return table.get((str(camera).strip().lower(), binning))

    return lookup
