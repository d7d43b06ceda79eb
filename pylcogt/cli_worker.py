"""``pylcogt worker``: parsing, progress and output only; the work is in :mod:`pylcogt.worker`."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from pylcogt.config import Settings

__all__ = ["add_worker_command"]

DESCRIPTION = """\
Process the registry until stopped: check each calibration frame, build a night's master bias,
dark, flats and bad-pixel mask once its group is complete, and reduce science frames with them.
Frames are taken oldest night first, bias before dark before flat before science.

Live nights: a master built while its night goes on is provisional. A science frame does not
wait for its night's calibration groups to be complete (their --quiet-time): it is reduced at
once with the best masters there are (an earlier night's), provisionally (L1CALST), and reduced
again when a better master arrives (tonight's, the morning flats'); it waits only when no usable
master exists at all (`waiting_calibration`, woken when its masters exist). Once the night is
over (local noon, or `pylcogt night close`) its masters are built as final (promoted when
nothing changed, without redoing anything) and its reductions become final. --no-rereduce keeps
provisional products as they are. Run any number of workers, on any number of
machines sharing one PostgreSQL database: they never take the same frame or build the same
master; a frame whose worker died is taken over once its lease expires.

A calibration group (one night, instrument, type, binning, readout mode and, for flats, filter)
is complete once all its frames are checked and either its night is over (local noon after the
night, from the site's longitude) or no new frame arrived for --quiet-time seconds.

Output: one log line per frame on stderr (frame, result, stage timings); with --until-idle on a
terminal, a progress bar under them; a summary on stdout when the worker stops (--json: one
JSON object). Failures: bad data fails the frame for good with the reason; transient errors
(database, disk) are retried with backoff up to --max-attempts; anything else is recorded as a
failure with its traceback, and the worker carries on.

SIGTERM or Ctrl-C: the current frame finishes (released after --shutdown-grace seconds), then
the worker exits; a second signal interrupts at once.
"""

JSON_HELP = (
    "print one JSON object when the worker stops: {processed, done, reduced, checked, failed, "
    "waiting, retried, released, lost_lease, masters_built, masters: [...], masters_unchanged, "
    "masters_promoted, requeued_for_better_calibration, reductions_promoted, provisional_kept, "
    "registry: {state: count}, groups_not_built: [{type, dayobs, ..., reason}]}"
)


def add_worker_command(
    add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser
) -> Callable[[argparse.Namespace, Settings], int]:
    """Add the ``worker`` subcommand with ``add(name, help, description)``; returns its handler."""
    del common  # no sub-subcommands
    p = add("worker", "process the registry: build masters and reduce frames", DESCRIPTION)
    p.add_argument("--until-idle", action="store_true",
                   help="exit once nothing is left that can be done now (retries and other "
                        "workers' frames are waited for; groups of a night still in its quiet "
                        "time are not)")  # fmt: skip
    p.add_argument("--processes", type=_positive_int, default=1, metavar="N",
                   help="worker processes to run (default: %(default)s)")  # fmt: skip
    p.add_argument("--quiet-time", type=_seconds, default=900.0, metavar="SECONDS",
                   help="a calibration group of a night not over yet is complete after this "
                        "long without a new frame (default: %(default)g)")  # fmt: skip
    p.add_argument("--lease", type=_positive_seconds, default=60.0, metavar="SECONDS",
                   help="claim duration, renewed by a heartbeat; a dead worker's frame is "
                        "taken over after it (default: %(default)g)")  # fmt: skip
    p.add_argument(
        "--poll",
        type=_positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="wait between polls when there is nothing to do (default: %(default)g)",
    )
    p.add_argument("--max-attempts", type=_positive_int, default=5, metavar="N",
                   help="attempts (transient errors, lost workers) before a frame fails "
                        "(default: %(default)s)")  # fmt: skip
    p.add_argument("--retry-delay", type=_positive_seconds, default=30.0, metavar="SECONDS",
                   help="first retry delay after a transient error, doubled at each attempt up "
                        "to 30 minutes (default: %(default)g)")  # fmt: skip
    p.add_argument("--shutdown-grace", type=_seconds, default=20.0, metavar="SECONDS",
                   help="after SIGTERM, time the current frame may take before it is released "
                        "(default: %(default)g)")  # fmt: skip
    p.add_argument("--no-rereduce", action="store_true",
                   help="keep provisional products as they are when a better master arrives "
                        "(env PYLCOGT_REREDUCE=0); frames reduced with a master marked bad are "
                        "redone regardless")  # fmt: skip
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    return cmd_worker


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def preflight(settings: Settings) -> None:
    """What every science frame needs from the installation, checked before anything is
    claimed: astrometry.net's ``solve-field`` and an index directory holding index files (when
    astrometry is on). :class:`~pylcogt.errors.ConfigurationError` with the advice otherwise."""
    from pylcogt.astrometry.refstars import find_executable, find_index_files

    if settings.index_dir is not None:
        find_executable("solve-field")
        find_index_files(settings.index_dir)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from pylcogt.cli import _maker, _print_json
    from pylcogt.db import queue
    from pylcogt.db.session import get_engine
    from pylcogt.worker import WorkerConfig, run_workers

    config = WorkerConfig(
        lease_s=args.lease,
        poll_s=args.poll,
        quiet_time_s=args.quiet_time,
        max_attempts=args.max_attempts,
        retry_base_s=args.retry_delay,
        retry_cap_s=max(1800.0, args.retry_delay),
        shutdown_grace_s=args.shutdown_grace,
        until_idle=args.until_idle,
        rereduce=not args.no_rereduce,
    )
    _maker(settings)  # the schema exists and is current (exit 3 when unreachable)
    preflight(settings)  # a broken installation stops here, once, not at every frame
    if not args.quiet:  # one line per frame is the worker's normal output
        logging.getLogger("pylcogt.worker").setLevel(logging.INFO)
    engine = get_engine(settings.database_url)
    progress = _Progress(engine) if args.until_idle and not args.quiet else None
    try:
        summary = run_workers(settings, config, processes=args.processes,
                              on_start=progress.start if progress else None)  # fmt: skip
    finally:
        if progress:
            progress.stop()
    result = summary.to_json()
    result["processes"] = args.processes
    result["registry"] = queue.frame_counts(engine)
    result["groups_not_built"] = [
        {"type": g.key.obstype, "instrument_id": g.key.instrument_id,
         "dayobs": g.key.dayobs.isoformat(), "binning": g.key.binning,
         "filter": g.key.filter_name, "reason": g.reason}
        for g in queue.group_statuses(engine, quiet_time_s=config.quiet_time_s)
        if not g.buildable
    ]  # fmt: skip
    if args.json:
        _print_json(result)
    else:
        registry = ", ".join(f"{n} {state}" for state, n in sorted(result["registry"].items()))
        print(
            f"processed {result['processed']} frame(s): {result['reduced']} reduced, "
            f"{result['checked']} calibration frame(s) checked, {result['failed']} failed, "
            f"{result['waiting']} waiting for a calibration; {result['masters_built']} "
            f"master(s) built"
        )
        for m in result["masters"]:
            label = " ".join(x for x in (m["type"], m["dayobs"], m["binning"], m["filter"]) if x)
            print(f"  master {m['id']} {label}: {m['path']}")
        if result["requeued_for_better_calibration"] or result["reductions_promoted"]:
            print(f"live night: {result['requeued_for_better_calibration']} frame(s) re-queued "
                  f"for a better calibration, {result['reductions_promoted']} reduction(s) "
                  f"promoted to final, {result['masters_promoted']} master(s) promoted to "
                  f"final")  # fmt: skip
        print(f"registry: {registry or 'empty'}")
        for g in result["groups_not_built"]:
            label = " ".join(x for x in (g["type"], g["dayobs"], g["binning"], g["filter"]) if x)
            print(f"  not built yet: {label} (instrument {g['instrument_id']}): {g['reason']}")
        for error in result["errors"]:
            print(f"error: {error}", file=sys.stderr)
    return 1 if result["errors"] else 0


class _Progress:
    """A progress bar on stderr (a terminal only), redrawn under the worker's log lines."""

    WIDTH = 30

    def __init__(self, engine, stream=None) -> None:
        self.engine = engine
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.text = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pylcogt-progress", daemon=True)
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []

    def start(self) -> None:
        if not self.enabled:
            return
        for handler in logging.getLogger().handlers:  # log lines go above the bar
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                self._handlers.append((handler, handler.setStream(_AboveBar(self))))
        self._thread.start()

    def stop(self) -> None:
        if not self.enabled:
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for handler, stream in self._handlers:
            handler.setStream(stream)
        with self._lock:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _run(self) -> None:
        from pylcogt.db import queue

        while not self._stop.wait(0.5):
            try:
                counts = queue.frame_counts(self.engine)
                masters = queue.masters_count(self.engine)
            except Exception:  # the display never stops the worker
                continue
            total = sum(counts.values())
            settled = sum(counts.get(s, 0) for s in ("done", "failed", "rejected"))
            waiting = counts.get("waiting_calibration", 0)
            filled = round(self.WIDTH * (settled + waiting) / total) if total else 0
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            text = (
                f"[{bar}] {settled}/{total} frames done or failed, {waiting} waiting, "
                f"{counts.get('ready', 0)} ready, {counts.get('processing', 0)} in progress; "
                f"{masters} masters"
            )
            with self._lock:
                self.text = text
                self.stream.write("\r\033[K" + text[:150])
                self.stream.flush()


class _AboveBar:
    """A stream for log handlers: clears the bar, writes the line, redraws the bar."""

    def __init__(self, progress: _Progress) -> None:
        self.progress = progress

    def write(self, text: str) -> int:
        p = self.progress
        with p._lock:
            p.stream.write("\r\033[K" + text)
            if text.endswith("\n") and p.text:
                p.stream.write(p.text[:150])
            return len(text)

    def flush(self) -> None:
        self.progress.stream.flush()
