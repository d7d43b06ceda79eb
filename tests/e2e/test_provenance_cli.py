"""Provenance and mark-bad through the CLI on a small simulated Sinistro night: masters built with
`stack`, science frames reduced with `reduce`, then `provenance` and `calibrations mark-bad`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_cli import run

FILTERS = ("V", "rp")


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("provenance-night")
    raw = work / "raw"
    run("simulate", str(raw), "--size", "256", "--n-bias", "3", "--n-dark", "2", "--n-flat", "2",
        "--n-science", "1", "--filters", ",".join(FILTERS), "-q", cwd=work)  # fmt: skip
    run("ingest", str(raw), "-q", cwd=work)
    instrument = json.loads((raw / "truth.json").read_text())["instrument"]
    masters = {}
    for kind in ("bias", "dark", "skyflat", "bpm"):
        out = run("stack", "--instrument", instrument, "--night", "20261128", "--type", kind,
                  "--json", "-q", cwd=work)  # fmt: skip
        masters[kind] = {m["filter"]: m["master_id"] for m in json.loads(out.stdout)}
    science = sorted(str(p) for p in raw.glob("*-e00.fits"))
    reduced = json.loads(run("reduce", *science, "--json", "-q", cwd=work).stdout)
    assert [r["state"] for r in reduced] == ["done"] * len(FILTERS)
    return {"work": work, "masters": masters, "reduced": reduced, "instrument": instrument}


def _json(night: dict, *args: str):
    return json.loads(run(*args, "--json", cwd=night["work"]).stdout)


def _states(night: dict) -> dict[str, str]:
    return {f["path"]: f["state"] for f in _json(night, "frames", "list")}


def _tree(node: dict) -> list[dict]:
    """Every node of a mark-bad tree."""
    return [node] + [n for child in node["dependents"] for n in _tree(child)]


def test_provenance_of_a_product_and_the_dry_run_tree(night: dict) -> None:
    bias, dark = night["masters"]["bias"][""], night["masters"]["dark"][""]
    flats, bpm = night["masters"]["skyflat"], night["masters"]["bpm"][""]
    entry = night["reduced"][0]
    p = _json(night, "provenance", entry["product"])
    assert p["kind"] == "frame" and p["frame"]["path"] == entry["path"]
    used = {u["role"]: u for u in p["masters"]}
    assert {role: u["master"]["id"] for role, u in used.items()} == {
        role: m["id"] for role, m in entry["masters"].items()
    }
    assert used["bias"]["master"]["id"] == bias and len(used["bias"]["inputs"]) == 6
    assert all(f["obstype"] == "BIAS" for f in used["bias"]["inputs"])
    assert [(u["role"], u["master"]["id"]) for u in used["dark"]["prepared_with"]] == [
        ("bias", bias)
    ]
    assert used["flat"]["master"]["filter"] == p["frame"]["filter"]
    assert used["flat"]["master"]["effective_time"] and used["flat"]["master"]["path"]

    before = _states(night)
    plan = _json(night, "calibrations", "mark-bad", str(bias), "--reason", "light leak",
                 "--dry-run")  # fmt: skip
    assert plan["dry_run"] and not plan["applied"]
    assert set(plan["masters"]) == {bias, dark, bpm, *flats.values()}
    nodes = {n["master"]["id"]: n for n in _tree(plan["root"])}
    assert set(nodes) == set(plan["masters"])
    assert len(nodes[dark]["rebuild_inputs"]) == 4
    assert all(len(nodes[f]["rebuild_inputs"]) == 4 for f in flats.values())
    redone = {u["frame"]["path"] for n in nodes.values() for u in n["frames"]}
    assert redone == {r["path"] for r in night["reduced"]}
    assert len(plan["frames"]) == 4 + 4 * len(FILTERS) + len(night["reduced"])
    assert _states(night) == before  # nothing changed
    listed = _json(night, "calibrations", "list", "--instrument", night["instrument"])
    assert not any(m["is_bad"] for m in listed)


def test_mark_bad_requeues_and_provenance_of_the_master_shows_its_frames(night: dict) -> None:
    bias = night["masters"]["bias"][""]
    plan = _json(night, "calibrations", "mark-bad", str(bias), "--reason", "light leak")
    assert plan["applied"] and plan["root"]["reason"].endswith(" light leak")
    states = {f["id"]: f for f in _json(night, "frames", "list")}
    for fid in plan["frames"]:
        assert states[fid]["state"] == "pending" and "re-queued" in states[fid]["error"]
    science = {r["path"] for r in night["reduced"]}
    for f in states.values():
        expected = "done" if f["obstype"] == "BIAS" else "pending"
        assert f["state"] == expected, f
        if f["path"] in science:  # the product is kept until the worker replaces it
            assert f["product_path"] and Path(f["product_path"]).is_file()
    listed = _json(night, "calibrations", "list")
    assert {m["id"] for m in listed if m["is_bad"]} == set(plan["masters"])
    assert all(m["is_bad"] for m in listed)  # the whole night was made with that bias

    master = _json(night, "provenance", f"master:{bias}")
    assert master["kind"] == "master" and master["master"]["is_bad"]
    assert {u["frame"]["path"] for u in master["reduced_frames"]} == science
    assert {u["frame"]["product_path"] for u in master["reduced_frames"]} == {
        r["product"] for r in night["reduced"]
    }
    assert {m["id"] for m in master["derived_masters"]} == set(plan["masters"]) - {bias}
    assert len(master["inputs"]) == 6

    again = run("calibrations", "mark-bad", str(bias), "--reason", "again", cwd=night["work"])
    assert "already bad" in again.stdout
    good = run("calibrations", "mark-good", str(bias), cwd=night["work"])
    assert "marked good" in good.stdout and "this master only" in good.stdout
    flats = _json(night, "calibrations", "list", "--type", "skyflat", "--filter", "rp")
    assert len(flats) == 1 and flats[0]["is_bad"]
    missing = run("calibrations", "mark-bad", "999", "--reason", "x", cwd=night["work"],
                  check=False)  # fmt: skip
    assert missing.returncode == 2 and "no master calibration with id 999" in missing.stderr
