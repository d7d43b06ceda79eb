"""Registry queries. Every function takes a Session and leaves committing to the caller."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import String, func, literal_column, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from pylcogt.db.models import FrameState, Instrument, RawFrame, Site
from pylcogt.io.raw_header import FrameMetadata

__all__ = [
    "get_or_create_site",
    "get_or_create_instrument",
    "frame_by_path",
    "frames_with_checksum",
    "exposure_holder",
    "list_frames",
    "list_instruments",
]


def get_or_create_site(
    session: Session, meta: FrameMetadata, *, now: dt.datetime | None = None
) -> Site:
    """The site ``meta.site``, created from the header on first sight (race-safe); ``now``:
    its ``created_at`` (naive UTC; default this machine's clock)."""
    site = session.scalar(select(Site).where(Site.code == meta.site))
    if site is not None:
        return site
    try:
        with session.begin_nested():
            site = Site(
                code=meta.site,
                name=meta.site_name,
                latitude_deg=meta.latitude_deg,
                longitude_deg=meta.longitude_deg,
                height_m=meta.height_m,
            )
            if now is not None:
                site.created_at = now
            session.add(site)
    except IntegrityError:  # another process created it first
        site = session.scalars(select(Site).where(Site.code == meta.site)).one()
    return site


def get_or_create_instrument(
    session: Session, meta: FrameMetadata, *, now: dt.datetime | None = None
) -> Instrument:
    """The instrument (site, enclosure, telescope, camera), created on first sight (race-safe);
    ``now`` as in :func:`get_or_create_site`."""
    site = get_or_create_site(session, meta, now=now)
    query = select(Instrument).where(
        Instrument.site_id == site.id,
        Instrument.enclosure == meta.enclosure,
        Instrument.telescope == meta.telescope,
        Instrument.camera == meta.camera,
    )
    instrument = session.scalar(query)
    if instrument is not None:
        return instrument
    try:
        with session.begin_nested():
            instrument = Instrument(
                site=site,
                enclosure=meta.enclosure,
                telescope=meta.telescope,
                telescope_name=meta.telescope_name,
                camera=meta.camera,
                family=meta.family,
                nx=meta.detector_px[0],
                ny=meta.detector_px[1],
                n_amplifiers=meta.n_amplifiers,
            )
            if now is not None:
                instrument.created_at = now
            session.add(instrument)
    except IntegrityError:
        instrument = session.scalars(query).one()
    return instrument


def frame_by_path(session: Session, path: str) -> RawFrame | None:
    """The frame registered under ``path`` (absolute, as ingest stored it), or None."""
    return session.scalar(select(RawFrame).where(RawFrame.path == path))


def frames_with_checksum(session: Session, checksum: str) -> Sequence[RawFrame]:
    """Every frame whose file has this sha256 (copies of one file under several paths)."""
    return session.scalars(select(RawFrame).where(RawFrame.checksum == checksum)).all()


def exposure_holder(
    session: Session, exposure_key: str, *, other_than: int | None = None
) -> RawFrame | None:
    """The frame registered for this exposure (not ``rejected``; at most one, by
    ``uq_raw_frames_exposure``), other than frame ``other_than``; None when there is none."""
    # the index predicate written out literally: SQLite uses a partial index only then
    rejected = literal_column(f"'{FrameState.REJECTED.value}'", String)
    query = select(RawFrame).where(
        RawFrame.exposure_key == exposure_key, RawFrame.state != rejected
    )
    if other_than is not None:
        query = query.where(RawFrame.id != other_than)
    return session.scalars(query).first()


def list_frames(
    session: Session,
    *,
    state: str | None = None,
    obstype: str | None = None,
    instrument: str | None = None,
    night: dt.date | None = None,
    limit: int | None = None,
) -> Sequence[RawFrame]:
    """Raw frames, oldest first, filtered by state, OBSTYPE, camera name and DAY-OBS."""
    query = (
        select(RawFrame)
        .options(joinedload(RawFrame.instrument).joinedload(Instrument.site))
        .order_by(RawFrame.dateobs.is_(None), RawFrame.dateobs, RawFrame.id)
    )
    if state:
        query = query.where(RawFrame.state == FrameState(state))
    if obstype:
        query = query.where(RawFrame.obstype == obstype.upper())
    if instrument:
        query = query.join(RawFrame.instrument).where(Instrument.camera == instrument.lower())
    if night:
        query = query.where(RawFrame.dayobs == night)
    if limit:
        query = query.limit(limit)
    return session.scalars(query).unique().all()


def list_instruments(session: Session) -> list[tuple[Instrument, int]]:
    """Every instrument with its number of registered raw frames."""
    counts = (
        select(RawFrame.instrument_id, func.count().label("n"))
        .group_by(RawFrame.instrument_id)
        .subquery()
    )
    query = (
        select(Instrument, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.instrument_id == Instrument.id)
        .options(joinedload(Instrument.site))
        .order_by(Instrument.camera, Instrument.id)
    )
    return [(inst, int(n)) for inst, n in session.execute(query).all()]
