"""`pylcogt backfill` over two simulated nights (and one outside the range), end to end."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from pylcogt.simulate import simulate_night

from .test_cli import run

NIGHTS = ("20261120", "20261121")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("backfill") / "raw"
    for i, night in enumerate((*NIGHTS, "20261125")):
        simulate_night(out / night, camera="sbig", size=128, seed=i + 1, n_bias=3, n_dark=2,
                       n_flat=2, n_science=1, filters=("rp",), dayobs=night)  # fmt: skip
    return out


def _json(*args: str, cwd: Path) -> dict | list:
    return json.loads(run(*args, "--json", cwd=cwd).stdout)


def test_backfill_two_nights_dry_run_then_real_then_nothing(raw: Path, tmp_path: Path) -> None:
    span = ("backfill", "--since", NIGHTS[0], "--until", NIGHTS[1], "--raw-dir", str(raw))
    dry = _json(*span, "--dry-run", cwd=tmp_path)
    per_night = 6 + 4 + 4 + 1  # bias, dark, flats (evening + morning), science
    assert dry["dry_run"] and not dry["nothing_to_do"]
    assert dry["ingest"]["counts"] == {"new": 2 * per_night}
    assert dry["ingest"]["outside_range"] == per_night
    assert _json("frames", "list", cwd=tmp_path) == [], "a dry run changes nothing"

    real = _json(*span, "--run", cwd=tmp_path)
    assert real["ingest"]["counts"] == {"new": 2 * per_night}
    assert real["worker"]["failed"] == 0 and not real["worker"]["errors"]
    frames = _json("frames", "list", cwd=tmp_path)
    assert len(frames) == 2 * per_night
    assert {f["dayobs"][:10].replace("-", "") for f in frames} == set(NIGHTS)
    assert {f["state"] for f in frames} == {"done"}
    masters = _json("calibrations", "list", cwd=tmp_path)
    built = Counter((m["dayobs"][:10].replace("-", ""), m["type"]) for m in masters)
    for night in NIGHTS:
        for kind in ("BIAS", "DARK", "SKYFLAT"):
            assert built[(night, kind)] == 1, (night, kind, built)

    again = _json(*span, "--run", cwd=tmp_path)
    assert again["nothing_to_do"] and again["ingest"]["counts"] == {}
    assert again["worker"]["processed"] == 0 and again["worker"]["masters_built"] == 0
    assert _json("frames", "list", cwd=tmp_path) == frames
    assert _json("calibrations", "list", cwd=tmp_path) == masters
    text = run(*span, "--dry-run", cwd=tmp_path).stdout
    assert "nothing to do" in text

    # a failed science frame of the range is put back in the queue and reduced again
    science = next(f for f in frames if f["obstype"] == "EXPOSE")
    with sqlite3.connect(tmp_path / "pylcogt.db") as db:
        db.execute("UPDATE raw_frames SET state='failed', attempts=5, last_error='boom' "
                   "WHERE id=?", (science["id"],))  # fmt: skip
    redo = _json(*span, "--run", cwd=tmp_path)
    assert redo["reset"] == {"frames": 1, "by_state": {"failed": 1}}
    assert redo["worker"]["reduced"] == 1
    assert {f["state"] for f in _json("frames", "list", cwd=tmp_path)} == {"done"}
