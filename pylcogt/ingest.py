"""Register raw frames in the registry, idempotently.

One call, :func:`ingest_paths`, serves the CLI (``pylcogt ingest``) and archives that prefer their
own hook. Each file is checked (complete, readable headers, required keywords, a reduced OBSTYPE)
and recorded in its own transaction:

- ``new``: first time this path is seen;
- ``unchanged``: same path and same sha256 as registered (its row is not touched);
- ``updated``: same path, new content: header columns refreshed, state reset to ``pending``
  (attempts, error, product and lease cleared; the frame's current reduction, made from the old
  content, is marked superseded and stays in its history);
- ``rejected``: the file cannot be used; recorded with state ``rejected`` and a one-line reason.

**One exposure once.** A file holds an exposure, named by :func:`exposure_key` (site, camera,
night and frame number; the file's sha256 when the header has no frame number). The first file
of an exposure is registered; a later one at another path (``x.fits.fz`` beside ``x.fits``, a
copy in another directory) is ``rejected``: a *duplicate* (``duplicate_of``) when its header
facts and its decoded pixels are the first file's (:func:`pylcogt.io.raw_read.pixel_digest`,
computed only when two files claim one exposure), else a *conflict* (``conflicts_with``) that
an operator must settle, listed apart in :meth:`IngestReport.to_json`. Either way the reason
names the first file.

**One bad file never stops the batch.** A value the database refuses (too long for an index,
a constraint) is rolled back for that file only, which is then recorded ``rejected`` with the
database's one-line message (or, when even that is refused, only reported); the files after it
are registered. Lost connections still stop the batch: that is an outage, not the file.

Times (``ingested_at``, which starts a calibration group's quiet time, and ``updated_at``) are
the database server's (:func:`pylcogt.db.clock.db_now`), not this machine's.

For an archive with its own hook (instead of ``pylcogt ingest --watch DIR``, see
:mod:`pylcogt.watch`), one call per delivered file or batch::

    from pylcogt.db.migrate import ensure_schema
    from pylcogt.db.session import get_sessionmaker
    from pylcogt.ingest import ingest_paths

    ensure_schema(url)  # once
    report = ingest_paths(get_sessionmaker(url), ["/archive/lsc/fa15/20261128/x-e91.fits"])
    for result in report.results:  # status: new | unchanged | updated | rejected
        print(result.status, result.frame_id, result.reason)

Call it only for complete files (written under another name and renamed into place).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from pylcogt import lifecycle
from pylcogt.db import repo
from pylcogt.db.clock import db_now
from pylcogt.db.models import FrameState, RawFrame
from pylcogt.db.session import writer
from pylcogt.errors import UnprocessableFrameError, one_line
from pylcogt.io.raw_header import FrameMetadata, read_frame_metadata
from pylcogt.io.raw_read import pixel_digest
from pylcogt.io.scan import scan_fits, sha256_file
from pylcogt.lifecycle import FrameEvent

__all__ = [
    "FileFacts",
    "read_file",
    "record_file",
    "FITS_SUFFIXES",
    "IngestResult",
    "IngestReport",
    "iter_fits_files",
    "ingest_paths",
    "ingest_file",
    "exposure_key",
]

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fits.fz", ".fits.gz", ".fit", ".fts", ".fz")
#: Longest path the registry stores (``raw_frames.path``, a unique index).
MAX_PATH_CHARS = 1024
#: SQLSTATE classes of a database error caused by one file's values, not by an outage: data
#: exception (22), integrity constraint (23), program limit exceeded (54: an index entry too big).
_PER_FILE_SQLSTATE = ("22", "23", "54")
#: Header facts two files of one exposure must share (RawFrame columns, FrameMetadata fields).
_EXPOSURE_FACTS = ("obstype", "dateobs", "exptime_s", "filter_name", "binning", "readout_mode",
                   "object_name")  # fmt: skip


@dataclass
class IngestResult:
    """What happened to one file. ``status``: new | unchanged | updated | rejected.

    ``duplicate_of``: the frame already registered for this file's exposure, of which this file
    is a copy (rejected). ``conflicts_with``: the frame registered under the same exposure key
    whose header facts or pixels differ (rejected; an operator decides which is right).
    ``frame_id`` is None for a file that could not be recorded at all (its reason says why).
    """

    path: str
    status: str
    frame_id: int | None = None
    obstype: str | None = None
    instrument: str | None = None
    state: str | None = None
    reason: str | None = None
    duplicate_of: int | None = None
    conflicts_with: int | None = None


@dataclass
class IngestReport:
    results: list[IngestResult] = field(default_factory=list)
    ignored: int = 0

    def counts(self) -> dict[str, int]:
        out = {"new": 0, "unchanged": 0, "updated": 0, "rejected": 0}
        for result in self.results:
            out[result.status] += 1
        out["ignored"] = self.ignored
        return out

    def conflicts(self) -> list[IngestResult]:
        """Files rejected because another file holds the same exposure key with other facts or
        pixels: an operator must decide which is right."""
        return [r for r in self.results if r.conflicts_with is not None]

    def to_json(self) -> dict:
        return {"summary": self.counts(), "files": [asdict(r) for r in self.results],
                "conflicts": [asdict(r) for r in self.conflicts()]}  # fmt: skip


def _is_fits_name(path: Path) -> bool:
    return path.name.lower().endswith(FITS_SUFFIXES)


def iter_fits_files(
    paths: Iterable[str | os.PathLike], on_ignored: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Files named on the command line as they are, and FITS-named files found recursively in
    directories (sorted, so runs are reproducible). Other files in directories are ignored."""
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    candidate = Path(root) / name
                    if _is_fits_name(candidate):
                        yield candidate
                    elif on_ignored is not None:
                        on_ignored(candidate)
        else:
            yield path


def _apply_metadata(frame: RawFrame, meta: FrameMetadata, instrument_id: int) -> None:
    frame.obstype = meta.obstype
    frame.instrument_id = instrument_id
    frame.dateobs = meta.dateobs
    frame.dayobs = meta.dayobs
    frame.exptime_s = meta.exptime_s
    frame.filter_name = meta.filter_name
    frame.binning = meta.binning
    frame.readout_mode = meta.readout_mode
    frame.object_name = meta.object_name


def _reset_processing(
    session: Session,
    frame: RawFrame,
    frame_event: FrameEvent,
    error: str | None,
    now: dt.datetime,
) -> None:
    """A new frame, or a registered one whose content changed: ``pending`` (or ``rejected``)
    from scratch. A worker holding it loses its lease (the fencing token moves on)."""
    if frame.state is FrameState.PROCESSING:
        frame.lease_token = (frame.lease_token or 0) + 1
    lifecycle.apply_frame_event(frame, frame_event)
    frame.attempts = 0
    frame.last_error = error
    frame.product_path = None
    frame.redo_reason = None
    frame.next_attempt_at = None
    frame.quiet_until = None
    frame.lease_owner = None
    frame.lease_expires_at = None
    frame.calibration_cutoff = None  # a backfill sets it again on the frames it ingests
    if frame.id is not None:
        # the product was made from the old content: its reduction is history now
        lifecycle.supersede_current_reduction(session, frame.id, now)


def _clear_metadata(frame: RawFrame) -> None:
    for column in (
        "obstype",
        "instrument_id",
        "dateobs",
        "dayobs",
        "exptime_s",
        "filter_name",
        "binning",
        "readout_mode",
        "object_name",
        "exposure_key",
    ):
        setattr(frame, column, None)


@dataclass(frozen=True)
class FileFacts:
    """What reading one file found: its checksum and header facts, or why it is unusable."""

    path: Path
    checksum: str
    size: int
    meta: FrameMetadata | None
    error: UnprocessableFrameError | None


def read_file(path: Path) -> FileFacts:
    """Hash, scan and validate one file; no database. Safe to run in worker threads."""
    path = path.resolve()
    try:
        size = path.stat().st_size
        checksum = sha256_file(path)
    except OSError as exc:
        error = UnprocessableFrameError(
            f"{path.name}: cannot be read ({exc.strerror}); check that it exists and is readable",
            path=str(path),
        )
        return FileFacts(path, "", 0, None, error)
    try:
        return FileFacts(path, checksum, size, read_frame_metadata(scan_fits(path)), None)
    except UnprocessableFrameError as exc:
        return FileFacts(path, checksum, size, None, exc)
    except OSError as exc:  # an I/O error mid-read (EIO, vanished NFS handle)
        error = UnprocessableFrameError(f"{path.name}: read failed ({exc})", path=str(path))
        return FileFacts(path, checksum, size, None, error)


def exposure_key(facts: FileFacts) -> str | None:
    """The exposure ``facts`` holds: ``site/camera/DAY-OBS/FRAMENUM`` from its header
    (:class:`~pylcogt.io.raw_header.FrameMetadata`), else ``sha256:`` and its checksum (the same
    bytes are the same exposure); None for an unusable file."""
    if facts.meta is None:
        return None
    return facts.meta.exposure or f"sha256:{facts.checksum}"


def record_file(session: Session, facts: FileFacts) -> IngestResult:
    """Register what :func:`read_file` found, in ``session`` (flushed, not committed)."""
    key = str(facts.path)
    frame = repo.frame_by_path(session, key)
    if frame is not None and facts.checksum and frame.checksum == facts.checksum:
        return _result(frame, "unchanged")

    now = db_now(session)  # the registry's clock: quiet times are measured from it
    # look up (or create) the instrument before the frame joins the session, so that no
    # half-filled frame row is flushed by the lookup
    meta = facts.meta
    instrument = repo.get_or_create_instrument(session, meta, now=now) if meta else None

    status = "new" if frame is None else "updated"
    if frame is None:
        frame = RawFrame(path=key, filename=facts.path.name, lease_token=0, attempts=0)
    frame.checksum = facts.checksum
    frame.file_size = facts.size
    frame.ingested_at = now
    frame.updated_at = now

    if facts.error is not None or meta is None or instrument is None:
        _clear_metadata(frame)
        return _reject(session, frame, str(facts.error), now)

    exposure = exposure_key(facts)
    holder = _exposure_holder(session, exposure, facts.checksum, frame.id)
    _apply_metadata(frame, meta, instrument.id)
    frame.exposure_key = exposure
    if holder is not None:
        return _reject_second_copy(session, frame, facts, holder, now)
    _reset_processing(session, frame, FrameEvent.UPDATED, None, now)
    session.add(frame)
    session.flush()
    return _result(frame, status)


def _reject(session: Session, frame: RawFrame, reason: str, now: dt.datetime) -> IngestResult:
    _reset_processing(session, frame, FrameEvent.REJECTED, one_line(reason), now)
    session.add(frame)
    session.flush()
    log.warning("rejected %s: %s", frame.path, frame.last_error, extra={"frame_path": frame.path})
    return _result(frame, "rejected")


def _exposure_holder(
    session: Session, exposure: str, checksum: str, frame_id: int | None
) -> RawFrame | None:
    """The frame registered for ``exposure`` (other than ``frame_id``); for frames registered
    before exposure keys existed, one with the same bytes."""
    holder = repo.exposure_holder(session, exposure, other_than=frame_id)
    if holder is not None:
        return holder
    twins = repo.frames_with_checksum(session, checksum)
    return next((f for f in twins if f.id != frame_id and f.state is not FrameState.REJECTED),
                None)  # fmt: skip


def _reject_second_copy(
    session: Session, frame: RawFrame, facts: FileFacts, holder: RawFrame, now: dt.datetime
) -> IngestResult:
    """``frame`` holds the exposure ``holder`` holds already: a duplicate, or a conflict."""
    name, exposure = facts.path.name, frame.exposure_key or ""
    what = "the same bytes" if exposure.startswith("sha256:") else f"exposure {exposure}"
    difference = _exposure_difference(facts, holder, frame.instrument_id)
    if difference is None:
        reason = (f"{name}: duplicate of {what} already registered as {holder.path} "
                  f"(frame {holder.id}); this copy is not reduced: nothing to do, or delete "
                  f"it")  # fmt: skip
    else:
        reason = (f"{name}: conflicts with {holder.path} (frame {holder.id}): same exposure key "
                  f"{exposure}, {difference}; an operator must decide which is right (delete "
                  f"the wrong file; to correct the registered one, replace it at its path and "
                  f"ingest it again)")  # fmt: skip
    result = _reject(session, frame, reason, now)
    if difference is None:
        result.duplicate_of = holder.id
    else:
        result.conflicts_with = holder.id
    return result


def _fact(value) -> str:
    return value.isoformat() if isinstance(value, dt.datetime) else repr(value)


def _exposure_difference(facts: FileFacts, holder: RawFrame, instrument_id: int) -> str | None:
    """How the file differs from the frame registered for its exposure: its header facts,
    then its decoded pixels (read only now); None when it is the same exposure."""
    meta = facts.meta
    assert meta is not None
    changed = [
        f"{name} {_fact(getattr(meta, name))} vs {_fact(getattr(holder, name))}"
        for name in _EXPOSURE_FACTS
        if getattr(meta, name) != getattr(holder, name)
    ]
    if holder.instrument_id != instrument_id:
        changed.append("a different telescope or enclosure")
    if changed:
        return f"different header facts ({', '.join(changed)})"
    if holder.checksum == facts.checksum:
        return None
    try:
        same = pixel_digest(facts.path) == pixel_digest(holder.path)
    except (UnprocessableFrameError, OSError) as exc:
        return f"pixels that cannot be compared ({exc})"
    return None if same else "different pixels"


def ingest_file(session: Session, path: Path) -> IngestResult:
    """Register one file in ``session`` (not committed)."""
    return record_file(session, read_file(path))


def _result(frame: RawFrame, status: str) -> IngestResult:
    return IngestResult(
        path=frame.path,
        status=status,
        frame_id=frame.id,
        obstype=frame.obstype,
        instrument=frame.instrument.camera if frame.instrument_id and frame.instrument else None,
        state=frame.state.value,
        reason=frame.last_error if frame.state is FrameState.REJECTED else None,
    )


def ingest_paths(
    maker: sessionmaker[Session],
    paths: Iterable[str | os.PathLike],
    *,
    progress: Callable[[int, IngestResult], None] | None = None,
    threads: int = 2,
) -> IngestReport:
    """Ingest files and directories (recursively); one transaction per file.

    Reading (sha256, header scan) runs ahead in ``threads`` threads (hashing releases the GIL,
    and it is the cost of large frames); recording is serial, in file order. The registry must
    already have its schema (see :func:`pylcogt.db.migrate.ensure_schema`). A file that cannot
    be used is recorded as ``rejected`` and the batch goes on.
    """
    report = IngestReport()

    def ignored(_path: Path) -> None:
        report.ignored += 1

    files = iter_fits_files(paths, ignored)
    window = max(1, threads) * 4  # files read ahead of the recorder: bounded memory
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="ingest-read") as pool:
        pending: deque[Future[FileFacts]] = deque()
        n = 0
        while True:
            while len(pending) < window:
                path = next(files, None)
                if path is None:
                    break
                pending.append(pool.submit(read_file, path))
            if not pending:
                break
            result = _record_with_retry(maker, pending.popleft().result())
            report.results.append(result)
            n += 1
            if progress is not None:
                progress(n, result)
    return report


def _record_with_retry(maker: sessionmaker[Session], facts: FileFacts) -> IngestResult:
    """Record one file in its own transaction; never lets one file's values stop the batch.

    A concurrent ingest of the same path or exposure can win a unique constraint: the file is
    recorded again and finds the row the other process wrote. A value the database refuses is
    rolled back for this file only and the file recorded ``rejected`` with the database's
    one-line message (only reported when even that is refused). Outages propagate.
    """
    problem = _unstorable_path(facts.path)
    if problem is not None:
        return _reported_only(facts, problem)
    maker = writer(maker)
    refused: DBAPIError | None = None
    for _attempt in range(3):
        with maker() as session:
            try:
                result = record_file(session, facts)
                session.commit()
                return result
            except DBAPIError as exc:
                if not _is_per_file_fault(exc):
                    raise
                session.rollback()
                refused = exc
                if not isinstance(exc, IntegrityError):  # a race is worth another try
                    break
    assert refused is not None
    return _record_refusal(maker, facts, refused)


def _is_per_file_fault(exc: DBAPIError) -> bool:
    """The database refused this file's values (not an outage, not a bug)."""
    if isinstance(exc, (IntegrityError, DataError)):
        return True
    code = getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None)
    return isinstance(code, str) and code[:2] in _PER_FILE_SQLSTATE


def _record_refusal(
    maker: sessionmaker[Session], facts: FileFacts, refused: DBAPIError
) -> IngestResult:
    message = str(getattr(refused, "orig", refused)).strip().splitlines()[0][:300]
    reason = (f"{facts.path.name}: the registry refused its values ({message}); fix the header "
              f"(or the file name) and ingest the file again")  # fmt: skip
    log.debug("%s: the registry refused its values", facts.path, exc_info=refused)
    error = UnprocessableFrameError(reason, path=str(facts.path))
    try:
        with maker() as session:
            result = record_file(session, replace(facts, meta=None, error=error))
            session.commit()
            return result
    except DBAPIError as exc:
        if not _is_per_file_fault(exc):
            raise
        return _reported_only(facts, reason)


def _unstorable_path(path: Path) -> str | None:
    """Why ``path`` cannot be a registry key (None when it can)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return (f"{_printable(path)}: the path is not valid UTF-8, which the registry stores; "
                f"rename the file")  # fmt: skip
    if len(text) > MAX_PATH_CHARS:
        return (f"{path.name}: the path is {len(text)} characters long, the registry keeps at "
                f"most {MAX_PATH_CHARS}; move the file to a shorter path")  # fmt: skip
    return None


def _reported_only(facts: FileFacts, reason: str) -> IngestResult:
    """A file the registry cannot hold at all: reported, not recorded."""
    reason = one_line(reason)
    log.warning("not recorded %s: %s", _printable(facts.path), reason)
    return IngestResult(path=_printable(facts.path), status="rejected", state="rejected",
                        reason=reason)  # fmt: skip


def _printable(path: Path) -> str:
    """``path`` as text that can be printed and stored (undecodable bytes as ``\\xNN``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
