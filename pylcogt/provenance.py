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
    plan = prov.bad_cascade(url, 12)                      # what marking master 12 bad would redo
    plan = prov.mark_bad(url, 12, reason="light leak")    # do it (one transaction)
    prov.mark_good(url, 12)                               # undo the mark on master 12 only

With a URL or a sessionmaker the write functions commit their one transaction; with a Session
they only flush and leave committing (or rolling back) to the caller, like :mod:`pylcogt.db.repo`.

Provenance links (see ``docs/registry.rst``): ``master_inputs`` holds the raw frames stacked into
each master; ``frame_calibrations`` the masters used, by role, to reduce a science frame *and* to
prepare a calibration frame before it was stacked (a dark frame's bias, a flat frame's bias and
dark). The mark-bad cascade follows both:

1. The master is marked bad (``is_bad``, ``bad_reason`` = time and reason).
2. A good master built from frames prepared with a bad master (a dark or flat made with a bad
   bias, a flat made with a bad dark, a bad-pixel mask derived from such frames) is marked bad too
   ("built from frames prepared with bad master N"); so is a bad-pixel mask derived from a bad dark
   or flat (it shares their input frames: "derived from bad master N"). Repeated until nothing
   new is found. Masters already bad are left alone (their cascade was done when they were marked).
3. Every frame (any state but ``rejected``) that used a master marked bad in this cascade is
   re-queued: state ``pending``, attempts 0, ``last_error`` saying why, ``next_attempt_at``
   cleared, product and provenance rows kept until the worker replaces them. A frame being
   processed loses its lease (owner cleared, fencing token incremented) so that the worker holding
   it cannot record a result made with the bad master.
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

from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session, aliased, joinedload, sessionmaker

from pylcogt.db.models import (
    CalibrationRole,
    CalibrationType,
    FrameCalibration,
    FrameState,
    Instrument,
    MasterCalibration,
    MasterInput,
    MasterJob,
    RawFrame,
    utcnow,
)
from pylcogt.errors import PylcogtError
from pylcogt.instruments import CALIBRATION_OBSTYPES

__all__ = [
    "NotRegisteredError",
    "MasterInfo",
    "FrameInfo",
    "MasterUse",
    "FrameUse",
    "UsedMaster",
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
_LOCK_KEY = 0x70796C636F67  # "pylcog": PostgreSQL advisory lock serializing mark-bad/good


class NotRegisteredError(PylcogtError, LookupError):
    """No frame or master calibration matches what was asked for."""


# --- plain results ------------------------------------------------------------------------
@dataclass(frozen=True)
class MasterInfo:
    """A registered master calibration. ``effective_time`` is the mean DATE-OBS of its inputs."""

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
class FrameProvenance:
    """Where a raw frame's result came from.

    ``masters``: for a science frame the masters it was reduced with; for a calibration frame
    the masters it was prepared with before stacking. ``stacked_into``: the masters a calibration
    frame went into.
    """

    frame: FrameInfo
    masters: tuple[UsedMaster, ...]
    stacked_into: tuple[MasterInfo, ...]
    kind: str = "frame"


@dataclass(frozen=True)
class MasterProvenance:
    """A master, what it was made from, and what it was used for.

    ``inputs``: raw frames stacked into it; ``prepared_with``: masters its inputs were prepared
    with; ``reduced_frames``: science frames reduced with it; ``prepared_frames``: calibration
    frames prepared with it; ``derived_masters``: masters built from frames prepared with it, and
    bad-pixel masks derived from it.
    """

    master: MasterInfo
    inputs: tuple[FrameInfo, ...]
    prepared_with: tuple[MasterUse, ...]
    reduced_frames: tuple[FrameUse, ...]
    prepared_frames: tuple[FrameUse, ...]
    derived_masters: tuple[MasterInfo, ...]
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
    """A result (or a list of them) as plain dicts and lists, for JSON (datetimes kept)."""
    if isinstance(result, (list, tuple)):
        return [to_dict(r) for r in result]
    return dataclasses.asdict(result)


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
    """Serialize mark-bad/mark-good transactions: the first statement of the transaction."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    else:  # SQLite: a write, even of no row, takes the database's write lock until commit
        session.execute(
            update(MasterCalibration)
            .where(MasterCalibration.id == -1)
            .values(is_bad=MasterCalibration.is_bad)
            .execution_options(synchronize_session=False)
        )


# --- conversions --------------------------------------------------------------------------
def _master_info(m: MasterCalibration) -> MasterInfo:
    return MasterInfo(
        id=m.id, type=m.obstype.value, instrument=m.instrument.camera,
        site=m.instrument.site.code, binning=m.binning, readout_mode=m.readout_mode,
        filter=m.filter_name, dayobs=m.dayobs, effective_time=m.dateobs, path=m.path,
        is_bad=bool(m.is_bad), bad_reason=m.bad_reason, n_inputs=m.n_inputs,
        created_at=m.created_at,
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
        ("frame", RawFrame.path, RawFrame),
        ("frame", RawFrame.product_path, RawFrame),
        ("master", MasterCalibration.path, MasterCalibration),
    ):
        ids = session.scalars(select(model.id).where(column.in_(candidates))).all()
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


def _prepared_with(session: Session, frame_ids: Iterable[int]) -> list[tuple[str, int]]:
    """Distinct (role, master id) used to prepare ``frame_ids``, in role order."""
    pairs: set[tuple[str, int]] = set()
    for chunk in _chunks(set(frame_ids)):
        query = (
            select(FrameCalibration.role, FrameCalibration.master_id)
            .where(FrameCalibration.frame_id.in_(chunk))
            .distinct()
        )
        pairs.update((role.value, mid) for role, mid in session.execute(query))
    return sorted(pairs, key=lambda p: (_ROLE_ORDER[p[0]], p[1]))


def _users_of(session: Session, master_id: int) -> list[tuple[str, RawFrame]]:
    """(role, frame) for every frame that used ``master_id``, oldest first."""
    query = (
        select(FrameCalibration.role, RawFrame)
        .join(RawFrame, RawFrame.id == FrameCalibration.frame_id)
        .options(joinedload(RawFrame.instrument))
        .where(FrameCalibration.master_id == master_id)
    )
    rows = [(role.value, frame) for role, frame in session.execute(query).unique()]
    rows.sort(key=lambda r: _frame_order(r[1]))
    return rows


def _derived_from(session: Session, master: MasterCalibration) -> list[tuple[int, str]]:
    """(master id, how) for masters made from ``master``: built from frames prepared with it,
    or (for a dark or flat) bad-pixel masks derived from it (sharing its input frames)."""
    query = (
        select(MasterInput.master_id)
        .join(FrameCalibration, FrameCalibration.frame_id == MasterInput.frame_id)
        .where(FrameCalibration.master_id == master.id, MasterInput.master_id != master.id)
        .distinct()
    )
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
) -> list[MasterInfo]:
    """Registered masters in effective-time order, filtered by camera (``fa15``), type
    (``BIAS``, ``DARK``, ``SKYFLAT``, ``BPM``), night (DAY-OBS) and filter."""
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
    with _session(source) as session:
        return [_master_info(m) for m in session.scalars(query).unique()]


def provenance(source: SessionSource, target: int | str) -> FrameProvenance | MasterProvenance:
    """The provenance of a raw frame (an id, ``frame:ID``, its raw path, its product path or its
    file name) or of a master (``master:ID`` or its path)."""
    with _session(source) as session:
        kind, found = _resolve(session, target)
        if kind == "master":
            return _master_provenance(session, found)
        return _frame_provenance(session, found)


def frame_provenance(source: SessionSource, frame: int | str) -> FrameProvenance:
    """The masters a frame was reduced (or prepared) with, each with its inputs; see
    :class:`FrameProvenance`. ``frame``: an id, its raw path, its product path or its name."""
    with _session(source) as session:
        kind, found = _resolve(session, frame)
        if kind != "frame":
            msg = f"{frame!r} is master calibration {found}: use master_provenance"
            raise NotRegisteredError(msg)
        return _frame_provenance(session, found)


def master_provenance(source: SessionSource, master: int | str) -> MasterProvenance:
    """A master's inputs and every frame and master that used it; see :class:`MasterProvenance`.
    ``master``: an id, ``master:ID`` or its path."""
    with _session(source) as session:
        return _master_provenance(session, _resolve_master(session, master))


def _frame_provenance(session: Session, frame_id: int) -> FrameProvenance:
    frame = session.scalars(_frames_query().where(RawFrame.id == frame_id)).one()
    links = session.execute(
        select(FrameCalibration.role, FrameCalibration.master_id).where(
            FrameCalibration.frame_id == frame_id
        )
    ).all()
    stacked = session.scalars(
        select(MasterInput.master_id).where(MasterInput.frame_id == frame_id)
    ).all()
    masters = _load_masters(session, [mid for _, mid in links] + list(stacked))
    inputs = _inputs_of(session, [mid for _, mid in links])
    used = []
    for role, mid in sorted(links, key=lambda r: _ROLE_ORDER[r[0].value]):
        frames = inputs.get(mid, [])
        prepared = _prepared_with(session, [f.id for f in frames])
        upstream = _load_masters(session, [m for _, m in prepared])
        used.append(
            UsedMaster(
                role=role.value,
                master=_master_info(masters[mid]),
                inputs=tuple(_frame_info(f) for f in frames),
                prepared_with=tuple(MasterUse(r, _master_info(upstream[m])) for r, m in prepared),
            )
        )
    into = sorted((masters[mid] for mid in stacked), key=lambda m: m.id)
    return FrameProvenance(
        frame=_frame_info(frame),
        masters=tuple(used),
        stacked_into=tuple(_master_info(m) for m in into),
    )


def _master_provenance(session: Session, master_id: int) -> MasterProvenance:
    master = _load_masters(session, [master_id])[master_id]
    inputs = _inputs_of(session, [master_id]).get(master_id, [])
    prepared = _prepared_with(session, [f.id for f in inputs])
    derived = _derived_from(session, master)
    others = _load_masters(session, [m for _, m in prepared] + [m for m, _ in derived])
    reduced, prepared_frames = [], []
    for role, frame in _users_of(session, master_id):
        use = FrameUse(role, _frame_info(frame))
        (prepared_frames if frame.obstype in CALIBRATION_OBSTYPES else reduced).append(use)
    return MasterProvenance(
        master=_master_info(master),
        inputs=tuple(_frame_info(f) for f in inputs),
        prepared_with=tuple(MasterUse(r, _master_info(others[m])) for r, m in prepared),
        reduced_frames=tuple(reduced),
        prepared_frames=tuple(prepared_frames),
        derived_masters=tuple(_master_info(others[m]) for m, _ in derived),
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


def _requeue(frames: Iterable[RawFrame], last_error: str) -> None:
    for frame in frames:
        if frame.state is FrameState.PROCESSING:  # fence off the worker holding it
            frame.lease_token = (frame.lease_token or 0) + 1
        frame.lease_owner = None
        frame.lease_expires_at = None
        frame.state = FrameState.PENDING
        frame.attempts = 0
        frame.next_attempt_at = None
        frame.last_error = last_error


def _apply(c: _Cascade, stamp: str, session: Session) -> None:
    for position, mid in enumerate(c.order):
        master = c.masters[mid]
        master.is_bad = True
        master.bad_reason = f"{stamp} {c.why[mid]}"
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
        _requeue(c.inputs.get(mid, []), f"re-queued {stamp} to rebuild {label}: {c.why[mid]}")
        _requeue(
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
    stamp = _stamp(now or utcnow())
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
        _apply(cascade, stamp, session)
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
        if row.obstype is not CalibrationType.BPM:  # one good master per night and group
            rival = session.scalar(
                select(MasterCalibration.id).where(
                    MasterCalibration.id != row.id,
                    MasterCalibration.is_bad.is_(False),
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
        previous = row.bad_reason
        row.is_bad = False
        row.bad_reason = None
        message = (
            f"master {master_id} marked good (was: {previous}); this master only: masters marked "
            f"bad with it stay bad, and the frames re-queued then stay queued"
        )
        return MarkGoodResult(_master_info(row), True, previous, message)
