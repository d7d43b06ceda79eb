"""PNG pictures for the quality-control page (matplotlib's Agg renderer; no display needed).

Texts from headers and the registry (file names, OBJECT, reasons) are drawn as plain text,
never as matplotlib mathtext (a ``$`` in an OBJECT name must not break the picture).

Images are shown with FITS pixel coordinates (1-indexed, ``origin='lower'``: row 1 at the
bottom) so that catalogue ``X, Y`` plot where they are. Large images are shrunk by averaging
``f x f`` blocks of good pixels (flagged pixels left out; a block without one is blank) to at most
:data:`MAX_DISPLAY_PIXELS` on a side.

The robust stretch: limits from the median and rstd (1.4826 x MAD) of the shown image, linear
over ``median -/+ 5 rstd`` for masters and comparisons (both signs of structure matter);
an ``asinh`` stretch from ``median - 2 rstd`` up to the 99.7th percentile for science frames
(faint sky noise and bright stars both visible).
"""

from __future__ import annotations

import datetime as dt
import math
import textwrap
import warnings
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import EllipseCollection
from matplotlib.colors import Normalize
from matplotlib.dates import DateFormatter
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from pylcogt.qc.metrics import Comparison, ImageStats, Residuals
from pylcogt.stats import RSTD_PER_MAD

__all__ = [
    "MAX_DISPLAY_PIXELS",
    "DPI",
    "block_mean",
    "robust_limits",
    "asinh_stretch",
    "master_preview",
    "comparison_preview",
    "frame_thumbnail",
    "night_trends",
    "TREND_PANELS",
]

#: Longest side of a shown image, in screen pixels (before the figure's own margins).
MAX_DISPLAY_PIXELS = 640
#: Dots per inch of the PNG files (figure sizes are in inches).
DPI = 80
_BIN_NOTE = "shown {f}x{f}-binned"


def block_mean(image: np.ndarray, good: np.ndarray | None, factor: int) -> np.ndarray:
    """Mean of each ``factor x factor`` block over its good pixels (NaN when none); the last
    row/column of blocks may be partial, so the result is ``ceil(shape / factor)`` and covers
    ``ceil(shape / factor) * factor`` pixels. ``factor`` 1 returns a float32 copy with NaN where
    not good. float32 sums (at most ``factor**2`` values: plenty for a picture)."""
    data = np.asarray(image, dtype=np.float32)
    valid = np.isfinite(data) if good is None else (good & np.isfinite(data))
    if factor <= 1:
        return np.where(valid, data, np.float32(np.nan))
    ny, nx = data.shape
    by, bx = -(-ny // factor), -(-nx // factor)
    values = np.where(valid, data, np.float32(0))
    weights = valid.astype(np.float32)
    if (by * factor, bx * factor) != (ny, nx):  # pad the partial blocks with empty pixels
        pad = ((0, by * factor - ny), (0, bx * factor - nx))
        values, weights = np.pad(values, pad), np.pad(weights, pad)
    total = values.reshape(by, factor, bx, factor).sum(axis=(1, 3), dtype=np.float32)
    count = weights.reshape(by, factor, bx, factor).sum(axis=(1, 3), dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.float32(np.nan)).astype(np.float32)


def _factor(shape: tuple[int, ...]) -> int:
    return max(1, math.ceil(max(shape) / MAX_DISPLAY_PIXELS))


def robust_limits(image: np.ndarray, k: float = 5.0) -> tuple[float, float]:
    """``(median - k rstd, median + k rstd)`` of the finite values; (0, 1) when there are
    none. Without spread (rstd 0) the standard deviation stands in for rstd, and for a constant
    image ``max(|median| / 1000, 1e-6)``, so that the limits always differ."""
    values = image[np.isfinite(image)]
    if values.size == 0:
        return 0.0, 1.0
    median = float(np.median(values))
    rstd = float(RSTD_PER_MAD * np.median(np.abs(values - median)))
    if not rstd > 0:
        spread = float(np.std(values))
        rstd = spread if spread > 0 else max(abs(median) * 1e-3, 1e-6)
    return median - k * rstd, median + k * rstd


def asinh_stretch(image: np.ndarray) -> np.ndarray:
    """Values in 0..1: ``asinh`` of ``(x - lo) / s`` scaled so ``hi`` maps to 1, with
    ``lo = median - 2 rstd``, ``s = 3 rstd`` and ``hi`` the 99.7th percentile, but at least
    ``median + 10 rstd`` (pure sky noise is not stretched to white); NaN stays NaN."""
    values = image[np.isfinite(image)]
    if values.size == 0:
        return np.full(image.shape, np.nan, dtype=np.float32)
    median = float(np.median(values))
    rstd = float(RSTD_PER_MAD * np.median(np.abs(values - median))) or 1.0
    lo = median - 2.0 * rstd
    hi = max(float(np.percentile(values, 99.7)), median + 10.0 * rstd)
    soft = 3.0 * rstd
    scaled = np.arcsinh((image - lo) / soft) / np.arcsinh((hi - lo) / soft)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as PNG through a temporary file and a rename (a reader never sees half a
    file; running again replaces it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": "pylcogt qc"})
    tmp.replace(path)


def _show_image(ax, shown: np.ndarray, factor: int, shape, norm, cmap="gray"):
    ny, nx = shape
    # each shown pixel is a block of factor x factor image pixels, the last ones partly beyond
    # the image: the extent is that of the blocks, the axes that of the image
    image = ax.imshow(shown, origin="lower", cmap=cmap, norm=norm, interpolation="nearest",
                      extent=(0.5, shown.shape[1] * factor + 0.5, 0.5,
                              shown.shape[0] * factor + 0.5))  # fmt: skip
    ax.set_xlim(0.5, nx + 0.5)
    ax.set_ylim(0.5, ny + 0.5)
    ax.set_xlabel("X (pixels, 1-indexed)")
    ax.set_ylabel("Y")
    if factor > 1:
        ax.text(0.01, 0.01, _BIN_NOTE.format(f=factor), transform=ax.transAxes, fontsize=7,
                color="yellow", va="bottom")  # fmt: skip
    return image


def _histogram(ax, values: np.ndarray, centre: float, spread: float, unit: str, k: float = 5.0):
    values = values[np.isfinite(values)]
    if values.size == 0:
        ax.text(0.5, 0.5, "no good pixels", ha="center", transform=ax.transAxes)
        return
    lo, hi = centre - 2 * k * spread, centre + 2 * k * spread
    if not hi > lo:
        lo, hi = float(values.min()) - 0.5, float(values.max()) + 0.5
    ax.hist(np.clip(values, lo, hi), bins=200, range=(lo, hi), color="0.3", log=True)
    for offset, style in ((0.0, "-"), (-k, ":"), (k, ":")):
        ax.axvline(centre + offset * spread, color="tab:red", ls=style, lw=0.8)
    ax.set_xlabel(f"value ({unit})" if unit else "value")
    ax.set_ylabel("pixels")
    ax.set_title(f"histogram: median and +-{k:g} rstd (values beyond clipped to the ends)",
                 fontsize=8)  # fmt: skip


def master_preview(
    path: Path,
    sci: np.ndarray,
    good: np.ndarray,
    stats: ImageStats,
    row_profile: np.ndarray,
    column_profile: np.ndarray,
    title: str,
) -> None:
    """Image with a robust stretch, histogram of the good pixels, median row and column
    profiles; ``stats`` gives the centre and spread of the histogram and profile axes."""
    factor = _factor(sci.shape)
    shown = block_mean(sci, good, factor)
    fig = Figure(figsize=(12, 8.5))
    grid = fig.add_gridspec(2, 2, width_ratios=(1.1, 1), hspace=0.3, wspace=0.38)
    ax = fig.add_subplot(grid[0, 0])
    lo, hi = robust_limits(shown)
    image = _show_image(ax, shown, factor, sci.shape, Normalize(lo, hi))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label=stats.unit or "")
    ax.set_title("image, median -/+ 5 rstd of the shown pixels", fontsize=8)
    _histogram(fig.add_subplot(grid[0, 1]), sci[good], stats.median, stats.rstd, stats.unit)
    for where, profile, axis in ((grid[1, 0], row_profile, "Y (row)"),
                                 (grid[1, 1], column_profile, "X (column)")):  # fmt: skip
        ax = fig.add_subplot(where)
        ax.plot(np.arange(1, profile.size + 1), profile, lw=0.7, color="k")
        ax.set_xlabel(f"{axis}, 1-indexed")
        ax.set_ylabel(f"median ({stats.unit})" if stats.unit else "median")
        finite = profile[np.isfinite(profile)]
        if finite.size:
            span = max(5 * stats.rstd, float(np.ptp(finite)) * 0.55) if stats.rstd > 0 else 1.0
            centre = float(np.median(finite))
            ax.set_ylim(centre - span, centre + span)
        ax.set_title(f"median along each {'row' if axis.startswith('Y') else 'column'}",
                     fontsize=8)  # fmt: skip
    fig.suptitle(title, fontsize=11, parse_math=False)  # names, not TeX
    _save(fig, path)


def comparison_preview(path: Path, comparison: Comparison, title: str) -> None:
    """The difference (or ratio) image with the previous master, and the histogram of the
    normalised difference against a unit Gaussian (or of the difference, without ERR)."""
    image = comparison.image
    factor = _factor(image.shape)
    shown = block_mean(image, np.isfinite(image), factor)
    fig = Figure(figsize=(12, 4.8))
    grid = fig.add_gridspec(1, 2, width_ratios=(1.1, 1), wspace=0.38)
    ax = fig.add_subplot(grid[0, 0])
    lo, hi = robust_limits(shown)
    shown_img = _show_image(ax, shown, factor, image.shape, Normalize(lo, hi), cmap="RdBu_r")
    what = "this / previous" if comparison.mode == "ratio" else "this - previous"
    fig.colorbar(shown_img, ax=ax, fraction=0.046, pad=0.02, label=comparison.unit or "ratio")
    ax.set_title(f"{what}, median -/+ 5 rstd of the shown pixels", fontsize=8)
    ax = fig.add_subplot(grid[0, 1])
    if comparison.z is not None and np.isfinite(comparison.z).any():
        z = comparison.z[np.isfinite(comparison.z)]
        edges = np.linspace(-8, 8, 161)
        ax.hist(np.clip(z, -8, 8), bins=edges, color="0.3", log=True, label="pixels")
        centres = 0.5 * (edges[1:] + edges[:-1])
        width = edges[1] - edges[0]
        expected = z.size * width * np.exp(-0.5 * centres**2) / math.sqrt(2 * math.pi)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.plot(centres, np.where(expected > 0.1, expected, np.nan), color="tab:red", lw=1,
                    label="expected from ERR (unit Gaussian)")  # fmt: skip
        ax.set_xlabel("difference / expected noise (sigma)")
        ax.set_ylim(bottom=0.5)
        ax.legend(fontsize=7, loc="upper right")
        ax.set_title(f"rstd of the normalised difference: {comparison.z_rstd:.3f} (1 = agree)",
                     fontsize=8)  # fmt: skip
    else:
        _histogram(ax, comparison.image.ravel(), comparison.median, comparison.rstd,
                   comparison.unit)  # fmt: skip
    fig.suptitle(title, fontsize=11, parse_math=False)  # names, not TeX
    _save(fig, path)


def frame_thumbnail(
    path: Path,
    sci: np.ndarray,
    good: np.ndarray,
    sources: dict[str, np.ndarray] | None,
    residuals: Residuals | None,
    title: str,
    no_wcs_reason: str = "",
) -> None:
    """A reduced frame: the image (asinh stretch) with its detected sources (ellipses of
    3 x A by 3 x B at THETA; green clean, orange flagged) and the astrometric residual vectors
    (exaggerated, scale bar given), and the residuals on the sky with their rms circle.

    ``sources``: arrays ``X, Y`` (1-indexed), ``A, B`` (pixels), ``THETA`` (deg), ``FLAG``.
    """
    ny, nx = sci.shape
    factor = _factor(sci.shape)
    shown = asinh_stretch(block_mean(sci, good, factor))
    fig = Figure(figsize=(12, 5.6))
    grid = fig.add_gridspec(1, 2, width_ratios=(1.2, 1), wspace=0.25)
    ax = fig.add_subplot(grid[0, 0])
    _show_image(ax, shown, factor, sci.shape, Normalize(0.0, 1.0))
    n_sources = 0
    if sources is not None and len(sources["X"]):
        n_sources = len(sources["X"])
        flagged = np.asarray(sources["FLAG"]) != 0
        colours = np.where(flagged, "tab:orange", "lime")
        a, b = (6.0 * np.asarray(sources[k], dtype=float) for k in ("A", "B"))
        ax.add_collection(EllipseCollection(
            a, b, np.asarray(sources["THETA"], dtype=float), units="xy",
            offsets=np.column_stack([sources["X"], sources["Y"]]),
            offset_transform=ax.transData, facecolors="none", edgecolors=colours, linewidths=0.6,
        ))  # fmt: skip
    ax.set_xlim(0.5, nx + 0.5)
    ax.set_ylim(0.5, ny + 0.5)
    ax.set_title(f"{n_sources} sources (green clean, orange flagged)", fontsize=8)
    right = fig.add_subplot(grid[0, 1])
    if residuals is not None and residuals.n:
        size = np.hypot(residuals.dx, residuals.dy)
        biggest = float(np.percentile(size, 95)) or 1.0
        scale = 0.08 * max(nx, ny) / biggest  # the 95th percentile arrow: 8% of the frame
        # arcsec along +RA, +Dec drawn as pixel offsets: direction on the sky, not on the image
        ax.quiver(residuals.x, residuals.y, residuals.dx * scale, residuals.dy * scale,
                  angles="xy", scale_units="xy", scale=1.0, color="cyan", width=0.003)  # fmt: skip
        ax.text(0.99, 0.99, f"residual arrows: {0.08 * max(nx, ny):.0f} px = {biggest:.2f}\"",
                transform=ax.transAxes, ha="right", va="top", fontsize=7,
                color="cyan")  # fmt: skip
        right.scatter(residuals.dx, residuals.dy, s=8, color="k")
        rms = residuals.rms
        right.add_patch(Circle((0, 0), rms, fill=False, color="tab:red", lw=1))
        lim = max(float(np.max(np.abs(np.concatenate([residuals.dx, residuals.dy])))), rms) * 1.15
        lim = lim if lim > 0 else 1.0  # all residuals exactly 0: still a readable plot
        right.set_xlim(-lim, lim)
        right.set_ylim(-lim, lim)
        right.set_aspect("equal")
        right.axhline(0, color="0.7", lw=0.5)
        right.axvline(0, color="0.7", lw=0.5)
        right.set_xlabel("WCS - reference, RA cos(Dec) (arcsec)")
        right.set_ylabel("WCS - reference, Dec (arcsec)")
        right.set_title(f"astrometric residuals of {residuals.n} stars, rms {rms:.3f}\" (circle)",
                        fontsize=8)  # fmt: skip
    else:
        right.axis("off")
        text = "no astrometric solution" + (f":\n{no_wcs_reason}" if no_wcs_reason else "")
        right.text(0.5, 0.5, _wrap(text, 60), ha="center", va="center", fontsize=9,
                   parse_math=False, transform=right.transAxes)  # fmt: skip
    fig.suptitle(title, fontsize=11, parse_math=False)  # names, not TeX
    _save(fig, path)


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.fill(part, width) for part in text.split("\n"))


#: The quantities of :func:`night_trends`: report key, axis label.
TREND_PANELS = (
    ("fwhm_arcsec", "FWHM (arcsec)"),
    ("background", "sky (e-/pixel)"),
    ("zeropoint", "zero point L1ZP (mag)"),
    ("wcs_rms_arcsec", "WCS rms (arcsec)"),
)


def night_trends(path: Path, frames: list[dict], title: str) -> int:
    """The night at a glance: FWHM, sky, zero point and WCS rms of the reduced frames against
    their DATE-OBS (UTC), one marker colour per camera and filter. ``frames``: records with
    ``dateobs`` (ISO text or datetime), ``camera``, ``filter`` and the keys of
    :data:`TREND_PANELS` (None when unknown). Returns the number of frames drawn."""
    def when(value):
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else value

    rows = [f for f in frames if f.get("dateobs")]
    fig = Figure(figsize=(12, 7.5))
    axes = fig.subplots(len(TREND_PANELS), 1, sharex=True)
    groups = sorted({(f["camera"], f["filter"]) for f in rows})
    for (camera, filter_name), marker in zip(groups, "osD^v<>ph*" * 10, strict=False):
        members = [f for f in rows if (f["camera"], f["filter"]) == (camera, filter_name)]
        for ax, (key, _label) in zip(axes, TREND_PANELS, strict=True):
            points = [(when(f["dateobs"]), f[key]) for f in members
                      if isinstance(f.get(key), (int, float)) and math.isfinite(f[key])]
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, marker, ms=4, ls="none", label=f"{camera} {filter_name}".strip())
    for ax, (_key, label) in zip(axes, TREND_PANELS, strict=True):
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "none measured", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8, color="0.5")  # fmt: skip
    handles = [line for ax in axes for line in ax.lines]
    if handles:
        seen, unique = set(), []
        for line in handles:
            if line.get_label() not in seen:
                seen.add(line.get_label())
                unique.append(line)
        axes[0].legend(unique, [u.get_label() for u in unique], fontsize=7, loc="upper right")
    axes[-1].set_xlabel("DATE-OBS (UTC)")
    axes[-1].xaxis.set_major_formatter(DateFormatter("%H:%M"))
    fig.suptitle(title, fontsize=11, parse_math=False)
    _save(fig, path)
    return len(rows)
