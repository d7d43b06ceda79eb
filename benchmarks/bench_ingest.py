"""Ingest speed: pylcogt's header scan against astropy's, side by side, and whole ingest.

Writes N Sinistro-like MEF frames once (header-only primary + 4 uint16 amplifier extensions),
then, each in its own process so that peak memory is its own:

- ``pylcogt-scan``: ``scan_fits`` + ``read_frame_metadata`` + sha256 (what ingest reads);
- ``astropy-open``: ``fits.open(lazy_load_hdus=False)``, every header, astropy's own check for
  truncation (a warning when data is missing) + sha256: the obvious peer;
- ``pylcogt-ingest``: ``pylcogt ingest`` into a fresh SQLite registry, then again (unchanged).

Prints wall time, files per minute, peak RSS and the ratio to the peer.

    python benchmarks/bench_ingest.py [--files 500] [--amp-size 256] [--compress none|fz|gz]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits


def make_files(directory: Path, n: int, amp_size: int, compress: str) -> list[Path]:
    rng = np.random.default_rng(1)
    template = rng.integers(900, 1100, size=(amp_size + 10, amp_size + 32), dtype=np.uint16)
    files = []
    for i in range(n):
        primary = fits.PrimaryHDU()
        primary.header.update(
            {
                "OBSTYPE": "BIAS",
                "SITEID": "lsc",
                "ENCID": "doma",
                "TELID": "1m0a",
                "TELESCOP": "1m0-09",
                "INSTRUME": "fa15",
                "DATE-OBS": f"2026-11-28T20:{i // 60 % 60:02d}:{i % 60:02d}.000",
                "DAY-OBS": "20261128",
                "EXPTIME": 0.0,
                "FILTER": "air",
                "CCDSUM": "1 1",
                "CONFMODE": "full_frame",
                "RDNOISE": 7.5,
                "SATURATE": 47500.0,
                "FRAMENUM": i,
            }
        )
        for k in range(150):  # real Sinistro primaries carry ~240 cards
            primary.header[f"FILL{k:04d}"] = (float(k), "padding card like real headers")
        amps = []
        for a in range(4):
            data = template + np.uint16(a)
            hdu = (
                fits.CompImageHDU(data, name="SCI", compression_type="RICE_1")
                if compress == "fz"
                else fits.ImageHDU(data, name="SCI")
            )
            hdu.header["GAIN"] = 1.0 + 0.1 * a
            hdu.header["BIASSEC"] = f"[{amp_size + 7}:{amp_size + 32},1:{amp_size}]"
            hdu.header["DATASEC"] = f"[1:{amp_size},1:{amp_size}]"
            amps.append(hdu)
        suffix = {"none": ".fits", "fz": ".fits.fz", "gz": ".fits"}[compress]
        path = directory / f"lsc1m009-fa15-20261128-{i:04d}-b00{suffix}"
        fits.HDUList([primary, *amps]).writeto(path)
        if compress == "gz":
            with (
                open(path, "rb") as src,
                gzip.open(str(path) + ".gz", "wb", compresslevel=6) as dst,
            ):
                shutil.copyfileobj(src, dst)
            path.unlink()
            path = Path(str(path) + ".gz")
        files.append(path)
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def child(mode: str, directory: Path) -> dict:
    files = sorted(directory.glob("*.fits*"))
    start = time.perf_counter()
    if mode == "pylcogt-scan":
        from pylcogt.io.raw_header import read_frame_metadata
        from pylcogt.io.scan import scan_fits, sha256_file

        for path in files:
            read_frame_metadata(scan_fits(path))
            sha256_file(path)
    elif mode == "astropy-open":
        for path in files:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # astropy's truncation notice is a warning
                with fits.open(path, lazy_load_hdus=False) as hdul:
                    for hdu in hdul:
                        _ = hdu.header["NAXIS"]
            _sha256(path)
    elif mode == "pylcogt-ingest":
        db = directory.parent / "bench.db"
        for attempt in ("first", "again"):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pylcogt",
                    "-q",
                    "--database-url",
                    f"sqlite:///{db}",
                    "ingest",
                    str(directory),
                    "--json",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            summary = json.loads(proc.stdout)["summary"]
            if attempt == "first":
                first = (time.perf_counter() - t0, summary)
        wall = time.perf_counter() - start
        return {
            "mode": mode,
            "wall_s": first[0],
            "again_s": wall - first[0],
            "files": len(files),
            "summary": first[1],
            "peak_rss_mb": None,
        }
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "wall_s": wall, "files": len(files), "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--amp-size", type=int, default=256, help="light pixels per amplifier side")
    parser.add_argument("--compress", choices=["none", "fz", "gz"], default="none")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return

    with tempfile.TemporaryDirectory(prefix="pylcogt-bench-") as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        t0 = time.perf_counter()
        files = make_files(raw, args.files, args.amp_size, args.compress)
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"wrote {len(files)} {args.compress} MEF files ({size_mb:.0f} MB) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        results = {}
        for mode in ("astropy-open", "pylcogt-scan", "pylcogt-ingest"):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(raw)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        peer = results["astropy-open"]["wall_s"]
        print(f"{'mode':16s} {'wall s':>8s} {'files/min':>10s} {'peak MB':>8s} {'vs astropy':>10s}")
        for mode, r in results.items():
            rate = r["files"] / r["wall_s"] * 60
            peak = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-"
            print(
                f"{mode:16s} {r['wall_s']:8.2f} {rate:10.0f} {peak:>8s} {peer / r['wall_s']:9.2f}x"
            )
        ingest = results["pylcogt-ingest"]
        print(
            f"pylcogt ingest summary: {ingest['summary']}; "
            f"second run (all unchanged) {ingest['again_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
