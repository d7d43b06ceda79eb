"""``pylcogt refcat load|list``: photometric reference catalogues in the registry. Parsing and
output only; the work is in :mod:`pylcogt.photometry.store`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pylcogt.config import Settings
from pylcogt.errors import ConfigurationError

__all__ = ["add_refcat_command", "cmd_refcat", "parse_column_options"]

DESCRIPTION = """\
Photometric reference catalogues (Pan-STARRS 1 and the like) for the zero points of science
frames. `load FILE` reads a FITS or CSV table of RA, DEC and magnitudes per band into the
registry; `list` shows what is loaded.

Recognised columns: Pan-STARRS DR2 from MAST (raMean, decMean, gMeanPSFMag, gMeanPSFMagErr,
... y), VizieR II/349 (RAJ2000, DEJ2000, gmag, e_gmag, ...), APASS-like Bmag, Vmag, e_Vmag, and
plain ra, dec, u, g, r, i, z, y, B, V, R, I with g_err and the like (case-sensitive: r is
Sloan/PS1 r, R is Cousins R). Pan-STARRS' -999 and empty cells are missing values. Anything
else: --column g=gKronMag --column g_err=gKronMagErr --column ra=RA_deg.

Idempotent: a catalogue is known by --name (default: the file name without suffixes). Loading
the same file with the same --column options again changes nothing; a changed file (or other
options) under the same name replaces its stars in one transaction."""


def add_refcat_command(
    add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser
) -> Callable[[argparse.Namespace, Settings], int]:
    """Add ``refcat`` with ``add(name, help, description)``; returns its handler."""
    p = add("refcat", "photometric reference catalogues: load a FITS/CSV table, list them",
            DESCRIPTION)  # fmt: skip
    sub = p.add_subparsers(dest="refcat_command", required=True, metavar="ACTION")
    q = sub.add_parser(
        "load",
        help="load a FITS or CSV reference table (idempotent)",
        description="Load FILE (.fits, .csv or .ecsv, optionally .gz) as reference catalogue "
        "NAME: replaces NAME's stars if the file changed, does nothing if it did not.",
        parents=[common],
    )
    q.add_argument("file", metavar="FILE", help="FITS or CSV table of RA, DEC and magnitudes")
    q.add_argument("--name", help="catalogue name (default: the file name without suffixes)")
    q.add_argument("--column", action="append", default=[], metavar="KEY=COLUMN",
                   help="use COLUMN for KEY: ra, dec, a band (u g r i z y B V R I) or BAND_err; "
                        "repeat for several")  # fmt: skip
    q.add_argument("--json", action="store_true",
                   help="print a JSON object {name, id, action: loaded|replaced|unchanged, "
                        "n_stars, bands, checksum, path, columns}")  # fmt: skip
    q = sub.add_parser("list", help="list the loaded reference catalogues", parents=[common])
    q.add_argument("--json", action="store_true",
                   help="print a JSON array, one object per catalogue")  # fmt: skip
    return cmd_refcat


def parse_column_options(items: list[str]) -> dict[str, str]:
    """``["g=gKronMag", ...]`` -> ``{"g": "gKronMag"}``; ConfigurationError when malformed."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, column = item.partition("=")
        if not sep or not key.strip() or not column.strip():
            raise ConfigurationError(f"--column wants KEY=COLUMN, got {item!r}")
        out[key.strip()] = column.strip()
    return out


def cmd_refcat(args: argparse.Namespace, settings: Settings) -> int:
    action = {"load": _load, "list": _list}
    return action[args.refcat_command](args, settings)


def _load(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.cli import _maker, _print_json
    from pylcogt.photometry.store import load_catalog_file

    columns = parse_column_options(args.column)
    result = load_catalog_file(_maker(settings), args.file, name=args.name, columns=columns)
    if args.json:
        _print_json(result.to_json())
        return 0
    bands = ",".join(result.bands) or "none"
    what = {"loaded": "loaded", "replaced": "replaced (file changed)",
            "unchanged": "unchanged (already loaded)"}[result.action]  # fmt: skip
    print(f"reference catalogue {result.name!r} {what}: {result.n_stars} stars, bands {bands}"
          f" ({result.path})")  # fmt: skip
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.cli import _maker, _print_json, _print_table
    from pylcogt.photometry.store import list_catalogs

    rows = list_catalogs(_maker(settings))
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        row["bands"] = ",".join(row["bands"])
        row["loaded_at"] = row["loaded_at"].isoformat(timespec="seconds")
        for key in ("ra_min", "ra_max", "dec_min", "dec_max"):
            row[key] = "-" if row[key] is None else f"{row[key]:.4f}"
    _print_table(rows, ["name", "n_stars", "bands", "ra_min", "ra_max", "dec_min", "dec_max",
                        "loaded_at", "path"])  # fmt: skip
    return 0
