"""`pylcogt ingest` on a directory with hostile files, as an operator runs it: every good file
is registered, each bad one has its one-line reason, conflicts are reported apart, no traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..fitsmaker import write_frame
from .test_cli import run


def test_ingest_reports_duplicates_conflicts_and_bad_values(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    exposure = {"FRAMENUM": 42, "DATE_OBS": "2026-11-28T21:00:00"}
    write_frame(raw / "a" / "x-b00.fits", **exposure)
    write_frame(raw / "b" / "x-b00.fits.fz", compress="fz", **exposure)
    write_frame(raw / "c" / "x-b00.fits", value=999, **exposure)  # other pixels
    write_frame(raw / "d" / "long-e00.fits", OBSTYPE="EXPOSE", EXPTIME=5.0, FILTER="f" * 5000)
    write_frame(raw / "e" / "nan-e00.fits", OBSTYPE="EXPOSE", EXPTIME="NaN", FILTER="rp")
    write_frame(raw / "f" / "y-b00.fits", FRAMENUM=43, DATE_OBS="2026-11-28T21:01:00")

    text = run("ingest", str(raw), "-q", cwd=tmp_path)
    assert "Traceback" not in text.stdout + text.stderr
    assert "ingested 6 files: 2 new, 0 unchanged, 0 updated, 4 rejected" in text.stdout
    assert "1 conflicts (same exposure key, different header facts or pixels)" in text.stdout
    def reason(path: Path) -> str:
        (line,) = [ln for ln in text.stdout.splitlines() if ln.startswith(f"rejected  {path}: ")]
        return line

    first = raw / "a" / "x-b00.fits"
    assert f"duplicate of exposure lsc/kb78/20261128/0042 already registered as {first}" in (
        reason(raw / "b" / "x-b00.fits.fz"))  # fmt: skip
    conflict = reason(raw / "c" / "x-b00.fits")
    assert "different pixels" in conflict and "an operator must decide which is right" in conflict
    assert "FILTER is 5000 characters" in reason(raw / "d" / "long-e00.fits")
    assert "EXPTIME = 'NaN' is not a finite number" in reason(raw / "e" / "nan-e00.fits")

    again = json.loads(run("ingest", str(raw), "--json", cwd=tmp_path).stdout)
    assert again["summary"]["unchanged"] == 6 and again["conflicts"] == []
    frames = json.loads(run("frames", "list", "--json", cwd=tmp_path).stdout)
    states = sorted((Path(f["path"]).parent.name, f["state"]) for f in frames)
    assert states == [("a", "pending"), ("b", "rejected"), ("c", "rejected"), ("d", "rejected"),
                      ("e", "rejected"), ("f", "pending")]  # fmt: skip
    assert not any("Traceback" in (f["error"] or "") for f in frames)
