"""The reduction worker: claim -> process -> record, masters built when their group is complete.

One :class:`Worker` runs one loop in one process; :func:`run_workers` runs N of them in child
processes. Each pass of the loop does the first of:

1. build a master whose calibration group is complete (:func:`pylcogt.db.queue.group_statuses`:
   every frame of the group checked, the groups it depends on resolved, and the night over or no
   new frame for the quiet time), under the group's lease in ``master_jobs``; then wake the
   frames waiting for it;
2. claim a frame (:func:`pylcogt.db.queue.claim_frame`: oldest night first, bias, dark, flat,
   then science once the night's calibrations are resolved) and process it under a heartbeat:
   a calibration frame is *checked* (read + instrument signature removal) and becomes ``ready``
   for its master, a science frame is reduced (:func:`pylcogt.reduce.reduce_frame`);
3. wake ``waiting_calibration`` frames whose masters now exist (registered by anyone), and
   (at most every ``refresh_s``) promote or re-queue the provisional reductions of nights that
   are over (:func:`pylcogt.recalibrate.refresh_due`);
4. otherwise sleep ``poll_s`` (``until_idle``: stop when nothing is left that can be done now:
   no other worker holds a lease and no retry is due later; groups of a night not over and still
   in their quiet time are left for a later run).

Groups are looked at no more than once per ``poll_s`` while frames are being claimed (a backfill
has many groups), and always before the worker sleeps.

Frame states (:mod:`pylcogt.lifecycle`): ``pending`` -> ``processing`` -> ``ready`` (calibration,
checked) -> ``done`` (in a master); science ``pending`` -> ``processing`` -> ``done`` /
``waiting_calibration`` (woken back to ``pending`` when its masters exist) / ``failed``.

**Live nights.** A master built while its night goes on is provisional; the night's science
frames do not wait for its calibration groups' quiet time: they are reduced at once with the
best masters there are (an earlier night's), provisionally, and only wait when no usable master
exists at all. After every master built or promoted, the worker re-runs the selection for the
reductions it may change (:func:`pylcogt.recalibrate.refresh_reductions`): frames whose masters
would now differ are re-queued (``redo_reason`` says why; not provisional ones with
``rereduce`` off), and provisional reductions that are now final are promoted. Once a night is
over its provisional masters are built once more: promoted to final when their group did not
change, replaced by a final master when it did.

Failures are classified by what to do about them:

- :class:`~pylcogt.errors.UnprocessableFrameError` (bad data): ``failed`` with the reason, no
  retry;
- :class:`~pylcogt.errors.TransientError`, a database ``OperationalError`` or an ``OSError``
  while writing: back to ``pending`` after an exponential backoff, ``failed`` with the traceback
  after ``max_attempts`` attempts;
- anything else is a bug: ``failed`` with the traceback; the worker goes on;
- :class:`~pylcogt.errors.ConfigurationError`: the frame is released and the worker stops.

A frame whose worker died is reclaimed once its lease expires (one attempt counted); one
reclaimed ``max_attempts`` times fails. A worker that lost a lease records nothing (fencing).
When the database goes away the loop logs it, sleeps and carries on with new connections.

Shutdown: SIGTERM or SIGINT lets the current frame or master finish for up to
``shutdown_grace_s`` seconds, then interrupts it and releases it (``pending`` again, no attempt
counted); a second signal interrupts at once. The worker then exits cleanly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import logging.handlers
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from pylcogt import reduce as reduce_module
from pylcogt.calibrations import build as build_module
from pylcogt.config import Settings
from pylcogt.db import queue
from pylcogt.db.models import MasterJobStatus
from pylcogt.db.session import dispose_engines, get_engine, get_sessionmaker, writer
from pylcogt.errors import (
    CalibrationNotFoundError,
    ConfigurationError,
    NotEnoughInputsError,
    TransientError,
    UnprocessableFrameError,
    one_line,
)
from pylcogt.instruments import CALIBRATION_OBSTYPES, SCIENCE_OBSTYPES, crosstalk_lookup
from pylcogt.calibrations.prepare import screen_flat
from pylcogt.calibrations.select import nearest_master_path
from pylcogt.io.products import read_product_card
from pylcogt.io.raw_read import read_raw
from pylcogt.io.scratch import sweep_stale
from pylcogt.nights import night_over
from pylcogt.recalibrate import (
    RefreshResult,
    masters_changed_since,
    refresh_due,
    refresh_reductions,
)
from pylcogt.scheduling import backoff_delay, night_end
from pylcogt.stages.isr import remove_instrument_signature

__all__ = [
    "WorkerConfig",
    "WorkSummary",
    "Worker",
    "Interrupted",
    "run_workers",
    "worker_name",
    "is_transient",
]

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """An outage, not the frame's fault: retried with backoff. A :class:`TransientError`, an
    ``OSError`` (disk full, a share gone), or a database outage (``OperationalError``: lost
    connection, SQLite busy; ``InterfaceError``; an invalidated connection). Other database
    errors (integrity, programming) are bugs."""
    if isinstance(exc, (TransientError, OSError)):
        return True
    return isinstance(exc, DBAPIError) and _is_outage(exc)


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker runs. Every field has a CLI option of the same name (``--lease-s`` ...)."""

    #: seconds a claim lasts without a heartbeat; a dead worker's frame is reclaimed after it
    lease_s: float = 60.0
    #: seconds between polls when there is nothing to do
    poll_s: float = 2.0
    #: seconds without a new frame after which a night's calibration group is complete
    quiet_time_s: float = 900.0
    #: attempts (transient failures, lost workers) before a frame or master build fails
    max_attempts: int = 5
    #: first retry delay in seconds, doubled at each attempt up to ``retry_cap_s``
    retry_base_s: float = 30.0
    retry_cap_s: float = 1800.0
    #: seconds the current frame may take to finish after SIGTERM before it is released
    shutdown_grace_s: float = 20.0
    #: stop once nothing is left that can be done now
    until_idle: bool = False
    #: ``--processes``: a child that died is restarted at once, then (dying again within a
    #: minute of its start) after this delay, doubled each time up to 60 s
    restart_base_s: float = 1.0
    #: reduce provisional products again when a better master arrives (``--no-rereduce``: keep)
    rereduce: bool = True
    #: seconds between looks at nights over with provisional reductions left
    refresh_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("lease_s", "poll_s", "retry_base_s", "retry_cap_s", "restart_base_s",
                     "refresh_s"):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0, got {getattr(self, name)!r}"
                raise ConfigurationError(msg)
        for name in ("quiet_time_s", "shutdown_grace_s"):
            if not getattr(self, name) >= 0:
                msg = f"{name} must be >= 0, got {getattr(self, name)!r}"
                raise ConfigurationError(msg)
        if self.max_attempts < 1:
            msg = f"max_attempts must be >= 1, got {self.max_attempts!r}"
            raise ConfigurationError(msg)


@dataclass
class WorkSummary:
    """What a run did. ``outcomes`` counts processed frames by result: ``done``, ``ready``
    (a calibration frame checked), ``waiting_calibration``, ``failed``, ``retry``, ``released``
    (shutdown), ``lost`` (lease taken over: result discarded)."""

    outcomes: Counter = field(default_factory=Counter)
    masters: list[dict[str, Any]] = field(default_factory=list)
    master_failures: int = 0
    stacked: int = 0  # frames put into the masters built
    failed_in_groups: int = 0  # frames given up by master builds (left out, too few)
    woken: int = 0
    errors: list[str] = field(default_factory=list)  # worker processes that died
    rereduce: int = 0  # frames re-queued because a better master exists
    promoted: int = 0  # provisional reductions that became final
    kept_provisional: int = 0  # provisional reductions kept although a better master exists
    masters_unchanged: int = 0  # group builds that found their master already made
    masters_promoted: int = 0  # provisional masters that became final

    @property
    def processed(self) -> int:
        return sum(self.outcomes.values())

    def merge(self, other: WorkSummary) -> None:
        self.outcomes.update(other.outcomes)
        self.masters.extend(other.masters)
        self.master_failures += other.master_failures
        self.stacked += other.stacked
        self.failed_in_groups += other.failed_in_groups
        self.woken += other.woken
        self.errors.extend(other.errors)
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def refreshed(self, result: RefreshResult) -> None:
        self.rereduce += len(result.requeued)
        self.promoted += len(result.promoted)
        self.kept_provisional += len(result.kept)

    def to_json(self) -> dict[str, Any]:
        """Plain data: counts for this run (``done`` includes frames stacked into masters)."""
        return {
            "processed": self.processed,
            "done": self.outcomes["done"] + self.stacked,
            "reduced": self.outcomes["done"],
            "checked": self.outcomes["ready"],
            "failed": self.outcomes["failed"] + self.failed_in_groups,
            "rejected": self.outcomes["rejected"],
            "waiting": self.outcomes["waiting_calibration"],
            "retried": self.outcomes["retry"],
            "released": self.outcomes["released"],
            "lost_lease": self.outcomes["lost"],
            "woken": self.woken,
            "masters_built": len(self.masters),
            "master_failures": self.master_failures,
            "masters": sorted(self.masters, key=lambda m: m["id"]),
            "masters_unchanged": self.masters_unchanged,
            "masters_promoted": self.masters_promoted,
            "requeued_for_better_calibration": self.rereduce,
            "reductions_promoted": self.promoted,
            "provisional_kept": self.kept_provisional,
            "errors": self.errors,
        }

    @classmethod
    def from_transport(cls, data: dict[str, Any]) -> WorkSummary:
        """The inverse of :meth:`to_transport` (a child process's summary)."""
        summary = cls(outcomes=Counter(data["outcomes"]), masters=list(data["masters"]))
        for name in ("master_failures", "stacked", "failed_in_groups", "woken", *_COUNTERS):
            setattr(summary, name, data[name])
        summary.errors = list(data["errors"])
        return summary

    def to_transport(self) -> dict[str, Any]:
        """Everything, as plain data a child process sends to its parent."""
        return {"outcomes": dict(self.outcomes), "masters": self.masters,
                "master_failures": self.master_failures, "stacked": self.stacked,
                "failed_in_groups": self.failed_in_groups, "woken": self.woken,
                "errors": self.errors,
                **{name: getattr(self, name) for name in _COUNTERS}}  # fmt: skip


_COUNTERS = ("rereduce", "promoted", "kept_provisional", "masters_unchanged", "masters_promoted")


class Interrupted(BaseException):  # noqa: N818 - not an error: a request to stop now
    """Raised in the worker's main thread to abandon the current unit of work (shutdown)."""


def worker_name(index: int | None = None) -> str:
    """``host:pid`` (``host:pid/index`` for a child of ``--processes``): the lease owner."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    return name if index is None else f"{name}/{index}"


def _bug_reason(exc: BaseException) -> str:
    """One line for the registry: what went wrong where (the traceback is in the log)."""
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno}" if where else ""
    return (f"unexpected error (a pylcogt bug; the traceback is in the worker log): "
            f"{type(exc).__name__}: {_first_line(exc)}{at}")  # fmt: skip


def _outage_reason(exc: BaseException) -> str:
    """One line for the registry: the outage a retry waits out."""
    return f"{type(exc).__name__}: {_first_line(exc)}"


class Worker:
    """One worker loop (see module doc). ``stop()`` may be called from any thread."""

    def __init__(self, settings: Settings, config: WorkerConfig, *, name: str | None = None):
        self.settings = settings
        self.config = config
        self.name = name or worker_name()
        self.engine = get_engine(settings.database_url)
        self.maker = get_sessionmaker(settings.database_url)
        self.summary = WorkSummary()
        self._stop = threading.Event()
        self._busy = False  # in a unit of work (interruptible on shutdown)
        self._next_group_scan = 0.0  # time.monotonic() of the next look at calibration groups
        self._next_refresh = 0.0  # time.monotonic() of the next look at nights over
        self._interrupt_now = False
        self.rereduce = config.rereduce and settings.rereduce

    # --- control --------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish the current unit of work, then return from :meth:`run`."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop after the current unit (released after ``shutdown_grace_s``);
        a second signal interrupts at once. Main thread only."""

        def on_signal(signum, _frame) -> None:
            if self._stop.is_set():
                self._interrupt_now = True
                if self._busy:
                    raise Interrupted(f"signal {signum} again: interrupting")
                return
            log.info("%s: signal %d: stopping after the current frame", self.name, signum)
            self.stop()
            if self._busy:
                signal.setitimer(signal.ITIMER_REAL, max(self.config.shutdown_grace_s, 0.001))

        def on_alarm(_signum, _frame) -> None:
            if self._busy:
                raise Interrupted(
                    f"shutdown grace of {self.config.shutdown_grace_s:g} s over: interrupting"
                )

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGALRM, on_alarm)

    @contextlib.contextmanager
    def _unit(self):
        """A unit of work: interruptible at shutdown; an interrupt pending from before it
        started (a grace period that ran out between units) takes effect at once."""
        self._busy = True
        try:
            if self._stop.is_set() and self._interrupt_now:
                raise Interrupted("stopping")
            yield
        finally:
            self._busy = False

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> WorkSummary:
        """Loop until stopped (or, ``until_idle``, until nothing is left that can be done)."""
        log.info("worker %s started", self.name)
        swept = sweep_stale(self.settings.data_dir)  # spill and temporary files of dead workers
        log.info("%s: swept %d stale scratch entries (%d bytes) from %s", self.name, len(swept),
                 sum(s.bytes for s in swept), self.settings.data_dir)  # fmt: skip
        try:
            while not self._stop.is_set():
                try:
                    if self.run_once():
                        continue
                    if self.config.until_idle:
                        if self._idle():
                            break
                        continue
                except Interrupted:
                    break
                except DBAPIError as exc:
                    if not _is_outage(exc):
                        raise
                    log.warning(
                        "%s: database unavailable (%s); retrying in %g s",
                        self.name, _first_line(exc), self.config.poll_s,
                    )  # fmt: skip
                    self._sleep(self.config.poll_s)
                    continue
                self._sleep(self.config.poll_s)
        finally:
            if _in_main_thread():
                signal.setitimer(signal.ITIMER_REAL, 0)
            log.info(
                "worker %s stopped: %d frame(s) processed, %d master(s) built",
                self.name, self.summary.processed, len(self.summary.masters),
            )  # fmt: skip
        return self.summary

    def run_once(self) -> bool:
        """One pass: build a master, or process a frame, or wake waiting frames. Whether
        anything was done.

        Masters come first (they unblock the night's science), but the groups are looked at
        no more than once per ``poll_s`` while frames are being processed (a backfill has many
        groups, each a few queries) and again whenever no frame can be claimed.
        """
        scanned = time.monotonic() >= self._next_group_scan
        if scanned and self._build_a_group():
            return True
        claim = queue.claim_frame(self.engine, self.name, lease_s=self.config.lease_s)
        if claim is not None:
            self.process_frame(claim)
            return True
        if not scanned and self._build_a_group():
            return True
        woken = queue.wake_waiting_frames(self.engine)
        self.summary.woken += woken
        return woken > 0 or self._refresh_due()

    def _refresh_due(self) -> bool:
        """Promote or re-queue the provisional reductions of nights that are over (at most every
        ``refresh_s``); whether any frame was re-queued."""
        if time.monotonic() < self._next_refresh:
            return False
        self._next_refresh = time.monotonic() + self.config.refresh_s
        with writer(self.maker)() as session:
            result = refresh_due(session, now=queue.db_now(session), rereduce=self.rereduce)
            session.commit()
        self.summary.refreshed(result)
        return bool(result.requeued)

    def _refresh_if_masters_changed(self, result) -> None:
        """A master changed while this frame was being reduced (another worker built one): the
        refresh that master triggered could not see this reduction, so run it again."""
        instrument_id, binning, mode, dayobs = result.scope
        with writer(self.maker)() as session:
            if not masters_changed_since(session, instrument_id=instrument_id, binning=binning,
                                         readout_mode=mode, since=result.selected_at):
                return
            refreshed = refresh_reductions(
                session, instrument_id=instrument_id, binning=binning, readout_mode=mode,
                dayobs=dayobs, now=queue.db_now(session), rereduce=self.rereduce,
            )  # fmt: skip
            session.commit()
        self.summary.refreshed(refreshed)

    def _refresh_after(self, key, result) -> None:
        """A master was built (or found unchanged, or promoted): re-queue or promote the
        reductions it may change (:func:`pylcogt.recalibrate.refresh_reductions`)."""
        with writer(self.maker)() as session:
            refreshed = refresh_reductions(
                session, instrument_id=key.instrument_id, binning=key.binning,
                readout_mode=key.readout_mode, dayobs=key.dayobs, now=queue.db_now(session),
                master_ids=[result.superseded] if result.superseded else [],
                rereduce=self.rereduce,
            )  # fmt: skip
            session.commit()
        self.summary.refreshed(refreshed)

    def _build_a_group(self) -> bool:
        for status in queue.group_statuses(self.engine, quiet_time_s=self.config.quiet_time_s):
            if self._stop.is_set():
                return False
            if status.buildable and self.build_group(status):
                self._next_group_scan = 0.0  # at once: this master may unblock another
                return True
        self._next_group_scan = time.monotonic() + self.config.poll_s
        return False

    def _idle(self) -> bool:
        """Nothing could be claimed: wait while leases or retries are outstanding (they may
        make work), else make one more pass and report idle if it finds nothing either.

        The last pass comes after the look at what is outstanding: whatever can be claimed
        by then was either claimable already or made claimable by a lease or retry seen as
        outstanding (a lease expiring between the two looks cannot be missed).
        """
        outstanding = queue.outstanding_work(self.engine)
        if not outstanding.any:
            return not self.run_once()
        wait = self.config.poll_s
        if outstanding.next_at is not None:
            due_in = (outstanding.next_at - outstanding.now).total_seconds()
            wait = min(wait, max(due_in, 0.05))
        self._sleep(wait)
        return False

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # --- frames ---------------------------------------------------------------------------
    def process_frame(self, claim: queue.FrameClaim) -> str:
        """Process a claimed frame and record the result (fenced); returns the outcome."""
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            with self._unit(), queue.Heartbeat(self.engine, claim, lease_s=self.config.lease_s):
                outcome = self._process(claim, timings)
        except Interrupted as exc:
            log.warning("%s: %s; releasing %s", self.name, exc, claim.filename)
            with contextlib.suppress(queue.LeaseLostError):
                queue.release_frame(self.engine, claim)
            self._count(claim, "released", started, timings)
            raise
        except queue.LeaseLostError as exc:
            log.warning("%s: %s", self.name, exc)
            outcome = "lost"
        except (ConfigurationError, DBAPIError):
            # stopping, or the database went away while recording: give the frame back now if
            # it can be done (no attempt counted; else it is reclaimed when its lease expires)
            with contextlib.suppress(queue.LeaseLostError, DBAPIError):
                queue.release_frame(self.engine, claim)
            raise
        self._count(claim, outcome, started, timings)
        return outcome

    def _count(self, claim, outcome: str, started: float, timings: dict[str, float]) -> None:
        self.summary.outcomes[outcome] += 1
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
        log.info(
            "%s %s %s in %.2fs%s%s",
            claim.filename, claim.obstype, outcome, time.perf_counter() - started,
            f" ({stages})" if stages else "", " [reclaimed]" if claim.reclaimed else "",
            extra={"frame": claim.filename, "frame_id": claim.frame_id, "outcome": outcome},
        )  # fmt: skip

    def _process(self, claim: queue.FrameClaim, timings: dict[str, float]) -> str:
        config = self.config
        if claim.reclaimed and claim.attempts >= config.max_attempts:
            queue.record_failed(
                self.engine, claim,
                f"abandoned after {claim.attempts} attempts: each time the worker died or lost "
                f"its lease before recording a result ({claim.filename})",
            )  # fmt: skip
            return "failed"
        try:
            if claim.obstype in CALIBRATION_OBSTYPES:
                return self._check_calibration(claim, timings)
            if claim.obstype in SCIENCE_OBSTYPES:
                tick = time.perf_counter()
                result = reduce_module.reduce_frame(
                    self.maker, self.settings, claim.frame_id, lease_token=claim.token,
                    worker=self.name,
                )
                if result.timings:
                    timings.update(result.timings)
                else:
                    timings["reduce"] = time.perf_counter() - tick
                if result.state == "done":
                    self._refresh_if_masters_changed(result)
                return result.state
            msg = f"{claim.filename}: no processing chain for OBSTYPE {claim.obstype!r}"
            raise UnprocessableFrameError(msg, path=claim.path)
        except (queue.LeaseLostError, ConfigurationError):
            raise
        except UnprocessableFrameError as exc:
            log.error("%s failed: %s", claim.filename, exc, extra={"frame": claim.filename})
            queue.record_failed(self.engine, claim, one_line(exc))
            return "failed"
        except Exception as exc:
            if not is_transient(exc):  # a bug: record it against the frame and carry on
                log.exception("%s: unexpected error (a bug): recorded as failed", claim.filename)
                queue.record_failed(self.engine, claim, _bug_reason(exc))
                return "failed"
            delay = backoff_delay(claim.attempts + 1, base_s=config.retry_base_s,
                                  cap_s=config.retry_cap_s)  # fmt: skip
            log.warning("%s: transient error (attempt %d of %d): %s", claim.filename,
                        claim.attempts + 1, config.max_attempts, _first_line(exc))  # fmt: skip
            state = queue.record_retry(self.engine, claim, _outage_reason(exc), delay_s=delay,
                                       max_attempts=config.max_attempts)  # fmt: skip
            return "retry" if state == "pending" else "failed"

    def _check_calibration(self, claim: queue.FrameClaim, timings: dict[str, float]) -> str:
        tick = time.perf_counter()
        raw = read_raw(claim.path, crosstalk=crosstalk_lookup(self.settings.crosstalk_file))
        timings["read"] = time.perf_counter() - tick
        tick = time.perf_counter()
        frame = remove_instrument_signature(raw)
        timings["isr"] = time.perf_counter() - tick
        if claim.obstype == "SKYFLAT":
            bias_level = self._bias_level(claim) if frame.header.get("ERRBIAS", False) else None
            level, reason = screen_flat(frame, bias_level_e=bias_level)
            if reason:
                log.warning("%s rejected: %s", claim.filename, reason,
                            extra={"frame": claim.filename})  # fmt: skip
                queue.record_rejected(self.engine, claim, reason)
                return "rejected"
        tick = time.perf_counter()
        queue.record_ready(self.engine, claim, group=claim.group,
                           quiet_time_s=self.config.quiet_time_s)  # fmt: skip
        timings["record"] = time.perf_counter() - tick
        return "ready"

    def _bias_level(self, claim: queue.FrameClaim) -> float | None:
        """The bias level (e-, ``BIASLVL``) of the bias master nearest the flat's night, for
        cameras without overscan; None when there is none yet or it cannot be read."""
        with self.maker() as session:
            path = nearest_master_path(session, instrument_id=claim.instrument_id,
                                       obstype="BIAS", binning=claim.binning or "",
                                       readout_mode=claim.readout_mode or "",
                                       dayobs=claim.dayobs)  # fmt: skip
        if path is None:
            return None
        try:
            return _master_bias_level(path)
        except Exception as exc:  # noqa: BLE001 - a damaged master: screen without its level
            log.warning("%s: cannot read BIASLVL of %s (%s); flat level not screened",
                        claim.filename, path, exc)  # fmt: skip
            return None

    # --- masters --------------------------------------------------------------------------
    def build_group(self, status: queue.GroupStatus) -> bool:
        """Build the group's master if its lease can be taken and it is still buildable."""
        key, config = status.key, self.config
        claim = queue.claim_group(self.engine, key, self.name, lease_s=config.lease_s)
        if claim is None:
            return False
        try:
            fresh = queue.group_status(
                self.engine, key, quiet_time_s=config.quiet_time_s, holder=claim
            )
            if fresh is None or not fresh.buildable:  # another worker built it meanwhile
                queue.release_group(self.engine, claim)
                return False
            started = time.perf_counter()
            with self._unit(), queue.Heartbeat(self.engine, claim, lease_s=config.lease_s):
                self._build(claim, status)
            log.info("%s: master job for %s took %.2fs", self.name, _describe(key),
                     time.perf_counter() - started)  # fmt: skip
        except Interrupted as exc:
            log.warning("%s: %s; releasing the %s", self.name, exc, _describe(key))
            with contextlib.suppress(queue.LeaseLostError):
                queue.release_group(self.engine, claim)
            raise
        except queue.LeaseLostError as exc:
            log.warning("%s: %s", self.name, exc)
        except (ConfigurationError, DBAPIError):
            # stopping, or the database went away: give the lease back now if it can be done
            # (else it expires), so the night's science is not held back for a whole lease
            with contextlib.suppress(queue.LeaseLostError, DBAPIError):
                queue.release_group(self.engine, claim)
            raise
        return True

    def _build(self, claim: queue.GroupClaim, status: queue.GroupStatus) -> None:
        key, config = claim.key, self.config
        fence = functools.partial(queue.fence_group, claim=claim)
        try:
            if key.obstype == "BPM":
                result = build_module.build_bpm_master(self.maker, self.settings, key, fence=fence)
            else:
                result = build_module.build_master(self.maker, self.settings, key, fence=fence)
        except (queue.LeaseLostError, ConfigurationError):
            raise
        except (NotEnoughInputsError, CalibrationNotFoundError) as exc:
            # too few usable frames, or no master to prepare them with (the night's bias
            # group could not be built): more frames or a master may still come tonight
            self.summary.master_failures += 1
            with self.engine.connect() as conn:
                over = night_over(conn, key.instrument_id, key.dayobs, queue.db_now(conn))
            if over:
                log.error("%s: no master: %s", _describe(key), exc)
                self.summary.failed_in_groups += queue.finish_group(
                    self.engine, claim, MasterJobStatus.FAILED, error=one_line(exc),
                    fail_ready=f"no master could be built from this group: {one_line(exc)}",
                )  # fmt: skip
            else:
                until = night_end(key.dayobs, status.longitude_deg)
                log.warning(
                    "%s: %s; trying again at the end of the night (%s UTC) or when a frame "
                    "arrives", _describe(key), exc, f"{until:%Y-%m-%d %H:%M}",
                )  # fmt: skip
                queue.finish_group(self.engine, claim, MasterJobStatus.NOT_ENOUGH,
                                   error=one_line(exc),
                                   retry_at=until, defer_until=until)  # fmt: skip
            return
        except Exception as exc:
            self.summary.master_failures += 1
            if not is_transient(exc):  # a bug (or bad data the build does not classify)
                log.exception("%s: building the master failed", _describe(key))
                text = _bug_reason(exc)
                self.summary.failed_in_groups += queue.finish_group(
                    self.engine, claim, MasterJobStatus.FAILED, error=text,
                    fail_ready=f"building the master failed: {text}",
                )  # fmt: skip
                return
            attempts = claim.attempts + 1
            text = _outage_reason(exc)
            if attempts >= config.max_attempts:
                log.error("%s: giving up after %d attempts: %s", _describe(key), attempts,
                          _first_line(exc))  # fmt: skip
                self.summary.failed_in_groups += queue.finish_group(
                    self.engine, claim, MasterJobStatus.FAILED, error=text, attempts=attempts,
                    fail_ready=f"building the master failed {attempts} times: {text}",
                )  # fmt: skip
            else:
                delay = backoff_delay(attempts, base_s=config.retry_base_s,
                                      cap_s=config.retry_cap_s)  # fmt: skip
                log.warning("%s: transient error (attempt %d of %d), retry in %g s: %s",
                            _describe(key), attempts, config.max_attempts, delay,
                            _first_line(exc))  # fmt: skip
                queue.finish_group(self.engine, claim, MasterJobStatus.RETRY, error=text,
                                   attempts=attempts, retry_in_s=delay)  # fmt: skip
            return
        failed = queue.finish_group(
            self.engine, claim, MasterJobStatus.BUILT, master_id=result.master_id, attempts=0,
            fail_frames=getattr(result, "dropped", None) or None,
        )  # fmt: skip
        self.summary.failed_in_groups += failed
        if result.unchanged:
            self.summary.masters_unchanged += 1
            self.summary.masters_promoted += int(result.promoted)
            log.info("%s: master %d already holds the group's frames%s", _describe(key),
                     result.master_id, "; now final" if result.promoted else "")  # fmt: skip
        else:
            if key.obstype != "BPM":  # a mask's inputs are the frames of its masters: done
                self.summary.stacked += result.n_inputs
            self.summary.masters.append({"id": result.master_id, "type": key.obstype,
                                         "instrument_id": key.instrument_id,
                                         "dayobs": key.dayobs.isoformat(), "binning": key.binning,
                                         "filter": key.filter_name, "n_inputs": result.n_inputs,
                                         "path": result.path,
                                         "calibration_status": result.calibration_status,
                                         "supersedes": result.superseded})  # fmt: skip
            log.info("built %s master %d from %d frames (%s%s)%s", _describe(key),
                     result.master_id, result.n_inputs, result.calibration_status,
                     f", supersedes master {result.superseded}" if result.superseded else "",
                     f" ({failed} left out)" if failed else "")  # fmt: skip
        self._refresh_after(key, result)
        queue.wake_dependent_groups(self.engine, key)
        self.summary.woken += queue.wake_waiting_frames(self.engine)


@functools.lru_cache(maxsize=64)
def _master_bias_level(path: str) -> float | None:
    """A master bias's ``BIASLVL`` (e-), read once: a master's file never changes (immutable)."""
    value = read_product_card(path, "BIASLVL")
    return None if value is None else float(value)


def _describe(key) -> str:
    obstype = getattr(key.obstype, "value", key.obstype)  # a group read back holds the enum
    text = f"{obstype} {key.dayobs:%Y%m%d} instrument {key.instrument_id} {key.binning}"
    if key.readout_mode:
        text += f" {key.readout_mode}"
    return text + (f" {key.filter_name}" if key.filter_name else "")


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_outage(exc: DBAPIError) -> bool:
    return isinstance(exc, (OperationalError, InterfaceError)) or exc.connection_invalidated


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# --- several processes --------------------------------------------------------------------
_LOGGERS = ("", "pylcogt", "pylcogt.worker", "pylcogt.db.queue", "alembic")


def _log_levels() -> dict[str, int]:
    return {name: logging.getLogger(name).level for name in _LOGGERS}


def _child_main(
    settings: Settings, config: WorkerConfig, index: int, results, logs, levels: dict[str, int]
) -> None:
    """Entry point of a ``--processes`` child (spawned): log through the parent, run, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGINT as SIGTERM
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(logs)]
    for name, level in levels.items():  # the parent's levels: records it would drop stay here
        logging.getLogger(name).setLevel(level)
    dispose_engines()
    worker = Worker(settings, config, name=worker_name(index))
    worker.install_signal_handlers()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        summary = worker.run()  # stops on a ConfigurationError, its frame released
    except ConfigurationError as exc:  # the installation: restarting would fail the same way
        log.error("worker process %d stopped: %s", index, one_line(exc))
        summary = worker.summary
        summary.errors.append(f"configuration error: {one_line(exc)}")
        results.put((index, summary.to_transport()))
        sys.exit(EXIT_CONFIGURATION)
    results.put((index, summary.to_transport()))


def run_workers(
    settings: Settings,
    config: WorkerConfig,
    *,
    processes: int = 1,
    on_start: Callable[[], None] | None = None,
) -> WorkSummary:
    """Run ``processes`` workers until stopped (or idle) and return their combined summary.

    One process runs the worker in this process (signal handlers installed). Several are
    spawned as child processes; SIGTERM or SIGINT here is forwarded to them as SIGTERM (the
    second one too, interrupting them). Their log records come back through a queue to this
    process's handlers, so lines never interleave.
    """
    if processes < 1:
        msg = f"processes must be >= 1, got {processes!r}"
        raise ConfigurationError(msg)
    if processes == 1:
        worker = Worker(settings, config)
        if _in_main_thread():
            worker.install_signal_handlers()
        if on_start:
            on_start()
        return worker.run()

    ctx = multiprocessing.get_context("spawn")
    results, logs = ctx.Queue(), ctx.Queue()
    listener = logging.handlers.QueueListener(logs, _Dispatch(), respect_handler_level=False)
    listener.start()
    levels = _log_levels()

    def spawn(index: int):
        child = ctx.Process(target=_child_main, name=f"pylcogt-worker-{index}", daemon=False,
                            args=(settings, config, index, results, logs, levels))  # fmt: skip
        child.start()
        return child

    children: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = threading.Event()
    previous = {}

    def forward(signum, _frame) -> None:
        stopping.set()
        log.info("signal %d: stopping %d worker processes", signum, len(children))
        for child in list(children.values()):
            if child.pid is not None and child.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)

    if _in_main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, forward)
    summary = WorkSummary()
    supervisor = _Supervisor(restart_base_s=config.restart_base_s)
    try:
        for i in range(processes):
            children[i] = spawn(i)
            supervisor.started(i)
        if on_start:
            on_start()
        reported: dict[int, dict] = {}
        while (any(c.is_alive() for c in children.values()) or not results.empty()
               or (supervisor.pending() and not stopping.is_set())):  # fmt: skip
            with contextlib.suppress(Exception):
                index, data = results.get(timeout=0.2)
                reported[index] = data
            for i, child in list(children.items()):
                if child.exitcode == EXIT_CONFIGURATION and not stopping.is_set():
                    # a configuration error stops the service once, not once per restart
                    log.error("worker process %d stopped on a configuration error: stopping "
                              "all workers", i)  # fmt: skip
                    forward(signal.SIGTERM, None)
                if child.is_alive() or child.exitcode == 0 or i in reported:
                    continue
                # died without reporting (killed, out of memory, a crash): its frame's lease
                # expires and another worker takes it over; start a replacement
                if stopping.is_set():
                    continue
                if supervisor.restart_delay(i) > 0:
                    continue
                summary.errors.append(f"worker process {i} (pid {child.pid}) died with status "
                                      f"{child.exitcode}; restarted")  # fmt: skip
                log.error("worker process %d (pid %s) died with status %s; starting a "
                          "replacement", i, child.pid, child.exitcode)  # fmt: skip
                child.join()
                children[i] = spawn(i)
                supervisor.started(i)
        for child in children.values():
            child.join()
        for data in reported.values():
            summary.merge(WorkSummary.from_transport(data))
        for i, child in children.items():
            if child.exitcode != 0 or i not in reported:
                summary.errors.append(f"worker process {i} (pid {child.pid}) exited with "
                                      f"status {child.exitcode}")  # fmt: skip
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        listener.stop()
    return summary


#: exit status of a worker process that stopped on a ConfigurationError (sysexits EX_CONFIG):
#: not restarted; the other processes are stopped
EXIT_CONFIGURATION = 78


class _Supervisor:
    """When to restart a ``--processes`` child that died: at once the first time, then after a
    delay doubling with each death within a minute of its start (at most 60 s), so a child that
    dies on start-up (a broken installation) does not spin."""

    def __init__(self, *, restart_base_s: float) -> None:
        self.base_s = restart_base_s
        self.started_at: dict[int, float] = {}
        self.quick_deaths: dict[int, int] = {}
        self.due_at: dict[int, float] = {}

    def started(self, index: int) -> None:
        self.started_at[index] = time.monotonic()
        self.due_at.pop(index, None)

    def pending(self) -> bool:
        return bool(self.due_at)

    def restart_delay(self, index: int) -> float:
        """Seconds until child ``index`` (found dead) may be restarted; 0: now."""
        now = time.monotonic()
        if index not in self.due_at:
            quick = now - self.started_at.get(index, now) < 60.0
            self.quick_deaths[index] = self.quick_deaths.get(index, 0) + 1 if quick else 0
            n = self.quick_deaths[index]
            delay = 0.0 if n <= 1 else min(60.0, self.base_s * 2 ** (n - 2))
            if delay > 0:
                log.error("worker process %d died again within a minute of its start; "
                          "restarting it in %g s", index, delay)  # fmt: skip
            self.due_at[index] = now + delay
        return max(0.0, self.due_at[index] - now)


class _Dispatch(logging.Handler):
    """Hands records from child processes to this process's loggers (and so its handlers)."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
