"""FITS sections (1-indexed, inclusive, x first) and numpy slices (0-indexed, y first).

This is the one place that converts between them. ``'[x1:x2,y1:y2]'`` with ``x1 > x2`` (or
``y1 > y2``) means that axis is read out reversed (flipped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "Section",
    "parse_section",
    "UNKNOWN_SECTIONS",
    "check_within",
    "Placement",
    "mosaic_layout",
]

UNKNOWN_SECTIONS = frozenset({"", "UNKNOWN", "N/A", "NONE"})
_SECTION_RE = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


@dataclass(frozen=True)
class Section:
    """A FITS section: 1-indexed inclusive bounds as written in the header."""

    x1: int
    x2: int
    y1: int
    y2: int

    @property
    def nx(self) -> int:
        return abs(self.x2 - self.x1) + 1

    @property
    def ny(self) -> int:
        return abs(self.y2 - self.y1) + 1

    @property
    def x_flipped(self) -> bool:
        return self.x1 > self.x2

    @property
    def y_flipped(self) -> bool:
        return self.y1 > self.y2

    def to_slices(self) -> tuple[slice, slice]:
        """``(rows, columns)`` numpy slices covering the section, ignoring its flips."""
        x_lo, x_hi = sorted((self.x1, self.x2))
        y_lo, y_hi = sorted((self.y1, self.y2))
        return slice(y_lo - 1, y_hi), slice(x_lo - 1, x_hi)

    def __str__(self) -> str:
        return f"[{self.x1}:{self.x2},{self.y1}:{self.y2}]"


def parse_section(text: str) -> Section | None:
    """Parse ``'[x1:x2,y1:y2]'``; None for ``UNKNOWN``/``N/A``/empty; ValueError otherwise."""
    value = str(text).strip()
    if value.upper() in UNKNOWN_SECTIONS:
        return None
    match = _SECTION_RE.match(value)
    if match is None:
        msg = f"{text!r} is not a FITS section of the form [x1:x2,y1:y2]"
        raise ValueError(msg)
    x1, x2, y1, y2 = (int(g) for g in match.groups())
    if min(x1, x2, y1, y2) < 1:
        msg = f"{text!r}: FITS sections are 1-indexed, got a 0"
        raise ValueError(msg)
    return Section(x1, x2, y1, y2)


def check_within(section: Section, shape: tuple[int, ...], what: str = "section") -> None:
    """ValueError unless ``section`` lies inside an array of numpy ``shape`` ``(rows, cols)``."""
    rows, cols = shape[-2:]
    if max(section.x1, section.x2) > cols or max(section.y1, section.y2) > rows:
        msg = f"{what} {section} lies outside the {cols}x{rows} (x by y) array"
        raise ValueError(msg)


@dataclass(frozen=True)
class Placement:
    """Where one amplifier's DATASEC lands in a mosaic: numpy ``(rows, cols)`` slices of the
    amplifier array (``source``) and of the mosaic (``target``), and whether each axis is
    reversed on the way (DATASEC and DETSEC ranges running in opposite directions)."""

    source: tuple[slice, slice]
    target: tuple[slice, slice]
    flip_y: bool
    flip_x: bool

    def oriented(self, array):
        """The DATASEC pixels of ``array`` in mosaic orientation (a view, no copy)."""
        view = array[self.source]
        return view[:: -1 if self.flip_y else 1, :: -1 if self.flip_x else 1]


def mosaic_layout(
    datasecs: list[Section], detsecs: list[Section], binning: tuple[int, int]
) -> tuple[tuple[int, int], list[Placement]]:
    """Mosaic ``(rows, cols)`` and one :class:`Placement` per amplifier.

    DETSEC is in unbinned detector pixels: each amplifier's DETSEC is offset by the smallest
    DETSEC start over all amplifiers (sub-frame readouts such as ``central_2k_2x2`` do not start
    at pixel 1) and divided by the binning ``(x, y)``. ValueError (naming the amplifier, 1-based)
    when a DETSEC is not aligned to the binning, its size differs from DATASEC times the binning,
    or the amplifiers overlap or leave a gap in the mosaic.
    """
    xbin, ybin = binning
    if len(datasecs) != len(detsecs) or not datasecs:
        raise ValueError("one DATASEC and one DETSEC per amplifier are needed")
    x0 = min(min(d.x1, d.x2) for d in detsecs)
    y0 = min(min(d.y1, d.y2) for d in detsecs)
    boxes = []
    placements = []
    for amp, (data, det) in enumerate(zip(datasecs, detsecs, strict=True), start=1):
        if det.nx != data.nx * xbin or det.ny != data.ny * ybin:
            msg = (
                f"amplifier {amp}: DETSEC {det} covers {det.nx}x{det.ny} unbinned pixels but "
                f"DATASEC {data} is {data.nx}x{data.ny} pixels binned {xbin}x{ybin} "
                f"({data.nx * xbin}x{data.ny * ybin} unbinned)"
            )
            raise ValueError(msg)
        lo_x, lo_y = min(det.x1, det.x2) - x0, min(det.y1, det.y2) - y0
        if lo_x % xbin or lo_y % ybin:
            msg = (
                f"amplifier {amp}: DETSEC {det} does not start on a {xbin}x{ybin} binned pixel "
                f"boundary (offset {lo_x}, {lo_y} from the mosaic origin)"
            )
            raise ValueError(msg)
        col, row = lo_x // xbin, lo_y // ybin
        boxes.append((amp, row, row + data.ny, col, col + data.nx))
        placements.append(
            Placement(
                source=data.to_slices(),
                target=(slice(row, row + data.ny), slice(col, col + data.nx)),
                flip_y=data.y_flipped != det.y_flipped,
                flip_x=data.x_flipped != det.x_flipped,
            )
        )
    rows = max(b[2] for b in boxes)
    cols = max(b[4] for b in boxes)
    for i, (a, r1, r2, c1, c2) in enumerate(boxes):
        for b, s1, s2, d1, d2 in boxes[i + 1 :]:
            if r1 < s2 and s1 < r2 and c1 < d2 and d1 < c2:
                msg = f"amplifiers {a} and {b} overlap in the mosaic (DETSEC)"
                raise ValueError(msg)
    if sum((r2 - r1) * (c2 - c1) for _, r1, r2, c1, c2 in boxes) != rows * cols:
        msg = f"the amplifiers' DETSEC leave gaps in the {cols}x{rows} mosaic"
        raise ValueError(msg)
    return (rows, cols), placements
