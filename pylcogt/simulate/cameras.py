"""Camera families, sites and filters the simulator knows, with values taken from real headers.

Units: gain e-/ADU, read noise e-, bias levels and SATURATE raw ADU, pixel scale arcsec per
BINNED pixel, zero points the magnitude giving 1 e-/s at airmass 1.

SBIG: a square 4096^2 SBIG (binned 2x2 to 2048^2, TRIMSEC ``[11:2037,11:2037]``) is the 1m0
SciCam SBIG of ``lsc1m005-kb78`` (PIXSCALE 0.467 binned, 15.8' field in the configdb); the 0m4 SBIGs
are 3072x2048 at 0.571"/px unbinned. We therefore model kb95 on a 1m0 with kb78's numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pylcogt.simulate.geometry import section_string

__all__ = ["CameraSpec", "CAMERAS", "Site", "SITES", "Filter", "FILTERS", "camera_layout"]


@dataclass(frozen=True)
class CameraSpec:
    """Fixed properties of one simulated camera."""

    family: str
    instrument: str
    instype: str
    detector: str
    telid: str
    telescop: str
    encid: str
    binning: int
    pixscale: float  # arcsec per binned pixel
    pixel_um: float  # unbinned pixel size
    gain: tuple[float, ...]  # e-/ADU, one per amplifier
    read_noise: float  # e-
    bias_level: tuple[float, ...]  # ADU, overscan level per amplifier
    bias_drift: float  # ADU rms frame-to-frame drift of the bias level (0: stable)
    data_offset: float  # ADU, light-sensitive bias level minus overscan level
    saturate: float  # raw ADU (bias included); saturated pixels read exactly this
    ccd_temp: float  # deg C set point
    zp_offset: float  # mag added to the 1m0 Sinistro zero points (aperture, QE)
    readout_s: float
    confmode: str
    crosstalk: tuple[tuple[float, ...], ...] | None = None  # [i][j]: from amp i+1 onto amp j+1

    @property
    def n_amps(self) -> int:
        return len(self.gain)

    @property
    def telclass(self) -> str:
        return self.telid[:3]

    @property
    def telnum(self) -> str:
        return self.telescop.split("-")[1]


_XTALK = (
    (0.0, 0.00055, 0.0, 0.0),
    (0.00062, 0.0, 0.0, 0.0),
    (0.0, 0.0, 0.0, 0.00058),
    (0.0, 0.0, 0.00060, 0.0),
)

CAMERAS: dict[str, CameraSpec] = {
    "sinistro": CameraSpec(
        family="sinistro",
        instrument="fa15",
        instype="1m0-SciCam-Sinistro",
        detector="DB-62",
        telid="1m0a",
        telescop="1m0-09",
        encid="doma",
        binning=1,
        pixscale=0.389,
        pixel_um=15.0,
        gain=(1.52, 1.47, 1.56, 1.50),
        read_noise=7.5,
        bias_level=(2522.0, 2561.0, 2553.0, 2582.0),
        bias_drift=1.5,
        data_offset=2.5,
        saturate=40000.0,
        ccd_temp=-100.0,
        zp_offset=0.0,
        readout_s=28.0,
        confmode="full_frame",
        crosstalk=_XTALK,
    ),
    "sbig": CameraSpec(
        family="sbig",
        instrument="kb95",
        instype="1m0-SciCam-SBIG",
        detector="ccdkb95-1",
        telid="1m0a",
        telescop="1m0-05",
        encid="doma",
        binning=2,
        pixscale=0.467,
        pixel_um=9.0,
        gain=(1.4,),
        read_noise=13.5,
        bias_level=(812.0,),
        bias_drift=0.0,
        data_offset=0.0,
        saturate=46000.0,
        ccd_temp=-20.0,
        zp_offset=-0.25,
        readout_s=12.0,
        confmode="N/A",
    ),
    "spectral": CameraSpec(
        family="spectral",
        instrument="fs05",
        instype="2m0-SciCam-Spectral",
        detector="db-83",
        telid="2m0a",
        telescop="2m0-02",
        encid="clma",
        binning=2,
        pixscale=0.301,
        pixel_um=15.0,
        gain=(8.0,),
        read_noise=11.0,
        bias_level=(487.0,),
        bias_drift=1.0,
        data_offset=1.5,
        saturate=60000.0,
        ccd_temp=-100.0,
        zp_offset=1.5,
        readout_s=20.0,
        confmode="N/A",
    ),
}


@dataclass(frozen=True)
class Site:
    code: str
    name: str
    lat: float  # deg North
    lon: float  # deg East
    height: float  # m

    def obsgeo(self) -> tuple[float, float, float]:
        """WGS84 geocentric X, Y, Z in metres."""
        a, f = 6378137.0, 1 / 298.257223563
        e2 = f * (2 - f)
        phi, lam = math.radians(self.lat), math.radians(self.lon)
        n = a / math.sqrt(1 - e2 * math.sin(phi) ** 2)
        return (
            (n + self.height) * math.cos(phi) * math.cos(lam),
            (n + self.height) * math.cos(phi) * math.sin(lam),
            (n * (1 - e2) + self.height) * math.sin(phi),
        )


SITES: dict[str, Site] = {
    s.code: s
    for s in (
        Site(
            "lsc",
            "LCOGT node at Cerro Tololo Inter-American Observatory",
            -30.1673833,
            -70.8047889,
            2201.0,
        ),
        Site("elp", "LCOGT node at McDonald Observatory", 30.679833, -104.015173, 2030.0),
        Site("cpt", "LCOGT node at SAAO", -32.3805542, 20.8101815, 1804.0),
        Site("coj", "LCOGT node at Siding Spring Observatory", -31.2727986, 149.0708771, 1165.0),
        Site("ogg", "LCOGT node at Haleakala Observatory", 20.7069244, -156.2576447, 3055.0),
        Site("tfn", "LCOGT node at Teide Observatory", 28.300308, -16.511703, 2390.0),
    )
}


@dataclass(frozen=True)
class Filter:
    """``zp``: mag giving 1 e-/s on a 1m0 Sinistro at airmass 1; ``sky``: dark sky mag/arcsec^2;
    ``color``: mag_filter = mag_rp + color * (star colour); ``ext``: mag per airmass."""

    name: str
    zp: float
    sky: float
    color: float
    ext: float
    exptime: float  # default science exposure, s


FILTERS: dict[str, Filter] = {
    f.name: f
    for f in (
        Filter("U", 20.9, 22.0, 1.3, 0.45, 300.0),
        Filter("B", 22.6, 22.5, 0.8, 0.25, 240.0),
        Filter("V", 23.2, 21.5, 0.4, 0.15, 180.0),
        Filter("R", 23.5, 20.9, 0.05, 0.10, 120.0),
        Filter("I", 23.0, 19.9, -0.3, 0.06, 120.0),
        Filter("up", 21.1, 22.3, 1.4, 0.50, 300.0),
        Filter("gp", 23.7, 22.0, 0.6, 0.18, 180.0),
        Filter("rp", 23.5, 20.8, 0.0, 0.10, 120.0),
        Filter("ip", 23.1, 20.2, -0.3, 0.05, 120.0),
        Filter("zs", 22.3, 19.3, -0.5, 0.04, 120.0),
        Filter("Y", 21.1, 18.4, -0.6, 0.04, 120.0),
        Filter("w", 24.4, 21.0, 0.1, 0.12, 90.0),
    )
}


@dataclass(frozen=True)
class Layout:
    """Raw single-HDU layout (SBIG/Spectral) or Sinistro mosaic sizes, binned pixels.

    ``n``: light-sensitive pixels per side; ``raw_shape``: (rows, cols) of the raw image;
    ``trim``: 1-indexed TRIMSEC within the light-sensitive array; ``final_shape``: trimmed shape.
    """

    n: int
    raw_shape: tuple[int, int]
    datasec: str
    biassec: str
    trimsec: str
    trim: tuple[int, int, int, int]

    @property
    def final_shape(self) -> tuple[int, int]:
        x1, x2, y1, y2 = self.trim
        return (y2 - y1 + 1, x2 - x1 + 1)

    @property
    def trim_slices(self) -> tuple[slice, slice]:
        x1, x2, y1, y2 = self.trim
        return slice(y1 - 1, y2), slice(x1 - 1, x2)


def camera_layout(spec: CameraSpec, size: int) -> Layout:
    """Sections for a ``size`` (unbinned) detector; ValueError for an invalid size."""
    minimum = 128 if spec.family == "sinistro" else 64
    if not isinstance(size, (int, np.integer)) or size < minimum or size % 2:
        msg = (
            f"size must be an even number of unbinned pixels >= {minimum} for a {spec.family} "
            f"camera, got {size!r}"
        )
        raise ValueError(msg)
    n = int(size) // spec.binning
    if spec.family == "sinistro":
        full = section_string((1, n, 1, n))
        return Layout(n, (n, n), "UNKNOWN", "UNKNOWN", full, (1, n, 1, n))
    if spec.family == "sbig":  # kb78: [11:2037,11:2037] for 2048
        lo, hi = max(1, round(10 * n / 2048)), max(1, round(11 * n / 2048))
        trim = (lo + 1, n - hi, lo + 1, n - hi)
        return Layout(
            n, (n, n), section_string((1, n, 1, n)), "UNKNOWN", section_string(trim), trim
        )
    # spectral, fs02: BIASSEC [2049:2080,1:2048], TRIMSEC [20:2028,20:2028] for 2048
    lo, hi = max(1, round(19 * n / 2048)), max(1, round(20 * n / 2048))
    trim = (lo + 1, n - hi, lo + 1, n - hi)
    return Layout(
        n,
        (n, n + 32),
        section_string((1, n, 1, n)),
        section_string((n + 1, n + 32, 1, n)),
        section_string(trim),
        trim,
    )
