"""Robust statistics kernels: robust standard deviation, sigma-clipped mean, per-pixel stacking.

Pure functions on arrays (no I/O). Conventions shared by every function here (the full rules and
their reasons are in ``docs/statistics.rst``):

- **Valid values.** A value counts only if it is finite and not masked (mask nonzero). For
  stacks an input value also needs a finite ERR value when ERR planes are given. Everything else
  is ignored, as if absent.
- **Arithmetic.** Inputs are float32; every statistic is computed in float64 from the exact
  float32 values. ``median`` of an even count is the mean of the middle two.
  ``MAD = median(|x - median|)``, ``rstd = 1.4826 * MAD`` and the clipping bound is
  ``k * (1.4826 * MAD)``, evaluated in exactly that order.
- **Clipping.** One pass: the median and rstd come from all valid values; a value is kept when
  ``|x - median| <= k * rstd`` (a value exactly at the bound is kept) and the mean is taken over
  the kept values. When ``MAD == 0`` only values equal to the median are kept.
- **No valid value.** Statistics are NaN and counts 0; a stacked pixel is NaN in the mean and
  error planes and carries :data:`FLAG_NO_VALID_INPUT` in its BPM.

:func:`clip_stack_band` is the stacking kernel used by :mod:`pylcogt.calibrations.stack`: numpy's
vectorised sort along the contiguous last axis of a transposed ``(pixels, frames)`` copy, with
two small numba kernels (the transpose, and median/MAD/clip/mean per pixel on the sorted rows).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numba
import numpy as np

from pylcogt.frame import PixelFlag

__all__ = [
    "RSTD_PER_MAD",
    "FLAG_NO_VALID_INPUT",
    "MAX_STACK_FRAMES",
    "robust_std",
    "ClippedMean",
    "sigma_clipped_mean",
    "StackBand",
    "StackWorkspace",
    "clip_stack_band",
]

#: ``rstd = RSTD_PER_MAD * MAD``: the standard deviation of a Gaussian from its MAD.
RSTD_PER_MAD = 1.4826
#: BPM bit set on a stacked pixel with no kept value: ``PixelFlag.BAD`` (1).
FLAG_NO_VALID_INPUT = np.uint8(PixelFlag.BAD)
#: ``n_kept`` is uint16, so a stack holds at most this many frames.
MAX_STACK_FRAMES = 65535

_THREADS = max(1, min(2, os.cpu_count() or 1))
# A chunk of pixels is gathered, sorted and clipped while it sits in the core's L2 cache: its
# working set (the transposed copy plus the chunk's input values) is about this many bytes.
_CHUNK_BYTES = 1 << 20
_MIN_CHUNK_PIXELS = 256


def _valid_values(data: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    data = np.asarray(data)
    valid = np.isfinite(data)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != data.shape:
            msg = f"mask shape {mask.shape} differs from data shape {data.shape}"
            raise ValueError(msg)
        valid &= mask == 0
    return data[valid].astype(np.float64)


def robust_std(data: np.ndarray, mask: np.ndarray | None = None) -> float:
    """``1.4826 * median(|x - median(x)|)`` over the valid values of ``data``, in data units.

    Valid values are finite and not masked (``mask`` nonzero = masked). NaN when none is valid.
    """
    values = _valid_values(data, mask)
    if values.size == 0:
        return math.nan
    median = np.median(values)
    return float(RSTD_PER_MAD * np.median(np.abs(values - median)))


class ClippedMean(NamedTuple):
    """Result of :func:`sigma_clipped_mean`; values in data units, NaN when ``n_used == 0``.

    ``median`` and ``rstd`` are those of all valid values (before clipping); ``mean`` is over the
    ``n_used`` kept values.
    """

    mean: float
    rstd: float
    median: float
    n_used: int


def sigma_clipped_mean(
    data: np.ndarray, mask: np.ndarray | None = None, *, k: float = 3.5
) -> ClippedMean:
    """Robust sigma-clipped mean of one image (bias level, overscan, flat normalisation).

    Keeps the valid values with ``|x - median| <= k * rstd`` (one pass, median and rstd of all
    valid values) and averages them. ``mask`` nonzero = masked; non-finite values are ignored.
    With no valid value every field is NaN and ``n_used`` is 0.
    """
    _check_k(k)
    values = _valid_values(data, mask)
    if values.size == 0:
        return ClippedMean(math.nan, math.nan, math.nan, 0)
    median = np.median(values)
    deviation = np.abs(values - median)
    rstd = RSTD_PER_MAD * np.median(deviation)
    kept = values[deviation <= k * rstd]
    if kept.size == 0:  # only possible for k < 1 / 1.4826
        return ClippedMean(math.nan, float(rstd), float(median), 0)
    return ClippedMean(float(kept.mean()), float(rstd), float(median), int(kept.size))


def _check_k(k: float) -> None:
    if not (isinstance(k, (int, float)) and math.isfinite(k) and k > 0):
        msg = f"k must be a positive finite number of rstd, got {k!r}"
        raise ValueError(msg)


# --------------------------------------------------------------------------------------------
# Stacking
# --------------------------------------------------------------------------------------------


class StackBand(NamedTuple):
    """Per-pixel result of :func:`clip_stack_band`, each of shape ``(rows, cols)``.

    - ``mean`` (float32, data units): mean of the kept values; NaN where none is kept.
    - ``err`` (float32, data units, 1 sigma): ``sqrt(sum err_i**2) / n_kept`` over the kept
      values; NaN where none is kept; ``None`` when no ERR planes were given.
    - ``bpm`` (uint8 bit flags): :data:`FLAG_NO_VALID_INPUT` where none is kept, else 0.
    - ``n_kept`` (uint16): how many values were averaged.
    """

    mean: np.ndarray
    err: np.ndarray | None
    bpm: np.ndarray
    n_kept: np.ndarray


class StackWorkspace:
    """Scratch memory for :func:`clip_stack_band`, reused from band to band.

    Per worker thread, one chunk of pixels at a time: the transposed float32 copy of the chunk
    (``chunk_pixels * N`` values, about 1 MiB with the chunk's inputs) and per-pixel counts
    and sums. A few MiB in all, whatever the band size.
    """

    def __init__(self, threads: int = _THREADS) -> None:
        self.threads = max(1, int(threads))
        self._scratch: dict[tuple[int, int], list[tuple[np.ndarray, ...]]] = {}

    @staticmethod
    def chunk_pixels(n_frames: int, bytes_per_value: int) -> int:
        """Pixels per chunk for ``n_frames`` values of ``bytes_per_value`` input bytes each."""
        return max(_MIN_CHUNK_PIXELS, _CHUNK_BYTES // (n_frames * (4 + bytes_per_value)))

    def scratch_bytes(self, n_frames: int, bytes_per_value: int) -> int:
        """Bytes of scratch :func:`clip_stack_band` holds for such a stack."""
        chunk = self.chunk_pixels(n_frames, bytes_per_value)
        return self.threads * chunk * (4 * n_frames + 20)

    def scratch(self, n_frames: int, chunk: int) -> list[tuple[np.ndarray, ...]]:
        """Per thread: ``(ordered (chunk, N) float32, n_valid, sum_valid, var_valid)``."""
        key = (n_frames, chunk)
        if key not in self._scratch:
            self._scratch = {
                key: [
                    (
                        np.empty((chunk, n_frames), np.float32),
                        np.empty(chunk, np.int32),
                        np.empty(chunk, np.float64),
                        np.empty(chunk, np.float64),
                    )
                    for _ in range(self.threads)
                ]
            }
        return self._scratch[key]


def clip_stack_band(
    values: np.ndarray,
    masks: np.ndarray | None = None,
    errs: np.ndarray | None = None,
    *,
    k: float = 3.0,
    out: StackBand | None = None,
    workspace: StackWorkspace | None = None,
) -> StackBand:
    """Per-pixel sigma-clipped mean of a stack of ``N`` frames over one band of rows.

    ``values``: ``(N, rows, cols)`` float32 in data units. ``masks``: same shape, bool or
    integer, nonzero = masked (or ``None``). ``errs``: same shape, float32 1-sigma uncertainties
    (or ``None``). Per pixel: the valid values (finite, unmasked, with a finite error) give the
    median and ``rstd = 1.4826 * MAD``; values with ``|x - median| <= k * rstd`` are kept and
    averaged. Inputs are not modified. ``out``, if given, receives the results (C-contiguous
    arrays; its ``err`` must be ``None`` exactly when ``errs`` is) and is returned;
    ``workspace`` lends scratch memory and sets the number of threads. Each pixel's result
    depends only on that pixel's values, so any split into bands gives identical results.
    """
    _check_k(k)
    values = _as_stack(values, "values", np.float32)
    n_frames, rows, cols = values.shape
    if n_frames < 1:
        msg = "cannot stack zero frames"
        raise ValueError(msg)
    if n_frames > MAX_STACK_FRAMES:
        msg = f"at most {MAX_STACK_FRAMES} frames can be stacked, got {n_frames}"
        raise ValueError(msg)
    has_mask = masks is not None
    has_err = errs is not None
    if has_mask:
        masks = _as_stack(masks, "masks", None, values.shape)
        if masks.dtype == np.bool_:
            masks = masks.view(np.uint8)
        elif masks.dtype != np.uint8:
            masks = (masks != 0).view(np.uint8)
    if has_err:
        errs = _as_stack(errs, "errs", np.float32, values.shape)
    if out is None:
        out = StackBand(
            mean=np.empty((rows, cols), np.float32),
            err=np.empty((rows, cols), np.float32) if has_err else None,
            bpm=np.empty((rows, cols), np.uint8),
            n_kept=np.empty((rows, cols), np.uint16),
        )
    elif (out.err is None) == has_err:
        msg = "out.err must be an array exactly when errs are given"
        raise ValueError(msg)
    planes = [out.mean, out.err if has_err else out.mean[:0], out.bpm, out.n_kept]
    for plane, dtype in zip(planes, (np.float32, np.float32, np.uint8, np.uint16), strict=True):
        fits = plane.flags.c_contiguous and plane.size in (0, rows * cols)
        if plane.dtype != dtype or not fits:
            msg = f"out arrays must be C-contiguous ({rows}, {cols}) of the StackBand dtypes"
            raise ValueError(msg)
    pixels = rows * cols
    if pixels == 0:
        return out
    present = [values] + ([masks] if has_mask else []) + ([errs] if has_err else [])
    flats = [_flat_planes(a) for a in present]
    if len({stride for _, stride in flats}) > 1:  # rare: planes spaced differently
        flats = [(np.ascontiguousarray(a).reshape(-1), pixels) for a in present]
    stride = flats[0][1]
    given = iter(flat for flat, _ in flats)
    flat_values = next(given)
    flat_masks = next(given) if has_mask else np.zeros(0, np.uint8)
    flat_errs = next(given) if has_err else np.zeros(0, np.float32)
    flat = (flat_values, flat_masks, flat_errs, n_frames, stride)
    outputs = [a.reshape(-1) for a in planes]
    workspace = StackWorkspace() if workspace is None else workspace
    chunk = StackWorkspace.chunk_pixels(n_frames, _bytes_per_value(has_err, has_mask))
    scratch = workspace.scratch(n_frames, chunk)
    n_chunks = -(-pixels // chunk)
    threads = min(workspace.threads, n_chunks)
    per_thread = -(-n_chunks // threads)

    def run(t: int) -> None:
        ordered, n_valid, sum_valid, var_valid = scratch[t]
        for c in range(t * per_thread, min(n_chunks, (t + 1) * per_thread)):
            p0 = c * chunk
            count = min(chunk, pixels - p0)
            part = (ordered[:count], n_valid[:count], sum_valid[:count], var_valid[:count])
            _gather_chunk(*flat, has_mask, has_err, p0, *part)
            part[0].sort(axis=1)  # numpy's SIMD sort; releases the GIL
            _clip_chunk(*part, *flat, has_mask, has_err, float(k), p0, *outputs)

    if threads == 1:
        run(0)
    else:
        with ThreadPoolExecutor(max_workers=threads - 1) as pool:
            others = [pool.submit(run, t) for t in range(1, threads)]
            run(0)
            for future in others:
                future.result()
    return out


def _bytes_per_value(has_err: bool, has_mask: bool) -> int:
    return 4 + 4 * has_err + has_mask


def _as_stack(array, name, dtype, shape=None) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        msg = f"{name} must be 3-D (frames, rows, cols), got shape {array.shape}"
        raise ValueError(msg)
    if shape is not None and array.shape != shape:
        msg = f"{name} shape {array.shape} differs from values shape {shape}"
        raise ValueError(msg)
    if dtype is not None and array.dtype != dtype:
        array = array.astype(dtype)
    if not all(plane.flags.c_contiguous for plane in array) or array.strides[0] < 0:
        array = np.ascontiguousarray(array)
    return array


def _flat_planes(array: np.ndarray) -> tuple[np.ndarray, int]:
    """A 1-D view of ``array`` (N, rows, cols), whose planes are each C-contiguous, and the
    distance between planes in elements: plane ``i`` is ``flat[i * stride : i * stride +
    rows * cols]``. Planes spaced other than ``rows * cols`` apart (the stacker pads them so that
    the N planes do not fall on the same cache sets) need no copy; the kernels index this one
    layout, so they are compiled once."""
    n_frames, rows, cols = array.shape
    if array.flags.c_contiguous or n_frames == 1:
        return array.reshape(-1), rows * cols
    itemsize = array.itemsize
    stride = array.strides[0] // itemsize
    if array.strides[0] % itemsize or stride < rows * cols:
        return np.ascontiguousarray(array).reshape(-1), rows * cols
    flat = np.lib.stride_tricks.as_strided(
        array, shape=((n_frames - 1) * stride + rows * cols,), strides=(itemsize,),
        writeable=False,
    )  # fmt: skip
    return flat, stride


# The numba kernels: serial, and ``nogil`` so that worker threads run them side by side.
# ``cache=True`` keeps the compiled code on disk: only the first run on a machine compiles.
_kernel = numba.njit(cache=True, nogil=True, error_model="numpy")


@_kernel
def _gather_chunk(
    values, masks, errs, n_frames, stride, has_mask, has_err, p0,
    ordered, n_valid, sum_valid, var_valid,
):  # pragma: no cover  # fmt: skip
    """Copy pixels ``p0:p0 + len(ordered)`` of the N planes to ``ordered`` (chunk, N), with
    +inf for invalid values. Plane ``i`` of ``values`` starts at ``i * stride``.

    +inf sorts after every valid (finite) value, so after sorting a row its first
    ``n_valid[q]`` entries are the valid values in increasing order. Also sums the valid values
    and their squared errors in frame order: the result for a pixel where nothing is rejected.
    """
    for q in range(ordered.shape[0]):
        p = p0 + q
        n = 0
        total = 0.0
        var = 0.0
        for i in range(n_frames):
            at = i * stride + p
            v = values[at]
            ok = np.isfinite(v)
            if has_mask:
                ok = ok and masks[at] == 0
            e = 0.0
            if has_err:
                e = np.float64(errs[at])
                ok = ok and np.isfinite(e)
            if ok:
                ordered[q, i] = v
                n += 1
                total += v
                var += e * e
            else:
                ordered[q, i] = np.inf
        n_valid[q] = n
        sum_valid[q] = total
        var_valid[q] = var


@numba.njit(inline="always", cache=True)
def _sorted_mad(s, n, med):  # pragma: no cover
    """MAD of the sorted ``s[:n]`` about ``med``, in float64.

    The deviations ``|x - med|`` form two increasing runs: ``L[t] = med - s[half - 1 - t]``
    (``half = n // 2`` of them) and ``R[t] = s[half + t] - med`` (the other ``n - half``).
    The ``r``-th smallest deviation, ``r = (n - 1) // 2``, takes some ``x`` values from ``L``
    and ``r + 1 - x`` from ``R``; ``x`` is found by bisection (the usual k-th element of two
    sorted arrays) and the next deviation, needed for even ``n``, is the smaller of the two
    candidates after the split.
    """
    half = n // 2
    a = half
    b = n - half
    r = (n - 1) // 2
    lo = max(0, r + 1 - b)
    hi = min(r + 1, a)
    # Largest x in [lo, hi] with x == lo or L[x - 1] <= R[r + 1 - x] (true when R is used up).
    while lo < hi:  # written without data-dependent branches: conditional moves
        x = (lo + hi + 1) >> 1
        j = r + 1 - x
        right = s[min(half + j, n - 1)] - med
        take = (j >= b) | (med - s[half - x] <= right)
        lo = x if take else lo
        hi = hi if take else x - 1
    x = lo
    dev = -np.inf
    if x > 0:
        dev = med - s[half - x]
    if r - x >= 0:
        dev = max(dev, s[half + r - x] - med)
    if n % 2 == 1:
        return dev
    nxt = np.inf
    if x < a:
        nxt = med - s[half - 1 - x]
    if r + 1 - x < b:
        nxt = min(nxt, s[half + r + 1 - x] - med)
    return 0.5 * (dev + nxt)


@_kernel
def _clip_chunk(
    ordered, n_valid, sum_valid, var_valid, values, masks, errs, n_frames, stride, has_mask,
    has_err, k, p0, mean, err, bpm, n_kept,
):  # pragma: no cover  # fmt: skip
    """Median, MAD, kept range and mean/error per pixel of a chunk, from its sorted rows.

    Sums always run over frames in frame order, so that a pixel's result does not depend on how
    its values happened to sort.
    """
    for q in range(ordered.shape[0]):
        p = p0 + q
        n = n_valid[q]
        s = ordered[q]
        lo = 0
        hi = n - 1
        if n > 0:
            half = n // 2
            if n % 2 == 1:
                med = np.float64(s[half])
            else:
                med = 0.5 * (np.float64(s[half - 1]) + np.float64(s[half]))
            bound = k * (1.4826 * _sorted_mad(s, n, med))
            # The kept values are a contiguous run s[lo..hi] of the sorted row.
            while lo < n and med - s[lo] > bound:
                lo += 1
            while hi >= lo and s[hi] - med > bound:
                hi -= 1
        if lo == 0 and hi == n - 1:  # nothing rejected (or nothing valid)
            m = n
            total = sum_valid[q]
            var = var_valid[q]
        else:
            m = 0
            total = 0.0
            var = 0.0
            if lo <= hi:
                lo_value = s[lo]
                hi_value = s[hi]
                for f in range(n_frames):
                    at = f * stride + p
                    v = values[at]
                    if v >= lo_value and v <= hi_value:  # NaN and +-inf never pass
                        if has_mask and masks[at] != 0:
                            continue
                        if has_err:
                            e = np.float64(errs[at])
                            if not np.isfinite(e):
                                continue
                            var += e * e
                        total += v
                        m += 1
        n_kept[p] = m
        if m == 0:
            mean[p] = np.nan
            bpm[p] = 1  # FLAG_NO_VALID_INPUT
            if has_err:
                err[p] = np.nan
        else:
            mean[p] = total / m
            bpm[p] = 0
            if has_err:
                err[p] = np.sqrt(var) / m
