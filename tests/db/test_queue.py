"""The worker's queue on both databases: claim order and gating, exclusive claims (also from
concurrent processes), lease expiry, fencing, heartbeats, group leases and wake-ups.

Rows are made directly (no files): claiming never reads a frame.
"""

from __future__ import annotations

import datetime as dt
import itertools
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from pylcogt.calibrations.build import GroupKey
from pylcogt.db import migrate, queue
from pylcogt.db.models import (
    CalibrationType,
    CameraFamily,
    FrameState,
    Instrument,
    MasterCalibration,
    MasterJob,
    MasterJobStatus,
    RawFrame,
    Site,
    utcnow,
)
from pylcogt.db.session import dispose_engines, get_engine, get_sessionmaker
from pylcogt.scheduling import obstype_rank

NIGHT = dt.date(2026, 11, 20)  # over at every site by the test's clock
T0 = dt.datetime(2026, 11, 20, 20, 0)
_n = itertools.count()


@pytest.fixture(autouse=True)
def _no_engines_left() -> Iterator[None]:
    yield
    dispose_engines()


@dataclass
class Registry:
    url: str
    engine: sa.Engine
    instrument_id: int

    def frame(self, obstype: str, *, minutes: float = 0, state=FrameState.PENDING,
              filter_name: str = "rp", dayobs: dt.date = NIGHT, **values) -> int:  # fmt: skip
        n = next(_n)
        with get_sessionmaker(self.url)() as session:
            row = RawFrame(path=f"/nowhere/f{n}.fits", filename=f"f{n}.fits", checksum="0" * 64,
                           file_size=1, state=state, obstype=obstype,
                           instrument_id=self.instrument_id, dayobs=dayobs,
                           dateobs=T0 + dt.timedelta(minutes=minutes), exptime_s=1.0,
                           filter_name=filter_name, binning="1x1", readout_mode="",
                           lease_token=0, attempts=0, **values)  # fmt: skip
            session.add(row)
            session.commit()
            return row.id

    def master(self, obstype: str, filter_name: str = "", dayobs: dt.date = NIGHT) -> int:
        n = next(_n)
        with get_sessionmaker(self.url)() as session:
            row = MasterCalibration(obstype=CalibrationType(obstype), dayobs=dayobs,
                                    instrument_id=self.instrument_id, binning="1x1",
                                    readout_mode="", filter_name=filter_name, dateobs=T0,
                                    path=f"/m/{n}.fits.fz", checksum="0", n_inputs=1)  # fmt: skip
            session.add(row)
            session.commit()
            return row.id

    def row(self, frame_id: int) -> RawFrame:
        with get_sessionmaker(self.url)() as session:
            return session.get(RawFrame, frame_id)

    def set(self, frame_ids, **values) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(RawFrame).where(RawFrame.id.in_(list(frame_ids))).values(values))

    def key(self, obstype: str, filter_name: str = "") -> GroupKey:
        return GroupKey(self.instrument_id, NIGHT, obstype, "1x1", "", filter_name)


def _registry(url: str) -> Registry:
    migrate.upgrade(url)
    with get_sessionmaker(url)() as session:
        site = Site(code="lsc", longitude_deg=-70.8)
        inst = Instrument(site=site, enclosure="doma", telescope="1m0a", camera="fa03",
                          family=CameraFamily.SINISTRO, nx=64, ny=64, n_amplifiers=1)  # fmt: skip
        session.add(inst)
        session.commit()
        return Registry(url, get_engine(url), inst.id)


@pytest.fixture
def reg(db_url: str) -> Iterator[Registry]:
    yield _registry(db_url)


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _claim(reg: Registry, owner: str = "w1", lease_s: float = 60) -> queue.FrameClaim | None:
    return queue.claim_frame(reg.engine, owner, lease_s=lease_s)


def test_claims_a_nights_bias_dark_flat_in_order_and_holds_science_back(reg: Registry) -> None:
    science = reg.frame("EXPOSE", minutes=1)
    flat = reg.frame("SKYFLAT", minutes=2)
    dark = reg.frame("DARK", minutes=3)
    bias = reg.frame("BIAS", minutes=4)
    older = reg.frame("EXPOSE", dayobs=NIGHT - dt.timedelta(days=1))  # no calibrations that night
    order = [_claim(reg).frame_id for _ in range(4)]
    assert order == [older, bias, dark, flat]
    assert _claim(reg) is None  # the night's calibrations are not resolved: science waits
    reg.set([bias, dark, flat], state=FrameState.READY, lease_owner=None)
    assert _claim(reg) is None  # ready frames wait for their master: still unresolved
    reg.set([bias], state=FrameState.DONE)
    reg.set([dark, flat], state=FrameState.FAILED)
    claim = _claim(reg)
    assert claim.frame_id == science and claim.token == 1 and not claim.reclaimed
    row = reg.row(science)
    assert row.state is FrameState.PROCESSING and row.lease_owner == "w1"


def test_deferred_ready_frames_and_live_master_builds(reg: Registry) -> None:
    science = reg.frame("EXPOSE")
    bias = reg.frame("BIAS", state=FrameState.READY)
    assert _claim(reg) is None
    # a group deferred to the end of its night (too few frames) does not hold science back
    reg.set([bias], next_attempt_at=utcnow() + dt.timedelta(hours=1))
    group = queue.claim_group(reg.engine, reg.key("BIAS"), "builder", lease_s=60)
    assert group is not None
    assert _claim(reg) is None  # ... but a master of the night being built does
    queue.release_group(reg.engine, group)
    assert _claim(reg).frame_id == science


def test_a_claim_is_exclusive_and_fenced(reg: Registry) -> None:
    ids = {reg.frame("BIAS", minutes=i) for i in range(3)}
    claims = [_claim(reg, f"w{i}") for i in range(3)]
    assert {c.frame_id for c in claims} == ids
    assert _claim(reg, "w9") is None
    first = claims[0]
    queue.record_ready(reg.engine, first, group=first.group)
    assert reg.row(first.frame_id).state is FrameState.READY
    with pytest.raises(queue.LeaseLostError):  # recorded already: the lease is gone
        queue.record_failed(reg.engine, first, "late")
    assert reg.row(first.frame_id).state is FrameState.READY


def test_an_expired_lease_is_reclaimed_and_the_old_worker_cannot_record(reg: Registry) -> None:
    frame_id = reg.frame("BIAS")
    dead = _claim(reg, "dead", lease_s=1.0)
    assert _claim(reg, "alive") is None  # lease still live
    time.sleep(1.1)
    alive = _claim(reg, "alive")
    assert alive.frame_id == frame_id and alive.token == dead.token + 1
    assert alive.reclaimed and alive.attempts == 1
    assert "dead" in reg.row(frame_id).last_error
    with pytest.raises(queue.LeaseLostError):
        queue.record_failed(reg.engine, dead, "stale result")
    with pytest.raises(queue.LeaseLostError), get_sessionmaker(reg.url)() as session:
        queue.fence_frame(session, frame_id, dead.token)
    queue.record_ready(reg.engine, alive, group=alive.group)
    row = reg.row(frame_id)
    assert row.state is FrameState.READY and row.lease_owner is None and row.lease_token == 2


def test_heartbeat_keeps_the_lease_and_notices_its_loss(reg: Registry) -> None:
    frame_id = reg.frame("BIAS")
    claim = _claim(reg, "w1", lease_s=1.0)
    with queue.Heartbeat(reg.engine, claim, lease_s=1.0, interval_s=0.1) as beat:
        time.sleep(1.5)
        assert _claim(reg, "w2") is None  # renewed: not expired
        assert not beat.lost.is_set()
        reg.set([frame_id], lease_token=claim.token + 5)  # taken over
        _wait(beat.lost.is_set)
        assert beat.lost.is_set()


def test_retry_backs_off_then_fails(reg: Registry) -> None:
    frame_id = reg.frame("BIAS")
    claim = _claim(reg)
    state = queue.record_retry(reg.engine, claim, "disk full", delay_s=1.0, max_attempts=2)
    row = reg.row(frame_id)
    assert state == "pending" and row.attempts == 1 and row.next_attempt_at is not None
    assert _claim(reg) is None  # not due yet
    outstanding = queue.outstanding_work(reg.engine)
    assert outstanding.backoff_frames == 1 and outstanding.next_at == row.next_attempt_at
    time.sleep(1.05)
    claim = _claim(reg)
    assert claim.attempts == 1
    state = queue.record_retry(reg.engine, claim, "disk full again", delay_s=0.3, max_attempts=2)
    row = reg.row(frame_id)
    assert state == "failed" and row.state is FrameState.FAILED and row.attempts == 2
    assert row.last_error == "disk full again"


def test_release_gives_the_frame_back_without_counting_an_attempt(reg: Registry) -> None:
    frame_id = reg.frame("BIAS")
    queue.release_frame(reg.engine, _claim(reg))
    row = reg.row(frame_id)
    assert row.state is FrameState.PENDING and row.attempts == 0 and row.lease_owner is None
    assert _claim(reg).token == 2


def test_waiting_frames_wake_only_when_every_master_they_need_exists(reg: Registry) -> None:
    waiting = reg.frame("EXPOSE", state=FrameState.WAITING_CALIBRATION, filter_name="V")
    other = reg.frame("EXPOSE", state=FrameState.WAITING_CALIBRATION, filter_name="rp")
    reg.master("BIAS")
    reg.master("DARK")
    assert queue.wake_waiting_frames(reg.engine) == 0  # no flat yet
    reg.master("SKYFLAT", "rp")
    assert queue.wake_waiting_frames(reg.engine) == 1
    assert reg.row(other).state is FrameState.PENDING
    assert reg.row(waiting).state is FrameState.WAITING_CALIBRATION
    reg.master("SKYFLAT", "V", dayobs=NIGHT + dt.timedelta(days=3))  # any night may serve
    assert queue.wake_waiting_frames(reg.engine) == 1


def test_group_statuses_follow_prerequisites_and_quiet_time(reg: Registry) -> None:
    today = utcnow().date()
    reg.frame("BIAS", state=FrameState.READY)
    reg.frame("DARK", state=FrameState.READY)
    reg.frame("DARK", state=FrameState.PENDING)
    current = reg.frame("BIAS", state=FrameState.READY, dayobs=today)  # night not over
    statuses = {(s.key.dayobs, s.key.obstype): s for s in
                queue.group_statuses(reg.engine, quiet_time_s=3600)}  # fmt: skip
    assert statuses[(NIGHT, "BIAS")].buildable
    dark = statuses[(NIGHT, "DARK")]
    assert not dark.buildable and "still to be checked" in dark.reason
    tonight = statuses[(today, "BIAS")]
    assert not tonight.buildable and tonight.deferred and "quiet until" in tonight.reason
    assert queue.group_status(reg.engine, tonight.key, quiet_time_s=0).buildable
    reg.set([current], ingested_at=utcnow() - dt.timedelta(hours=2))
    assert queue.group_status(reg.engine, tonight.key, quiet_time_s=3600).buildable
    # the dark group waits for the night's bias master
    reg.set([reg.frame("DARK")], state=FrameState.READY)
    with reg.engine.begin() as conn:
        conn.execute(sa.delete(RawFrame).where(RawFrame.state == FrameState.PENDING))
    dark = queue.group_status(reg.engine, reg.key("DARK"), quiet_time_s=0)
    assert not dark.buildable and "BIAS" in dark.reason


def test_a_group_lease_is_exclusive_and_fenced(reg: Registry) -> None:
    reg.frame("BIAS", state=FrameState.READY)
    key = reg.key("BIAS")
    first = queue.claim_group(reg.engine, key, "w1", lease_s=1.0)
    assert queue.claim_group(reg.engine, key, "w2", lease_s=1.0) is None
    status = queue.group_status(reg.engine, key, quiet_time_s=0)
    assert not status.buildable and "w1" in status.reason
    assert queue.group_status(reg.engine, key, quiet_time_s=0, holder=first).buildable
    time.sleep(1.05)
    second = queue.claim_group(reg.engine, key, "w2", lease_s=60)
    assert second.token == first.token + 1 and second.job_id == first.job_id
    with pytest.raises(queue.LeaseLostError), get_sessionmaker(reg.url)() as session:
        queue.fence_group(session, first)
    with pytest.raises(queue.LeaseLostError):
        queue.finish_group(reg.engine, first, MasterJobStatus.BUILT)
    changed = queue.finish_group(reg.engine, second, MasterJobStatus.FAILED, error="x",
                                 fail_ready="given up")  # fmt: skip
    assert changed == 1
    with get_sessionmaker(reg.url)() as session:
        job = session.scalars(sa.select(MasterJob)).one()
        assert job.status is MasterJobStatus.FAILED and job.lease_owner is None
        frame = session.scalars(sa.select(RawFrame)).one()
        assert frame.state is FrameState.FAILED and frame.last_error == "given up"


def test_bad_pixel_mask_is_due_once_the_nights_darks_and_flats_are_built(reg: Registry) -> None:
    science = reg.frame("EXPOSE")
    reg.frame("DARK", state=FrameState.DONE)
    reg.master("DARK")
    statuses = queue.group_statuses(reg.engine, quiet_time_s=0)
    assert [(s.key.obstype, s.buildable) for s in statuses] == [("BPM", True)]
    assert _claim(reg) is None  # the night's science waits for its mask
    reg.master("BPM")
    assert queue.group_statuses(reg.engine, quiet_time_s=0) == []
    assert _claim(reg).frame_id == science


def test_another_nights_mask_does_not_open_this_nights_gate(reg: Registry) -> None:
    """Regression: the mask gate's inner subqueries were not correlated to the frame, so one
    night's mask let every night's science through before its own mask was derived."""
    earlier = NIGHT - dt.timedelta(days=1)
    reg.master("DARK", dayobs=earlier)
    reg.master("BPM", dayobs=earlier)
    reg.frame("EXPOSE", dayobs=earlier, state=FrameState.DONE)  # a night that has its mask
    science = reg.frame("EXPOSE")
    reg.frame("DARK", state=FrameState.DONE)
    reg.master("DARK")
    assert _claim(reg) is None  # this night's mask is due: its science waits for it
    reg.master("BPM")
    assert _claim(reg).frame_id == science


def test_calibration_frames_pass_the_gates_that_hold_science_back(reg: Registry) -> None:
    """The gates (the night's calibrations unresolved, a master being built, the mask due) hold
    back science frames only."""
    science = reg.frame("EXPOSE", minutes=0)
    reg.frame("DARK", state=FrameState.DONE)
    reg.master("DARK")  # the night's mask is due
    group = queue.claim_group(reg.engine, reg.key("BIAS"), "builder", lease_s=60)  # building
    flats = [reg.frame("SKYFLAT", minutes=i) for i in (1, 2)]  # unresolved calibrations
    assert [_claim(reg).frame_id for _ in flats] == flats
    assert _claim(reg) is None
    reg.set(flats, state=FrameState.DONE)
    queue.release_group(reg.engine, group)
    reg.master("BPM")
    assert _claim(reg).frame_id == science


def test_claim_rank_is_the_scheduling_rank(reg: Registry) -> None:
    """``raw_frames.claim_rank``, generated by the migrated database, orders frames as
    :data:`pylcogt.scheduling.OBSTYPE_RANK` does (a change of the order needs a migration)."""
    obstypes = ["BIAS", "DARK", "SKYFLAT", "EXPOSE", "STANDARD", "LAMPFLAT"]
    ids = {reg.frame(obstype): obstype for obstype in obstypes}
    with reg.engine.connect() as conn:
        ranks = dict(conn.execute(sa.select(RawFrame.id, RawFrame.claim_rank)).all())
    assert {ids[i]: rank for i, rank in ranks.items()} == {o: obstype_rank(o) for o in obstypes}


def _seed_backlog(reg: Registry, *, nights: int = 40, per_night: int = 100) -> None:
    """A backlog: every frame of ``nights`` nights pending (calibrations first in each night,
    then science), after as many nights done; ANALYZEd."""
    obstypes = ["BIAS"] * 10 + ["DARK"] * 5 + ["SKYFLAT"] * 10 + ["EXPOSE"] * 75
    rows = []
    for night in range(2 * nights):
        for i in range(per_night):
            rows.append(
                {"path": f"/b/{night}/{i}.fits", "filename": f"{night}-{i}.fits",
                 "checksum": "0", "file_size": 1,
                 "state": FrameState.DONE if night < nights else FrameState.PENDING,
                 "obstype": obstypes[(i * 37) % len(obstypes)],
                 "instrument_id": reg.instrument_id, "dayobs": NIGHT - dt.timedelta(days=night),
                 "dateobs": T0 - dt.timedelta(days=night, minutes=i), "exptime_s": 1.0,
                 "binning": "1x1", "readout_mode": "", "lease_token": 0, "attempts": 0}
            )  # fmt: skip
    with reg.engine.begin() as conn:
        conn.execute(sa.insert(RawFrame), rows)
    with reg.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")


def _claim_sql(reg: Registry) -> tuple[str, object]:
    """The claim statement as :func:`queue.claim_frame` sends it (one frame is claimed)."""
    sent: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            sent.append((statement, parameters))

    sa.event.listen(reg.engine, "before_cursor_execute", capture)
    try:
        assert _claim(reg) is not None
    finally:
        sa.event.remove(reg.engine, "before_cursor_execute", capture)
    assert len(sent) == 1
    return sent[0]


def test_a_claim_walks_the_claim_index_and_sorts_nothing(reg: Registry) -> None:
    """With a backlog the claim reads ``ix_raw_frames_claim`` in claim order and stops at the
    first claimable frame: no sort of every due frame (PostgreSQL: no Sort node, no hashing of
    the gates' tables; SQLite: no temporary B-tree for the ORDER BY)."""
    _seed_backlog(reg)
    sql, params = _claim_sql(reg)
    with reg.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            plan = conn.exec_driver_sql("EXPLAIN " + sql, params).scalars().all()
            text = "\n".join(plan)
            assert "Index Scan using ix_raw_frames_claim on raw_frames candidate" in text, text
            assert not any("Sort" in line for line in plan), text
            assert "Hash" not in text and "Seq Scan on raw_frames" not in text, text
        else:
            plan = [str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
            assert "SCAN candidate USING INDEX ix_raw_frames_claim" in plan, plan
            assert not any("TEMP B-TREE" in line for line in plan), plan


# --- concurrent processes -----------------------------------------------------------------
def _claim_all(url: str, owner: str, barrier, out) -> None:
    dispose_engines()
    engine = get_engine(url)
    queue.db_now(engine)  # connected and ready
    barrier.wait()
    got = []
    while (claim := queue.claim_frame(engine, owner, lease_s=600)) is not None:
        got.append(claim.frame_id)
        time.sleep(0.002)  # a little work between claims: SQLite's lock is not fair otherwise
    out.put((owner, got))


def test_concurrent_sqlite_processes_never_claim_the_same_frame(tmp_path) -> None:
    """SQLite has no FOR UPDATE: BEGIN IMMEDIATE + compare-and-set (PostgreSQL's SKIP LOCKED
    claim is exercised by the many-workers test in tests/e2e/test_worker_cli.py)."""
    reg = _registry(f"sqlite:///{tmp_path / 'claims.db'}")
    n = 300
    with reg.engine.begin() as conn:
        conn.execute(
            sa.insert(RawFrame),
            [
                {"path": f"/c/{i}.fits", "filename": f"{i}.fits", "checksum": "0", "file_size": 1,
                 "state": FrameState.PENDING, "obstype": "BIAS",
                 "instrument_id": reg.instrument_id, "dayobs": NIGHT,
                 "dateobs": T0 + dt.timedelta(seconds=i), "exptime_s": 0.0, "binning": "1x1",
                 "readout_mode": "", "lease_token": 0, "attempts": 0}
                for i in range(n)
            ],
        )  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_claim_all, args=(reg.url, f"p{i}", barrier, out)) for i in range(2)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    claimed = [i for got in results.values() for i in got]
    assert len(claimed) == len(set(claimed)) == n
    assert all(results.values()), "both processes claimed frames"
    with reg.engine.connect() as conn:
        tokens = conn.execute(sa.select(RawFrame.lease_token)).scalars().all()
    assert set(tokens) == {1}


def test_a_group_in_its_quiet_time_holds_back_only_frames_with_a_product(reg: Registry) -> None:
    """Live nights: tonight's flats wait for their quiet time; a science frame without a product
    is reduced at once (provisionally), one with a provisional product waits to be redone once."""
    flat = reg.frame("SKYFLAT", state=FrameState.READY)
    fresh = reg.frame("EXPOSE", minutes=10)
    redo = reg.frame("EXPOSE", minutes=5, product_path="/p/redo-e91.fits.fz")
    reg.set([flat], quiet_until=utcnow() + dt.timedelta(minutes=15))
    claim = _claim(reg)
    assert claim is not None and claim.frame_id == fresh  # the earlier frame is held back
    assert _claim(reg) is None
    reg.set([flat], quiet_until=utcnow() - dt.timedelta(seconds=1))  # quiet time over
    assert _claim(reg) is None  # now the flats are about to be stacked: nobody goes
    reg.set([flat], state=FrameState.DONE)
    claim = _claim(reg)
    assert claim is not None and claim.frame_id == redo
