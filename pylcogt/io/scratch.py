"""Scratch files and folders that name their owner, and the sweep of those a dead process left.

pylcogt writes two kinds of scratch entries under the data directory:

- spill folders of master builds, ``.pylcogt-spill-OWNER.XXXXXXXX`` (:mod:`pylcogt.io.spill`);
- temporary files renamed over a product or master once complete,
  ``.NAME.OWNER.XXXXXXXX.tmp`` (:mod:`pylcogt.io.products`, :mod:`pylcogt.reduce`).

``OWNER`` is ``PID-START@PLACE``: the process id, the process's start time (clock ticks since
boot, from ``/proc``; 0 where unknown), which tells a reused pid from the owner, and where it
ran (the host name reduced to letters, digits and ``-``, and the pid namespace, so that two
containers with the same host name are different places). The owner is part of the name, so it
is recorded in the same system call that creates the entry; the entry's modification time is
its last activity.

A process killed with ``kill -9`` (or a power cut) leaves its entries behind. :func:`sweep_stale`
removes those under a data directory whose owner ran here and is gone, and those older than
``max_age_s`` (24 h) whose owner ran elsewhere (another host sharing the directory) or is not
recorded (an older name). The worker calls it once when it starts.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = [
    "Swept",
    "sweep_stale",
    "owner_tag",
    "spill_prefix",
    "temp_prefix",
    "SPILL_PREFIX",
    "TEMP_SUFFIX",
    "MAX_AGE_S",
]

log = logging.getLogger(__name__)

SPILL_PREFIX = ".pylcogt-spill-"
TEMP_SUFFIX = ".tmp"
#: Entries of other hosts, or with no owner in their name, are swept after this long untouched.
MAX_AGE_S = 24 * 3600.0
#: Deepest folder looked into: ``SITE/CAMERA/NIGHT/processed/superseded`` is 5 below the root.
MAX_DEPTH = 6

_OWNER = r"(?P<pid>\d+)-(?P<start>\d+)@(?P<place>[A-Za-z0-9-]+)"
_OWNED_SPILL = re.compile(rf"^{re.escape(SPILL_PREFIX)}{_OWNER}\.\w+$")
_OWNED_TEMP = re.compile(rf"^\..+\.{_OWNER}\.\w+{re.escape(TEMP_SUFFIX)}$")
_ANY_TEMP = re.compile(rf"^\..+{re.escape(TEMP_SUFFIX)}$")


@dataclass(frozen=True)
class Swept:
    """One entry removed: its path, the bytes it held and why it was stale."""

    path: Path
    bytes: int
    reason: str


def _start_ticks(pid: int | str) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot; None if unknown (no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


@cache
def _place() -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "unknown"
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{host}-{namespace}"


def owner_tag(pid: int | None = None) -> str:
    """``PID-START@PLACE`` of this process, or of process ``pid`` here (see module doc)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{_start_ticks(pid) or 0}@{_place()}"


def spill_prefix() -> str:
    """Prefix for ``tempfile.mkdtemp``: a spill folder owned by this process."""
    return f"{SPILL_PREFIX}{owner_tag()}."


def temp_prefix(name: str) -> str:
    """Prefix for ``tempfile.mkstemp(prefix=..., suffix=TEMP_SUFFIX)``: a temporary file for
    ``name``, hidden, owned by this process."""
    return f".{name}.{owner_tag()}."


def _owner_gone(pid: int, start: int) -> bool:
    """Process ``pid`` of this place has exited (or its pid now belongs to another process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, run by another user
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False  # cannot tell: keep it
    if state in ("Z", "X"):  # dead, not yet reaped by its parent
        return True
    return start != 0 and _start_ticks(pid) not in (None, start)


def _stale_reason(name: str, *, is_dir: bool, age_s: float, max_age_s: float) -> str | None:
    """Why scratch entry ``name`` is stale, or None (keep it, or not a scratch entry)."""
    owned = (_OWNED_SPILL if is_dir else _OWNED_TEMP).match(name)
    if owned and owned["place"] == _place():
        pid = int(owned["pid"])
        if _owner_gone(pid, int(owned["start"])):
            return f"its owner, process {pid} on this host, is gone"
        return None
    if owned:
        where = f"process {owned['pid']} on {owned['place']}"
    elif name.startswith(SPILL_PREFIX) if is_dir else _ANY_TEMP.match(name):
        where = "an unrecorded owner"
    else:
        return None
    if age_s > max_age_s:
        return f"left by {where}, untouched for {age_s / 3600:.1f} h"
    return None


def _size(path: Path, is_dir: bool) -> int:
    if not is_dir:
        try:
            return path.lstat().st_size
        except OSError:
            return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _remove(path: Path, is_dir: bool) -> bool:
    """Remove ``path``; False when it could not be (logged) or was gone already."""
    try:
        if is_dir:
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False  # another worker swept it first
    except OSError as exc:
        log.warning("cannot remove stale scratch entry %s: %s", path, exc)
        return False
    return True


def sweep_stale(
    data_dir: Path, *, max_age_s: float = MAX_AGE_S, now: float | None = None
) -> list[Swept]:
    """Remove the scratch entries under ``data_dir`` that a dead process left (module doc);
    returns what was removed. ``now``: the time to measure ages from (default: the clock).
    Never raises for an entry it cannot remove (logged); a missing ``data_dir`` has none."""
    now = time.time() if now is None else now
    root = Path(data_dir)
    swept: list[Swept] = []
    for directory, dirs, files in os.walk(root):
        depth = len(Path(directory).relative_to(root).parts)
        entries = [(name, True) for name in dirs] + [(name, False) for name in files]
        dirs[:] = [] if depth >= MAX_DEPTH else [d for d in dirs if not d.startswith(".")]
        for name, is_dir in entries:
            path = Path(directory) / name
            try:
                age_s = now - path.lstat().st_mtime
            except OSError:
                continue
            reason = _stale_reason(name, is_dir=is_dir, age_s=age_s, max_age_s=max_age_s)
            if reason is None:
                continue
            size = _size(path, is_dir)
            if _remove(path, is_dir):
                log.info("removed %s (%d bytes): %s", path, size, reason)
                swept.append(Swept(path, size, reason))
    return swept
