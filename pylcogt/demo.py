"""The main job on the embedded default: simulate nights, ingest them, reduce them, report.

``pylcogt demo`` simulates one night for each camera asked for (a Sinistro and an SBIG by
default) into ``DIR/raw/<camera>``, ingests them into the configured registry (an SQLite file in
the current directory by default), runs one worker until nothing is left to do (masters first,
then science frames), and reports the masters made, the reduced frames, the failures and the
provenance of one reduced frame, and writes the night's quality-control page
(``DIR/qc-NIGHT/index.html``, :mod:`pylcogt.qc`). Running it again changes nothing in the
registry: the same seed writes the same bytes, ingest finds them unchanged and the worker finds
nothing to do (the QC page is written again).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from pylcogt import provenance
from pylcogt.config import Settings
from pylcogt.db.migrate import ensure_schema
from pylcogt.db.models import RawFrame
from pylcogt.db.session import get_sessionmaker
from pylcogt.ingest import ingest_paths
from pylcogt.qc.night import night_report
from pylcogt.simulate import simulate_night
from pylcogt.simulate.night import DEFAULT_DAYOBS
from pylcogt.worker import WorkerConfig, run_workers

__all__ = ["run_demo"]


def run_demo(
    settings: Settings,
    workdir: Path,
    *,
    cameras: tuple[str, ...] = ("sinistro", "sbig"),
    simulation: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Simulate, ingest, reduce; return a plain-data report (see the module docstring)."""
    say = progress or (lambda _text: None)
    options = dict(simulation or {})
    nights = []
    for camera in cameras:
        say(f"simulating a {camera} night")
        nights.append(simulate_night(Path(workdir) / "raw" / camera, camera=camera, **options))
    ensure_schema(settings.database_url)
    maker = get_sessionmaker(settings.database_url)
    say("ingesting")
    ingested = ingest_paths(maker, [n.outdir for n in nights])
    say("reducing (worker until idle)")
    work = run_workers(settings, WorkerConfig(until_idle=True, quiet_time_s=0.0))
    with maker() as session:
        states = dict(
            session.execute(select(RawFrame.state, func.count()).group_by(RawFrame.state)).all()
        )
        failures = [
            {"path": f.path, "error": f.last_error}
            for f in session.scalars(select(RawFrame).where(RawFrame.state == "failed"))
        ]
        reduced = session.scalars(
            select(RawFrame)
            .where(RawFrame.product_path.is_not(None), RawFrame.obstype.in_(("EXPOSE", "STANDARD")))
            .order_by(RawFrame.dateobs, RawFrame.id)
        ).all()
        example = reduced[0].path if reduced else None
    masters = provenance.list_masters(maker)
    night = dt.datetime.strptime(str(options.get("dayobs", DEFAULT_DAYOBS)), "%Y%m%d").date()
    say("quality-control pictures")
    with maker() as session:
        qc = night_report(session, night, Path(workdir) / f"qc-{night:%Y%m%d}",
                          database=settings.safe_database_url, progress=say)  # fmt: skip
    return {
        "database": settings.safe_database_url,
        "cameras": [
            {
                "camera": n.camera,
                "instrument": n.instrument,
                "frames": len(n.files),
                "raw_dir": str(n.outdir),
            }
            for n in nights
        ],  # fmt: skip
        "ingest": ingested.counts(),
        "worker": work.to_json(),
        "states": {getattr(k, "value", k): v for k, v in states.items()},
        "masters": [
            {
                "id": m.id,
                "type": m.type,
                "instrument": m.instrument,
                "filter": m.filter,
                "n_inputs": m.n_inputs,
                "path": m.path,
            }
            for m in masters
        ],  # fmt: skip
        "reduced": [
            {"path": f.path, "product": f.product_path, "science": _summary(f.product_path)}
            for f in reduced
        ],  # fmt: skip
        "failures": failures,
        "qc_page": str(qc.page.resolve()),
        "qc_errors": qc.errors,
        "provenance": provenance.to_dict(provenance.provenance(maker, example))
        if example
        else None,
    }


def _summary(product: str | None) -> dict | None:
    """The product's catalogue / WCS / zero-point summary cards, if it can be read."""
    from pylcogt.io.products import read_science_summary

    if not product:
        return None
    try:
        return read_science_summary(Path(product))
    except (OSError, KeyError):
        return None
