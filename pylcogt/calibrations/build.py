"""Build a night's master calibration from its registered frames, and register it.

This is service code (database, files): it selects the frames of one group, reads each, runs
:func:`pylcogt.pipeline.prepare_master_input` with the masters that group needs (bias for darks;
bias and dark for flats, each chosen for the frame's own DATE-OBS), spills the prepared frames
to disk, drops flats that fail :func:`~pylcogt.calibrations.prepare.check_flats`, stacks the
rest with the 3-rstd clipped mean, writes the master atomically and records it with its inputs.

A group is one instrument, night (DAY-OBS), type, binning and readout mode, and for flats one
filter: the afternoon and morning sets of a night go into one master.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, joinedload, sessionmaker

from pylcogt.calibrations.bpm import derive_bpm
from pylcogt.calibrations.prepare import check_flats
from pylcogt.calibrations.select import select_master
from pylcogt.calibrations.stack import DEFAULT_MEMORY_BUDGET_BYTES, stack_sources
from pylcogt.config import Settings
from pylcogt.db.models import (
    CalibrationRole,
    CalibrationType,
    FrameCalibration,
    FrameState,
    Instrument,
    MasterCalibration,
    MasterInput,
    RawFrame,
    utcnow,
)
from pylcogt.db.session import writer
from pylcogt.errors import ConfigurationError, NotEnoughInputsError, UnprocessableFrameError
from pylcogt.frame import Frame, PixelFlag
from pylcogt.instruments import crosstalk_lookup
from pylcogt.io.products import read_product, write_product
from pylcogt.io.raw_read import read_raw
from pylcogt.io.spill import SpillDir
from pylcogt.paths import master_path
from pylcogt.pipeline import (
    NEEDED_MASTERS,
    LoadedMaster,
    Masters,
    common_master_err,
    prepare_master_input,
)
from pylcogt.stages.flat import DEFAULT_MIN_RESPONSE

__all__ = [
    "GroupKey",
    "BuildResult",
    "MIN_INPUTS",
    "group_frames",
    "build_master",
    "build_bpm_master",
    "add_external_bpm",
    "register_master",
    "load_master",
]

log = logging.getLogger(__name__)

#: Fewest usable frames a master may be built from, per type (configurable per call).
MIN_INPUTS = {"BIAS": 5, "DARK": 3, "SKYFLAT": 3}
STACK_K = 3.0  # rstd, per-pixel rejection when stacking


@dataclass(frozen=True)
class GroupKey:
    """One master's worth of frames. ``filter_name`` is ``''`` except for flats."""

    instrument_id: int
    dayobs: dt.date
    obstype: str
    binning: str
    readout_mode: str
    filter_name: str = ""


@dataclass
class BuildResult:
    master_id: int
    path: str
    n_inputs: int
    dropped: dict[str, str] = field(default_factory=dict)  # file name -> reason
    level: float | None = None


def group_frames(session: Session, key: GroupKey) -> list[RawFrame]:
    """The group's registered frames (any state but rejected), in DATE-OBS order."""
    query = (
        select(RawFrame)
        .where(
            RawFrame.instrument_id == key.instrument_id,
            RawFrame.dayobs == key.dayobs,
            RawFrame.obstype == key.obstype,
            RawFrame.binning == key.binning,
            RawFrame.readout_mode == key.readout_mode,
            RawFrame.state != FrameState.REJECTED,
        )
        .order_by(RawFrame.dateobs, RawFrame.id)
    )
    if key.obstype == "SKYFLAT":
        query = query.where(RawFrame.filter_name == key.filter_name)
    return list(session.scalars(query))


#: Masters kept in memory per process (a 4k master is ~150 MB): one instrument's bias, dark,
#: flat and mask, so consecutive frames of a night skip reading them (0.4-0.8 s each).
MASTER_CACHE_SIZE = 4
_master_cache: OrderedDict[tuple[int, str, str], Frame] = OrderedDict()


def load_master(master: MasterCalibration, *, fallback_later: bool = False) -> LoadedMaster:
    """A registered master's product, read once per process: cached by id, checksum and path,
    so a master rebuilt in place (new checksum) is read again."""
    key = (master.id, master.checksum, master.path)
    frame = _master_cache.get(key)
    if frame is None:
        frame = read_product(master.path)
        _master_cache[key] = frame
        while len(_master_cache) > MASTER_CACHE_SIZE:
            _master_cache.popitem(last=False)
    else:
        _master_cache.move_to_end(key)
    return LoadedMaster(frame, master.id, fallback_later)


def _masters_for(session: Session, frame: RawFrame, obstype: str) -> tuple[Masters, dict[str, int]]:
    """The masters preparing ``frame`` needs, and their ids by role (for provenance); only
    masters observed at or before the frame's ``calibration_cutoff`` when it has one."""
    chosen = {}
    for needed in NEEDED_MASTERS[obstype]:
        selection = select_master(
            session, instrument_id=frame.instrument_id, obstype=needed, binning=frame.binning,
            readout_mode=frame.readout_mode, filter_name=frame.filter_name, dateobs=frame.dateobs,
            observed_before=frame.calibration_cutoff,
        )  # fmt: skip
        chosen[needed] = load_master(selection.master)
    ids = {selection_role: m.master_id for selection_role, m in chosen.items()}
    return Masters(bias=chosen.get("BIAS"), dark=chosen.get("DARK")), ids


def _shared_err_terms(obstype: str, masters: Masters, exptime_s: float | None,
                      level: float | None) -> list:  # fmt: skip
    """``(master key, master ERR, coefficient)`` of the masters subtracted from one master input
    (see :func:`pylcogt.pipeline.common_master_err`): a dark rate holds ``-bias / t``; a flat
    ``-(bias + dark_rate t) / norm``. The key is the master's role and registry id."""
    t = float(exptime_s or 0.0)
    if obstype == "DARK" and t > 0:
        factors = {"bias": 1.0 / t}
    elif obstype == "SKYFLAT" and level:
        factors = {"bias": 1.0 / level, "dark": t / level}
    else:
        return []
    terms = []
    for role, factor in factors.items():
        loaded = getattr(masters, role)
        if loaded is not None and loaded.frame.err is not None:
            terms.append(((role, loaded.master_id), loaded.frame.err, factor))
    return terms


def _fail_frame(session: Session, frame: RawFrame, error: Exception) -> None:
    frame.state = FrameState.FAILED
    frame.last_error = str(error)
    frame.attempts += 1


def _master_frame(key: GroupKey, result, levels: list[float], inputs: list[RawFrame],
                  instrument: Instrument, unit: str) -> Frame:  # fmt: skip
    sci = result.mean
    bpm = result.bpm.copy()
    empty = ~np.isfinite(sci)
    if empty.any():
        sci = np.where(empty, np.float32(0.0 if key.obstype != "SKYFLAT" else 1.0), sci)
        bpm[empty] |= np.uint8(PixelFlag.BAD)
    if key.obstype == "SKYFLAT":
        bpm[~(sci >= np.float32(DEFAULT_MIN_RESPONSE))] |= np.uint8(PixelFlag.LOW_FLAT)
    err = None if result.err is None else np.where(empty, np.float32(0), result.err)
    mean_time = _mean_time([f.dateobs for f in inputs])
    header = fits.Header()
    header["OBSTYPE"] = (key.obstype, "master calibration type")
    header["ISMASTER"] = (True, "a master calibration made by pylcogt")
    header["SITEID"] = instrument.site.code
    header["ENCID"] = instrument.enclosure
    header["TELID"] = instrument.telescope
    header["INSTRUME"] = instrument.camera
    header["CCDSUM"] = (key.binning.replace("x", " "), "binning")
    header["CONFMODE"] = key.readout_mode or "N/A"
    header["FILTER"] = key.filter_name or "N/A"
    header["DAY-OBS"] = key.dayobs.strftime("%Y%m%d")
    header["DATE-OBS"] = (mean_time.isoformat(timespec="milliseconds"), "mean DATE-OBS of inputs")
    header["NINPUTS"] = (len(inputs), "frames stacked")
    header["STACKK"] = (STACK_K, "[rstd] per-pixel rejection threshold")
    if key.obstype == "BIAS":
        header["BIASLVL"] = (round(float(np.mean(levels)), 4), "[e-] mean level of the inputs")
    per_input = len(levels) == len(inputs)  # bias levels, flat normalisations (not darks)
    what = "bias level" if key.obstype == "BIAS" else "normalisation"
    for i, frame in enumerate(inputs, start=1):
        header[f"IMCOM{i:03d}" if i < 1000 else f"IMC{i:05d}"] = frame.filename
        if per_input:
            header[f"IMLVL{i:03d}" if i < 1000 else f"IML{i:05d}"] = (
                round(float(levels[i - 1]), 3), f"[e-] {what} of input {i}")
    return Frame(sci=sci.astype(np.float32, copy=False), err=err, bpm=bpm, header=header,
                 unit=unit, name="")  # fmt: skip


def _mean_time(times: list[dt.datetime]) -> dt.datetime:
    origin = min(times)
    offset = sum((t - origin).total_seconds() for t in times) / len(times)
    return origin + dt.timedelta(seconds=offset)


def _fresh_path(session: Session, path: Path) -> Path:
    """``path``, or ``path`` with ``-r2``, ``-r3``... when a master marked bad holds it: a bad
    master keeps its file and row (provenance), and its rebuild gets a file of its own."""
    candidate, n = path, 1
    while True:
        row = session.scalar(
            select(MasterCalibration).where(MasterCalibration.path == str(candidate))
        )
        if row is None or not row.is_bad:
            return candidate
        n += 1
        candidate = path.with_name(path.name.replace(".fits.fz", f"-r{n}.fits.fz"))


def register_master(
    session: Session,
    key: GroupKey,
    *,
    path: str,
    checksum: str,
    dateobs: dt.datetime,
    input_ids: list[int],
) -> MasterCalibration:
    """Insert (or, for the same path, replace) a master's row and its input rows (flushed)."""
    row = session.scalar(select(MasterCalibration).where(MasterCalibration.path == path))
    if row is None:
        row = MasterCalibration(path=path)
        session.add(row)
    row.obstype = CalibrationType(key.obstype)
    row.instrument_id = key.instrument_id
    row.binning = key.binning
    row.readout_mode = key.readout_mode
    row.filter_name = key.filter_name if key.obstype == "SKYFLAT" else ""
    row.dayobs = key.dayobs
    row.dateobs = dateobs
    row.checksum = checksum
    row.is_bad = False
    row.n_inputs = len(input_ids)
    row.created_at = utcnow()
    session.flush()
    session.execute(delete(MasterInput).where(MasterInput.master_id == row.id))
    session.add_all(MasterInput(master_id=row.id, frame_id=i) for i in sorted(set(input_ids)))
    session.flush()
    return row


def build_bpm_master(
    maker: sessionmaker[Session],
    settings: Settings,
    key: GroupKey,
    *,
    fence: Callable[[Session], None] | None = None,
) -> BuildResult:
    """Derive the night's bad-pixel mask from its master dark and flats, write and register it.

    Uses the good masters of ``key``'s night, instrument, binning and readout mode (any filter).
    Its inputs (provenance) are the raw frames of those masters. ``fence``: as for
    :func:`build_master`, called before the mask is written.
    """
    with maker() as session:
        query = select(Instrument).options(joinedload(Instrument.site))
        instrument = session.scalars(query.where(Instrument.id == key.instrument_id)).one()
        masters = (
            session.scalars(
                select(MasterCalibration)
                .options(joinedload(MasterCalibration.inputs))
                .where(
                    MasterCalibration.instrument_id == key.instrument_id,
                    MasterCalibration.dayobs == key.dayobs,
                    MasterCalibration.binning == key.binning,
                    MasterCalibration.readout_mode == key.readout_mode,
                    MasterCalibration.is_bad.is_(False),
                    MasterCalibration.obstype.in_([CalibrationType.DARK, CalibrationType.SKYFLAT]),
                )
                .order_by(MasterCalibration.id)
            )
            .unique()
            .all()
        )
        darks = [m for m in masters if m.obstype is CalibrationType.DARK]
        flats = [m for m in masters if m.obstype is CalibrationType.SKYFLAT]
        if not masters:
            raise NotEnoughInputsError(
                f"{instrument.camera} {key.dayobs:%Y%m%d}: no master dark or flat for "
                f"{key.binning} to derive a bad-pixel mask from; run `pylcogt stack` first"
            )
        dark = read_product(darks[-1].path) if darks else None
        mask = derive_bpm(dark, [read_product(m.path) for m in flats])
        used = ([darks[-1]] if darks else []) + flats
        mask.header["OBSTYPE"] = ("BPM", "master calibration type")
        mask.header["INSTRUME"] = instrument.camera
        mask.header["DAY-OBS"] = key.dayobs.strftime("%Y%m%d")
        path = master_path(settings.data_dir, site=instrument.site.code, camera=instrument.camera,
                           dayobs=key.dayobs, obstype="BPM", binning=key.binning,
                           readout_mode=key.readout_mode)  # fmt: skip
        if fence is not None:
            fence(session)
        path = _fresh_path(session, path)  # a mask marked bad keeps its file and row
        checksum = write_product(path, mask)
        input_ids = [i.frame_id for m in used for i in m.inputs]
        row = register_master(session, key, path=str(path), checksum=checksum,
                              dateobs=_mean_time([m.dateobs for m in used]),
                              input_ids=input_ids)  # fmt: skip
        session.commit()
        log.info("derived bad-pixel mask %s: %s bad pixels", path.name, mask.header["NBADPIX"])
        return BuildResult(master_id=row.id, path=str(path), n_inputs=row.n_inputs)


def add_external_bpm(
    maker: sessionmaker[Session],
    settings: Settings,
    source: str,
    *,
    camera: str,
    dayobs: dt.date,
    binning: str,
    readout_mode: str = "",
) -> BuildResult:
    """Register a bad-pixel mask made elsewhere (``pylcogt calibrations add FILE --type BPM``).

    The mask is copied into the data directory as a master product; its effective time is noon
    UTC of ``dayobs`` (selection takes the mask closest in time, like a derived one).
    """
    from pylcogt.io.products import read_mask

    try:
        flags = read_mask(source)
    except (OSError, ValueError) as exc:
        raise UnprocessableFrameError(f"cannot use {source} as a bad-pixel mask: {exc}") from None
    with writer(maker)() as session:
        query = select(Instrument).options(joinedload(Instrument.site))
        instruments = session.scalars(query.where(Instrument.camera == camera.lower())).all()
        if len(instruments) != 1:
            raise ConfigurationError(
                f"camera {camera!r} matches {len(instruments)} registered instruments; "
                "ingest its frames first (it must match exactly one)"
            )
        (instrument,) = instruments
        header = fits.Header()
        header["OBSTYPE"] = ("BPM", "master calibration type")
        header["INSTRUME"] = instrument.camera
        header["DAY-OBS"] = dayobs.strftime("%Y%m%d")
        header["BPMFILE"] = (str(source)[-60:], "mask made outside pylcogt")
        header["NBADPIX"] = (int(np.count_nonzero(flags)), "pixels flagged")
        mask = Frame(sci=flags.astype(np.float32), err=None, bpm=flags, header=header, unit="")
        path = master_path(settings.data_dir, site=instrument.site.code, camera=instrument.camera,
                           dayobs=dayobs, obstype="bpm-added", binning=binning,
                           readout_mode=readout_mode)  # fmt: skip
        checksum = write_product(path, mask)
        key = GroupKey(instrument.id, dayobs, "BPM", binning, readout_mode)
        noon = dt.datetime.combine(dayobs, dt.time(12))
        row = register_master(session, key, path=str(path), checksum=checksum, dateobs=noon,
                              input_ids=[])  # fmt: skip
        session.commit()
        return BuildResult(master_id=row.id, path=str(path), n_inputs=0)


def build_master(
    maker: sessionmaker[Session],
    settings: Settings,
    key: GroupKey,
    *,
    min_inputs: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    progress: Callable[[str], None] | None = None,
    fence: Callable[[Session], None] | None = None,
) -> BuildResult:
    """Build, write and register the master of ``key``; returns what was made.

    ``fence(session)`` (the worker's lease check, :func:`pylcogt.db.queue.fence_group`) is
    called once the master is stacked, before its file is written: it starts the transaction
    that registers the master, and raises to abandon the build with nothing written or recorded.
    """
    obstype = key.obstype
    minimum = MIN_INPUTS[obstype] if min_inputs is None else min_inputs
    dropped: dict[str, str] = {}
    used: dict[int, dict[str, int]] = {}  # frame id -> {BIAS: master id, ...}
    with maker() as session:
        query = select(Instrument).options(joinedload(Instrument.site))
        instrument = session.scalars(query.where(Instrument.id == key.instrument_id)).one()
        frames = group_frames(session, key)
        if len(frames) < minimum:
            raise NotEnoughInputsError(
                f"{instrument.camera} {key.dayobs:%Y%m%d} {obstype} {key.binning} "
                f"{key.filter_name}: {len(frames)} frame(s) registered, at least {minimum} needed"
            )
        with SpillDir(settings.data_dir) as spill:
            prepared: list[tuple[RawFrame, float | None]] = []
            shared: dict[int, list] = {}  # frame id -> [(master ERR, coefficient)]
            for n, frame in enumerate(frames, start=1):
                try:
                    raw = read_raw(frame.path, crosstalk=crosstalk_lookup(settings.crosstalk_file))
                    masters, used[frame.id] = _masters_for(session, frame, obstype)
                    # the masters' own errors are shared by every input: added once, below
                    ready, level = prepare_master_input(raw, obstype, masters,
                                                        exptime_s=frame.exptime_s,
                                                        master_err=False)  # fmt: skip
                    shared[frame.id] = _shared_err_terms(obstype, masters, frame.exptime_s,
                                                         level)  # fmt: skip
                except UnprocessableFrameError as exc:
                    log.warning("%s left out of the %s master: %s", frame.filename, obstype, exc)
                    dropped[frame.filename] = str(exc)
                    _fail_frame(session, frame, exc)
                    continue
                spill.save(str(frame.id), ready)
                prepared.append((frame, level))
                if progress:
                    progress(f"prepared {n}/{len(frames)} {frame.filename}")
            if obstype == "SKYFLAT" and prepared:
                checks = check_flats([spill.load(str(f.id)) for f, _ in prepared])
                kept = []
                for (frame, level), check in zip(prepared, checks, strict=True):
                    if check.reason:
                        log.warning("%s left out of the flat: %s", frame.filename, check.reason)
                        dropped[frame.filename] = check.reason
                    else:
                        kept.append((frame, level))
                prepared = kept
            if len(prepared) < minimum:
                session.commit()  # keep the failed frames' reasons
                raise NotEnoughInputsError(
                    f"{instrument.camera} {key.dayobs:%Y%m%d} {obstype}: only {len(prepared)} "
                    f"usable frame(s) of {len(frames)} (at least {minimum} needed): "
                    + "; ".join(f"{k}: {v}" for k, v in dropped.items())
                )
            result = stack_sources(
                [spill.band_source(str(f.id)) for f, _ in prepared],
                k=STACK_K, memory_budget_bytes=memory_budget_bytes,
            )  # fmt: skip
            inputs = [f for f, _ in prepared]
            terms = [t for f in inputs for t in shared.get(f.id, [])]
            if result.err is not None and terms:
                result = dataclasses.replace(
                    result, err=common_master_err(result.err, terms, len(inputs)))
            levels = [lv for _, lv in prepared if lv is not None]
            unit = {"BIAS": "electron", "DARK": "electron/s", "SKYFLAT": ""}[obstype]
            master = _master_frame(key, result, levels, inputs, instrument, unit)

        path = master_path(settings.data_dir, site=instrument.site.code, camera=instrument.camera,
                           dayobs=key.dayobs, obstype=obstype, binning=key.binning,
                           readout_mode=key.readout_mode, filter_name=key.filter_name)  # fmt: skip
        if fence is not None:
            fence(session)
        path = _fresh_path(session, path)
        checksum = write_product(path, master)
        row = register_master(session, key, path=str(path), checksum=checksum,
                              dateobs=_mean_time([f.dateobs for f in inputs]),
                              input_ids=[f.id for f in inputs])  # fmt: skip
        # provenance of each input: the masters it was prepared with (a dark's bias, ...)
        input_ids = [f.id for f in inputs]
        session.execute(delete(FrameCalibration).where(FrameCalibration.frame_id.in_(input_ids)))
        session.add_all(
            FrameCalibration(frame_id=fid, role=CalibrationRole.BIAS if t == "BIAS" else
                             CalibrationRole.DARK, master_id=mid)
            for fid in input_ids
            for t, mid in used.get(fid, {}).items()
        )  # fmt: skip
        for frame in inputs:
            if frame.state is not FrameState.DONE:
                frame.state = FrameState.DONE
                frame.last_error = None
        session.commit()
        log.info("built %s master %s from %d frames", obstype, path.name, len(inputs))
        return BuildResult(master_id=row.id, path=str(path), n_inputs=len(inputs), dropped=dropped,
                           level=float(np.mean(levels)) if levels else None)  # fmt: skip
