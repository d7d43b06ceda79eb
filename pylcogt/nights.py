"""When an instrument's night is over: its local noon, or a closure (``pylcogt night close``).

A night (DAY-OBS) at a site runs from local noon to local noon (:mod:`pylcogt.scheduling`). Its
calibration groups are complete, and the masters built from then on are final, once it is
over. An observatory whose schedule says a night's observing has ended (the dome closed for the
day, the calibration plan done) can say so before the local noon: :func:`close_night` records a
closure (``night_closures``) per instrument, and from then on the night counts as over.
Closing twice changes nothing; frames that still arrive are handled like late frames after
the local noon (their group is rebuilt as a new final master).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from pylcogt.db.models import Instrument, NightClosure, RawFrame, Site
from pylcogt.scheduling import night_end, night_is_over

__all__ = ["NightInfo", "closed_at", "night_over", "night_info", "close_night"]


@dataclass(frozen=True)
class NightInfo:
    """An instrument's night: when it ends at its site, and whether (when) it was closed."""

    instrument_id: int
    camera: str
    dayobs: dt.date
    longitude_deg: float | None
    ends_at: dt.datetime
    closed_at: dt.datetime | None

    def over(self, now: dt.datetime) -> bool:
        return night_is_over(self.dayobs, self.longitude_deg, now, self.closed_at)


def closed_at(
    conn: Connection | Session, instrument_id: int, dayobs: dt.date
) -> dt.datetime | None:
    """When the night was closed (``None``: it was not)."""
    c = NightClosure.__table__.c
    return conn.execute(
        sa.select(c.closed_at).where(c.instrument_id == instrument_id, c.dayobs == dayobs)
    ).scalar_one_or_none()


def night_info(conn: Connection | Session, instrument_id: int, dayobs: dt.date) -> NightInfo:
    """The instrument's night ``dayobs``: its end at the site and its closure."""
    row = conn.execute(
        sa.select(Instrument.camera, Site.longitude_deg)
        .join(Site, Site.id == Instrument.site_id)
        .where(Instrument.id == instrument_id)
    ).one()
    return NightInfo(instrument_id, row.camera, dayobs, row.longitude_deg,
                     night_end(dayobs, row.longitude_deg),
                     closed_at(conn, instrument_id, dayobs))  # fmt: skip


def night_over(
    conn: Connection | Session, instrument_id: int, dayobs: dt.date, now: dt.datetime
) -> bool:
    """Whether the instrument's night ``dayobs`` is over at ``now`` (naive UTC)."""
    return night_info(conn, instrument_id, dayobs).over(now)


def close_night(
    session: Session,
    dayobs: dt.date,
    *,
    cameras: list[str] | None = None,
    reason: str | None = None,
    now: dt.datetime,
) -> list[tuple[str, dt.datetime, bool]]:
    """Close night ``dayobs`` for these cameras (default: every instrument with frames that
    night); returns ``(camera, closed_at, newly closed)`` per instrument (flushed, not
    committed). A camera not in the registry is a ``LookupError``."""
    query = sa.select(Instrument.id, Instrument.camera)
    if cameras:
        wanted = [c.lower() for c in cameras]
        rows = session.execute(query.where(Instrument.camera.in_(wanted))).all()
        unknown = sorted(set(wanted) - {r.camera for r in rows})
        if unknown:
            msg = f"no instrument {', '.join(unknown)} in the registry; `pylcogt instruments list`"
            raise LookupError(msg)
    else:
        with_frames = sa.select(RawFrame.instrument_id).where(RawFrame.dayobs == dayobs)
        rows = session.execute(query.where(Instrument.id.in_(with_frames))).all()
    out = []
    for row in sorted(rows, key=lambda r: r.camera):
        existing = closed_at(session, row.id, dayobs)
        if existing is None:
            session.add(NightClosure(instrument_id=row.id, dayobs=dayobs, closed_at=now,
                                     reason=reason))  # fmt: skip
        out.append((row.camera, existing or now, existing is None))
    session.flush()
    return out
