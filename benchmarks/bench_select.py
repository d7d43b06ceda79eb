"""Calibration lookup speed: ``select_master`` against a naive peer query, on both databases.

Seeds a registry (an SQLite file and/or a throw-away PostgreSQL server started like the tests do)
with ~1,000,000 raw frames and ~30,000 masters on ~60 instruments (a bias, a dark and two flats a
night each), plus one instrument with ``--deep-years`` of nightly biases, ANALYZEs, prints the
plan of one lookup, then runs random lookups per type, each with ``select_master`` (two index
probes, ``UNION ALL``-ed) and with a naive peer (the same filters, ``ORDER BY abs(epoch diff)
LIMIT 1``; for flats ``ORDER BY (dateobs > t), abs(...)``), interleaved, checking that both choose
the same master. Each is timed twice: through the ORM (what the pipeline pays) and as the bare
SQL replayed on a DBAPI cursor (what the database pays, plus one round trip). Prints p50/p95/max
in ms and the naive/ours ratios.

    python benchmarks/bench_select.py [--frames 1000000] [--masters 30000] [--instruments 60]
        [--deep-years 10] [--lookups 2000] [--backends sqlite,postgresql] [--postgres-url URL]

``--postgres-url`` is a role that may CREATE DATABASE (a temporary database is created and
dropped); without it the benchmark starts its own server (``tests/postgres_server.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import io
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event, func
from sqlalchemy.orm import Session

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pylcogt.calibrations.select import select_master  # noqa: E402
from pylcogt.db import migrate  # noqa: E402
from pylcogt.db.models import (  # noqa: E402
    CalibrationType,
    CameraFamily,
    Instrument,
    MasterCalibration,
    RawFrame,
    Site,
)
from pylcogt.db.session import dispose_engines, get_engine, get_sessionmaker  # noqa: E402
from pylcogt.errors import CalibrationNotFoundError  # noqa: E402

SITES = ["lsc", "cpt", "coj", "elp", "ogg", "tfn", "tlv"]
FILTERS = ["U", "B", "V", "R", "I", "up", "gp", "rp", "ip", "zs"]
START = dt.datetime(2025, 6, 1, 12, 0)
FAMILIES = [  # camera prefix, family, main binning, main readout mode, alternate mode
    ("fa", CameraFamily.SINISTRO, "1x1", "full_frame", ("2x2", "central_2k_2x2")),
    ("kb", CameraFamily.SBIG, "2x2", "", ("1x1", "")),
    ("fs", CameraFamily.SPECTRAL, "2x2", "default", ("1x1", "default")),
]


# --- seeding --------------------------------------------------------------------------------
def seed_instruments(session: Session, n: int) -> list[dict]:
    """``n`` instruments, plus one more (the last) that gets the long bias history."""
    sites = [Site(code=code, name=code.upper()) for code in SITES]
    session.add_all(sites)
    session.flush()
    out = []
    for i in range(n + 1):
        prefix, family, binning, mode, alt = FAMILIES[i % 10 % 3]  # mostly Sinistro
        inst = Instrument(
            site_id=sites[i % len(SITES)].id,
            enclosure=f"dom{'abc'[i // len(SITES) % 3]}",
            telescope=f"1m0{'abcdefghij'[i // 21 % 10]}",
            camera=f"{prefix}{i:02d}",
            family=family,
            nx=4096,
            ny=4096,
            n_amplifiers=4,
        )
        session.add(inst)
        session.flush()
        out.append({"id": inst.id, "binning": binning, "mode": mode, "alt": alt})
    session.commit()
    return out


def master_rows(instruments: list[dict], n_masters: int, rng: random.Random) -> tuple[list, int]:
    """Per night and instrument: a bias, a dark, two flats; now and then an alternate-mode bias
    and a BPM; 3% marked bad. Returns the rows and the number of nights."""
    nights = max(1, round(n_masters / len(instruments) / 4.1))
    rows = []
    for inst in instruments:
        for night in range(nights):
            base = START + dt.timedelta(days=night)
            kinds = [
                (CalibrationType.BIAS, "", inst["binning"], inst["mode"]),
                (CalibrationType.DARK, "", inst["binning"], inst["mode"]),
                *[
                    (CalibrationType.SKYFLAT, f, inst["binning"], inst["mode"])
                    for f in rng.sample(FILTERS, 2)
                ],
            ]
            if night % 20 == 0:
                kinds.append((CalibrationType.BIAS, "", *inst["alt"]))
            if night % 30 == 0:
                kinds.append((CalibrationType.BPM, "", inst["binning"], inst["mode"]))
            for obstype, filt, binning, mode in kinds:
                t = base + dt.timedelta(hours=rng.uniform(0, 14))
                rows.append(
                    {
                        "obstype": obstype,
                        "instrument_id": inst["id"],
                        "binning": binning,
                        "readout_mode": mode,
                        "filter_name": filt,
                        "dayobs": base.date(),
                        "dateobs": t,
                        "path": f"/archive/masters/{uuid.uuid4().hex}.fits.fz",
                        "checksum": uuid.uuid4().hex * 2,
                        "is_bad": rng.random() < 0.03,
                        "n_inputs": rng.randint(5, 15),
                        "created_at": t + dt.timedelta(hours=rng.uniform(1, 30)),
                    }
                )
    return rows, nights


def deep_rows(inst: dict, years: int, rng: random.Random) -> list[dict]:
    """One bias a night for ``years`` years up to the end of the main span (the deep history)."""
    rows = []
    for night in range(round(years * 365.25)):
        base = START - dt.timedelta(days=night)
        t = base + dt.timedelta(hours=rng.uniform(0, 14))
        rows.append(
            {
                "obstype": CalibrationType.BIAS,
                "instrument_id": inst["id"],
                "binning": inst["binning"],
                "readout_mode": inst["mode"],
                "filter_name": "",
                "dayobs": base.date(),
                "dateobs": t,
                "path": f"/archive/masters/{uuid.uuid4().hex}.fits.fz",
                "checksum": uuid.uuid4().hex * 2,
                "is_bad": rng.random() < 0.03,
                "n_inputs": 11,
                "created_at": t + dt.timedelta(hours=rng.uniform(1, 30)),
            }
        )
    return rows


RAW_COLUMNS = [
    "path",
    "filename",
    "checksum",
    "file_size",
    "state",
    "obstype",
    "instrument_id",
    "dateobs",
    "dayobs",
    "exptime_s",
    "filter_name",
    "binning",
    "readout_mode",
    "object_name",
    "attempts",
    "lease_token",
    "ingested_at",
    "updated_at",
]


def raw_frame_chunks(instruments: list[dict], n_frames: int, nights: int, rng: random.Random):
    """Raw-frame rows (dicts) in chunks of 50,000."""
    obstypes = ["EXPOSE"] * 6 + ["BIAS", "DARK", "SKYFLAT"]
    states = ["done"] * 8 + ["pending", "failed"]
    chunk = []
    for k in range(n_frames):
        inst = instruments[k % len(instruments)]
        night = rng.randrange(nights)
        t = START + dt.timedelta(days=night, hours=rng.uniform(0, 14))
        obstype = rng.choice(obstypes)
        name = f"{uuid.uuid4().hex[:12]}-{k:07d}-{obstype[0].lower()}00.fits.fz"
        chunk.append(
            {
                "path": f"/archive/raw/{night}/{name}",
                "filename": name,
                "checksum": uuid.uuid4().hex * 2,
                "file_size": 40_000_000,
                "state": rng.choice(states),
                "obstype": obstype,
                "instrument_id": inst["id"],
                "dateobs": t,
                "dayobs": (t - dt.timedelta(hours=12)).date(),
                "exptime_s": 0.0 if obstype == "BIAS" else 30.0,
                "filter_name": rng.choice(FILTERS),
                "binning": inst["binning"],
                "readout_mode": inst["mode"],
                "object_name": f"target{k % 5000}",
                "attempts": 1,
                "lease_token": 1,
                "ingested_at": t + dt.timedelta(hours=1),
                "updated_at": t + dt.timedelta(hours=2),
            }
        )
        if len(chunk) == 50_000:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _copy_text(rows: list[dict]) -> io.StringIO:
    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join("\\N" if r[c] is None else str(r[c]) for c in RAW_COLUMNS))
        buf.write("\n")
    buf.seek(0)
    return buf


def seed(url: str, args: argparse.Namespace) -> dict:
    backend = sa.engine.make_url(url).get_backend_name()
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    migrate.upgrade(url)
    engine = get_engine(url)
    with get_sessionmaker(url)() as session:
        *instruments, deep = seed_instruments(session, args.instruments)
        masters, nights = master_rows(instruments, args.masters, rng)
        masters += deep_rows(deep, args.deep_years, rng)
        for i in range(0, len(masters), 5000):
            session.execute(sa.insert(MasterCalibration), masters[i : i + 5000])
        session.commit()
    for chunk in raw_frame_chunks(instruments, args.frames, nights, rng):
        if backend == "postgresql":
            raw = engine.raw_connection()
            try:
                with raw.cursor() as cur:
                    cur.copy_expert(
                        f"COPY raw_frames ({', '.join(RAW_COLUMNS)}) FROM STDIN", _copy_text(chunk)
                    )
                raw.commit()
            finally:
                raw.close()
        else:
            with engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA cache_size=-1000000")  # 1 GB: random index keys
                conn.execute(sa.insert(RawFrame), chunk)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE" if backend == "postgresql" else "ANALYZE")
    with engine.connect() as conn:
        n_frames = conn.scalar(sa.select(func.count()).select_from(RawFrame))
        n_masters = conn.scalar(sa.select(func.count()).select_from(MasterCalibration))
    return {
        "instruments": instruments,
        "deep": deep,
        "masters": masters,
        "nights": nights,
        "n_frames": n_frames,
        "n_masters": n_masters,
        "deep_years": args.deep_years,
        "seed_s": time.perf_counter() - t0,
    }


# --- lookups --------------------------------------------------------------------------------
@functools.cache
def _naive_statement(backend: str, flat: bool, with_as_of: bool) -> sa.Select:
    m = MasterCalibration
    t = sa.bindparam("t", type_=sa.DateTime)
    if backend == "postgresql":
        diff = func.abs(func.extract("epoch", m.dateobs - t))
    else:
        diff = func.abs(func.julianday(m.dateobs) - func.julianday(t))
    query = sa.select(m).where(
        m.instrument_id == sa.bindparam("instrument_id"),
        m.obstype == sa.bindparam("obstype"),
        m.binning == sa.bindparam("binning"),
        m.readout_mode == sa.bindparam("readout_mode"),
        m.filter_name == sa.bindparam("filter_name"),
        m.is_bad == sa.false(),
    )
    if with_as_of:
        query = query.where(m.created_at < sa.bindparam("as_of"))
    order = [diff, m.dateobs, m.id.desc()]
    if flat:
        order.insert(0, sa.case((m.dateobs <= t, 0), else_=1))
    return query.order_by(*order).limit(1)


def naive_lookup(session: Session, backend: str, *, obstype, dateobs, as_of=None, **key):
    """The obvious peer: the same filters, order by the absolute time difference, take one.

    Built once with bound parameters like ``select_master``'s, so the two differ only in SQL.
    """
    flat = obstype is CalibrationType.SKYFLAT
    params = {
        "instrument_id": key["instrument_id"],
        "obstype": obstype,
        "binning": key["binning"],
        "readout_mode": key["readout_mode"],
        "filter_name": key["filter_name"] if flat else "",
        "t": dateobs,
    }
    if as_of is not None:
        params["as_of"] = as_of
    statement = _naive_statement(backend, flat, as_of is not None)
    return session.scalars(statement, params).first()


def make_cases(info: dict, n: int, rng: random.Random) -> dict[str, list[dict]]:
    span = dt.timedelta(days=info["nights"] + 10)
    first = START - dt.timedelta(days=5)
    deep_span = dt.timedelta(days=round(info["deep_years"] * 365.25))
    cases: dict[str, list[dict]] = {}
    for label, obstype in (
        ("bias", CalibrationType.BIAS),
        ("dark", CalibrationType.DARK),
        ("flat", CalibrationType.SKYFLAT),
        ("bias as_of", CalibrationType.BIAS),
        ("bias deep", CalibrationType.BIAS),
    ):
        cases[label] = []
        for _ in range(n):
            if label == "bias deep":
                inst = info["deep"]
                t = START - deep_span * rng.random()
            else:
                inst = rng.choice(info["instruments"])
                t = first + span * rng.random()
            cases[label].append(
                {
                    "obstype": obstype,
                    "instrument_id": inst["id"],
                    "binning": inst["binning"],
                    "readout_mode": inst["mode"],
                    "filter_name": rng.choice(FILTERS),
                    "dateobs": t,
                    "as_of": t + dt.timedelta(days=1) if label.endswith("as_of") else None,
                }
            )
    return cases


def ours(session: Session, case: dict):
    try:
        return select_master(session, **case).master
    except CalibrationNotFoundError:
        return None


def plan_lines(url: str, case: dict) -> list[str]:
    backend = sa.engine.make_url(url).get_backend_name()
    engine = get_engine(url)
    captured = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with get_sessionmaker(url)() as session:
            ours(session, case)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    sql, params = captured[0]
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if backend == "postgresql" else "EXPLAIN QUERY PLAN "
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(prefix + sql, params).all()
    lines = [str(r[-1]) for r in rows]
    keep = ("Index", "Scan", "SEARCH", "SCAN", "Sort", "TEMP", "Execution", "Buffers: shared")
    return [line for line in lines if any(k in line for k in keep)]


def run_lookups(url: str, info: dict, args: argparse.Namespace) -> dict[str, dict]:
    """Time each case through the ORM (what the pipeline pays), then replay the SQL each method
    sent on a bare DBAPI cursor (what the database pays, plus one round trip)."""
    backend = sa.engine.make_url(url).get_backend_name()
    engine = get_engine(url)
    rng = random.Random(args.seed + 1)
    cases = make_cases(info, args.lookups, rng)
    recording: list | None = None

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        if recording is not None and statement.lstrip().upper().startswith(("SELECT", "(")):
            recording.append((statement, parameters))

    results = {}
    event.listen(engine, "before_cursor_execute", record)
    try:
        with get_sessionmaker(url)() as session:
            for case in cases["bias"][:200]:  # warm up caches and the connection
                ours(session, case)
                naive_lookup(session, backend, **case)
            for label, items in cases.items():
                times = {"ours": [], "naive": []}
                sql = {"ours": [], "naive": []}
                disagree = not_found = fallback = 0
                for case in items:
                    order = ["ours", "naive"] if rng.random() < 0.5 else ["naive", "ours"]
                    chosen = {}
                    for method in order:
                        session.expunge_all()
                        recording = []
                        t0 = time.perf_counter()
                        if method == "ours":
                            try:
                                sel = select_master(session, **case)
                                chosen[method] = sel.master.id
                                fallback += sel.fallback_later
                            except CalibrationNotFoundError:
                                chosen[method] = None
                        else:
                            found = naive_lookup(session, backend, **case)
                            chosen[method] = None if found is None else found.id
                        times[method].append((time.perf_counter() - t0) * 1000)
                        sql[method].append(recording[0])  # the lookup, not the error's extras
                        recording = None
                    disagree += chosen["ours"] != chosen["naive"]
                    not_found += chosen["ours"] is None
                results[label] = {
                    "times": times,
                    "sql": sql,
                    "disagree": disagree,
                    "not_found": not_found,
                    "fallback": fallback,
                }
                session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", record)

    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for res in results.values():
            res["sql_times"] = {"ours": [], "naive": []}
            for i in range(len(res["sql"]["ours"])):
                for method in rng.sample(["ours", "naive"], 2):
                    statement, params = res["sql"][method][i]
                    t0 = time.perf_counter()
                    cursor.execute(statement, params)
                    cursor.fetchall()
                    res["sql_times"][method].append((time.perf_counter() - t0) * 1000)
        cursor.close()
        raw.rollback()
    finally:
        raw.close()
    return results


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def report(backend: str, info: dict, results: dict[str, dict], n: int) -> None:
    print(
        f"\n== {backend}: {info['n_frames']:,} raw frames, {info['n_masters']:,} masters, "
        f"{len(info['instruments'])} instruments x {info['nights']} nights "
        f"+ 1 with {info['deep_years']} years of nightly biases ('bias deep'); "
        f"seeded + ANALYZEd in {info['seed_s']:.0f} s; {n} lookups per row"
    )
    print(
        f"{'':<23}{'select_master() (ORM)':^28}{'':4}{'its SQL alone (DBAPI)':^28}\n"
        f"{'lookup':<11} {'method':<6}    {'p50':>8} {'p95':>8} {'max':>8}    "
        f"{'p50':>8} {'p95':>8} {'max':>8}   ms"
    )
    for label, res in results.items():
        stats = {}
        for method in ("ours", "naive"):
            orm, raw = res["times"][method], res["sql_times"][method]
            stats[method] = [_pct(orm, 50), _pct(orm, 95), max(orm)]
            stats[method] += [_pct(raw, 50), _pct(raw, 95), max(raw)]
            print(
                f"{label:<11} {method:<6}    "
                + " ".join(f"{v:8.3f}" for v in stats[method][:3])
                + "    "
                + " ".join(f"{v:8.3f}" for v in stats[method][3:])
            )
        ratio = [naive / ours for naive, ours in zip(stats["naive"], stats["ours"], strict=True)]
        print(
            f"{'':<11} {'ratio':<6}    "
            + " ".join(f"{v:7.1f}x" for v in ratio[:3])
            + "    "
            + " ".join(f"{v:7.1f}x" for v in ratio[3:])
            + f"   naive/ours; disagree={res['disagree']} not_found={res['not_found']}"
            + f" flat_fallback={res['fallback']}"
        )


def bench(url: str, args: argparse.Namespace) -> None:
    backend = sa.engine.make_url(url).get_backend_name()
    try:
        info = seed(url, args)
        print(f"\n{backend}: plan of one lookup (bias):")
        case = make_cases(info, 1, random.Random(7))["bias"][0]
        for line in plan_lines(url, case):
            print("   ", line.strip())
        results = run_lookups(url, info, args)
        report(backend, info, results, args.lookups)
    finally:
        dispose_engines()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--masters", type=int, default=30_000)
    parser.add_argument("--instruments", type=int, default=60)
    parser.add_argument("--lookups", type=int, default=2000, help="per lookup type and method")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", help="a role that may CREATE DATABASE")
    parser.add_argument(
        "--deep-years", type=int, default=10, help="bias history of the extra instrument"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    with tempfile.TemporaryDirectory(prefix="pylcogt-bench-select-") as tmp:
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
            name = f"bench_select_{uuid.uuid4().hex[:8]}"
            try:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
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
