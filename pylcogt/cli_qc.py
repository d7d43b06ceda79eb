"""``pylcogt qc NIGHT``: quality-control pictures and one HTML page for an observing night.
Parsing and output only; the work is in :mod:`pylcogt.qc.night`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pylcogt.config import Settings
from pylcogt.errors import ConfigurationError

__all__ = ["add_qc_command", "cmd_qc"]

DESCRIPTION = """\
Write the quality-control pictures of one observing night (DAY-OBS) and one page that shows
them with their numbers, from what the registry holds:

  each master made that night   PNG preview: the image with a robust stretch, the histogram of
                                its good pixels, the median row and column profiles; its
                                numbers (median, 3.5-rstd clipped mean, rstd = 1.4826 MAD,
                                median ERR, flagged pixels, BIASLVL for a bias); the frames of
                                its group left out of it and why; and the comparison with the
                                previous good master of the same kind (difference for bias and
                                dark, ratio for flats; the rstd of the difference over its
                                expected noise is ~1 when the two agree)
  each reduced science frame    thumbnail with the detected sources and the astrometric
                                residual vectors, the residuals on the sky; sources, FWHM, sky,
                                cosmic-ray pixels, WCS status and rms, zero point
  the whole night               FWHM, sky, zero point and WCS rms of every reduced frame
                                against time (night-trends.png)
  science frames not reduced    their state and why

DIR/index.html is self-contained: inline style, no script, nothing from the network; the PNG
files and qc.json (the same numbers, for scripts) sit beside it. Running it again rewrites the
same files (and deletes its own pictures that the page no longer shows). Exit status: 0 when
the page was written, 1 when some product could not be read (it is listed on the page), 2 for a
usage or configuration error (an unknown camera, no registry at the URL, an unusable output
directory), 3 when the database cannot be reached."""


def add_qc_command(
    add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser
) -> Callable[[argparse.Namespace, Settings], int]:
    """Add the ``qc`` subcommand with ``add(name, help, description)``; returns its handler."""
    del common
    p = add("qc", "quality-control pictures and an HTML page for one night", DESCRIPTION)
    p.add_argument("night", metavar="NIGHT",
                   help="the observing night, DAY-OBS: YYYYMMDD (or YYYY-MM-DD)")
    p.add_argument("--instrument", metavar="CAM",
                   help="only this camera (INSTRUME, e.g. fa03); default: every camera")
    p.add_argument("--output", metavar="DIR",
                   help="directory for index.html, qc.json and the PNG files (created; "
                        "default: ./qc-NIGHT)")  # fmt: skip
    p.add_argument("--json", action="store_true",
                   help="print the page's numbers as one JSON object (the content of qc.json; "
                        "the files are written as well)")
    return cmd_qc


def _require_registry(url: str) -> None:
    """A read-only command must not create an empty SQLite registry from a mistyped URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""
    on_disk = parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:")
    if on_disk and not Path(database).exists():
        raise ConfigurationError(
            f"there is no registry at {database}: check --database-url (or "
            f"PYLCOGT_DATABASE_URL); `pylcogt qc` reads an existing registry"
        )


def cmd_qc(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.cli import _maker, _parse_night, _print_json, _stderr_progress
    from pylcogt.qc.night import night_report

    try:
        night = _parse_night(args.night)
    except argparse.ArgumentTypeError as exc:
        print(f"pylcogt qc: error: {exc}", file=sys.stderr)
        return 2
    output = Path(args.output or f"qc-{night:%Y%m%d}").resolve()
    _require_registry(settings.database_url)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"pylcogt qc: error: cannot use {output} for the page: {exc}", file=sys.stderr)
        return 2
    show, done = _stderr_progress(not args.quiet)
    maker = _maker(settings)
    with maker() as session:
        if args.instrument:
            from sqlalchemy import select

            from pylcogt.db.models import Instrument

            known = session.scalars(select(Instrument.camera)).all()
            if args.instrument not in known:
                print(f"pylcogt qc: error: no instrument {args.instrument!r} is registered "
                      f"(known: {', '.join(sorted(set(known))) or 'none'})",
                      file=sys.stderr)  # fmt: skip
                return 2
        report = night_report(session, night, output, camera=args.instrument,
                              database=settings.safe_database_url, progress=show)  # fmt: skip
    done()
    if args.json:
        _print_json(report.data)
    else:
        s = report.data["summary"]
        print(f"night {night:%Y%m%d}: {s['masters']} masters, {s['frames_reduced']} reduced frames "
              f"({s['frames_solved']} with a WCS, {s['frames_with_zeropoint']} with a zero point),"
              f" {s['frames_not_reduced']} not reduced")  # fmt: skip
        if not (s["masters"] or s["frames_reduced"] or s["frames_not_reduced"]):
            print(f"nothing is registered for night {night:%Y%m%d}"
                  + (f" and camera {args.instrument}" if args.instrument else ""))
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
        print(f"page: {report.page}")
    return 1 if report.errors else 0
