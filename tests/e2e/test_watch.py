"""`pylcogt ingest --watch` as an archive runs it: a real subprocess polling a real directory."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from ..envs import clean_env
from ..fitsmaker import write_frame
from .test_cli import PYLCOGT, run

SETTLE = 1.0


class Watch:
    """The watcher subprocess and its JSON lines, read by a thread as they come."""

    def __init__(self, directory: Path, cwd: Path) -> None:
        env = clean_env()
        self.proc = subprocess.Popen(
            [*PYLCOGT, "ingest", "--watch", str(directory), "--interval", "0.2",
             "--settle", str(SETTLE), "--json"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def drain(self) -> list[dict]:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return self.seen

    def wait_for(self, name: str, timeout: float = 8.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.drain():
                if Path(item["path"]).name == name:
                    return item
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"{name} not ingested; stderr:\n{self.proc.communicate()[1]}")


def test_watch_takes_complete_files_only_and_stops_on_sigterm(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "night").mkdir(parents=True)
    watch = Watch(inbox, tmp_path)
    try:
        # a complete file dropped in (atomically, as an archive should) is ingested
        write_frame(tmp_path / "staged.fits", INSTRUME="kb78")
        os.replace(tmp_path / "staged.fits", inbox / "night" / "a-b00.fits")
        first = watch.wait_for("a-b00.fits")
        assert first["status"] == "new" and first["state"] == "pending"

        # a file written slowly, in chunks closer together than the settle time
        source = write_frame(tmp_path / "slow-source.fits", DATE_OBS="2026-11-28T21:05:00")
        data = source.read_bytes()
        target = inbox / "night" / "slow-b01.fits"
        chunk = len(data) // 6 + 1
        with open(target, "wb") as out:
            for i in range(0, len(data), chunk):
                out.write(data[i : i + chunk])
                out.flush()
                time.sleep(SETTLE * 0.4)
                names = [Path(item["path"]).name for item in watch.drain()]
                assert "slow-b01.fits" not in names, "taken while still being written"
        slow = watch.wait_for("slow-b01.fits")
        assert slow["status"] == "new" and slow["reason"] is None

        # a corrupt file is rejected, once it has settled
        (inbox / "bad-b02.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 100)
        bad = watch.wait_for("bad-b02.fits")
        assert bad["status"] == "rejected" and bad["reason"]

        # not FITS-named: ignored
        (inbox / "notes.txt").write_text("hello")
        time.sleep(SETTLE + 0.5)
        assert len(watch.drain()) == 3
    finally:
        if watch.proc.poll() is None:
            watch.proc.send_signal(signal.SIGTERM)
        stdout, stderr = watch.proc.communicate(timeout=15)
    assert watch.proc.returncode == 0, stderr
    assert "slow-b01.fits" in stderr and "rejected" in stderr

    frames = json.loads(run("frames", "list", "--json", cwd=tmp_path).stdout)
    states = {Path(f["path"]).name: f["state"] for f in frames}
    assert states == {"a-b00.fits": "pending", "slow-b01.fits": "pending",
                      "bad-b02.fits": "rejected"}  # fmt: skip


def test_a_restarted_watcher_skips_what_is_registered(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_frame(inbox / "a-b00.fits")
    run("ingest", str(inbox), cwd=tmp_path)
    watch = Watch(inbox, tmp_path)
    try:
        write_frame(inbox / "b-b01.fits", DATE_OBS="2026-11-28T21:05:00")
        assert watch.wait_for("b-b01.fits")["status"] == "new"
        time.sleep(SETTLE)
        assert [Path(i["path"]).name for i in watch.drain()] == ["b-b01.fits"]
    finally:
        watch.proc.send_signal(signal.SIGINT)
        watch.proc.communicate(timeout=15)
    assert watch.proc.returncode == 0


def test_watch_needs_a_directory(tmp_path: Path) -> None:
    proc = run("ingest", "--watch", str(tmp_path / "nope"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "directory" in proc.stderr
    proc = run("ingest", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--watch" in proc.stderr


def test_the_watcher_goes_on_past_bad_files_and_second_copies(tmp_path: Path) -> None:
    """A hostile header value and a second copy of an exposure are rejected, each with its
    one-line reason, and the watcher keeps registering the files that follow."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watch = Watch(inbox, tmp_path)

    def deliver(name: str, **kwargs) -> dict:
        staged = write_frame(tmp_path / "staging" / name, **kwargs)
        os.replace(staged, inbox / name)
        return watch.wait_for(name)

    exposure = {"FRAMENUM": 7, "DATE_OBS": "2026-11-28T21:07:00"}
    try:
        assert deliver("x-b00.fits", **exposure)["status"] == "new"
        long_filter = deliver("long-e00.fits", OBSTYPE="EXPOSE", EXPTIME=5.0, FILTER="f" * 5000)
        copy = deliver("x-b00.fits.fz", compress="fz", **exposure)
        after = deliver("after-b00.fits", FRAMENUM=8, DATE_OBS="2026-11-28T21:08:00")
    finally:
        watch.proc.send_signal(signal.SIGTERM)
        _, stderr = watch.proc.communicate(timeout=15)
    assert watch.proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert long_filter["status"] == "rejected" and "FILTER is 5000 characters" in long_filter[
        "reason"]  # fmt: skip
    assert copy["status"] == "rejected" and copy["duplicate_of"] is not None
    assert "duplicate of exposure lsc/kb78/20261128/0007" in copy["reason"]
    assert after["status"] == "new"
