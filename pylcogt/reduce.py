"""Reduce one registered science frame: select masters, run the chain, write, record.

Service code (database and files) around :func:`pylcogt.pipeline.reduce_science`. Outcomes are
recorded on the frame's row: ``done`` with its product and a new reduction in its history
(:class:`~pylcogt.db.models.Reduction`: when, by which pipeline version, the product's sha256, and
each master's id and sha256, the previous reduction superseded); ``waiting_calibration`` when a
master does not exist yet (the reason names what is missing); ``failed`` when the frame's data
are bad. Every master's file is checked against its registered sha256 when it is read, and the
product's header names each master file and its sha256 (``L1IDBIAS``/``L1CKBIAS``, dark, flat,
mask), the pipeline version (``PIPEVER``) and whether the calibration is final or provisional
(``L1CALST``, :mod:`pylcogt.recalibrate`; the registry's ``reductions.calibration_status`` is
the current word: a provisional reduction whose masters became final is promoted there, its
file is not rewritten).

The product is written atomically first, then the frame's row and its reduction are recorded in
one transaction: a crash leaves the old result or the new one, never a mix. With products kept
(``PYLCOGT_KEEP_PRODUCTS``), the superseded product is first linked to
``processed/superseded/NAME.red<ID>.fits.fz`` and its reduction row says so (``kept_path``).

The worker passes its claim's ``lease_token``: the transaction that records the outcome then
starts with :func:`pylcogt.db.queue.fence_frame` (before the product is written), so a worker
whose lease was taken over writes and records nothing (:class:`~pylcogt.db.queue.LeaseLostError`).
``output_dir`` reproduces a reduction instead: the product is written there and nothing is
recorded (``pylcogt reduce --as-of T --output-dir DIR``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, sessionmaker

from pylcogt import lifecycle, pipeline_version
from pylcogt.calibrations.build import load_master
from pylcogt.calibrations.select import select_reduction_masters
from pylcogt.config import Settings
from pylcogt.db.clock import db_now
from pylcogt.db.models import (
    CalibrationStatus,
    CalibrationType,
    FrameState,
    Instrument,
    RawFrame,
    Reduction,
    ReductionStatus,
)
from pylcogt.db.queue import fence_frame
from pylcogt.errors import CalibrationNotFoundError, UnprocessableFrameError, one_line
from pylcogt.instruments import SCIENCE_OBSTYPES, crosstalk_lookup
from pylcogt.io.products import write_product
from pylcogt.io.raw_read import read_raw
from pylcogt.io.scan import sha256_file
from pylcogt.io.scratch import TEMP_SUFFIX, temp_prefix
from pylcogt.lifecycle import FrameEvent, UsedMaster, frame_transition
from pylcogt.paths import kept_product_path, product_path
from pylcogt.photometry.config import PhotometryConfig
from pylcogt.pipeline import Masters, reduce_science
from pylcogt.recalibrate import BETTER, ROLE, describe_change, reduction_status
from pylcogt.science import astrometry_config, catalog_and_wcs

__all__ = ["ReduceResult", "reduce_frame", "FIRST_REASON"]

log = logging.getLogger(__name__)

#: The reason recorded with a frame's first reduction.
FIRST_REASON = "first reduction"

#: header card -> role, for the master names and checksums in a product
_CHECKSUM_CARDS = {"bias": "L1CKBIAS", "dark": "L1CKDARK", "flat": "L1CKFLAT", "bpm": "L1CKMASK"}


@dataclass
class ReduceResult:
    frame_id: int
    path: str
    state: str
    product_path: str | None = None
    error: str | None = None
    masters: dict[str, dict] = field(default_factory=dict)  # role -> {id, path, checksum, ..}
    n_sources: int | None = None  # rows of the product's CAT
    wcs: str | None = None  # astrometry status: 'solved' or 'failed'
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    reduction_id: int | None = None
    calibration_status: str | None = None  # 'provisional' or 'final'
    reason: str | None = None  # why this reduction was made
    selected_at: dt.datetime | None = None  # when its masters were selected (registry clock)
    scope: tuple | None = None  # (instrument id, binning, readout mode, DAY-OBS)


def _load_frame(session: Session, frame_id: int) -> RawFrame:
    query = select(RawFrame).options(joinedload(RawFrame.instrument).joinedload(Instrument.site))
    return session.scalars(query.where(RawFrame.id == frame_id)).one()


def _record_state(session: Session, frame: RawFrame, frame_event: FrameEvent, error: str) -> None:
    if not lifecycle.apply_frame_event(frame, frame_event):
        msg = f"{frame.filename} is {frame.state.value}: it cannot become {frame_event.value}"
        raise lifecycle.IllegalTransitionError(msg)
    frame.last_error = error
    if frame_event is FrameEvent.FAILED:
        frame.attempts += 1


def _better(session: Session, frame_id: int, chosen: dict) -> str | None:
    """"better calibration: ..." naming every master that differs from the current reduction's
    (the frame was re-queued for the first; others may have been replaced since)."""
    previous = session.scalars(
        select(Reduction).where(Reduction.frame_id == frame_id,
                                Reduction.status == ReductionStatus.CURRENT)
    ).first()  # fmt: skip
    if previous is None:
        return None
    return describe_change({m.role.value: m.master_id for m in previous.masters}, chosen)


def _keep_previous(session: Session, frame_id: int, out: Path) -> str | None:
    """Link the current product (if it is still the current reduction's content) to its
    ``superseded/`` name before it is replaced; returns that path (``None``: nothing kept)."""
    current = session.scalars(
        select(Reduction).where(Reduction.frame_id == frame_id,
                                Reduction.status == ReductionStatus.CURRENT)
    ).first()  # fmt: skip
    if current is None or current.product_checksum is None:
        return None
    kept = kept_product_path(Path(current.product_path), current.id)
    if kept.exists() and sha256_file(kept) == current.product_checksum:
        return str(kept)  # kept by an attempt that did not get to record its result
    source = Path(current.product_path)
    if not source.exists() or sha256_file(source) != current.product_checksum:
        return None  # replaced or lost already: the row keeps its checksum, no file
    kept.parent.mkdir(parents=True, exist_ok=True)
    tmp = kept.with_name(f"{temp_prefix(kept.name)}link{TEMP_SUFFIX}")  # owner in the name
    tmp.unlink(missing_ok=True)
    os.link(source, tmp)
    os.replace(tmp, kept)
    return str(kept)


def reduce_frame(
    maker: sessionmaker[Session],
    settings: Settings,
    frame_id: int,
    *,
    as_of: dt.datetime | None = None,
    lease_token: int | None = None,
    worker: str | None = None,
    output_dir: Path | None = None,
) -> ReduceResult:
    """Reduce registered science frame ``frame_id`` and record the outcome (module doc).

    Masters are selected as the registry stood at ``as_of`` when given (registered by then and
    not yet superseded or marked bad), and never observed after the frame's
    ``calibration_cutoff`` (set by a backfill: the end of its night).

    ``lease_token``: the worker's claim on the frame; the outcome is recorded (and the product
    written) only while the frame is still ``processing`` under that token. ``worker``: who
    reduces it (recorded). ``output_dir``: write the product there and record nothing.
    """
    reproduce = output_dir is not None
    with maker() as session:

        def fence() -> None:
            if reproduce:
                return
            if lease_token is not None:
                fence_frame(session, frame_id, lease_token)
            else:  # by hand: the record transaction starts here, ordered with mark-bad
                lifecycle.begin_record(session)

        frame = _load_frame(session, frame_id)
        result = ReduceResult(frame_id=frame.id, path=frame.path, state=frame.state.value)
        if frame.obstype not in SCIENCE_OBSTYPES:
            msg = (
                f"{frame.filename} is a {frame.obstype} frame: calibration frames are combined "
                f"into masters with `pylcogt stack`, not reduced one by one"
            )
            raise UnprocessableFrameError(msg, path=frame.path)
        if lease_token is None and not reproduce and frame.state is FrameState.PROCESSING:
            msg = (f"{frame.filename} is being processed by worker {frame.lease_owner}: run "
                   f"`pylcogt reduce` again once it is done (or reproduce it elsewhere with "
                   f"--output-dir)")  # fmt: skip
            raise UnprocessableFrameError(msg, path=frame.path)
        started = db_now(session)
        result.selected_at = started
        result.scope = (frame.instrument_id, frame.binning, frame.readout_mode, frame.dayobs)
        reason = frame.redo_reason or (
            FIRST_REASON if frame.product_path is None else "reduced again"
        )
        if lease_token is None and not reproduce:
            reason = "pylcogt reduce" + (f" --as-of {as_of.isoformat(sep=' ')}" if as_of else "")
        try:
            chosen = select_reduction_masters(session, frame, as_of=as_of)
            loaded = {
                t: load_master(sel.master, fallback_later=sel.fallback_later)
                for t, sel in chosen.items()
            }
            masters = Masters(
                bias=loaded[CalibrationType.BIAS],
                dark=loaded[CalibrationType.DARK],
                flat=loaded[CalibrationType.SKYFLAT],
                bpm=loaded.get(CalibrationType.BPM),
            )
            status = reduction_status(session, frame, [s.master for s in chosen.values()],
                                      started, as_of=as_of)  # fmt: skip
            used = [
                UsedMaster(ROLE[t].value, sel.master.id, sel.master.checksum, sel.fallback_later)
                for t, sel in chosen.items()
            ]
            if reason.startswith(BETTER) and lease_token is not None:
                reason = _better(session, frame.id, chosen) or reason
            paths = {ROLE[t].value: sel.master.path for t, sel in chosen.items()}
            session.commit()  # no read transaction held open over the computation
            tick = time.perf_counter()
            reduced = reduce_science(
                read_raw(frame.path, crosstalk=crosstalk_lookup(settings.crosstalk_file)),
                masters,
                exptime_s=frame.exptime_s,
            )
            _stamp(reduced.header, used, status)
            out = product_path(settings.data_dir, site=frame.instrument.site.code,
                               camera=frame.instrument.camera, dayobs=frame.dayobs,
                               raw_filename=frame.filename)  # fmt: skip
            if reproduce:
                out = Path(output_dir) / out.name
            result.timings["calibrate"] = time.perf_counter() - tick
            science = catalog_and_wcs(
                reduced,
                astrometry_config(settings.index_dir),
                refcat=settings.refcat or maker,
                photometry=PhotometryConfig(bright_mag=settings.refcat_bright_mag),
            )
            result.timings.update(science.timings)
            tick = time.perf_counter()
            fence()
            bad = {} if reproduce else lifecycle.bad_masters(session, [u.master_id for u in used])
            if bad:  # marked bad after they were chosen: nothing written, the frame goes again
                return _requeue_for_bad(session, frame, bad, result)
            kept = None
            if settings.keep_products and not reproduce:
                kept = _keep_previous(session, frame.id, out)
            checksum = write_product(out, science.frame, catalog=science.catalog)
            result.timings["write"] = time.perf_counter() - tick
        except CalibrationNotFoundError as exc:
            if reproduce:
                raise
            fence()
            _record_state(session, frame, FrameEvent.WAITING, one_line(exc))
            session.commit()
            log.warning("%s waits for a calibration: %s", frame.filename, exc)
            result.state, result.error = frame.state.value, one_line(exc)
            return result
        except UnprocessableFrameError as exc:
            if reproduce:
                raise
            fence()
            _record_state(session, frame, FrameEvent.FAILED, one_line(exc))
            session.commit()
            log.error("%s failed: %s", frame.filename, exc)
            result.state, result.error = frame.state.value, one_line(exc)
            return result

        for u in used:
            result.masters[u.role] = {"id": u.master_id, "path": paths[u.role],
                                      "checksum": u.checksum,
                                      "fallback_later": u.fallback_later}  # fmt: skip
        result.n_sources = len(science.catalog)
        result.wcs = science.solution.status
        result.calibration_status = status.value
        result.reason = reason
        if reproduce:
            result.product_path = str(out)
            log.info("reproduced %s -> %s (nothing recorded)", frame.filename, out)
            return result
        now = db_now(session)
        event = FrameEvent.REDUCED if lease_token is not None else FrameEvent.REDUCED_BY_HAND
        if not lifecycle.apply_frame_event(frame, event):
            msg = (f"{frame.filename} is {frame.state.value} (a worker holds it?): its product "
                   f"was written, the reduction is not recorded; run `pylcogt reduce` again "
                   f"once the worker is done")  # fmt: skip
            raise UnprocessableFrameError(msg, path=frame.path)
        reduction = lifecycle.record_reduction(
            session, frame_id=frame.id, masters=used, product_path=str(out),
            product_checksum=checksum, calibration_status=status, reason=reason,
            started_at=started, now=now, pipeline_version=pipeline_version(),
            worker=worker or ("pylcogt reduce" if lease_token is None else None), as_of=as_of,
            kept_path=kept,
        )  # fmt: skip
        frame.product_path = str(out)
        frame.last_error = None
        frame.redo_reason = None
        result.reduction_id = reduction.id
        session.commit()
        result.state, result.product_path = FrameState.DONE.value, str(out)
        log.info("reduced %s -> %s (%s)", frame.filename, out.name, status.value)
        return result


def _requeue_for_bad(session: Session, frame: RawFrame, bad: dict[int, str],
                     result: ReduceResult) -> ReduceResult:  # fmt: skip
    marked = ", ".join(f"{i} ({why})" for i, why in sorted(bad.items()))
    reason = f"master(s) {marked} marked bad while the frame was reduced: reduced again"
    table = RawFrame.__table__
    session.execute(frame_transition(FrameEvent.REQUEUED, table.c.id == frame.id,
                                     **lifecycle.requeue_values(reason)))  # fmt: skip
    session.commit()
    log.warning("%s: %s", frame.filename, reason)
    result.state, result.error = FrameState.PENDING.value, reason
    return result


def _stamp(header, used: list[UsedMaster], status: CalibrationStatus) -> None:
    """Name each master's checksum, the pipeline version and the calibration status."""
    for u in used:
        header[_CHECKSUM_CARDS[u.role]] = u.checksum
    header["PIPEVER"] = (pipeline_version(), "pylcogt version that made this product")
    header["L1CALST"] = (status.value, "calibration status when written (registry: current)")
