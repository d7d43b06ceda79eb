"""Real stars for the simulator: the Tycho-2 stars of the installed astrometry.net index files.

``query-starkd`` (astrometry.net) writes the stars of one index file around a position as a FITS
table (``RA``, ``DEC`` degrees ICRS, tag-along ``MAG_VT`` Tycho V_T magnitude); we run it on every
``index-tycho2-*.fits`` of an index directory and merge the results, keeping one star of each
group closer than 1 arcsec (the index scales share many stars). The union of the Debian package
``astrometry-data-tycho2-10-19`` has ~11 stars per square degree, V_T ~5-12.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from pylcogt.errors import ConfigurationError

__all__ = ["DEFAULT_INDEX_DIR", "INSTALL_HINT", "TychoStars", "index_files", "query_tycho2"]

DEFAULT_INDEX_DIR = Path("/usr/share/astrometry")
INSTALL_HINT = "apt-get install --no-install-recommends astrometry.net astrometry-data-tycho2-10-19"
INDEX_GLOB = "index-tycho2-*.fits"
DUPLICATE_ARCSEC = 1.0


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


def _query_starkd() -> str:
    exe = shutil.which("query-starkd")
    if exe is None:
        msg = f"query-starkd (astrometry.net) is not on PATH: install it with `{INSTALL_HINT}`"
        raise ConfigurationError(msg)
    return exe


def _query_one(exe: str, path: Path, ra: float, dec: float, radius: float, out: Path):
    cmd = [exe, "-o", str(out), "-r", repr(ra), "-d", repr(dec), "-R", repr(radius), "-T"]
    done = subprocess.run([*cmd, str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        msg = f"query-starkd failed on {path} (exit {done.returncode}): {done.stderr.strip()}"
        raise ConfigurationError(msg)
    if not out.exists():  # query-starkd writes no file when nothing is in the circle
        return np.zeros(0), np.zeros(0), np.zeros(0)
    with fits.open(out) as hdul:
        data = hdul[1].data
        if data is None or len(data) == 0:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        names = [n.upper() for n in data.columns.names]
        mag = data["MAG_VT"] if "MAG_VT" in names else np.full(len(data), np.nan)
        return (
            np.asarray(data["RA"], dtype=float),
            np.asarray(data["DEC"], dtype=float),
            np.asarray(mag, dtype=float),
        )


def _dedupe(ra: np.ndarray, dec: np.ndarray, arcsec: float) -> np.ndarray:
    """Sorted indices of the stars to keep: greedily in input order, a star is dropped when a
    kept earlier star is closer than ``arcsec``."""
    a, d = np.radians(ra), np.radians(dec)
    xyz = np.column_stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
    limit = 2 * math.sin(math.radians(arcsec / 3600.0) / 2)  # chord length
    by_dec = np.argsort(dec, kind="stable")
    stop = np.searchsorted(dec[by_dec], dec[by_dec] + arcsec / 3600.0, side="right")
    pairs = []
    for k, i in enumerate(by_dec):
        others = by_dec[k + 1 : stop[k]]
        close = others[np.sqrt(((xyz[others] - xyz[i]) ** 2).sum(axis=1)) < limit]
        pairs += [(min(i, j), max(i, j)) for j in close]
    keep = np.ones(len(ra), dtype=bool)
    for i, j in sorted(pairs):
        if keep[i]:
            keep[j] = False
    return np.flatnonzero(keep)


def query_tycho2(
    ra: float, dec: float, radius: float, index_dir: str | os.PathLike = DEFAULT_INDEX_DIR
) -> TychoStars:
    """Tycho-2 index stars within ``radius`` degrees of (``ra``, ``dec``), merged over the index
    files; ConfigurationError if query-starkd or the index files are missing."""
    files = index_files(index_dir)
    exe = _query_starkd()
    parts = []
    with tempfile.TemporaryDirectory(prefix="pylcogt-tycho-") as tmp:
        for k, path in enumerate(files):
            parts.append(_query_one(exe, path, ra, dec, radius, Path(tmp) / f"q{k}.fits"))
    ras, decs, mags = (np.concatenate([p[i] for p in parts]) for i in range(3))
    order = np.lexsort((decs, ras))  # deterministic whatever the file order
    ras, decs, mags = ras[order], decs[order], mags[order]
    keep = _dedupe(ras, decs, DUPLICATE_ARCSEC)
    ok = keep[np.isfinite(mags[keep])]
    return TychoStars(ras[ok], decs[ok], mags[ok], tuple(p.name for p in files))
