"""``pylcogt calibrations list|add|mark-bad|mark-good`` and ``pylcogt provenance``: parsing and
output only; the work is in :mod:`pylcogt.provenance` and :mod:`pylcogt.calibrations.build`."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pylcogt.config import Settings
from pylcogt.errors import ConfigurationError

__all__ = ["add_parsers", "cmd_calibrations", "cmd_provenance"]

LIST_COLUMNS = ["id", "type", "instrument", "filter", "binning", "dayobs", "version", "standing",
                "effective_time", "n_inputs", "path"]  # fmt: skip


def _cli():
    from pylcogt import cli  # imported late: cli imports this module

    return cli


def _when(value: dt.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def _master_line(m: dict[str, Any]) -> str:
    label = " ".join(x for x in (m["type"], m["instrument"], m["binning"], m["filter"]) if x)
    bad = f"  BAD: {m['bad_reason'] or 'no reason given'}" if m["is_bad"] else ""
    standing = m.get("standing") or m.get("calibration_status", "")
    if m.get("superseded_by"):
        standing += f" by master {m['superseded_by']}"
    return (
        f"master {m['id']}  {label}  night {m['dayobs']:%Y%m%d}  v{m.get('version', 1)} "
        f"{standing}  effective {_when(m['effective_time'])}  {m['n_inputs']} inputs  "
        f"{m['path']}{bad}"
    )


def _frame_line(f: dict[str, Any], role: str | None = None) -> str:
    parts = [f"frame {f['id']}", f["filename"], f["obstype"] or "?", f["state"]]
    if role:
        parts.insert(0, f"{role:5s}")
    if f["product_path"]:
        parts.append(f"-> {f['product_path']}")
    return "  ".join(parts)


# --- calibrations -------------------------------------------------------------------------
def cmd_calibrations(args: argparse.Namespace, settings: Settings) -> int:
    action = {"add": _add, "list": _list, "mark-bad": _mark_bad, "mark-good": _mark_good}
    return action[args.calibrations_command](args, settings)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.provenance import list_masters, to_dict

    cli = _cli()
    masters = list_masters(cli._maker(settings), instrument=args.instrument, type=args.type,
                           night=args.night, filter=args.filter,
                           current_only=args.current)  # fmt: skip
    rows = to_dict(masters)
    if args.json:
        cli._print_json(rows)
        return 0
    for row in rows:
        row["effective_time"] = _when(row["effective_time"])
    cli._print_table(rows, LIST_COLUMNS)
    return 0


def _add(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.calibrations.build import add_external_bpm

    cli = _cli()
    if not Path(args.file).is_file():
        raise ConfigurationError(f"no such file: {args.file}")
    built = add_external_bpm(cli._maker(settings), settings, args.file, camera=args.instrument,
                             dayobs=args.night, binning=args.binning,
                             readout_mode=args.readout_mode)  # fmt: skip
    result = {"type": "BPM", "master_id": built.master_id, "path": built.path}
    if args.json:
        cli._print_json(result)
    else:
        print(f"registered bad-pixel mask {built.master_id}: {built.path}")
    return 0


def _print_node(node: dict[str, Any], depth: int) -> None:
    pad = "  " * depth
    print(f"{pad}{_master_line(node['master'])}")
    print(f"{pad}  reason: {node['reason']}")
    if node["rebuild_inputs"]:
        print(f"{pad}  rebuilt from ({len(node['rebuild_inputs'])} frames re-queued):")
        for f in node["rebuild_inputs"]:
            print(f"{pad}    {_frame_line(f)}")
    if node["frames"]:
        print(f"{pad}  frames that used it ({len(node['frames'])} re-queued):")
        for use in node["frames"]:
            print(f"{pad}    {_frame_line(use['frame'], use['role'])}")
    for child in node["dependents"]:
        _print_node(child, depth + 1)


def _mark_bad(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.provenance import mark_bad, to_dict

    cli = _cli()
    plan = mark_bad(cli._maker(settings), args.master, reason=args.reason, dry_run=args.dry_run)
    if args.json:
        cli._print_json(to_dict(plan))
        return 0
    print(("dry run: " if plan.dry_run else "") + plan.message)
    if not plan.already_bad:
        _print_node(to_dict(plan.root), 0)
    return 0


def _mark_good(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.provenance import mark_good, to_dict

    cli = _cli()
    result = mark_good(cli._maker(settings), args.master)
    if args.json:
        cli._print_json(to_dict(result))
    else:
        print(result.message)
    return 0


# --- provenance ---------------------------------------------------------------------------
def cmd_provenance(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.provenance import provenance, to_dict

    cli = _cli()
    result = to_dict(provenance(cli._maker(settings), args.target, history=args.history))
    if args.json:
        cli._print_json(result)
    elif result["kind"] == "frame":
        _print_frame(result)
    else:
        _print_master(result)
    return 0


def _print_frame(p: dict[str, Any]) -> None:
    f = p["frame"]
    print(f"frame {f['id']}  {f['filename']}  {f['obstype']}  {f['instrument']}  "
          f"{f['filter'] or ''}  {_when(f['dateobs'])}  {f['state']}")  # fmt: skip
    print(f"  raw      {f['path']}")
    if f["product_path"]:
        print(f"  product  {f['product_path']}")
    if f["last_error"]:
        print(f"  note     {f['last_error']}")
    science = f["obstype"] not in ("BIAS", "DARK", "SKYFLAT")
    if p["reduction"]:
        _print_reduction(p["reduction"], "current")
    if not p["masters"]:
        print("  no masters recorded" + (" (not reduced yet)" if science else ""))
    else:
        print("  reduced with:" if science else "  prepared with:")
    checksums = {m["role"]: m for m in (p["reduction"] or {}).get("masters", [])}
    for used in p["masters"]:
        print(f"    {used['role']:5s} {_master_line(used['master'])}")
        if used["role"] in checksums:
            recorded = checksums[used["role"]]
            same = "the registered file" if recorded["checksum_matches"] else "NOT the registered"
            print(f"          sha256 {recorded['checksum']} ({same})")
        print(f"          stacked from {len(used['inputs'])} frames:")
        for frame in used["inputs"]:
            print(f"            {_frame_line(frame)}")
        for up in used["prepared_with"]:
            print(f"          inputs prepared with {up['role']} master {up['master']['id']}")
    for m in p["stacked_into"]:
        print(f"  stacked into {_master_line(m)}")
    if p["history"]:
        print(f"  earlier reductions ({len(p['history'])}), newest first:")
        for r in p["history"]:
            _print_reduction(r, "superseded", indent="    ")


def _print_reduction(r: dict[str, Any], what: str, indent: str = "  ") -> None:
    print(f"{indent}reduction {r['id']} ({what}, {r['calibration_status']}): {r['reason']}")
    print(f"{indent}  finished {_when(r['finished_at'])} by {r['worker'] or '?'}, pylcogt "
          f"{r['pipeline_version'] or '(not recorded)'}"
          + (f", as of {_when(r['as_of'])}" if r["as_of"] else ""))  # fmt: skip
    product = r["kept_path"] or r["product_path"]
    kept = "" if what == "current" else (" (kept)" if r["kept_path"] else " (replaced since)")
    print(f"{indent}  product {product}{kept}  sha256 {r['product_checksum'] or '(not recorded)'}")
    if what != "current":
        masters = ", ".join(f"{m['role']} {m['master']['id']}" for m in r["masters"])
        print(f"{indent}  masters {masters}")
        if r["replaced_because"]:
            print(f"{indent}  replaced {_when(r['superseded_at'])} by reduction "
                  f"{r['superseded_by']}: {r['replaced_because']}")  # fmt: skip


def _print_master(p: dict[str, Any]) -> None:
    print(_master_line(p["master"]))
    print(f"  stacked from {len(p['inputs'])} frames:")
    for frame in p["inputs"]:
        print(f"    {_frame_line(frame)}")
    for up in p["prepared_with"]:
        print(f"  inputs prepared with {up['role']} {_master_line(up['master'])}")
    print(f"  sha256 {p['master']['checksum']}")
    if p["superseded_by"]:
        print(f"  superseded {_when(p['master']['superseded_at'])} by "
              f"{_master_line(p['superseded_by'])}")  # fmt: skip
    print(f"  reduced frames that used it ({len(p['reduced_frames'])}):")
    for use in p["reduced_frames"]:
        print(f"    {_frame_line(use['frame'], use['role'])}")
    if p["earlier_reductions"]:
        print(f"  frames it reduced before they were redone ({len(p['earlier_reductions'])}):")
        for use in p["earlier_reductions"]:
            print(f"    {_frame_line(use['frame'], use['role'])}")
    if p["prepared_frames"]:
        print(f"  calibration frames prepared with it ({len(p['prepared_frames'])}):")
        for use in p["prepared_frames"]:
            print(f"    {_frame_line(use['frame'], use['role'])}")
    if p["derived_masters"]:
        print(f"  masters built from it ({len(p['derived_masters'])}):")
        for m in p["derived_masters"]:
            print(f"    {_master_line(m)}")


# --- parsers ------------------------------------------------------------------------------
def add_parsers(
    add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``calibrations`` and ``provenance`` with ``add`` (cli.build_parser's helper)."""
    parse_night = _cli()._parse_night

    cal = add("calibrations", "list, add and mark master calibrations",
              "List master calibrations, register one made elsewhere, and mark a master bad "
              "(with everything made from it) or good again.")  # fmt: skip
    c_sub = cal.add_subparsers(dest="calibrations_command", required=True, metavar="ACTION")
    p = c_sub.add_parser("add", help="register a calibration made elsewhere (a bad-pixel mask)",
                         parents=[common])  # fmt: skip
    p.add_argument("file", help="FITS file: a BPM extension or a 2-D image, non-zero = bad")
    p.add_argument("--type", required=True, type=str.upper, choices=["BPM"])
    p.add_argument("--instrument", required=True, help="camera, e.g. fa15")
    p.add_argument("--night", required=True, type=parse_night, help="DAY-OBS it applies from")
    p.add_argument("--binning", default="1x1", help="binning it applies to (default: 1x1)")
    p.add_argument("--readout-mode", default="", help="CONFMODE it applies to (default: none)")
    p.add_argument("--json", action="store_true", help="print a JSON object")

    p = c_sub.add_parser("list", help="list registered masters, oldest effective time first",
                         parents=[common])  # fmt: skip
    p.add_argument("--instrument", help="only this camera, e.g. fa15")
    p.add_argument("--type", type=str.upper, choices=["BIAS", "DARK", "SKYFLAT", "BPM"])
    p.add_argument("--night", type=parse_night, help="only this DAY-OBS (YYYYMMDD)")
    p.add_argument("--filter", help="only this filter (flats), e.g. rp")
    p.add_argument("--current", action="store_true",
                   help="only current masters (neither bad nor superseded: what selection may "
                        "choose)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per master")

    p = c_sub.add_parser(
        "mark-bad",
        help="mark a master bad and re-queue everything made with it",
        description="Mark master ID bad (recorded with the time and reason). Every frame reduced "
        "with it is re-queued (state pending, attempts 0, product kept until replaced), so the "
        "next worker pass reduces it with the next best master. Transitively: a dark or flat "
        "built from frames prepared with a bad master, and a bad-pixel mask derived from one, "
        "are marked bad too, their input frames re-queued so the worker rebuilds them, and the "
        "frames that used them re-queued. One transaction; marking a bad master again changes "
        "nothing.",
        parents=[common],
    )
    p.add_argument("master", metavar="ID", help="master id (or master:ID, or its path)")
    p.add_argument("--reason", required=True, help="why it is bad (recorded with the time)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the whole tree of what would be redone; change nothing")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")

    p = c_sub.add_parser(
        "mark-good",
        help="clear the bad mark of one master",
        description="Clear the bad mark of master ID only: masters marked bad with it stay bad "
        "and frames re-queued then stay queued. Refused when its night already has another good "
        "master of the same group (its rebuild).",
        parents=[common],
    )
    p.add_argument("master", metavar="ID", help="master id (or master:ID, or its path)")
    p.add_argument("--json", action="store_true", help="print a JSON object")

    p = add("provenance", "show where a frame or master came from and what used it",
            "For a reduced frame (raw path, product path, file name or frame id): its current "
            "reduction (when, pipeline version, provisional or final, why it was made, the "
            "product's sha256) and the masters it used (role, id, version, standing, path, the "
            "sha256 of the file as read) with the raw frames stacked into each; --history adds "
            "every earlier reduction and why it was replaced. For a master (master:ID or its "
            "path): its inputs, the masters they were prepared with, its standing (provisional, "
            "final, superseded by, bad), every frame reduced with it (now, and before they were "
            "redone) and every master built from frames prepared with it.")  # fmt: skip
    p.add_argument(
        "target",
        metavar="FRAME_OR_PRODUCT",
        help="frame id, raw or product path, file name, master:ID or master path",
    )
    p.add_argument("--history", action="store_true",
                   help="a frame's earlier reductions too, newest first, and why each was "
                        "replaced")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
