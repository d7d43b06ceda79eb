"""Continuous ingestion: ``pylcogt ingest --watch DIR``.

A :class:`Watcher` polls one or more directories (``os.scandir``, recursively: no inotify, so it
works on NFS and other shared file systems) and ingests each FITS file once it is complete:

- a file is a *candidate* while its (size, mtime) signature changes; once the signature has been
  unchanged for ``settle_s`` seconds it is read (sha256, FITS scan) and, if it did not change
  while being read, recorded with :func:`pylcogt.ingest.record_file` (one transaction per file);
- a file still being written therefore is never taken early, and a truncated or corrupt file is
  recorded as ``rejected`` only after it has been stable for the settle time; if it changes later
  (rewritten), it is read again and re-registered;
- files already taken are remembered as ``path -> (size, mtime)`` and skipped without being
  opened; at start, registered files whose size matches and that were not modified since they
  were ingested are skipped the same way (so restarting the watcher does not re-hash an archive).
  ``ingested_at`` is the database server's time: it is brought to this machine's clock (the
  difference measured once) before it is compared with modification times;
- a file the registry refuses (a header value, a second copy of an exposure) is recorded
  ``rejected`` with its reason, or only reported when even that is refused: the watcher goes on.

For an archive with its own hook, the same ingestion is one call:
:func:`pylcogt.ingest.ingest_paths` (``ingest_paths(maker, [path])``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pylcogt.db.clock import db_now
from pylcogt.db.models import RawFrame, utcnow
from pylcogt.ingest import FITS_SUFFIXES, IngestResult, _record_with_retry, read_file

__all__ = ["Watcher", "WatchStats", "scan_fits_tree", "known_unchanged", "cmd_watch"]

log = logging.getLogger(__name__)

Signature = tuple[int, int]  # (size in bytes, mtime in ns)


def scan_fits_tree(root: str | os.PathLike) -> Iterator[tuple[str, Signature]]:
    """Every FITS-named regular file under ``root`` (recursively), with its signature.

    Paths are absolute and resolved like :func:`pylcogt.ingest.read_file` records them. Files that
    vanish while being listed are skipped; hidden files (``.name``, e.g. partial uploads of
    rsync) are ignored."""
    stack = [os.path.realpath(root)]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True) and entry.name.lower().endswith(
                    FITS_SUFFIXES
                ):
                    st = entry.stat(follow_symlinks=True)
                    yield os.path.realpath(entry.path), (st.st_size, st.st_mtime_ns)
            except OSError:
                continue


def known_unchanged(
    maker: sessionmaker[Session], roots: Iterable[str | os.PathLike]
) -> dict[str, tuple[int, dt.datetime]]:
    """Registered frames under ``roots``: ``path -> (file_size, ingested_at)``, ``ingested_at``
    (stamped by the database server) in this machine's clock, naive UTC."""
    prefixes = [os.path.realpath(r).rstrip(os.sep) + os.sep for r in roots]
    out: dict[str, tuple[int, dt.datetime]] = {}
    with maker() as session:
        server_ahead = db_now(session) - utcnow()
        for prefix in prefixes:
            rows = session.execute(
                select(RawFrame.path, RawFrame.file_size, RawFrame.ingested_at).where(
                    RawFrame.path.startswith(prefix, autoescape=True)
                )
            )
            for path, size, ingested_at in rows:
                local = ingested_at - server_ahead if ingested_at is not None else None
                out[path] = (size, local)
    return out


def is_registered_unchanged(
    signature: Signature, registered: tuple[int, dt.datetime] | None
) -> bool:
    """The file has the registered size and was last modified before it was ingested."""
    if registered is None or registered[1] is None:
        return False
    size, ingested_at = registered
    mtime = dt.datetime.fromtimestamp(signature[1] / 1e9, dt.timezone.utc).replace(tzinfo=None)
    return signature[0] == size and mtime < ingested_at


@dataclass
class WatchStats:
    scans: int = 0
    counts: dict[str, int] = field(
        default_factory=lambda: {"new": 0, "unchanged": 0, "updated": 0, "rejected": 0}
    )


@dataclass
class _Candidate:
    signature: Signature
    since: float  # monotonic time the signature was first seen


class Watcher:
    """Poll ``roots`` and ingest complete files; see the module docstring.

    ``on_result(result)`` is called for every file recorded (``unchanged`` included). ``clock``
    is a monotonic clock (tests may replace it)."""

    def __init__(
        self,
        maker: sessionmaker[Session],
        roots: Iterable[str | os.PathLike],
        *,
        settle_s: float = 2.0,
        on_result: Callable[[IngestResult], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maker = maker
        self.roots = [Path(r) for r in roots]
        self.settle_s = settle_s
        self.on_result = on_result
        self.clock = clock
        self.stats = WatchStats()
        self._seen: dict[str, Signature] = {}
        self._candidates: dict[str, _Candidate] = {}
        self._registered = known_unchanged(maker, self.roots)

    def scan_once(self, stop: threading.Event | None = None) -> list[IngestResult]:
        """One pass over the roots: note changed files, ingest those that have settled."""
        self.stats.scans += 1
        results: list[IngestResult] = []
        present: set[str] = set()
        for root in self.roots:
            for path, signature in scan_fits_tree(root):
                if stop is not None and stop.is_set():
                    return results
                present.add(path)
                if self._seen.get(path) == signature:
                    continue
                registered = self._registered.pop(path, None)
                if is_registered_unchanged(signature, registered):
                    self._seen[path] = signature
                    continue
                result = self._consider(path, signature)
                if result is not None:
                    results.append(result)
        for gone in [p for p in self._candidates if p not in present]:
            del self._candidates[gone]
        return results

    def _consider(self, path: str, signature: Signature) -> IngestResult | None:
        now = self.clock()
        candidate = self._candidates.get(path)
        if candidate is None or candidate.signature != signature:
            self._candidates[path] = _Candidate(signature, now)
            return None
        if now - candidate.since < self.settle_s:
            return None
        facts = read_file(Path(path))
        try:
            st = os.stat(path)
        except OSError:
            self._candidates.pop(path, None)
            return None
        if (st.st_size, st.st_mtime_ns) != signature:  # written to while we read it
            self._candidates[path] = _Candidate((st.st_size, st.st_mtime_ns), self.clock())
            return None
        result = _record_with_retry(self.maker, facts)
        del self._candidates[path]
        self._seen[path] = signature
        self.stats.counts[result.status] += 1
        if self.on_result is not None:
            self.on_result(result)
        return result

    @property
    def waiting(self) -> int:
        """Files seen but not settled yet."""
        return len(self._candidates)

    def run(self, stop: threading.Event, *, interval_s: float = 5.0) -> WatchStats:
        """Scan every ``interval_s`` seconds until ``stop`` is set."""
        while not stop.is_set():
            self.scan_once(stop)
            # wake up early when a candidate will have settled before the next regular scan
            wait = interval_s
            if self._candidates:
                due = min(c.since for c in self._candidates.values()) + self.settle_s
                wait = min(wait, max(0.05, due - self.clock() + 0.01))
            stop.wait(wait)
        return self.stats


# --- CLI ----------------------------------------------------------------------------------
def cmd_watch(args: argparse.Namespace, settings) -> int:
    """``pylcogt ingest --watch DIR``: runs until SIGTERM or SIGINT, then exits 0."""
    from pylcogt.cli import _maker
    from pylcogt.errors import ConfigurationError

    if args.paths:
        msg = "give either PATHs to ingest once or --watch DIR, not both"
        raise ConfigurationError(msg)
    missing = [d for d in args.watch if not Path(d).is_dir()]
    if missing:
        raise ConfigurationError(f"--watch needs a directory: {', '.join(missing)}")
    if not args.quiet:
        log.setLevel(logging.INFO)
    maker = _maker(settings)
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def on_result(result: IngestResult) -> None:
        name = Path(result.path).name
        if result.status == "rejected":
            pass  # pylcogt.ingest logs the rejection with its reason: one line per file
        elif result.status == "unchanged":
            log.debug("unchanged %s", name)
        else:
            log.info("%s %s: frame %s %s %s", result.status, name, result.frame_id,
                     result.obstype, result.instrument)  # fmt: skip
        if args.json and result.status != "unchanged":
            sys.stdout.write(json.dumps(asdict(result)) + "\n")
            sys.stdout.flush()

    try:
        watcher = Watcher(maker, args.watch, settle_s=args.settle, on_result=on_result)
        log.info("watching %s every %g s (settle %g s)", ", ".join(args.watch), args.interval,
                 args.settle)  # fmt: skip
        stats = watcher.run(stop, interval_s=args.interval)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    summary = ", ".join(f"{n} {k}" for k, n in stats.counts.items())
    log.info("stopped after %d scans: %s", stats.scans, summary)
    return 0
