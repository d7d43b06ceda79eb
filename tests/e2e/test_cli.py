"""The `pylcogt` command end to end, as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.frame import PixelFlag

from ..astrometry_stub import STDERR_LAST_LINE, stub_astrometry
from ..envs import clean_env
from ..fitsmaker import write_frame

PYLCOGT = [sys.executable, "-m", "pylcogt"]


def run(
    *args: str, cwd: Path, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    full_env = clean_env()
    full_env.update(env or {})
    proc = subprocess.run(
        [*PYLCOGT, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"pylcogt {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Path:
    """A small simulated Sinistro night, written once by the CLI."""
    out = tmp_path_factory.mktemp("night")
    run(
        "simulate",
        str(out / "raw"),
        "--size",
        "256",
        "--n-bias",
        "2",
        "--n-dark",
        "1",
        "--n-flat",
        "1",
        "--n-science",
        "1",
        cwd=out,
    )
    return out / "raw"


def test_help_documents_configuration(tmp_path: Path) -> None:
    out = run("--help", cwd=tmp_path).stdout
    for text in (
        "PYLCOGT_DATABASE_URL",
        "PYLCOGT_DATA_DIR",
        "--database-url",
        "--data-dir",
        "ingest",
        "simulate",
        "demo",
        "frames",
        "instruments",
        "db",
    ):
        assert text in out
    ingest_help = run("ingest", "--help", cwd=tmp_path).stdout
    assert "--json" in ingest_help and "rejected" in ingest_help


def test_simulated_night_ingests_then_is_unchanged(night: Path, tmp_path: Path) -> None:
    files = sorted(p.name for p in night.glob("*.fits"))
    assert len(files) == 2 * 2 + 2 * 1 + 2 * 2 * 1 + 2 * 1  # bias, dark, flats, science
    first = json.loads(run("ingest", str(night), "--json", cwd=tmp_path).stdout)
    assert first["summary"]["new"] == len(files)
    assert first["summary"]["rejected"] == 0
    assert (tmp_path / "pylcogt.db").exists()  # the embedded default, in the current directory
    second = json.loads(run("ingest", str(night), "--json", cwd=tmp_path).stdout)
    assert second["summary"] == {
        "new": 0,
        "unchanged": len(files),
        "updated": 0,
        "rejected": 0,
        "ignored": first["summary"]["ignored"],
    }

    rows = json.loads(run("frames", "list", "--json", cwd=tmp_path).stdout)
    assert len(rows) == len(files)
    required = {
        "id",
        "path",
        "obstype",
        "instrument",
        "site",
        "dateobs",
        "dayobs",
        "filter",
        "binning",
        "exptime",
        "state",
        "error",
        "product_path",
    }
    assert all(required <= set(r) for r in rows)
    assert {r["obstype"] for r in rows} == {"BIAS", "DARK", "SKYFLAT", "EXPOSE"}
    assert {r["state"] for r in rows} == {"pending"}
    biases = json.loads(run("frames", "list", "--obstype", "BIAS", "--json", cwd=tmp_path).stdout)
    assert len(biases) == 4
    instruments = json.loads(run("instruments", "list", "--json", cwd=tmp_path).stdout)
    assert len(instruments) == 1 and instruments[0]["family"] == "sinistro"
    assert instruments[0]["n_amplifiers"] == 4 and instruments[0]["n_frames"] == len(files)
    assert (instruments[0]["nx"], instruments[0]["ny"]) == (256, 256)  # DETSIZE of the small night


def test_mixed_directory_reports_and_records_bad_files(night: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    good = sorted(night.glob("*.fits"))[:3]
    for src in good:
        (mixed / src.name).write_bytes(src.read_bytes())
    (mixed / "truncated-b00.fits").write_bytes(good[0].read_bytes()[:50000])
    (mixed / "text-b00.fits").write_text("hello")
    write_frame(mixed / "guide-g00.fits", OBSTYPE="GUIDE")
    write_frame(mixed / "nokey-b00.fits", drop=("SITEID",))
    db = f"sqlite:///{tmp_path / 'reg.db'}"

    proc = run("ingest", str(mixed), "--database-url", db, cwd=tmp_path)
    assert "3 new, 0 unchanged, 0 updated, 4 rejected" in proc.stdout
    for name, why in [
        ("truncated-b00.fits", "truncated"),
        ("text-b00.fits", "not a FITS file"),
        ("guide-g00.fits", "OBSTYPE 'GUIDE'"),
        ("nokey-b00.fits", "SITEID"),
    ]:
        line = [ln for ln in proc.stdout.splitlines() if name in ln]
        assert line and why in line[0], (name, proc.stdout)

    rejected = json.loads(
        run(
            "frames", "list", "--state", "rejected", "--json", "--database-url", db, cwd=tmp_path
        ).stdout
    )
    assert sorted(Path(r["path"]).name for r in rejected) == sorted(
        ["truncated-b00.fits", "text-b00.fits", "guide-g00.fits", "nokey-b00.fits"]
    )
    assert all(r["error"] for r in rejected)

    again = run("ingest", str(mixed), "--database-url", db, cwd=tmp_path)
    assert "0 new, 7 unchanged, 0 updated, 0 rejected" in again.stdout


def test_json_output_is_pure_json_and_env_configures(night: Path, tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "r.db"
    db.parent.mkdir()
    env = {"PYLCOGT_DATABASE_URL": f"sqlite:///{db}"}
    proc = run("ingest", str(sorted(night.glob("*.fits"))[0]), "--json", cwd=tmp_path, env=env)
    data = json.loads(proc.stdout)  # nothing but JSON on stdout
    assert data["summary"]["new"] == 1
    assert db.exists() and not (tmp_path / "pylcogt.db").exists()
    current = json.loads(run("db", "current", "--json", cwd=tmp_path, env=env).stdout)
    assert current["up_to_date"] is True


def test_password_is_never_printed(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://alice:s3cretpw@127.0.0.1:1/nowhere?connect_timeout=2"
    proc = run("frames", "list", "--database-url", url, cwd=tmp_path, check=False)
    assert proc.returncode == 3
    assert "s3cretpw" not in proc.stdout + proc.stderr
    assert "alice:***@127.0.0.1" in proc.stderr


def test_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    proc = run("ingest", str(tmp_path / "nope"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "no such file or directory" in proc.stderr


def test_out_of_date_database_is_refused(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'old.db'}"
    run("db", "upgrade", "--database-url", db, cwd=tmp_path)
    run("db", "downgrade", "base", "--database-url", db, cwd=tmp_path)
    # an empty database is created on demand; one with foreign tables at no revision is refused
    import sqlite3

    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute("CREATE TABLE something (id INTEGER)")
    proc = run("frames", "list", "--database-url", db, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "pylcogt db upgrade" in proc.stderr


def test_demo_runs_on_embedded_default_and_is_idempotent(tmp_path: Path) -> None:
    """The README's first command: Sinistro and SBIG nights simulated, ingested, reduced."""
    args = ("demo", "--size", "256", "--n-bias", "3", "--n-dark", "2", "--n-flat", "2",
            "--n-science", "1", "--json")  # fmt: skip
    first = json.loads(run(*args, cwd=tmp_path).stdout)
    n_frames = sum(c["frames"] for c in first["cameras"])
    assert {c["camera"] for c in first["cameras"]} == {"sinistro", "sbig"}
    assert first["ingest"]["new"] == n_frames > 0 and first["ingest"]["rejected"] == 0
    assert (tmp_path / "pylcogt.db").exists()
    assert first["states"] == {"done": n_frames} and first["failures"] == []
    # per camera: bias, dark, a flat per filter (rp, V) and a bad-pixel mask
    assert sorted(m["type"] for m in first["masters"]) == sorted(
        ["BIAS", "DARK", "SKYFLAT", "SKYFLAT", "BPM"] * 2
    )
    assert len(first["reduced"]) == 4 and all(Path(r["product"]).exists() for r in first["reduced"])
    # the science chain's summary: sources found; these small fields cannot be solved with the
    # installed index files, and the reason says which to install
    for r in first["reduced"]:
        assert r["science"]["n_sources"] > 0 and r["science"]["wcs"] == "failed"
        assert "4100" in r["science"]["wcs_reason"] and r["science"]["photometry"] == "no WCS"
    roles = {m["role"] for m in first["provenance"]["masters"]}
    assert roles == {"bias", "dark", "flat", "bpm"}
    second = json.loads(run(*args, cwd=tmp_path).stdout)
    assert second["ingest"]["unchanged"] == n_frames and second["ingest"]["new"] == 0
    assert second["worker"]["processed"] == 0 and second["worker"]["masters_built"] == 0


# --- bad input: exit 1 with the reason on one line, never a traceback ---------------------
def _lines(proc: subprocess.CompletedProcess, marker: str) -> list[str]:
    """The lines of stdout + stderr that hold ``marker``, after checking that neither holds a
    traceback."""
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if marker in line]


def _sci_image(path: Path, *, shape: tuple[int, ...] = (128, 128)) -> Path:
    """A calibrated image in an extension named SCI, with no BPM (nor ERR) extension."""
    rng = np.random.default_rng(5)
    data = rng.normal(100.0, 5.0, shape).astype(np.float32)
    if len(shape) == 2:
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        for x0, y0 in rng.uniform(15, shape[0] - 15, (12, 2)):
            data += 3000.0 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5**2))
        data[3, 4] = np.nan  # not finite: flagged BAD, as in any foreign image
    header = fits.Header([("RA", 150.0), ("DEC", 20.0), ("PIXSCALE", 6.0), ("EXPTIME", 10.0),
                          ("BUNIT", "electron"), ("RDNOISE", 5.0)])  # fmt: skip
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=header, name="SCI")]).writeto(path)
    return path


def test_solve_reads_a_sci_image_without_bpm_as_all_good(tmp_path: Path) -> None:
    image = _sci_image(tmp_path / "image.fits")
    env = stub_astrometry(tmp_path / "stub")  # a solve-field that exits 1: the field fails
    proc = run("solve", str(image), "--json", cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 1, proc.stderr  # not solved: a failed check, not a crash
    assert not _lines(proc, "not read:")
    (entry,) = json.loads(proc.stdout)
    assert entry["status"] == "failed" and entry["n_sources"] >= 10
    assert entry["reason"] == f"solve-field exited with status 1: {STDERR_LAST_LINE}"
    bpm = fits.getdata(entry["output"], "BPM")
    bad = (bpm & PixelFlag.BAD) != 0  # the NaN pixel only (cosmic-ray flags may be set too)
    assert bpm.shape == (128, 128) and bad.sum() == 1 and bad[3, 4]


def test_solve_on_unusable_files_exits_1_with_one_line_each(tmp_path: Path) -> None:
    good = _sci_image(tmp_path / "image.fits")
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(good.read_bytes()[:9000])
    garbled = tmp_path / "garbled.fits"  # a header card that cannot be parsed
    raw = bytearray(good.read_bytes())
    at = raw.index(b"NAXIS1", 2880)
    raw[at : at + 80] = b"NAXIS1  = garbage".ljust(80)
    garbled.write_bytes(bytes(raw))
    cube = _sci_image(tmp_path / "cube.fits", shape=(3, 16, 16))
    env = stub_astrometry(tmp_path / "stub")
    files = (truncated, garbled, cube)
    proc = run("solve", *map(str, files), cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 1
    lines = _lines(proc, "not read:")
    expected = [f"[{n}/3] {path.name}" for n, path in enumerate(files, start=1)]
    assert [line.split(":")[0] for line in lines] == expected
    assert "truncated" in lines[0] and "NAXIS1" in lines[1] and "2-D image" in lines[2]


def test_reduce_and_stack_on_corrupt_files_exit_1_with_one_line(night, tmp_path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for src in night.glob("*.fits"):
        (raw / src.name).write_bytes(src.read_bytes())
    run("ingest", str(raw), "-q", cwd=tmp_path)
    # every bias file truncated after it was registered: no bias master can be built
    biases = sorted(raw.glob("*-b00.fits"))
    for path in biases:
        path.write_bytes(path.read_bytes()[:20000])
    proc = run("stack", "--type", "bias", "--instrument", "fa15", "--night", "20261128",
               cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 1
    assert len(_lines(proc, "not built:")) == 1
    # a science file truncated before it is registered: rejected, with the reason
    science = sorted(raw.glob("*-e00.fits"))[0]
    truncated = tmp_path / "cut-e00.fits"
    truncated.write_bytes(science.read_bytes()[:30000])
    proc = run("reduce", str(truncated), cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert _lines(proc, "truncated")  # the log says so too; the output has it on one line:
    (line,) = [ln for ln in proc.stdout.splitlines() if "truncated" in ln]
    assert line.strip().startswith("cut-e00.fits is truncated") and line.endswith("archive")
    # a header card that cannot be parsed
    garbled = tmp_path / "garbled-e00.fits"
    data = bytearray(science.read_bytes())
    at = data.index(b"NAXIS1", 2880)
    data[at : at + 80] = b"NAXIS1  = garbage".ljust(80)
    garbled.write_bytes(bytes(data))
    proc = run("reduce", str(garbled), cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert len(_lines(proc, "NAXIS1")) == 1
