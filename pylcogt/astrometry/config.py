"""Settings of the astrometric solution (astrometry.net, then pylcogt's own TAN-SIP fit)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pylcogt.config import DEFAULT_INDEX_DIR
from pylcogt.errors import ConfigurationError

__all__ = ["AstrometryConfig", "DEFAULT_INDEX_DIR", "INSTALL_HINT"]

#: What to install on Debian when astrometry.net or its index files are missing.
INSTALL_HINT = (
    "install astrometry.net and index files: apt-get install --no-install-recommends "
    "astrometry.net astrometry-data-tycho2-10-19 (Tycho-2 solves fields of >= ~1.5 deg; for "
    "smaller fields put Gaia 5200 or 2MASS 4100 series index files in a directory and point "
    "AstrometryConfig(index_dir=...) at it)"
)


@dataclass(frozen=True)
class AstrometryConfig:
    """How to solve a frame. Angles in arcsec unless the name says ``_deg``.

    - ``index_dir``: directory of astrometry.net index files (every ``*.fits`` with an
      ``INDEXID`` card is used, by ``solve-field`` and for the reference stars of the fit).
    - ``code_tolerance``: quad-matching tolerance, 3x tighter than astrometry.net's 0.01.
    - ``pixel_error_arcsec``: positional uncertainty allowed when verifying a match: 20
      full-resolution Sinistro pixels (0.389"/px), converted to the frame's own pixels.
    - ``depth``: which sources (by brightness rank) ``solve-field`` builds quads from.
    - ``scale_margin``: the pixel scale searched is ``PIXSCALE * (1 -/+ scale_margin)``.
    - ``search_radius_deg``: only solutions centred within this distance of the header's
      RA/DEC are searched. 2 deg: far beyond any pointing error of the network, still a
      restriction on the sky that keeps a failing search short.
    - ``cpulimit_s``: astrometry.net's own CPU-time limit (it does not bound wall time).
    - ``timeout_s``: wall-clock bound on ``solve-field``, enforced by pylcogt (the process group
      is killed); the field then counts as unsolved.
    - ``sip_order``: order of the SIP distortion polynomial pylcogt fits (2-5), or 0 for no
      distortion (a linear TAN fit: CRVAL and the CD matrix only).
    - ``max_sources``: the brightest this many sources go to ``solve-field``; the distortion
      fit uses every source given.
    - ``match_radius_arcsec``: first radius for matching reference stars to sources in the fit;
      later passes shrink it to 5x the fit's rms (not below half a pixel).
    - ``min_stars_per_coeff``: a polynomial of order n (``(n+1)(n+2)/2`` coefficients per axis)
      is fitted only with at least this many matched stars per coefficient; otherwise a lower
      order is fitted (2 is enough for a well-conditioned fit of clean positions; 30 stars for
      order 3 would need a field of ~3 deg^2 with the Tycho-2 index files).
    - ``solve_field`` / ``query_starkd``: the executables (a name looked up on ``PATH``, or a
      path).
    """

    index_dir: Path = DEFAULT_INDEX_DIR
    code_tolerance: float = 0.003
    pixel_error_arcsec: float = 8.0
    depth: str = "1-200"
    scale_margin: float = 0.1
    search_radius_deg: float = 2.0
    cpulimit_s: int = 30
    timeout_s: float = 30.0
    sip_order: int = 3
    max_sources: int = 300
    match_radius_arcsec: float = 30.0
    min_stars_per_coeff: float = 2.0
    solve_field: str = "solve-field"
    query_starkd: str = "query-starkd"

    def __post_init__(self) -> None:
        object.__setattr__(self, "index_dir", Path(self.index_dir))
        if self.sip_order == 1 or not 0 <= self.sip_order <= 5:
            msg = f"sip_order must be 0 (no distortion) or 2-5, got {self.sip_order}"
            raise ConfigurationError(msg)
        positive = {
            "code_tolerance": self.code_tolerance,
            "pixel_error_arcsec": self.pixel_error_arcsec,
            "search_radius_deg": self.search_radius_deg,
            "cpulimit_s": self.cpulimit_s,
            "timeout_s": self.timeout_s,
            "max_sources": self.max_sources,
            "match_radius_arcsec": self.match_radius_arcsec,
            "min_stars_per_coeff": self.min_stars_per_coeff,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigurationError(f"AstrometryConfig.{name} must be > 0, got {value!r}")
        if not 0 <= self.scale_margin < 1:
            msg = f"AstrometryConfig.scale_margin must be in [0, 1), got {self.scale_margin!r}"
            raise ConfigurationError(msg)
