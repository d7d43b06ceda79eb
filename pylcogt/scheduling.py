"""The worker's scheduling rules as pure functions: order, nights, quiet time, retries.

No database and no clock: every function takes the time it reasons about.

- **Order**: a night's frames are taken bias, dark, flat, then science (:data:`OBSTYPE_RANK`), so
  that the masters a frame needs exist when it is reduced; older nights first.
- **Night rule**: DAY-OBS ``D`` at a site runs from local noon of ``D`` to local noon of ``D + 1``,
  local time being mean solar time at the site's longitude (``utc + longitude / 15`` hours; the
  simulator and LCO's schedule put every exposure of a night, afternoon biases to morning darks,
  inside that window). The night is *over* from that local noon on: its calibration groups are
  then complete whatever the quiet time. A site with no longitude gets the latest possible end
  (as if at longitude -180 degrees, UTC noon + 12 h), so no group is ever built early.
- **Closed nights**: an instrument's night may be declared over before its local noon
  (``pylcogt night close``, :mod:`pylcogt.nights`): the same as over from then on.
- **Quiet time**: during a night, a calibration group is complete once no new frame of it was
  ingested for ``quiet_time_s`` seconds.
- **Retries**: transient failures back off exponentially, ``base * 2**(attempt-1)`` capped at
  ``cap``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "OBSTYPE_RANK",
    "SCIENCE_RANK",
    "PREREQUISITES",
    "obstype_rank",
    "night_end",
    "night_is_over",
    "group_is_complete",
    "backoff_delay",
]

#: Processing order within a night; anything else (science) comes after the calibrations.
OBSTYPE_RANK: Mapping[str, int] = MappingProxyType({"BIAS": 0, "DARK": 1, "SKYFLAT": 2})
SCIENCE_RANK = 3

#: Calibration groups whose frames must be resolved (in a master, or given up) before a group
#: of this type is built: a dark is prepared with the night's bias, a flat with bias and dark.
PREREQUISITES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"BIAS": (), "DARK": ("BIAS",), "SKYFLAT": ("BIAS", "DARK")}
)

_WESTMOST_DEG = -180.0


def obstype_rank(obstype: str | None) -> int:
    """Rank of an OBSTYPE in a night's processing order (bias 0, dark 1, flat 2, science 3)."""
    return OBSTYPE_RANK.get((obstype or "").upper(), SCIENCE_RANK)


def night_end(dayobs: dt.date, longitude_deg: float | None) -> dt.datetime:
    """When night ``dayobs`` is over at a site: local noon of the next day, as naive UTC."""
    lon = _WESTMOST_DEG if longitude_deg is None else float(longitude_deg)
    if not -180.0 <= lon <= 360.0:
        msg = f"longitude must be in degrees east (-180..360), got {longitude_deg!r}"
        raise ValueError(msg)
    if lon > 180.0:
        lon -= 360.0
    local_noon = dt.datetime.combine(dayobs + dt.timedelta(days=1), dt.time(12))
    return local_noon - dt.timedelta(hours=lon / 15.0)


def night_is_over(
    dayobs: dt.date,
    longitude_deg: float | None,
    now: dt.datetime,
    closed_at: dt.datetime | None = None,
) -> bool:
    """Whether night ``dayobs`` is over at a site of this longitude at ``now`` (naive UTC):
    past its local noon, or closed (``pylcogt night close``) at ``closed_at``."""
    if closed_at is not None and now >= closed_at:
        return True
    return now >= night_end(dayobs, longitude_deg)


def group_is_complete(
    *,
    dayobs: dt.date,
    longitude_deg: float | None,
    last_ingested_at: dt.datetime,
    now: dt.datetime,
    quiet_time_s: float,
    closed_at: dt.datetime | None = None,
) -> bool:
    """A calibration group whose frames are all checked is complete when its night is over
    (or closed at ``closed_at``) or no new frame of it arrived for ``quiet_time_s`` seconds."""
    if night_is_over(dayobs, longitude_deg, now, closed_at):
        return True
    return (now - last_ingested_at).total_seconds() >= quiet_time_s


def backoff_delay(attempt: int, *, base_s: float, cap_s: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
    if attempt < 1:
        msg = f"attempt must be >= 1, got {attempt!r}"
        raise ValueError(msg)
    return min(cap_s, base_s * 2.0 ** min(attempt - 1, 30))
