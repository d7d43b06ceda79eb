"""Provenance queries and calibration management: the Python API behind ``pylcogt provenance``
and ``pylcogt calibrations list|mark-bad|mark-good``.

Every function takes ``source``: a database URL, a ``sessionmaker`` or an open ``Session``, and
returns plain frozen dataclasses (no ORM rows, nothing bound to a session), so results can be
kept, compared and printed after the session is gone::

    from pylcogt import provenance as prov

    url = "sqlite:///pylcogt.db"
    prov.list_masters(url, instrument="fa15", type="BIAS")
    p = prov.frame_provenance(url, "/data/lsc/fa15/20261128/processed/...-e91.fits.fz")
    [(m.role, m.master.id, len(m.inputs)) for m in p.masters]
    p = prov.frame_provenance(url, 42, history=True)      # every reduction of frame 42
    [(r.id, r.status, r.calibration_status, r.reason) for r in (p.reduction, *p.history)]
    plan = prov.bad_cascade(url, 12)                      # what marking master 12 bad would redo
    plan = prov.mark_bad(url, 12, reason="light leak")    # do it (one transaction)
    prov.mark_good(url, 12)                               # undo the mark on master 12 only

With a URL or a sessionmaker the write functions commit their one transaction; with a Session
they only flush and leave committing (or rolling back) to the caller, like :mod:`pylcogt.db.repo`.

Provenance links (see ``docs/registry.rst``): ``master_inputs`` holds the raw frames stacked into
each master (with their checksum then) and the masters each was prepared with before it was
stacked (a dark frame's bias, a flat frame's bias and dark); ``reductions`` holds every reduction
of a science frame, current or superseded, and ``reduction_masters`` the masters each used, by
role, with the sha256 of the master's file as it was read. Masters are immutable, so a master id
(with its checksum) names exactly the content used. The mark-bad cascade follows both:

1. The master is marked bad (``is_bad``, ``bad_reason`` = time and reason).
2. A good master built from frames prepared with a bad master (a dark or flat made with a bad
   bias, a flat made with a bad dark, a bad-pixel mask derived from such frames) is marked bad too
   ("built from frames prepared with bad master N"); so is a bad-pixel mask derived from a bad dark
   or flat (it shares their input frames: "derived from bad master N"). Repeated until nothing
   new is found. Masters already bad are left alone (their cascade was done when they were marked).
3. Every frame whose current reduction used a master marked bad in this cascade is re-queued:
   state ``pending``, attempts 0, ``last_error`` and ``redo_reason`` saying why,
   ``next_attempt_at`` cleared, product and reduction kept until the worker replaces them (the
   reduction becomes ``superseded`` then, and stays in the history). A frame being processed
   loses its lease (owner cleared, fencing token incremented) so that the worker holding it
   cannot record a result made with the bad master.
4. The input frames of each dark or flat master marked bad by the cascade (not of the master marked
   bad by hand: the same frames would make the same master, and not of a bad-pixel mask, whose
   inputs belong to the dark and flats) are re-queued the same way, so that the worker, finding
   their group ready and without a good master, rebuilds it with the next best masters.

A cascade is one transaction, serialized against other mark-bad/mark-good calls (an advisory
lock on PostgreSQL, the write lock on SQLite). Marking a bad master bad again changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session, aliased, joinedload, sessionmaker

from pylcogt import lifecycle
from pylcogt.db.models import (
    CalibrationRole,
    CalibrationType,
    FrameState,
    Instrument,
    MasterCalibration,
    MasterInput,
    MasterJob,
    RawFrame,
    Reduction,
    ReductionMaster,
    ReductionStatus,
    current_master,
    utcnow,
)
from pylcogt.errors import PylcogtError
from pylcogt.instruments import CALIBRATION_OBSTYPES
from pylcogt.lifecycle import FrameEvent, frame_transition, requeue_values

__all__ = [
    "NotRegisteredError",
    "MasterInfo",
    "FrameInfo",
    "MasterUse",
    "FrameUse",
    "UsedMaster",
    "ReductionMasterInfo",
    "ReductionInfo",
    "FrameProvenance",
    "MasterProvenance",
    "RedoNode",
    "RedoPlan",
    "MarkGoodResult",
    "list_masters",
    "provenance",
    "frame_provenance",
    "master_provenance",
    "bad_cascade",
    "mark_bad",
    "mark_good",
    "to_dict",
]

SessionSource = str | Session | sessionmaker
_ROLE_ORDER = {role.value: n for n, role in enumerate(CalibrationRole)}
_CHUNK = 500  # ids per IN (...) list


class NotRegisteredError(PylcogtError, LookupError):
    """No frame or master calibration matches what was asked for."""


# --- plain results ------------------------------------------------------------------------
@dataclass(frozen=True)
class MasterInfo:
    """A registered master calibration. ``effective_time`` is the mean DATE-OBS of its inputs;
    ``version`` its rank among its group's masters; ``calibration_status`` ``provisional`` or
    ``final``; ``superseded_by`` the master that replaced it (``None``: current, unless bad)."""

    id: int
    type: str
    instrument: str
    site: str
    binning: str
    readout_mode: str
    filter: str
    dayobs: dt.date
    effective_time: dt.datetime
    path: str
    is_bad: bool
    bad_reason: str | None
    n_inputs: int
    created_at: dt.datetime
    version: int = 1
    checksum: str = ""
    calibration_status: str = "final"
    finalized_at: dt.datetime | None = None
    superseded_by: int | None = None
    superseded_at: dt.datetime | None = None
    bad_at: dt.datetime | None = None

    @property
    def standing(self) -> str:
        """``bad``, ``superseded``, or the calibration status of a current master."""
        if self.is_bad:
            return "bad"
        return "superseded" if self.superseded_at is not None else self.calibration_status


@dataclass(frozen=True)
class FrameInfo:
    """A registered raw frame and its processing state (``product_path`` for science frames)."""

    id: int
    path: str
    filename: str
    obstype: str | None
    instrument: str | None
    dayobs: dt.date | None
    dateobs: dt.datetime | None
    filter: str | None
    binning: str | None
    state: str
    attempts: int
    product_path: str | None
    last_error: str | None


@dataclass(frozen=True)
class MasterUse:
    """A master in the role (``bias``, ``dark``, ``flat``, ``bpm``) it played for a frame."""

    role: str
    master: MasterInfo


@dataclass(frozen=True)
class FrameUse:
    """A frame that used a master, in ``role``."""

    role: str
    frame: FrameInfo


@dataclass(frozen=True)
class UsedMaster:
    """A master used for a frame, with the raw frames stacked into it and the masters those
    inputs were prepared with (a dark's bias; a flat's bias and dark)."""

    role: str
    master: MasterInfo
    inputs: tuple[FrameInfo, ...]
    prepared_with: tuple[MasterUse, ...]


@dataclass(frozen=True)
class ReductionMasterInfo:
    """A master a reduction used: its role, the master, the sha256 of its file as it was read
    (``checksum``; ``checksum_matches``: the registry's checksum of that master is the same,
    as it always is for masters, which never change), and whether a flat came from later."""

    role: str
    master: MasterInfo
    checksum: str
    checksum_matches: bool
    fallback_later: bool


@dataclass(frozen=True)
class ReductionInfo:
    """One reduction of a science frame (:class:`pylcogt.db.models.Reduction`): ``status``
    ``current`` or ``superseded``, ``calibration_status`` ``provisional`` or ``final``,
    ``reason`` why it was made, its product and the masters it used. ``replaced_because``: for
    a superseded reduction, the reason of the reduction that replaced it."""

    id: int
    status: str
    calibration_status: str
    reason: str
    started_at: dt.datetime | None
    finished_at: dt.datetime
    finalized_at: dt.datetime | None
    pipeline_version: str | None
    worker: str | None
    as_of: dt.datetime | None
    product_path: str
    product_checksum: str | None
    kept_path: str | None
    superseded_at: dt.datetime | None
    superseded_by: int | None
    replaced_because: str | None
    masters: tuple[ReductionMasterInfo, ...]


@dataclass(frozen=True)
class FrameProvenance:
    """Where a raw frame's result came from.

    ``masters``: for a science frame the masters its current reduction used; for a calibration
    frame the masters it was prepared with before stacking (for the latest master it went
    into). ``stacked_into``: the masters a calibration frame went into. ``reduction``: a science
    frame's current reduction; ``history``: its earlier reductions, newest first (only when
    asked for, ``history=True``).
    """

    frame: FrameInfo
    masters: tuple[UsedMaster, ...]
    stacked_into: tuple[MasterInfo, ...]
    reduction: ReductionInfo | None = None
    history: tuple[ReductionInfo, ...] = ()
    kind: str = "frame"


@dataclass(frozen=True)
class MasterProvenance:
    """A master, what it was made from, and what it was used for.

    ``inputs``: raw frames stacked into it; ``prepared_with``: masters its inputs were prepared
    with; ``reduced_frames``: science frames whose current reduction used it;
    ``earlier_reductions``: frames it was used for in reductions that were redone since;
    ``prepared_frames``: calibration frames prepared with it; ``derived_masters``: masters built
    from frames prepared with it, and bad-pixel masks derived from it; ``superseded_by``: the
    master that replaced it.
    """

    master: MasterInfo
    inputs: tuple[FrameInfo, ...]
    prepared_with: tuple[MasterUse, ...]
    reduced_frames: tuple[FrameUse, ...]
    prepared_frames: tuple[FrameUse, ...]
    derived_masters: tuple[MasterInfo, ...]
    earlier_reductions: tuple[FrameUse, ...] = ()
    superseded_by: MasterInfo | None = None
    kind: str = "master"


@dataclass(frozen=True)
class RedoNode:
    """One master of a mark-bad cascade (as it was before the change).

    ``reason``: the ``bad_reason`` recorded for it. ``rebuild_inputs``: its input frames,
    re-queued so the worker rebuilds it (empty for the master marked by hand and for bad-pixel
    masks). ``frames``: frames that used it, re-queued. ``dependents``: masters marked bad
    because of it. Each frame and master appears once in the tree, where the cascade first
    reached it.
    """

    master: MasterInfo
    reason: str
    rebuild_inputs: tuple[FrameInfo, ...]
    frames: tuple[FrameUse, ...]
    dependents: tuple[RedoNode, ...]


@dataclass(frozen=True)
class RedoPlan:
    """What marking ``master_id`` bad does (or did).

    ``masters``: ids marked bad, the master itself first; ``frames``: ids re-queued. When the
    master was already bad, both are empty and ``already_bad`` is true. ``applied``: the changes
    were made (not a dry run, not already bad).
    """

    master_id: int
    reason: str
    dry_run: bool
    already_bad: bool
    applied: bool
    root: RedoNode
    masters: tuple[int, ...]
    frames: tuple[int, ...]
    message: str


@dataclass(frozen=True)
class MarkGoodResult:
    """The outcome of :func:`mark_good`: ``previous_reason`` is the ``bad_reason`` removed."""

    master: MasterInfo
    changed: bool
    previous_reason: str | None
    message: str


def to_dict(result: Any) -> Any:
    """A result (or a list of them) as plain dicts and lists, for JSON (datetimes kept); a
    master's ``standing`` (bad, superseded, provisional or final) is included."""
    if isinstance(result, (list, tuple)):
        return [to_dict(r) for r in result]
    return _with_standing(dataclasses.asdict(result))


def _with_standing(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _with_standing(v) for k, v in value.items()}
        if {"is_bad", "superseded_at", "calibration_status"} <= out.keys():
            out["standing"] = ("bad" if out["is_bad"] else "superseded"
                               if out["superseded_at"] is not None
                               else out["calibration_status"])  # fmt: skip
        return out
    if isinstance(value, (list, tuple)):
        return [_with_standing(v) for v in value]
    return value


# --- sessions -----------------------------------------------------------------------------
@contextlib.contextmanager
def _session(source: SessionSource, *, write: bool = False) -> Iterator[Session]:
    if isinstance(source, Session):
        yield source
        if write:
            source.flush()
        return
    if isinstance(source, str):
        from pylcogt.db.session import get_sessionmaker

        source = get_sessionmaker(source)
    if not isinstance(source, sessionmaker):
        msg = f"expected a database URL, a sessionmaker or a Session, got {type(source).__name__}"
        raise TypeError(msg)
    with source() as session:
        yield session
        if write:
            session.commit()


def _serialize(session: Session) -> None:
    """Serialize mark-bad/mark-good transactions, and order them with the workers' record
    transactions (:func:`pylcogt.lifecycle.hold_marking_lock`): the first statement of the
    transaction."""
    lifecycle.hold_marking_lock(session, shared=False)


# --- conversions --------------------------------------------------------------------------
def _master_info(m: MasterCalibration) -> MasterInfo:
    return MasterInfo(
        id=m.id, type=m.obstype.value, instrument=m.instrument.camera,
        site=m.instrument.site.code, binning=m.binning, readout_mode=m.readout_mode,
        filter=m.filter_name, dayobs=m.dayobs, effective_time=m.dateobs, path=m.path,
        is_bad=bool(m.is_bad), bad_reason=m.bad_reason, n_inputs=m.n_inputs,
        created_at=m.created_at, version=m.version, checksum=m.checksum,
        calibration_status=m.calibration_status.value, finalized_at=m.finalized_at,
        superseded_by=m.superseded_by_id, superseded_at=m.superseded_at, bad_at=m.bad_at,
    )  # fmt: skip


def _frame_info(f: RawFrame) -> FrameInfo:
    return FrameInfo(
        id=f.id, path=f.path, filename=f.filename, obstype=f.obstype,
        instrument=f.instrument.camera if f.instrument else None, dayobs=f.dayobs,
        dateobs=f.dateobs, filter=f.filter_name, binning=f.binning, state=f.state.value,
        attempts=f.attempts, product_path=f.product_path, last_error=f.last_error,
    )  # fmt: skip


def _masters_query():
    return select(MasterCalibration).options(
        joinedload(MasterCalibration.instrument).joinedload(Instrument.site)
    )


def _frames_query():
    return select(RawFrame).options(joinedload(RawFrame.instrument))


def _chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    ids = list(ids)
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def _frame_order(f: RawFrame) -> tuple:
    return (f.dateobs is None, f.dateobs or dt.datetime.min, f.id)


# --- lookups ------------------------------------------------------------------------------
_PREFIXED = re.compile(r"^(master|frame):\s*(\d+)$", re.IGNORECASE)


def _path_candidates(value: str) -> list[str]:
    candidates = [value]
    with contextlib.suppress(OSError, RuntimeError):
        resolved = str(Path(value).expanduser().resolve())
        if resolved != value:
            candidates.append(resolved)
    return candidates


def _resolve(session: Session, target: int | str) -> tuple[str, int]:
    """``("frame", id)`` or ``("master", id)`` for a frame id, ``frame:ID``, ``master:ID``, a raw
    path, a product path, a master path or a raw file name."""
    if isinstance(target, bool):
        raise TypeError("expected a frame id or a path, got a bool")
    if isinstance(target, int):
        return "frame", _frame_id(session, target)
    value = str(target).strip()
    prefixed = _PREFIXED.match(value)
    if prefixed:
        kind, number = prefixed.group(1).lower(), int(prefixed.group(2))
        if kind == "master":
            return "master", _master_id(session, number)
        return "frame", _frame_id(session, number)
    if value.isdigit():
        return "frame", _frame_id(session, int(value))
    candidates = _path_candidates(value)
    for kind, column, model in (
        ("frame", RawFrame.path, RawFrame.id),
        ("frame", RawFrame.product_path, RawFrame.id),
        ("master", MasterCalibration.path, MasterCalibration.id),
        ("frame", Reduction.kept_path, Reduction.frame_id),  # a superseded product kept
    ):
        ids = session.scalars(select(model).where(column.in_(candidates)).distinct()).all()
        if len(ids) == 1:
            return kind, ids[0]
        if len(ids) > 1:
            msg = f"{value} is the product of {len(ids)} raw frames ({ids}); give a frame id"
            raise NotRegisteredError(msg)
    if "/" not in value:
        ids = session.scalars(select(RawFrame.id).where(RawFrame.filename == value)).all()
        if len(ids) == 1:
            return "frame", ids[0]
        if len(ids) > 1:
            msg = f"{len(ids)} raw frames are named {value} ({ids}); give the full path or an id"
            raise NotRegisteredError(msg)
    msg = (
        f"{value!r} is not a registered raw frame, product or master calibration (give a frame "
        f"id, master:ID, or a path as `pylcogt frames list` / `calibrations list` show it)"
    )
    raise NotRegisteredError(msg)


def _frame_id(session: Session, frame_id: int) -> int:
    if session.get(RawFrame, frame_id) is None:
        msg = f"no raw frame with id {frame_id} is registered; `pylcogt frames list` shows them"
        raise NotRegisteredError(msg)
    return frame_id


def _master_id(session: Session, master_id: int) -> int:
    if session.get(MasterCalibration, master_id) is None:
        msg = (
            f"no master calibration with id {master_id} is registered; "
            f"`pylcogt calibrations list` shows them"
        )
        raise NotRegisteredError(msg)
    return master_id


def _resolve_master(session: Session, master: int | str) -> int:
    if isinstance(master, bool):
        raise TypeError("expected a master id or path, got a bool")
    if isinstance(master, int):
        return _master_id(session, master)
    value = str(master).strip()
    if value.isdigit():
        return _master_id(session, int(value))
    kind, found = _resolve(session, value)
    if kind != "master":
        msg = f"{value!r} is a raw frame (id {found}), not a master calibration"
        raise NotRegisteredError(msg)
    return found


def _load_masters(session: Session, ids: Iterable[int]) -> dict[int, MasterCalibration]:
    out: dict[int, MasterCalibration] = {}
    for chunk in _chunks(set(ids)):
        query = _masters_query().where(MasterCalibration.id.in_(chunk))
        out.update((m.id, m) for m in session.scalars(query).unique())
    return out


def _inputs_of(session: Session, master_ids: Iterable[int]) -> dict[int, list[RawFrame]]:
    """Raw frames stacked into each master, in DATE-OBS order."""
    out: dict[int, list[RawFrame]] = {}
    for chunk in _chunks(set(master_ids)):
        query = (
            select(MasterInput.master_id, RawFrame)
            .join(RawFrame, RawFrame.id == MasterInput.frame_id)
            .options(joinedload(RawFrame.instrument))
            .where(MasterInput.master_id.in_(chunk))
        )
        for master_id, frame in session.execute(query).unique():
            out.setdefault(master_id, []).append(frame)
    for frames in out.values():
        frames.sort(key=_frame_order)
    return out


def _prepared_with(session: Session, master_ids: Iterable[int]) -> list[tuple[str, int]]:
    """Distinct (role, master id) the inputs of ``master_ids`` were prepared with, role order."""
    pairs: set[tuple[str, int]] = set()
    mi = MasterInput
    for chunk in _chunks(set(master_ids)):
        rows = session.execute(
            select(mi.bias_master_id, mi.dark_master_id).where(mi.master_id.in_(chunk)).distinct()
        )
        for bias, dark in rows:
            pairs.update((role, mid) for role, mid in (("bias", bias), ("dark", dark)) if mid)
    return sorted(pairs, key=lambda p: (_ROLE_ORDER[p[0]], p[1]))


def _users_of(session: Session, master_id: int) -> list[tuple[str, RawFrame]]:
    """(role, frame) for every science frame whose current reduction used ``master_id``, and
    every calibration frame prepared with it (for a master it went into), oldest first."""
    query = (
        select(ReductionMaster.role, RawFrame)
        .join(Reduction, Reduction.id == ReductionMaster.reduction_id)
        .join(RawFrame, RawFrame.id == Reduction.frame_id)
        .options(joinedload(RawFrame.instrument))
        .where(ReductionMaster.master_id == master_id, Reduction.status == ReductionStatus.CURRENT)
    )  # fmt: skip
    rows = [(role.value, frame) for role, frame in session.execute(query).unique()]
    prepared = (("bias", MasterInput.bias_master_id), ("dark", MasterInput.dark_master_id))
    for role, column in prepared:
        query = (
            select(RawFrame)
            .join(MasterInput, MasterInput.frame_id == RawFrame.id)
            .options(joinedload(RawFrame.instrument))
            .where(column == master_id)
            .distinct()
        )
        rows += [(role, frame) for frame in session.scalars(query).unique()]
    seen: set[tuple[str, int]] = set()
    unique = []
    for role, frame in rows:
        if (role, frame.id) not in seen:
            seen.add((role, frame.id))
            unique.append((role, frame))
    unique.sort(key=lambda r: _frame_order(r[1]))
    return unique


def _earlier_users_of(session: Session, master_id: int) -> list[tuple[str, RawFrame]]:
    """(role, frame) for frames whose superseded reductions used ``master_id``."""
    query = (
        select(ReductionMaster.role, RawFrame)
        .join(Reduction, Reduction.id == ReductionMaster.reduction_id)
        .join(RawFrame, RawFrame.id == Reduction.frame_id)
        .options(joinedload(RawFrame.instrument))
        .where(ReductionMaster.master_id == master_id,
               Reduction.status == ReductionStatus.SUPERSEDED)
        .distinct()
    )  # fmt: skip
    rows = [(role.value, frame) for role, frame in session.execute(query).unique()]
    rows.sort(key=lambda r: _frame_order(r[1]))
    return rows


def _derived_from(session: Session, master: MasterCalibration) -> list[tuple[int, str]]:
    """(master id, how) for masters made from ``master``: built from frames prepared with it,
    or (for a dark or flat) bad-pixel masks derived from it (sharing its input frames)."""
    query = (
        select(MasterInput.master_id)
        .where(or_(MasterInput.bias_master_id == master.id,
                   MasterInput.dark_master_id == master.id))
        .distinct()
    )  # fmt: skip
    found = {mid: "built from frames prepared with" for mid in session.scalars(query)}
    if master.obstype in (CalibrationType.DARK, CalibrationType.SKYFLAT):
        mine, theirs = aliased(MasterInput), aliased(MasterInput)
        query = (
            select(theirs.master_id)
            .join(mine, mine.frame_id == theirs.frame_id)
            .join(MasterCalibration, MasterCalibration.id == theirs.master_id)
            .where(
                mine.master_id == master.id,
                MasterCalibration.obstype == CalibrationType.BPM,
                MasterCalibration.instrument_id == master.instrument_id,
            )
            .distinct()
        )
        for mid in session.scalars(query):
            found.setdefault(mid, "derived from")
    return sorted(found.items())


# --- queries ------------------------------------------------------------------------------
def list_masters(
    source: SessionSource,
    *,
    instrument: str | None = None,
    type: str | None = None,  # noqa: A002 - the CLI option's name
    night: dt.date | None = None,
    filter: str | None = None,  # noqa: A002
    include_bad: bool = True,
    current_only: bool = False,
) -> list[MasterInfo]:
    """Registered masters in effective-time order, filtered by camera (``fa15``), type
    (``BIAS``, ``DARK``, ``SKYFLAT``, ``BPM``), night (DAY-OBS) and filter; ``current_only``:
    neither bad nor superseded (what selection may choose)."""
    query = _masters_query().order_by(MasterCalibration.dateobs, MasterCalibration.id)
    if instrument:
        query = query.join(MasterCalibration.instrument).where(
            Instrument.camera == instrument.lower()
        )
    if type:
        query = query.where(MasterCalibration.obstype == CalibrationType(type.upper()))
    if night:
        query = query.where(MasterCalibration.dayobs == night)
    if filter is not None:
        query = query.where(MasterCalibration.filter_name == filter)
    if not include_bad:
        query = query.where(MasterCalibration.is_bad.is_(False))
    if current_only:
        query = query.where(current_master(MasterCalibration))
    with _session(source) as session:
        return [_master_info(m) for m in session.scalars(query).unique()]


def provenance(
    source: SessionSource, target: int | str, *, history: bool = False
) -> FrameProvenance | MasterProvenance:
    """The provenance of a raw frame (an id, ``frame:ID``, its raw path, its product path, a
    kept product's path or its file name) or of a master (``master:ID`` or its path);
    ``history``: a frame's earlier reductions too."""
    with _session(source) as session:
        kind, found = _resolve(session, target)
        if kind == "master":
            return _master_provenance(session, found)
        return _frame_provenance(session, found, history=history)


def frame_provenance(
    source: SessionSource, frame: int | str, *, history: bool = False
) -> FrameProvenance:
    """The masters a frame was reduced (or prepared) with, each with its inputs, and its current
    reduction (``history``: and the earlier ones, newest first); see :class:`FrameProvenance`.
    ``frame``: an id, its raw path, its product path or its name."""
    with _session(source) as session:
        kind, found = _resolve(session, frame)
        if kind != "frame":
            msg = f"{frame!r} is master calibration {found}: use master_provenance"
            raise NotRegisteredError(msg)
        return _frame_provenance(session, found, history=history)


def master_provenance(source: SessionSource, master: int | str) -> MasterProvenance:
    """A master's inputs and every frame and master that used it; see :class:`MasterProvenance`.
    ``master``: an id, ``master:ID`` or its path."""
    with _session(source) as session:
        return _master_provenance(session, _resolve_master(session, master))


def _reductions(session: Session, frame_id: int) -> list[Reduction]:
    """Every reduction of the frame, newest first, with its masters."""
    query = (
        select(Reduction)
        .options(joinedload(Reduction.masters))
        .where(Reduction.frame_id == frame_id)
        .order_by(Reduction.id.desc())
    )
    return list(session.scalars(query).unique())


def _reduction_info(
    r: Reduction, masters: dict[int, MasterCalibration], replaced_because: str | None
) -> ReductionInfo:
    used = tuple(
        ReductionMasterInfo(role=m.role.value, master=_master_info(masters[m.master_id]),
                            checksum=m.master_checksum,
                            checksum_matches=m.master_checksum == masters[m.master_id].checksum,
                            fallback_later=bool(m.fallback_later))
        for m in sorted(r.masters, key=lambda m: _ROLE_ORDER[m.role.value])
    )  # fmt: skip
    return ReductionInfo(
        id=r.id, status=r.status.value, calibration_status=r.calibration_status.value,
        reason=r.reason, started_at=r.started_at, finished_at=r.finished_at,
        finalized_at=r.finalized_at, pipeline_version=r.pipeline_version, worker=r.worker,
        as_of=r.as_of, product_path=r.product_path, product_checksum=r.product_checksum,
        kept_path=r.kept_path, superseded_at=r.superseded_at, superseded_by=r.superseded_by_id,
        replaced_because=replaced_because, masters=used,
    )  # fmt: skip


def _frame_provenance(session: Session, frame_id: int, *, history: bool = False) -> FrameProvenance:
    frame = session.scalars(_frames_query().where(RawFrame.id == frame_id)).one()
    reductions = _reductions(session, frame_id)
    current = next((r for r in reductions if r.status is ReductionStatus.CURRENT), None)
    stacked = session.execute(
        select(MasterInput.master_id, MasterInput.bias_master_id, MasterInput.dark_master_id)
        .where(MasterInput.frame_id == frame_id)
        .order_by(MasterInput.master_id)
    ).all()  # fmt: skip
    if current is not None:
        links = [(m.role.value, m.master_id) for m in current.masters]
    elif stacked:  # a calibration frame: prepared with, for the latest master it went into
        latest = stacked[-1]
        for row in stacked:  # a mask made from the same frames shares their preparation
            if row.bias_master_id or row.dark_master_id:
                latest = row
        links = [(role, mid) for role, mid in (("bias", latest.bias_master_id),
                                               ("dark", latest.dark_master_id)) if mid]
    else:
        links = []
    wanted = [mid for _, mid in links] + [row.master_id for row in stacked]
    wanted += [m.master_id for r in (reductions if history else [current] if current else [])
               for m in r.masters]  # fmt: skip
    masters = _load_masters(session, wanted)
    inputs = _inputs_of(session, [mid for _, mid in links])
    used = []
    for role, mid in sorted(links, key=lambda r: _ROLE_ORDER[r[0]]):
        frames = inputs.get(mid, [])
        prepared = _prepared_with(session, [mid])
        upstream = _load_masters(session, [m for _, m in prepared])
        used.append(
            UsedMaster(
                role=role,
                master=_master_info(masters[mid]),
                inputs=tuple(_frame_info(f) for f in frames),
                prepared_with=tuple(MasterUse(r, _master_info(upstream[m])) for r, m in prepared),
            )
        )
    into = sorted((masters[row.master_id] for row in stacked), key=lambda m: m.id)
    by_id = {r.id: r for r in reductions}

    def info(r: Reduction) -> ReductionInfo:
        successor = by_id.get(r.superseded_by_id) if r.superseded_by_id else None
        return _reduction_info(r, masters, successor.reason if successor else None)

    earlier = tuple(info(r) for r in reductions if r is not current) if history else ()
    return FrameProvenance(
        frame=_frame_info(frame),
        masters=tuple(used),
        stacked_into=tuple(_master_info(m) for m in into),
        reduction=info(current) if current is not None else None,
        history=earlier,
    )


def _master_provenance(session: Session, master_id: int) -> MasterProvenance:
    master = _load_masters(session, [master_id])[master_id]
    inputs = _inputs_of(session, [master_id]).get(master_id, [])
    prepared = _prepared_with(session, [master_id])
    derived = _derived_from(session, master)
    others = _load_masters(session, [m for _, m in prepared] + [m for m, _ in derived]
                           + ([master.superseded_by_id] if master.superseded_by_id else []))
    reduced, prepared_frames = [], []
    for role, frame in _users_of(session, master_id):
        use = FrameUse(role, _frame_info(frame))
        (prepared_frames if frame.obstype in CALIBRATION_OBSTYPES else reduced).append(use)
    earlier = [FrameUse(role, _frame_info(f)) for role, f in _earlier_users_of(session, master_id)]
    successor = others.get(master.superseded_by_id) if master.superseded_by_id else None
    return MasterProvenance(
        master=_master_info(master),
        inputs=tuple(_frame_info(f) for f in inputs),
        prepared_with=tuple(MasterUse(r, _master_info(others[m])) for r, m in prepared),
        reduced_frames=tuple(reduced),
        prepared_frames=tuple(prepared_frames),
        derived_masters=tuple(_master_info(others[m]) for m, _ in derived),
        earlier_reductions=tuple(earlier),
        superseded_by=_master_info(successor) if successor is not None else None,
    )


# --- mark bad / good ----------------------------------------------------------------------
def _stamp(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Cascade:
    """The cascade while it is computed: ORM rows, before anything is changed."""

    order: list[int]  # master ids, breadth first, the master marked by hand first
    masters: dict[int, MasterCalibration]
    parent: dict[int, int | None]
    why: dict[int, str]  # why each master is bad, without the time stamp
    inputs: dict[int, list[RawFrame]]  # re-queued to rebuild the master
    users: dict[int, list[tuple[str, RawFrame]]]  # re-queued because they used the master


def _compute_cascade(session: Session, root: MasterCalibration, reason: str) -> _Cascade:
    order, parent = [root.id], {root.id: None}
    masters, why = {root.id: root}, {root.id: reason}
    queue = deque([root.id])
    while queue:
        current = queue.popleft()
        found = _derived_from(session, masters[current])
        loaded = _load_masters(session, [mid for mid, _ in found if mid not in parent])
        for mid, how in found:
            dependent = loaded.get(mid)
            if dependent is None or dependent.is_bad:
                continue  # reached already, or bad already (its cascade was done then)
            order.append(mid)
            parent[mid] = current
            masters[mid] = dependent
            why[mid] = f"{how} bad master {current}"
            queue.append(mid)

    # each frame once: first as an input of a master to rebuild, else where first used
    seen: set[int] = set()
    rebuild = [m for m in order[1:] if masters[m].obstype is not CalibrationType.BPM]
    all_inputs = _inputs_of(session, rebuild)
    inputs: dict[int, list[RawFrame]] = {}
    for mid in rebuild:
        fresh = [
            f
            for f in all_inputs.get(mid, [])
            if f.id not in seen and f.state is not FrameState.REJECTED
        ]
        seen.update(f.id for f in fresh)
        inputs[mid] = fresh
    users: dict[int, list[tuple[str, RawFrame]]] = {}
    for mid in order:
        fresh_uses = []
        for role, frame in _users_of(session, mid):
            if frame.id in seen or frame.state is FrameState.REJECTED:
                continue
            seen.add(frame.id)
            fresh_uses.append((role, frame))
        users[mid] = fresh_uses
    return _Cascade(order, masters, parent, why, inputs, users)


def _tree(c: _Cascade, mid: int, stamp: str) -> RedoNode:
    children = [d for d in c.order if c.parent[d] == mid]
    return RedoNode(
        master=_master_info(c.masters[mid]),
        reason=f"{stamp} {c.why[mid]}",
        rebuild_inputs=tuple(_frame_info(f) for f in c.inputs.get(mid, [])),
        frames=tuple(FrameUse(role, _frame_info(f)) for role, f in c.users[mid]),
        dependents=tuple(_tree(c, d, stamp) for d in children),
    )


def _requeue(session: Session, frames: Iterable[RawFrame], why: str) -> None:
    """Re-queue frames (:attr:`FrameEvent.REQUEUED`): a frame being processed loses its lease
    (its fencing token moves on), so its worker records nothing made with the bad master."""
    ids = [f.id for f in frames]
    for chunk in _chunks(ids):
        session.execute(
            frame_transition(FrameEvent.REQUEUED, RawFrame.__table__.c.id.in_(chunk),
                             **requeue_values(why, last_error=why))
            .execution_options(synchronize_session=False)
        )  # fmt: skip


def _apply(c: _Cascade, stamp: str, session: Session, now: dt.datetime) -> None:
    for position, mid in enumerate(c.order):
        master = c.masters[mid]
        lifecycle.mark_master_bad(master, f"{stamp} {c.why[mid]}", now)
        if position > 0 and master.obstype is CalibrationType.BPM:
            # a mask derived from a bad dark or flat is derived again: forget its build job
            # (a mask marked bad by hand is not: the same masters would give the same mask)
            session.execute(
                delete(MasterJob).where(
                    MasterJob.instrument_id == master.instrument_id,
                    MasterJob.dayobs == master.dayobs,
                    MasterJob.obstype == CalibrationType.BPM.value,
                    MasterJob.binning == master.binning,
                    MasterJob.readout_mode == master.readout_mode,
                )
            )
        label = f"master {mid} ({master.obstype.value} {Path(master.path).name})"
        _requeue(session, c.inputs.get(mid, []),
                 f"re-queued {stamp} to rebuild {label}: {c.why[mid]}")  # fmt: skip
        _requeue(
            session,
            (f for _, f in c.users[mid]),
            f"re-queued {stamp}: reduced with {label}, marked bad: {c.why[mid]}",
        )


def _plan(session: Session, master: int | str, reason: str, *, dry_run: bool,
          now: dt.datetime | None) -> RedoPlan:  # fmt: skip
    reason = " ".join(str(reason).split())
    if not reason:
        raise PylcogtError("a reason is needed to mark a master bad (--reason TEXT)")
    master_id = _resolve_master(session, master)
    root = _load_masters(session, [master_id])[master_id]
    session.refresh(root)  # its state now (after the lock), not one cached in the session
    if root.is_bad:
        node = RedoNode(_master_info(root), root.bad_reason or "", (), (), ())
        message = f"master {master_id} is already bad ({root.bad_reason}): nothing changed"
        return RedoPlan(master_id, reason, dry_run, True, False, node, (), (), message)
    now = now or utcnow()
    stamp = _stamp(now)
    cascade = _compute_cascade(session, root, reason)
    tree = _tree(cascade, master_id, stamp)  # before the change: the states frames had
    frames = [f.id for m in cascade.order for f in cascade.inputs.get(m, [])]
    frames += [f.id for m in cascade.order for _, f in cascade.users[m]]
    message = (
        f"{'would mark' if dry_run else 'marked'} {len(cascade.order)} master(s) bad "
        f"(master {master_id} and {len(cascade.order) - 1} master(s) built from it) and "
        f"{'would re-queue' if dry_run else 're-queued'} {len(frames)} frame(s)"
    )
    if not dry_run:
        _apply(cascade, stamp, session, now)
    return RedoPlan(master_id=master_id, reason=reason, dry_run=dry_run, already_bad=False,
                    applied=not dry_run, root=tree, masters=tuple(cascade.order),
                    frames=tuple(frames), message=message)  # fmt: skip


def bad_cascade(source: SessionSource, master: int | str, *, reason: str = "(dry run)") -> RedoPlan:
    """What :func:`mark_bad` would do to ``master`` (an id, ``master:ID`` or its path): the tree
    of masters it would mark bad and frames it would re-queue. Changes nothing."""
    return mark_bad(source, master, reason=reason, dry_run=True)


def mark_bad(
    source: SessionSource,
    master: int | str,
    *,
    reason: str,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> RedoPlan:
    """Mark ``master`` (an id, ``master:ID`` or its path) bad with ``reason`` and run the
    cascade (module docstring) in one transaction; with ``dry_run`` only compute it. Marking a
    bad master again changes nothing (``already_bad`` in the result). ``now`` (naive UTC) stamps
    the reasons; by default the clock."""
    with _session(source, write=not dry_run) as session:
        if not dry_run:
            _serialize(session)
        return _plan(session, master, reason, dry_run=dry_run, now=now)


def mark_good(source: SessionSource, master: int | str) -> MarkGoodResult:
    """Clear the bad mark of ``master`` only. Masters marked bad with it stay bad and the frames
    re-queued stay queued (they are reduced again with whichever master is then best). Refused
    when the master's night and group already has another good master (its rebuild): mark that
    one bad first."""
    with _session(source, write=True) as session:
        _serialize(session)
        master_id = _resolve_master(session, master)
        row = _load_masters(session, [master_id])[master_id]
        session.refresh(row)
        if not row.is_bad:
            message = f"master {master_id} is not marked bad: nothing changed"
            return MarkGoodResult(_master_info(row), False, None, message)
        if row.obstype is not CalibrationType.BPM and row.superseded_at is None:
            # one current master per night and group
            rival = session.scalar(
                select(MasterCalibration.id).where(
                    MasterCalibration.id != row.id,
                    current_master(MasterCalibration),
                    MasterCalibration.instrument_id == row.instrument_id,
                    MasterCalibration.obstype == row.obstype,
                    MasterCalibration.binning == row.binning,
                    MasterCalibration.readout_mode == row.readout_mode,
                    MasterCalibration.filter_name == row.filter_name,
                    MasterCalibration.dayobs == row.dayobs,
                )
            )
            if rival is not None:
                msg = (
                    f"master {master_id} cannot be marked good: master {rival} is the good "
                    f"{row.obstype.value} master of that night and group (one per night); mark "
                    f"{rival} bad first if {master_id} should be used instead"
                )
                raise PylcogtError(msg)
        previous = lifecycle.mark_master_good(row)
        message = (
            f"master {master_id} marked good (was: {previous}); this master only: masters marked "
            f"bad with it stay bad, and the frames re-queued then stay queued"
        )
        return MarkGoodResult(_master_info(row), True, previous, message)
