"""Raw Sinistro amplifier geometry and the mosaic -> amplifier mapping used by the simulator.

Conventions: FITS sections are 1-indexed and inclusive, ``(x1, x2, y1, y2)`` / ``'[x1:x2,y1:y2]'``
with x along NAXIS1 (numpy axis 1); ``x1 > x2`` means the axis is flipped. numpy arrays are
0-indexed ``[row (y), column (x)]``. S is the light-sensitive detector size (1x1 binning), h = S/2.

Each amplifier's raw array is ``(h + 10) rows x (h + 32) columns``: h light columns, 6
transitional columns, 26 serial-overscan columns (BIASSEC ``[h+7:h+32, ...]``; the real fa05 frame
has ``[520:540,1:512]`` for h=512), then parallel-overscan rows. DETSEC follows the real
``elp1m008-fa05-20211007-0042-e00.fits``: amp 1 top-left (flipped in y), amp 2 bottom-left,
amp 3 bottom-right (flipped in x), amp 4 top-right (flipped in x and y).

Decision: FORMATS.md says amps 3 and 4 are the top half with the extra light-sensitive row, but
the real DETSEC puts amps 1 and 4 on top. We follow the real DETSEC and give the extra row to the
two top amplifiers (1 and 4): their raw row 1 is that edge row (it would land at mosaic row S+1);
DATASEC ``[1:h,2:h+1]`` leaves it out, and they have 9 parallel-overscan rows instead of 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "AmpGeometry",
    "SinistroGeometry",
    "sinistro_geometry",
    "section_string",
    "mosaic_to_amps",
    "N_SERIAL_OVERSCAN",
    "N_PARALLEL_OVERSCAN",
]

N_SERIAL_OVERSCAN = 32  # columns after the h light columns (6 transitional + 26 in BIASSEC)
N_PARALLEL_OVERSCAN = 10  # rows after the light rows (9 on the amplifiers with the extra row)
_BIASSEC_SKIP = 6  # transitional columns left out of BIASSEC

Section = tuple[int, int, int, int]


def section_string(sec: Section) -> str:
    """``(x1, x2, y1, y2)`` -> ``'[x1:x2,y1:y2]'`` (1-indexed, inclusive)."""
    x1, x2, y1, y2 = sec
    return f"[{x1}:{x2},{y1}:{y2}]"


@dataclass(frozen=True)
class AmpGeometry:
    """One amplifier: raw ``shape`` (rows, cols) and its 1-indexed FITS sections."""

    amp: int
    shape: tuple[int, int]
    datasec: Section
    biassec: Section
    detsec: Section
    extra_row: bool

    @property
    def datasec_str(self) -> str:
        return section_string(self.datasec)

    @property
    def biassec_str(self) -> str:
        return section_string(self.biassec)

    @property
    def detsec_str(self) -> str:
        return section_string(self.detsec)


@dataclass(frozen=True)
class SinistroGeometry:
    """Full-frame 1x1 Sinistro geometry for a light-sensitive size ``size`` x ``size``."""

    size: int
    amps: tuple[AmpGeometry, ...]

    @property
    def half(self) -> int:
        return self.size // 2

    @property
    def raw_shape(self) -> tuple[int, int]:
        return self.amps[0].shape


def sinistro_geometry(size: int = 4096) -> SinistroGeometry:
    """Amplifier layout for a ``size`` x ``size`` detector (even, >= 128)."""
    if size < 128 or size % 2:
        msg = f"Sinistro size must be an even number of pixels >= 128, got {size}"
        raise ValueError(msg)
    s, h = size, size // 2
    shape = (h + N_PARALLEL_OVERSCAN, h + N_SERIAL_OVERSCAN)
    bx = (h + _BIASSEC_SKIP + 1, h + N_SERIAL_OVERSCAN)
    # (amp, detsec, extra_row): layout of the real fa05 frame, scaled to the full detector.
    layout = (
        (1, (1, h, s, h + 1), True),
        (2, (1, h, 1, h), False),
        (3, (s, h + 1, 1, h), False),
        (4, (s, h + 1, s, h + 1), True),
    )
    amps = []
    for amp, detsec, extra in layout:
        y1, y2 = (2, h + 1) if extra else (1, h)
        amps.append(
            AmpGeometry(
                amp=amp,
                shape=shape,
                datasec=(1, h, y1, y2),
                biassec=(bx[0], bx[1], y1, y2),
                detsec=detsec,
                extra_row=extra,
            )
        )
    return SinistroGeometry(size=s, amps=tuple(amps))


def _detsec_block(mosaic: np.ndarray, detsec: Section) -> np.ndarray:
    """The mosaic pixels covered by DETSEC, in the amplifier's readout order (flips applied)."""
    x1, x2, y1, y2 = detsec
    block = mosaic[min(y1, y2) - 1 : max(y1, y2), min(x1, x2) - 1 : max(x1, x2)]
    if y1 > y2:
        block = block[::-1, :]
    if x1 > x2:
        block = block[:, ::-1]
    return block


def mosaic_to_amps(
    mosaic: np.ndarray,
    geometry: SinistroGeometry | None = None,
    *,
    edge_row: float = 0.5,
    fill: float = 0.0,
    dtype=None,
) -> list[np.ndarray]:
    """Split a mosaic-orientation ``(S, S)`` image into the 4 raw amplifier arrays (amp order 1-4).

    Raw DATASEC pixel (i, j) receives the mosaic pixel that DETSEC (with its flips) assigns to
    it. The extra edge row (raw row 1 of amps 1 and 4, outside DATASEC) gets ``edge_row`` times
    the adjacent light row (a partially illuminated edge row); overscan pixels get ``fill``.
    Values are copied unchanged, so units are whatever the mosaic is in.
    """
    geometry = geometry or sinistro_geometry(mosaic.shape[0])
    if mosaic.shape != (geometry.size, geometry.size):
        msg = f"mosaic shape {mosaic.shape} does not match the {geometry.size}^2 detector"
        raise ValueError(msg)
    out = []
    for amp in geometry.amps:
        arr = np.full(amp.shape, fill, dtype=dtype or mosaic.dtype)
        x1, x2, y1, y2 = amp.datasec
        arr[y1 - 1 : y2, x1 - 1 : x2] = _detsec_block(mosaic, amp.detsec)
        if amp.extra_row:
            arr[y1 - 2, x1 - 1 : x2] = edge_row * arr[y1 - 1, x1 - 1 : x2]
        out.append(arr)
    return out
