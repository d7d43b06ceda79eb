"""Build a night's master calibration from its registered frames, and register it.

This is service code (database, files): it selects the frames of one group, reads each, runs
:func:`pylcogt.pipeline.prepare_master_input` with the masters that group needs (bias for darks;
bias and dark for flats, each chosen for the frame's own DATE-OBS), spills the prepared frames
to disk, drops flats that fail :func:`~pylcogt.calibrations.prepare.check_flats`, stacks the
rest with the 3-rstd clipped mean, writes the master atomically and records it with its inputs.

A group is one instrument, night (DAY-OBS), type, binning and readout mode, and for flats one
filter: the afternoon and morning sets of a night go into one master.

Masters are immutable. Before reading any pixel, the build works out what the master would be
made from (:func:`plan_group`: the group's frames, their content and the masters each would be
prepared with) as a digest. When the group's current master was made from exactly that, nothing
is built: the master is promoted to final if the night is over (:func:`pylcogt.nights`), else
left as it is. Otherwise a new master is written under a new name (its version in the name) and
registered as the group's current master, superseding the previous one
(:func:`pylcogt.lifecycle.register_master`): a crash at any point leaves the old master, or the
old master and an unregistered new file, never a changed master. A master registered while its
night goes on is ``provisional``, once the night is over ``final``. When a bias or dark is
superseded, the groups whose current master was prepared with it are marked ``stale`` (rebuilt
with the new one), and when a dark or flat is, the night's bad-pixel mask is derived again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, joinedload, sessionmaker

from pylcogt import lifecycle
from pylcogt.calibrations.bpm import derive_bpm
from pylcogt.calibrations.prepare import (
    LEVEL_K,
    LEVEL_SUBSAMPLE,
    check_flats,
    flat_level_reason,
    header_float,
    outlying_levels,
)
from pylcogt.calibrations.select import select_master
from pylcogt.calibrations.stack import DEFAULT_MEMORY_BUDGET_BYTES, stack_sources
from pylcogt.config import DEFAULT_MIN_INPUTS, Settings
from pylcogt.db.clock import db_now
from pylcogt.db.models import (
    CalibrationStatus,
    CalibrationType,
    FrameState,
    Instrument,
    MasterCalibration,
    MasterInput,
    MasterJob,
    MasterJobStatus,
    RawFrame,
    current_master,
)
from pylcogt.db.session import writer
from pylcogt.errors import (
    ConfigurationError,
    NotEnoughInputsError,
    TransientError,
    UnprocessableFrameError,
    one_line,
)
from pylcogt.frame import Frame, PixelFlag
from pylcogt.instruments import crosstalk_lookup
from pylcogt.io.products import read_product, write_product
from pylcogt.io.raw_read import read_raw
from pylcogt.io.scan import sha256_file
from pylcogt.io.spill import SpillDir
from pylcogt.lifecycle import FrameEvent, frame_transition
from pylcogt.nights import night_over
from pylcogt.paths import master_path
from pylcogt.pipeline import (
    NEEDED_MASTERS,
    LoadedMaster,
    Masters,
    common_master_err,
    prepare_master_input,
)
from pylcogt.stages.flat import DEFAULT_MIN_RESPONSE
from pylcogt.stats import sigma_clipped_mean

__all__ = [
    "GroupKey",
    "BuildResult",
    "GroupPlan",
    "MIN_INPUTS",
    "MasterIntegrityError",
    "MastersChangedError",
    "group_frames",
    "plan_group",
    "current_group_master",
    "build_master",
    "build_bpm_master",
    "add_external_bpm",
    "load_master",
]

log = logging.getLogger(__name__)

#: Fewest usable frames a master may be built from, per type: the defaults of
#: ``--min-inputs`` / ``PYLCOGT_MIN_INPUTS`` / an instrument's ``min_inputs``
#: (:meth:`pylcogt.config.Settings.min_inputs_for`).
MIN_INPUTS = DEFAULT_MIN_INPUTS
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


class MastersChangedError(TransientError):
    """A master the build prepared its frames with was marked bad while it ran: nothing is
    registered; the group is built again (a retry) with the masters then current."""


class MasterIntegrityError(TransientError):
    """A master's file is not what the registry recorded (changed or replaced on disk): the
    frame is retried (the file may be restored) and fails after the worker's attempts."""


@dataclass
class BuildResult:
    """What a build did. ``unchanged``: the group's current master was already made from these
    frames, so nothing was built (``promoted``: it became final); ``superseded``: the master the
    new one replaced."""

    master_id: int
    path: str
    n_inputs: int
    dropped: dict[str, str] = field(default_factory=dict)  # file name -> reason
    level: float | None = None
    unchanged: bool = False
    promoted: bool = False
    superseded: int | None = None
    calibration_status: str = CalibrationStatus.FINAL.value
    stale_groups: int = 0  # groups marked for a rebuild because this master replaced another


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
    """A registered master's product, read once per process (cached by id, checksum and path)
    after checking that the file's sha256 is the one registered: provenance names exactly the
    content that was used. A file that changed on disk is a :class:`MasterIntegrityError`."""
    key = (master.id, master.checksum, master.path)
    frame = _master_cache.get(key)
    if frame is None:
        found = sha256_file(Path(master.path))
        if found != master.checksum:
            msg = (
                f"master {master.id} ({Path(master.path).name}) changed on disk since it was "
                f"registered (sha256 {found[:12]}.. instead of {master.checksum[:12]}..): restore "
                f"the file, or mark it bad with `pylcogt calibrations mark-bad {master.id} "
                f"--reason ...` so that the next best master is used"
            )
            raise MasterIntegrityError(msg)
        frame = read_product(master.path)
        _master_cache[key] = frame
        while len(_master_cache) > MASTER_CACHE_SIZE:
            _master_cache.popitem(last=False)
    else:
        _master_cache.move_to_end(key)
    return LoadedMaster(frame, master.id, fallback_later, master.checksum,
                        master.calibration_status.value)  # fmt: skip


def _prep_masters(session: Session, frame: RawFrame, obstype: str) -> dict[str, MasterCalibration]:
    """The masters preparing ``frame`` needs (a dark's bias; a flat's bias and dark), by type;
    only masters observed at or before the frame's ``calibration_cutoff`` when it has one."""
    chosen = {}
    for needed in NEEDED_MASTERS[obstype]:
        selection = select_master(
            session, instrument_id=frame.instrument_id, obstype=needed, binning=frame.binning,
            readout_mode=frame.readout_mode, filter_name=frame.filter_name, dateobs=frame.dateobs,
            dayobs=frame.dayobs, observed_before=frame.calibration_cutoff,
        )  # fmt: skip
        chosen[needed] = selection.master
    return chosen


def _load_prep(chosen: dict[str, MasterCalibration]) -> Masters:
    loaded = {t: load_master(m) for t, m in chosen.items()}
    return Masters(bias=loaded.get("BIAS"), dark=loaded.get("DARK"))


@dataclass
class GroupPlan:
    """What a group's master would be made from: its frames (any state but rejected), the
    masters each would be prepared with, and their digest."""

    frames: list[RawFrame]
    prep: dict[int, dict[str, MasterCalibration]]  # frame id -> {type: master}
    digest: str


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def plan_group(session: Session, key: GroupKey) -> GroupPlan:
    """:class:`GroupPlan` of ``key`` (no pixels read). Raises
    :class:`~pylcogt.errors.CalibrationNotFoundError` when a frame has no master to be
    prepared with."""
    frames = group_frames(session, key)
    prep = {f.id: _prep_masters(session, f, key.obstype) for f in frames}
    lines = [
        f"{f.id}:{f.checksum}:" + ",".join(f"{t}={m.id}" for t, m in sorted(prep[f.id].items()))
        for f in frames
    ]
    return GroupPlan(frames, prep, _digest(lines))


def current_group_master(session: Session, key: GroupKey) -> MasterCalibration | None:
    """The group's current master: not bad, not superseded (for a bad-pixel mask, the latest
    one derived by pylcogt for that night: masks added from elsewhere have no inputs)."""
    m = MasterCalibration
    query = select(m).where(
        m.instrument_id == key.instrument_id, m.dayobs == key.dayobs,
        m.obstype == CalibrationType(key.obstype), m.binning == key.binning,
        m.readout_mode == key.readout_mode, current_master(m),
    )  # fmt: skip
    if key.obstype == "SKYFLAT":
        query = query.where(m.filter_name == key.filter_name)
    if key.obstype == "BPM":
        query = query.where(m.n_inputs > 0)
    return session.scalars(query.order_by(m.id.desc()).limit(1)).first()


def _next_version(session: Session, key: GroupKey) -> int:
    m = MasterCalibration
    query = select(func.max(m.version)).where(
        m.instrument_id == key.instrument_id, m.dayobs == key.dayobs,
        m.obstype == CalibrationType(key.obstype), m.binning == key.binning,
        m.readout_mode == key.readout_mode,
    )  # fmt: skip
    if key.obstype == "SKYFLAT":
        query = query.where(m.filter_name == key.filter_name)
    return int(session.scalar(query) or 0) + 1


def _free_path(
    session: Session, make_path: Callable[[int], Path], version: int
) -> tuple[Path, int]:
    """The first version from ``version`` on whose file name no registered master holds (an
    unregistered file there is the leftover of a crashed build: it may be overwritten)."""
    while True:
        path = make_path(version)
        taken = session.scalar(
            select(MasterCalibration.id).where(MasterCalibration.path == str(path))
        )
        if taken is None:
            return path, version
        version += 1


def _mark_dependents_stale(session: Session, old: MasterCalibration, now: dt.datetime) -> int:
    """``old`` was superseded: the groups whose current master was prepared with it are rebuilt
    (their ``master_jobs`` row marked ``stale``), and when it was a dark or flat, the night's
    derived bad-pixel mask too. Returns how many groups were marked."""
    m, mi = MasterCalibration.__table__, MasterInput.__table__
    groups: set[tuple] = set()
    if old.obstype in (CalibrationType.BIAS, CalibrationType.DARK):
        rows = session.execute(
            select(m.c.instrument_id, m.c.dayobs, m.c.obstype, m.c.binning, m.c.readout_mode,
                   m.c.filter_name)
            .join(mi, mi.c.master_id == m.c.id)
            .where((mi.c.bias_master_id == old.id) | (mi.c.dark_master_id == old.id),
                   current_master(m))
            .distinct()
        ).all()  # fmt: skip
        groups.update(tuple(r) for r in rows)
    if old.obstype in (CalibrationType.DARK, CalibrationType.SKYFLAT):
        has_mask = session.scalar(
            select(m.c.id).where(
                m.c.instrument_id == old.instrument_id, m.c.dayobs == old.dayobs,
                m.c.binning == old.binning, m.c.readout_mode == old.readout_mode,
                m.c.obstype == CalibrationType.BPM.value, m.c.n_inputs > 0, current_master(m),
            ).limit(1)
        )  # fmt: skip
        if has_mask is not None:
            groups.add((old.instrument_id, old.dayobs, "BPM", old.binning, old.readout_mode, ""))
    for instrument_id, dayobs, obstype, binning, mode, filt in groups:
        _set_job_stale(session, GroupKey(instrument_id, dayobs, getattr(obstype, "value",
                                                                         obstype), binning,
                                         mode, filt), now)  # fmt: skip
    return len(groups)


def _set_job_stale(session: Session, key: GroupKey, now: dt.datetime) -> None:
    j = MasterJob.__table__
    clause = [j.c.instrument_id == key.instrument_id, j.c.dayobs == key.dayobs,
              j.c.obstype == key.obstype, j.c.binning == key.binning,
              j.c.readout_mode == key.readout_mode, j.c.filter_name == key.filter_name]  # fmt: skip
    changed = session.execute(
        update(j).where(*clause).values(status=MasterJobStatus.STALE.value, attempts=0,
                                        next_attempt_at=None, last_error=None, updated_at=now)
    ).rowcount  # fmt: skip
    if not changed:
        session.add(MasterJob(instrument_id=key.instrument_id, dayobs=key.dayobs,
                              obstype=CalibrationType(key.obstype), binning=key.binning,
                              readout_mode=key.readout_mode, filter_name=key.filter_name,
                              status=MasterJobStatus.STALE, attempts=0, lease_token=0,
                              updated_at=now))  # fmt: skip
        session.flush()


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


_MINIMUM_ADVICE = (
    "lower the minimum with --min-inputs TYPE=N (or PYLCOGT_MIN_INPUTS, or `pylcogt instruments "
    "set CAMERA --min-inputs TYPE=N`) if fewer frames are enough for this camera"
)


def _refuse_bad(session: Session, master_ids: list[int], key: GroupKey) -> None:
    """In the register transaction (after the fence took the marking lock): refuse to register
    a master made with a master marked bad since it was chosen."""
    bad = lifecycle.bad_masters(session, master_ids)
    if bad:
        session.rollback()
        marked = ", ".join(f"{i} ({why})" for i, why in sorted(bad.items()))
        raise MastersChangedError(
            f"{key.obstype} {key.dayobs:%Y%m%d}: master(s) {marked} used to prepare its frames "
            f"were marked bad during the build; nothing registered, building again")


def _group_label(instrument: Instrument, key: GroupKey) -> str:
    text = f"{instrument.camera} {key.dayobs:%Y%m%d} {key.obstype} {key.binning}"
    return text + (f" {key.filter_name}" if key.filter_name else "")


def _leave_out(frame: RawFrame, reason: str) -> None:
    if lifecycle.apply_frame_event(frame, FrameEvent.LEFT_OUT):
        frame.last_error = reason
        frame.attempts += 1


def _input_level(obstype: str, ready: Frame, level: float | None,
                 exptime_s: float | None) -> float:  # fmt: skip
    """A bias's removed level (e-); a dark's clipped-mean signal in electrons (its rate times
    EXPTIME: what a light leak or a wrong exposure adds)."""
    if level is not None:
        return float(level)
    step = LEVEL_SUBSAMPLE
    rate = sigma_clipped_mean(ready.sci[::step, ::step], ready.bpm[::step, ::step],
                              k=LEVEL_K).mean  # fmt: skip
    return float(rate) * float(exptime_s or 0.0)


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


def _register(
    session: Session,
    key: GroupKey,
    *,
    path: Path,
    version: int,
    checksum: str,
    dateobs: dt.datetime,
    digest: str | None,
    final: bool,
    replaces: MasterCalibration | None,
    inputs: list[MasterInput],
    now: dt.datetime,
) -> MasterCalibration:
    """Register a new master (and its input rows) as its group's current one (flushed)."""
    row = MasterCalibration(
        obstype=CalibrationType(key.obstype), instrument_id=key.instrument_id,
        binning=key.binning, readout_mode=key.readout_mode,
        filter_name=key.filter_name if key.obstype == "SKYFLAT" else "", dayobs=key.dayobs,
        dateobs=dateobs, version=version, path=str(path), checksum=checksum,
        inputs_digest=digest, is_bad=False, n_inputs=len(inputs),
        calibration_status=CalibrationStatus.FINAL if final else CalibrationStatus.PROVISIONAL,
    )  # fmt: skip
    lifecycle.register_master(session, row, replaces=replaces.id if replaces else None, now=now)
    for item in inputs:
        item.master_id = row.id
    session.add_all(inputs)
    session.flush()
    return row


def _stack_frames(session: Session, frame_ids: list[int], now: dt.datetime) -> None:
    """The frames went into their group's master (``done``)."""
    if frame_ids:
        session.execute(
            frame_transition(FrameEvent.STACKED, RawFrame.__table__.c.id.in_(frame_ids),
                             last_error=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )  # fmt: skip


def _bpm_sources(session: Session, key: GroupKey) -> list[MasterCalibration]:
    """The night's current master dark (the latest) and flats (every filter) of ``key``'s mode,
    from which its bad-pixel mask is derived."""
    masters = (
        session.scalars(
            select(MasterCalibration)
            .options(joinedload(MasterCalibration.inputs))
            .where(
                MasterCalibration.instrument_id == key.instrument_id,
                MasterCalibration.dayobs == key.dayobs,
                MasterCalibration.binning == key.binning,
                MasterCalibration.readout_mode == key.readout_mode,
                current_master(MasterCalibration),
                MasterCalibration.obstype.in_([CalibrationType.DARK, CalibrationType.SKYFLAT]),
            )
            .order_by(MasterCalibration.id)
        )
        .unique()
        .all()
    )
    darks = [m for m in masters if m.obstype is CalibrationType.DARK]
    flats = [m for m in masters if m.obstype is CalibrationType.SKYFLAT]
    return darks[-1:] + flats


def build_bpm_master(
    maker: sessionmaker[Session],
    settings: Settings,
    key: GroupKey,
    *,
    fence: Callable[[Session], None] | None = None,
    final: bool | None = None,
) -> BuildResult:
    """Derive the night's bad-pixel mask from its current master dark and flats, write and
    register it (superseding the mask derived before from other masters; the same masters give
    the same mask, so then nothing is derived and the mask may only be promoted to final).

    Its inputs (provenance) are the raw frames of those masters. It is final when the night is
    over (``final``, by default from the registry's clock) and every source master is final.
    ``fence``: as for :func:`build_master`, called before anything is written.
    """
    with maker() as session:
        query = select(Instrument).options(joinedload(Instrument.site))
        instrument = session.scalars(query.where(Instrument.id == key.instrument_id)).one()
        used = _bpm_sources(session, key)
        if not used:
            raise NotEnoughInputsError(
                f"{instrument.camera} {key.dayobs:%Y%m%d}: no master dark or flat for "
                f"{key.binning} to derive a bad-pixel mask from; run `pylcogt stack` first"
            )
        digest = _digest([f"{m.obstype.value}={m.id}" for m in used])
        current = current_group_master(session, key)
        now = db_now(session)
        over = night_over(session, key.instrument_id, key.dayobs, now) if final is None else final
        final = over and all(m.calibration_status is CalibrationStatus.FINAL for m in used)
        if current is not None and current.inputs_digest == digest:
            return _unchanged(session, current, final, fence, now, frame_ids=[])
        darks = [m for m in used if m.obstype is CalibrationType.DARK]
        dark = load_master(darks[0]).frame if darks else None
        flats = [load_master(m).frame for m in used if m.obstype is CalibrationType.SKYFLAT]
        mask = derive_bpm(dark, flats)
        mask.header["OBSTYPE"] = ("BPM", "master calibration type")
        mask.header["INSTRUME"] = instrument.camera
        mask.header["DAY-OBS"] = key.dayobs.strftime("%Y%m%d")
        for i, source in enumerate(used, start=1):
            mask.header[f"IMCOM{i:03d}"] = (Path(source.path).name, f"master {source.id}")

        def make_path(version: int) -> Path:
            return master_path(settings.data_dir, site=instrument.site.code,
                               camera=instrument.camera, dayobs=key.dayobs, obstype="BPM",
                               binning=key.binning, readout_mode=key.readout_mode,
                               version=version)  # fmt: skip

        if fence is not None:
            fence(session)
        _refuse_bad(session, [m.id for m in used], key)
        now = db_now(session)
        path, version = _free_path(session, make_path, _next_version(session, key))
        checksum = write_product(path, mask)
        # its inputs are its masters' frames, as they were prepared for them
        frames = {i.frame_id: i for m in used for i in m.inputs}
        inputs = [MasterInput(frame_id=fid, frame_checksum=i.frame_checksum,
                              bias_master_id=i.bias_master_id, dark_master_id=i.dark_master_id)
                  for fid, i in sorted(frames.items())]  # fmt: skip
        row = _register(session, key, path=path, version=version, checksum=checksum,
                        dateobs=_mean_time([m.dateobs for m in used]), digest=digest,
                        final=final, replaces=current, inputs=inputs, now=now)  # fmt: skip
        result = BuildResult(master_id=row.id, path=str(path), n_inputs=row.n_inputs,
                             superseded=current.id if current else None,
                             calibration_status=row.calibration_status.value)  # fmt: skip
        session.commit()
        log.info("derived bad-pixel mask %s: %s bad pixels", path.name, mask.header["NBADPIX"])
        return result


def _unchanged(
    session: Session,
    current: MasterCalibration,
    final: bool,
    fence: Callable[[Session], None] | None,
    now: dt.datetime,
    *,
    frame_ids: list[int],
    left_out: list[int] = (),
) -> BuildResult:
    """Nothing to build: the group's current master is made from these frames already. It is
    promoted to final when ``final``; the frames checked since are stacked (they are in it), or
    given up again (``left_out``: the build that made it left them out)."""
    master_id, path, n_inputs = current.id, current.path, current.n_inputs
    if fence is not None:
        fence(session)
    now = db_now(session)
    promoted = final and lifecycle.promote_master(session, master_id, now)
    _stack_frames(session, frame_ids, now)
    if left_out:
        f = RawFrame.__table__
        session.execute(
            frame_transition(FrameEvent.GIVEN_UP, f.c.id.in_(left_out), updated_at=now,
                             last_error=f"left out of master {master_id} ({Path(path).name}), "
                                        f"built from the same frames: see its build's log")
            .execution_options(synchronize_session=False)
        )  # fmt: skip
    status = session.scalar(
        select(MasterCalibration.calibration_status).where(MasterCalibration.id == master_id)
    )
    session.commit()
    log.info("master %d (%s) already holds its group's frames%s", master_id, Path(path).name,
             ": promoted to final" if promoted else "")  # fmt: skip
    return BuildResult(master_id=master_id, path=path, n_inputs=n_inputs, unchanged=True,
                       promoted=promoted, calibration_status=status.value)  # fmt: skip


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

    The mask is copied into the data directory as a master product (a new file for every mask
    added); its effective time is noon UTC of ``dayobs`` (selection takes the mask closest in
    time, like a derived one). It is final: it does not depend on the night's frames.
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

        def make_path(version: int) -> Path:
            return master_path(settings.data_dir, site=instrument.site.code,
                               camera=instrument.camera, dayobs=dayobs, obstype="bpm-added",
                               binning=binning, readout_mode=readout_mode,
                               version=version)  # fmt: skip

        key = GroupKey(instrument.id, dayobs, "BPM", binning, readout_mode)
        path, version = _free_path(session, make_path, 1)
        checksum = write_product(path, mask)
        noon = dt.datetime.combine(dayobs, dt.time(12))
        row = _register(session, key, path=path, version=version, checksum=checksum,
                        dateobs=noon, digest=None, final=True, replaces=None, inputs=[],
                        now=db_now(session))  # fmt: skip
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
    final: bool | None = None,
) -> BuildResult:
    """Build, write and register the master of ``key``; returns what was made (see the module
    doc: nothing is built when the group's current master has the same inputs).

    ``final``: whether the master is final (the night is over); by default from the registry's
    clock and the night's closure. ``fence(session)`` (the worker's lease check,
    :func:`pylcogt.db.queue.fence_group`) is called once the master is stacked, before its file
    is written: it starts the transaction that registers the master, and raises to abandon the
    build with nothing written or recorded.
    """
    obstype = key.obstype
    dropped: dict[str, str] = {}
    left_out: list[tuple[RawFrame, str]] = []  # recorded with the master (or the not-enough)
    with maker() as session:
        query = select(Instrument).options(joinedload(Instrument.site))
        instrument = session.scalars(query.where(Instrument.id == key.instrument_id)).one()
        minimum = (settings.min_inputs_for(obstype, instrument.min_inputs)
                   if min_inputs is None else min_inputs)  # fmt: skip
        label = _group_label(instrument, key)
        plan = plan_group(session, key)
        frames = plan.frames
        if len(frames) < minimum:
            raise NotEnoughInputsError(
                f"{label}: the night has {len(frames)} usable {obstype} frame(s), at least "
                f"{minimum} needed; {_MINIMUM_ADVICE}"
            )
        now = db_now(session)
        if final is None:
            final = night_over(session, key.instrument_id, key.dayobs, now)
        current = current_group_master(session, key)
        if current is not None and current.inputs_digest == plan.digest:
            in_it = set(session.scalars(
                select(MasterInput.frame_id).where(MasterInput.master_id == current.id)))
            # a frame checked again that the same build left out: left out again, not rebuilt
            given_up = [f.id for f in frames if f.id not in in_it]
            return _unchanged(session, current, final, fence, now,
                              frame_ids=[f.id for f in frames if f.id in in_it],
                              left_out=given_up)  # fmt: skip
        with SpillDir(settings.data_dir) as spill:
            prepared: list[tuple[RawFrame, float | None]] = []
            shared: dict[int, list] = {}  # frame id -> [(master ERR, coefficient)]
            screen: dict[int, float] = {}  # frame id -> level (e-) compared within the group
            read_noise = 0.0
            for n, frame in enumerate(frames, start=1):
                try:
                    raw = read_raw(frame.path, crosstalk=crosstalk_lookup(settings.crosstalk_file))
                    masters = _load_prep(plan.prep[frame.id])
                    # the masters' own errors are shared by every input: added once, below
                    ready, level = prepare_master_input(raw, obstype, masters,
                                                        exptime_s=frame.exptime_s,
                                                        master_err=False)  # fmt: skip
                    shared[frame.id] = _shared_err_terms(obstype, masters, frame.exptime_s,
                                                         level)  # fmt: skip
                except UnprocessableFrameError as exc:
                    log.warning("%s left out of the %s master: %s", frame.filename, obstype, exc)
                    dropped[frame.filename] = one_line(exc)
                    left_out.append((frame, dropped[frame.filename]))
                    continue
                if obstype != "SKYFLAT":
                    screen[frame.id] = _input_level(obstype, ready, level, frame.exptime_s)
                read_noise = read_noise or header_float(ready.header, "RDNOISE")
                spill.save(str(frame.id), ready)
                prepared.append((frame, level))
                if progress:
                    progress(f"prepared {n}/{len(frames)} {frame.filename}")
            if obstype == "SKYFLAT" and prepared:
                # a flat too faint to use (a camera without overscan is screened here, once
                # its bias is subtracted) is left out before it skews the others' check
                reasons = [flat_level_reason(level, read_noise) for _, level in prepared]
                bright = [i for i, r in enumerate(reasons) if r is None]
                checks = check_flats([spill.load(str(prepared[i][0].id)) for i in bright])
                for i, check in zip(bright, checks, strict=True):
                    reasons[i] = check.reason
            else:  # bias and dark: a level far from the group's others
                reasons = outlying_levels([screen[f.id] for f, _ in prepared],
                                          read_noise_e=read_noise, what=obstype.lower())
            kept = []
            for (frame, level), reason in zip(prepared, reasons, strict=True):
                if reason:
                    log.warning("%s left out of the %s master: %s", frame.filename, obstype,
                                reason)  # fmt: skip
                    dropped[frame.filename] = reason
                    left_out.append((frame, reason))
                else:
                    kept.append((frame, level))
            prepared = kept
            if len(prepared) < minimum:
                for frame, reason in left_out:
                    _leave_out(frame, reason)
                session.commit()  # keep the left-out frames' reasons
                raise NotEnoughInputsError(
                    f"{label}: only {len(prepared)} usable {obstype} frame(s) of the night's "
                    f"{len(frames)}, at least {minimum} needed; {_MINIMUM_ADVICE}; left out: "
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

        def make_path(version: int) -> Path:
            return master_path(settings.data_dir, site=instrument.site.code,
                               camera=instrument.camera, dayobs=key.dayobs, obstype=obstype,
                               binning=key.binning, readout_mode=key.readout_mode,
                               filter_name=key.filter_name, version=version)  # fmt: skip

        input_rows = []
        for frame in inputs:
            prep = plan.prep[frame.id]
            input_rows.append(MasterInput(
                frame_id=frame.id, frame_checksum=frame.checksum,
                bias_master_id=prep["BIAS"].id if "BIAS" in prep else None,
                dark_master_id=prep["DARK"].id if "DARK" in prep else None))  # fmt: skip
        if fence is not None:
            fence(session)
        _refuse_bad(session, [m.id for prep in plan.prep.values() for m in prep.values()], key)
        for frame, reason in left_out:  # in the record transaction: not if the build is abandoned
            _leave_out(frame, reason)
        now = db_now(session)
        path, version = _free_path(session, make_path, _next_version(session, key))
        master.header["MASTVER"] = (version, "version of this master within its group")
        master.header["L1CALST"] = ("final" if final else "provisional",
                                    "final: built after its night was over")  # fmt: skip
        checksum = write_product(path, master)
        row = _register(session, key, path=path, version=version, checksum=checksum,
                        dateobs=_mean_time([f.dateobs for f in inputs]), digest=plan.digest,
                        final=final, replaces=current, inputs=input_rows, now=now)  # fmt: skip
        stale = _mark_dependents_stale(session, current, now) if current is not None else 0
        _stack_frames(session, [f.id for f in inputs], now)
        built = BuildResult(master_id=row.id, path=str(path), n_inputs=len(inputs),
                            dropped=dropped, level=float(np.mean(levels)) if levels else None,
                            superseded=current.id if current else None,
                            calibration_status=row.calibration_status.value,
                            stale_groups=stale)  # fmt: skip
        session.commit()
        log.info("built %s master %s from %d frames (%s%s)", obstype, path.name, len(inputs),
                 built.calibration_status, f", supersedes master {built.superseded}"
                 if built.superseded else "")  # fmt: skip
        return built
