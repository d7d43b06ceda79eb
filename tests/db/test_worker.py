"""The worker in this process on a tiny simulated night, on both databases: a night reduced once,
science waiting for its flats, corrupt files, retries and bugs, fencing, too few frames; plus
the pure scheduling rules."""

from __future__ import annotations

import datetime as dt
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from pylcogt import reduce as reduce_module
from pylcogt.calibrations.build import GroupKey, build_master
from pylcogt.config import Settings, load_settings
from pylcogt.db import queue
from pylcogt.db.migrate import ensure_schema
from pylcogt.db.models import (
    FrameState,
    MasterCalibration,
    MasterJob,
    MasterJobStatus,
    RawFrame,
    Reduction,
    ReductionMaster,
    ReductionStatus,
)
from pylcogt.db.session import dispose_engines, get_engine, get_sessionmaker
from pylcogt.errors import TransientError
from pylcogt.ingest import ingest_paths
from pylcogt.scheduling import backoff_delay, night_end, night_is_over, obstype_rank
from pylcogt.simulate import simulate_night
from pylcogt.worker import Worker, WorkerConfig

NIGHT = "20261120"
COUNTS = {"BIAS": 6, "DARK": 4, "SKYFLAT": 8, "EXPOSE": 4}  # n_bias=3, n_dark=2, n_flat=2 x 2


@pytest.fixture(autouse=True)
def _no_engines_left() -> Iterator[None]:
    yield
    dispose_engines()


# --- pure rules ---------------------------------------------------------------------------
def test_a_night_ends_at_local_noon_the_next_day() -> None:
    day = dt.date(2026, 11, 20)
    lsc = night_end(day, -70.8)  # Chile: local noon is 16:43 UTC
    assert lsc == dt.datetime(2026, 11, 21, 16, 43, 12)
    assert night_end(day, 149.07) == dt.datetime(2026, 11, 21, 2, 3, 43, 200000)  # coj
    assert night_end(day, 360 - 70.8) == lsc  # 0..360 east works too
    assert night_end(day, None) == dt.datetime(2026, 11, 22)  # unknown: the latest possible
    assert not night_is_over(day, -70.8, lsc - dt.timedelta(seconds=1))
    assert night_is_over(day, -70.8, lsc)
    with pytest.raises(ValueError, match="degrees east"):
        night_end(day, 400.0)


def test_order_and_backoff() -> None:
    ranks = [obstype_rank(t) for t in ("BIAS", "DARK", "SKYFLAT", "EXPOSE", "STANDARD", None)]
    assert ranks == [0, 1, 2, 3, 3, 3]
    assert [backoff_delay(n, base_s=10, cap_s=50) for n in (1, 2, 3, 4)] == [10, 20, 40, 50]
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0, base_s=1, cap_s=1)


# --- a night ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_night(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "night"
    simulate_night(out, camera="sbig", size=128, n_bias=3, n_dark=2, n_flat=2, n_science=2,
                   dayobs=NIGHT)  # fmt: skip
    return out


@dataclass
class Env:
    settings: Settings
    raw: Path

    @property
    def engine(self) -> sa.Engine:
        return get_engine(self.settings.database_url)

    def ingest(self, *patterns: str) -> None:
        files = [p for pattern in patterns for p in sorted(self.raw.glob(pattern))]
        ingest_paths(get_sessionmaker(self.settings.database_url), files)

    def run(self, **options) -> dict:
        config = {"until_idle": True, "quiet_time_s": 0.0, "poll_s": 0.05, "lease_s": 10.0,
                  **options}  # fmt: skip
        return Worker(self.settings, WorkerConfig(**config), name="test-worker").run().to_json()

    def frames(self) -> list[RawFrame]:
        with get_sessionmaker(self.settings.database_url)() as session:
            return list(session.scalars(sa.select(RawFrame).order_by(RawFrame.id)))

    def masters(self) -> list[MasterCalibration]:
        with get_sessionmaker(self.settings.database_url)() as session:
            return list(
                session.scalars(sa.select(MasterCalibration).order_by(MasterCalibration.id))
            )


def _env(url: str, tmp_path: Path, raw: Path) -> Env:
    settings = load_settings(url, tmp_path / "data")
    ensure_schema(settings.database_url)
    return Env(settings, raw)


@pytest.fixture
def env(db_url: str, tmp_path: Path, raw_night: Path) -> Iterator[Env]:
    yield _env(db_url, tmp_path, raw_night)


@pytest.fixture
def sqlite_env(tmp_path: Path, raw_night: Path) -> Iterator[Env]:
    """SQLite only, on a private copy of the raw files (which the test may damage)."""
    raw = tmp_path / "raw"
    shutil.copytree(raw_night, raw)
    yield _env(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path, raw)


def test_a_night_is_reduced_once_with_its_own_masters(env: Env) -> None:
    env.ingest("*.fits")
    summary = env.run()
    frames = env.frames()
    assert Counter(f.obstype for f in frames) == COUNTS
    assert {f.state for f in frames} == {FrameState.DONE}
    assert {f.lease_token for f in frames} == {1}, "every frame claimed exactly once"
    masters = env.masters()
    assert sorted((m.obstype.value, m.filter_name) for m in masters) == [
        ("BIAS", ""), ("BPM", ""), ("DARK", ""), ("SKYFLAT", "V"), ("SKYFLAT", "rp")
    ]  # fmt: skip
    assert summary["processed"] == len(frames) and summary["reduced"] == COUNTS["EXPOSE"]
    assert summary["done"] == len(frames) and summary["masters_built"] == 5
    assert summary["failed"] == summary["waiting"] == 0
    science = [f for f in frames if f.obstype == "EXPOSE"]
    assert all(Path(f.product_path).is_file() for f in science)
    by_id = {m.id: m for m in masters}
    with get_sessionmaker(env.settings.database_url)() as session:
        links = session.scalars(
            sa.select(ReductionMaster)
            .join(Reduction, Reduction.id == ReductionMaster.reduction_id)
            .where(Reduction.frame_id.in_([f.id for f in science]),
                   Reduction.status == ReductionStatus.CURRENT)
        ).all()  # fmt: skip
        jobs = session.scalars(sa.select(MasterJob)).all()
    assert len(links) == 4 * len(science)
    assert {by_id[link.master_id].dayobs for link in links} == {dt.date(2026, 11, 20)}
    assert sorted((j.obstype.value, j.status.value, j.lease_owner) for j in jobs) == sorted(
        (m.obstype.value, "built", None) for m in masters
    )
    assert env.run()["processed"] == 0  # nothing left: a second pass changes nothing
    assert len(env.masters()) == 5


def test_science_ingested_before_its_flats_waits_then_completes(env: Env) -> None:
    env.ingest("*-b00.fits", "*-d00.fits", "*-e00.fits")
    first = env.run()
    science = [f for f in env.frames() if f.obstype == "EXPOSE"]
    assert first["waiting"] == len(science)
    assert {f.state for f in science} == {FrameState.WAITING_CALIBRATION}
    assert all("SKYFLAT" in f.last_error for f in science)
    assert env.run()["processed"] == 0  # not retried before a flat exists
    assert {f.lease_token for f in env.frames() if f.obstype == "EXPOSE"} == {1}
    env.ingest("*-f00.fits")
    second = env.run()
    assert second["woken"] == len(science) and second["reduced"] == len(science)
    frames = env.frames()
    assert {f.state for f in frames} == {FrameState.DONE}
    assert {f.lease_token for f in frames if f.obstype == "EXPOSE"} == {2}
    assert sorted(m.obstype.value for m in env.masters()) == [
        "BIAS", "BPM", "DARK", "SKYFLAT", "SKYFLAT"
    ]  # fmt: skip


def test_corrupt_files_fail_with_their_reason_and_the_rest_completes(sqlite_env: Env) -> None:
    env = sqlite_env
    env.ingest("*.fits")
    bias = sorted(env.raw.glob("*-b00.fits"))[2]
    science = sorted(env.raw.glob("*-e00.fits"))[1]
    for path in (bias, science):  # damaged after ingest: truncated
        path.write_bytes(path.read_bytes()[:5000])
    summary = env.run()
    frames = {Path(f.path).name: f for f in env.frames()}
    for path in (bias, science):
        frame = frames.pop(path.name)
        assert frame.state is FrameState.FAILED
        assert "truncated" in frame.last_error and path.name in frame.last_error
    assert {f.state for f in frames.values()} == {FrameState.DONE}
    (master_bias,) = [m for m in env.masters() if m.obstype.value == "BIAS"]
    assert master_bias.n_inputs == COUNTS["BIAS"] - 1
    assert summary["failed"] == 2 and summary["reduced"] == COUNTS["EXPOSE"] - 1


def test_transient_errors_back_off_then_fail_and_bugs_fail_at_once(
    sqlite_env: Env, monkeypatch
) -> None:
    env = sqlite_env
    env.ingest("*.fits")
    calls = Counter()
    real = reduce_module.reduce_frame
    science = sorted(p.name for p in env.raw.glob("*-e00.fits"))

    def flaky(maker, settings, frame_id, **kwargs):
        with maker() as session:
            name = session.get(RawFrame, frame_id).filename
        calls[name] += 1
        if name == science[0]:
            raise TransientError("the archive disk is not mounted")
        if name == science[1]:
            raise ZeroDivisionError("a bug")
        if name == science[2] and calls[name] == 1:
            raise TransientError("once only")
        return real(maker, settings, frame_id, **kwargs)

    monkeypatch.setattr(reduce_module, "reduce_frame", flaky)
    summary = env.run(max_attempts=3, retry_base_s=0.05, retry_cap_s=0.1)
    frames = {f.filename: f for f in env.frames()}
    given_up, bug, recovered = (frames[n] for n in science[:3])
    assert calls[science[0]] == 3 and given_up.state is FrameState.FAILED
    assert given_up.attempts == 3 and "TransientError: the archive disk" in given_up.last_error
    assert "Traceback" not in given_up.last_error and "\n" not in given_up.last_error
    assert calls[science[1]] == 1 and bug.state is FrameState.FAILED
    assert "unexpected error" in bug.last_error and "ZeroDivisionError" in bug.last_error
    assert "Traceback" not in bug.last_error and "\n" not in bug.last_error
    assert calls[science[2]] == 2 and recovered.state is FrameState.DONE
    assert frames[science[3]].state is FrameState.DONE
    assert summary["retried"] == 3 and summary["failed"] == 2


def test_a_worker_that_lost_its_lease_writes_and_records_nothing(env: Env) -> None:
    env.ingest("*-b00.fits", "*-d00.fits", "*-f00.fits")
    env.run()  # masters
    env.ingest(sorted(env.raw.glob("*-e00.fits"))[0].name)  # one science frame
    engine = env.engine
    stale = queue.claim_frame(engine, "slow", lease_s=0.01)
    while (fresh := queue.claim_frame(engine, "fast", lease_s=60)) is None:
        pass  # the slow worker's lease expires
    assert fresh.frame_id == stale.frame_id and fresh.token == stale.token + 1
    maker = get_sessionmaker(env.settings.database_url)
    with pytest.raises(queue.LeaseLostError):
        reduce_module.reduce_frame(maker, env.settings, stale.frame_id, lease_token=stale.token)
    (frame,) = [f for f in env.frames() if f.id == stale.frame_id]
    assert frame.state is FrameState.PROCESSING and frame.lease_owner == "fast"
    assert frame.product_path is None and not list(Path(env.settings.data_dir).rglob("*e91*"))
    result = reduce_module.reduce_frame(maker, env.settings, fresh.frame_id,
                                        lease_token=fresh.token)  # fmt: skip
    assert result.state == "done"
    # a master build under a lost group lease registers nothing
    (bias,) = [m for m in env.masters() if m.obstype.value == "BIAS"]
    bias_key = GroupKey(bias.instrument_id, bias.dayobs, "BIAS", bias.binning, bias.readout_mode)
    old = queue.claim_group(engine, bias_key, "slow", lease_s=0.01)
    while queue.claim_group(engine, bias_key, "fast", lease_s=60) is None:
        pass
    with pytest.raises(queue.LeaseLostError):
        build_master(maker, env.settings, bias_key,
                     fence=lambda s: queue.fence_group(s, old))  # fmt: skip
    assert len(env.masters()) == 5


def test_too_few_frames_fail_once_the_night_is_over(sqlite_env: Env) -> None:
    env = sqlite_env
    env.ingest("*-b00.fits")
    for path in sorted(env.raw.glob("*-b00.fits"))[2:]:
        with env.engine.begin() as conn:
            conn.execute(sa.delete(RawFrame).where(RawFrame.filename == path.name))
    summary = env.run()
    frames = env.frames()
    assert len(frames) == 2 and {f.state for f in frames} == {FrameState.FAILED}
    assert all("at least 5 needed" in f.last_error for f in frames)
    assert summary["masters_built"] == 0 and summary["master_failures"] == 1
    with get_sessionmaker(env.settings.database_url)() as session:
        job = session.scalars(sa.select(MasterJob)).one()
    assert job.status is MasterJobStatus.FAILED and "at least 5" in job.last_error
    # more frames of the group arrive: it is tried again, with every frame
    env.ingest("*-b00.fits")
    env.run()
    assert {f.state for f in env.frames()} == {FrameState.DONE}
    (master,) = env.masters()
    assert master.n_inputs == COUNTS["BIAS"]


def test_until_idle_leaves_a_current_nights_group_to_its_quiet_time(tmp_path: Path) -> None:
    today = dt.datetime.now(dt.timezone.utc).date()  # its night is not over at any site
    raw = tmp_path / "tonight"
    simulate_night(raw, camera="sbig", size=128, n_bias=3, n_dark=0, n_flat=0, n_science=0,
                   filters=(), dayobs=f"{today:%Y%m%d}")  # fmt: skip
    env = _env(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path, raw)
    env.ingest("*.fits")
    started = dt.datetime.now()
    summary = env.run(quiet_time_s=3600)
    assert (dt.datetime.now() - started).total_seconds() < 30  # did not wait for the quiet time
    assert summary["checked"] == 6 and summary["masters_built"] == 0
    (status,) = queue.group_statuses(env.engine, quiet_time_s=3600)
    assert status.deferred and not status.buildable and "quiet until" in status.reason
    assert env.run(quiet_time_s=0)["masters_built"] == 1
