"""Scratch entries name their owner; the sweep removes only those a dead owner left (or, for
another host or an unrecorded owner, those untouched for a day)."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.frame import Frame
from pylcogt.io.scratch import (
    MAX_AGE_S,
    SPILL_PREFIX,
    TEMP_SUFFIX,
    owner_tag,
    sweep_stale,
    temp_prefix,
)
from pylcogt.io.spill import SpillDir

NIGHT = Path("lsc/fa15/20261128/processed")


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A process that stays alive for the test."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def dead_tag() -> str:
    """The owner tag of a process killed with SIGKILL (and reaped)."""
    proc = subprocess.Popen(["sleep", "300"])
    tag = owner_tag(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return tag


def _spill(data: Path, tag: str, n_bytes: int) -> Path:
    path = data / f"{SPILL_PREFIX}{tag}.k3j5x9a1"
    path.mkdir(parents=True)
    (path / "17.sci.npy").write_bytes(b"\0" * n_bytes)
    return path


def _temp(data: Path, tag: str, n_bytes: int, name: str = "x-e91.fits.fz") -> Path:
    folder = data / NIGHT
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.{tag}.q8w_2e1r{TEMP_SUFFIX}"
    path.write_bytes(b"\0" * n_bytes)
    return path


def _frame() -> Frame:
    sci = np.ones((8, 8), dtype=np.float32)
    return Frame(sci=sci, err=None, bpm=np.zeros((8, 8), dtype=np.uint8), header=fits.Header(),
                 unit="electron", name="x")  # fmt: skip


def test_only_what_a_dead_owner_left_is_swept(tmp_path: Path, live_pid: int, dead_tag: str):
    data = tmp_path / "data"
    dead = [_spill(data, dead_tag, 1000), _temp(data, dead_tag, 300)]
    live_tag = owner_tag(live_pid)
    alive = [_spill(data, live_tag, 10), _temp(data, live_tag, 10, name="y-e91.fits.fz")]
    product = data / NIGHT / "x-e91.fits.fz"
    product.write_bytes(b"\0" * 50)
    swept = sweep_stale(data)
    assert sorted(s.path for s in swept) == sorted(dead)
    assert {s.path: s.bytes for s in swept} == {dead[0]: 1000, dead[1]: 300}
    pid = dead_tag.split("-")[0]
    assert all(s.reason == f"its owner, process {pid} on this host, is gone" for s in swept)
    assert not any(p.exists() for p in dead)
    assert all(p.exists() for p in alive) and product.exists()
    assert sweep_stale(data) == []  # nothing left to do


def test_this_process_names_its_entries_and_keeps_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with SpillDir(data) as spill:
        spill.save("1", _frame())
        assert spill.path.name.startswith(f"{SPILL_PREFIX}{owner_tag()}.")
        fd, name = tempfile.mkstemp(prefix=temp_prefix("x-e91.fits.fz"), suffix=TEMP_SUFFIX,
                                    dir=data)  # fmt: skip
        os.close(fd)
        assert sweep_stale(data, now=time.time() + 10 * MAX_AGE_S) == []  # alive: never
        assert spill.path.exists() and Path(name).exists()
    assert not spill.path.exists()


def test_other_hosts_and_unrecorded_owners_wait_for_the_age_bound(tmp_path: Path) -> None:
    data = tmp_path / "data"
    elsewhere = "4242-99@otherhost-4026531836"
    unowned_temp = data / NIGHT / ".z-e91.fits.fz.abcd1234.tmp"  # names before owners
    unowned_spill = data / f"{SPILL_PREFIX}abcd1234"
    entries = [_spill(data, elsewhere, 5), _temp(data, elsewhere, 5), unowned_temp, unowned_spill]
    unowned_temp.write_bytes(b"1")
    unowned_spill.mkdir()
    keep = [data / NIGHT / "x-e91.fits.fz", data / NIGHT / ".hidden", data / "notes.tmp"]
    for path in keep:
        path.write_bytes(b"1")
    assert sweep_stale(data) == []
    swept = sweep_stale(data, now=time.time() + MAX_AGE_S + 60)
    assert sorted(s.path for s in swept) == sorted(entries)
    reasons = {s.path: s.reason for s in swept}
    assert reasons[entries[0]].startswith("left by process 4242 on otherhost-4026531836")
    assert reasons[unowned_spill].startswith("left by an unrecorded owner, untouched for 24.")
    assert all(p.exists() for p in keep)


def test_a_missing_data_directory_has_nothing_to_sweep(tmp_path: Path) -> None:
    assert sweep_stale(tmp_path / "nowhere") == []
