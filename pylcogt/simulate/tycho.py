"""Real stars for the simulator: the Tycho-2 stars of the installed astrometry.net index files.

The stars come from the astrometry's own reference-star query
(:func:`pylcogt.astrometry.refstars.reference_stars`: ``query-starkd`` on every overlapping index
file, one star kept of each group closer than 1 arcsec), restricted to the
``index-tycho2-*.fits`` files, with their tag-along ``MAG_VT`` (Tycho V_T) magnitudes. The
union of the Debian package ``astrometry-data-tycho2-10-19`` has ~11 stars per square degree,
V_T ~5-12.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pylcogt.astrometry.config import DEFAULT_INDEX_DIR, AstrometryConfig
from pylcogt.astrometry.refstars import find_index_files, reference_stars
from pylcogt.errors import ConfigurationError

__all__ = ["DEFAULT_INDEX_DIR", "INSTALL_HINT", "TychoStars", "index_files", "query_tycho2"]

INSTALL_HINT = "apt-get install --no-install-recommends astrometry.net astrometry-data-tycho2-10-19"
INDEX_GLOB = "index-tycho2-*.fits"


@dataclass(frozen=True)
class TychoStars:
    """Merged index stars: ``ra``, ``dec`` degrees, ``mag_vt`` Tycho V_T; sorted by ra."""

    ra: np.ndarray
    dec: np.ndarray
    mag_vt: np.ndarray
    files: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ra)


def index_files(index_dir: str | os.PathLike) -> list[Path]:
    """The Tycho-2 index files of ``index_dir``; ConfigurationError if there are none."""
    directory = Path(index_dir)
    files = sorted(directory.glob(INDEX_GLOB)) if directory.is_dir() else []
    if not files:
        msg = (
            f"no astrometry.net Tycho-2 index files ({INDEX_GLOB}) in {directory}: install them "
            f"with `{INSTALL_HINT}` or give the directory that holds them"
        )
        raise ConfigurationError(msg)
    return files


def query_tycho2(
    ra: float, dec: float, radius: float, index_dir: str | os.PathLike = DEFAULT_INDEX_DIR
) -> TychoStars:
    """Tycho-2 index stars within ``radius`` degrees of (``ra``, ``dec``), merged over the index
    files; ConfigurationError if query-starkd or the index files are missing."""
    files = index_files(index_dir)
    tycho = [f for f in find_index_files(Path(index_dir)) if f.path in files]
    stars = reference_stars(ra, dec, radius, config=AstrometryConfig(index_dir=Path(index_dir)),
                            index_files=tycho)  # fmt: skip
    order = np.lexsort((stars.dec, stars.ra))  # deterministic whatever the file order
    order = order[np.isfinite(stars.mag[order])]
    return TychoStars(stars.ra[order], stars.dec[order], stars.mag[order],
                      tuple(p.name for p in files))  # fmt: skip
