"""Reference stars from astrometry.net index files, via ``query-starkd``.

Every index file of the directory whose sky coverage reaches the query circle is queried (an
all-sky index always; a healpix tile when the tile comes within the radius), and the union is
deduplicated: the index files of one series (e.g. Tycho-2 scales 10-19) hold overlapping
subsets of one catalogue. Positions are ICRS degrees at the catalogue's epoch.
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

from pylcogt.astrometry.config import INSTALL_HINT, AstrometryConfig
from pylcogt.astrometry.match import pairs_within
from pylcogt.astrometry.sip import tan_project
from pylcogt.errors import ConfigurationError, ExternalToolError
from pylcogt.io.astrometry_files import IndexHeader, read_index_header, read_star_table

__all__ = [
    "IndexFile",
    "RefStars",
    "find_index_files",
    "find_executable",
    "tool_failure",
    "healpix_radec",
    "healpix_overlaps",
    "reference_stars",
    "DEDUPE_ARCSEC",
]

#: Stars of different index files closer than this are the same star (arcsec).
DEDUPE_ARCSEC = 1.0
#: Wall-clock bound on one ``query-starkd`` run (it takes milliseconds).
QUERY_TIMEOUT_S = 30.0

# astrometry.net's healpix "xy" scheme: base pixel f (0-3 north, 4-7 equator, 8-11 south),
# then x, y within it; the same geometry as HEALPix (Gorski et al. 2005, ApJ 622, 759).
_JRLL = (2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4)
_JPLL = (1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7)

_header_cache: dict[tuple[str, int, int], IndexHeader | None] = {}


@dataclass(frozen=True)
class IndexFile:
    path: Path
    header: IndexHeader


@dataclass(frozen=True)
class RefStars:
    """Reference stars: ``ra``, ``dec`` (deg) and ``mag`` (NaN when the index has none)."""

    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray

    def __len__(self) -> int:
        return int(self.ra.size)


def find_executable(name: str) -> str:
    """The full path of an astrometry.net program; ConfigurationError if it is not installed."""
    found = shutil.which(name)
    if found is None:
        msg = (
            f"astrometry.net program {name!r} not found on PATH (or give its path in "
            f"AstrometryConfig): {INSTALL_HINT}"
        )
        raise ConfigurationError(msg)
    return found


def tool_failure(program: str, returncode: int, stderr: str) -> str:
    """One line saying how ``program`` failed: its exit status (or the signal that killed it)
    and the last line of its error output, e.g. ``solve-field exited with status 1: ...``."""
    name = Path(program).name
    if returncode < 0:
        text = f"{name} was killed by signal {-returncode}"
    else:
        text = f"{name} exited with status {returncode}"
    lines = [" ".join(line.split()) for line in stderr.splitlines() if line.strip()]
    if lines:
        last = lines[-1]
        text += f": {last[:200] + '...' if len(last) > 200 else last}"
    return text


def find_index_files(index_dir: Path) -> list[IndexFile]:
    """The astrometry.net index files (``*.fits`` with an ``INDEXID`` card) in ``index_dir``,
    sorted by name; ConfigurationError when the directory is missing or holds none."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        msg = f"astrometry.net index directory {index_dir} does not exist: {INSTALL_HINT}"
        raise ConfigurationError(msg)
    found = []
    for path in sorted(index_dir.glob("*.fits")):
        header = _cached_index_header(path)
        if header is not None:
            found.append(IndexFile(path, header))
    if not found:
        msg = f"no astrometry.net index files (*.fits with INDEXID) in {index_dir}: {INSTALL_HINT}"
        raise ConfigurationError(msg)
    return found


def _cached_index_header(path: Path) -> IndexHeader | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _header_cache:
        _header_cache[key] = read_index_header(path)
    return _header_cache[key]


def healpix_radec(hp: int, nside: int, dx: float = 0.5, dy: float = 0.5) -> tuple[float, float]:
    """``(ra, dec)`` in degrees of the point ``(dx, dy)`` (0-1 across the pixel) of healpix
    ``hp`` at ``nside`` in astrometry.net's ``xy`` numbering ``hp = (f * nside + x) * nside + y``
    (``util.healpix_to_radecdeg`` in astrometry.net)."""
    face, rest = divmod(int(hp), nside * nside)
    ix, iy = divmod(rest, nside)
    fx, fy = (ix + dx) / nside, (iy + dy) / nside
    jr = _JRLL[face] - fx - fy
    if jr < 1:  # north polar cap
        nr, z = jr, 1.0 - jr * jr / 3.0
    elif jr > 3:  # south polar cap
        nr = 4.0 - jr
        z = nr * nr / 3.0 - 1.0
    else:
        nr, z = 1.0, (2.0 - jr) * 2.0 / 3.0
    phi = 0.0 if nr < 1e-15 else math.pi / 4.0 * (_JPLL[face] * nr + fx - fy) / nr
    return math.degrees(phi) % 360.0, math.degrees(math.asin(max(-1.0, min(1.0, z))))


def _separation_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    s = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(s))))


def healpix_overlaps(hp: int, nside: int, ra: float, dec: float, radius_deg: float) -> bool:
    """Whether the circle ``(ra, dec, radius_deg)`` may reach healpix ``hp`` (conservative: the
    tile is bounded by a circle through its farthest boundary point, plus 10%)."""
    if hp < 0:
        return True
    ra0, dec0 = healpix_radec(hp, nside)
    edge = np.linspace(0.0, 1.0, 9)
    boundary = [(t, 0.0) for t in edge] + [(t, 1.0) for t in edge]
    boundary += [(0.0, t) for t in edge] + [(1.0, t) for t in edge]
    reach = max(
        _separation_deg(ra0, dec0, *healpix_radec(hp, nside, bx, by)) for bx, by in boundary
    )
    return _separation_deg(ra0, dec0, ra, dec) <= radius_deg + 1.1 * reach


def reference_stars(
    ra_deg: float,
    dec_deg: float,
    radius_deg: float,
    *,
    config: AstrometryConfig,
    index_files: list[IndexFile] | None = None,
    workdir: Path | None = None,
) -> RefStars:
    """The stars of every overlapping index file within ``radius_deg`` of ``(ra_deg, dec_deg)``,
    deduplicated within :data:`DEDUPE_ARCSEC` (the first file's copy, in name order, is kept).

    ``workdir`` receives ``query-starkd``'s tables (a temporary directory when None).
    ExternalToolError when ``query-starkd`` fails or hangs on a query (this field's problem);
    ConfigurationError when it or the index files are missing.
    """
    if index_files is None:
        index_files = find_index_files(config.index_dir)
    program = find_executable(config.query_starkd)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="pylcogt-refstars-") as tmp:
            return _query_all(program, index_files, ra_deg, dec_deg, radius_deg, Path(tmp))
    return _query_all(program, index_files, ra_deg, dec_deg, radius_deg, Path(workdir))


def _query_all(
    program: str, index_files: list[IndexFile], ra: float, dec: float, radius: float, workdir: Path
) -> RefStars:
    ras, decs, mags = [], [], []
    for k, index in enumerate(index_files):
        if not healpix_overlaps(index.header.healpix, index.header.nside, ra, dec, radius):
            continue
        out = workdir / f"refstars-{k}.fits"
        cmd = [program, "-o", str(out), "-r", repr(float(ra)), "-d", repr(float(dec))]
        cmd += ["-R", repr(float(radius)), "-T", str(index.path)]
        try:
            done = subprocess.run(
                cmd, capture_output=True, timeout=QUERY_TIMEOUT_S, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            msg = f"{Path(program).name} took over {QUERY_TIMEOUT_S:g} s on {index.path.name}"
            raise ExternalToolError(msg) from None
        except OSError as exc:  # found on PATH but cannot be run (permissions, interpreter)
            msg = f"cannot run {program}: {exc}: {INSTALL_HINT}"
            raise ConfigurationError(msg) from None
        if done.returncode != 0:
            reason = tool_failure(program, done.returncode, done.stderr.decode(errors="replace"))
            raise ExternalToolError(f"{reason} (on {index.path.name})")
        if not out.exists():  # no star in the circle: query-starkd writes no file
            continue
        r, d, m = read_star_table(out)
        os.unlink(out)
        ras.append(r)
        decs.append(d)
        mags.append(m)
    if not ras:
        return RefStars(np.zeros(0), np.zeros(0), np.zeros(0))
    ra_all, dec_all, mag_all = np.concatenate(ras), np.concatenate(decs), np.concatenate(mags)
    keep = _unique_positions(ra_all, dec_all, ra, dec)
    return RefStars(ra_all[keep], dec_all[keep], mag_all[keep])


def _unique_positions(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> np.ndarray:
    """Mask keeping the first of every group of stars within :data:`DEDUPE_ARCSEC`."""
    xi, eta = tan_project(ra, dec, ra0, dec0)
    i, j, _ = pairs_within(xi, eta, xi, eta, DEDUPE_ARCSEC / 3600.0)
    later = j[j > i]
    keep = np.ones(ra.size, dtype=bool)
    keep[later] = False
    return keep
