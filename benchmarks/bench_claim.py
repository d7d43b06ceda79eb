"""Claim speed with a backlog: ``queue.claim_frame`` before and after revision 0005, both databases.

Seeds a registry (an SQLite file and/or a throw-away PostgreSQL server started like the tests do)
with ``--frames`` raw frames (default 200,000) on ``--instruments`` instruments (60) over
``--nights`` nights (300): per instrument and night a bias, a dark and a flat (when it has six
frames or more), then about 10% biases, 5% darks, 10% flats and 75% science (EXPOSE). The newest
nights, ``--pending`` frames (100,000), are the backlog; the older nights are ``done``, with their
masters (bias, dark, flats, bad-pixel mask) and ``master_jobs`` rows (built), as after a normal
run. Then, per scenario:

- ``backlog``: every frame of the backlog nights ``pending`` (an operator backfilling, or an
  archive catching up): the claims take the oldest night's calibrations; science of a night whose
  calibrations are claimed (``processing``: nothing is recorded here) waits.
- ``calibrated``: the backlog's calibration frames resolved (``done``), its science ``pending``:
  every claim takes a science frame whose gates pass (a long backlog's steady state).
- ``worst``: the backlog's calibration frames ``ready`` (checked, masters not built yet) except
  the newest night's, still ``pending``: the gates hold back every science frame, and each claim
  finds one of the newest night's calibrations behind all of them.

Each scenario runs twice from the same state (states reset, ANALYZEd; PostgreSQL: VACUUM
ANALYZE): **before**, the registry at revision 0004 with the claim statement as it was (kept
below, :func:`old_claim_statement`: a ``CASE`` in the ``ORDER BY``, the gates under an ``OR``);
**after**, at head with :func:`pylcogt.db.queue._claim_statement`. Each run prints the plan of one
claim (PostgreSQL: ``EXPLAIN (ANALYZE, BUFFERS)``, rolled back, condensed; SQLite: ``EXPLAIN QUERY
PLAN``), then times ``--claims`` claims (``--worst-claims`` in ``worst``) through
``queue.claim_frame``, one process, each a real claim (the frame goes to ``processing``). Prints
p50/p95/max ms, the before/after ratios, and whether both claimed the same frames in the same
order (they must: same semantics).

    python benchmarks/bench_claim.py [--frames 200000] [--pending 100000] [--instruments 60]
        [--nights 300] [--claims 200] [--worst-claims 30] [--scenarios backlog,calibrated,worst]
        [--backends sqlite,postgresql] [--postgres-url URL] [--no-jit]

A claim before takes seconds on PostgreSQL at 100,000 pending frames (mostly JIT compilation of
the sorted plan: ``--no-jit`` sets ``jit = off`` for the database to see the rest), so the
defaults stay at a few hundred claims. ``--postgres-url`` is a role that may CREATE DATABASE (a
temporary database is created and dropped); without it the benchmark starts its own server
(``tests/postgres_server.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import and_, event, exists, or_, select, update

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_select import FILTERS, RAW_COLUMNS, START, _copy_text, seed_instruments  # noqa: E402

from pylcogt.db import migrate, queue  # noqa: E402
from pylcogt.db.models import (  # noqa: E402
    CalibrationType,
    MasterCalibration,
    MasterJob,
    MasterJobStatus,
    RawFrame,
)
from pylcogt.db.session import dispose_engines, get_engine, get_sessionmaker  # noqa: E402
from pylcogt.instruments import CALIBRATION_OBSTYPES  # noqa: E402
from pylcogt.scheduling import OBSTYPE_RANK, SCIENCE_RANK  # noqa: E402

BEFORE_REVISION = "0004"  # the last revision without the claim index
OBSTYPES = ["BIAS"] * 10 + ["DARK"] * 5 + ["SKYFLAT"] * 10 + ["EXPOSE"] * 75
SCENARIOS = ("backlog", "calibrated", "worst")


# --- the claim statement before the claim index (the peer) ----------------------------------
def _old_rank(table) -> sa.ColumnElement:
    whens = [(table.c.obstype == name, rank) for name, rank in OBSTYPE_RANK.items()]
    return sa.case(*whens, else_=SCIENCE_RANK)


def _old_claimable(frame, now) -> sa.ColumnElement:
    _P, _W = "pending", "processing"
    due = or_(
        and_(
            frame.c.state == _P,
            or_(frame.c.next_attempt_at.is_(None), frame.c.next_attempt_at <= now),
        ),
        and_(
            frame.c.state == _W,
            or_(frame.c.lease_expires_at.is_(None), frame.c.lease_expires_at < now),
        ),
    )
    m = MasterCalibration.__table__.alias("night_master")
    bpm_due = exists().where(
        *_old_bpm_due(m, instrument_id=frame.c.instrument_id, dayobs=frame.c.dayobs,
                      binning=frame.c.binning, readout_mode=frame.c.readout_mode)
    )  # fmt: skip
    science_gate = or_(
        frame.c.obstype.in_(CALIBRATION_OBSTYPES),
        ~or_(
            _old_unresolved_calibrations(frame, now),
            _old_masters_being_built(frame, now),
            bpm_due,
        ),
    )
    return and_(due, science_gate)


# the gates as they were at revision 0004 (frozen here: the queue's own have grown since, and
# read columns that a revision 0004 registry does not have)
def _old_unresolved_calibrations(frame, now) -> sa.Exists:
    cal = RawFrame.__table__.alias("cal")
    ready = and_(cal.c.state == "ready",
                 or_(cal.c.next_attempt_at.is_(None), cal.c.next_attempt_at <= now))
    return exists().where(
        cal.c.instrument_id == frame.c.instrument_id, cal.c.dayobs == frame.c.dayobs,
        cal.c.obstype.in_(list(CALIBRATION_OBSTYPES)), cal.c.binning == frame.c.binning,
        cal.c.readout_mode == frame.c.readout_mode,
        or_(cal.c.state.in_(["pending", "processing"]), ready),
    )  # fmt: skip


def _old_masters_being_built(frame, now) -> sa.Exists:
    job = MasterJob.__table__.alias("job")
    return exists().where(
        job.c.instrument_id == frame.c.instrument_id, job.c.dayobs == frame.c.dayobs,
        job.c.binning == frame.c.binning, job.c.readout_mode == frame.c.readout_mode,
        job.c.lease_owner.is_not(None), job.c.lease_expires_at > now,
    )  # fmt: skip


def _old_bpm_due(m_like, *, instrument_id, dayobs, binning, readout_mode) -> list:
    bpm = MasterCalibration.__table__.alias("bpm")
    job = MasterJob.__table__.alias("bpm_job")
    return [
        m_like.c.instrument_id == instrument_id, m_like.c.dayobs == dayobs,
        m_like.c.binning == binning, m_like.c.readout_mode == readout_mode,
        m_like.c.obstype.in_(["DARK", "SKYFLAT"]), m_like.c.is_bad == sa.false(),
        ~exists().where(
            bpm.c.instrument_id == instrument_id, bpm.c.dayobs == dayobs,
            bpm.c.binning == binning, bpm.c.readout_mode == readout_mode,
            bpm.c.obstype == "BPM", bpm.c.is_bad == sa.false(),
        ).correlate_except(bpm),
        ~exists().where(
            job.c.instrument_id == instrument_id, job.c.dayobs == dayobs,
            job.c.obstype == "BPM", job.c.binning == binning,
            job.c.readout_mode == readout_mode, job.c.status.in_(["built", "failed"]),
        ).correlate_except(job),
    ]  # fmt: skip


def old_claim_statement(now: dt.datetime, owner: str, lease_s: float) -> tuple[sa.Update, dict]:
    """``queue._claim_statement`` as it was before revision 0005 (it built the statement anew for
    every claim, the values in it)."""
    return _old_claim_update(now, owner, lease_s), {}


def _old_claim_update(now: dt.datetime, owner: str, lease_s: float) -> sa.Update:
    frames = RawFrame.__table__
    cand = frames.alias("candidate")
    candidate = (
        select(cand.c.id)
        .where(_old_claimable(cand, now))
        .order_by(cand.c.dayobs, _old_rank(cand), cand.c.dateobs, cand.c.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=cand)
        .scalar_subquery()
    )
    f = frames
    reclaiming = f.c.state == "processing"
    return (
        update(f)
        .where(f.c.id == candidate, _old_claimable(f, now))
        .values(
            state="processing",
            lease_owner=owner,
            lease_expires_at=now + dt.timedelta(seconds=lease_s),
            lease_token=f.c.lease_token + 1,
            attempts=sa.case((reclaiming, f.c.attempts + 1), else_=f.c.attempts),
            last_error=sa.case(
                (
                    reclaiming,
                    sa.literal(queue.RECLAIMED + " ")
                    + sa.func.coalesce(f.c.lease_owner, "?")
                    + sa.literal(" expired"),
                ),
                else_=f.c.last_error,
            ),  # fmt: skip
            updated_at=now,
        )
        .returning(
            f.c.id,
            f.c.lease_token,
            f.c.filename,
            f.c.path,
            f.c.obstype,
            f.c.attempts,
            f.c.last_error,
            f.c.instrument_id,
            f.c.dayobs,
            f.c.binning,
            f.c.readout_mode,
            f.c.filter_name,
        )  # fmt: skip
    )


@contextlib.contextmanager
def claim_statement(method: str):
    """``queue.claim_frame`` with the statement of ``method`` ('before' or 'after')."""
    current = queue._claim_statement
    if method == "before":
        queue._claim_statement = old_claim_statement
    try:
        yield queue._claim_statement
    finally:
        queue._claim_statement = current


# --- seeding --------------------------------------------------------------------------------
def frame_rows(instruments: list[dict], args: argparse.Namespace, rng: random.Random):
    """Raw-frame rows (dicts) night by night, in chunks of ~50,000; all ``done`` (the scenarios
    set the states)."""
    per_night = args.frames / (len(instruments) * args.nights)
    chunk, k = [], 0
    for night in range(args.nights):
        dayobs = (START + dt.timedelta(days=night)).date()
        for inst in instruments:
            n = int(per_night) + (rng.random() < per_night % 1)
            forced = CALIBRATION_OBSTYPES if n >= 6 else ()  # each night has its calibrations
            for i in range(n):
                obstype = forced[i] if i < len(forced) else rng.choice(OBSTYPES)
                t = START + dt.timedelta(days=night, hours=rng.uniform(0, 14))
                name = f"{uuid.uuid4().hex[:12]}-{k:07d}-{obstype[0].lower()}00.fits.fz"
                k += 1
                chunk.append(
                    {
                        "path": f"/archive/raw/{night}/{name}",
                        "filename": name,
                        "checksum": uuid.uuid4().hex * 2,
                        "file_size": 40_000_000,
                        "state": "done",
                        "obstype": obstype,
                        "instrument_id": inst["id"],
                        "dateobs": t,
                        "dayobs": dayobs,
                        "exptime_s": 0.0 if obstype == "BIAS" else 30.0,
                        "filter_name": rng.choice(FILTERS[:3]),
                        "binning": inst["binning"],
                        "readout_mode": inst["mode"],
                        "object_name": f"target{k % 5000}",
                        "attempts": 1,
                        "lease_token": 1,
                        "ingested_at": t + dt.timedelta(hours=1),
                        "updated_at": t + dt.timedelta(hours=2),
                    }
                )
        if len(chunk) >= 50_000:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def master_rows(instruments: list[dict], done_nights: int, rng: random.Random):
    """Masters and built ``master_jobs`` of every done night: bias, dark, flats, mask."""
    masters, jobs = [], []
    for night in range(done_nights):
        base = START + dt.timedelta(days=night)
        for inst in instruments:
            kinds = [("BIAS", ""), ("DARK", "")] + [("SKYFLAT", f) for f in FILTERS[:3]]
            kinds.append(("BPM", ""))
            for obstype, filt in kinds:
                t = base + dt.timedelta(hours=rng.uniform(0, 14))
                key = {"obstype": CalibrationType(obstype), "instrument_id": inst["id"],
                       "binning": inst["binning"], "readout_mode": inst["mode"],
                       "filter_name": filt, "dayobs": base.date()}  # fmt: skip
                masters.append({**key, "dateobs": t, "is_bad": False, "n_inputs": 7,
                                "path": f"/archive/masters/{uuid.uuid4().hex}.fits.fz",
                                "checksum": uuid.uuid4().hex * 2, "created_at": t})  # fmt: skip
                jobs.append({**key, "status": MasterJobStatus.BUILT, "attempts": 0,
                             "lease_token": 1, "updated_at": t})  # fmt: skip
    return masters, jobs


def seed(url: str, args: argparse.Namespace) -> dict:
    backend = sa.engine.make_url(url).get_backend_name()
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    migrate.upgrade(url)
    engine = get_engine(url)
    backlog_nights = max(1, round(args.nights * args.pending / args.frames))
    done_nights = args.nights - backlog_nights
    with get_sessionmaker(url)() as session:
        instruments = seed_instruments(session, args.instruments)[: args.instruments]
        masters, jobs = master_rows(instruments, done_nights, rng)
        for i in range(0, len(masters), 5000):
            session.execute(sa.insert(MasterCalibration), masters[i : i + 5000])
            session.execute(sa.insert(MasterJob), jobs[i : i + 5000])
        session.commit()
    for chunk in frame_rows(instruments, args, rng):
        if backend == "postgresql":
            raw = engine.raw_connection()
            try:
                with raw.cursor() as cur:
                    columns = ", ".join(RAW_COLUMNS)
                    cur.copy_expert(f"COPY raw_frames ({columns}) FROM STDIN", _copy_text(chunk))
                raw.commit()
            finally:
                raw.close()
        else:
            with engine.begin() as conn:
                conn.execute(sa.insert(RawFrame), chunk)
    first_backlog = (START + dt.timedelta(days=done_nights)).date()
    last_night = (START + dt.timedelta(days=args.nights - 1)).date()
    return {
        "backend": backend,
        "first_backlog": first_backlog,
        "last_night": last_night,
        "backlog_nights": backlog_nights,
        "n_masters": len(masters),
        "seed_s": time.perf_counter() - t0,
    }


def apply_scenario(url: str, info: dict, scenario: str) -> dict[str, int]:
    """Set every frame's state for ``scenario`` (see the module doc), clear every lease, and
    ANALYZE (PostgreSQL: VACUUM ANALYZE, so both runs start from the same clean table)."""
    f = RawFrame.__table__
    backlog = f.c.dayobs >= info["first_backlog"]
    calibration = f.c.obstype.in_(CALIBRATION_OBSTYPES)
    fresh = {"lease_owner": None, "lease_expires_at": None, "lease_token": 0, "attempts": 0,
             "next_attempt_at": None, "last_error": None}  # fmt: skip
    engine = get_engine(url)
    with engine.begin() as conn:
        conn.execute(update(f).where(~backlog).values(state="done", **fresh))
        conn.execute(update(f).where(backlog).values(state="pending", **fresh))
        if scenario == "calibrated":
            conn.execute(update(f).where(backlog, calibration).values(state="done"))
        elif scenario == "worst":
            older = f.c.dayobs < info["last_night"]
            conn.execute(update(f).where(backlog, calibration, older).values(state="ready"))
        conn.execute(sa.delete(MasterJob).where(MasterJob.dayobs >= info["first_backlog"]))
        counts = dict(conn.execute(select(f.c.state, sa.func.count()).group_by(f.c.state)).all())
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE" if info["backend"] == "postgresql" else "ANALYZE")
    return {getattr(k, "value", k): v for k, v in counts.items()}


# --- claims ---------------------------------------------------------------------------------
def plan_lines(url: str, build) -> list[str]:
    """The plan of one claim statement (PostgreSQL: executed, then rolled back)."""
    engine = get_engine(url)
    backend = engine.dialect.name
    captured = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as conn:
            trans = conn.begin()
            conn.execute(*build(queue.db_now(conn), "explain", 60.0))
            trans.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    sql, params = captured[0]
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if backend == "postgresql" else "EXPLAIN QUERY PLAN "
    with engine.connect() as conn:
        trans = conn.begin()
        rows = conn.exec_driver_sql(prefix + sql, params).all()
        trans.rollback()
    lines = [str(r[-1]) for r in rows]
    if backend == "sqlite":
        return lines
    return _condensed(lines)


_DETAILS = ("Filter:", "Index Cond:", "Join Filter:", "Recheck Cond:", "Buffers:", "Cache Key:",
            "Cache Mode:", "Hits:", "Heap Blocks:", "Options:", "Functions:", "Planning:",
            "One-Time Filter:", "Merge Cond:", "Hash Cond:", "Heap Fetches:")  # fmt: skip


def _condensed(lines: list[str], width: int = 150) -> list[str]:
    """PostgreSQL's plan without estimates, conditions and the nodes never executed."""
    out, skip_below = [], None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skip_below is not None and indent > skip_below:
            continue
        skip_below = None
        if "(never executed)" in line:
            skip_below = indent
            continue
        if line.strip().startswith(_DETAILS):
            continue
        line = re.sub(r"\(cost=[^)]*\) ", "", line)
        out.append(line if len(line) <= width else line[: width - 3] + "...")
    return out


def run_claims(url: str, n: int) -> tuple[list[float], list[int]]:
    engine = get_engine(url)
    queue.db_now(engine)  # connected
    times, ids = [], []
    for i in range(n):
        t0 = time.perf_counter()
        claim = queue.claim_frame(engine, f"w{i % 8}", lease_s=3600)
        times.append((time.perf_counter() - t0) * 1000)
        if claim is None:
            break
        ids.append(claim.frame_id)
    return times, ids


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def bench(url: str, args: argparse.Namespace) -> None:
    try:
        info = seed(url, args)
        backend = info["backend"]
        print(f"\n== {backend}: seeded in {info['seed_s']:.0f} s; backlog = the newest "
              f"{info['backlog_nights']} of {args.nights} nights (from {info['first_backlog']}); "
              f"{info['n_masters']:,} masters")  # fmt: skip
        summary = []
        for scenario in args.scenarios:
            n = args.worst_claims if scenario == "worst" else args.claims
            results = {}
            for method in ("before", "after"):
                if method == "before":
                    migrate.downgrade(url, BEFORE_REVISION)
                else:
                    migrate.upgrade(url)
                dispose_engines()
                counts = apply_scenario(url, info, scenario)
                with claim_statement(method) as build:
                    lines = plan_lines(url, build)
                    times, ids = run_claims(url, n)
                results[method] = (times, ids)
                print(f"\n{backend} / {scenario} / {method} (revision "
                      f"{migrate.current_revision(url)}); frames: {counts}")  # fmt: skip
                print("  plan of one claim:")
                for line in lines:
                    print("   ", line.rstrip())
            (tb, ib), (ta, ia) = results["before"], results["after"]
            same = "same frames, same order" if ib == ia else "DIFFERENT FRAMES CLAIMED"
            summary.append((scenario, len(ia), tb, ta, same))
        print(f"\n== {backend}: claim latency, ms (queue.claim_frame, one process)")
        print(f"{'scenario':<11} {'claims':>6}  {'method':<6} {'p50':>9} {'p95':>9} {'max':>9}")
        for scenario, n, tb, ta, same in summary:
            stats = {}
            for method, times in (("before", tb), ("after", ta)):
                stats[method] = [_pct(times, 50), _pct(times, 95), max(times)]
                print(f"{scenario:<11} {n:>6}  {method:<6} "
                      + " ".join(f"{v:9.2f}" for v in stats[method]))  # fmt: skip
            ratio = [b / a for b, a in zip(stats["before"], stats["after"], strict=True)]
            print(f"{'':<11} {'':>6}  {'ratio':<6} " + " ".join(f"{v:8.1f}x" for v in ratio)
                  + f"   before/after; {same}")  # fmt: skip
    finally:
        dispose_engines()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--pending", type=int, default=100_000, help="frames in the backlog")
    parser.add_argument("--instruments", type=int, default=60)
    parser.add_argument("--nights", type=int, default=300)
    parser.add_argument("--claims", type=int, default=200, help="per scenario and method")
    parser.add_argument("--worst-claims", type=int, default=30)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", help="a role that may CREATE DATABASE")
    parser.add_argument("--no-jit", action="store_true", help="PostgreSQL: jit = off")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    with tempfile.TemporaryDirectory(prefix="pylcogt-bench-claim-") as tmp:
        if "sqlite" in backends:
            bench(f"sqlite:///{Path(tmp) / 'registry.db'}", args)
        if "postgresql" in backends:
            server = None
            admin_url = args.postgres_url
            if admin_url is None:
                from tests.postgres_server import TempPostgres

                server = TempPostgres().start()
                admin_url = server.admin_url
            admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
            name = f"bench_claim_{uuid.uuid4().hex[:8]}"
            try:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
                    if args.no_jit:
                        conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET jit = off')
                url = admin.url.set(database=name).render_as_string(hide_password=False)
                bench(url, args)
            finally:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                admin.dispose()
                if server is not None:
                    server.stop()


if __name__ == "__main__":
    main()
