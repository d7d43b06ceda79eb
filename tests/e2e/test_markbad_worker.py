"""mark-bad end to end, as an operator does it: a night reduced by `pylcogt worker`, its master
bias marked bad with `pylcogt calibrations mark-bad`, the worker run again; the dependants are
rebuilt or re-reduced with the next best master and `pylcogt provenance` shows the new links.

Two nights of one SBIG camera: the previous night (20261119) contributes only its biases, so that
its master bias is the next best one for 20261120 once that night's own bias is marked bad.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pylcogt.simulate import simulate_night

from .test_cli import run

NIGHT, PREVIOUS = "20261120", "20261119"
FAST = ["--quiet-time", "0", "--poll", "0.1"]


def _json(*args: str, cwd: Path):
    return json.loads(run(*args, "--json", cwd=cwd).stdout)


def _links(target: str, config: list[str], cwd: Path) -> dict[str, int]:
    """{role: master id} that `pylcogt provenance` records for a frame or product."""
    p = _json("provenance", target, *config, cwd=cwd)
    return {used["role"]: used["master"]["id"] for used in p["masters"]}


@pytest.mark.slow
def test_mark_bad_bias_rebuilds_dependants_with_the_next_best_master(
    db_url: str, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    for day, seed in ((NIGHT, 1), (PREVIOUS, 2)):
        simulate_night(raw / day, camera="sbig", size=128, n_bias=3, n_dark=2, n_flat=2,
                       n_science=2, dayobs=day, seed=seed)  # fmt: skip
    config = ["--database-url", db_url, "--data-dir", str(tmp_path / "data")]
    run("db", "upgrade", *config, cwd=tmp_path)
    previous_biases = sorted(str(p) for p in (raw / PREVIOUS).glob("*-b00.fits"))
    ingested = _json("ingest", str(raw / NIGHT), *previous_biases, *config, cwd=tmp_path)
    assert ingested["summary"]["new"] == 22 + 6

    # --- the night, reduced with its own masters -----------------------------------------
    first = _json("worker", "--until-idle", *FAST, *config, cwd=tmp_path)
    assert first["errors"] == [] and first["registry"] == {"done": 28}
    masters = {(m["type"], m["dayobs"], m["filter"]): m for m in
               _json("calibrations", "list", *config, cwd=tmp_path)}  # fmt: skip
    assert len(masters) == 6
    bad_bias = masters["BIAS", "2026-11-20", ""]["id"]
    next_bias = masters["BIAS", "2026-11-19", ""]["id"]
    old = {
        "dark": masters["DARK", "2026-11-20", ""]["id"],
        "V": masters["SKYFLAT", "2026-11-20", "V"]["id"],
        "rp": masters["SKYFLAT", "2026-11-20", "rp"]["id"],
        "bpm": masters["BPM", "2026-11-20", ""]["id"],
    }
    frames = _json("frames", "list", *config, cwd=tmp_path)
    science = [f for f in frames if f["obstype"] == "EXPOSE"]
    assert len(science) == 4
    for f in science:
        assert _links(str(f["id"]), config, tmp_path) == {
            "bias": bad_bias, "dark": old["dark"], "flat": old[f["filter"]], "bpm": old["bpm"]
        }  # fmt: skip

    # --- mark the night's bias bad ---------------------------------------------------------
    plan = _json("calibrations", "mark-bad", str(bad_bias), "--reason", "test", *config,
                 cwd=tmp_path)  # fmt: skip
    assert not plan["dry_run"] and not plan["already_bad"]
    after_mark = _json("frames", "list", *config, cwd=tmp_path)
    requeued = {f["id"] for f in after_mark if f["state"] == "pending"}
    expected = {f["id"] for f in frames if f["obstype"] in ("DARK", "SKYFLAT", "EXPOSE")
                and f["dayobs"] == "2026-11-20"}  # fmt: skip
    assert requeued == expected, "darks, flats and science of the night re-queued"

    # --- the worker rebuilds and re-reduces with the next best bias -------------------------
    second = _json("worker", "--until-idle", *FAST, *config, cwd=tmp_path)
    assert second["errors"] == [] and second["failed"] == 0
    assert second["registry"] == {"done": 28}
    assert second["processed"] == len(expected) and second["reduced"] == len(science)
    listed = _json("calibrations", "list", *config, cwd=tmp_path)
    bad = {m["id"] for m in listed if m["is_bad"]}
    assert bad == {bad_bias, *old.values()}, "the bias and everything made from it marked bad"
    good = {(m["type"], m["dayobs"], m["filter"]): m["id"] for m in listed if not m["is_bad"]}
    new = {
        "dark": good["DARK", "2026-11-20", ""],
        "V": good["SKYFLAT", "2026-11-20", "V"],
        "rp": good["SKYFLAT", "2026-11-20", "rp"],
        "bpm": good["BPM", "2026-11-20", ""],
    }
    assert not set(new.values()) & set(old.values()), "dark, flats and mask rebuilt as new masters"
    assert sorted(m["type"] for m in second["masters"]) == ["BPM", "DARK", "SKYFLAT", "SKYFLAT"]
    assert good["BIAS", "2026-11-19", ""] == next_bias
    assert ("BIAS", "2026-11-20", "") not in good, "the bad bias is not rebuilt from its frames"
    # the night's bad-pixel mask, derived from the bad dark and flats, is derived again

    # the rebuilt masters' inputs were prepared with the next best bias (and the new dark)
    dark = next(f for f in frames if f["obstype"] == "DARK")
    flat = next(f for f in frames if f["obstype"] == "SKYFLAT")
    assert _links(str(dark["id"]), config, tmp_path) == {"bias": next_bias}
    assert _links(str(flat["id"]), config, tmp_path) == {"bias": next_bias, "dark": new["dark"]}
    for key in ("dark", "V", "rp"):
        p = _json("provenance", f"master:{new[key]}", *config, cwd=tmp_path)
        assert {(u["role"], u["master"]["id"]) for u in p["prepared_with"]} <= {
            ("bias", next_bias), ("dark", new["dark"])
        }  # fmt: skip
        assert ("bias", next_bias) in {(u["role"], u["master"]["id"]) for u in p["prepared_with"]}

    # every science product re-reduced: provenance by product shows the new links only
    done = {f["id"]: f for f in _json("frames", "list", *config, cwd=tmp_path)}
    for f in science:
        target = done[f["id"]]["product_path"]
        assert target and Path(target).is_file()
        links = _links(target, config, tmp_path)
        assert links["bias"] == next_bias and links["dark"] == new["dark"]
        assert links["flat"] == new[f["filter"]]
        assert links["bpm"] == new["bpm"], "science waits for the night's new bad-pixel mask"
        assert not set(links.values()) & bad, f"frame {f['id']} still uses a bad master"
        text = run("provenance", target, *config, cwd=tmp_path).stdout
        assert f"bias  master {next_bias}  BIAS" in text
        assert f"master {bad_bias}  " not in text  # not among the masters used now
        # the current reduction says why the frame was redone
        assert f"reduced with master {bad_bias} (BIAS" in text and "marked bad: test" in text

    assert _json("worker", "--until-idle", *FAST, *config, cwd=tmp_path)["processed"] == 0
