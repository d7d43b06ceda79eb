"""``pylcogt backfill``: parsing and output only; the work is in :mod:`pylcogt.backfill`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from pylcogt.config import Settings

__all__ = ["add_backfill_command", "cmd_backfill"]

DESCRIPTION = """\
Schedule everything a range of nights (DAY-OBS, inclusive) needs: with --raw-dir, ingest the
files of those nights found there (recursively; files of other nights are left alone); then put
the nights' failed, waiting and deferred frames back in the queue (attempts cleared), and the
failed master builds of groups that still have no master. The worker does the rest, masters
first (bias, dark, flats, then science, oldest night first); --run starts it here until idle.
Re-running it is harmless: a second run finds nothing to do. --dry-run lists what would be
ingested, reset and built without changing anything. Calibration frames of a group that has a
good master are not reset (rebuild a master with `pylcogt calibrations mark-bad`).
"""


def add_backfill_command(
    add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser
) -> Callable[[argparse.Namespace, Settings], int]:
    """Add the ``backfill`` subcommand with ``add(name, help, description)``; return its handler."""
    from pylcogt.cli import _parse_night

    del common
    p = add("backfill", "ingest and schedule a range of nights (masters first)", DESCRIPTION)
    p.add_argument("--since", required=True, type=_parse_night, metavar="DAYOBS",
                   help="first night, YYYYMMDD")  # fmt: skip
    p.add_argument("--until", required=True, type=_parse_night, metavar="DAYOBS",
                   help="last night (inclusive), YYYYMMDD")  # fmt: skip
    p.add_argument("--site", help="only this SITEID, e.g. lsc")
    p.add_argument("--instrument", help="only this camera, e.g. fa15")
    p.add_argument("--raw-dir", metavar="DIR", help="ingest the range's files found here first")
    p.add_argument("--redo", action="store_true",
                   help="also reduce the range's done science frames again")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="list what would be done; change nothing")
    p.add_argument("--run", action="store_true",
                   help="then run the worker in this process until idle")  # fmt: skip
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: {since, until, ingest: {files, counts, "
                        "outside_range}, reset: {frames, by_state}, master_jobs_reset, "
                        "masters_to_build, nights, nothing_to_do[, worker]}")  # fmt: skip
    return cmd_backfill


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.backfill import BackfillScope, apply_backfill, plan_backfill
    from pylcogt.cli import _maker, _print_json
    from pylcogt.errors import ConfigurationError

    if args.until < args.since:
        raise ConfigurationError(
            f"--until {args.until:%Y%m%d} is before --since {args.since:%Y%m%d}"
        )
    if args.raw_dir and not Path(args.raw_dir).is_dir():
        raise ConfigurationError(f"--raw-dir: no such directory: {args.raw_dir}")
    if args.dry_run and args.run:
        raise ConfigurationError("--dry-run and --run exclude each other")
    scope = BackfillScope(args.since, args.until, site=args.site, instrument=args.instrument,
                          raw_dir=args.raw_dir, redo=args.redo)  # fmt: skip
    maker = _maker(settings)
    plan = (plan_backfill if args.dry_run else apply_backfill)(maker, scope)
    result = plan.to_json()
    result["dry_run"] = args.dry_run
    if args.run:
        from pylcogt.worker import WorkerConfig, run_workers

        summary = run_workers(settings, WorkerConfig(until_idle=True, quiet_time_s=0))
        result["worker"] = summary.to_json()
    if args.json:
        _print_json(result)
        return 1 if result.get("worker", {}).get("errors") else 0
    verb = "would" if args.dry_run else "did"
    counts = result["ingest"]["counts"]
    print(f"backfill {args.since:%Y%m%d}..{args.until:%Y%m%d}"
          + (" (dry run)" if args.dry_run else ""))  # fmt: skip
    if args.raw_dir:
        text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing"
        print(f"  ingest ({verb}): {text}; {result['ingest']['outside_range']} file(s) of other "
              "nights left alone")  # fmt: skip
    by_state = ", ".join(f"{n} {s}" for s, n in sorted(result["reset"]["by_state"].items()))
    print(f"  reset to pending ({verb}): {result['reset']['frames']} frame(s)"
          + (f" ({by_state})" if by_state else "")
          + f"; {result['master_jobs_reset']} failed master build(s)")  # fmt: skip
    for m in result["masters_to_build"]:
        label = " ".join(x for x in (m["type"], m["dayobs"], m["binning"], m["filter"]) if x)
        print(f"  master to build: {label} (instrument {m['instrument_id']})")
    for night, states in result["nights"].items():
        print(f"  night {night}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    if plan.nothing_to_do:
        print("  nothing to do")
    if "worker" in result:
        w = result["worker"]
        print(f"worker: processed {w['processed']} frame(s), {w['masters_built']} master(s) "
              f"built, {w['failed']} failed")  # fmt: skip
        return 1 if w.get("errors") else 0
    return 0
