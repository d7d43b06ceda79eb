"""Flag cosmic-ray hits in the BPM with L.A.Cosmic (astroscrappy's ``detect_cosmics``).

Input: a calibrated frame in electrons (after bias, dark and flat; sky not subtracted, as
L.A.Cosmic's noise model needs it). Output: a new frame whose BPM has :attr:`PixelFlag.COSMIC_RAY`
on the detected pixels and whose header has the QC cards below. SCI and ERR are NOT modified
(decision): a cleaned value is an interpolation, not a measurement; the catalogue stage leaves
COSMIC_RAY pixels out of detection and flags the sources whose aperture holds one
(``SourceFlag.COSMIC_RAY``), which is all the science products need.

Inputs to astroscrappy, per pixel (van Dokkum 2001; astroscrappy >= 1.2):

- data: SCI, electrons (``gain = 1``); non-finite values are masked and replaced by the frame's
  median (they only feed the neighbours' median filters).
- noise: ``ERR**2`` as the variance (``invar``) when the frame has ERR (it follows the flat
  field, which astroscrappy's own model ``data + RDNOISE**2`` does not); otherwise that model,
  with ``RDNOISE`` from the header, electrons (the raw reader's convention: LCO headers give it
  in electrons, ``[electrons/pixel]``, whatever GAIN is).
- mask (``inmask``: never flagged, and grown by 1 pixel by astroscrappy): BPM bits
  :attr:`CosmicRayConfig.mask_bits` (BAD, LOW_FLAT), non-finite SCI or ERR, and saturated stars.
- saturation: from the BPM, not from a level. SATURATE is raw ADU with the bias in, so after
  the gain, bias and flat there is no single level in electrons. A SATURATED pixel belongs to a
  saturated star (or its bleed trail) when the median of its 3 x 3 neighbourhood is at least
  :attr:`~CosmicRayConfig.saturated_star_fraction` of its value, or when at least
  :attr:`~CosmicRayConfig.saturated_star_min_px` SATURATED pixels lie in its 5 x 5 neighbourhood;
  those pixels, grown by :attr:`~CosmicRayConfig.saturation_grow_px`, are masked (astroscrappy's
  own rule, ``median7 > satlevel / 10`` and a 4-pixel growth, on the BPM instead of a level). A
  hit that saturates one to a few isolated pixels stays detectable. astroscrappy's ``satlevel``
  is infinite (off).

astroscrappy never flags the 3 outermost rows and columns of the frame (its median filters
leave them out); nor does the stage.

Speed (``benchmarks/bench_cosmics.py``): the flags are astroscrappy's on the whole frame with
the same inputs and parameters (the tests compare them pixel for pixel), computed by parts:

1. Iteration 1 on tiles of :attr:`~CosmicRayConfig.tile_px` pixels, each padded by the reach of
   an iteration (:func:`lacosmic_reach`: the flags at a pixel depend on the data within that
   many pixels; + 4 for safety), over :attr:`~CosmicRayConfig.workers` threads (astroscrappy's
   C code releases the GIL). Cache-sized tiles are also faster than one whole-frame call, and
   the memory stays small.
2. Iterations 2..niter: an iteration changes the image only at the flagged pixels (replaced by
   the mean of their 5 x 5 unmasked, unflagged neighbours), so new flags appear only within the
   reach of the pixels flagged by the iteration before (+ 2: the flagged pixels whose mean
   changed). The replacement ('meanmask') is done here as astroscrappy does it (same pixels,
   same float32 sums, the same whole-frame median where no neighbour is left), then one
   iteration runs in windows around those pixels only, until one finds nothing new. With
   another ``cleantype``, windows around the iteration-1 flags run all ``niter`` iterations on
   the original data, padded so that their centres are exact; there, a pixel whose 5 x 5
   neighbourhood is all flagged or masked gets the window's median, not the frame's, before
   the next iteration (a difference only for hits larger than 5 x 5 or inside masked areas).

Iterations 2..4 then cost little, so ``niter`` is astroscrappy's default (4), and the whole
astroscrappy default configuration is the stage's: same completeness, same false positives.
Measured on a 4096 x 4096 frame (2000 stars, 1073 hit pixels; 2 cores, OMP_NUM_THREADS=1):
astroscrappy's whole-frame call 23.1 s (peak RSS 1038 MiB); the stage 8.9 s on one thread,
5.3 s on two (306-322 MiB), the same 1695 flags. Iteration 1 alone takes 8.2 s of the 8.9 s;
without the tiles (``tile_px = 0``) the stage takes 11.1 s. With astroscrappy's OpenMP on both
cores (OMP_NUM_THREADS unset) its call takes 15.5 s. With every core busy elsewhere, OpenMP's
spinning threads make one-thread runs several times slower when OMP_NUM_THREADS is unset
(2048^2, two other busy processes: ``workers = 1`` 20.6 s instead of 6.1 s; two workers were
not affected): run the pipeline's workers with ``OMP_NUM_THREADS=1``.

QC cards written into the returned frame's header: ``L1NCRPIX`` (pixels flagged COSMIC_RAY by
this stage), ``L1CRFRAC`` (the same as a fraction of the frame's pixels) and ``L1CRSTAT``:
``'OK'``, or ``'HIGH'`` when that fraction exceeds :attr:`~CosmicRayConfig.max_flagged_fraction`
(about ten times a long exposure's share of real hits: the stage is probably flagging stars or
noise).
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import astroscrappy
import numpy as np

from pylcogt.frame import Frame, PixelFlag
from pylcogt.stages._checks import require_unit

__all__ = [
    "CosmicRayConfig",
    "detect_cosmic_rays",
    "cosmic_ray_mask",
    "lacosmic_inputs",
    "lacosmic_kwargs",
    "lacosmic_reach",
]

log = logging.getLogger(__name__)

_CLEANTYPES = ("meanmask", "medmask", "median", "idw")
_PSFMODELS = ("gauss", "gaussx", "gaussy", "moffat")
#: astroscrappy corrupts memory on arrays with fewer rows or columns than this
_MIN_SIDE_PX = 8
#: pixels added to every computed padding, on top of the reach
_SAFETY_PX = 4


@dataclass(frozen=True)
class CosmicRayConfig:
    """Cosmic-ray detection settings; the defaults are the pipeline's.

    The L.A.Cosmic parameters are astroscrappy's, with its defaults (``niter = 4``: the second
    iteration adds the fainter pixels of the hits found in the first, about 2 % of them; the
    later ones cost little here: see the module docstring). The others say what is masked and
    how the work is split; they do not change the flags.
    """

    #: Laplacian-to-noise threshold of a cosmic-ray pixel (lower: more flags)
    sigclip: float = 4.5
    #: threshold of the neighbours of a flagged pixel, as a fraction of ``sigclip``
    sigfrac: float = 0.3
    #: minimum contrast of the Laplacian over the fine-structure image (raise it if star cores
    #: are flagged)
    objlim: float = 5.0
    #: L.A.Cosmic iterations (each replaces the flagged pixels and looks again)
    niter: int = 4
    #: separable median filters (astroscrappy's default; close to the full ones, faster)
    sepmed: bool = True
    #: replacement of flagged pixels between iterations: 'meanmask', 'medmask', 'median', 'idw'
    #: (it only affects what iterations 2.. find: SCI is never modified)
    cleantype: str = "meanmask"
    #: fine-structure image: 'median' (L.A.Cosmic) or 'convolve' (matched filter with the PSF)
    fsmode: str = "median"
    #: PSF of fsmode='convolve': 'gauss', 'gaussx', 'gaussy' or 'moffat'; FWHM (pixels), kernel
    #: size (pixels, odd) and Moffat beta
    psfmodel: str = "gauss"
    psffwhm_px: float = 2.5
    psfsize_px: int = 7
    psfbeta: float = 4.765
    #: variance from the ERR plane (``ERR**2``) when there is one, else ``SCI + RDNOISE**2``
    use_err: bool = True
    #: BPM bits that are masked: never flagged, left out of the replacement means
    mask_bits: int = int(PixelFlag.BAD | PixelFlag.LOW_FLAT)
    #: a SATURATED pixel is part of a saturated star when the median of its 3 x 3 neighbourhood
    #: is at least this fraction of its value ...
    saturated_star_fraction: float = 0.1
    #: ... or when its 5 x 5 neighbourhood holds at least this many SATURATED pixels
    saturated_star_min_px: int = 5
    #: saturated-star pixels are masked with this growth (pixels; astroscrappy's own is 4)
    saturation_grow_px: int = 4
    #: side of the iteration-1 tiles (pixels); 0: the whole frame in one call
    tile_px: int = 512
    #: grid cell (pixels) of the windows of iterations 2..niter: a window is the bounding box
    #: of a connected group of cells within reach of the pixels to look at again
    window_cell_px: int = 8
    #: threads running tiles and windows; None: min(2, CPUs available to the process)
    workers: int | None = None
    #: QC: L1CRSTAT = 'HIGH' above this fraction of flagged pixels
    max_flagged_fraction: float = 0.002

    def __post_init__(self) -> None:
        positive = {
            "sigclip": self.sigclip,
            "sigfrac": self.sigfrac,
            "objlim": self.objlim,
            "niter": self.niter,
            "psffwhm_px": self.psffwhm_px,
            "psfsize_px": self.psfsize_px,
            "psfbeta": self.psfbeta,
            "window_cell_px": self.window_cell_px,
            "max_flagged_fraction": self.max_flagged_fraction,
        }
        for name, value in positive.items():
            if not value > 0:
                msg = f"CosmicRayConfig.{name} must be positive, got {value!r}"
                raise ValueError(msg)
        if self.cleantype not in _CLEANTYPES:
            msg = f"CosmicRayConfig.cleantype must be one of {_CLEANTYPES}, got {self.cleantype!r}"
            raise ValueError(msg)
        if self.fsmode not in ("median", "convolve"):
            msg = f"CosmicRayConfig.fsmode must be 'median' or 'convolve', got {self.fsmode!r}"
            raise ValueError(msg)
        if self.psfmodel not in _PSFMODELS:
            msg = f"CosmicRayConfig.psfmodel must be one of {_PSFMODELS}, got {self.psfmodel!r}"
            raise ValueError(msg)
        if self.psfsize_px % 2 != 1:
            msg = f"CosmicRayConfig.psfsize_px must be odd, got {self.psfsize_px!r}"
            raise ValueError(msg)
        if not 0 <= self.mask_bits <= 0xFF or self.mask_bits & PixelFlag.COSMIC_RAY:
            msg = "CosmicRayConfig.mask_bits must be uint8 BPM bits without COSMIC_RAY, got "
            raise ValueError(msg + repr(self.mask_bits))
        if self.saturation_grow_px < 0 or self.saturated_star_min_px < 1:
            msg = "CosmicRayConfig.saturation_grow_px must be >= 0, saturated_star_min_px >= 1"
            raise ValueError(msg)
        if not 0 < self.saturated_star_fraction <= 1:
            msg = "CosmicRayConfig.saturated_star_fraction must be in (0, 1]"
            raise ValueError(msg)
        if self.tile_px < 0 or (0 < self.tile_px < 2 * _MIN_SIDE_PX):
            msg = f"CosmicRayConfig.tile_px must be 0 or >= {2 * _MIN_SIDE_PX}"
            raise ValueError(msg)
        if self.workers is not None and self.workers < 1:
            msg = f"CosmicRayConfig.workers must be >= 1 or None, got {self.workers!r}"
            raise ValueError(msg)


def lacosmic_reach(config: CosmicRayConfig) -> int:
    """Pixels (Chebyshev distance) within which the data decide one L.A.Cosmic iteration's flag
    at a pixel, as astroscrappy computes it: the noise map is a median of the variance, the
    Laplacian map S' a median-subtracted ratio over it, the fine-structure image a median or a
    PSF convolution minus a wider median, and the flags grow twice by one pixel."""
    noise = 3 if config.sepmed else 2  # sepmedfilt7 | medfilt5 of the variance
    s_prime = max(1, noise) + (3 if config.sepmed else 2)  # Laplacian / noise, minus its median
    if config.fsmode == "median":
        fine = 2 if config.sepmed else 1  # sepmedfilt5 | medfilt3
    else:
        fine = config.psfsize_px // 2 + noise
    fine += 4 if config.sepmed else 3  # minus sepmedfilt9 | medfilt7 of itself
    return 2 + max(s_prime, fine, noise)


def lacosmic_kwargs(config: CosmicRayConfig, read_noise_e: float) -> dict:
    """The keyword arguments of ``astroscrappy.detect_cosmics`` for data in electrons
    (everything but the arrays and ``niter``)."""
    return {
        "sigclip": config.sigclip,
        "sigfrac": config.sigfrac,
        "objlim": config.objlim,
        "gain": 1.0,
        "readnoise": read_noise_e,
        "satlevel": np.inf,  # saturated stars come from the BPM (module docstring)
        "sepmed": config.sepmed,
        "cleantype": config.cleantype,
        "fsmode": config.fsmode,
        "psfmodel": config.psfmodel,
        "psffwhm": config.psffwhm_px,
        "psfsize": config.psfsize_px,
        "psfbeta": config.psfbeta,
    }


@dataclass(frozen=True)
class _Patch:
    """Replacement values of the flagged pixels between iterations: ``index`` (sorted flat
    indices into the frame), ``sci`` and ``var`` (float32) there; ``flags`` the whole mask."""

    flags: np.ndarray
    index: np.ndarray
    sci: np.ndarray
    var: np.ndarray


@dataclass(frozen=True)
class _Inputs:
    sci: np.ndarray  # float32, the frame's own array unless it had non-finite values
    err: np.ndarray | None  # float32, idem; None: astroscrappy's noise model
    bpm: np.ndarray
    mask_bits: np.uint8
    star_mask: np.ndarray | None  # bool, saturated stars grown
    nonfinite: np.ndarray | None  # bool, non-finite SCI or ERR
    read_noise_e: float

    def mask(self, rows, cols) -> np.ndarray:
        """``inmask`` at ``[rows, cols]`` (slices or index arrays), a new array."""
        mask = (self.bpm[rows, cols] & self.mask_bits) != 0
        for extra in (self.star_mask, self.nonfinite):
            if extra is not None:
                mask |= extra[rows, cols]
        return mask

    def variance(self, rows, cols) -> np.ndarray:
        """The variance astroscrappy starts from at ``[rows, cols]``, a new float32 array:
        ``ERR**2``, or ``SCI + RDNOISE**2`` computed as it does."""
        if self.err is not None:
            return np.square(self.err[rows, cols])
        rn = np.float32(self.read_noise_e)
        return self.sci[rows, cols] + rn * rn

    def arrays(self, rows: slice, cols: slice, patch: _Patch | None = None) -> dict:
        """``indat``, ``inmask`` and (with ERR or a patch) ``invar`` of one box; with a patch,
        the flagged pixels hold its values (in copies: the frame is never written)."""
        out = {"indat": self.sci[rows, cols], "inmask": self.mask(rows, cols)}
        if self.err is not None or patch is not None:
            out["invar"] = self.variance(rows, cols)
        if patch is not None and patch.index.size:
            r, c = np.nonzero(patch.flags[rows, cols])
            flat = (r + rows.start) * self.sci.shape[1] + (c + cols.start)
            where = np.minimum(np.searchsorted(patch.index, flat), patch.index.size - 1)
            cleaned = patch.index[where] == flat  # not the frame's 2-pixel border
            r, c, where = r[cleaned], c[cleaned], where[cleaned]
            out["indat"] = out["indat"].copy()
            out["indat"][r, c] = patch.sci[where]
            out["invar"][r, c] = patch.var[where]
        return out


def lacosmic_inputs(frame: Frame, config: CosmicRayConfig | None = None) -> dict:
    """The whole-frame arguments of ``astroscrappy.detect_cosmics`` the stage uses (``indat``,
    ``inmask``, ``invar`` when ERR is used, and :func:`lacosmic_kwargs`; ``niter`` left out):
    for comparisons with a plain astroscrappy call."""
    config = CosmicRayConfig() if config is None else config
    inputs = _prepare(frame, config)
    ny, nx = frame.shape
    return inputs.arrays(slice(0, ny), slice(0, nx)) | lacosmic_kwargs(config, inputs.read_noise_e)


def _prepare(frame: Frame, config: CosmicRayConfig) -> _Inputs:
    require_unit(frame, "electron", "cosmic-ray detection")
    if min(frame.shape) < _MIN_SIDE_PX:
        msg = f"{frame.name}: cosmic-ray detection needs at least {_MIN_SIDE_PX} x {_MIN_SIDE_PX}"
        raise ValueError(msg + f" pixels, got {frame.shape[1]} x {frame.shape[0]}")
    sci, err = frame.sci, frame.err if config.use_err else None
    read_noise = 0.0
    if err is None:
        read_noise = float(frame.header.get("RDNOISE", math.nan))
        if not (math.isfinite(read_noise) and read_noise >= 0):
            msg = f"{frame.name}: cosmic-ray detection without ERR needs RDNOISE (electrons)"
            raise ValueError(msg)
    nonfinite = ~np.isfinite(sci)
    if err is not None:
        nonfinite |= ~np.isfinite(err)
    if nonfinite.any():
        sci = _fill(sci, nonfinite)
        if err is not None:
            err = _fill(err, nonfinite)
    else:
        nonfinite = None
    star_mask = _saturated_stars(sci, frame.bpm, config)
    return _Inputs(sci, err, frame.bpm, np.uint8(config.mask_bits), star_mask, nonfinite,
                   read_noise)  # fmt: skip


def _fill(values: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """``values`` with the ``bad`` pixels set to the median of the others (of every 4th row
    and column: it only needs to be a typical value), a new array."""
    good = values[::4, ::4][~bad[::4, ::4]]
    if good.size == 0:
        good = values[~bad]
    fill = np.float32(np.median(good)) if good.size else np.float32(0.0)
    return np.where(bad, fill, values).astype(np.float32, copy=False)


def _saturated_stars(sci: np.ndarray, bpm: np.ndarray, config: CosmicRayConfig):
    """Boolean image of the saturated stars grown by ``saturation_grow_px``; None if none."""
    saturated = (bpm & np.uint8(PixelFlag.SATURATED)) != 0
    rows, cols = np.nonzero(saturated)
    if rows.size == 0:
        return None
    ny, nx = sci.shape

    def around(image: np.ndarray, half: int) -> np.ndarray:
        """``image`` on the (2 half + 1)^2 neighbourhood of each saturated pixel (one row
        each), the frame's edge pixels repeated beyond it."""
        offsets = np.arange(-half, half + 1)
        r = np.clip(rows[:, None, None] + offsets[None, :, None], 0, ny - 1)
        c = np.clip(cols[:, None, None] + offsets[None, None, :], 0, nx - 1)
        return image[r, c].reshape(rows.size, -1)

    median3 = np.median(around(sci, 1), axis=1)
    count5 = around(saturated, 2).sum(axis=1)
    star = (median3 >= config.saturated_star_fraction * sci[rows, cols]) | (
        count5 >= config.saturated_star_min_px
    )
    if not star.any():
        return None
    rows, cols, grow = rows[star], cols[star], config.saturation_grow_px
    mask = np.zeros(sci.shape, dtype=bool)
    mask[rows, cols] = True
    r0, c0 = max(0, rows.min() - grow), max(0, cols.min() - grow)
    _grow(mask[r0 : rows.max() + grow + 1, c0 : cols.max() + grow + 1], grow)  # a view
    return mask


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2 radius + 1)^2 square (nothing beyond the edges), in place;
    returns ``mask``."""
    for axis in (0, 1):
        source = mask.copy()
        for shift in range(1, radius + 1):
            if axis == 0:
                mask[shift:] |= source[:-shift]
                mask[:-shift] |= source[shift:]
            else:
                mask[:, shift:] |= source[:, :-shift]
                mask[:, :-shift] |= source[:, shift:]
    return mask


def _bounds(n: int, tile: int) -> np.ndarray:
    """Edges of near-equal tiles of about ``tile`` pixels covering ``0..n`` (at least one)."""
    count = max(1, round(n / tile)) if tile else 1
    return np.linspace(0, n, count + 1).round().astype(int)


def _padded(box, pad: int, shape: tuple[int, int]):
    r0, r1, c0, c1 = box
    ny, nx = shape
    return max(0, r0 - pad), min(ny, r1 + pad), max(0, c0 - pad), min(nx, c1 + pad)


def _tiles(shape: tuple[int, int], tile: int, pad: int):
    """(computed box, kept box) pairs: near-equal tiles covering the frame, padded by ``pad``.
    A box is ``(row0, row1, col0, col1)``, ends excluded."""
    row_edges, col_edges = _bounds(shape[0], tile), _bounds(shape[1], tile)
    for r0, r1 in zip(row_edges[:-1], row_edges[1:], strict=True):
        for c0, c1 in zip(col_edges[:-1], col_edges[1:], strict=True):
            yield _padded((r0, r1, c0, c1), pad, shape), (r0, r1, c0, c1)


def _windows(rows: np.ndarray, cols: np.ndarray, shape, distance: int, pad: int, cell: int):
    """(computed box, kept box) pairs whose kept boxes cover every pixel within ``distance``
    (Chebyshev) of a seed pixel ``(rows, cols)``: the bounding boxes of the connected groups of
    ``cell``-pixel grid cells within reach, padded by ``pad``."""
    ny, nx = shape
    y0, y1 = np.maximum(rows - distance, 0) // cell, np.minimum(rows + distance, ny - 1) // cell
    x0, x1 = np.maximum(cols - distance, 0) // cell, np.minimum(cols + distance, nx - 1) // cell
    cells = np.zeros((-(-ny // cell), -(-nx // cell)), dtype=bool)
    span = (2 * distance) // cell + 2
    for dy in range(span):
        for dx in range(span):
            ok = (y0 + dy <= y1) & (x0 + dx <= x1)
            cells[y0[ok] + dy, x0[ok] + dx] = True
    todo = set(zip(*(index.tolist() for index in np.nonzero(cells)), strict=True))
    boxes = []
    while todo:  # 8-connected groups of cells, depth first
        stack = [todo.pop()]
        lo_y = hi_y = stack[0][0]
        lo_x = hi_x = stack[0][1]
        while stack:
            cy, cx = stack.pop()
            lo_y, hi_y, lo_x, hi_x = min(lo_y, cy), max(hi_y, cy), min(lo_x, cx), max(hi_x, cx)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if (cy + dy, cx + dx) in todo:
                        todo.remove((cy + dy, cx + dx))
                        stack.append((cy + dy, cx + dx))
        box = (lo_y * cell, min(ny, (hi_y + 1) * cell), lo_x * cell, min(nx, (hi_x + 1) * cell))
        boxes.append((_padded(box, pad, shape), box))
    return boxes


class _Runner:
    """Runs astroscrappy on boxes of the frame (threads when ``workers > 1``)."""

    def __init__(self, inputs: _Inputs, kwargs: dict, workers: int) -> None:
        self.inputs, self.kwargs, self.workers = inputs, kwargs, workers

    def __call__(self, boxes, niter: int, patch: _Patch | None = None):
        """``[(kept box, flags in it)]`` of each (computed box, kept box) pair."""

        def one(job):
            (r0, r1, c0, c1), (k0, k1, j0, j1) = job
            arrays = self.inputs.arrays(slice(r0, r1), slice(c0, c1), patch)
            found, _ = astroscrappy.detect_cosmics(**arrays, niter=niter, **self.kwargs)
            return job[1], found[k0 - r0 : k1 - r0, j0 - c0 : j1 - c0]

        jobs = list(boxes)
        if self.workers > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(min(self.workers, len(jobs))) as pool:
                return list(pool.map(one, jobs))
        return [one(job) for job in jobs]


def cosmic_ray_mask(frame: Frame, config: CosmicRayConfig | None = None) -> np.ndarray:
    """Boolean image of the cosmic-ray pixels of ``frame`` (electrons) that L.A.Cosmic finds;
    see the module docstring. ``frame`` is not modified."""
    config = CosmicRayConfig() if config is None else config
    inputs = _prepare(frame, config)
    reach = lacosmic_reach(config)
    workers = config.workers or min(2, _cpu_count())
    run = _Runner(inputs, lacosmic_kwargs(config, inputs.read_noise_e), workers)
    flags = np.zeros(frame.shape, dtype=bool)
    for (k0, k1, j0, j1), found in run(_tiles(frame.shape, config.tile_px, reach + _SAFETY_PX), 1):
        flags[k0:k1, j0:j1] = found
    if config.niter == 1 or not flags.any():
        return flags
    if config.cleantype == "meanmask":
        _iterate_meanmask(flags, inputs, run, config.niter, reach, config.window_cell_px)
    else:
        # iteration k changes the image only at the pixels flagged by then, and its flags
        # lie within `reach` of a change: all new flags lie within (niter - 1) reach of an
        # iteration-1 flag. Windows run all iterations; their centre is exact (+ 2: cleaning)
        distance = (config.niter - 1) * reach
        pad = (config.niter - 1) * (reach + 2) + reach + _SAFETY_PX
        boxes = _windows(*np.nonzero(flags), frame.shape, distance, pad, config.window_cell_px)
        for (k0, k1, j0, j1), found in run(boxes, config.niter):
            flags[k0:k1, j0:j1] |= found
    return flags


def _cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _iterate_meanmask(flags, inputs: _Inputs, run: _Runner, niter: int, reach: int, cell: int):
    """Iterations 2..niter in place on ``flags`` (the iteration-1 flags): astroscrappy's
    'meanmask' replacement done here (:func:`_clean_meanmask`), then one iteration in windows
    around the pixels that changed: the new flags, and the flagged pixels within 2 of them
    (their 5 x 5 mean changed)."""
    background: list[float] = []  # astroscrappy's fallback values, computed when needed
    seeds, distance = np.nonzero(flags), reach
    for _ in range(1, niter):
        patch = _clean_meanmask(flags, inputs, background)
        boxes = _windows(*seeds, flags.shape, distance, reach + _SAFETY_PX, cell)
        new_rows, new_cols = [np.zeros(0, dtype=np.intp)], [np.zeros(0, dtype=np.intp)]
        for (k0, k1, j0, j1), found in run(boxes, 1, patch):
            r, c = np.nonzero(found & ~flags[k0:k1, j0:j1])
            flags[r + k0, c + j0] = True
            new_rows.append(r + k0)
            new_cols.append(c + j0)
        seeds, distance = (np.concatenate(new_rows), np.concatenate(new_cols)), reach + 2
        if seeds[0].size == 0:
            break


def _clean_meanmask(flags: np.ndarray, inputs: _Inputs, background: list) -> _Patch:
    """astroscrappy's ``clean_meanmask`` of the data and the variance at the flagged pixels:
    the float32 mean of the 5 x 5 pixels neither flagged nor in astroscrappy's mask (``inmask``
    grown by 1), in its order of summation; the median of the unmasked image where there is
    none; the 2-pixel border of the frame left alone (not in the patch)."""
    ny, nx = flags.shape
    rows, cols = np.nonzero(flags[2 : ny - 2, 2 : nx - 2])
    rows += 2
    cols += 2
    totals = [np.zeros(rows.size, dtype=np.float32) for _ in range(2)]
    count = np.zeros(rows.size, dtype=np.int32)
    for dr in range(-2, 3):
        for dc in range(-2, 3):
            r, c = rows + dr, cols + dc
            good = ~flags[r, c] & ~_grown_mask_at(inputs, r, c)
            count += good
            for total, values in zip(totals, (inputs.sci[r, c], inputs.variance(r, c)),
                                     strict=True):  # fmt: skip
                total += np.where(good, values, np.float32(0.0))
    means = [(total.astype(np.float64) / np.maximum(count, 1)).astype(np.float32)
             for total in totals]  # fmt: skip
    empty = count == 0
    if empty.any():
        if not background:
            unmasked = ~_grow(inputs.mask(slice(None), slice(None)), 1)
            background.append(_lower_median(inputs.sci[unmasked]))
            background.append(_lower_median(inputs.variance(*np.nonzero(unmasked))))
        for mean, level in zip(means, background, strict=True):
            mean[empty] = level
    return _Patch(flags, rows * nx + cols, means[0], means[1])


def _grown_mask_at(inputs: _Inputs, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """astroscrappy's mask (``inmask`` grown by a 3 x 3 square) at the given pixels."""
    ny, nx = inputs.sci.shape
    out = np.zeros(rows.shape, dtype=bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < ny) & (c >= 0) & (c < nx)
            out[inside] |= inputs.mask(r[inside], c[inside])
    return out


def _lower_median(values: np.ndarray) -> float:
    """The median as astroscrappy's quickselect returns it: element ``(n - 1) // 2``."""
    if values.size == 0:
        return 0.0
    k = (values.size - 1) // 2
    return float(np.partition(values, k)[k])


def detect_cosmic_rays(frame: Frame, config: CosmicRayConfig | None = None) -> Frame:
    """A new frame with :attr:`PixelFlag.COSMIC_RAY` on the cosmic-ray pixels of ``frame``
    (electrons) and the QC cards ``L1NCRPIX``, ``L1CRFRAC``, ``L1CRSTAT`` in its header; SCI
    and ERR are shared, not modified. See the module docstring."""
    config = CosmicRayConfig() if config is None else config
    found = cosmic_ray_mask(frame, config)
    n_flagged = int(np.count_nonzero(found))
    fraction = n_flagged / found.size
    bpm = frame.bpm.copy()
    bpm[found] |= np.uint8(PixelFlag.COSMIC_RAY)
    status = "HIGH" if fraction > config.max_flagged_fraction else "OK"
    if status != "OK":
        log.warning(
            "%s: %d pixels (%.3g%%) flagged as cosmic rays, more than %.3g%%: stars or noise?",
            frame.name,
            n_flagged,
            100 * fraction,
            100 * config.max_flagged_fraction,
            extra={"frame": frame.name},
        )
    header = frame.header.copy()
    header["L1NCRPIX"] = (n_flagged, "pixels flagged as cosmic rays (BPM bit 8)")
    header["L1CRFRAC"] = (float(f"{fraction:.4g}"), "fraction of the pixels flagged as cosmic rays")
    header["L1CRSTAT"] = (status, "cosmic-ray QC: OK or HIGH (too many flagged)")
    return replace(frame, bpm=bpm, header=header)
