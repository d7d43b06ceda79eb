"""Cosmic-ray stage speed: pylcogt's tiled L.A.Cosmic against astroscrappy's whole-frame call.

One seeded frame (``tests/unit/test_cosmics.simulate_frame``): 4096 x 4096 pixels in electrons,
sky 700 e-, read noise 7.5 e-, ``--stars`` stars (FWHM 2.5 px, fluxes ``N(>f) ~ f^-0.75`` from
2e3 to 3e6 e-: the brightest saturate and are flagged SATURATED) and the hits of a ``--seconds``
exposure on a 15 micron-pixel detector (the simulator's 1-5 pixel tracks, 1 per cm^2 per minute,
plus a tenth as many worms). Each method runs in its own process, so that its peak RSS is its
own (VmHWM; it includes the frame: SCI, ERR and BPM, 144 MiB, loaded before the clock starts):

- ``astroscrappy[:k=v,...]``: ``astroscrappy.detect_cosmics`` on the whole frame with the stage's
  inputs (``lacosmic_inputs``: ERR^2 as the variance, BAD/LOW_FLAT/non-finite/saturated-star
  mask) and astroscrappy's defaults (sigclip 4.5, sigfrac 0.3, objlim 5, niter 4, sepmed,
  meanmask, median fine structure), or ``k=v`` overrides (e.g. ``niter=1``);
- ``astroscrappy-plain``: ``detect_cosmics(SCI, gain=1, readnoise=RDNOISE, satlevel=60000 e-)``,
  nothing else: the call one would write without the stage;
- ``pylcogt[:k=v,...]``: ``pylcogt.stages.cosmics.cosmic_ray_mask`` with the default
  :class:`CosmicRayConfig` or ``k=v`` overrides (``workers=1``, ``tile_px=256``, ...).

A ``@N`` suffix sets ``OMP_NUM_THREADS=N`` for the method's process (astroscrappy's median
filters use OpenMP on every core when it is unset); ``@unset`` leaves it unset. Printed per
method: best wall time over ``--repeat`` runs (run round-robin, so that a change in the load of
a shared machine hits every method), the CPU time of that run (user + sys, all threads), peak
RSS, completeness (flagged fraction of the hit pixels above 5 sigma of the noise there), false
positives (flagged pixels farther than 1 pixel from any hit), flagged pixels, pixels differing
from the first method's flags, and the first method's wall and CPU time over this method's.

    python benchmarks/bench_cosmics.py [--repeat 2] [--sweep] [--methods astroscrappy@1 ...]
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.unit.test_cosmics

DEFAULT_METHODS = (
    "astroscrappy@1",  # the reference: astroscrappy's defaults, one core
    "pylcogt:workers=1@1",  # the stage on one core
    "pylcogt@1",  # the stage as configured: min(2, cores) threads
    "astroscrappy@unset",  # astroscrappy's own OpenMP on every core
    "pylcogt@unset",
)
SWEEP_METHODS = (
    "astroscrappy:niter=1@1",
    "astroscrappy:niter=2@1",
    "astroscrappy-plain@1",
    "pylcogt:workers=1,niter=1@1",
    "pylcogt:workers=1,niter=2@1",
    "pylcogt:workers=1,tile_px=0@1",
    "pylcogt:workers=1,tile_px=128@1",
    "pylcogt:workers=1,tile_px=256@1",
    "pylcogt:workers=1,tile_px=1024@1",
    "pylcogt:workers=1,window_cell_px=32@1",
)
MIB = 2**20


def parse_method(spec: str) -> tuple[str, dict, str | None]:
    """``name[:k=v,...][@omp]`` -> (name, overrides, OMP_NUM_THREADS or None: unset)."""
    spec, _, omp = spec.partition("@")
    name, _, options = spec.partition(":")
    overrides = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)  # numbers, true, false, null
        except json.JSONDecodeError:
            overrides[key] = value
    if name not in ("astroscrappy", "astroscrappy-plain", "pylcogt"):
        raise ValueError(f"unknown method {name!r}")
    return name, overrides, (None if omp in ("", "unset") else omp)


# --- the worker (one per process) ---------------------------------------------------------
def load_frame(path: Path):
    from astropy.io import fits

    from pylcogt.frame import Frame

    with np.load(path) as data:
        header = fits.Header([("RDNOISE", float(data["read_noise"]))])
        return Frame(data["sci"], data["err"], data["bpm"], header, unit="electron",
                     name="bench")  # fmt: skip


def worker(spec: str, frame_path: Path, out: Path) -> None:
    import astroscrappy

    from pylcogt.stages.cosmics import CosmicRayConfig, cosmic_ray_mask, lacosmic_inputs
    from tests.unit.test_cosmics import SATURATION_E

    name, overrides, _ = parse_method(spec)
    frame = load_frame(frame_path)
    rss_loaded = peak_rss()
    u0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if name == "pylcogt":
        flags = cosmic_ray_mask(frame, CosmicRayConfig(**overrides))
    elif name == "astroscrappy":
        flags, _ = astroscrappy.detect_cosmics(**(lacosmic_inputs(frame) | overrides))
    else:
        flags, _ = astroscrappy.detect_cosmics(
            frame.sci, gain=1.0, readnoise=frame.header["RDNOISE"], satlevel=SATURATION_E,
            **overrides,
        )  # fmt: skip
    wall, u1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime
    np.save(out, np.asarray(flags, dtype=bool))
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_rss": peak_rss(),
                      "rss_loaded": rss_loaded}))  # fmt: skip


def peak_rss() -> int:
    """Peak RSS of this process, bytes: VmHWM (Linux; reset by exec, unlike ``ru_maxrss``,
    which a child starts with its parent's), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the driver ---------------------------------------------------------------------------
def run_method(spec: str, frame_path: Path, out: Path) -> dict:
    _, _, omp = parse_method(spec)
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    cmd = [sys.executable, __file__, "--worker", spec, "--frame", str(frame_path),
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_text() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--stars", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; best is shown")
    parser.add_argument("--methods", nargs="+", help="method specs (see the docstring)")
    parser.add_argument("--sweep", action="store_true", help="also: niter, tile sizes, ...")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--frame", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.frame, args.out)
        return

    from tests.unit.test_cosmics import READ_NOISE_E, score, simulate_frame

    methods = list(args.methods or DEFAULT_METHODS) + (list(SWEEP_METHODS) if args.sweep else [])
    for spec in methods:
        parse_method(spec)
    directory = Path(tempfile.mkdtemp(prefix="bench_cosmics_"))
    try:
        t0 = time.perf_counter()
        shape = (args.size, args.size)
        frame, expected, deposit = simulate_frame(
            shape, n_stars=args.stars, seconds=args.seconds, seed=args.seed
        )
        frame_path = directory / "frame.npz"
        np.savez(frame_path, sci=frame.sci, err=frame.err, bpm=frame.bpm, read_noise=READ_NOISE_E)
        n_saturated = int((frame.bpm != 0).sum())
        print(
            f"frame {args.size}x{args.size}: {args.stars} stars, {n_saturated} saturated pixels, "
            f"{int((deposit > 0).sum())} hit pixels ({args.seconds:.0f} s + 14 s readout), "
            f"simulated in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} cores, "
            f"{load_text()}"
        )
        results: dict[str, dict] = {}
        for attempt in range(args.repeat):
            for index, spec in enumerate(methods):
                out = directory / f"flags-{index}.npy"
                report = run_method(spec, frame_path, out)
                print(f"  run {attempt + 1}: {spec:40s} wall {report['wall']:6.2f} s, "
                      f"cpu {report['cpu']:6.2f} s", flush=True)  # fmt: skip
                best = results.get(spec)
                if best is None or report["wall"] < best["wall"]:
                    results[spec] = report
                if best is not None:
                    results[spec]["peak_rss"] = max(best["peak_rss"], report["peak_rss"])

        reference = methods[0]
        ref_flags = np.load(directory / "flags-0.npy")
        print(f"\n{load_text()} after the runs")
        header = (
            f"{'method':40s} {'wall s':>7s} {'cpu s':>7s} {'peak MiB':>9s} {'+frame':>7s} "
            f"{'complete':>9s} {'false+':>7s} {'flagged':>8s} {'differ':>7s} "
            f"{'x wall':>7s} {'x cpu':>6s}"
        )
        print(header)
        n_strong = 0
        for index, spec in enumerate(methods):
            r = results[spec]
            flags = np.load(directory / f"flags-{index}.npy")
            completeness, n_strong, false_positives = score(flags, expected, deposit)
            ref = results[reference]
            print(
                f"{spec:40s} {r['wall']:7.2f} {r['cpu']:7.2f} {r['peak_rss'] / MIB:9.0f} "
                f"{(r['peak_rss'] - r['rss_loaded']) / MIB:7.0f} {completeness:9.4f} "
                f"{false_positives:7d} {int(flags.sum()):8d} {int((flags != ref_flags).sum()):7d} "
                f"{ref['wall'] / r['wall']:7.2f} {ref['cpu'] / r['cpu']:6.2f}"
            )
        print(
            f"\ncompleteness: of the {n_strong} hit pixels above 5 sigma; false+: flagged, "
            "farther than 1 pixel from any hit; differ: pixels whose flag differs from the first "
            "method's; x wall, x cpu: the first method's time over this one's; +frame: peak RSS "
            "above the loaded frame"
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
