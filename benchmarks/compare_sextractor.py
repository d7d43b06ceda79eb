"""Source detection: pylcogt (SEP, :func:`pylcogt.stages.detect.detect_sources`) against Source
Extractor on the same simulated frame.

The frame (seeded): Gaussian stars (pixel-integrated, ``sigma`` px) at known positions and
fluxes (log-uniform, 10^2.5 to 10^6 e-) on a flat sky, Poisson noise + read noise, in electrons;
ERR = sqrt(read noise^2 + max(SCI, 0)) as the gain stage makes it; no bad pixels. It is written
as plain FITS files in a temporary folder (SCI alone for Source Extractor, SCI and ERR for
pylcogt). Each tool runs in its own process (wall time and peak RSS of that process; for
pylcogt also the time spent in ``detect_sources`` itself). Source Extractor gets the pipeline's
settings: background boxes 32 px filtered over 3 x 3, ``THRESH_TYPE RELATIVE``,
``DETECT_THRESH 3`` (x the global background rms), ``DETECT_MINAREA 5``, the default 3 x 3
filter, deblending 32 / 0.005, ``PHOT_AUTOPARAMS 2.5, 3.5``, ``PHOT_AUTOAPERS 3.5, 3.5`` (the
1.75 px minimum circle), ``GAIN 1`` (data in electrons: Poisson term of FLUXERR_AUTO), no
saturation level.

Both catalogues are matched to the true stars (nearest detection within 1 px); the comparison
uses the bright isolated stars: true flux >= ``bright_e``, no other star within ``isolation``
px, at least ``isolation`` px from the edges, FLAG 0 in both catalogues.

    python benchmarks/compare_sextractor.py [--size 4096] [--stars 2000] [--seed 7]

:func:`compare` returns the numbers as a dict (used by ``tests/unit/test_detect.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEXTRACTOR = Path("/usr/bin/source-extractor")
FILTER = Path("/usr/share/source-extractor/default.conv")
SEX_PARAMS = ("X_IMAGE", "Y_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "A_IMAGE", "B_IMAGE",
              "THETA_IMAGE", "KRON_RADIUS", "FLAGS")  # fmt: skip
SKY_E, READ_NOISE_E = 500.0, 7.0


# --- the frame ----------------------------------------------------------------------------
def simulate(size: int, n_stars: int, seed: int, sigma: float = 2.0):
    """(sci, err, truth) with truth = (x, y, flux): 1-indexed FITS pixels, electrons."""
    from pylcogt.simulate.sky import render_stars

    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, size + 0.5, n_stars)
    y = rng.uniform(0.5, size + 0.5, n_stars)
    flux = 10 ** rng.uniform(2.5, 6.0, n_stars)
    expected = np.full((size, size), SKY_E)
    render_stars(expected, x, y, flux, sigma)
    sci = rng.poisson(expected).astype(np.float32)
    sci += rng.normal(0.0, READ_NOISE_E, sci.shape).astype(np.float32)
    err = np.sqrt(np.float32(READ_NOISE_E**2) + np.maximum(sci, 0)).astype(np.float32)
    return sci, err, (x, y, flux)


# --- the runs (each in its own process) ---------------------------------------------------
#: A bare interpreter that forks the command and reports its peak RSS. Linux counts a process's
#: RSS at fork/exec time in its peak, so a command started straight from this (large) process
#: would report at least this process's size.
_MEASURE = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as handle:
    json.dump({"status": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, handle)
"""


def _run(cmd: list[str], cwd: Path) -> tuple[float, int, str]:
    """Run ``cmd``: (wall seconds, peak RSS bytes of its process, stdout)."""
    name = Path(cmd[0]).name
    out, err, usage = (cwd / f".{name}.{kind}" for kind in ("out", "err", "json"))
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", _MEASURE, str(usage), *cmd],
                       cwd=cwd, stdout=stdout, stderr=stderr, check=True)  # fmt: skip
        wall = time.perf_counter() - start
    measured = json.loads(usage.read_text())
    if measured["status"] != 0:
        msg = f"{' '.join(cmd)} failed ({measured['status']}): {err.read_text()[-2000:]}"
        raise RuntimeError(msg)
    return wall, measured["maxrss_kib"] * 1024, out.read_text()


def run_sextractor(workdir: Path, exe: Path = SEXTRACTOR) -> dict:
    (workdir / "sex.param").write_text("\n".join(SEX_PARAMS) + "\n")
    settings = {
        "CATALOG_NAME": "sex.cat",
        "CATALOG_TYPE": "ASCII_HEAD",
        "PARAMETERS_NAME": "sex.param",
        "DETECT_TYPE": "CCD",
        "DETECT_MINAREA": "5",
        "THRESH_TYPE": "RELATIVE",
        "DETECT_THRESH": "3.0",
        "ANALYSIS_THRESH": "3.0",
        "FILTER": "Y",
        "FILTER_NAME": str(FILTER),
        "DEBLEND_NTHRESH": "32",
        "DEBLEND_MINCONT": "0.005",
        "CLEAN": "Y",
        "CLEAN_PARAM": "1.0",
        "MASK_TYPE": "CORRECT",
        "PHOT_AUTOPARAMS": "2.5,3.5",
        "PHOT_AUTOAPERS": "3.5,3.5",
        "SATUR_LEVEL": "1e9",
        "GAIN": "1.0",
        "BACK_TYPE": "AUTO",
        "BACK_SIZE": "32",
        "BACK_FILTERSIZE": "3",
        "BACKPHOTO_TYPE": "GLOBAL",
        "MEMORY_PIXSTACK": "1000000",
        "MEMORY_OBJSTACK": "10000",
        "VERBOSE_TYPE": "QUIET",
        "NTHREADS": "1",
    }
    (workdir / "sex.conf").write_text("".join(f"{k} {v}\n" for k, v in settings.items()))
    wall, rss, _ = _run([str(exe), "sci.fits", "-c", "sex.conf"], workdir)
    rows = np.loadtxt(workdir / "sex.cat", comments="#", ndmin=2)
    cat = {name: rows[:, i] for i, name in enumerate(SEX_PARAMS)}
    return {"catalog": cat, "wall_s": wall, "peak_rss": rss}


def run_pylcogt(workdir: Path) -> dict:
    wall, rss, stdout = _run([sys.executable, str(Path(__file__).resolve()), "--worker",
                              str(workdir)], workdir)  # fmt: skip
    info = json.loads(stdout.strip().splitlines()[-1])
    table = np.load(workdir / "pylcogt.npy")
    cat = {name: table[name] for name in table.dtype.names}
    return {"catalog": cat, "wall_s": wall, "peak_rss": rss, "detect_s": info["detect_s"]}


def worker(workdir: Path) -> None:
    """The pylcogt process: read the frame, time ``detect_sources``, save the table."""
    from astropy.io import fits

    from pylcogt.frame import Frame
    from pylcogt.stages.detect import detect_sources

    sci = fits.getdata(workdir / "sci.fits").astype(np.float32)
    err = fits.getdata(workdir / "err.fits").astype(np.float32)
    frame = Frame(sci=sci, err=err, bpm=np.zeros(sci.shape, np.uint8), header=fits.Header(),
                  unit="electron", name="compare")  # fmt: skip
    start = time.perf_counter()
    cat = detect_sources(frame)
    detect_s = time.perf_counter() - start
    np.save(workdir / "pylcogt.npy", cat.table.as_array())
    print(json.dumps({"detect_s": detect_s}))


# --- the comparison -----------------------------------------------------------------------
def _nearest(x0, y0, x1, y1, radius: float) -> np.ndarray:
    """Index into (x1, y1) of the nearest point to each (x0, y0) within ``radius``, else -1."""
    index = np.full(len(x0), -1)
    if len(x1) == 0:
        return index
    for start in range(0, len(x0), 512):
        d2 = (x0[start : start + 512, None] - x1) ** 2 + (y0[start : start + 512, None] - y1) ** 2
        best = np.argmin(d2, axis=1)
        ok = d2[np.arange(len(best)), best] <= radius**2
        index[start : start + 512] = np.where(ok, best, -1)
    return index


def _isolated(x, y, size: int, isolation: float) -> np.ndarray:
    inside = (x > isolation) & (x < size - isolation) & (y > isolation) & (y < size - isolation)
    alone = np.ones(len(x), bool)
    for start in range(0, len(x), 512):
        d2 = (x[start : start + 512, None] - x) ** 2 + (y[start : start + 512, None] - y) ** 2
        alone[start : start + 512] = (d2 <= isolation**2).sum(axis=1) == 1  # only itself
    return inside & alone


def compare(
    size: int = 4096,
    n_stars: int = 2000,
    seed: int = 7,
    *,
    bright_e: float = 2e4,
    isolation: float = 30.0,
    exe: Path = SEXTRACTOR,
) -> dict:
    """Simulate, run both tools, match; the numbers as a dict (relative differences are
    ``pylcogt / SExtractor - 1``)."""
    from astropy.io import fits

    sci, err, (tx, ty, tflux) = simulate(size, n_stars, seed)
    with tempfile.TemporaryDirectory(prefix="pylcogt-sex-") as tmp:
        workdir = Path(tmp)
        fits.PrimaryHDU(sci).writeto(workdir / "sci.fits")
        fits.PrimaryHDU(err).writeto(workdir / "err.fits")
        del err
        sex = run_sextractor(workdir, exe)
        pyl = run_pylcogt(workdir)
    s, p = sex["catalog"], pyl["catalog"]
    si = _nearest(tx, ty, s["X_IMAGE"], s["Y_IMAGE"], 1.0)
    pi = _nearest(tx, ty, p["X"], p["Y"], 1.0)
    both = (si >= 0) & (pi >= 0)
    sel = both & (tflux >= bright_e) & _isolated(tx, ty, size, isolation)
    sel[sel] &= (s["FLAGS"][si[sel]] == 0) & (p["FLAG"][pi[sel]] == 0)
    fs, fp = s["FLUX_AUTO"][si[sel]], p["FLUX"][pi[sel]]
    rel = fp / fs - 1.0
    err_ratio = p["FLUXERR"][pi[sel]] / s["FLUXERR_AUTO"][si[sel]]
    all_rel = p["FLUX"][pi[both]] / s["FLUX_AUTO"][si[both]] - 1.0
    da = np.abs(p["A"][pi[sel]] - s["A_IMAGE"][si[sel]])
    db = np.abs(p["B"][pi[sel]] - s["B_IMAGE"][si[sel]])
    dx = p["X"][pi[sel]] - s["X_IMAGE"][si[sel]]
    dy = p["Y"][pi[sel]] - s["Y_IMAGE"][si[sel]]
    return {
        "size": size,
        "n_stars": n_stars,
        "seed": seed,
        "bright_e": bright_e,
        "isolation_px": isolation,
        "n_sextractor": len(s["X_IMAGE"]),
        "n_pylcogt": len(p["X"]),
        "n_true_found_sextractor": int((si >= 0).sum()),
        "n_true_found_pylcogt": int((pi >= 0).sum()),
        "n_compared": int(sel.sum()),
        "median_abs_rel": float(np.median(np.abs(rel))) if rel.size else float("nan"),
        "max_abs_rel": float(np.max(np.abs(rel))) if rel.size else float("nan"),
        "median_rel": float(np.median(rel)) if rel.size else float("nan"),
        "median_err_ratio": float(np.median(err_ratio)) if rel.size else float("nan"),
        "median_rel_truth_pylcogt": float(np.median(fp / tflux[sel] - 1)) if rel.size else None,
        "median_rel_truth_sextractor": float(np.median(fs / tflux[sel] - 1)) if rel.size else None,
        "max_abs_dxy_px": float(np.max(np.hypot(dx, dy))) if rel.size else float("nan"),
        "max_abs_dab_px": float(max(da.max(), db.max())) if rel.size else float("nan"),
        "n_all_matched": int(both.sum()),
        "median_abs_rel_all": float(np.median(np.abs(all_rel))) if both.any() else float("nan"),
        "p95_abs_rel_all": float(np.percentile(np.abs(all_rel), 95)) if both.any() else None,
        "sextractor_wall_s": sex["wall_s"],
        "sextractor_peak_rss": sex["peak_rss"],
        "pylcogt_wall_s": pyl["wall_s"],
        "pylcogt_detect_s": pyl["detect_s"],
        "pylcogt_peak_rss": pyl["peak_rss"],
    }


def report(r: dict) -> str:
    mib = 1024**2
    return "\n".join([
        f"frame {r['size']} x {r['size']}, {r['n_stars']} stars, seed {r['seed']}",
        f"{'':18s}{'sources':>8s}{'true found':>12s}{'process s':>11s}{'peak RSS MiB':>14s}",
        f"{'source-extractor':18s}{r['n_sextractor']:8d}{r['n_true_found_sextractor']:12d}"
        f"{r['sextractor_wall_s']:11.2f}{r['sextractor_peak_rss'] / mib:14.0f}",
        f"{'pylcogt (SEP)':18s}{r['n_pylcogt']:8d}{r['n_true_found_pylcogt']:12d}"
        f"{r['pylcogt_wall_s']:11.2f}{r['pylcogt_peak_rss'] / mib:14.0f}"
        f"   (detect_sources {r['pylcogt_detect_s']:.2f} s)",
        f"bright isolated stars (>= {r['bright_e']:.0f} e-, alone within {r['isolation_px']:.0f}"
        f" px, FLAG 0 in both): {r['n_compared']}",
        f"  FLUX pylcogt / SExtractor - 1: median |d| {r['median_abs_rel']:.4%}, "
        f"max |d| {r['max_abs_rel']:.4%}, median d {r['median_rel']:+.4%}",
        f"  FLUXERR pylcogt / SExtractor: median {r['median_err_ratio']:.4f}",
        f"  FLUX / truth - 1 (median): pylcogt {r['median_rel_truth_pylcogt']:+.4%}, "
        f"SExtractor {r['median_rel_truth_sextractor']:+.4%}",
        f"  largest difference: position {r['max_abs_dxy_px']:.4f} px, A or B "
        f"{r['max_abs_dab_px']:.4f} px",
        f"all true stars found by both ({r['n_all_matched']}): median |d| "
        f"{r['median_abs_rel_all']:.4%}, 95th percentile {r['p95_abs_rel_all']:.4%}",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--stars", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return
    print(report(compare(args.size, args.stars, args.seed)))


if __name__ == "__main__":
    main()
