"""Live latency: a night's frames dropped into a watched directory while the service runs.

What the archive cares about: the time from a science frame's arrival (the file renamed into
the watched directory) to its registered product (its first reduction recorded). The service
runs as in production: ``pylcogt ingest --watch DIR`` and ``pylcogt worker --processes N`` (two
by default, on a two-core machine), on a registry that already holds last night's final masters.

Tonight's frames (simulated, full size by default: 4096x4096 Sinistro, fpacked) arrive in
observing order: the evening biases, darks and flats every ``--cal-cadence`` seconds, then the
science frames every ``--cadence`` seconds, then the morning calibrations; the benchmark waits
until everything is settled, and (``--close``) closes the night and waits for it to be final.
The science frames are reduced at once (provisionally: last night's masters, or tonight's once
their group's ``--quiet-time`` has passed) and again when better masters arrive, which costs
worker time while new frames keep arriving: the benchmark reports both.

Printed per run (astrometry ``off``: ``PYLCOGT_INDEX_DIR=none``; ``on``: a wide field the
Tycho-2 index files solve, 2"/px over 2.3 deg, so that every frame is really solved):

- latency (arrival -> first product): median, 90th percentile and worst, and against the goal
  (<= 30 s) and BANZAI's published "< 10 minutes" to the archive;
- the same to the final product, and the reduction's own time (worker seconds per frame);
- re-reductions: per frame, and the extra worker time they cost (their share of all reduction
  time);
- peak memory of the worker processes and of the watcher.

    python benchmarks/bench_live.py [--size 4096] [--science 12] [--cadence 30]
        [--cal-cadence 3] [--quiet-time 60] [--processes 2] [--astrometry off,on] [--close]
        [--database-url URL] [--work DIR] [--json]

No peer runs side by side: the live path has none installable here (BANZAI needs its message
broker and services); its published figure is printed as the reference, and the batch path
(the same night ingested after the fact, ``worker --until-idle``) as the in-house baseline of
the same work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
PYLCOGT = [sys.executable, "-m", "pylcogt"]
TYCHO_10_19 = [f"index-tycho2-{n}" for n in range(10, 20)]


def tonight(lon_deg: float) -> dt.date:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    return (now + dt.timedelta(hours=lon_deg / 15.0) - dt.timedelta(hours=12)).date()


def index_dir(work: Path) -> Path:
    """The Tycho-2 index files of scales 10-19 only (what the tests use), linked."""
    directory = work / "index-10-19"
    directory.mkdir(exist_ok=True)
    for path in sorted(Path("/usr/share/astrometry").glob("index-tycho2-*.fits")):
        if any(path.name.startswith(stem) for stem in TYCHO_10_19):
            link = directory / path.name
            if not link.exists():
                link.symlink_to(path)
    return directory


def simulate(work: Path, args, astrometry: str, night: dt.date) -> tuple[Path, Path]:
    """Last night and tonight, simulated once per configuration (cached in ``work``)."""
    from pylcogt.simulate import simulate_night

    wide = {"pixscale": 2.0, "stars": "tycho2", "index_dir": index_dir(work)} if (
        astrometry == "on") else {}  # fmt: skip
    tag = f"{args.camera}-{args.size}-{args.science}-{astrometry}-{night:%Y%m%d}"
    out = work / tag
    last, now = out / "last", out / "tonight"
    if not (out / "done").exists():
        shutil.rmtree(out, ignore_errors=True)
        common = {"camera": args.camera, "size": args.size, "filters": ("rp",),
                  "compress": "fz", "n_bias": 5, "n_dark": 3, "n_flat": 3, **wide}  # fmt: skip
        print(f"simulating {tag} (once; cached in {work})", file=sys.stderr)
        simulate_night(last, dayobs=(night - dt.timedelta(days=1)).strftime("%Y%m%d"),
                       n_science=1, seed=3, **common)  # fmt: skip
        simulate_night(now, dayobs=night.strftime("%Y%m%d"), n_science=args.science, seed=4,
                       **common)  # fmt: skip
        (out / "done").touch()
    return last, now


def observing_order(directory: Path) -> list[tuple[str, str, Path]]:
    from astropy.io import fits

    frames = []
    for path in sorted(directory.glob("*.fits*")):
        with fits.open(path) as hdul:
            header = hdul[0].header
            frames.append((header["DATE-OBS"], header["OBSTYPE"], path))
    return sorted(frames)


class Peak:
    """Peak resident memory of a process tree, sampled every 0.5 s (psutil)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                continue

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def rows(url: str, sql: str, **params) -> list:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def settled(url: str) -> bool:
    busy = rows(url, "SELECT count(*) FROM raw_frames WHERE state IN "
                     "('pending', 'processing', 'ready')")[0][0]  # fmt: skip
    jobs = rows(url, "SELECT count(*) FROM master_jobs WHERE status = 'stale' "
                     "OR lease_owner IS NOT NULL")[0][0]  # fmt: skip
    return busy == 0 and jobs == 0


def wait(what: str, condition, timeout: float) -> float:
    started = time.monotonic()
    stable = 0
    while time.monotonic() - started < timeout:
        stable = stable + 1 if condition() else 0
        if stable >= 3:
            return time.monotonic() - started
        time.sleep(1.0)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def _time(value) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def run_once(args, astrometry: str, work: Path) -> dict:
    from pylcogt.simulate.cameras import SITES

    night = tonight(SITES["lsc"].lon)
    last, now = simulate(work, args, astrometry, night)
    run = Path(tempfile.mkdtemp(prefix=f"live-{astrometry}-", dir=work))
    url = args.database_url or f"sqlite:///{run / 'registry.db'}"
    if args.database_url:  # a fresh database each run
        admin = sa.create_engine(args.database_url, isolation_level="AUTOCOMMIT")
        name = f"bench_live_{os.getpid()}_{astrometry}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = sa.make_url(args.database_url).set(database=name).render_as_string(
            hide_password=False)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYLCOGT_DATABASE_URL": url,
           "PYLCOGT_DATA_DIR": str(run / "data"),
           "PYLCOGT_INDEX_DIR": str(index_dir(work)) if astrometry == "on" else "none",
           "PYLCOGT_REFCAT_BRIGHT_MAG": "none"}  # fmt: skip

    def cli(*command: str) -> str:
        return subprocess.run([*PYLCOGT, *command], env=env, cwd=run, check=True,
                              capture_output=True, text=True).stdout  # fmt: skip

    # last night, batch: its masters are final (a night over) and its science reduced
    started = time.monotonic()
    cli("ingest", str(last), "-q")
    cli("worker", "--until-idle", "--quiet-time", "0", "--processes", str(args.processes), "-q")
    batch_s = time.monotonic() - started
    last_frames = len(list(last.glob("*.fits*")))

    incoming = run / "incoming"
    incoming.mkdir()
    log = open(run / "service.log", "w")  # noqa: SIM115 - open for the services' lifetime
    watcher = subprocess.Popen([*PYLCOGT, "ingest", "--watch", str(incoming), "--interval", "1",
                                "--settle", "1", "-q"], env=env, cwd=run, stderr=log)  # fmt: skip
    worker = subprocess.Popen([*PYLCOGT, "worker", "--processes", str(args.processes),
                               "--quiet-time", str(args.quiet_time), "--poll", "0.5"],
                              env=env, cwd=run, stdout=log, stderr=log)  # fmt: skip
    peaks = Peak(worker.pid), Peak(watcher.pid)
    arrivals: dict[str, dt.datetime] = {}
    frames = observing_order(now)
    science = [p for _, o, p in frames if o == "EXPOSE"]
    first_science = min(t for t, o, _ in frames if o == "EXPOSE")
    try:
        for _, obstype, path in frames:
            cadence = args.cadence if obstype == "EXPOSE" else args.cal_cadence
            part = incoming / (path.name + ".part")
            shutil.copy(path, part)
            part.rename(incoming / path.name)
            arrivals[path.name] = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
            print(f"  {dt.datetime.now():%H:%M:%S} delivered {path.name}", file=sys.stderr)
            time.sleep(cadence)
        wait("tonight's frames to be processed", lambda: len(rows(
            url, "SELECT id FROM raw_frames WHERE dayobs = :n", n=night)) == len(frames)
            and settled(url), args.timeout)  # fmt: skip
        closed_s = None
        if args.close:
            tick = time.monotonic()
            cli("night", "close", night.strftime("%Y%m%d"), "-q")
            wait("the night to be final", lambda: settled(url) and rows(
                url, "SELECT count(*) FROM reductions r JOIN raw_frames f ON f.id = r.frame_id "
                     "WHERE f.dayobs = :n AND r.status = 'current' AND r.calibration_status = "
                     "'provisional'", n=night)[0][0] == 0, args.timeout)  # fmt: skip
            closed_s = time.monotonic() - tick
    finally:
        for proc in (watcher, worker):
            proc.send_signal(signal.SIGTERM)
        for proc in (watcher, worker):
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        worker_mib, watcher_mib = (p.stop() for p in peaks)
        log.close()

    reductions = rows(url, "SELECT f.filename, r.id, r.status, r.calibration_status, "
                           "r.started_at, r.finished_at, r.reason FROM reductions r JOIN "
                           "raw_frames f ON f.id = r.frame_id WHERE f.dayobs = :n ORDER BY r.id",
                      n=night)  # fmt: skip
    by_frame: dict[str, list] = {}
    for row in reductions:
        by_frame.setdefault(row[0], []).append(row)
    first_latency, final_latency, work_s, redo_s = [], [], [], 0.0
    for name, rs in by_frame.items():
        arrived = arrivals[name]
        first_latency.append((_time(rs[0][5]) - arrived).total_seconds())
        final_latency.append((_time(rs[-1][5]) - arrived).total_seconds())
        for k, r in enumerate(rs):
            seconds = (_time(r[5]) - _time(r[4])).total_seconds()
            work_s.append(seconds)
            if k:
                redo_s += seconds
    masters = rows(url, "SELECT obstype, version, calibration_status, superseded_at IS NOT NULL "
                        "FROM master_calibrations WHERE dayobs = :n", n=night)  # fmt: skip
    n = len(science)
    q = (statistics.quantiles(first_latency, n=10, method="inclusive")
         if len(first_latency) > 1 else first_latency)

    # the batch baseline: the same night after the fact, on a fresh registry
    batch = run / "batch"
    benv = {**env, "PYLCOGT_DATABASE_URL": f"sqlite:///{batch / 'registry.db'}",
            "PYLCOGT_DATA_DIR": str(batch / "data")}  # fmt: skip
    batch.mkdir()
    tick = time.monotonic()
    for directory in (last, now):
        subprocess.run([*PYLCOGT, "ingest", str(directory), "-q"], env=benv, cwd=batch,
                       check=True, capture_output=True)  # fmt: skip
    subprocess.run([*PYLCOGT, "worker", "--until-idle", "--quiet-time", "0", "--processes",
                    str(args.processes), "-q"], env=benv, cwd=batch, check=True,
                   capture_output=True)  # fmt: skip
    batch_night_s = time.monotonic() - tick
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)
    return {
        "astrometry": astrometry, "frames": len(frames), "science": n,
        "arrival_span_s": (max(arrivals.values()) - min(arrivals.values())).total_seconds(),
        "latency_first_s": {"median": statistics.median(first_latency), "p90": q[-1],
                            "worst": max(first_latency)},
        "latency_final_s": {"median": statistics.median(final_latency),
                            "worst": max(final_latency)},
        "reduction_s": {"median": statistics.median(work_s), "worst": max(work_s)},
        "reductions_per_frame": len(reductions) / n,
        "rereduction_worker_s": redo_s, "reduction_worker_s": sum(work_s),
        "masters_tonight": len(masters),
        "masters_superseded": sum(1 for m in masters if m[3]),
        "close_to_final_s": closed_s, "worker_peak_mib": worker_mib,
        "watcher_peak_mib": watcher_mib, "last_night_batch_s": batch_s,
        "last_night_frames": last_frames, "batch_both_nights_s": batch_night_s,
        "first_science_dateobs": first_science,
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--camera", default="sinistro", choices=["sinistro", "sbig", "spectral"])
    p.add_argument("--science", type=int, default=12, help="science frames tonight")
    p.add_argument("--cadence", type=float, default=30.0, help="seconds between science frames")
    p.add_argument("--cal-cadence", type=float, default=3.0,
                   help="seconds between calibration frames")  # fmt: skip
    p.add_argument("--quiet-time", type=float, default=60.0)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--astrometry", default="off,on")
    p.add_argument("--close", action="store_true", help="close the night, time to final")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--database-url", help="PostgreSQL role that may CREATE DATABASE")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "pylcogt-bench-live"))
    p.add_argument("--keep", action="store_true", help="keep each run's registry and products")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = [run_once(args, mode.strip(), work) for mode in args.astrometry.split(",")]
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0
    print(f"live latency: {args.camera} {args.size}x{args.size}, {args.science} science frames "
          f"every {args.cadence:g} s, calibrations every {args.cal_cadence:g} s, quiet time "
          f"{args.quiet_time:g} s, {args.processes} worker processes + ingest --watch")
    for r in results:
        first, final = r["latency_first_s"], r["latency_final_s"]
        print(f"\nastrometry {r['astrometry']}: {r['frames']} frames over "
              f"{r['arrival_span_s']:.0f} s")
        print(f"  arrival -> first product  median {first['median']:6.1f} s  p90 "
              f"{first['p90']:6.1f} s  worst {first['worst']:6.1f} s   goal <= 30 s: "
              f"{'met' if first['worst'] <= 30 else 'NOT met'}; BANZAI: < 600 s")
        print(f"  arrival -> final product  median {final['median']:6.1f} s  worst "
              f"{final['worst']:6.1f} s")
        print(f"  one reduction (worker)    median {r['reduction_s']['median']:6.1f} s  worst "
              f"{r['reduction_s']['worst']:6.1f} s")
        share = r["rereduction_worker_s"] / r["reduction_worker_s"] if r[
            "reduction_worker_s"] else 0  # fmt: skip
        print(f"  reductions per frame {r['reductions_per_frame']:.2f}; re-reductions cost "
              f"{r['rereduction_worker_s']:.0f} s of {r['reduction_worker_s']:.0f} s of "
              f"reduction ({share:.0%}); tonight's masters {r['masters_tonight']} "
              f"({r['masters_superseded']} superseded)")
        if r["close_to_final_s"] is not None:
            print(f"  night closed -> every reduction final: {r['close_to_final_s']:.0f} s")
        print(f"  peak RSS: workers {r['worker_peak_mib']:.0f} MiB, watcher "
              f"{r['watcher_peak_mib']:.0f} MiB")
        print(f"  batch baseline (both nights after the fact, --until-idle): "
              f"{r['batch_both_nights_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
