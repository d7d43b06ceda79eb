"""`pylcogt worker` as operators run it: real processes on real databases, really killed.

- many workers (4 processes) on PostgreSQL over a few hundred frames: every frame claimed and
  processed exactly once, every master built once;
- a worker SIGKILLed mid-frame: the frame is taken over once its lease expires, nothing doubled;
- SIGTERM: the frame in progress is released and the worker exits cleanly;
- a worker SIGKILLed mid-build: the next worker removes its spill folder and temporary file;
- the worker's PostgreSQL connections terminated again and again: it carries on.

A "slow" worker is the real CLI with :func:`pylcogt.reduce.reduce_frame` wrapped in a sleep
(:data:`SLOW_DRIVER`), so that a test can act while it is mid-frame.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from pylcogt.simulate import simulate_night

from ..envs import clean_env
from .test_cli import PYLCOGT, run

SLOW_DRIVER = """\
import os, sys, time
import pylcogt.reduce as reduce_module
real = reduce_module.reduce_frame
def slow(*args, **kwargs):
    time.sleep(float(os.environ["SLOW_REDUCE_S"]))
    return real(*args, **kwargs)
reduce_module.reduce_frame = slow
from pylcogt.cli import main
sys.exit(main(sys.argv[1:]))
"""
#: The real CLI, stopped for good (until SIGKILLed) at a chosen point of a master build:
#: BLOCK_AT=spill after the first frame is spilled (its spill folder on disk), BLOCK_AT=write
#: once a master's temporary file is written, before it is renamed.
BLOCKING_DRIVER = """\
import os, sys, time
from pathlib import Path
def block(what):
    Path(os.environ["BLOCK_MARK"]).write_text(what)
    time.sleep(600)
if os.environ["BLOCK_AT"] == "spill":
    import pylcogt.io.spill as spill
    real_save = spill.SpillDir.save
    def save(self, key, frame):
        real_save(self, key, frame)
        block(str(self.path))
    spill.SpillDir.save = save
else:
    real_fsync = os.fsync
    def fsync(fd):
        real_fsync(fd)
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name.endswith(".tmp"):
            block(name)
    os.fsync = fsync
from pylcogt.cli import main
sys.exit(main(sys.argv[1:]))
"""
FAST = ["--quiet-time", "0", "--poll", "0.1"]


def _night(out: Path, *, dayobs: str = "20261120", site: str = "lsc", n_science: int = 2) -> Path:
    simulate_night(out, camera="sbig", size=128, n_bias=3, n_dark=2, n_flat=2,
                   n_science=n_science, dayobs=dayobs, site=site)  # fmt: skip
    return out


def _env() -> dict[str, str]:
    return clean_env()


def _config(url: str, tmp_path: Path) -> list[str]:
    return ["--database-url", url, "--data-dir", str(tmp_path / "data")]


def _start(args: list[str], tmp_path: Path, *, slow_s: float | None = None,
           block_at: str | None = None) -> subprocess.Popen:  # fmt: skip
    command = [*PYLCOGT, *args]
    env = _env()
    if slow_s is not None:
        command = [sys.executable, "-c", SLOW_DRIVER, *args]
        env["SLOW_REDUCE_S"] = str(slow_s)
    if block_at is not None:
        command = [sys.executable, "-c", BLOCKING_DRIVER, *args]
        env.update(BLOCK_AT=block_at, BLOCK_MARK=str(tmp_path / f"blocked-{block_at}"))
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for(condition, *, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _rows(url: str, sql: str, **params) -> list:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def _processing_science(url: str, pid: int) -> list:
    return _rows(
        url,
        "SELECT id, lease_token FROM raw_frames WHERE state = 'processing' "
        "AND obstype = 'EXPOSE' AND lease_owner LIKE :owner",
        owner=f"%:{pid}",
    )


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """A fresh PostgreSQL database (the conftest fixture, under this module's name)."""
    return postgres_url


def test_worker_help_documents_the_service(tmp_path: Path) -> None:
    out = run("worker", "--help", cwd=tmp_path).stdout
    for text in ("--until-idle", "--processes", "--quiet-time", "--lease", "--json", "SIGTERM"):
        assert text in out
    assert "worker" in run("--help", cwd=tmp_path).stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_many_workers_process_every_frame_once_and_build_every_master_once(
    pg_url: str, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    nights = [
        (site, day) for site in ("lsc", "coj") for day in ("20261118", "20261119", "20261120")
    ]
    for site, day in nights:
        _night(raw / f"{site}-{day}", dayobs=day, site=site, n_science=12)
    config = _config(pg_url, tmp_path)
    ingested = json.loads(run("ingest", str(raw), "--json", *config, cwd=tmp_path).stdout)
    n_frames = ingested["summary"]["new"]
    assert n_frames == len(nights) * (6 + 4 + 8 + 24) == 252
    out = run("worker", "--until-idle", "--processes", "4", "--json", *FAST, *config,
              cwd=tmp_path)  # fmt: skip
    summary = json.loads(out.stdout)
    assert summary["processes"] == 4 and summary["errors"] == []
    assert summary["processed"] == n_frames, "each frame processed exactly once"
    assert summary["masters_built"] == len(nights) * 5  # bias, dark, 2 flats, bad-pixel mask
    assert summary["registry"] == {"done": n_frames}
    assert summary["failed"] == summary["waiting"] == summary["lost_lease"] == 0
    owners = Counter(line.split(" started")[0] for line in out.stderr.splitlines()
                     if "worker " in line and " started" in line)  # fmt: skip
    assert len(owners) == 4, out.stderr[-2000:]
    tokens = _rows(pg_url, "SELECT lease_token, count(*) FROM raw_frames GROUP BY lease_token")
    assert tokens == [(1, n_frames)], "each frame claimed exactly once"
    groups = _rows(
        pg_url,
        "SELECT instrument_id, dayobs, obstype, filter_name, count(*) FROM master_calibrations "
        "GROUP BY instrument_id, dayobs, obstype, filter_name",
    )
    assert len(groups) == len(nights) * 5 and {g[-1] for g in groups} == {1}
    jobs = _rows(pg_url, "SELECT status, lease_owner, count(*) FROM master_jobs GROUP BY 1, 2")
    assert jobs == [("built", None, len(nights) * 5)]
    links = _rows(
        pg_url,
        "SELECT f.id, c.role, count(*) FROM raw_frames f JOIN reductions r ON r.frame_id = f.id "
        "JOIN reduction_masters c ON c.reduction_id = r.id WHERE f.obstype = 'EXPOSE' "
        "GROUP BY f.id, c.role",
    )
    roles: dict[int, dict[str, int]] = {}
    for frame_id, role, n in links:
        roles.setdefault(frame_id, {})[role] = n
    assert len(roles) == len(nights) * 24
    # one reduction (nights over: nothing provisional, nothing redone) with bias, dark, flat and
    # the night's bad-pixel mask exactly once each: a science frame is claimable only once its
    # night's mask is derived
    wrong = {frame_id: got for frame_id, got in roles.items()
             if got != {"bias": 1, "dark": 1, "flat": 1, "bpm": 1}}  # fmt: skip
    if wrong:
        masters = _rows(pg_url, "SELECT id, instrument_id, dayobs, obstype, created_at "
                                "FROM master_calibrations ORDER BY created_at")  # fmt: skip
        frames = _rows(pg_url, "SELECT id, instrument_id, dayobs, updated_at FROM raw_frames "
                               "WHERE id = ANY(:ids)", ids=list(wrong))  # fmt: skip
        pytest.fail(f"frames reduced with the wrong masters: {wrong}\n{frames}\n{masters}")


@pytest.mark.slow
@pytest.mark.postgres
def test_a_killed_workers_frame_is_taken_over_after_its_lease(pg_url: str, tmp_path: Path) -> None:
    config = _config(pg_url, tmp_path)
    run("ingest", str(_night(tmp_path / "raw")), "-q", *config, cwd=tmp_path)
    doomed = _start(["worker", "--lease", "2", *FAST, *config], tmp_path, slow_s=120)
    try:
        ((frame_id, token),) = _wait_for(lambda: _processing_science(pg_url, doomed.pid),
                                         what="the slow worker to be mid-frame")  # fmt: skip
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    finally:
        doomed.kill()
        doomed.communicate()
    assert doomed.returncode == -signal.SIGKILL
    out = run("worker", "--until-idle", "--lease", "2", "--json", *FAST, *config, cwd=tmp_path)
    summary = json.loads(out.stdout)
    assert summary["registry"] == {"done": 22}
    ((state, new_token, attempts, error),) = _rows(
        pg_url, "SELECT state, lease_token, attempts, last_error FROM raw_frames WHERE id = :id",
        id=frame_id,
    )  # fmt: skip
    assert (state, new_token, attempts, error) == ("done", token + 1, 1, None)
    assert "[reclaimed]" in out.stderr
    others = _rows(pg_url, "SELECT DISTINCT lease_token FROM raw_frames WHERE id <> :id",
                   id=frame_id)  # fmt: skip
    assert others == [(1,)]
    ((links,),) = _rows(pg_url, "SELECT count(*) FROM reduction_masters c JOIN reductions r "
                                "ON r.id = c.reduction_id WHERE r.frame_id = :id",
                        id=frame_id)  # fmt: skip
    assert links == 4
    ((masters,),) = _rows(pg_url, "SELECT count(*) FROM master_calibrations")
    assert masters == 5


def _kill_when_blocked(worker: subprocess.Popen, mark: Path) -> tuple[Path, str]:
    """SIGKILL ``worker`` once it is blocked (:data:`BLOCKING_DRIVER`); returns the scratch
    entry it was blocked at (still on disk) and its stderr."""
    try:
        _wait_for(lambda: mark.exists() and mark.read_text(), what=f"the worker to reach {mark}")
        entry = Path(mark.read_text())
        assert entry.exists()
        worker.send_signal(signal.SIGKILL)
        _, stderr = worker.communicate(timeout=10)
    finally:
        worker.kill()
    assert worker.returncode == -signal.SIGKILL
    return entry, stderr


@pytest.mark.slow
def test_scratch_files_of_a_killed_worker_are_swept_by_the_next(db_url: str,
                                                               tmp_path: Path) -> None:
    """kill -9 while a master's frames are spilled, then (the next worker) while a master's
    temporary file is written: each following worker removes what the dead one left, and the
    night completes with nothing left over. Both databases."""
    url = db_url
    config = _config(url, tmp_path)
    run("ingest", str(_night(tmp_path / "raw")), "-q", *config, cwd=tmp_path)
    args = ["worker", "--lease", "1", *FAST, *config]
    spill, _ = _kill_when_blocked(_start(args, tmp_path, block_at="spill"),
                                  tmp_path / "blocked-spill")  # fmt: skip
    assert spill.parent == tmp_path / "data" and any(spill.iterdir())
    temp, stderr = _kill_when_blocked(_start(args, tmp_path, block_at="write"),
                                      tmp_path / "blocked-write")  # fmt: skip
    assert not spill.exists(), "the second worker swept the first one's spill folder"
    assert "swept 1 stale scratch entries" in stderr and "/masters/." in str(temp)
    out = run("worker", "--until-idle", "--json", "--lease", "1", *FAST, *config, cwd=tmp_path)
    assert "swept 1 stale scratch entries" in out.stderr
    assert not temp.exists()
    assert json.loads(out.stdout)["registry"] == {"done": 22}
    hidden = [p for p in (tmp_path / "data").rglob(".*")]
    assert hidden == [], "no spill folder or temporary file is left"


@pytest.mark.slow
def test_sigterm_releases_the_frame_and_exits_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    config = _config(url, tmp_path)
    run("ingest", str(_night(tmp_path / "raw")), "-q", *config, cwd=tmp_path)
    worker = _start(["worker", "--shutdown-grace", "0.5", *FAST, *config], tmp_path, slow_s=120)
    try:
        ((frame_id, token),) = _wait_for(lambda: _processing_science(url, worker.pid),
                                         what="the slow worker to be mid-frame")  # fmt: skip
        worker.send_signal(signal.SIGTERM)
        stdout, stderr = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 0, stderr
    assert "releasing" in stderr and "processed" in stdout
    ((state, owner, attempts, new_token),) = _rows(
        url, "SELECT state, lease_owner, attempts, lease_token FROM raw_frames WHERE id = :id",
        id=frame_id,
    )  # fmt: skip
    assert (state, owner, attempts, new_token) == ("pending", None, 0, token)
    # a worker that is not --until-idle runs until told to stop; SIGTERM when idle: clean exit
    service = _start(["worker", "--json", *FAST, *config], tmp_path)
    try:
        _wait_for(lambda: _rows(url, "SELECT count(*) FROM raw_frames WHERE state <> 'done'")
                  == [(0,)], what="the night to be done")  # fmt: skip
        service.send_signal(signal.SIGTERM)
        stdout, stderr = service.communicate(timeout=30)
    finally:
        service.kill()
    assert service.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["registry"] == {"done": 22} and summary["reduced"] == 4


def _worker_children(pid: int) -> list[int]:
    """The ``--processes`` children of ``pid`` (not multiprocessing's resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                command = Path(f"/proc/{child}/cmdline").read_bytes()
                if b"spawn_main" in command and b"resource_tracker" not in command:
                    found.append(int(child))
    return sorted(found)


@pytest.mark.slow
def test_a_dead_worker_process_is_replaced(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    config = _config(url, tmp_path)
    run("db", "upgrade", *config, cwd=tmp_path)
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log_file:
        service = subprocess.Popen([*PYLCOGT, "worker", "--processes", "2", "--json", *FAST,
                                    *config], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                                   stderr=log_file, text=True)  # fmt: skip
    try:

        def two_children():
            children = _worker_children(service.pid)
            return children if len(children) == 2 else None

        first = _wait_for(two_children, what="two worker processes")
        os.kill(first[0], signal.SIGKILL)
        _wait_for(lambda: "starting a replacement" in log_path.read_text(),
                  what="the replacement to be started")  # fmt: skip
        now = _wait_for(two_children, what="two worker processes again")
        assert first[0] not in now and first[1] in now
        # the replacement works: a night ingested now is processed completely
        run("ingest", str(_night(tmp_path / "raw")), "-q", *config, cwd=tmp_path)
        _wait_for(lambda: _rows(url, "SELECT count(*) FROM raw_frames WHERE state <> 'done'")
                  == [(0,)], timeout=120, what="the night to be done")  # fmt: skip
        service.send_signal(signal.SIGTERM)
        stdout, _ = service.communicate(timeout=60)
    finally:
        service.kill()
    stderr = log_path.read_text()
    summary = json.loads(stdout)
    assert service.returncode == 1, stderr  # a process died: reported, not hidden
    assert summary["registry"] == {"done": 22}
    restarted = [e for e in summary["errors"] if "restarted" in e]
    assert len(restarted) == 1
    assert f"(pid {first[0]}) died with status -9; restarted" in restarted[0]


@pytest.mark.slow
@pytest.mark.postgres
def test_dropped_database_connections_are_survived(
    pg_url: str, tmp_path: Path, _postgres_admin_engine: sa.Engine
) -> None:
    config = _config(pg_url, tmp_path)
    run("ingest", str(_night(tmp_path / "raw", n_science=4)), "-q", *config, cwd=tmp_path)
    database = sa.engine.make_url(pg_url).database
    worker = _start(["worker", "--until-idle", "--json", "--lease", "2", "--retry-delay", "0.2",
                     "--max-attempts", "50", *FAST, *config], tmp_path, slow_s=0.4)  # fmt: skip
    terminated = 0
    try:
        _wait_for(lambda: _rows(pg_url, "SELECT count(*) FROM raw_frames WHERE state <> 'pending'")
                  != [(0,)], what="the worker to start")  # fmt: skip
        deadline = time.monotonic() + 60  # until the worker is done
        while worker.poll() is None and time.monotonic() < deadline:
            with _postgres_admin_engine.connect() as conn:
                terminated += len(conn.execute(sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database},
                ).all())  # fmt: skip
            time.sleep(0.3)
        stdout, stderr = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert terminated >= 3
    noticed = ("server closed the connection", "terminating connection", "connection already")
    assert any(text in stderr for text in noticed), stderr[-3000:]
    assert worker.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["registry"] == {"done": 26}, stderr[-3000:]
    assert summary["reduced"] == 8
    ((masters,),) = _rows(pg_url, "SELECT count(*) FROM master_calibrations")
    assert masters == 5
