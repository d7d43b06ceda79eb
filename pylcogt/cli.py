"""The ``pylcogt`` command: argument parsing and output only; the work is done elsewhere."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from astropy.io.fits.verify import VerifyError
from sqlalchemy.exc import OperationalError

from pylcogt import (
    __version__,
    cli_backfill,
    cli_calibrations,
    cli_qc,
    cli_refcat,
    cli_solve,
    cli_worker,
)
from pylcogt.config import (
    CROSSTALK_FILE_ENV,
    DATA_DIR_ENV,
    DATABASE_URL_ENV,
    INDEX_DIR_ENV,
    REFCAT_BRIGHT_ENV,
    REFCAT_ENV,
    Settings,
    load_settings,
)
from pylcogt.db.models import FrameState
from pylcogt.errors import (
    ConfigurationError,
    ExternalToolError,
    PylcogtError,
    UnprocessableFrameError,
    one_line,
)

__all__ = ["main", "build_parser"]

log = logging.getLogger("pylcogt")

EPILOG = f"""\
environment (a CLI option overrides its variable):
  {DATABASE_URL_ENV}   registry database, an SQLAlchemy URL
                         (default: sqlite:///pylcogt.db in the current directory;
                          production: postgresql+psycopg2://user:password@host/dbname)
  {DATA_DIR_ENV}       where reduced frames and master calibrations are written
                         (default: ./pylcogt-data)
  {CROSSTALK_FILE_ENV} Sinistro crosstalk table for frames without CRSTLKij
  {INDEX_DIR_ENV}      astrometry.net index files (default: /usr/share/astrometry;
                         'none': no astrometry; see docs/astrometry.rst)
  {REFCAT_ENV}         reference catalogue file for zero points (default: the
                         catalogues loaded with `pylcogt refcat load`)
  {REFCAT_BRIGHT_ENV} reference stars brighter than this are not used (default 14.0;
                         'none': all)

machine-readable output: every --json prints one JSON value on stdout and nothing else
(the one streaming exception: `ingest --watch --json` prints one JSON object per line, per file);
logs and progress go to stderr. Exit status: 0 when the command did its job (even if some
inputs were rejected: they are in the output), 1 when a check failed or an input file cannot
be used (the reason on one line, no traceback), 2 for a usage or configuration error, 3 when
the database cannot be reached.
"""


# --- output helpers -----------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=_jsonable, indent=1) + "\n")


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    text = [
        [
            (
                ""
                if r.get(c) is None
                else str(_jsonable(r[c]) if not isinstance(r[c], (str, int, float)) else r[c])
            )
            for c in columns
        ]
        for r in rows
    ]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for t in text:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)).rstrip())


def _stderr_progress(enabled: bool):
    """A one-line progress display on stderr, only when stderr is a terminal."""
    if not (enabled and sys.stderr.isatty()):
        return None, lambda: None

    def show(text: str) -> None:
        sys.stderr.write("\r\033[K" + text[:150])
        sys.stderr.flush()

    def done() -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()

    return show, done


def _parse_night(text: str) -> dt.date:
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a night: use YYYYMMDD or YYYY-MM-DD")


# --- commands -----------------------------------------------------------------------------
def _maker(settings: Settings, *, ensure: bool = True):
    from pylcogt.db.migrate import ensure_schema
    from pylcogt.db.session import get_sessionmaker

    if ensure:
        ensure_schema(settings.database_url)
    return get_sessionmaker(settings.database_url)


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.db import migrate

    url = settings.database_url
    if args.db_command == "upgrade":
        before = migrate.current_revision(url)
        migrate.upgrade(url, args.revision)
        after = migrate.current_revision(url)
        result = {"database": settings.safe_database_url, "from": before, "to": after}
        if args.json:
            _print_json(result)
        else:
            print(f"{settings.safe_database_url}: {before or 'empty'} -> {after}")
        return 0
    if args.db_command == "downgrade":
        before = migrate.current_revision(url)
        migrate.downgrade(url, args.revision)
        after = migrate.current_revision(url)
        if args.json:
            _print_json({"database": settings.safe_database_url, "from": before, "to": after})
        else:
            print(f"{settings.safe_database_url}: {before or 'empty'} -> {after or 'empty'}")
        return 0
    if args.db_command == "current":
        current, head = migrate.current_revision(url), migrate.head_revision()
        result = {
            "database": settings.safe_database_url,
            "current": current,
            "head": head,
            "up_to_date": current == head,
        }
        if args.json:
            _print_json(result)
        else:
            state = "up to date" if current == head else "run `pylcogt db upgrade`"
            print(
                f"{settings.safe_database_url}: revision {current or 'none'} (head {head}, {state})"
            )
        return 0
    # check
    diffs = migrate.schema_differences(url)
    if args.json:
        _print_json(
            {"database": settings.safe_database_url, "differences": [str(d) for d in diffs]}
        )
    elif diffs:
        print("the database schema differs from the models:")
        for diff in diffs:
            print(f"  {diff}")
    else:
        print("the database schema matches the models")
    return 1 if diffs else 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.ingest import ingest_paths

    if args.watch:
        from pylcogt.watch import cmd_watch

        return cmd_watch(args, settings)
    if not args.paths:
        raise ConfigurationError("give the PATHs to ingest, or --watch DIR")
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise ConfigurationError(f"no such file or directory: {', '.join(missing)}")
    maker = _maker(settings)
    show, done = _stderr_progress(not args.quiet)

    def progress(n, result) -> None:
        if show:
            show(f"[{n}] {result.status:9s} {Path(result.path).name}")

    try:
        report = ingest_paths(maker, args.paths, progress=progress)
    finally:
        done()
    counts = report.counts()
    if args.json:
        _print_json(report.to_json())
        return 0
    for result in report.results:
        if result.status == "rejected":
            print(f"rejected  {result.path}: {result.reason}")
    summary = ", ".join(f"{counts[k]} {k}" for k in ("new", "unchanged", "updated", "rejected"))
    extra = f" ({counts['ignored']} non-FITS files ignored)" if counts["ignored"] else ""
    print(f"ingested {len(report.results)} files: {summary}{extra}")
    if report.conflicts():
        print(f"{len(report.conflicts())} conflicts (same exposure key, different header facts "
              f"or pixels): an operator must decide which file is right; see 'conflicts with' "
              f"above")  # fmt: skip
    return 0


def _frame_row(frame) -> dict[str, Any]:
    inst = frame.instrument
    return {
        "id": frame.id,
        "path": frame.path,
        "obstype": frame.obstype,
        "instrument": inst.camera if inst else None,
        "site": inst.site.code if inst else None,
        "dateobs": frame.dateobs,
        "dayobs": frame.dayobs,
        "filter": frame.filter_name,
        "binning": frame.binning,
        "readout_mode": frame.readout_mode,
        "exptime": frame.exptime_s,
        "state": frame.state.value,
        "attempts": frame.attempts,
        "error": frame.last_error,
        "product_path": frame.product_path,
        "checksum": frame.checksum,
    }


def cmd_frames(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.db import repo

    with _maker(settings)() as session:
        frames = repo.list_frames(
            session,
            state=args.state,
            obstype=args.obstype,
            instrument=args.instrument,
            night=args.night,
            limit=args.limit,
        )
        rows = [_frame_row(f) for f in frames]
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            row["file"] = Path(row["path"]).name
            row["dateobs"] = (
                row["dateobs"].isoformat(timespec="seconds") if row["dateobs"] else None
            )
        columns = [
            "id",
            "file",
            "obstype",
            "instrument",
            "site",
            "dayobs",
            "dateobs",
            "filter",
            "binning",
            "exptime",
            "state",
            "error",
        ]
        _print_table(rows, columns)
    return 0


def _set_instrument(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from pylcogt.config import DEFAULT_MIN_INPUTS, format_min_inputs, parse_min_inputs
    from pylcogt.db.models import Instrument
    from pylcogt.db.session import writer

    if args.clear_min_inputs == bool(getattr(args, "min_inputs", None)):
        raise ConfigurationError("give either --min-inputs TYPE=N,... or --clear-min-inputs")
    value = None if args.clear_min_inputs else format_min_inputs(parse_min_inputs(args.min_inputs))
    # what applies to the camera now: its own value, else the environment's, else the default
    settings = load_settings(settings.database_url, settings.data_dir)
    with writer(_maker(settings))() as session:
        rows = session.scalars(select(Instrument).where(Instrument.camera == args.camera)).all()
        if not rows:
            raise ConfigurationError(
                f"no instrument {args.camera!r} is registered; ingest its frames first")
        for inst in rows:
            inst.min_inputs = value
        session.commit()
        result = [{"id": inst.id, "camera": inst.camera, "min_inputs": value,
                   "effective": {t: settings.min_inputs_for(t, value) for t in DEFAULT_MIN_INPUTS}}
                  for inst in rows]  # fmt: skip
    if args.json:
        _print_json(result)
    else:
        for r in result:
            used = ",".join(f"{k}={v}" for k, v in r["effective"].items())
            print(f"{r['camera']} (instrument {r['id']}): min inputs "
                  f"{r['min_inputs'] or 'not set (global)'}; in effect {used}")
    return 0


def cmd_instruments(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.db import repo

    if args.instruments_command == "set":
        return _set_instrument(args, settings)

    with _maker(settings)() as session:
        rows = [
            {
                "id": inst.id,
                "site": inst.site.code,
                "enclosure": inst.enclosure,
                "telescope": inst.telescope,
                "telescope_name": inst.telescope_name,
                "camera": inst.camera,
                "family": inst.family.value,
                "nx": inst.nx,
                "ny": inst.ny,
                "n_amplifiers": inst.n_amplifiers,
                "min_inputs": inst.min_inputs,
                "n_frames": n,
            }
            for inst, n in repo.list_instruments(session)
        ]
    if args.json:
        _print_json(rows)
    else:
        _print_table(
            rows,
            [
                "id",
                "site",
                "enclosure",
                "telescope",
                "camera",
                "family",
                "nx",
                "ny",
                "n_amplifiers",
                "n_frames",
            ],
        )
    return 0


def _simulate(args: argparse.Namespace, outdir: Path):
    from pylcogt.simulate import simulate_night

    if args.pixscale is not None and not 0 < args.pixscale < float("inf"):
        raise ConfigurationError(f"--pixscale must be a positive number, got {args.pixscale}")
    if args.distortion is not None and not abs(args.distortion) < float("inf"):
        raise ConfigurationError(f"--distortion must be a number, got {args.distortion}")
    show, done = _stderr_progress(not args.quiet)

    def progress(i: int, n: int, name: str) -> None:
        if show:
            show(f"simulating [{i}/{n}] {name}")

    try:
        return simulate_night(
            outdir,
            camera=args.camera,
            size=args.size,
            seed=args.seed,
            dayobs=args.night,
            site=args.site,
            n_bias=args.n_bias,
            n_dark=args.n_dark,
            n_flat=args.n_flat,
            n_science=args.n_science,
            filters=tuple(args.filters.split(",")),
            compress=args.compress,
            progress=progress,
            stars=args.stars,
            index_dir=args.index_dir or os.environ.get(INDEX_DIR_ENV),  # the global option
            pixscale=args.pixscale,
            distortion=args.distortion,
            faint_stars=not args.no_faint_stars,
        )
    finally:
        done()


def cmd_simulate(args: argparse.Namespace, _settings: Settings) -> int:
    night = _simulate(args, Path(args.outdir))
    result = {
        "outdir": night.outdir,
        "camera": night.camera,
        "instrument": night.instrument,
        "files": [str(f) for f in night.files],
        "truth": night.truth_path,
    }
    if args.json:
        _print_json(result)
    else:
        print(
            f"wrote {len(night.files)} raw {night.camera} frames ({night.instrument}) and "
            f"{night.truth_path.name} to {night.outdir}"
        )
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.demo import run_demo

    cameras = tuple(c.strip() for c in args.camera.split(",") if c.strip())
    show, done = _stderr_progress(not args.quiet)
    try:
        report = run_demo(
            settings, Path(args.dir), cameras=cameras, progress=show,
            simulation={"size": args.size, "seed": args.seed, "dayobs": args.night,
                        "site": args.site, "n_bias": args.n_bias, "n_dark": args.n_dark,
                        "n_flat": args.n_flat, "n_science": args.n_science,
                        "filters": tuple(args.filters.split(",")), "compress": args.compress},
        )  # fmt: skip
    finally:
        done()
    if args.json:
        _print_json(report)
        return 0
    ingest, work = report["ingest"], report["worker"]
    for cam in report["cameras"]:
        print(f"simulated {cam['frames']} {cam['camera']} frames ({cam['instrument']}) in "
              f"{cam['raw_dir']}")  # fmt: skip
    print(
        f"ingested into {report['database']}: "
        + ", ".join(f"{ingest[k]} {k}" for k in ("new", "unchanged", "updated", "rejected"))
    )
    print(f"worker: {work['processed']} frames processed, {work['masters_built']} masters built, "
          f"{work['failed']} failed")  # fmt: skip
    print("registry: " + ", ".join(f"{n} {s}" for s, n in sorted(report["states"].items())))
    print(f"masters ({len(report['masters'])}):")
    for m in report["masters"]:
        label = f"{m['type']} {m['filter']}".strip()
        print(f"  {m['id']:3d} {m['instrument']:5s} {label:12s} {m['n_inputs']:3d} inputs  "
              f"{Path(m['path']).name}")  # fmt: skip
    print(f"reduced frames ({len(report['reduced'])}):")
    for r in report["reduced"]:
        print(f"  {Path(r['path']).name} -> {r['product']}")
        sci = r.get("science")
        if sci and sci.get("n_sources") is not None:
            wcs = (f"WCS solved, rms {sci['wcs_rms_arcsec']}\"" if sci["wcs"] == "solved"
                   else f"no WCS: {str(sci['wcs_reason']).split(': ')[0]}")  # fmt: skip
            print(f"      {sci['n_sources']} sources, {sci['cosmic_ray_pixels']} cosmic-ray "
                  f"pixels; {wcs}")  # fmt: skip
    for f in report["failures"]:
        print(f"failed: {Path(f['path']).name}: {f['error']}")
    prov = report["provenance"]
    if prov:
        reduction = prov.get("reduction") or {}
        print(f"provenance of {Path(prov['frame']['path']).name} (reduction "
              f"{reduction.get('id')}, {reduction.get('calibration_status')}: "
              f"{reduction.get('reason')}):")  # fmt: skip
        for used in prov["masters"]:
            m = used["master"]
            print(f"  {used['role']:5s} master {m['id']} v{m['version']} {m['standing']} "
                  f"({Path(m['path']).name}) from {len(used['inputs'])} raw frames, sha256 "
                  f"{m['checksum'][:12]}..")  # fmt: skip
    unsolved = [r for r in report["reduced"] if (r.get("science") or {}).get("wcs") == "failed"]
    if unsolved:
        hint = "Gaia 5200 or 2MASS 4100, --index-dir; docs/astrometry.rst"
        print(f"astrometry: these fields need smaller-scale index files ({hint}); the README "
              "has a wide field that solves")  # fmt: skip
    print(f"quality-control page (open it in a browser): {report['qc_page']}")
    for error in report["qc_errors"]:
        print(f"quality control: {error}")
    print("next: `pylcogt provenance FRAME`, `pylcogt calibrations list`, `pylcogt frames list`, "
          "`pylcogt qc NIGHT`")
    return 0


def cmd_reduce(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.db import repo
    from pylcogt.ingest import ingest_paths
    from pylcogt.reduce import reduce_frame

    missing = [p for p in args.files if not Path(p).is_file()]
    if missing:
        raise ConfigurationError(f"no such file: {', '.join(missing)}")
    maker = _maker(settings)
    as_of = _parse_time(args.as_of) if args.as_of else None
    output_dir = None
    if args.output_dir:
        output_dir = Path(args.output_dir).expanduser().resolve()
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot use --output-dir {args.output_dir}: {exc}") from None
    ingested = ingest_paths(
        maker, args.files
    )  # idempotent: registers files seen for the first time
    results = []
    for entry in ingested.results:
        if entry.state == "rejected":
            results.append({"path": entry.path, "state": "rejected", "error": entry.reason})
            continue
        with maker() as session:
            frame = repo.frame_by_path(session, entry.path)
        try:
            outcome = reduce_frame(maker, settings, frame.id, as_of=as_of,
                                   output_dir=output_dir)  # fmt: skip
        except PylcogtError as exc:
            results.append({"path": entry.path, "state": "skipped", "error": str(exc)})
            continue
        results.append({
            "path": outcome.path, "state": outcome.state, "product": outcome.product_path,
            "error": outcome.error, "masters": outcome.masters, "n_sources": outcome.n_sources,
            "wcs": outcome.wcs, "reduction_id": outcome.reduction_id,
            "calibration_status": outcome.calibration_status,
            "recorded": output_dir is None,
        })  # fmt: skip
    if args.json:
        _print_json(results)
    else:
        for r in results:
            state = r["state"] if r.get("recorded", True) else "reproduced"
            print(
                f"{state:20s} {Path(r['path']).name}"
                + (f" -> {r['product']}" if r.get("product") else "")
                + (f" ({r['n_sources']} sources, WCS {r['wcs']}, {r['calibration_status']})"
                   if r.get("wcs") else "")
            )  # fmt: skip
            for role, m in (r.get("masters") or {}).items():
                print(f"  {role:5s} master {m['id']}: {m['path']} (sha256 {m['checksum'][:16]}..)")
            if r.get("error"):
                print(f"  {one_line(r['error'])}")
    return 1 if any(r["state"] in ("rejected", "failed", "skipped") for r in results) else 0


def _parse_time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"{text!r} is not an ISO time (e.g. 2026-11-29T12:00:00)"
        ) from None
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import literal as sa_literal
    from sqlalchemy import select

    from pylcogt import lifecycle
    from pylcogt.calibrations.build import GroupKey, build_bpm_master, build_master
    from pylcogt.db.models import Instrument, MasterCalibration, RawFrame, current_master

    obstype = {"bias": "BIAS", "dark": "DARK", "skyflat": "SKYFLAT", "bpm": "BPM"}[args.type]
    maker = _maker(settings)
    with maker() as session:
        instruments = session.scalars(
            select(Instrument).where(Instrument.camera == args.instrument.lower())
        ).all()
        if not instruments:
            raise ConfigurationError(
                f"no instrument {args.instrument!r} is registered; ingest its frames first"
            )
        ids = [i.id for i in instruments]
        if obstype == "BPM":  # derived from the night's master darks and flats
            query = (
                select(MasterCalibration.instrument_id, MasterCalibration.binning,
                       MasterCalibration.readout_mode, sa_literal(""))
                .where(MasterCalibration.instrument_id.in_(ids),
                       MasterCalibration.dayobs == args.night,
                       MasterCalibration.obstype.in_(["DARK", "SKYFLAT"]),
                       current_master(MasterCalibration))
                .distinct()
            )  # fmt: skip
        else:
            query = (
                select(RawFrame.instrument_id, RawFrame.binning, RawFrame.readout_mode,
                       RawFrame.filter_name)
                .where(RawFrame.instrument_id.in_(ids), RawFrame.dayobs == args.night,
                       RawFrame.obstype == obstype, RawFrame.state != FrameState.REJECTED)
                .distinct()
            )  # fmt: skip
        groups = set()
        for inst_id, binning, mode, filt in session.execute(query):
            if args.binning and binning != args.binning:
                continue
            if obstype == "SKYFLAT" and args.filter and filt != args.filter:
                continue
            groups.add(GroupKey(inst_id, args.night, obstype, binning, mode or "",
                                filt if obstype == "SKYFLAT" else ""))  # fmt: skip
    if not groups:
        raise ConfigurationError(
            f"no registered {'master darks or flats' if obstype == 'BPM' else obstype + ' frames'}"
            f" of {args.instrument} on {args.night:%Y%m%d}"
            + (f" in filter {args.filter}" if args.filter else "")
        )
    show, done = _stderr_progress(not args.quiet)
    results = []
    try:
        for key in sorted(
            groups, key=lambda g: (g.instrument_id, g.binning, g.readout_mode, g.filter_name)
        ):
            try:
                built = (
                    build_bpm_master(maker, settings, key, fence=lifecycle.begin_record)
                    if obstype == "BPM"
                    else build_master(maker, settings, key, progress=show,
                                      fence=lifecycle.begin_record)
                )
            except PylcogtError as exc:
                results.append({"type": obstype, "filter": key.filter_name, "binning": key.binning,
                                "error": str(exc)})  # fmt: skip
                continue
            results.append({"type": obstype, "filter": key.filter_name, "binning": key.binning,
                            "readout_mode": key.readout_mode, "master_id": built.master_id,
                            "path": built.path, "n_inputs": built.n_inputs,
                            "dropped": built.dropped, "level": built.level,
                            "unchanged": built.unchanged, "promoted": built.promoted,
                            "calibration_status": built.calibration_status,
                            "supersedes": built.superseded})  # fmt: skip
    finally:
        done()
    if args.json:
        _print_json(results)
    else:
        for r in results:
            label = f"{r['type']} {r['binning']}" + (f" {r['filter']}" if r["filter"] else "")
            if "error" in r:
                print(f"{label}: not built: {r['error']}")
                continue
            if r["unchanged"]:
                print(f"{label}: master {r['master_id']} already holds these frames"
                      + (" (now final)" if r["promoted"] else "") + f": {r['path']}")
                continue
            also = f", supersedes master {r['supersedes']}" if r["supersedes"] else ""
            print(f"{label}: master {r['master_id']} ({r['calibration_status']}{also}) from "
                  f"{r['n_inputs']} frames -> {r['path']}")
            for name, why in r["dropped"].items():
                print(f"  left out {name}: {why}")
    return 0 if all("error" not in r for r in results) else 1


def cmd_night(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.db.clock import db_now
    from pylcogt.db.session import writer
    from pylcogt.nights import close_night

    maker = _maker(settings)
    with writer(maker)() as session:
        try:
            closed = close_night(session, args.night, cameras=args.instrument, reason=args.reason,
                                 now=db_now(session))  # fmt: skip
        except LookupError as exc:
            raise ConfigurationError(str(exc)) from None
        session.commit()
    rows = [{"instrument": camera, "night": args.night.isoformat(), "closed_at": when,
             "newly_closed": new} for camera, when, new in closed]  # fmt: skip
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no instrument has frames on {args.night:%Y%m%d}: nothing to close")
    for r in rows:
        state = "closed" if r["newly_closed"] else "already closed"
        when = f"{r['closed_at']:%Y-%m-%d %H:%M:%S}"
        print(f"{r['instrument']} {args.night:%Y%m%d}: {state} at {when} UTC; the worker now "
              "builds its final masters")
    return 0


# --- parser -------------------------------------------------------------------------------
def _common(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted both before and after the subcommand."""
    default = argparse.SUPPRESS if suppress else None
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("configuration")
    group.add_argument(
        "--database-url",
        metavar="URL",
        default=default,
        help=f"registry database (env {DATABASE_URL_ENV}; default sqlite:///pylcogt.db)",
    )
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        default=default,
        help=f"where products and masters are written (env {DATA_DIR_ENV}; default ./pylcogt-data)",
    )
    group.add_argument(
        "--crosstalk-file",
        metavar="FILE",
        default=default,
        help=f"Sinistro crosstalk table for frames without CRSTLKij (env {CROSSTALK_FILE_ENV})",
    )
    group.add_argument(
        "--index-dir",
        metavar="DIR",
        default=default,
        help=f"astrometry.net index files: the WCS of science frames, and the stars of "
        f"`simulate --stars tycho2` (env {INDEX_DIR_ENV}; default /usr/share/astrometry, from "
        "Debian's astrometry-data-* packages; 'none': no astrometry)",
    )
    group.add_argument(
        "--refcat",
        metavar="FILE",
        default=default,
        help=f"reference catalogue (FITS/CSV, Pan-STARRS 1 columns) for the zero points (env "
        f"{REFCAT_ENV}; default: the catalogues loaded with `pylcogt refcat load`)",
    )
    group.add_argument(
        "--min-inputs",
        metavar="TYPE=N,...",
        default=default,
        help="fewest usable frames a master is built from, per type, e.g. "
        "BIAS=3,DARK=3,SKYFLAT=3, or one number for every type (env PYLCOGT_MIN_INPUTS; "
        "default BIAS=5,DARK=3,SKYFLAT=3; an instrument's own value, set with `pylcogt "
        "instruments set`, wins)",
    )
    group.add_argument(
        "--keep-products",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="when a frame is reduced again, keep the superseded product in "
        "processed/superseded/ (env PYLCOGT_KEEP_PRODUCTS=1; default: replace it; the reduction "
        "history keeps every product's checksum and masters either way)",
    )

    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if suppress else 0,
        help="more log output on stderr (-vv for debug)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="only errors on stderr; no progress display",
    )
    return parent


def _camera_list(text: str) -> str:
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in ("sinistro", "sbig", "spectral")]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"cameras are sinistro, sbig, spectral; got {text!r}")
    return ",".join(names)


def _add_simulation_options(
    parser: argparse.ArgumentParser, *, size: int | None, n_bias: int, cameras: str | None = None
) -> None:
    if cameras is None:
        parser.add_argument(
            "--camera",
            choices=["sinistro", "sbig", "spectral"],
            default="sinistro",
            help="camera family to simulate (default: %(default)s)",
        )
    else:
        parser.add_argument(
            "--camera",
            type=_camera_list,
            default=cameras,
            help="comma-separated camera families, one night each (default: %(default)s)",
        )
    parser.add_argument(
        "--size",
        type=int,
        default=size,
        help="light-sensitive detector width in unbinned pixels (default: "
        + ("4096, the real size" if size is None else str(size))
        + ")",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--night", default="20261128", help="DAY-OBS, YYYYMMDD (default: %(default)s)"
    )
    parser.add_argument("--site", default="lsc", help="SITEID (default: %(default)s)")
    parser.add_argument(
        "--n-bias",
        type=int,
        default=n_bias,
        help="biases per set, afternoon and morning (default: %(default)s)",
    )
    parser.add_argument(
        "--n-dark", type=int, default=3, help="darks per set (default: %(default)s)"
    )
    parser.add_argument(
        "--n-flat",
        type=int,
        default=3,
        help="sky flats per twilight and filter (default: %(default)s)",
    )
    parser.add_argument(
        "--n-science", type=int, default=3, help="science frames per filter (default: %(default)s)"
    )
    parser.add_argument(
        "--filters", default="rp,V", help="comma-separated filters (default: %(default)s)"
    )
    parser.add_argument(
        "--compress",
        choices=["none", "fz", "gz"],
        default="none",
        help="write .fits, tile-compressed .fits.fz or .fits.gz (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)
    parser = argparse.ArgumentParser(
        prog="pylcogt",
        description="Reduction service for LCO CCD frames: registry, ingest, masters, reduction, "
        "the worker service and provenance.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"pylcogt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=description or help_text,
            parents=[common],
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    db = add("db", "manage the registry schema (alembic migrations shipped with pylcogt)")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    p = db_sub.add_parser(
        "upgrade", help="bring the database to the newest schema (idempotent)", parents=[common]
    )
    p.add_argument("--revision", default="head", help="target revision (default: head)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p = db_sub.add_parser(
        "downgrade",
        help="go back to an older schema revision ('base' empties it)",
        parents=[common],
    )
    p.add_argument("revision", help="target revision, e.g. base or -1")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p = db_sub.add_parser("current", help="show the database's schema revision", parents=[common])
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p = db_sub.add_parser(
        "check",
        help="compare the database with the models (exit 1 if they differ)",
        parents=[common],
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")

    p = add(
        "ingest",
        "register raw frames (files or directories, recursively)",
        "Register raw frames. Files are checked for completeness and required keywords; "
        "unusable ones are recorded as 'rejected' with the reason. Re-ingesting an unchanged "
        "file changes nothing; a file whose content changed is re-registered and reset to pending. "
        "An exposure (site, camera, night, frame number) is registered once: another file of it "
        "(x.fits.fz beside x.fits, a copy elsewhere) is rejected as a duplicate naming the first, "
        "or as a conflict for an operator when its pixels or header facts differ. "
        "Directories are searched recursively for *.fits, *.fits.fz and *.fits.gz. "
        "With --watch DIR, keeps ingesting files as they arrive until SIGTERM or Ctrl-C (exit 0): "
        "a file is taken once its size and modification time have not changed for --settle "
        "seconds, so a file still being written is never taken (nor rejected) early.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="raw frame files or directories")
    p.add_argument("--watch", action="append", metavar="DIR", default=[],
                   help="poll DIR (recursively; repeatable) and ingest new or changed files "
                        "until stopped")  # fmt: skip
    p.add_argument("--interval", type=float, default=5.0, metavar="SECONDS",
                   help="with --watch: seconds between scans (default: %(default)g)")  # fmt: skip
    p.add_argument("--settle", type=float, default=2.0, metavar="SECONDS",
                   help="with --watch: a file is taken once unchanged for this long "
                        "(default: %(default)g)")  # fmt: skip
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: {summary: {new, unchanged, updated, rejected, ignored},"
        " files: [...]}; with --watch, the one streaming exception: one JSON object per line,"
        " per file recorded (new, updated or rejected), as it happens",
    )

    frames = add("frames", "list registered raw frames")
    f_sub = frames.add_subparsers(dest="frames_command", required=True, metavar="ACTION")
    p = f_sub.add_parser("list", help="list raw frames, oldest first", parents=[common])
    p.add_argument(
        "--state", choices=[s.value for s in FrameState], help="only frames in this state"
    )
    p.add_argument("--obstype", help="only this OBSTYPE (BIAS, DARK, SKYFLAT, EXPOSE, STANDARD)")
    p.add_argument("--instrument", help="only this camera, e.g. fa15")
    p.add_argument("--night", type=_parse_night, help="only this DAY-OBS (YYYYMMDD)")
    p.add_argument("--limit", type=int, help="at most this many rows")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per frame")

    inst = add("instruments", "list instruments (created automatically on ingest)")
    i_sub = inst.add_subparsers(dest="instruments_command", required=True, metavar="ACTION")
    p = i_sub.add_parser("list", help="list instruments with their frame counts", parents=[common])
    p.add_argument(
        "--json", action="store_true", help="print a JSON array, one object per instrument"
    )
    p = i_sub.add_parser(
        "set", parents=[common], help="set an instrument's own settings (kept in the registry)",
        description="Set an instrument's own minimum number of frames per master: `pylcogt "
        "instruments set kb95 --min-inputs BIAS=3,DARK=3,SKYFLAT=3` (types not named follow "
        "the global setting). It wins over --min-inputs and PYLCOGT_MIN_INPUTS for this camera "
        "in the worker and `stack`. Idempotent.",
    )  # fmt: skip
    p.add_argument("camera", help="camera name (INSTRUME), e.g. kb95")
    p.add_argument("--clear-min-inputs", action="store_true",
                   help="forget the instrument's own minimum (the global one applies again)")
    p.add_argument("--json", action="store_true", help="print the instrument as JSON")

    p = add("reduce", "reduce science frames against the registry's masters",
            "Reduce raw science frames (EXPOSE, STANDARD): each file is registered if new, the "
            "masters are selected from the registry (bias and dark closest in time, the flat of "
            "the latest night at or before the frame's), and the product (SCI, BPM, ERR, CAT) is "
            "written atomically under the data directory and recorded as the frame's new "
            "reduction (the previous one stays in its history: `pylcogt provenance FRAME "
            "--history`). Prints the masters used, with their checksums. With --as-of, the "
            "registry as it stood then: masters registered by then and not yet superseded or "
            "marked bad; masters never change, so this reproduces a product made then, bit for "
            "bit (--output-dir writes it elsewhere and records nothing). Exit status 1 when a "
            "file was rejected, failed or skipped (the reason is printed).")  # fmt: skip
    p.add_argument("files", nargs="+", metavar="FILE", help="raw science frames")
    p.add_argument("--as-of", metavar="TIME",
                   help="select masters as the registry stood at this UTC time "
                        "(ISO, e.g. 2026-11-29T03:00:00)")  # fmt: skip
    p.add_argument("--output-dir", metavar="DIR",
                   help="write the products into DIR and record nothing (a reproduction)")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per frame")

    p = add("stack", "build a night's master calibration from its registered frames",
            "Build the master bias, dark or sky flat of one night (DAY-OBS) and instrument from "
            "the registered frames (afternoon and morning sets together; one master per binning, "
            "readout mode and, for flats, filter), write it and register it with its inputs. "
            "Darks need a master bias, flats a bias and a dark. Masters never change: a rebuild "
            "registers a new master (its version in its file name) that supersedes the group's "
            "previous one, and when the group's current master is already made from the same "
            "frames nothing is built. A master built while its night goes on is provisional, "
            "one built once the night is over (or closed: `pylcogt night close`) "
            "final.")  # fmt: skip
    p.add_argument("--instrument", required=True, help="camera, e.g. fa15")
    p.add_argument("--night", required=True, type=_parse_night, help="DAY-OBS, YYYYMMDD")
    p.add_argument(
        "--type",
        required=True,
        choices=["bias", "dark", "skyflat", "bpm"],
        help="bpm derives a bad-pixel mask from the night's master dark and flats",
    )
    p.add_argument("--filter", help="only this filter (flats)")
    p.add_argument("--binning", help="only this binning, e.g. 2x2")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per master")

    cli_calibrations.add_parsers(add, common)
    cli_worker.add_worker_command(add, common)
    cli_backfill.add_backfill_command(add, common)
    cli_solve.add_solve_command(add, common)
    cli_refcat.add_refcat_command(add, common)
    cli_qc.add_qc_command(add, common)

    night = add("night", "declare an instrument's night over (its calibrations final)",
                "Masters built while a night goes on are provisional; the night is over at "
                "local noon after it (from the site's longitude), when they are built once more "
                "as final masters. `night close` ends it now, for instruments whose observing "
                "and calibration plan is done (the scheduler knows before noon): from then on "
                "its groups are complete and the worker finalizes its masters and reductions. "
                "Frames that still arrive are handled like late frames. Closing twice changes "
                "nothing.")  # fmt: skip
    n_sub = night.add_subparsers(dest="night_command", required=True, metavar="ACTION")
    p = n_sub.add_parser("close", help="declare night NIGHT over now", parents=[common])
    p.add_argument("night", type=_parse_night, metavar="NIGHT", help="DAY-OBS, YYYYMMDD")
    p.add_argument("--instrument", action="append", metavar="CAM",
                   help="only this camera (repeatable; default: every camera with frames that "
                        "night)")  # fmt: skip
    p.add_argument("--reason", help="why (recorded)")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per camera")

    p = add(
        "simulate",
        "write a realistic simulated night of raw frames",
        "Write a night of raw frames in the LCO format (bias and dark sets in the afternoon "
        "and morning, twilight sky flats in each filter, science exposures) with known bias "
        "structure, read noise, dark current, flat pattern, bad pixels, stars, sky and cosmic "
        "rays, plus truth.json and truth_maps.npz. Seeded: the same options give the same bytes.",
    )
    p.add_argument("outdir", help="directory to write into (created if needed)")
    _add_simulation_options(p, size=None, n_bias=5)
    p.add_argument(
        "--stars",
        choices=["synthetic", "tycho2"],
        default="synthetic",
        help="synthetic stars, or the real Tycho-2 stars of the astrometry.net index files "
        "(mag ~5-12, on a field away from the galactic plane) plus fainter synthetic ones "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--pixscale",
        type=float,
        default=None,
        metavar="ARCSEC",
        help="arcsec per binned pixel instead of the camera's: wide-field mode (a small "
        "telescope of the same focal ratio; PSF >= 2.2 pixels; exposures chosen so mag 8.5 "
        "peaks at half saturation). 6 with --size 1024 gives a 1.7 deg field that the Tycho-2 "
        "index files can solve",
    )
    p.add_argument(
        "--distortion",
        type=float,
        default=None,
        metavar="ARCSEC",
        help="radial cubic (SIP) distortion of the true WCS (truth.json): arcsec between it and "
        "its linear part at the frame corners, positive barrel, negative pincushion, at most 10%% "
        "of the corner's distance from the centre (default: 5, or 25 with --pixscale, but at "
        "most 2%% of that distance)",
    )
    p.add_argument(
        "--no-faint-stars",
        action="store_true",
        help="with --stars tycho2: only the Tycho-2 stars, no fainter synthetic ones",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object listing the files")

    p = add(
        "demo",
        "simulate nights, ingest and reduce them on the configured registry",
        "The main job on the embedded default: simulate a night for a Sinistro and an SBIG "
        "camera (1024x1024 by default) into DIR/raw, ingest them into the registry (by default "
        "an SQLite file in the current directory), run the worker until idle (masters, then "
        "science frames), and print the masters, reduced frames, failures and the provenance "
        "of one frame. Running it again changes nothing.",
    )
    p.add_argument("--dir", default="pylcogt-demo", help="working directory (default: %(default)s)")
    _add_simulation_options(p, size=1024, n_bias=5, cameras="sinistro,sbig")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    return parser


COMMANDS = {
    "db": cmd_db,
    "ingest": cmd_ingest,
    "frames": cmd_frames,
    "instruments": cmd_instruments,
    "simulate": cmd_simulate,
    "reduce": cmd_reduce,
    "stack": cmd_stack,
    "calibrations": cli_calibrations.cmd_calibrations,
    "provenance": cli_calibrations.cmd_provenance,
    "demo": cmd_demo,
    "worker": cli_worker.cmd_worker,
    "backfill": cli_backfill.cmd_backfill,
    "solve": cli_solve.cmd_solve,
    "refcat": cli_refcat.cmd_refcat,
    "qc": cli_qc.cmd_qc,
    "night": cmd_night,
}


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    )
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if verbose < 2:
        logging.getLogger("alembic").setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        settings = load_settings(args.database_url, args.data_dir, args.crosstalk_file,
                                 args.index_dir, args.refcat,
                                 keep_products=args.keep_products,
                                 min_inputs=args.min_inputs)  # fmt: skip
        return COMMANDS[args.command](args, settings)
    except ConfigurationError as exc:
        print(f"pylcogt: error: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        url = load_settings(args.database_url, args.data_dir).safe_database_url
        print(
            f"pylcogt: error: cannot use the database {url}: {exc.orig}; check that the "
            f"server is running and the URL is right",
            file=sys.stderr,
        )
        return 3
    except (UnprocessableFrameError, ExternalToolError) as exc:  # bad input: a failed check
        print(f"pylcogt: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except PylcogtError as exc:
        print(f"pylcogt: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, VerifyError) as exc:  # a file that cannot be read or parsed: no traceback
        log.debug("details", exc_info=True)
        print(f"pylcogt: error: {one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
