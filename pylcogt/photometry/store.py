"""Reference catalogues in the registry: load a file (``pylcogt refcat load``), list, cone search.

Loading is idempotent: a catalogue is identified by its ``name`` (default: the file name without
its suffixes). The same bytes loaded with the same column options again: nothing changes
(``"unchanged"``). Different bytes or options under an existing name: its stars are replaced in
one transaction (``"replaced"``). Otherwise it is added (``"loaded"``).

Cone search: the ``(dec, ra)`` index selects a declination band and an RA range (two ranges
when the cone crosses RA 0/360, every RA when it reaches a pole), then the exact great-circle
distance is applied in numpy.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, and_, delete, func, insert, or_, select
from sqlalchemy.orm import Session, sessionmaker

from pylcogt.db.models import REFERENCE_BAND_COLUMNS, ReferenceCatalog, ReferenceStar, utcnow
from pylcogt.db.session import writer
from pylcogt.errors import ConfigurationError
from pylcogt.photometry.refcat import (
    BANDS,
    ReferenceStars,
    catalog_name_for,
    stars_from_table,
)

__all__ = ["LoadResult", "load_catalog_file", "list_catalogs", "query_cone", "ra_ranges"]

_INSERT_CHUNK = 5000
_NAME_LENGTH = 64


@dataclass(frozen=True)
class LoadResult:
    """What :func:`load_catalog_file` did: ``action`` is ``"loaded"``, ``"replaced"`` or
    ``"unchanged"``."""

    name: str
    catalog_id: int
    action: str
    n_stars: int
    bands: tuple[str, ...]
    checksum: str
    path: str
    columns: dict[str, str]

    def to_json(self) -> dict:
        return {"name": self.name, "id": self.catalog_id, "action": self.action,
                "n_stars": self.n_stars, "bands": list(self.bands), "checksum": self.checksum,
                "path": self.path, "columns": self.columns}  # fmt: skip


def _options_text(columns: Mapping[str, str] | None) -> str:
    return json.dumps(dict(sorted((columns or {}).items())), separators=(",", ":"))


def load_catalog_file(
    maker: sessionmaker[Session],
    path: str | os.PathLike,
    *,
    name: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> LoadResult:
    """Load the reference file ``path`` (FITS or CSV) into the registry as ``name`` (see the
    module doc). ConfigurationError for an unreadable file or unrecognised columns."""
    from pylcogt.io.refcat_files import file_sha256, read_reference_table

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigurationError(f"reference catalogue {path} does not exist")
    name = name or catalog_name_for(path)
    if not name or len(name) > _NAME_LENGTH:
        raise ConfigurationError(f"catalogue name must be 1-{_NAME_LENGTH} characters: {name!r}")
    checksum = file_sha256(path)
    options = _options_text(columns)
    with maker() as session:
        row = session.scalars(select(ReferenceCatalog).where(ReferenceCatalog.name == name)).first()
        if row is not None and row.checksum == checksum and row.options == options:
            return _result(row, "unchanged")
    stars = stars_from_table(read_reference_table(path), name=name, columns=columns)
    values = _star_rows(stars)
    with writer(maker)() as session, session.begin():
        row = session.scalars(select(ReferenceCatalog).where(ReferenceCatalog.name == name)).first()
        if row is not None and row.checksum == checksum and row.options == options:
            return _result(row, "unchanged")  # loaded meanwhile by someone else
        action = "loaded" if row is None else "replaced"
        if row is None:
            row = ReferenceCatalog(name=name)
            session.add(row)
        else:
            session.execute(delete(ReferenceStar).where(ReferenceStar.catalog_id == row.id))
        row.source_path = str(path)
        row.checksum = checksum
        row.options = options
        row.columns = json.dumps(dict(stars.columns or {}), separators=(",", ":"))
        row.bands = ",".join(stars.bands)
        row.n_stars = len(stars)
        row.loaded_at = utcnow()
        session.flush()
        for start in range(0, len(values), _INSERT_CHUNK):
            chunk = values[start : start + _INSERT_CHUNK]
            for v in chunk:
                v["catalog_id"] = row.id
            session.execute(insert(ReferenceStar), chunk)
        result = _result(row, action)
    return result


def _star_rows(stars: ReferenceStars) -> list[dict]:
    """One dict per star for a bulk insert; NaN -> NULL."""
    arrays = {"ra": stars.ra, "dec": stars.dec}
    for band, suffix in REFERENCE_BAND_COLUMNS.items():
        if band in stars.mags:
            arrays[f"mag_{suffix}"] = stars.mags[band]
            arrays[f"err_{suffix}"] = np.where(np.isfinite(stars.mags[band]), stars.errs[band],
                                               np.nan)  # fmt: skip
    lists = {
        k: [None if not math.isfinite(x) else x for x in a.tolist()] for k, a in arrays.items()
    }
    keys = list(lists)
    return [dict(zip(keys, row, strict=True)) for row in zip(*lists.values(), strict=True)]


def _result(row: ReferenceCatalog, action: str) -> LoadResult:
    return LoadResult(
        name=row.name,
        catalog_id=row.id,
        action=action,
        n_stars=row.n_stars,
        bands=tuple(b for b in row.bands.split(",") if b),
        checksum=row.checksum,
        path=row.source_path,
        columns=json.loads(row.columns or "{}"),
    )


def list_catalogs(maker: sessionmaker[Session]) -> list[dict]:
    """Every loaded catalogue: name, id, n_stars, bands, path, checksum, loaded_at, and the sky
    it covers (``ra_min``/``ra_max``/``dec_min``/``dec_max``, degrees; None when empty)."""
    with maker() as session:
        extent = (
            select(ReferenceStar.catalog_id, func.min(ReferenceStar.ra), func.max(ReferenceStar.ra),
                   func.min(ReferenceStar.dec), func.max(ReferenceStar.dec))
            .group_by(ReferenceStar.catalog_id)
        )  # fmt: skip
        bounds = {r[0]: r[1:] for r in session.execute(extent)}
        out = []
        for row in session.scalars(select(ReferenceCatalog).order_by(ReferenceCatalog.name)):
            ra_min, ra_max, dec_min, dec_max = bounds.get(row.id, (None, None, None, None))
            out.append({
                "name": row.name, "id": row.id, "n_stars": row.n_stars,
                "bands": [b for b in row.bands.split(",") if b], "path": row.source_path,
                "checksum": row.checksum, "loaded_at": row.loaded_at,
                "columns": json.loads(row.columns or "{}"),
                "ra_min": ra_min, "ra_max": ra_max, "dec_min": dec_min, "dec_max": dec_max,
            })  # fmt: skip
    return out


def ra_ranges(ra_deg: float, dec_deg: float, radius_deg: float) -> list[tuple[float, float]]:
    """RA intervals (degrees, within [0, 360]) covering the cone; ``[(0, 360)]`` when it
    reaches a pole or is wider than the sky."""
    if abs(dec_deg) + radius_deg >= 90.0 or radius_deg >= 90.0:
        return [(0.0, 360.0)]
    ratio = math.sin(math.radians(radius_deg)) / math.cos(math.radians(dec_deg))
    half = 180.0 if ratio >= 1.0 else math.degrees(math.asin(ratio)) * (1 + 1e-9) + 1e-9
    if half >= 180.0:
        return [(0.0, 360.0)]
    lo, hi = (ra_deg - half) % 360.0, (ra_deg + half) % 360.0
    if lo <= hi:
        return [(lo, hi)]
    return [(lo, 360.0), (0.0, hi)]


def query_cone(
    source: Session | sessionmaker[Session] | Engine,
    ra_deg: float,
    dec_deg: float,
    radius_deg: float,
    *,
    name: str | None = None,
) -> ReferenceStars:
    """The registry's reference stars within ``radius_deg`` of (``ra_deg``, ``dec_deg``).

    ``name``: that catalogue only (ConfigurationError if it was never loaded); ``None``: when
    stars of several catalogues are in the cone, those of the catalogue with the most of them.
    """
    if isinstance(source, Session):
        return _query_cone(source, ra_deg, dec_deg, radius_deg, name)
    maker = sessionmaker(bind=source) if isinstance(source, Engine) else source
    with maker() as session:
        return _query_cone(session, ra_deg, dec_deg, radius_deg, name)


def _query_cone(session: Session, ra_deg, dec_deg, radius_deg, name) -> ReferenceStars:
    from pylcogt.photometry.refcat import angular_separation_deg

    catalogs = {
        c.id: c.name
        for c in session.scalars(
            select(ReferenceCatalog).where(ReferenceCatalog.name == name)
            if name is not None
            else select(ReferenceCatalog)
        )
    }
    if name is not None and not catalogs:
        raise ConfigurationError(f"no reference catalogue named {name!r} (pylcogt refcat list)")
    star = ReferenceStar
    ra_terms = [star.ra.between(lo, hi) for lo, hi in ra_ranges(ra_deg, dec_deg, radius_deg)]
    where = [star.dec.between(dec_deg - radius_deg, dec_deg + radius_deg), or_(*ra_terms)]
    if name is not None:
        where.append(star.catalog_id.in_(list(catalogs)))
    band_columns = [(b, REFERENCE_BAND_COLUMNS[b]) for b in BANDS]
    columns = [star.catalog_id, star.ra, star.dec]
    for _, suffix in band_columns:
        columns += [getattr(star, f"mag_{suffix}"), getattr(star, f"err_{suffix}")]
    rows = session.execute(select(*columns).where(and_(*where))).all()
    if not rows:
        return ReferenceStars.empty(name or "")
    data = np.array([tuple(r) for r in rows], dtype=np.float64)  # None -> NaN
    catalog_ids = data[:, 0].astype(np.int64)
    sep = angular_separation_deg(data[:, 1], data[:, 2], ra_deg, dec_deg)
    keep = sep <= radius_deg
    if keep.any():
        ids, counts = np.unique(catalog_ids[keep], return_counts=True)
        chosen = int(ids[np.argmax(counts)])  # ties: the lowest id (loaded first)
        keep &= catalog_ids == chosen
    else:
        chosen = int(catalog_ids[0])
    data = data[keep]
    mags, errs = {}, {}
    for k, (band, _) in enumerate(band_columns):
        mag, err = data[:, 3 + 2 * k], data[:, 4 + 2 * k]
        if np.isfinite(mag).any():
            mags[band], errs[band] = mag, err
    return ReferenceStars(catalogs.get(chosen, name or ""), data[:, 1], data[:, 2], mags, errs)
