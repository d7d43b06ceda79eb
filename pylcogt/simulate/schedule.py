"""The order and timing of a simulated night's exposures (UTC; lsc times, shifted by longitude).

Afternoon biases then darks from 20:00 on DAY-OBS; evening twilight flats from 23:10 (sky fading,
exposures lengthening); science visits (every filter once per visit) spread over 00:30-08:00 the
next date; morning flats from 09:15 (filters reversed, exposures shortening); morning biases and
darks from 10:30.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

from pylcogt.simulate.cameras import FILTERS, SITES, CameraSpec

__all__ = ["Plan", "schedule", "DARK_EXPTIME", "TWILIGHT_TAU"]

DARK_EXPTIME = 300.0
TWILIGHT_TAU = 400.0  # s, e-folding time of the twilight sky brightness


@dataclass
class Plan:
    """One exposure to make: OBSTYPE, filter, exposure (s), start (UTC), molecule numbering."""

    obstype: str
    filter: str
    exptime: float
    start: dt.datetime
    molnum: int
    molfrnum: int
    frmtotal: int
    sky_e: float = 0.0  # twilight flats: sky level in electrons
    twilight: str = ""  # "evening" / "morning" for flats


def _ms(t: dt.datetime) -> dt.datetime:
    return t.replace(microsecond=(t.microsecond // 1000) * 1000)


def schedule(
    spec: CameraSpec,
    site_lon: float,
    day: dt.date,
    n_bias,
    n_dark,
    n_flat,
    n_science,
    filters,
    rng: np.random.Generator,
    science_exptime: dict[str, float] | None = None,
) -> list[Plan]:
    """Exposures in time order. Counts are per set: n_bias/n_dark each afternoon and morning,
    n_flat per filter each twilight, n_science visits (one exposure per filter each).
    ``science_exptime``: seconds per filter, instead of the filters' default exposures."""
    exptimes = {f: FILTERS[f].exptime for f in filters} | (science_exptime or {})
    shift = dt.timedelta(hours=(SITES["lsc"].lon - site_lon) / 15.0)
    base = dt.datetime(day.year, day.month, day.day) + shift
    overhead = spec.readout_s + 5.0
    plans: list[Plan] = []
    molnum = [0]

    def jitter() -> dt.timedelta:
        return dt.timedelta(seconds=float(rng.uniform(0.0, 3.0)))

    def calibrations(t: dt.datetime) -> None:
        for obstype, n, exptime in (("BIAS", n_bias, 0.0), ("DARK", n_dark, DARK_EXPTIME)):
            molnum[0] += 1
            for k in range(n):
                t += jitter()
                plans.append(Plan(obstype, "air", exptime, _ms(t), molnum[0], k + 1, n))
                t += dt.timedelta(seconds=exptime + overhead)

    def twilight(t: dt.datetime, order, evening: bool) -> None:
        # The sky fades (evening) or brightens (morning) exponentially; exposure times follow the
        # predicted rate to reach 22000 e-, the realised level scatters by 4% (prediction error).
        t0, first = t, (2.5 if evening else 30.0)
        camera_factor = (spec.pixscale / 0.389) ** 2 * 10 ** (0.4 * spec.zp_offset)
        for f in order:
            molnum[0] += 1
            rate0 = 22000.0 / first * camera_factor * 10 ** (0.4 * (FILTERS[f].zp - 23.5))
            for k in range(n_flat):
                t += jitter()
                since = (t - t0).total_seconds()
                rate = rate0 * math.exp((-since if evening else since) / TWILIGHT_TAU)
                x = 22000.0 / (rate * TWILIGHT_TAU)
                if evening:
                    exptime = -TWILIGHT_TAU * math.log1p(-x) if x < 0.99 else 90.0
                else:
                    exptime = TWILIGHT_TAU * math.log1p(x)
                exptime = round(min(max(exptime, 1.0), 90.0), 3)
                growth = (
                    -math.expm1(-exptime / TWILIGHT_TAU)
                    if evening
                    else math.expm1(exptime / TWILIGHT_TAU)
                )
                level = rate * TWILIGHT_TAU * growth * float(1 + rng.normal(0.0, 0.04))
                plans.append(
                    Plan(
                        "SKYFLAT",
                        f,
                        exptime,
                        _ms(t),
                        molnum[0],
                        k + 1,
                        n_flat,
                        level,
                        "evening" if evening else "morning",
                    )
                )
                t += dt.timedelta(seconds=exptime + overhead)
            t += dt.timedelta(seconds=20.0)  # filter change

    calibrations(base + dt.timedelta(hours=20))
    twilight(base + dt.timedelta(hours=23, minutes=10), filters, evening=True)
    if n_science:
        visit = sum(exptimes[f] + overhead for f in filters)
        spacing = max(visit, 7.5 * 3600 / n_science)
        start = base + dt.timedelta(hours=24, minutes=30)
        for v in range(n_science):
            t = start + dt.timedelta(seconds=v * spacing)
            molnum[0] += 1
            for k, f in enumerate(filters):
                t += jitter()
                plans.append(Plan("EXPOSE", f, exptimes[f], _ms(t), molnum[0], k + 1, len(filters)))
                t += dt.timedelta(seconds=exptimes[f] + overhead)
    twilight(base + dt.timedelta(hours=33, minutes=15), tuple(reversed(filters)), evening=False)
    calibrations(base + dt.timedelta(hours=34, minutes=30))
    return plans
