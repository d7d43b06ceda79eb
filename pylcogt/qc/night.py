"""``pylcogt qc``: the quality-control pictures and page of one observing night.

:func:`night_report` reads the registry (:mod:`pylcogt.qc.inventory`), each master and reduced
frame of the night (through :mod:`pylcogt.io.products`), computes the numbers
(:mod:`pylcogt.qc.metrics`), writes the PNG files (:mod:`pylcogt.qc.render`) and the page
``index.html`` with the same numbers as ``qc.json`` (:mod:`pylcogt.qc.page`) into one directory.

A product that cannot be read is an entry with its error on the page (and ``errors`` in the
report), not the end of the run. Running it again rewrites the same files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from pylcogt import __version__
from pylcogt.frame import Frame
from pylcogt.io.products import read_catalog, read_product
from pylcogt.qc import metrics, render
from pylcogt.qc.inventory import FrameEntry, MasterEntry, night_inventory
from pylcogt.qc.page import write_page

__all__ = ["NightReport", "night_report", "master_inputs", "SCIENCE_CARDS"]

log = logging.getLogger(__name__)

#: Header cards of a reduced frame shown on the page: report key -> keyword.
SCIENCE_CARDS = {
    "sources": "NSOURCES",
    "fwhm_arcsec": "L1FWHM",
    "ellipticity": "L1ELLIP",
    "background": "L1BKG",
    "background_rms": "L1BKGRMS",
    "cosmic_ray_pixels": "L1NCRPIX",
    "wcs": "ASTSTAT",
    "wcs_reason": "ASTREASN",
    "wcs_rms_arcsec": "WCSRMS",
    "wcs_n_matched": "WCSNMAT",
    "wcs_sip_order": "WCSSIPO",
    "zeropoint": "L1ZP",
    "zeropoint_err": "L1ZPERR",
    "zeropoint_n": "L1ZPNUM",
    "photometry": "L1PHSTAT",
    "photometry_reason": "L1PHREAS",
    "bias": "L1IDBIAS",
    "dark": "L1IDDARK",
    "flat": "L1IDFLAT",
}
_SOURCE_COLUMNS = ("X", "Y", "A", "B", "THETA", "FLAG")
#: The file names this module writes (others in the output directory are left alone).
_OWN_PICTURE = re.compile(r"^((master|frame)-\d+-.*|night-trends)\.png$")
_TRENDS = "night-trends.png"


@dataclass
class NightReport:
    """What :func:`night_report` wrote: ``data`` is the JSON-ready content of ``qc.json``."""

    output: Path
    page: Path
    data: dict
    errors: list[str] = field(default_factory=list)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _number(value):
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    return _number(obj)


def _mask_frame(frame: Frame) -> Frame:
    """A bad-pixel-mask master as an image of its flagged pixels (1 flagged, 0 not)."""
    sci = (frame.bpm != 0).astype(np.float32)
    return Frame(sci=sci, err=None, bpm=np.zeros_like(frame.bpm), header=frame.header,
                 unit="flagged", name=frame.name)  # fmt: skip


def master_inputs(header) -> list[dict]:
    """A master's input frames from its header, in order: ``{"file", "level"}`` with the level
    (electrons: bias level, flat normalisation) where the master records it (``IMLVLnnn``)."""
    inputs = []
    for i in range(1, 100_000):
        name = header.get(f"IMCOM{i:03d}" if i < 1000 else f"IMC{i:05d}")
        if name is None:
            break
        level = header.get(f"IMLVL{i:03d}" if i < 1000 else f"IML{i:05d}")
        inputs.append({"file": name, "level": level})
    return inputs


def _master_record(entry: MasterEntry) -> dict:
    record = {
        "id": entry.id,
        "label": entry.label,
        "type": entry.obstype,
        "camera": entry.camera,
        "site": entry.site,
        "binning": entry.binning,
        "readout_mode": entry.readout_mode,
        "filter": entry.filter_name,
        "dateobs": entry.dateobs,
        "file": Path(entry.path).name,
        "path": entry.path,
        "n_inputs": entry.n_inputs,
        "is_bad": entry.is_bad,
        "bad_reason": entry.bad_reason,
        "standing": entry.standing,
        "superseded_by": entry.superseded_by,
        "left_out": [{"id": f.frame_id, "file": f.filename, "state": f.state, "reason": f.reason}
                     for f in entry.left_out],  # fmt: skip
        "previous": None,
        "stats": None,
        "inputs": [],
        "comparison": None,
        "comparison_note": "",
        "images": {},
        "error": None,
    }
    if entry.previous_id is not None:
        record["previous"] = {"id": entry.previous_id, "dayobs": entry.previous_dayobs,
                              "file": Path(entry.previous_path or "").name}  # fmt: skip
    return record


def _master_entry(entry: MasterEntry, out: Path, errors: list[str]) -> dict:
    record = _master_record(entry)
    frame = read_product(Path(entry.path))
    mask_master = entry.obstype == "BPM"
    shown = _mask_frame(frame) if mask_master else frame
    stats = metrics.image_stats(shown)
    if mask_master:  # the mask's own bits, not those of its 0/1 picture
        stats = dataclasses.replace(stats, flagged=metrics.flag_counts(frame.bpm))
    record["stats"] = stats.as_dict()
    for key in ("BIASLVL", "STACKK"):
        if key in frame.header:
            record["stats"][key.lower()] = frame.header[key]
    record["inputs"] = master_inputs(frame.header)
    good = metrics.good_pixels(shown)
    rows, columns = metrics.profiles(shown.sci, good)
    name = f"master-{entry.id}-{_safe(entry.obstype.lower())}.png"
    render.master_preview(out / name, shown.sci, good, stats, rows, columns,
                          title=f"master {entry.id}: {entry.label}, night {entry.dayobs:%Y%m%d}, "
                                f"{entry.n_inputs} inputs")  # fmt: skip
    record["images"]["preview"] = name
    if entry.previous_path is None:
        record["comparison_note"] = "no earlier good master of this kind"
        return record
    try:
        previous = read_product(Path(entry.previous_path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file: said on the page
        record["comparison_note"] = (f"cannot read the previous master {entry.previous_path}: "
                                     f"{_describe(exc)}")  # fmt: skip
        errors.append(record["comparison_note"])
        return record
    try:
        comparison = metrics.compare_masters(
            shown, _mask_frame(previous) if mask_master else previous, entry.obstype
        )
    except ValueError as exc:
        record["comparison_note"] = str(exc)
        return record
    record["comparison"] = comparison.as_dict()
    name = f"master-{entry.id}-vs-{entry.previous_id}.png"
    render.comparison_preview(out / name, comparison,
                              title=f"master {entry.id} ({entry.dayobs:%Y%m%d}) vs previous "
                                    f"{entry.previous_id} ({entry.previous_dayobs:%Y%m%d}): "
                                    f"{entry.label}")  # fmt: skip
    record["images"]["comparison"] = name
    return record


def _frame_record(entry: FrameEntry) -> dict:
    return {
        "id": entry.id,
        "file": entry.filename,
        "camera": entry.camera,
        "obstype": entry.obstype,
        "object": entry.object_name,
        "filter": entry.filter_name,
        "exptime_s": entry.exptime_s,
        "dateobs": entry.dateobs,
        "state": entry.state,
        "product": entry.product_path,
        "images": {},
        "error": None,
    }


def _frame_entry(entry: FrameEntry, out: Path, errors: list[str]) -> dict:
    del errors
    record = _frame_record(entry)
    frame = read_product(Path(entry.product_path or ""), with_err=False)  # the picture needs none
    header = frame.header
    for key, card in SCIENCE_CARDS.items():
        record[key] = header.get(card)
    catalog = None
    with contextlib.suppress(KeyError):  # no CAT: a product reduced with the science chain off
        catalog = read_catalog(Path(entry.product_path or ""))
    residuals = metrics.astrometric_residuals(catalog, header) if catalog is not None else None
    record["residual_rms_arcsec"] = residuals.rms if residuals is not None else None
    record["residual_n"] = residuals.n if residuals is not None else 0
    sources = None
    if catalog is not None and set(_SOURCE_COLUMNS) <= set(catalog.colnames):
        sources = {k: np.asarray(catalog[k]) for k in _SOURCE_COLUMNS}
    name = f"frame-{entry.id}-{_safe(entry.filename.split('.')[0])[:80]}.png"
    good = metrics.good_pixels(frame)
    reason = str(header.get("ASTREASN", "")) if header.get("ASTSTAT") != "solved" else ""
    title = (f"{entry.filename}: {entry.object_name or '?'}, {entry.filter_name}, "
             f"{entry.exptime_s if entry.exptime_s is not None else '?'} s")  # fmt: skip
    render.frame_thumbnail(out / name, frame.sci, good, sources, residuals, title,
                           no_wcs_reason=reason)  # fmt: skip
    record["images"]["thumbnail"] = name
    return record


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _guarded(make, entry, out: Path, errors: list[str], path: str | None, what: str) -> dict:
    """``make(entry, out, errors)``; if anything goes wrong with this one entry (a missing,
    truncated or foreign file, a catalogue without the usual columns, a WCS astropy cannot
    parse), the entry records the error and the night goes on."""
    try:
        return make(entry, out, errors)
    except Exception as exc:  # noqa: BLE001 - one bad file must not end the night's page
        log.warning("qc: %s %s: %s", what, path, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        message = f"cannot read {path}: {_describe(exc)}"
        errors.append(message)
        return {**_bare_record(entry), "error": message}


def _bare_record(entry) -> dict:
    if isinstance(entry, MasterEntry):
        return _master_record(entry)
    return _frame_record(entry)


def _remove_stale_pictures(output: Path, data: dict) -> None:
    """Delete pictures of an earlier run that this run's page no longer shows (a master since
    deleted or without a previous one): only names this module writes."""
    entries = [*data["masters"], *data["frames"], data]
    named = {name for entry in entries for name in entry["images"].values()}
    for path in output.iterdir():
        if _OWN_PICTURE.match(path.name) and path.name not in named:
            path.unlink(missing_ok=True)


def night_report(
    session: Session,
    night: dt.date,
    output: Path,
    *,
    camera: str | None = None,
    database: str = "",
    progress: Callable[[str], None] | None = None,
) -> NightReport:
    """Write the night's pictures, ``index.html`` and ``qc.json`` into ``output`` (created).

    Reads the registry first and then ends ``session``'s transaction (this is read-only); the
    pictures are drawn from the files afterwards. Pictures of an earlier run that the page no
    longer shows are deleted."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    inventory = night_inventory(session, night, camera)
    # what follows reads files only: end the read transaction now (PostgreSQL would otherwise
    # hold a snapshot and its locks, "idle in transaction", while the pictures are drawn)
    session.rollback()
    errors: list[str] = []
    total = len(inventory.masters) + sum(1 for f in inventory.frames if f.product_path)
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(f"[{done}/{total}] {what}")

    masters = []
    for entry in inventory.masters:
        masters.append(_guarded(_master_entry, entry, output, errors, entry.path, "master"))
        step(f"master {entry.id} {entry.label}")
    frames, not_reduced = [], []
    for entry in inventory.frames:
        if entry.product_path is None:
            not_reduced.append({"id": entry.id, "file": entry.filename, "camera": entry.camera,
                                "state": entry.state, "reason": entry.reason})  # fmt: skip
            continue
        frames.append(_guarded(_frame_entry, entry, output, errors, entry.product_path,
                               "product"))  # fmt: skip
        step(f"frame {entry.filename}")
    images = {}
    drawable = [f for f in frames if not f["error"]]
    if drawable:
        title = f"night {night:%Y%m%d}: the reduced frames' seeing, sky, zero point and WCS rms"
        render.night_trends(output / _TRENDS, _clean(drawable), title)
        images["trends"] = _TRENDS
    solved = [f for f in frames if f.get("wcs") == "solved"]
    zps = [f for f in frames if f.get("zeropoint") is not None]
    data = {
        "night": night,
        "dayobs": f"{night:%Y%m%d}",
        "camera": camera,
        "cameras": inventory.cameras,
        "generated_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
        "pylcogt_version": __version__,
        "database": database,
        "summary": {
            "masters": len(masters),
            "masters_bad": sum(1 for m in masters if m["is_bad"]),
            "frames_left_out_of_masters": len({f["id"] for m in masters for f in m["left_out"]}),
            "frames_reduced": len(frames),
            "frames_not_reduced": len(not_reduced),
            "frames_solved": len(solved),
            "frames_with_zeropoint": len(zps),
            "errors": len(errors),
        },
        "images": images,
        "masters": masters,
        "frames": frames,
        "not_reduced": not_reduced,
        "errors": errors,
    }
    data = _clean(data)
    (output / ".qc.json.tmp").write_text(json.dumps(data, indent=1) + "\n")
    (output / ".qc.json.tmp").replace(output / "qc.json")
    page = write_page(output / "index.html", data)
    _remove_stale_pictures(output, data)
    return NightReport(output=output, page=page, data=data, errors=errors)
