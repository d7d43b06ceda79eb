"""FITS sections (1-indexed, inclusive, x first) and numpy slices (0-indexed, y first).

This is the one place that converts between them. ``'[x1:x2,y1:y2]'`` with ``x1 > x2`` (or
``y1 > y2``) means that axis is read out reversed (flipped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Section", "parse_section", "UNKNOWN_SECTIONS"]

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
