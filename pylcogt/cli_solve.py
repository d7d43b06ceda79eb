"""``pylcogt solve FILE...``: source catalogue and WCS for images that are already calibrated."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path

from pylcogt.config import Settings
from pylcogt.errors import ConfigurationError, UnprocessableFrameError

__all__ = ["add_solve_command", "cmd_solve", "solved_path"]

log = logging.getLogger(__name__)

DESCRIPTION = """\
Detect sources (SEP) and solve the astrometry (astrometry.net, then a TAN-SIP distortion fit
against every matched reference star) of calibrated images, with the same settings as the
science chain, and write each result to a NEW file next to the input (never in place):
NAME-solved.fits.fz with SCI (the WCS and the status cards ASTSTAT, ASTREASN, WCSNMAT, WCSRMS,
WCSSIPO in its header), BPM, ERR when the input has one, and the CAT source table (RA/DEC
filled when solved). With --refcat FILE (a reference catalogue) the zero point L1ZP and MAG/MAGERR
columns too.

Inputs: this project's products (re-solve them when better index files arrive), or any reduced
FITS image (first 2-D image HDU) whose header gives RA/DEC (degrees, or sexagesimal with RA in
hours) and PIXSCALE (arcsec per pixel). Index files: --index-dir (default /usr/share/astrometry;
real 0.3-1"/px Sinistro fields need the Gaia-based 5200 or 2MASS 4100 series, see
docs/astrometry.rst).

Exit status: 0 when every file was solved, 1 when any was not (or could not be read), 2 on a
configuration error (astrometry.net or its index files missing)."""


def add_solve_command(
    add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser
) -> Callable[[argparse.Namespace, Settings], int]:
    """Add the ``solve`` subcommand with ``add(name, help, description)``; returns its handler."""
    del common
    p = add("solve", "catalogue and WCS for calibrated images (written to a new file)",
            DESCRIPTION)  # fmt: skip
    p.add_argument("files", nargs="+", metavar="FILE", help="calibrated FITS images")
    p.add_argument("--output-dir", metavar="DIR",
                   help="write the solved files here instead of next to each input")  # fmt: skip
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up on a field after this long (default: %(default)g)")  # fmt: skip
    p.add_argument(
        "--sip-order",
        type=int,
        default=3,
        metavar="N",
        help="order of the SIP distortion fit, 0 for none (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true",
                   help="print a JSON array: one object per file {path, output, status, reason, "
                        "n_sources, n_matched, rms_arcsec, sip_order, elapsed_s}")  # fmt: skip
    return cmd_solve


def solved_path(path: Path, output_dir: Path | None = None) -> Path:
    """``x.fits[.fz|.gz]`` -> ``x-solved.fits.fz``, next to ``path`` or in ``output_dir``."""
    name = path.name
    for suffix in (".fz", ".gz", ".fits", ".fit", ".fts"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return (output_dir or path.parent) / f"{name}-solved.fits.fz"


def _round(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


def cmd_solve(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.cli import _print_json
    from pylcogt.io.images import read_calibrated_image
    from pylcogt.io.products import write_product
    from pylcogt.photometry.config import PhotometryConfig
    from pylcogt.science import astrometry_config, catalog_and_wcs

    if settings.index_dir is None:
        raise ConfigurationError("pylcogt solve needs astrometry: --index-dir is 'none'")
    if not args.timeout > 0:
        raise ConfigurationError(f"--timeout must be > 0, got {args.timeout}")
    config = astrometry_config(settings.index_dir, timeout_s=args.timeout,
                               sip_order=args.sip_order)  # fmt: skip
    output_dir = Path(args.output_dir).resolve() if args.output_dir else None
    results = []
    for n, name in enumerate(args.files, start=1):
        path = Path(name).resolve()
        out = solved_path(path, output_dir)
        entry: dict = {"path": str(path), "output": None}
        try:
            if out == path:
                raise UnprocessableFrameError(f"{path}: refusing to write over the input")
            frame = read_calibrated_image(path)
            photometry = PhotometryConfig(bright_mag=settings.refcat_bright_mag)
            science = catalog_and_wcs(frame, config, refcat=settings.refcat, photometry=photometry)
            write_product(out, science.frame, catalog=science.catalog)
        except (UnprocessableFrameError, OSError, ValueError) as exc:
            entry.update(status="error", reason=str(exc))
        else:
            s = science.solution
            entry.update(output=str(out), status=s.status, reason=s.reason,
                         n_sources=len(science.catalog), n_matched=s.n_matched,
                         rms_arcsec=_round(s.rms_arcsec), sip_order=s.sip_order,
                         elapsed_s=round(s.elapsed_s, 2))  # fmt: skip
        results.append(entry)
        if not args.json:
            _print_entry(entry, n, len(args.files))
    if args.json:
        _print_json(results)
    return 0 if all(r["status"] == "solved" for r in results) else 1


def _print_entry(entry: dict, n: int, total: int) -> None:
    prefix = f"[{n}/{total}] {Path(entry['path']).name}"
    if entry["status"] == "error":
        print(f"{prefix}: not read: {entry['reason']}", file=sys.stderr)
        return
    if entry["status"] == "solved":
        text = (f"solved, {entry['n_matched']} stars matched, rms {entry['rms_arcsec']}\", "
                f"SIP order {entry['sip_order']}")  # fmt: skip
    else:
        text = f"not solved: {entry['reason']}"
    print(f"{prefix}: {entry['n_sources']} sources; {text} ({entry['elapsed_s']} s) -> "
          f"{entry['output']}")  # fmt: skip
