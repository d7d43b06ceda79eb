"""Settings of the photometric calibration (:func:`pylcogt.photometry.calibrate_photometry`).

Magnitudes are in the reference catalogue's system (Pan-STARRS 1: AB; Johnson/Cousins B, V, R,
I: Vega), angles in arcseconds unless the name says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pylcogt.errors import ConfigurationError

__all__ = ["PhotometryConfig", "LCO_FILTER_BANDS", "COLOR_PAIRS", "ALL_FLAGS"]

#: LCO filter name (header ``FILTER``) -> reference band. ``None``: no band (QC status
#: 'filter not supported'). ``up`` calibrates only against a catalogue with a ``u`` column
#: (SDSS-like; Pan-STARRS has none); ``B``/``V``/``R``/``I`` use such a column when the
#: catalogue has one, else the Tonry et al. (2012) transformation from g, r (and i).
LCO_FILTER_BANDS: Mapping[str, str | None] = MappingProxyType({
    "up": "u", "gp": "g", "rp": "r", "ip": "i", "zs": "z", "Y": "y",
    "B": "B", "V": "V", "R": "R", "I": "I", "U": None, "w": None, "air": None,
})  # fmt: skip

#: band -> colours to fit a colour term against, by preference: the first pair whose two bands
#: the catalogue has as columns, else the first it can derive (see refcat.band_magnitudes).
COLOR_PAIRS: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType({
    "u": (("u", "g"),), "g": (("g", "r"),), "r": (("g", "r"),), "i": (("r", "i"),),
    "z": (("i", "z"),), "y": (("z", "y"),), "B": (("B", "V"), ("g", "r")),
    "V": (("B", "V"), ("g", "r")), "R": (("V", "R"), ("g", "r")), "I": (("R", "I"), ("g", "r")),
})  # fmt: skip

#: every SourceFlag bit: by default only sources with FLAG == 0 calibrate
ALL_FLAGS = 0x7FFF


@dataclass(frozen=True)
class PhotometryConfig:
    """How a frame's zero point is fitted; the defaults suit Pan-STARRS 1 (DR1/DR2 mean PSF
    magnitudes) and 0.4-2 m telescopes.

    Star selection: a ``CAT`` source calibrates when ``FLAG & flag_mask == 0``, FLUX and FLUXERR
    are finite and positive, ``FLUX / FLUXERR >= min_snr``, and it is the only source within
    ``match_radius_arcsec`` of exactly one reference star (two sources on one star: neither
    is used). The reference star must have a magnitude in the band between ``bright_mag``
    (Pan-STARRS saturates near 13.5-14) and ``faint_mag`` (``None``: no limit), an error at most
    ``max_ref_err_mag`` (``default_ref_err_mag`` is assumed when the catalogue gives none), and
    no other reference star within ``isolation_arcsec`` that is less than ``blend_delta_mag``
    fainter (its light would be in the aperture).

    Fit: ``m_ref - m_inst = L1ZP + L1COLTRM * (colour - L1COLREF)`` by weighted least squares,
    each star's variance being ``sigma_inst^2 + sigma_ref^2 + error_floor_mag^2``; iterated,
    rejecting stars whose residual exceeds ``clip_sigma`` times its error times the robust
    scatter (1.4826 x MAD) of the normalised residuals, until nothing changes or
    ``max_iterations``. The colour term is fitted when ``fit_color_term``, at least
    ``min_stars_color_term`` stars have a colour and their colours span (5-95 percentile) at
    least ``min_color_range_mag``; otherwise it is not fitted. The colour's own catalogue errors
    (and their covariance with the band's, e.g. r in r and g-r) are corrected for, so that they
    do not bias the colour term. The quoted errors are the fit's, scaled by sqrt(chi2/dof) when
    that exceeds 1. Fewer than ``min_stars`` stars left: QC status 'too few stars'.
    """

    match_radius_arcsec: float = 2.0
    bright_mag: float | None = 14.0
    faint_mag: float | None = 21.0
    max_ref_err_mag: float = 0.1
    default_ref_err_mag: float = 0.03
    min_snr: float = 10.0
    flag_mask: int = ALL_FLAGS
    isolation_arcsec: float = 5.0
    blend_delta_mag: float = 3.0
    clip_sigma: float = 3.0
    max_iterations: int = 10
    min_stars: int = 5
    fit_color_term: bool = True
    min_stars_color_term: int = 20
    min_color_range_mag: float = 0.3
    error_floor_mag: float = 0.01
    #: g-r range in which the Tonry et al. (2012) B/V/R/I transformations are used (their fit
    #: covers the stellar locus); stars outside it get no transformed magnitude
    transform_color_range: tuple[float, float] = (-0.3, 1.6)
    filter_bands: Mapping[str, str | None] = field(default_factory=lambda: LCO_FILTER_BANDS)
    color_pairs: Mapping[str, tuple[tuple[str, str], ...]] = field(
        default_factory=lambda: COLOR_PAIRS
    )

    def __post_init__(self) -> None:
        positive = {
            "match_radius_arcsec": self.match_radius_arcsec,
            "max_ref_err_mag": self.max_ref_err_mag,
            "default_ref_err_mag": self.default_ref_err_mag,
            "clip_sigma": self.clip_sigma,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"PhotometryConfig.{name} must be > 0, got {value}")
        nonnegative = {
            "min_snr": self.min_snr,
            "isolation_arcsec": self.isolation_arcsec,
            "blend_delta_mag": self.blend_delta_mag,
            "min_color_range_mag": self.min_color_range_mag,
            "error_floor_mag": self.error_floor_mag,
        }
        for name, value in nonnegative.items():
            if not (math.isfinite(value) and value >= 0):
                raise ConfigurationError(f"PhotometryConfig.{name} must be >= 0, got {value}")
        if self.min_stars < 1 or self.max_iterations < 1:
            raise ConfigurationError("PhotometryConfig: min_stars and max_iterations must be >= 1")
        if self.min_stars_color_term < 3:
            raise ConfigurationError("PhotometryConfig.min_stars_color_term must be >= 3")
        lo, hi = self.transform_color_range
        if not lo < hi:
            raise ConfigurationError(f"PhotometryConfig.transform_color_range {lo}..{hi} is empty")
        if (
            self.bright_mag is not None
            and self.faint_mag is not None
            and not self.bright_mag < self.faint_mag
        ):
            msg = f"PhotometryConfig: bright_mag {self.bright_mag} >= faint_mag {self.faint_mag}"
            raise ConfigurationError(msg)
        # read-only views: the dataclass is frozen, its mappings should be too
        object.__setattr__(self, "filter_bands", MappingProxyType(dict(self.filter_bands)))
        object.__setattr__(self, "color_pairs", MappingProxyType(dict(self.color_pairs)))
