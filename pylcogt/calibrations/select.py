"""Choose the master calibration a frame is reduced with.

The matching rules are data (:data:`RULES`): for each master type, the attributes that must equal
the frame's and the time rule. Every type matches on instrument (one camera on one telescope),
binning and readout mode (``CONFMODE``); flats also on filter. A type that does not match on
filter matches masters whose ``filter_name`` is ``''`` (how the registry stores "no filter").
Only current masters are candidates: not marked bad and not superseded by a rebuild of their
group (:func:`pylcogt.db.models.current_master`).

Time rules, with ``t`` the frame's DATE-OBS, ``night`` its DAY-OBS, and ``dateobs`` / ``dayobs``
a master's effective time (the mean DATE-OBS of its inputs) and night:

- ``closest`` (bias, dark, BPM): the smallest ``|dateobs - t|``. An equal distance before and
  after goes to the earlier master (made from frames taken before this one, as in real time).
- ``night`` (flat): the master of the latest night at or before the frame's night, so that a
  night's flat (its evening and morning frames together, dated around midnight) serves every
  frame of that night; only when there is none, the master of the earliest later night, and
  :attr:`Selection.fallback_later` says so (the caller records it in the header).

Masters of one night (or with the same ``dateobs``) are told apart by the latest ``dateobs``,
then the highest ``id`` (the last registered wins). With ``as_of`` the registry is read as it
was then: masters registered before ``as_of`` (``created_at < as_of``) and not yet superseded or
marked bad at that time (``superseded_at``, ``bad_at``). With ``observed_before`` only masters
with ``dateobs <= observed_before`` are (the backfill rule: a frame whose
``raw_frames.calibration_cutoff`` is set, the end of its night, uses only current masters observed
by then, what the night should have used, whenever they were built).

Speed: every lookup is index probes: all equality columns bound, then a range read in index
order with ``LIMIT 1``, skipping the few bad or superseded masters it meets, so a probe reads a
handful of index entries whatever the registry size (never ``ORDER BY abs(...)``, which reads
every master of the instrument). ``closest`` walks ``ix_master_calibrations_lookup`` (ending in
``dateobs``) and sends both probes (latest at or before ``t``, earliest after) in one ``UNION
ALL`` statement; ``night`` walks ``ix_master_calibrations_nights`` (``dayobs``, ``dateobs``) and
sends the second probe only when the first finds nothing. With ``as_of`` the closest probes are
also bounded by ``dateobs < as_of``: a master is registered after its inputs were observed
(``dateobs <= created_at``), so this drops no real candidate and keeps a probe from walking every
later master.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from pylcogt.db.models import (
    CalibrationRole,
    CalibrationType,
    Instrument,
    MasterCalibration,
    RawFrame,
    current_master,
)
from pylcogt.errors import CalibrationNotFoundError

__all__ = [
    "TimeRule",
    "MatchRule",
    "RULES",
    "Selection",
    "select_master",
    "select_masters_for_frame",
    "REDUCTION_TYPES",
    "select_reduction_masters",
    "nearest_master_path",
]


class TimeRule(str, enum.Enum):
    """How the time of a master is chosen among those that match."""

    CLOSEST = "closest"
    NIGHT = "night"


@dataclass(frozen=True)
class MatchRule:
    """Which master attributes must equal the frame's, the time rule, and the role it plays."""

    obstype: CalibrationType
    match: tuple[str, ...]
    time_rule: TimeRule
    role: CalibrationRole

    @property
    def matches_filter(self) -> bool:
        return "filter_name" in self.match


# the equality columns of the lookup indexes besides obstype; a column a
# rule does not match on is bound to '' (how the registry stores "n/a"), so every probe binds them
_KEY_COLUMNS = ("instrument_id", "binning", "readout_mode", "filter_name")
_COMMON = ("instrument_id", "binning", "readout_mode")

RULES: Mapping[CalibrationType, MatchRule] = MappingProxyType(
    {
        CalibrationType.BIAS: MatchRule(
            CalibrationType.BIAS, _COMMON, TimeRule.CLOSEST, CalibrationRole.BIAS
        ),
        CalibrationType.DARK: MatchRule(
            CalibrationType.DARK, _COMMON, TimeRule.CLOSEST, CalibrationRole.DARK
        ),
        CalibrationType.SKYFLAT: MatchRule(
            CalibrationType.SKYFLAT,
            (*_COMMON, "filter_name"),
            TimeRule.NIGHT,
            CalibrationRole.FLAT,
        ),
        CalibrationType.BPM: MatchRule(
            CalibrationType.BPM, _COMMON, TimeRule.CLOSEST, CalibrationRole.BPM
        ),
    }
)


@dataclass(frozen=True)
class Selection:
    """The chosen master, the rule that chose it, and whether a flat had to come from later."""

    master: MasterCalibration
    rule: MatchRule
    fallback_later: bool = False


def _naive_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _as_type(obstype: CalibrationType | str) -> CalibrationType:
    if isinstance(obstype, CalibrationType):
        return obstype
    try:
        return CalibrationType(str(obstype).upper())
    except ValueError:
        known = ", ".join(t.value for t in CalibrationType)
        raise ValueError(f"unknown calibration type {obstype!r} (one of {known})") from None


def _candidates(m, with_as_of: bool) -> list[sa.ColumnElement[bool]]:
    """Current masters; with ``as_of``, those the registry held then as current."""
    if not with_as_of:
        return [current_master(m)]
    as_of = sa.bindparam("as_of", type_=sa.DateTime)
    return [
        m.created_at < as_of,
        sa.or_(m.superseded_at.is_(None), m.superseded_at >= as_of),
        sa.or_(m.bad_at.is_(None), m.bad_at >= as_of),
        # a master marked bad before revision 0007 without its time: bad all along
        sa.or_(m.is_bad == sa.false(), m.bad_at.is_not(None)),
    ]


def _key_clause(m) -> list[sa.ColumnElement[bool]]:
    return [
        m.instrument_id == sa.bindparam("instrument_id"),
        m.obstype == sa.bindparam("obstype"),
        m.binning == sa.bindparam("binning"),
        m.readout_mode == sa.bindparam("readout_mode"),
        m.filter_name == sa.bindparam("filter_name"),
    ]


@functools.cache
def _probe(later: bool, with_as_of: bool, with_observed_before: bool = False) -> sa.Select:
    """One ``closest`` index probe, built once: the latest match at or before ``:t``, or the
    earliest after, walking ``ix_master_calibrations_lookup`` (``id`` breaks ties)."""
    m = MasterCalibration
    t = sa.bindparam("t", type_=sa.DateTime)
    query = sa.select(m).where(*_key_clause(m), m.dateobs > t if later else m.dateobs <= t,
                               *_candidates(m, with_as_of))  # fmt: skip
    if with_as_of:
        query = query.where(m.dateobs < sa.bindparam("as_of", type_=sa.DateTime))
    if with_observed_before:
        query = query.where(m.dateobs <= sa.bindparam("observed_before", type_=sa.DateTime))
    time_order = m.dateobs.asc() if later else m.dateobs.desc()
    return query.order_by(time_order, m.id.desc()).limit(1)


@functools.cache
def _night_probe(later: bool, with_as_of: bool, with_observed_before: bool = False) -> sa.Select:
    """One ``night`` index probe, built once: the latest night at or before ``:night`` (its
    latest master), or the earliest later night, walking ``ix_master_calibrations_nights``."""
    m = MasterCalibration
    night = sa.bindparam("night", type_=sa.Date)
    query = sa.select(m).where(*_key_clause(m), m.dayobs > night if later else m.dayobs <= night,
                               *_candidates(m, with_as_of))  # fmt: skip
    if with_observed_before:
        query = query.where(m.dateobs <= sa.bindparam("observed_before", type_=sa.DateTime))
    order = (m.dayobs.asc(), m.dateobs.asc()) if later else (m.dayobs.desc(), m.dateobs.desc())
    return query.order_by(*order, m.id.desc()).limit(1)


@functools.cache
def _both_probes(with_as_of: bool, with_observed_before: bool = False) -> sa.Executable:
    """Both probes in one statement (one round trip): ``UNION ALL`` of two ``LIMIT 1`` queries."""
    before = _probe(False, with_as_of, with_observed_before).subquery()
    after = _probe(True, with_as_of, with_observed_before).subquery()
    union = sa.union_all(sa.select(before), sa.select(after))
    return sa.select(MasterCalibration).from_statement(union)


_NONE = "''"


def _not_found_message(
    session: Session,
    rule: MatchRule,
    params: Mapping[str, Any],
    as_of: dt.datetime | None,
    observed_before: dt.datetime | None = None,
) -> str:
    instrument = session.get(Instrument, params["instrument_id"])
    if instrument is None:
        where = f"instrument id {params['instrument_id']} (not in the registry)"
        camera = "CAMERA"
    else:
        camera = instrument.camera
        where = (
            f"camera {camera} at site {instrument.site.code} "
            f"({instrument.telescope} {instrument.enclosure}, instrument id {instrument.id})"
        )
    binning, mode = params["binning"], params["readout_mode"]
    parts = [f"binning {binning}", f"readout mode {mode or _NONE}"]
    stack = f"pylcogt stack --type {rule.obstype.value.lower()} --instrument {camera} --night "
    stack += "YYYYMMDD"
    if rule.matches_filter:
        parts.insert(0, f"filter {params['filter_name'] or _NONE}")
        stack += f" --filter {params['filter_name'] or _NONE}"
    stack += f" --binning {binning}"
    created = f", created before {as_of.isoformat(sep=' ')}" if as_of is not None else ""
    if observed_before is not None:
        created += f", observed at or before {observed_before.isoformat(sep=' ')} (backfill cutoff)"
    todo = f"build one with `{stack}`"
    if rule.obstype is CalibrationType.BPM:
        todo += (
            f" or register one made elsewhere with `pylcogt calibrations add FILE --type BPM "
            f"--instrument {camera} --night YYYYMMDD --binning {binning} "
            f"--readout-mode {mode or _NONE}`"
        )
    else:  # `calibrations add` registers only bad-pixel masks so far
        todo += f" (YYYYMMDD: a night with {rule.obstype.value} frames of this camera and mode)"
    return (
        f"no good {rule.obstype.value} master for {where}, {', '.join(parts)}{created} "
        f"(frame DATE-OBS {params['t'].isoformat(sep=' ')}): {todo}"
    )


def select_master(
    session: Session,
    *,
    instrument_id: int,
    obstype: CalibrationType | str,
    binning: str,
    readout_mode: str | None,
    filter_name: str | None,
    dateobs: dt.datetime,
    dayobs: dt.date | None = None,
    as_of: dt.datetime | None = None,
    observed_before: dt.datetime | None = None,
) -> Selection:
    """The master of type ``obstype`` that reduces a frame with these attributes (see module doc).

    ``dayobs``: the frame's night (DAY-OBS), needed for flats. ``observed_before``: only masters
    whose ``dateobs`` is at or before it are candidates (a backfilled frame's
    ``calibration_cutoff``).

    ``readout_mode``/``filter_name`` ``None`` mean ``''``; ``filter_name`` is ignored for types
    that do not match on filter. Raises :class:`CalibrationNotFoundError` when no master matches.
    """
    rule = RULES[_as_type(obstype)]
    t = _naive_utc(dateobs)
    cutoff = None if as_of is None else _naive_utc(as_of)
    frame = {
        "instrument_id": instrument_id,
        "binning": binning,
        "readout_mode": readout_mode or "",
        "filter_name": filter_name or "",
    }
    params: dict[str, Any] = {c: frame[c] if c in rule.match else "" for c in _KEY_COLUMNS}
    params.update(obstype=rule.obstype, t=t)
    if cutoff is not None:
        params["as_of"] = cutoff
    with_as_of = cutoff is not None
    observed = None if observed_before is None else _naive_utc(observed_before)
    with_observed = observed is not None
    if with_observed:
        params["observed_before"] = observed
    if rule.time_rule is TimeRule.NIGHT:  # usually one probe; the later one if needed
        if dayobs is None:
            raise ValueError(f"selecting a {rule.obstype.value} master needs the frame's DAY-OBS")
        params["night"] = dayobs
        earlier = session.scalars(_night_probe(False, with_as_of, with_observed), params).first()
        if earlier is not None:
            return Selection(earlier, rule)
        later = session.scalars(_night_probe(True, with_as_of, with_observed), params).first()
        if later is not None:
            return Selection(later, rule, fallback_later=True)
    else:
        rows = session.scalars(_both_probes(with_as_of, with_observed), params).all()
        earlier = next((r for r in rows if r.dateobs <= t), None)
        later = next((r for r in rows if r.dateobs > t), None)
        if earlier is not None and (later is None or t - earlier.dateobs <= later.dateobs - t):
            return Selection(earlier, rule)
        if later is not None:
            return Selection(later, rule)
    raise CalibrationNotFoundError(_not_found_message(session, rule, params, cutoff, observed))


def select_masters_for_frame(
    session: Session,
    raw_frame: RawFrame,
    needed_types: Iterable[CalibrationType | str],
    *,
    as_of: dt.datetime | None = None,
) -> dict[CalibrationType, Selection]:
    """:func:`select_master` for each needed type, keyed by type, honouring the frame's
    ``calibration_cutoff`` (``observed_before``).

    Raises one :class:`CalibrationNotFoundError` naming every type that has no master.
    """
    chosen: dict[CalibrationType, Selection] = {}
    missing: list[str] = []
    for obstype in dict.fromkeys(_as_type(t) for t in needed_types):
        try:
            chosen[obstype] = select_master(
                session,
                instrument_id=raw_frame.instrument_id,
                obstype=obstype,
                binning=raw_frame.binning,
                readout_mode=raw_frame.readout_mode,
                filter_name=raw_frame.filter_name,
                dateobs=raw_frame.dateobs,
                dayobs=raw_frame.dayobs,
                as_of=as_of,
                observed_before=raw_frame.calibration_cutoff,
            )
        except CalibrationNotFoundError as exc:
            missing.append(str(exc))
    if missing:
        raise CalibrationNotFoundError(f"{raw_frame.filename}: " + "; ".join(missing))
    return chosen


#: The masters a science frame is reduced with (a bad-pixel mask too, when one is registered).
REDUCTION_TYPES = (CalibrationType.BIAS, CalibrationType.DARK, CalibrationType.SKYFLAT)


def select_reduction_masters(
    session: Session, raw_frame: RawFrame, *, as_of: dt.datetime | None = None
) -> dict[CalibrationType, Selection]:
    """The masters that reduce science frame ``raw_frame``: bias, dark and flat
    (:func:`select_masters_for_frame`, :class:`CalibrationNotFoundError` when one is missing)
    and the bad-pixel mask when one matches."""
    chosen = select_masters_for_frame(session, raw_frame, REDUCTION_TYPES, as_of=as_of)
    with contextlib.suppress(CalibrationNotFoundError):  # a mask is applied when there is one
        chosen[CalibrationType.BPM] = select_master(
            session, instrument_id=raw_frame.instrument_id, obstype=CalibrationType.BPM,
            binning=raw_frame.binning, readout_mode=raw_frame.readout_mode, filter_name="",
            dateobs=raw_frame.dateobs, dayobs=raw_frame.dayobs, as_of=as_of,
            observed_before=raw_frame.calibration_cutoff,
        )  # fmt: skip
    return chosen


def nearest_master_path(
    session: Session, *, instrument_id: int, obstype: str, binning: str, readout_mode: str,
    dayobs: dt.date,
) -> str | None:
    """The file of the current master of ``obstype`` (no filter) for this instrument, binning and
    readout mode whose night is nearest ``dayobs`` (earlier nights first on a tie); None if
    there is none. For screening a frame by a master's header values, not for reduction."""
    m = MasterCalibration
    rows = session.execute(
        sa.select(m.path, m.dayobs)
        .where(m.instrument_id == instrument_id, m.obstype == _as_type(obstype),
               m.binning == binning, m.readout_mode == readout_mode, current_master(m))
    ).all()  # fmt: skip
    if not rows:
        return None
    best = min(rows, key=lambda r: (abs((r.dayobs - dayobs).days), r.dayobs > dayobs))
    return best.path
