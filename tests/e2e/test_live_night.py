"""A live night, as an archive runs one: tonight's frames arrive in observing order in waves
while two worker processes run (evening biases, darks and flats; then the science frames; then the
morning biases, darks and flats), then the night is closed. On both databases.

What must hold at every moment: no master's content changes under its id; every reduction
names the exact content it was made with (the masters' sha256, in the registry and in the
product's header); the science is reduced as soon as it arrives (provisional), again when the
morning frames make better masters, and becomes final without being redone when the night ends
with nothing new; ``reduce --as-of`` reproduces a provisional product bit for bit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.io.products import read_product
from pylcogt.simulate import simulate_night
from pylcogt.simulate.cameras import SITES

from ..envs import clean_env
from .test_cli import PYLCOGT, run
from .test_worker_cli import _rows

QUIET = "2"  # seconds: a group of tonight is complete 2 s after its last frame
WORKER = ["worker", "--processes", "2", "--quiet-time", QUIET, "--poll", "0.2", "--lease", "30"]


def tonight(site: str = "lsc", now: dt.datetime | None = None) -> dt.date:
    """The night in progress at ``site`` (local noon to local noon, mean solar time)."""
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    local = now + dt.timedelta(hours=SITES[site].lon / 15.0)
    return (local - dt.timedelta(hours=12)).date()


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _waves(raw: Path) -> list[list[Path]]:
    """Tonight's files in three waves, in observing order: the calibrations before the first
    science frame, the science frames, and the calibrations after the last one."""
    frames = []
    for path in sorted(raw.glob("*.fits")):
        header = fits.getheader(path)
        frames.append((header["DATE-OBS"], header["OBSTYPE"], path))
    frames.sort()
    science = [t for t, obstype, _ in frames if obstype == "EXPOSE"]
    first, last = min(science), max(science)
    evening = [p for t, o, p in frames if o != "EXPOSE" and t < first]
    morning = [p for t, o, p in frames if o != "EXPOSE" and t > last]
    assert len(evening) + len(morning) + len(science) == len(frames)
    return [evening, [p for _, o, p in frames if o == "EXPOSE"], morning]


class Service:
    """A worker process running against one registry, and the waves fed to it."""

    def __init__(self, url: str, root: Path, extra: list[str] = ()) -> None:
        self.url, self.root = url, root
        self.config = ["--database-url", url, "--data-dir", str(root / "data")]
        self.proc = subprocess.Popen(
            [*PYLCOGT, *WORKER, *extra, *self.config], cwd=root, env=clean_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.masters_seen: dict[int, str] = {}  # id -> sha256 of its file, when first seen

    def feed(self, files: list[Path], incoming: Path) -> None:
        """Deliver files as an archive does (renamed into place), then register them."""
        for path in files:
            shutil.copy(path, incoming / (path.name + ".part"))
            (incoming / (path.name + ".part")).rename(incoming / path.name)
        run("ingest", *[str(incoming / p.name) for p in files], "-q", *self.config, cwd=self.root)

    def settle(self, what: str, *, timeout: float = 240.0) -> None:
        """Wait until nothing is left to do: no frame pending, processing or ready, no master
        being built or stale, and the registry unchanged over a second."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"the worker died ({self.proc.returncode}) while {what}: {err[-3000:]}")
            busy = _rows(self.url, "SELECT count(*) FROM raw_frames WHERE state IN "
                                   "('pending', 'processing', 'ready')")[0][0]  # fmt: skip
            jobs = _rows(self.url, "SELECT count(*) FROM master_jobs WHERE status = 'stale' OR "
                                   "lease_owner IS NOT NULL")[0][0]  # fmt: skip
            state = _rows(self.url, "SELECT (SELECT count(*) FROM reductions), (SELECT count(*) "
                                    "FROM master_calibrations), (SELECT count(*) FROM reductions "
                                    "WHERE calibration_status = 'final'), (SELECT count(*) FROM "
                                    "master_calibrations WHERE calibration_status = 'final')")
            if busy == 0 and jobs == 0 and state == last:
                self.check_masters_unchanged()
                return
            last = state if busy == 0 and jobs == 0 else None
            time.sleep(1.0)
        pytest.fail(f"the registry did not settle while {what} (busy {busy}, jobs {jobs})")

    def check_masters_unchanged(self) -> None:
        """No master's file changed since its id was first seen, and every file is what the
        registry says."""
        for master_id, path, checksum in _rows(
            self.url, "SELECT id, path, checksum FROM master_calibrations"
        ):
            found = sha256(path)
            assert found == checksum, f"master {master_id}: {path} is not its registered content"
            assert self.masters_seen.setdefault(master_id, found) == found, master_id

    def stop(self) -> str:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def _science(url: str) -> list[tuple]:
    return _rows(url, "SELECT id, filename, path, product_path FROM raw_frames "
                      "WHERE obstype = 'EXPOSE' ORDER BY id")  # fmt: skip


def _current_masters(url: str) -> dict[int, dict[str, tuple]]:
    """frame id -> role -> (master id, checksum recorded, master standing)."""
    out: dict[int, dict[str, tuple]] = {}
    for frame_id, role, master_id, checksum, superseded, status in _rows(
        url, "SELECT r.frame_id, rm.role, rm.master_id, rm.master_checksum, m.superseded_at, "
             "m.calibration_status FROM reductions r JOIN reduction_masters rm ON "
             "rm.reduction_id = r.id JOIN master_calibrations m ON m.id = rm.master_id "
             "WHERE r.status = 'current'"
    ):  # fmt: skip
        out.setdefault(frame_id, {})[role] = (master_id, checksum,
                                              "superseded" if superseded else status)
    return out


def _check_provenance_is_true(url: str) -> None:
    """Every reduction (current or earlier) names its masters' exact content, and the current
    product's header names the same files and checksums; kept products are what was recorded."""
    cards = {"bias": "L1CKBIAS", "dark": "L1CKDARK", "flat": "L1CKFLAT", "bpm": "L1CKMASK"}
    for rid, status, product, product_checksum, kept, role, recorded, path in _rows(
        url, "SELECT r.id, r.status, r.product_path, r.product_checksum, r.kept_path, rm.role, "
             "rm.master_checksum, m.path FROM reductions r JOIN reduction_masters rm ON "
             "rm.reduction_id = r.id JOIN master_calibrations m ON m.id = rm.master_id"
    ):  # fmt: skip
        assert sha256(path) == recorded, f"reduction {rid}: {role} master is not what was used"
        if status == "current":
            assert sha256(product) == product_checksum, f"reduction {rid}: product changed"
            header = fits.getheader(product, "SCI")
            assert header[cards[role]] == recorded
            assert Path(header[f"L1ID{cards[role][4:]}"]).name == Path(path).name
        elif kept:
            assert sha256(kept) == product_checksum, f"reduction {rid}: kept product changed"


@pytest.mark.slow
def test_a_live_night_keeps_its_provenance_true(db_url: str, tmp_path: Path) -> None:
    night = tonight()
    raw = tmp_path / "night"
    simulate_night(raw, camera="sbig", size=256, n_bias=5, n_dark=3, n_flat=3, n_science=3,
                   filters=("rp",), dayobs=night.strftime("%Y%m%d"), seed=7)  # fmt: skip
    evening, science, morning = _waves(raw)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    service = Service(db_url, tmp_path, ["--keep-products"])
    try:
        # --- wave 1: the evening calibrations -> provisional masters
        service.feed(evening, incoming)
        service.settle("building the evening masters")
        masters = _rows(db_url, "SELECT obstype, version, calibration_status, superseded_at "
                                "FROM master_calibrations ORDER BY id")  # fmt: skip
        assert sorted(m[0] for m in masters) == ["BIAS", "BPM", "DARK", "SKYFLAT"]
        assert {(m[1], m[2], m[3]) for m in masters} == {(1, "provisional", None)}

        # --- wave 2: the science frames -> reduced at once, provisionally
        service.feed(science, incoming)
        service.settle("reducing the science frames")
        frames = _science(db_url)
        assert len(frames) == len(science) == 3
        first = _rows(db_url, "SELECT frame_id, id, finished_at, calibration_status, reason "
                              "FROM reductions ORDER BY id")  # fmt: skip
        assert [(r[3], r[4]) for r in first] == [("provisional", "first reduction")] * 3
        for _, _, _, product in frames:
            assert fits.getheader(product, "SCI")["L1CALST"] == "provisional"
        provisional_masters = {m[0] for ms in _current_masters(db_url).values()
                               for m in ms.values()}  # fmt: skip

        # --- wave 3: the morning calibrations -> new masters supersede; science redone
        service.feed(morning, incoming)
        service.settle("rebuilding with the morning frames")
        rows = _rows(db_url, "SELECT id, obstype, version, calibration_status, superseded_at, "
                             "superseded_by_id, is_bad FROM master_calibrations ORDER BY id")
        old = {r[0]: r for r in rows if r[0] in provisional_masters}
        # every evening master was replaced (the morning frames joined every group; a dark's
        # and a flat's preparation changed with the bias; the mask with the dark and flats),
        # marked superseded, not bad, and linked to its successor
        assert all(r[4] is not None and r[5] is not None and not r[6] for r in old.values())
        current = [r for r in rows if r[4] is None]
        assert sorted(r[1] for r in current) == ["BIAS", "BPM", "DARK", "SKYFLAT"]
        assert all(r[2] == 2 and r[3] == "provisional" for r in current), current
        links = _current_masters(db_url)
        assert len(links) == 3
        for frame_id, roles in links.items():
            assert set(roles) == {"bias", "dark", "flat", "bpm"}
            assert {standing for _, _, standing in roles.values()} == {"provisional"}, frame_id
        redone = _rows(db_url, "SELECT frame_id, count(*) FROM reductions GROUP BY frame_id")
        assert [n for _, n in redone] == [2, 2, 2], "each frame reduced once more, not per master"
        for (why,) in _rows(db_url, "SELECT reason FROM reductions WHERE status = 'current'"):
            # one re-reduction, once every master had been rebuilt: each change is named
            assert why.startswith("better calibration: ") and why.count(" -> ") == 4, why

        # --- the night ends with nothing new: everything final, nothing redone
        before = _rows(db_url, "SELECT (SELECT count(*) FROM reductions), "
                               "(SELECT count(*) FROM master_calibrations)")  # fmt: skip
        closed = json.loads(run("night", "close", night.strftime("%Y%m%d"), "--json",
                                *service.config, cwd=tmp_path).stdout)  # fmt: skip
        assert [c["newly_closed"] for c in closed] == [True]
        service.settle("finalizing the night")
        after = _rows(db_url, "SELECT (SELECT count(*) FROM reductions), "
                              "(SELECT count(*) FROM master_calibrations)")  # fmt: skip
        assert after == before, "the final build of unchanged groups redid nothing"
        statuses = _rows(db_url, "SELECT DISTINCT calibration_status FROM master_calibrations "
                                 "WHERE superseded_at IS NULL")  # fmt: skip
        assert statuses == [("final",)]
        finals = _rows(db_url, "SELECT calibration_status, count(*) FROM reductions WHERE "
                               "status = 'current' GROUP BY 1")  # fmt: skip
        assert finals == [("final", 3)], "every frame of the night is final"
        _check_provenance_is_true(db_url)
    finally:
        stderr = service.stop()
    assert "Traceback" not in stderr, stderr[-3000:]

    # --- as of just after the first reductions: the provisional product, bit for bit
    frame_id, reduction_id, finished, _, _ = first[0]
    (kept, recorded, raw_path), = _rows(
        db_url, "SELECT r.kept_path, r.product_checksum, f.path FROM reductions r JOIN "
                "raw_frames f ON f.id = r.frame_id WHERE r.id = :id", id=reduction_id)  # fmt: skip
    assert kept and sha256(kept) == recorded, "the superseded product was kept as recorded"
    as_of = finished if isinstance(finished, str) else finished.isoformat()
    out = json.loads(run("reduce", raw_path, "--as-of", as_of, "--output-dir",
                         str(tmp_path / "again"), "--json", *service.config,
                         cwd=tmp_path).stdout)  # fmt: skip
    (again,) = out
    assert again["recorded"] is False and again["calibration_status"] == "provisional"
    was, now = read_product(Path(kept)), read_product(Path(again["product"]))
    for plane in ("sci", "err", "bpm"):
        assert np.array_equal(getattr(was, plane), getattr(now, plane)), plane
    # and the reproduction recorded nothing
    assert _rows(db_url, "SELECT count(*) FROM reductions")[0][0] == after[0][0]
    text = run("provenance", str(frame_id), "--history", *service.config, cwd=tmp_path).stdout
    assert "reduction" in text and "(current, final)" in text and "(superseded, provisional)"
    assert "replaced" in text and "better calibration" in text and "sha256" in text


@pytest.mark.slow
def test_science_is_reduced_at_once_with_last_nights_masters(db_url: str, tmp_path: Path) -> None:
    """Tonight's groups in their quiet time do not hold the science back: it is reduced with last
    night's (final) masters at once, provisionally, and again with tonight's when they exist."""
    night = tonight()
    yesterday = night - dt.timedelta(days=1)
    config = ["--database-url", db_url, "--data-dir", str(tmp_path / "data")]
    simulate_night(tmp_path / "last", camera="sbig", size=128, n_bias=3, n_dark=2, n_flat=2,
                   n_science=1, filters=("rp",), dayobs=yesterday.strftime("%Y%m%d"))  # fmt: skip
    run("ingest", str(tmp_path / "last"), "-q", *config, cwd=tmp_path)
    run("worker", "--until-idle", "--quiet-time", "0", "-q", *config, cwd=tmp_path)
    last_night = {r[0] for r in _rows(db_url, "SELECT id FROM master_calibrations")}
    assert _rows(db_url, "SELECT DISTINCT calibration_status FROM master_calibrations") == [
        ("final",)]  # a night over: final at once

    simulate_night(tmp_path / "tonight", camera="sbig", size=128, n_bias=3, n_dark=2,
                   n_flat=2, n_science=2, filters=("rp",), dayobs=night.strftime("%Y%m%d"),
                   seed=5)  # fmt: skip
    worker = subprocess.Popen(
        [*PYLCOGT, "worker", "--quiet-time", "3600", "--poll", "0.2", *config], cwd=tmp_path,
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        started = time.monotonic()
        run("ingest", str(tmp_path / "tonight"), "-q", *config, cwd=tmp_path)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = _rows(db_url, "SELECT count(*) FROM reductions r JOIN raw_frames f ON "
                                 "f.id = r.frame_id WHERE f.dayobs = :night",
                         night=night)[0][0]  # fmt: skip
            if done == 2:
                break
            time.sleep(0.5)
        waited = time.monotonic() - started
        assert done == 2, "tonight's science was held back by tonight's quiet time"
        assert waited < 60  # not the hour of quiet time
        links = _current_masters(db_url)
        tonight_frames = {r[0] for r in _rows(db_url, "SELECT id FROM raw_frames WHERE "
                                                      "obstype = 'EXPOSE' AND dayobs = :night",
                                              night=night)}  # fmt: skip
        for frame_id in tonight_frames:
            used = {m[0] for m in links[frame_id].values()}
            assert used <= last_night, "reduced with last night's masters"
        assert _rows(db_url, "SELECT DISTINCT r.calibration_status FROM reductions r JOIN "
                             "raw_frames f ON f.id = r.frame_id WHERE f.dayobs = :night",
                     night=night) == [("provisional",)]  # fmt: skip
        # the night is declared over: its groups are complete, final masters are built and the
        # science is reduced again with them
        run("night", "close", night.strftime("%Y%m%d"), "-q", *config, cwd=tmp_path)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            finals = _rows(db_url, "SELECT count(*) FROM reductions r JOIN raw_frames f ON "
                                   "f.id = r.frame_id WHERE f.dayobs = :night AND r.status = "
                                   "'current' AND r.calibration_status = 'final'",
                           night=night)[0][0]  # fmt: skip
            if finals == 2:
                break
            time.sleep(0.5)
        assert finals == 2
        links = _current_masters(db_url)
        for frame_id in tonight_frames:
            used = {m[0] for m in links[frame_id].values()}
            assert not used & last_night, "reduced again with tonight's final masters"
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert "Traceback" not in err, err[-3000:]
