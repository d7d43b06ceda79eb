"""Stack N frames into one, a band of rows at a time, within a memory budget.

:func:`stack_sources` reads every source band by band (each source is read once, in row order),
runs :func:`pylcogt.stats.clip_stack_band` on each band and writes the results into full-frame
output arrays. It does no file I/O itself: the sources do (``pylcogt.io.bands`` has FITS-backed
and in-memory ones). Per-pixel semantics are those of :func:`~pylcogt.stats.clip_stack_band`; a
pixel's result depends only on its own values, so the results are identical for any band height.

**Memory.** The peak is estimated as the full-frame outputs plus, for one band of ``h`` rows,
the input buffers, plus the kernel's and the readers' small scratch (:func:`estimate_peak_bytes`)::

    outputs  = rows * cols * (4 mean + 4 err [if ERR planes] + 1 bpm + 2 n_kept)
    per row  = cols * N * (4 sci + 4 err [if ERR] + 1 bpm [if any BPM])
    scratch  = 2 threads * (chunk of ~1 MiB: see StackWorkspace) + 2 MiB of read buffers
               + up to 1040 elements of padding per plane
    peak     = outputs + h * per row + scratch

and ``h`` is the largest height that keeps the peak within ``memory_budget_bytes``. Inputs are
read into buffers allocated once, so nothing else grows with N or with the frame size. Not
counted: the interpreter and imported libraries (about 150 MB of RSS), and whatever the caller
holds (e.g. the sources' own arrays for in-memory sources).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from pylcogt.stats import MAX_STACK_FRAMES, StackBand, StackWorkspace, clip_stack_band

__all__ = [
    "BandSource",
    "StackResult",
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "estimate_peak_bytes",
    "choose_band_rows",
    "stack_sources",
]

logger = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET_BYTES = 1 << 30
_READ_SCRATCH_BYTES = 2 << 20  # the band sources' per-thread conversion buffers
_READ_THREADS = 2
# Preferred input bytes per band: small enough that a band just read is still in the CPU's
# last-level cache when the kernel reads it back (measured on 64 x 4096^2: bands of 32-128 rows
# took ~20% less CPU than one 900-row band), large enough that per-band overheads stay small.
_TARGET_BAND_BYTES = 64 << 20


@runtime_checkable
class BandSource(Protocol):
    """One input frame, readable a band of rows at a time.

    ``read_rows(r0, r1)`` returns rows ``r0:r1`` of the science plane (float32, data units), the
    error plane (float32, 1 sigma, or ``None``) and the bad-pixel plane (uint8 bit flags, or
    ``None``). Optional, used when present: ``has_err``/``has_bpm`` (bool) and
    ``read_rows_into(r0, r1, sci, err, bpm)`` filling the given arrays (``None``: skip).
    """

    shape: tuple[int, int]

    def read_rows(
        self, r0: int, r1: int
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]: ...


@dataclass(frozen=True)
class StackResult:
    """Full-frame result of :func:`stack_sources` (arrays ``(rows, cols)``).

    ``mean`` float32 and ``err`` float32 (``None`` without ERR planes) in data units, NaN where
    no value was kept; ``bpm`` uint8 with ``FLAG_NO_VALID_INPUT`` (1, BAD) there; ``n_kept``
    uint16. ``band_rows`` is the band height used and ``peak_bytes_estimate`` the estimated peak.
    """

    mean: np.ndarray
    err: np.ndarray | None
    bpm: np.ndarray
    n_kept: np.ndarray
    n_frames: int
    band_rows: int
    peak_bytes_estimate: int


def _output_bytes_per_pixel(has_err: bool) -> int:
    return 4 + (4 if has_err else 0) + 1 + 2


def _band_bytes_per_pixel(n_frames: int, has_err: bool, has_bpm: bool) -> int:
    return n_frames * (4 + (4 if has_err else 0) + (1 if has_bpm else 0))


def estimate_peak_bytes(
    n_frames: int, shape: tuple[int, int], band_rows: int, *, has_err: bool, has_bpm: bool
) -> int:
    """Estimated peak memory of :func:`stack_sources` in bytes (see the module docstring)."""
    rows, cols = shape
    kernel_scratch = StackWorkspace().scratch_bytes(n_frames, 4 + 4 * has_err + has_bpm)
    return (
        rows * cols * _output_bytes_per_pixel(has_err)
        + band_rows * cols * _band_bytes_per_pixel(n_frames, has_err, has_bpm)
        + 1040 * _band_bytes_per_pixel(n_frames, has_err, has_bpm)  # plane padding
        + kernel_scratch
        + _READ_SCRATCH_BYTES
    )


def choose_band_rows(
    n_frames: int,
    shape: tuple[int, int],
    *,
    has_err: bool,
    has_bpm: bool,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> int:
    """Band height: the largest whose estimated peak fits the budget, and at most the height
    whose input buffers hold about 64 MiB (faster: the band stays in cache), and ``rows``.

    ValueError when not even one row fits the budget.
    """
    rows, cols = shape
    fixed = estimate_peak_bytes(n_frames, shape, 0, has_err=has_err, has_bpm=has_bpm)
    per_row = cols * _band_bytes_per_pixel(n_frames, has_err, has_bpm)
    band_rows = (memory_budget_bytes - fixed) // per_row if per_row else rows
    if band_rows < 1:
        need = fixed + per_row
        msg = (
            f"a memory budget of {memory_budget_bytes:,} bytes cannot stack {n_frames} frames "
            f"of {rows}x{cols}: the outputs and one row of inputs need {need:,} bytes"
        )
        raise ValueError(msg)
    preferred = max(1, _TARGET_BAND_BYTES // per_row) if per_row else rows
    return int(min(band_rows, preferred, rows))


def stack_sources(
    sources: Sequence[BandSource],
    *,
    k: float = 3.0,
    mask_bits: int = 0xFF,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    band_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StackResult:
    """Per-pixel ``k``-rstd clipped mean of the sources, streamed in bands of rows.

    An input value is masked when its BPM has any of ``mask_bits`` set (default: any flag), and
    when it or its error is not finite. ERR planes must be given by all sources or by none; a
    source without a BPM plane masks nothing. ``band_rows`` overrides the height chosen from
    ``memory_budget_bytes``. ``progress(rows_done, rows_total)`` is called after each band.
    """
    sources = list(sources)
    n_frames = len(sources)
    if n_frames == 0:
        msg = "cannot stack zero frames"
        raise ValueError(msg)
    if n_frames > MAX_STACK_FRAMES:
        msg = f"at most {MAX_STACK_FRAMES} frames can be stacked, got {n_frames}"
        raise ValueError(msg)
    if not 0 <= mask_bits <= 0xFF:
        msg = f"mask_bits must be a uint8 bit mask (0-255), got {mask_bits!r}"
        raise ValueError(msg)
    shape = tuple(int(n) for n in sources[0].shape)
    for index, source in enumerate(sources):
        if tuple(source.shape) != shape:
            msg = f"source {index} has shape {tuple(source.shape)}, source 0 {shape}"
            raise ValueError(msg)
    planes = [_planes_of(source) for source in sources]
    has_err = planes[0][0]
    if any(p[0] != has_err for p in planes):
        without = [i for i, p in enumerate(planes) if not p[0]]
        msg = (
            f"ERR planes must be given by every source or by none; sources {without[:10]} have none"
        )
        raise ValueError(msg)
    has_bpm = any(p[1] for p in planes)
    rows, cols = shape
    if band_rows is None:
        band_rows = choose_band_rows(
            n_frames, shape, has_err=has_err, has_bpm=has_bpm,
            memory_budget_bytes=memory_budget_bytes,
        )  # fmt: skip
    elif band_rows < 1:
        msg = f"band_rows must be at least 1, got {band_rows!r}"
        raise ValueError(msg)
    band_rows = max(1, min(band_rows, rows))
    peak = estimate_peak_bytes(n_frames, shape, band_rows, has_err=has_err, has_bpm=has_bpm)
    logger.info(
        "stacking %d frames of %dx%d in bands of %d rows (estimated peak %.0f MiB)",
        n_frames, rows, cols, band_rows, peak / 2**20,
    )  # fmt: skip

    mean = np.empty(shape, np.float32)
    err = np.empty(shape, np.float32) if has_err else None
    bpm = np.empty(shape, np.uint8)
    n_kept = np.empty(shape, np.uint16)
    stride = _plane_stride(band_rows * cols)
    sci_buffer = np.empty(n_frames * stride, np.float32)
    err_buffer = np.empty(n_frames * stride, np.float32) if has_err else None
    bpm_buffer = np.empty(n_frames * stride, np.uint8) if has_bpm else None
    workspace = StackWorkspace()
    groups = [range(i, n_frames, _READ_THREADS) for i in range(_READ_THREADS)]
    with ThreadPoolExecutor(max_workers=_READ_THREADS - 1) as pool:
        for r0 in range(0, rows, band_rows):
            r1 = min(rows, r0 + band_rows)
            sci_band = _planes_view(sci_buffer, n_frames, stride, r1 - r0, cols)
            err_band = (
                None
                if err_buffer is None
                else _planes_view(err_buffer, n_frames, stride, r1 - r0, cols)
            )
            bpm_band = (
                None
                if bpm_buffer is None
                else _planes_view(bpm_buffer, n_frames, stride, r1 - r0, cols)
            )

            def read(group, r0=r0, r1=r1, sci_band=sci_band, err_band=err_band, bpm_band=bpm_band):
                for i in group:
                    _read_band(sources[i], planes[i], r0, r1, i, sci_band, err_band, bpm_band)

            others = [pool.submit(read, group) for group in groups[1:]]
            read(groups[0])
            for future in others:
                future.result()
            if bpm_band is not None and mask_bits != 0xFF:
                np.bitwise_and(bpm_band, np.uint8(mask_bits), out=bpm_band)
            out = StackBand(
                mean=mean[r0:r1],
                err=None if err is None else err[r0:r1],
                bpm=bpm[r0:r1],
                n_kept=n_kept[r0:r1],
            )
            clip_stack_band(sci_band, bpm_band, err_band, k=k, out=out, workspace=workspace)
            if progress is not None:
                progress(r1, rows)
    return StackResult(mean, err, bpm, n_kept, n_frames, band_rows, peak)


def _plane_stride(pixels: int) -> int:
    """Elements between the starts of consecutive planes of a band buffer.

    One cache line more than a multiple of 4 KiB: planes a power-of-two apart would map the
    stacking kernel's N simultaneous reads (one per plane) onto the same cache sets; measured
    1.6x slower for 64 frames of 4096 columns.
    """
    return -(-pixels // 1024) * 1024 + 16


def _planes_view(buffer: np.ndarray, n_frames: int, stride: int, rows: int, cols: int):
    """``(n_frames, rows, cols)`` view of ``buffer``, plane ``i`` at ``i * stride``."""
    itemsize = buffer.itemsize
    return np.lib.stride_tricks.as_strided(
        buffer, shape=(n_frames, rows, cols), strides=(stride * itemsize, cols * itemsize, itemsize)
    )


def _planes_of(source: BandSource) -> tuple[bool, bool]:
    """(has ERR, has BPM): the source's own flags, else found by reading zero rows."""
    if hasattr(source, "has_err") and hasattr(source, "has_bpm"):
        return bool(source.has_err), bool(source.has_bpm)
    _, err, bpm = source.read_rows(0, 0)
    return err is not None, bpm is not None


def _read_band(source, planes, r0, r1, i, sci_band, err_band, bpm_band) -> None:
    has_err, has_bpm = planes
    bpm_out = bpm_band[i] if bpm_band is not None and has_bpm else None
    if bpm_band is not None and not has_bpm:
        bpm_band[i] = 0
    reader = getattr(source, "read_rows_into", None)
    if reader is not None:
        reader(r0, r1, sci_band[i], err_band[i] if has_err else None, bpm_out)
        return
    sci, err, bpm = source.read_rows(r0, r1)
    np.copyto(sci_band[i], sci, casting="unsafe")
    if has_err:
        np.copyto(err_band[i], err, casting="unsafe")
    if bpm_out is not None:
        np.copyto(bpm_out, bpm, casting="unsafe")
