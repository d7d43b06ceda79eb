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


AS_OF_NIGHTS = ("20261119", "20261120", "20261121")


def test_backfill_uses_only_masters_observed_by_the_end_of_the_night(tmp_path: Path) -> None:
    """Night 20261120 has no bias frames: a backfill makes its dark, flats and science borrow
    the bias of 20261119 (observed before the night ended), never the one of 20261121, even
    though that one exists already and is closer in time."""
    from astropy.io import fits

    raw = tmp_path / "raw"
    for i, night in enumerate(AS_OF_NIGHTS):
        simulate_night(raw / night, camera="sbig", size=128, seed=10 + i, n_bias=3, n_dark=2,
                       n_flat=2, n_science=1, filters=("rp",), dayobs=night)  # fmt: skip
    biases = [p for p in (raw / "20261120").rglob("*.fits*")
              if fits.getheader(p).get("OBSTYPE") == "BIAS"]  # fmt: skip
    assert biases
    for path in biases:
        path.unlink()
    # the later night is processed first (as it came in), so its bias master exists already
    run("ingest", str(raw / "20261121"), cwd=tmp_path)
    run("worker", "--until-idle", "--quiet-time", "0", cwd=tmp_path)

    span = ("--since", AS_OF_NIGHTS[0], "--until", AS_OF_NIGHTS[-1])
    real = _json("backfill", *span, "--raw-dir", str(raw), "--run", cwd=tmp_path)
    assert real["worker"]["failed"] == 0 and not real["worker"]["errors"]
    with sqlite3.connect(tmp_path / "pylcogt.db") as db:
        query = "SELECT id, dayobs FROM master_calibrations WHERE obstype = 'BIAS'"
        bias_night = dict(db.execute(query).fetchall())
        assert sorted(d[:10] for d in bias_night.values()) == ["2026-11-19", "2026-11-21"]
        rows = db.execute(
            "SELECT f.filename, f.obstype, f.state, f.calibration_cutoff, "
            "coalesce(rm.master_id, mi.bias_master_id) FROM raw_frames f "
            "LEFT JOIN reductions r ON r.frame_id = f.id AND r.status = 'current' "
            "LEFT JOIN reduction_masters rm ON rm.reduction_id = r.id AND rm.role = 'bias' "
            "LEFT JOIN master_inputs mi ON mi.frame_id = f.id AND mi.bias_master_id IS NOT NULL "
            "WHERE f.dayobs LIKE '2026-11-20%'"
        ).fetchall()
        later = db.execute("SELECT count(*) FROM raw_frames WHERE dayobs LIKE '2026-11-21%' "
                           "AND calibration_cutoff IS NOT NULL").fetchone()[0]  # fmt: skip
    assert {r[1] for r in rows} == {"DARK", "SKYFLAT", "EXPOSE"}
    for filename, _obstype, state, cutoff, master_id in rows:
        assert state == "done", filename
        assert cutoff is not None and cutoff.startswith("2026-11-21"), (filename, cutoff)
        assert master_id is not None and bias_night[master_id][:10] == "2026-11-19", filename
    assert later == 0, "frames ingested and done before the backfill are left as they were"
