"""Reduce one registered science frame: select masters, run the chain, write, record.

Service code (database and files) around :func:`pylcogt.pipeline.reduce_science`. Outcomes are
recorded on the frame's row: ``done`` with its product; ``waiting_calibration`` when a master
does not exist yet (the reason names what is missing); ``failed`` when the frame's data are bad.
The product is written atomically first, then the row and its provenance rows
(``frame_calibrations``) are replaced in one transaction: a crash leaves the old result or the
new one, never a mix.

The worker passes its claim's ``lease_token``: the transaction that records the outcome then
starts with :func:`pylcogt.db.queue.fence_frame` (before the product is written), so a worker
whose lease was taken over writes and records nothing (:class:`~pylcogt.db.queue.LeaseLostError`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, joinedload, sessionmaker

from pylcogt.calibrations.build import load_master
from pylcogt.calibrations.select import select_master, select_masters_for_frame
from pylcogt.config import Settings
from pylcogt.db.models import (
    CalibrationRole,
    CalibrationType,
    FrameCalibration,
    FrameState,
    Instrument,
    RawFrame,
)
from pylcogt.db.queue import fence_frame
from pylcogt.errors import CalibrationNotFoundError, UnprocessableFrameError
from pylcogt.instruments import SCIENCE_OBSTYPES, crosstalk_lookup
from pylcogt.io.products import write_product
from pylcogt.io.raw_read import read_raw
from pylcogt.paths import product_path
from pylcogt.photometry.config import PhotometryConfig
from pylcogt.pipeline import Masters, reduce_science
from pylcogt.science import astrometry_config, catalog_and_wcs

__all__ = ["ReduceResult", "reduce_frame"]

log = logging.getLogger(__name__)

_ROLE = {
    CalibrationType.BIAS: CalibrationRole.BIAS,
    CalibrationType.DARK: CalibrationRole.DARK,
    CalibrationType.SKYFLAT: CalibrationRole.FLAT,
    CalibrationType.BPM: CalibrationRole.BPM,
}


@dataclass
class ReduceResult:
    frame_id: int
    path: str
    state: str
    product_path: str | None = None
    error: str | None = None
    masters: dict[str, dict] = field(default_factory=dict)  # role -> {id, path}
    n_sources: int | None = None  # rows of the product's CAT
    wcs: str | None = None  # astrometry status: 'solved' or 'failed'
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds


def _load_frame(session: Session, frame_id: int) -> RawFrame:
    query = select(RawFrame).options(joinedload(RawFrame.instrument).joinedload(Instrument.site))
    return session.scalars(query.where(RawFrame.id == frame_id)).one()


def reduce_frame(
    maker: sessionmaker[Session],
    settings: Settings,
    frame_id: int,
    *,
    as_of: dt.datetime | None = None,
    lease_token: int | None = None,
) -> ReduceResult:
    """Reduce registered science frame ``frame_id`` and record the outcome on its row.

    Masters are selected as of ``as_of`` (created before it) when given, and never observed
    after the frame's ``calibration_cutoff`` (set by a backfill: the end of its night).

    ``lease_token``: the worker's claim on the frame; the outcome is recorded (and the product
    written) only while the frame is still ``processing`` under that token.
    """
    with maker() as session:

        def fence() -> None:
            if lease_token is not None:
                fence_frame(session, frame_id, lease_token)

        frame = _load_frame(session, frame_id)
        result = ReduceResult(frame_id=frame.id, path=frame.path, state=frame.state.value)
        if frame.obstype not in SCIENCE_OBSTYPES:
            msg = (
                f"{frame.filename} is a {frame.obstype} frame: calibration frames are combined "
                f"into masters with `pylcogt stack`, not reduced one by one"
            )
            raise UnprocessableFrameError(msg, path=frame.path)
        try:
            needed = (CalibrationType.BIAS, CalibrationType.DARK, CalibrationType.SKYFLAT)
            chosen = select_masters_for_frame(session, frame, needed, as_of=as_of)
            # a bad-pixel mask is applied when one is registered
            with contextlib.suppress(CalibrationNotFoundError):
                chosen[CalibrationType.BPM] = select_master(
                    session, instrument_id=frame.instrument_id, obstype=CalibrationType.BPM,
                    binning=frame.binning, readout_mode=frame.readout_mode, filter_name="",
                    dateobs=frame.dateobs, as_of=as_of, observed_before=frame.calibration_cutoff,
                )  # fmt: skip
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
            session.commit()  # no read transaction held open over the computation
            tick = time.perf_counter()
            reduced = reduce_science(
                read_raw(frame.path, crosstalk=crosstalk_lookup(settings.crosstalk_file)),
                masters,
                exptime_s=frame.exptime_s,
            )
            out = product_path(settings.data_dir, site=frame.instrument.site.code,
                               camera=frame.instrument.camera, dayobs=frame.dayobs,
                               raw_filename=frame.filename)  # fmt: skip
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
            write_product(out, science.frame, catalog=science.catalog)
            result.timings["write"] = time.perf_counter() - tick
        except CalibrationNotFoundError as exc:
            fence()
            frame.state = FrameState.WAITING_CALIBRATION
            frame.last_error = str(exc)
            session.commit()
            log.warning("%s waits for a calibration: %s", frame.filename, exc)
            result.state, result.error = frame.state.value, str(exc)
            return result
        except UnprocessableFrameError as exc:
            fence()
            frame.state = FrameState.FAILED
            frame.attempts += 1
            frame.last_error = str(exc)
            session.commit()
            log.error("%s failed: %s", frame.filename, exc)
            result.state, result.error = frame.state.value, str(exc)
            return result

        session.execute(delete(FrameCalibration).where(FrameCalibration.frame_id == frame.id))
        for obstype, selection in chosen.items():
            session.add(FrameCalibration(frame_id=frame.id, role=_ROLE[obstype],
                                         master_id=selection.master.id))  # fmt: skip
            result.masters[_ROLE[obstype].value] = {
                "id": selection.master.id,
                "path": selection.master.path,
                "fallback_later": selection.fallback_later,
            }
        frame.state = FrameState.DONE
        frame.product_path = str(out)
        frame.last_error = None
        session.commit()
        result.state, result.product_path = frame.state.value, str(out)
        result.n_sources = len(science.catalog)
        result.wcs = science.solution.status
        log.info("reduced %s -> %s", frame.filename, out.name)
        return result
