"""Quality-control pictures (``pylcogt qc``): pylcogt's per-master and per-frame work against the
obvious astropy + matplotlib script, on Sinistro-sized frames.

Seeded synthetic data, made in each method's process before the clock starts (not timed):

- a master bias (``--size`` square float32, e-): level 1000, read noise 1.7, a gradient along
  the rows, a decaying ramp in the first rows, a few hot columns (+30), a flagged bad column and
  a few hundred flagged pixels; ERR and BPM planes;
- the previous master: the same structure with its own noise and a level 0.2 e- higher;
- a science frame: sky 700 e- with its Poisson + read noise, ``--stars`` elliptical Gaussian
  stars (FWHM ~3 px, fluxes ``N(>f) ~ f^-0.75`` from 2e3 to 3e6 e-; the brightest saturate and
  are flagged), ERR and BPM planes; its catalogue (X, Y 1-indexed, A, B, THETA, FLAG) and, for
  ``--residuals`` of its stars, REF_RA/REF_DEC 0.15" off the positions through a TAN WCS.

Methods, each in its own process (so that its peak RSS is its own), run round-robin
``--repeat`` times (so that a change in the load of a shared machine hits every method):

- ``pylcogt``: what :mod:`pylcogt.qc.night` does per master and per reduced frame, minus the
  FITS reading: ``metrics.image_stats``; ``metrics.good_pixels`` + ``metrics.profiles``;
  ``render.master_preview``; ``metrics.compare_masters``; ``render.comparison_preview``;
  ``metrics.astrometric_residuals`` + the sources dict + ``good_pixels``;
  ``render.frame_thumbnail``. Images are block-mean shrunk to <= 640 px before drawing.
- ``peer``: the obvious script: ``astropy.stats.sigma_clipped_stats(sci, mask=bpm != 0,
  sigma=3.5)``; ``np.nanmedian`` along each axis with NaN under the mask; pyplot figures of the
  same sizes and DPI (``render.DPI``) with the same panels: the FULL-resolution image through
  ``ImageNormalize(interval=ZScaleInterval())`` (plus ``AsinhStretch`` for the science frame),
  ``ax.hist`` of all good pixels, the profiles; the difference with the previous master, its
  ``sigma_clipped_stats``, its image and the histogram of difference / expected noise; the
  residuals through ``WCS.all_pix2world`` and ``SkyCoord.spherical_offsets_to``; the science
  image with one ``matplotlib.patches.Ellipse`` per source (``ax.add_patch``) and ``ax.quiver``
  for the residuals, and the residuals on the sky.

Both draw with the Agg backend (no display) after one small warm-up figure (font cache, first
PNG: paid once per ``pylcogt qc`` run, not per picture). Printed per step, and for the totals
per master, per frame and both: best wall time over the runs, the CPU time of that run (user +
sys), peak RSS during the step (VmHWM, reset before each step through ``/proc/self/clear_refs``;
it includes the ~430 MiB of data held by the process) and how far it rose above the RSS at the
step's start, and the peer's wall and CPU time over pylcogt's. Then the PNG files (size and
pixels) and the numbers of both (pylcogt's median / rstd / clipped mean against the peer's
sigma-clipped median / std / mean; the residual rms). The medians must agree within 0.1 rstd.

    python benchmarks/bench_qc.py [--repeat 3] [--size 4096] [--stars 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("pylcogt", "peer")
MASTER_STEPS = ("stats", "profiles", "preview png", "compare", "compare png")
FRAME_STEPS = ("residuals", "thumbnail png")
TOTALS = {"master total": MASTER_STEPS, "frame total": FRAME_STEPS,
          "total": MASTER_STEPS + FRAME_STEPS}  # fmt: skip
#: pylcogt.qc.render's figure sizes (inches): master preview, comparison, frame thumbnail.
FIGSIZE = {"preview": (12, 8.5), "comparison": (12, 4.8), "thumbnail": (12, 5.6)}
PIXEL_SCALE = 0.389  # arcsec per pixel (Sinistro)
MIB = 2**20


# --- the data (made in each worker from the seed, before the clock) -----------------------
def make_data(size: int, n_stars: int, n_residuals: int, seed: int) -> dict:
    from astropy.table import Table
    from astropy.wcs import WCS

    rng = np.random.default_rng(seed)
    shape = (size, size)
    rows = np.arange(size, dtype=np.float32)[:, None]
    columns = np.arange(size, dtype=np.float32)[None, :]
    structure = (np.float32(1000.0) + np.float32(1.5 / size) * columns
                 + np.float32(5.0) * np.exp(-rows / np.float32(40.0)))  # fmt: skip
    hot_columns = rng.choice(size, 5, replace=False)
    bad_column = size // 3
    flagged = rng.integers(0, size, (2, 300))

    def master(level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sci = rng.standard_normal(shape, dtype=np.float32)
        sci *= np.float32(1.7)
        sci += structure + np.float32(level)
        sci[:, hot_columns] += np.float32(30.0)
        err = np.float32(1.7) + np.float32(0.02) * rng.random(shape, dtype=np.float32)
        bpm = np.zeros(shape, np.uint8)
        bpm[:, bad_column] = 1
        bpm[flagged[0], flagged[1]] = 1
        return sci, err, bpm

    current = master(0.0)
    previous = master(0.2)

    # the science frame: sky + stars, then noise
    sky, read_noise, saturation = 700.0, 7.5, 1.2e5
    sci = np.full(shape, sky, np.float32)
    x = rng.uniform(12, size - 12, n_stars)  # 0-indexed centres
    y = rng.uniform(12, size - 12, n_stars)
    flux = 2e3 * (1.0 - rng.random(n_stars) * (1.0 - (3e6 / 2e3) ** -0.75)) ** (-1 / 0.75)
    a = rng.uniform(1.15, 1.45, n_stars)  # sigma along the major axis, px (FWHM ~3)
    b = a * rng.uniform(0.8, 1.0, n_stars)
    theta = rng.uniform(-90.0, 90.0, n_stars)
    half = 8
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    for i in range(n_stars):
        x0, y0 = int(round(x[i])), int(round(y[i]))
        dx = (offsets + x0 - x[i])[None, :]
        dy = (offsets + y0 - y[i])[:, None]
        c, s = math.cos(math.radians(theta[i])), math.sin(math.radians(theta[i]))
        u, v = dx * c + dy * s, -dx * s + dy * c
        stamp = np.exp(-0.5 * ((u / a[i]) ** 2 + (v / b[i]) ** 2))
        stamp *= flux[i] / (2 * math.pi * a[i] * b[i])
        sci[y0 - half : y0 + half + 1, x0 - half : x0 + half + 1] += stamp.astype(np.float32)
    err = np.sqrt(sci + np.float32(read_noise**2))
    sci += rng.standard_normal(shape, dtype=np.float32) * err
    bpm = np.zeros(shape, np.uint8)
    saturated = sci >= saturation
    np.minimum(sci, np.float32(saturation), out=sci)
    bpm[saturated] = 2
    bpm[:, bad_column] |= 1
    bpm[flagged[1], flagged[0]] |= 1
    star_flag = np.where(saturated[np.round(y).astype(int), np.round(x).astype(int)], 4, 0)
    star_flag[rng.random(n_stars) < 0.05] |= 1  # e.g. blended

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    wcs.wcs.cdelt = [-PIXEL_SCALE / 3600.0, PIXEL_SCALE / 3600.0]
    wcs.wcs.crval = [150.0, 30.0]
    header = wcs.to_header()
    header["ASTSTAT"] = "solved"
    ra, dec = wcs.all_pix2world(x + 1, y + 1, 1)
    matched = rng.choice(n_stars, min(n_residuals, n_stars), replace=False)
    ref_ra = np.full(n_stars, np.nan)
    ref_dec = np.full(n_stars, np.nan)
    off_x, off_y = rng.normal(0.0, 0.15, (2, matched.size)) / 3600.0  # deg, on the sky
    ref_ra[matched] = ra[matched] - off_x / np.cos(np.radians(dec[matched]))
    ref_dec[matched] = dec[matched] - off_y
    catalog = Table({"X": x + 1, "Y": y + 1, "A": a, "B": b, "THETA": theta,
                     "FLAG": star_flag.astype(np.int16), "REF_RA": ref_ra,
                     "REF_DEC": ref_dec})  # fmt: skip
    return {"master": current, "previous": previous, "science": (sci, err, bpm),
            "header": header, "catalog": catalog}  # fmt: skip


# --- measuring ----------------------------------------------------------------------------
def peak_rss() -> int:
    """Peak RSS of this process, bytes: VmHWM (Linux; reset by exec and by :func:`reset_peak`),
    else ``ru_maxrss``."""
    return _status("VmHWM:") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    return _status("VmRSS:")


def _status(key: str) -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class Clock:
    """Wall, CPU and peak RSS of each named step."""

    def __init__(self) -> None:
        self.steps: dict[str, dict] = {}

    def __call__(self, name: str, func, *args, **kwargs):
        per_step = reset_peak()
        start_rss = current_rss()
        u0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        result = func(*args, **kwargs)
        wall, u1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        cpu = u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime
        self.steps[name] = {"wall": wall, "cpu": cpu, "peak_rss": peak_rss(),
                            "start_rss": start_rss,
                            "rise": peak_rss() - start_rss if per_step else None}  # fmt: skip
        return result


def warm_up(figure) -> None:
    """One small figure with text, an image and a histogram, saved as PNG (fonts, Agg)."""
    import io

    fig = figure()
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(np.arange(64.0).reshape(8, 8), origin="lower")
    ax.set_title("warm-up")
    fig.add_subplot(1, 2, 2).hist(np.arange(100.0), bins=10, log=True)
    fig.suptitle("warm-up")
    fig.savefig(io.BytesIO(), format="png", dpi=40)


# --- pylcogt ------------------------------------------------------------------------------
def work_pylcogt(data: dict, out: Path, clock: Clock) -> dict:
    from astropy.io import fits
    from matplotlib.figure import Figure

    from pylcogt.frame import Frame
    from pylcogt.qc import metrics, render

    def frame(planes) -> Frame:
        return Frame(*planes, header=fits.Header(), unit="electron", name="bench")

    current, previous = frame(data["master"]), frame(data["previous"])
    science = Frame(*data["science"], header=data["header"], unit="electron", name="bench")
    catalog = data["catalog"]
    warm_up(Figure)

    stats = clock("stats", metrics.image_stats, current)

    def profiles():
        good = metrics.good_pixels(current)
        return good, *metrics.profiles(current.sci, good)

    good, rows, columns = clock("profiles", profiles)
    clock(
        "preview png",
        render.master_preview,
        out / "master.png",
        current.sci,
        good,
        stats,
        rows,
        columns,
        title="master 2: fa03 BIAS 1x1 full, night 20240101, 21 inputs",
    )
    comparison = clock("compare", metrics.compare_masters, current, previous, "BIAS")
    clock(
        "compare png",
        render.comparison_preview,
        out / "comparison.png",
        comparison,
        title="master 2 (20240101) vs previous 1 (20231231): fa03 BIAS 1x1 full",
    )

    def frame_numbers():
        residuals = metrics.astrometric_residuals(catalog, science.header)
        sources = {k: np.asarray(catalog[k]) for k in ("X", "Y", "A", "B", "THETA", "FLAG")}
        return residuals, sources, metrics.good_pixels(science)

    residuals, sources, good = clock("residuals", frame_numbers)
    clock(
        "thumbnail png",
        render.frame_thumbnail,
        out / "thumbnail.png",
        science.sci,
        good,
        sources,
        residuals,
        "bench.fits: field, rp, 300.0 s",
    )
    return {"median": stats.median, "rstd": stats.rstd, "clipped_mean": stats.clipped_mean,
            "diff_median": comparison.median, "diff_rstd": comparison.rstd,
            "residual_rms": residuals.rms, "residual_n": residuals.n}  # fmt: skip


# --- the peer: astropy + matplotlib, the obvious way --------------------------------------
def work_peer(data: dict, out: Path, clock: Clock, dpi: int) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import astropy.units as u
    import matplotlib.pyplot as plt
    from astropy.coordinates import SkyCoord
    from astropy.stats import sigma_clipped_stats
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval
    from astropy.wcs import WCS
    from matplotlib.patches import Circle, Ellipse

    sci, err, bpm = data["master"]
    prev_sci, prev_err, prev_bpm = data["previous"]
    frame_sci, _, _ = data["science"]
    catalog, header = data["catalog"], data["header"]
    warm_up(plt.figure)
    plt.close("all")

    mean, median, std = clock("stats", sigma_clipped_stats, sci, mask=bpm != 0, sigma=3.5)

    def profiles():
        masked = sci.copy()
        masked[bpm != 0] = np.nan
        return np.nanmedian(masked, axis=1), np.nanmedian(masked, axis=0)

    rows, columns = clock("profiles", profiles)

    def preview():
        fig, axes = plt.subplots(2, 2, figsize=FIGSIZE["preview"],
                                 gridspec_kw={"width_ratios": (1.1, 1)})  # fmt: skip
        norm = ImageNormalize(sci, interval=ZScaleInterval())
        image = axes[0, 0].imshow(sci, origin="lower", cmap="gray", norm=norm)
        fig.colorbar(image, ax=axes[0, 0], label="electron")
        axes[0, 0].set_title("image, zscale")
        axes[0, 1].hist(sci[bpm == 0], bins=200, range=(median - 10 * std, median + 10 * std),
                        log=True, color="0.3")  # fmt: skip
        axes[0, 1].set_xlabel("value (electron)")
        for ax, profile, what in ((axes[1, 0], rows, "row"), (axes[1, 1], columns, "column")):
            ax.plot(profile, lw=0.7, color="k")
            ax.set_xlabel(what)
            ax.set_title(f"median along each {what}")
        fig.suptitle("master 2: fa03 BIAS 1x1 full, night 20240101, 21 inputs")
        fig.savefig(out / "master.png", dpi=dpi)
        plt.close(fig)

    clock("preview png", preview)

    def compare():
        bad = (bpm != 0) | (prev_bpm != 0)
        diff = sci - prev_sci
        diff[bad] = np.nan
        stats = sigma_clipped_stats(diff, mask=bad, sigma=3.5)
        z = diff / np.hypot(err, prev_err)
        return diff, stats, z[~bad]

    diff, diff_stats, z = clock("compare", compare)

    def comparison_png():
        fig, (left, right) = plt.subplots(1, 2, figsize=FIGSIZE["comparison"],
                                          gridspec_kw={"width_ratios": (1.1, 1)})  # fmt: skip
        norm = ImageNormalize(diff, interval=ZScaleInterval())
        image = left.imshow(diff, origin="lower", cmap="RdBu_r", norm=norm)
        fig.colorbar(image, ax=left, label="electron")
        left.set_title("this - previous, zscale")
        edges = np.linspace(-8, 8, 161)
        right.hist(np.clip(z, -8, 8), bins=edges, log=True, color="0.3")
        centres = 0.5 * (edges[1:] + edges[:-1])
        right.plot(centres, z.size * (edges[1] - edges[0]) * np.exp(-0.5 * centres**2)
                   / math.sqrt(2 * math.pi), color="tab:red")  # fmt: skip
        right.set_ylim(bottom=0.5)
        right.set_xlabel("difference / expected noise")
        fig.suptitle("master 2 (20240101) vs previous 1 (20231231): fa03 BIAS 1x1 full")
        fig.savefig(out / "comparison.png", dpi=dpi)
        plt.close(fig)

    clock("compare png", comparison_png)

    def residuals():
        matched = np.isfinite(catalog["REF_RA"])
        x, y = np.asarray(catalog["X"])[matched], np.asarray(catalog["Y"])[matched]
        ra, dec = WCS(header).all_pix2world(x, y, 1)
        ref = SkyCoord(catalog["REF_RA"][matched], catalog["REF_DEC"][matched], unit="deg")
        dra, ddec = ref.spherical_offsets_to(SkyCoord(ra, dec, unit="deg"))
        return x, y, dra.to_value(u.arcsec), ddec.to_value(u.arcsec)

    x, y, dx, dy = clock("residuals", residuals)
    rms = float(np.sqrt(np.mean(dx**2 + dy**2)))

    def thumbnail():
        fig, (ax, right) = plt.subplots(1, 2, figsize=FIGSIZE["thumbnail"],
                                        gridspec_kw={"width_ratios": (1.2, 1)})  # fmt: skip
        norm = ImageNormalize(frame_sci, interval=ZScaleInterval(), stretch=AsinhStretch())
        ax.imshow(frame_sci, origin="lower", cmap="gray", norm=norm)
        for row in catalog:
            ax.add_patch(Ellipse((row["X"] - 1, row["Y"] - 1), 6 * row["A"], 6 * row["B"],
                                 angle=row["THETA"], fill=False, lw=0.6,
                                 edgecolor="tab:orange" if row["FLAG"] else "lime"))  # fmt: skip
        scale = 0.08 * max(frame_sci.shape) / np.percentile(np.hypot(dx, dy), 95)
        ax.quiver(x - 1, y - 1, dx * scale, dy * scale, angles="xy", scale_units="xy",
                  scale=1.0, color="cyan")  # fmt: skip
        ax.set_title(f"{len(catalog)} sources")
        right.scatter(dx, dy, s=8, color="k")
        right.add_patch(Circle((0, 0), rms, fill=False, color="tab:red"))
        right.set_aspect("equal")
        right.set_title(f"astrometric residuals, rms {rms:.3f} arcsec")
        fig.suptitle("bench.fits: field, rp, 300.0 s")
        fig.savefig(out / "thumbnail.png", dpi=dpi)
        plt.close(fig)

    clock("thumbnail png", thumbnail)
    return {"median": float(median), "std": float(std), "clipped_mean": float(mean),
            "diff_median": float(diff_stats[1]), "diff_std": float(diff_stats[2]),
            "residual_rms": rms, "residual_n": int(x.size)}  # fmt: skip


def worker(method: str, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    data = make_data(args.size, args.stars, args.residuals, args.seed)
    clock = Clock()
    args.out.mkdir(parents=True, exist_ok=True)
    if method == "pylcogt":
        numbers = work_pylcogt(data, args.out, clock)
    else:
        numbers = work_peer(data, args.out, clock, args.dpi)
    pngs = {p.name: p.stat().st_size for p in sorted(args.out.glob("*.png"))}
    print(json.dumps({"steps": clock.steps, "numbers": numbers, "pngs": pngs}))


# --- the driver ---------------------------------------------------------------------------
def png_pixels(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def run_method(method: str, args: argparse.Namespace, out: Path, dpi: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--out", str(out), "--dpi", str(dpi),
           "--size", str(args.size), "--stars", str(args.stars), "--residuals",
           str(args.residuals), "--seed", str(args.seed)]  # fmt: skip
    env = dict(os.environ, MPLBACKEND="Agg")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["process_wall"] = time.perf_counter() - t0
    return report


def best_of(runs: list[dict]) -> dict:
    """Per step and total: the fastest run's wall and CPU; the largest peak RSS of all runs."""
    best = {}
    for name in (*MASTER_STEPS, *FRAME_STEPS, *TOTALS):
        parts = TOTALS.get(name, (name,))
        walls = [sum(r["steps"][p]["wall"] for p in parts) for r in runs]
        fastest = runs[int(np.argmin(walls))]
        rises = [r["steps"][p]["rise"] for r in runs for p in parts]
        best[name] = {
            "wall": min(walls),
            "cpu": sum(fastest["steps"][p]["cpu"] for p in parts),
            "peak_rss": max(r["steps"][p]["peak_rss"] for r in runs for p in parts),
            "rise": None if None in rises else max(rises),
        }
    return best


def load_text() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--stars", type=int, default=2000)
    parser.add_argument("--residuals", type=int, default=300, help="stars with a reference")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; best is shown")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="write the PNGs here and keep")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dpi", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args)
        return

    from pylcogt.qc.render import DPI, MAX_DISPLAY_PIXELS

    directory = args.keep or Path(tempfile.mkdtemp(prefix="bench_qc_"))
    directory.mkdir(parents=True, exist_ok=True)
    print(f"{args.size}x{args.size} float32 frames, {args.stars} stars, {args.residuals} "
          f"residuals, seed {args.seed}; DPI {DPI}, pylcogt shrinks to <= {MAX_DISPLAY_PIXELS} "
          f"px; {os.cpu_count()} cores, {load_text()}")  # fmt: skip
    try:
        runs: dict[str, list[dict]] = {m: [] for m in args.methods}
        for attempt in range(args.repeat):
            for method in args.methods:
                report = run_method(method, args, directory / method, DPI)
                runs[method].append(report)
                total = sum(s["wall"] for s in report["steps"].values())
                print(f"  run {attempt + 1}: {method:8s} steps {total:6.2f} s, process "
                      f"{report['process_wall']:6.2f} s", flush=True)  # fmt: skip
        best = {m: best_of(r) for m, r in runs.items()}

        print(f"\n{load_text()} after the runs; best of {args.repeat}")
        cols = f"{'wall s':>7s} {'cpu s':>6s} {'peak MiB':>8s} {'+MiB':>5s}"
        print(f"{'':14s} | {'pylcogt':^30s} | {'peer':^30s} | peer / pylcogt")
        print(f"{'step':14s} | {cols} | {cols} | {'wall':>6s} {'cpu':>6s}")

        def cell(r: dict) -> str:
            rise = "-" if r["rise"] is None else f"{r['rise'] / MIB:.0f}"
            return (f"{r['wall']:7.2f} {r['cpu']:6.2f} {r['peak_rss'] / MIB:8.0f} "
                    f"{rise:>5s}")  # fmt: skip

        for name in (*MASTER_STEPS, "master total", *FRAME_STEPS, "frame total", "total"):
            line = f"{name:14s}"
            for method in METHODS:
                line += " | " + (cell(best[method][name]) if method in best else f"{'-':>30s}")
            if len(best) == 2:
                p, q = best["pylcogt"][name], best["peer"][name]
                line += f" | {q['wall'] / p['wall']:6.1f} {q['cpu'] / p['cpu']:6.1f}"
            print(line)
        for method in args.methods:
            ready = runs[method][0]["steps"][MASTER_STEPS[0]]["start_rss"]
            print(f"{method}: {ready / MIB:.0f} MiB resident before the first step (data, "
                  "modules, warm-up)")  # fmt: skip
        print(
            "peak MiB: VmHWM during the step (reset before it), data included; +MiB: its rise "
            "above the RSS at the step's start; totals: largest of their steps"
        )

        print("\nPNG files (last run):")
        pngs = {}
        for method in args.methods:
            for name in ("master.png", "comparison.png", "thumbnail.png"):
                path = directory / method / name
                if not path.exists() or path.stat().st_size == 0:
                    raise SystemExit(f"{method} did not write {name}")
                width, height = png_pixels(path)
                pngs[f"{method}/{name}"] = {"bytes": path.stat().st_size, "width": width,
                                            "height": height}  # fmt: skip
                print(f"  {method:8s} {name:15s} {path.stat().st_size / 1024:7.0f} KiB "
                      f"{width}x{height} px")  # fmt: skip

        numbers = {m: runs[m][-1]["numbers"] for m in args.methods}
        if len(numbers) == 2:
            p, q = numbers["pylcogt"], numbers["peer"]
            print("\nnumbers (e-): pylcogt image_stats vs peer sigma_clipped_stats(sigma=3.5)")
            print(
                f"  master median      {p['median']:12.4f} {q['median']:12.4f}  "
                f"(differ by {abs(p['median'] - q['median']) / p['rstd']:.4f} rstd)"
            )
            print(f"  rstd / clipped std {p['rstd']:12.4f} {q['std']:12.4f}")
            print(f"  clipped mean       {p['clipped_mean']:12.4f} {q['clipped_mean']:12.4f}")
            print(f"  difference median  {p['diff_median']:12.4f} {q['diff_median']:12.4f}")
            print(
                f"  difference spread  {p['diff_rstd']:12.4f} {q['diff_std']:12.4f}  "
                "(rstd vs clipped std)"
            )
            print(
                f'  residual rms (")   {p["residual_rms"]:12.5f} {q["residual_rms"]:12.5f}  '
                f"({p['residual_n']} and {q['residual_n']} stars)"
            )
            if not abs(p["median"] - q["median"]) <= 0.1 * p["rstd"]:
                raise SystemExit("the medians differ by more than 0.1 rstd")
            if not abs(p["diff_median"] - q["diff_median"]) <= 0.1 * p["diff_rstd"]:
                raise SystemExit("the difference medians differ by more than 0.1 rstd")
        if args.json:
            args.json.write_text(json.dumps({
                "config": {k: getattr(args, k) for k in ("size", "stars", "residuals", "seed",
                                                          "repeat")},
                "cores": os.cpu_count(), "dpi": DPI, "best": best, "numbers": numbers,
                "pngs": pngs, "runs": runs,
            }, indent=1) + "\n")  # fmt: skip
            print(f"\nwrote {args.json}")
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
