"""In-memory frames that the stages transform.

Conventions: numpy arrays are ``(rows, columns) = (y, x)``, 0-indexed. ``sci`` and ``err`` are
float32; ``err`` is the 1-sigma uncertainty in the same unit as ``sci`` (``unit`` says which:
``"adu"`` until the gain stage, ``"electron"`` after it, ``"electron/s"`` for a dark rate, ``""``
for a normalised flat). ``bpm`` is uint8 :class:`PixelFlag` bits. Stages never modify a frame in
place: they return a new one (:func:`dataclasses.replace`), and share arrays they did not change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits

__all__ = ["PixelFlag", "Frame", "AmpImage", "RawImage"]


class PixelFlag(enum.IntFlag):
    """Bits of the BPM plane (uint8). A pixel may carry several."""

    BAD = 1  # from the bad-pixel mask master, or no valid input to a stack
    SATURATED = 2  # at or above SATURATE in the raw frame
    LOW_FLAT = 4  # flat-field response too low to correct
    COSMIC_RAY = 8


@dataclass(frozen=True)
class Frame:
    """A single-image frame: after the mosaic for Sinistro, from the start for SBIG/Spectral."""

    sci: np.ndarray
    err: np.ndarray | None
    bpm: np.ndarray
    header: fits.Header
    unit: str = "adu"
    name: str = ""

    def __post_init__(self) -> None:
        if self.sci.dtype != np.float32:
            raise TypeError(f"sci must be float32, got {self.sci.dtype}")
        if self.bpm.shape != self.sci.shape or self.bpm.dtype != np.uint8:
            raise TypeError("bpm must be uint8 with the shape of sci")
        if self.err is not None and (
            self.err.shape != self.sci.shape or self.err.dtype != np.float32
        ):
            raise TypeError("err must be float32 with the shape of sci")

    @property
    def shape(self) -> tuple[int, int]:
        return self.sci.shape  # type: ignore[return-value]


@dataclass(frozen=True)
class AmpImage:
    """One amplifier's readout as stored: the whole raw array (data and overscan), in its own
    readout order. Sections are the header strings, 1-indexed FITS convention."""

    data: np.ndarray  # float32, the full raw array
    bpm: np.ndarray  # uint8, same shape
    gain: float  # electrons per ADU
    biassec: str
    datasec: str
    detsec: str
    err: np.ndarray | None = None
    unit: str = "adu"


@dataclass(frozen=True)
class RawImage:
    """A raw frame before the mosaic: one :class:`AmpImage` per amplifier (one for SBIG and
    Spectral), the merged header (primary cards, then the first extension's where the primary
    lacks them) and the facts stages need."""

    amps: tuple[AmpImage, ...]
    header: fits.Header
    name: str
    family: str  # sinistro | sbig | spectral
    read_noise_e: float
    saturate_adu: float
    crosstalk: np.ndarray | None = None  # (n_amps, n_amps): [i, j] = fraction of amp i in amp j
    extra: dict = field(default_factory=dict)
