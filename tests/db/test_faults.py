"""Fault isolation: a night with one bad thing in it, run by the worker on both databases.

Each test injects one fault into a small simulated night (SBIG, 128x128 pixels binned), runs it
the way the archive does (biases and darks first, then flats and science), and asserts what
still completes: only the bad frame fails, with a one-line reason a person can act on, every
other frame of the night is done, and no ``error`` column holds a traceback.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.io import fits

from pylcogt import provenance
from pylcogt import reduce as reduce_module
from pylcogt.calibrations import build as build_module
from pylcogt.cli import main as cli_main
from pylcogt.config import load_settings
from pylcogt.db.models import FrameState, MasterCalibration, MasterInput, RawFrame
from pylcogt.db.session import get_sessionmaker
from pylcogt.simulate import simulate_night

from .test_worker import NIGHT, Env, _env

N_BIAS, N_DARK, N_FLAT, N_SCIENCE = 5, 3, 3, 2  # per set: afternoon + morning, evening + morning
KIND = {"BIAS": "b", "DARK": "d", "SKYFLAT": "f", "EXPOSE": "e"}


@pytest.fixture(scope="module")
def fault_night(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "night"
    simulate_night(out, camera="sbig", size=256, n_bias=N_BIAS, n_dark=N_DARK, n_flat=N_FLAT,
                   n_science=N_SCIENCE, filters=("rp",), dayobs=NIGHT, seed=11)  # fmt: skip
    return out


@pytest.fixture
def night(db_url: str, tmp_path: Path, fault_night: Path) -> Iterator[Env]:
    """The night on one registry, with a private copy of its raw files (faults are added)."""
    raw = tmp_path / "raw"
    shutil.copytree(fault_night, raw)
    yield _env(db_url, tmp_path, raw)


def derive(src: Path, framenum: int, *, obstype: str | None = None,
           data: Callable[[np.ndarray], np.ndarray] | None = None, **cards) -> Path:  # fmt: skip
    """A new raw exposure next to ``src``: its header and pixels (``data(pixels)`` if given),
    frame number ``framenum`` (file name, FRAMENUM, ORIGNAME), OBSTYPE and other ``cards``."""
    with fits.open(src) as hdul:
        header = hdul[0].header.copy()
        pixels = np.asarray(hdul[0].data, dtype=np.float64)
    obstype = obstype or header["OBSTYPE"]
    name = re.sub(r"-\d{4}-[a-z]00\.fits$", f"-{framenum:04d}-{KIND[obstype]}00.fits", src.name)
    header["OBSTYPE"] = obstype
    header["FRAMENUM"] = framenum
    header["ORIGNAME"] = name
    for key, value in cards.items():
        header[key.replace("_", "-")] = value
    if data is not None:
        pixels = data(pixels)
    out = src.parent / name
    hdu = fits.PrimaryHDU(np.clip(np.rint(pixels), 0, 65535).astype(np.uint16), header=header)
    hdu.writeto(out)
    return out


def files(env: Env, obstype: str) -> list[Path]:
    return sorted(env.raw.glob(f"*-{KIND[obstype]}00.fits"))


def run_night(env: Env, **options) -> list[dict]:
    """Biases and darks first, then flats and science (two waves, the worker between them)."""
    env.ingest("*-b00.fits", "*-d00.fits")
    first = env.run(**options)
    env.ingest("*-f00.fits", "*-e00.fits")
    return [first, env.run(**options)]


def check_isolated(env: Env, bad: dict[str, tuple[FrameState, str]]) -> dict[str, RawFrame]:
    """Only the frames of ``bad`` (file name -> state, pattern of its reason) are not done; each
    reason is one line; no error anywhere holds a traceback. Returns the frames by name."""
    frames = {f.filename: f for f in env.frames()}
    for name, (state, pattern) in bad.items():
        frame = frames[name]
        assert frame.state is state, (name, frame.state, frame.last_error)
        assert re.search(pattern, frame.last_error or ""), (name, frame.last_error)
        assert "\n" not in frame.last_error, frame.last_error
    rest = {n: (f.state, f.last_error) for n, f in frames.items() if n not in bad}
    assert {state for state, _ in rest.values()} == {FrameState.DONE}, rest
    assert_no_traceback(env)
    return frames


def assert_no_traceback(env: Env) -> None:
    with env.engine.connect() as conn:
        errors = [*conn.execute(sa.text("SELECT last_error FROM raw_frames")).scalars(),
                  *conn.execute(sa.text("SELECT last_error FROM master_jobs")).scalars()]
    assert not [e for e in errors if e and ("Traceback" in e or "\n" in e)], errors


def master(env: Env, obstype: str) -> MasterCalibration:
    (row,) = [m for m in env.masters() if m.obstype.value == obstype and m.is_current]
    return row


def n_frames(env: Env, obstype: str) -> int:
    return len(files(env, obstype))


# --- calibration frames no master can use --------------------------------------------------
@pytest.mark.parametrize("arrives", ["before any bias", "after the bias master"])
def test_a_shutter_failure_flat_is_left_out_and_its_group_built(night: Env, arrives: str) -> None:
    """A SKYFLAT whose pixels are a bias frame's (the shutter never opened). Arriving after the
    bias master it is rejected when checked (the camera has no overscan: the level is measured
    above the bias master's BIASLVL); checked before there is a bias master (an instrument's
    first frames), the master build leaves it out once its bias is subtracted."""
    bias, flat = files(night, "BIAS")[0], files(night, "SKYFLAT")[0]
    shutter = derive(flat, 90, data=lambda _: fits.getdata(bias).astype(np.float64))
    if arrives == "before any bias":
        night.ingest(shutter.name)
        night.run()
    run_night(night)
    if arrives == "before any bias":
        expected = (FrameState.FAILED, r"flat level -?\d.* e- above the bias .* shutter failure")
    else:
        expected = (FrameState.REJECTED, r"flat level -?\d.* e- above the bias in the central "
                                         r"region, below the 1000 e- .* shutter failure")
    check_isolated(night, {shutter.name: expected})
    assert master(night, "SKYFLAT").n_inputs == n_frames(night, "SKYFLAT") - 1


def test_a_saturated_flat_is_rejected_when_checked(night: Env) -> None:
    flat = files(night, "SKYFLAT")[1]

    def saturate(pixels: np.ndarray) -> np.ndarray:
        out = pixels.copy()
        out[: out.shape[0] // 3] = 46000.0  # SATURATE: a third of the rows at the limit
        return out

    bright = derive(flat, 91, data=saturate)
    run_night(night)
    check_isolated(night, {bright.name: (FrameState.REJECTED, r"saturated flat: 3\d\.\d% of "
                                                              r"the pixels saturated")})
    assert master(night, "SKYFLAT").n_inputs == n_frames(night, "SKYFLAT") - 1


@pytest.mark.parametrize("obstype", ["BIAS", "DARK"])
def test_a_bias_or_dark_with_a_wild_level_is_left_out(night: Env, obstype: str) -> None:
    """300 ADU (420 e-) more than the night's others: a bias level jump, a light leak."""
    wild = derive(files(night, obstype)[1], 92, data=lambda p: p + 300.0)
    run_night(night)
    pattern = rf"{obstype.lower()} level .* e- is \+4\d\d(\.\d)? e- from the night's median"
    check_isolated(night, {wild.name: (FrameState.FAILED, pattern)})
    assert master(night, obstype).n_inputs == n_frames(night, obstype) - 1


def test_a_truncated_flat_arriving_late_changes_nothing(night: Env) -> None:
    run_night(night)
    before = [(m.id, m.checksum) for m in night.masters()]
    reductions = _count(night, "SELECT count(*) FROM reductions")
    late = derive(files(night, "SKYFLAT")[-1], 93)
    late.write_bytes(late.read_bytes()[:4000])  # cut off in transfer
    night.ingest(late.name)
    night.run()
    check_isolated(night, {late.name: (FrameState.REJECTED, r"truncated")})
    assert [(m.id, m.checksum) for m in night.masters()] == before
    assert _count(night, "SELECT count(*) FROM reductions") == reductions


def _count(env: Env, sql: str) -> int:
    with env.engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


# --- what the archive sends: hostile header values, one exposure several times ---------------
def test_hostile_header_values_cost_only_their_own_frame(night: Env) -> None:
    """Header values of any length are stored whole (a 40-character filter gets its own
    masters and reduced science on PostgreSQL too); a value no frame can be matched on (a
    200-character FILTER, control characters) is rejected at ingest with one line naming the
    keyword, and the rest of the night goes on."""
    long_filter = "rp-" + "x" * 37
    flats = [derive(f, 60 + i, FILTER=long_filter)
             for i, f in enumerate(files(night, "SKYFLAT")[:3])]  # fmt: skip
    science = derive(files(night, "EXPOSE")[0], 70, FILTER=long_filter,
                     OBJECT="NGC 1234 field with a very long name, " * 120)  # fmt: skip
    too_long = derive(files(night, "EXPOSE")[1], 71, FILTER="y" * 200)
    bell = derive(files(night, "EXPOSE")[1], 72)
    raw = bell.read_bytes()
    at = raw.index(b"OBJECT  = '") + 11
    bell.write_bytes(raw[:at] + b"\x07" + raw[at + 1:])  # a control character in the header
    run_night(night)
    check_isolated(night, {
        too_long.name: (FrameState.REJECTED, r"FILTER"),
        bell.name: (FrameState.REJECTED, r"OBJECT|control|not printable|ASCII"),
    })  # fmt: skip
    with get_sessionmaker(night.settings.database_url)() as session:
        made = session.scalars(sa.select(MasterCalibration).where(
            MasterCalibration.filter_name == long_filter)).all()  # fmt: skip
        frame = session.scalars(sa.select(RawFrame).where(
            RawFrame.filename == science.name)).one()  # fmt: skip
    assert [m.n_inputs for m in made] == [len(flats)]
    assert frame.object_name.startswith("NGC 1234") and len(frame.object_name) > 4000
    assert frame.product_path and Path(frame.product_path).is_file()


def test_one_exposure_sent_three_times_is_registered_and_reduced_once(night: Env) -> None:
    """A science exposure as a copy in a second directory, and a flat as ``.fits.fz`` beside its
    ``.fits``: the later files are rejected as duplicates naming the first; each exposure has one
    product; the night is done."""
    first = files(night, "EXPOSE")[0]
    again = night.raw / "resent" / first.name
    again.parent.mkdir()
    shutil.copy(first, again)
    flat = files(night, "SKYFLAT")[0]
    with fits.open(flat) as hdul:
        compressed = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
            hdul[0].data, header=hdul[0].header, compression_type="RICE_1")])  # fmt: skip
        compressed.writeto(flat.parent / (flat.name + ".fz"))
    run_night(night)
    night.ingest("resent/*.fits", "*.fits.fz")
    night.run()
    rows = {Path(f.path): f for f in night.frames()}  # by path: the copy has the same name
    for path in (again, flat.parent / (flat.name + ".fz")):
        frame = rows.pop(path)
        assert frame.state is FrameState.REJECTED, (path, frame.state)
        assert "duplicate of exposure" in frame.last_error and "\n" not in frame.last_error
    assert {f.state for f in rows.values()} == {FrameState.DONE}
    products = [f.product_path for f in rows.values() if f.obstype == "EXPOSE"]
    assert len(products) == len(set(products)) == n_frames(night, "EXPOSE")
    assert_no_traceback(night)


# --- an external tool fails on one frame ---------------------------------------------------
def test_solve_field_exiting_1_costs_the_frames_their_wcs_only(
    night: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """astrometry.net's solve-field exits 1 on every field (a stub first on PATH): each science
    frame is still reduced, its astrometry recorded as failed with the tool's reason; the
    worker never stops, and no frame fails."""
    import dataclasses

    from ..astrometry_stub import STDERR_LAST_LINE, stub_astrometry

    env = stub_astrometry(tmp_path / "stub")
    monkeypatch.setenv("PATH", env["PATH"])
    night.settings = dataclasses.replace(night.settings,
                                         index_dir=Path(env["PYLCOGT_INDEX_DIR"]))  # fmt: skip
    run_night(night)
    frames = check_isolated(night, {})
    science = [f for f in frames.values() if f.obstype == "EXPOSE"]
    calls = (tmp_path / "stub" / "solve-field.calls").read_text().splitlines()
    assert len(calls) == len(science) == n_frames(night, "EXPOSE")
    for frame in science:
        header = fits.getheader(frame.product_path, "SCI")
        assert header["ASTSTAT"] == "failed"
        assert "solve-field exited with status 1" in header["ASTREASN"]
        assert STDERR_LAST_LINE in header["ASTREASN"]


# --- a small observatory's night: fewer frames than the default minimum -------------------
def test_a_three_bias_night_completes_once_the_minimum_is_lowered(night: Env) -> None:
    for path in files(night, "BIAS")[3:]:
        path.unlink()
    run_night(night)
    frames = {f.filename: f for f in night.frames()}
    biases = [f for f in frames.values() if f.obstype == "BIAS"]
    assert len(biases) == 3 and {f.state for f in biases} == {FrameState.FAILED}
    why = biases[0].last_error
    assert "the night has 3 usable BIAS frame(s), at least 5 needed" in why, why
    assert "--min-inputs" in why and "\n" not in why
    darks = [f for f in frames.values() if f.obstype == "DARK"]
    assert {f.state for f in darks} == {FrameState.FAILED}
    assert "no master could be built from this group" in darks[0].last_error
    assert "BIAS" in darks[0].last_error
    science = [f for f in frames.values() if f.obstype == "EXPOSE"]
    assert {f.state for f in science} == {FrameState.WAITING_CALIBRATION}
    assert_no_traceback(night)

    # the operator lowers this camera's minimum and backfills the night
    url, data = night.settings.database_url, str(night.settings.data_dir)
    config = ["--database-url", url, "--data-dir", data]
    assert cli_main(["instruments", "set", "kb95", "--min-inputs", "BIAS=3", *config]) == 0
    assert cli_main(["backfill", "--since", NIGHT, "--until", NIGHT, "-q", *config]) == 0
    night.run()
    check_isolated(night, {})
    assert master(night, "BIAS").n_inputs == 3


def test_the_minimum_from_the_environment_applies_to_the_worker(
    night: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in files(night, "BIAS")[3:]:
        path.unlink()
    monkeypatch.setenv("PYLCOGT_MIN_INPUTS", "BIAS=3")
    night.settings = load_settings(night.settings.database_url, night.settings.data_dir)
    assert night.settings.min_inputs == (("BIAS", 3),)
    run_night(night)
    check_isolated(night, {})
    assert master(night, "BIAS").n_inputs == 3


def test_a_group_deferred_for_its_missing_master_is_built_when_the_master_arrives(
    db_url: str, tmp_path: Path
) -> None:
    """Tonight (a night still going on), a new camera's afternoon biases are too few for a
    master: the darks' group is deferred (no bias to prepare them with). When the morning
    biases make the bias master, the darks' master is built at once, not at the end of the
    night."""
    from .test_worker import _env as make_env

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    tonight = (now + dt.timedelta(hours=-70.7 / 15.0) - dt.timedelta(hours=12)).date()
    raw = tmp_path / "raw"
    simulate_night(raw, camera="sbig", size=128, n_bias=3, n_dark=3, n_flat=0, n_science=0,
                   filters=(), dayobs=tonight.strftime("%Y%m%d"), seed=5)  # fmt: skip
    env = make_env(db_url, tmp_path, raw)
    biases, darks = sorted(raw.glob("*-b00.fits")), sorted(raw.glob("*-d00.fits"))
    env.ingest(*[p.name for p in biases[:3]], *[p.name for p in darks])
    env.run()
    assert [m.obstype.value for m in env.masters()] == []
    with env.engine.connect() as conn:
        deferred = conn.execute(sa.text("SELECT status FROM master_jobs WHERE obstype = 'DARK'"))
        assert deferred.scalars().all() == ["not_enough"]
    env.ingest(*[p.name for p in biases[3:]])  # no dark arrives: only the bias master wakes it
    env.run()
    assert sorted(m.obstype.value for m in env.masters()) == ["BIAS", "BPM", "DARK"]


# --- mark-bad while a reduction or a build is in flight ------------------------------------
def mark_bad_on_first_call(monkeypatch: pytest.MonkeyPatch, env: Env, module, name: str,
                           master_id: int, reason: str) -> list:  # fmt: skip
    """Make ``module.name`` mark ``master_id`` bad (another transaction, as an operator would)
    the first time it is called, then do its work; returns the list of the marks made."""
    real, marked = getattr(module, name), []

    def mark_then_go_on(*args, **kwargs):
        if not marked:
            marked.append(provenance.mark_bad(env.settings.database_url, master_id,
                                              reason=reason))  # fmt: skip
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, mark_then_go_on)
    return marked


def test_mark_bad_during_a_reduction_is_seen_when_it_records(
    night: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bias master is marked bad after the first science frame chose it and before it
    recorded: nothing made with it is recorded; the frame goes back to the queue (and then
    waits: the night has no other bias master)."""
    night.ingest("*-b00.fits", "*-d00.fits", "*-f00.fits")
    night.run()
    bias_id = master(night, "BIAS").id
    marked = mark_bad_on_first_call(monkeypatch, night, reduce_module, "catalog_and_wcs",
                                    bias_id, "light leak found by an operator")  # fmt: skip
    night.ingest("*-e00.fits")
    night.run()
    assert marked
    with get_sessionmaker(night.settings.database_url)() as session:
        used = session.execute(sa.text("SELECT count(*) FROM reduction_masters rm JOIN "
                                       "reductions r ON r.id = rm.reduction_id WHERE "
                                       "rm.master_id = :m"), {"m": bias_id}).scalar_one()
        science = session.scalars(sa.select(RawFrame).where(RawFrame.obstype == "EXPOSE")).all()
    assert used == 0, "a reduction made with the bad master was recorded"
    assert {f.state for f in science} == {FrameState.WAITING_CALIBRATION}
    assert all("BIAS" in f.last_error and "\n" not in f.last_error for f in science)
    assert_no_traceback(night)


def test_mark_bad_during_a_master_build_is_seen_when_it_registers(
    night: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bias master is marked bad while the dark master is being stacked from frames
    prepared with it: the dark is not registered with it."""
    night.ingest("*-b00.fits")
    night.run()
    bias_id = master(night, "BIAS").id
    marked = mark_bad_on_first_call(monkeypatch, night, build_module, "stack_sources", bias_id,
                                    "bias structure changed")  # fmt: skip
    night.ingest("*-d00.fits")
    night.run(retry_base_s=0.05, retry_cap_s=0.05)
    assert marked
    with get_sessionmaker(night.settings.database_url)() as session:
        made_with_bad = session.scalars(
            sa.select(MasterInput.master_id).where(MasterInput.bias_master_id == bias_id)
        ).all()
        darks = session.scalars(sa.select(RawFrame).where(RawFrame.obstype == "DARK")).all()
    assert made_with_bad == [], "a master prepared with the bad bias was registered"
    assert {f.state for f in darks} == {FrameState.FAILED}
    assert all("no master could be built" in f.last_error and "BIAS" in f.last_error
               for f in darks)  # fmt: skip
    assert_no_traceback(night)


# --- a broken installation stops the service once ------------------------------------------
def test_a_configuration_error_stops_every_worker_process_once(night: Env, tmp_path: Path) -> None:
    """No index files where the settings say: the first science frame stops its worker
    process, which is not restarted (it would fail the same way at every frame); the others
    stop too, and the frame is given back, not failed."""
    import dataclasses

    from pylcogt.worker import WorkerConfig, run_workers

    empty = tmp_path / "no-index"
    empty.mkdir()
    night.settings = dataclasses.replace(night.settings, index_dir=empty)
    night.ingest("*.fits")
    config = WorkerConfig(until_idle=True, quiet_time_s=0.0, poll_s=0.05, lease_s=10.0,
                          restart_base_s=0.05)  # fmt: skip
    summary = run_workers(night.settings, config, processes=2)
    assert any("configuration error" in e and "index" in e for e in summary.errors), summary.errors
    restarted = [e for e in summary.errors if "restarted" in e]
    assert restarted == [], "a process stopped by a configuration error was restarted"
    science = [f for f in night.frames() if f.obstype == "EXPOSE"]
    assert {f.state for f in science} <= {FrameState.PENDING}, [f.state for f in science]
    assert all(f.attempts == 0 for f in science)
    assert_no_traceback(night)


def test_the_worker_command_checks_the_installation_before_claiming(
    night: Env, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    night.ingest("*.fits")
    config = ["--database-url", night.settings.database_url, "--data-dir",
              str(night.settings.data_dir), "--index-dir", str(tmp_path / "missing")]
    assert cli_main(["worker", "--until-idle", "--quiet-time", "0", *config]) == 2
    err = capsys.readouterr().err
    assert "index directory" in err and "does not exist" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert {f.state for f in night.frames()} == {FrameState.PENDING}, "nothing was claimed"


def test_no_module_formats_a_traceback_for_the_registry() -> None:
    """Tracebacks go to the log (``log.exception``) only: no pylcogt module formats one into a
    string, the way a traceback reached the ``error`` columns before."""
    import pylcogt

    root = Path(pylcogt.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if re.search(r"format_exc|format_exception|format_tb|print_exc",
                              p.read_text())]  # fmt: skip
    assert offenders == []
