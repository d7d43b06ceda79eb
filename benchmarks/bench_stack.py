"""Stacking speed: pylcogt against ccdproc and astropy, side by side, on the same FITS files.

Writes N frames once (uncompressed MEF products: SCI float32 -- or uint16 with BZERO, see
``--sci-dtype`` -- plus ERR float32 and BPM uint8; bias-like: level + read noise + cosmic rays +
hot pixels + NaNs + a bad column flagged in the BPM), then runs each method in its own process,
so that peak RSS is its own:

- ``pylcogt``: ``stack_sources`` over ``FitsBandSource``s: SCI + ERR + BPM in, clipped mean,
  error, BPM and n_kept out, within the default 1 GiB budget;
- ``pylcogt-sci``: the same with the SCI planes only (the work the peers do);
- ``ccdproc``: ``Combiner(dtype=float32)`` on ``CCDData.read(hdu='SCI')``, then
  ``sigma_clipping(func='median', dev_func='mad_std')`` (3/3, one iteration) and
  ``average_combine()`` (mean and its uncertainty);
- ``astropy``: the SCI planes stacked in memory, ``sigma_clip(axis=0, cenfunc='median',
  stdfunc='mad_std', maxiters=1)`` (astropy's C fast path), then the mean of the rest.

Prints wall time (of the operation, and of the whole process including imports), peak RSS and
the speed ratio, then the largest difference of each result from an obvious, slow numpy
reference (float64 ``nanmedian`` per pixel, computed here in bands of rows).

    python benchmarks/bench_stack.py [--frames 16] [--size 1024] [--sci-dtype float32|uint16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("pylcogt", "pylcogt-sci", "ccdproc", "astropy")
K = 3.0


# --- the frames ---------------------------------------------------------------------------
def make_files(directory: Path, n: int, size: int, sci_dtype: str) -> list[Path]:
    from astropy.io import fits

    rng = np.random.default_rng(42)
    structure = np.linspace(-3, 3, size, dtype=np.float32)[None, :] * np.ones((size, 1), np.float32)
    hot = rng.random((size, size)) < 1e-4
    bad_column = size // 3
    paths = []
    for i in range(n):
        sci = 1000 + structure + rng.standard_normal((size, size), dtype=np.float32) * 7
        sci[hot] += 500
        cosmics = rng.random((size, size)) < 1e-3
        sci[cosmics] += rng.uniform(100, 5000, cosmics.sum()).astype(np.float32)
        err = np.full((size, size), 7.0, np.float32) + rng.random((size, size), np.float32) * 0.1
        bpm = np.zeros((size, size), np.uint8)
        bpm[:, bad_column] = 1
        bpm[rng.random((size, size)) < 1e-4] = 2
        if sci_dtype == "uint16":
            sci_hdu = fits.ImageHDU(np.round(sci).astype(np.uint16), name="SCI")  # BZERO=32768
        else:
            sci[rng.random((size, size)) < 1e-5] = np.nan
            sci_hdu = fits.ImageHDU(sci, name="SCI")
        path = directory / f"frame{i:03d}.fits"
        fits.HDUList(
            [
                fits.PrimaryHDU(),
                sci_hdu,
                fits.ImageHDU(err, name="ERR"),
                fits.ImageHDU(bpm, name="BPM"),
            ]
        ).writeto(path)
        paths.append(path)
    return paths


# --- the workers (one per process) --------------------------------------------------------
def work_pylcogt(paths, out: Path, sci_only: bool) -> float:
    from pylcogt.calibrations.stack import stack_sources
    from pylcogt.io.bands import open_fits_band_sources

    t0 = time.perf_counter()
    options = {"err": None, "bpm": None} if sci_only else {}
    with open_fits_band_sources(paths, **options) as sources:
        result = stack_sources(sources)
    wall = time.perf_counter() - t0
    np.save(out / "mean.npy", result.mean)
    if result.err is not None:
        np.save(out / "err.npy", result.err)
        np.save(out / "n_kept.npy", result.n_kept)
    return wall


def work_ccdproc(paths, out: Path) -> float:
    import warnings

    from astropy.nddata import CCDData
    from ccdproc import Combiner

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ccds = [CCDData.read(p, hdu="SCI", unit="adu") for p in paths]
        combiner = Combiner(ccds, dtype=np.float32)
        del ccds
        combiner.sigma_clipping(low_thresh=K, high_thresh=K, func="median", dev_func="mad_std")
        result = combiner.average_combine()
    wall = time.perf_counter() - t0
    np.save(out / "mean.npy", np.asarray(result.data, np.float32))
    return wall


def work_astropy(paths, out: Path) -> float:
    import warnings

    from astropy.io import fits
    from astropy.stats import sigma_clip

    t0 = time.perf_counter()
    with fits.open(paths[0]) as hdul:
        shape = hdul["SCI"].shape
    stack = np.empty((len(paths), *shape), np.float32)
    for i, p in enumerate(paths):
        with fits.open(p, memmap=False) as hdul:
            stack[i] = hdul["SCI"].data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = sigma_clip(
            stack, sigma=K, maxiters=1, cenfunc="median", stdfunc="mad_std", axis=0,
            masked=False, copy=False,
        )  # fmt: skip
        mean = np.nanmean(clipped, axis=0)
    wall = time.perf_counter() - t0
    np.save(out / "mean.npy", mean.astype(np.float32))
    return wall


def worker(method: str, paths: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if method == "pylcogt":
        wall = work_pylcogt(paths, out, sci_only=False)
    elif method == "pylcogt-sci":
        wall = work_pylcogt(paths, out, sci_only=True)
    elif method == "ccdproc":
        wall = work_ccdproc(paths, out)
    else:
        wall = work_astropy(paths, out)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"wall": wall, "peak_rss": peak_kib * 1024}))


# --- the reference ------------------------------------------------------------------------
def reference(paths, rows: int, *, use_masks: bool, band: int = 64):
    """Obvious per-pixel clipped mean in float64 with numpy's nanmedian (slow)."""
    from astropy.io import fits

    hduls = [fits.open(p, memmap=True) for p in paths]
    try:
        cols = hduls[0]["SCI"].shape[1]
        mean = np.empty((rows, cols), np.float32)
        err = np.empty((rows, cols), np.float32)
        n_kept = np.empty((rows, cols), np.int64)
        for r0 in range(0, rows, band):
            r1 = min(rows, r0 + band)
            x = np.stack([h["SCI"].section[r0:r1] for h in hduls]).astype(np.float64)
            e = np.stack([h["ERR"].section[r0:r1] for h in hduls]).astype(np.float64)
            valid = np.isfinite(x)
            if use_masks:
                valid &= np.stack([h["BPM"].section[r0:r1] for h in hduls]) == 0
            x[~valid] = np.nan
            all_bad = ~valid.any(axis=0)
            x[:, all_bad] = 0.0  # keep nanmedian quiet; these pixels are NaN below
            med = np.nanmedian(x, axis=0)
            mad = np.nanmedian(np.abs(x - med), axis=0)
            keep = valid & (np.abs(x - med) <= K * (1.4826 * mad))
            n = keep.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean[r0:r1] = np.where(keep, x, 0).sum(axis=0) / n
                err[r0:r1] = np.sqrt(np.where(keep, e * e, 0).sum(axis=0)) / n
            n_kept[r0:r1] = n
        return mean, err, n_kept
    finally:
        for h in hduls:
            h.close()


def max_diff(a: np.ndarray, b: np.ndarray) -> str:
    both_nan = np.isnan(a) & np.isnan(b)
    one_nan = np.isnan(a) ^ np.isnan(b)
    diff = np.abs(a.astype(np.float64) - b)[~(both_nan | one_nan)]
    text = f"{diff.max():.3g}" if diff.size else "-"
    return text + (f" ({one_nan.sum()} NaN vs value)" if one_nan.any() else "")


# --- the driver ---------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--sci-dtype", choices=("float32", "uint16"), default="float32")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow reference")
    parser.add_argument("--keep", type=Path, help="write the frames here and keep them")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.paths, args.out)
        return

    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    directory = args.keep or Path(tempfile.mkdtemp(prefix="bench_stack_"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        paths = sorted(directory.glob("frame*.fits"))
        if len(paths) != args.frames or args.keep is None:
            for p in paths:
                p.unlink()
            t0 = time.perf_counter()
            paths = make_files(directory, args.frames, args.size, args.sci_dtype)
            print(
                f"wrote {args.frames} frames of {args.size}x{args.size} "
                f"({sum(p.stat().st_size for p in paths) / 2**30:.2f} GiB) in "
                f"{time.perf_counter() - t0:.1f} s to {directory}"
            )
        results = {}
        for method in methods:
            out = directory / f"out-{method}"
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", method, "--out", str(out),
                 *map(str, paths)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            process_wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"{method}: failed\n{proc.stderr[-3000:]}")
                continue
            report = json.loads(proc.stdout.strip().splitlines()[-1])
            report["process_wall"] = process_wall
            report["mean"] = np.load(out / "mean.npy")
            results[method] = report

        print(
            f"\n{args.frames} frames x {args.size}x{args.size} {args.sci_dtype}, "
            f"k={K}, {os.cpu_count()} cores"
        )
        print(
            f"{'method':12s} {'wall (s)':>9s} {'process (s)':>12s} {'peak RSS (MiB)':>15s} "
            f"{'ccdproc/x':>10s} {'astropy/x':>10s}"
        )
        for method, r in results.items():
            ratios = [
                f"{results[peer]['wall'] / r['wall']:10.1f}" if peer in results else f"{'-':>10s}"
                for peer in ("ccdproc", "astropy")
            ]
            print(
                f"{method:12s} {r['wall']:9.2f} {r['process_wall']:12.2f} "
                f"{r['peak_rss'] / 2**20:15.0f} {' '.join(ratios)}"
            )

        if not args.no_reference and results:
            t0 = time.perf_counter()
            ref_masked = reference(paths, args.size, use_masks=True)
            ref_plain = (
                ref_masked
                if "pylcogt-sci" not in results
                and "ccdproc" not in results
                and "astropy" not in results
                else reference(paths, args.size, use_masks=False)
            )
            print(
                f"\nlargest |difference| from the slow numpy reference "
                f"({time.perf_counter() - t0:.0f} s to compute):"
            )
            for method, r in results.items():
                ref = ref_masked if method == "pylcogt" else ref_plain
                line = f"  {method:12s} mean {max_diff(r['mean'], ref[0])}"
                out = directory / f"out-{method}"
                if (out / "err.npy").exists():
                    line += f", err {max_diff(np.load(out / 'err.npy'), ref[1])}"
                    n_equal = np.array_equal(np.load(out / "n_kept.npy"), ref[2])
                    line += f", n_kept {'identical' if n_equal else 'DIFFERS'}"
                print(line)
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
