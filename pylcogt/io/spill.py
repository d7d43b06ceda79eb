"""Spill prepared frames to a temporary folder and map them back, to bound memory.

A master built from 64 full-size frames would hold 8 GiB of float32 planes in memory; instead
each prepared frame is written once as native-endian ``.npy`` planes and memory-mapped by the
stacker (page cache, not heap). The folder lives under the data directory (same file system as
the products) and is removed when the :class:`SpillDir` closes. Its name records the owning
process (:mod:`pylcogt.io.scratch`): one left by a killed process is removed by the next
worker's :func:`~pylcogt.io.scratch.sweep_stale`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from pylcogt.frame import Frame
from pylcogt.io.bands import ArrayBandSource
from pylcogt.io.scratch import spill_prefix

__all__ = ["SpillDir"]


class SpillDir:
    """A temporary folder of spilled frames; use as a context manager."""

    def __init__(self, parent: Path) -> None:
        Path(parent).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=spill_prefix(), dir=parent))
        self._meta: dict[str, tuple[fits.Header, str, str, bool]] = {}

    def __enter__(self) -> SpillDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def save(self, key: str, frame: Frame) -> None:
        """Write ``frame``'s planes; its header, unit and name are kept in memory."""
        np.save(self.path / f"{key}.sci.npy", frame.sci, allow_pickle=False)
        np.save(self.path / f"{key}.bpm.npy", frame.bpm, allow_pickle=False)
        if frame.err is not None:
            np.save(self.path / f"{key}.err.npy", frame.err, allow_pickle=False)
        self._meta[key] = (frame.header, frame.unit, frame.name, frame.err is not None)

    def load(self, key: str) -> Frame:
        """The spilled frame with memory-mapped, read-only planes."""
        header, unit, name, has_err = self._meta[key]
        sci = np.load(self.path / f"{key}.sci.npy", mmap_mode="r")
        bpm = np.load(self.path / f"{key}.bpm.npy", mmap_mode="r")
        err = np.load(self.path / f"{key}.err.npy", mmap_mode="r") if has_err else None
        return Frame(sci=sci, err=err, bpm=bpm, header=header, unit=unit, name=name)

    def band_source(self, key: str) -> ArrayBandSource:
        frame = self.load(key)
        return ArrayBandSource(frame.sci, frame.err, frame.bpm)
