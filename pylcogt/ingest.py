"""Register raw frames in the registry, idempotently.

One call, :func:`ingest_paths`, serves the CLI (``pylcogt ingest``) and archives that prefer their
own hook. Each file is checked (complete, readable headers, required keywords, a reduced OBSTYPE)
and recorded in its own transaction:

- ``new``: first time this path is seen;
- ``unchanged``: same path and same sha256 as registered (its row is not touched);
- ``updated``: same path, new content: header columns refreshed, state reset to ``pending``
  (attempts, error, product and lease cleared; the frame's current reduction, made from the old
  content, is marked superseded and stays in its history);
- ``rejected``: the file cannot be used; recorded with state ``rejected`` and the reason.

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

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from pylcogt import lifecycle
from pylcogt.db import repo
from pylcogt.db.models import FrameState, RawFrame, utcnow
from pylcogt.db.session import writer
from pylcogt.errors import UnprocessableFrameError
from pylcogt.io.raw_header import FrameMetadata, read_frame_metadata
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
]

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fits.fz", ".fits.gz", ".fit", ".fts", ".fz")


@dataclass
class IngestResult:
    """What happened to one file. ``status``: new | unchanged | updated | rejected."""

    path: str
    status: str
    frame_id: int | None = None
    obstype: str | None = None
    instrument: str | None = None
    state: str | None = None
    reason: str | None = None
    duplicate_of: int | None = None


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

    def to_json(self) -> dict:
        return {"summary": self.counts(), "files": [asdict(r) for r in self.results]}


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
    session: Session, frame: RawFrame, frame_event: FrameEvent, error: str | None
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
        lifecycle.supersede_current_reduction(session, frame.id, utcnow())


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


def record_file(session: Session, facts: FileFacts) -> IngestResult:
    """Register what :func:`read_file` found, in ``session`` (flushed, not committed)."""
    key = str(facts.path)
    frame = repo.frame_by_path(session, key)
    if frame is not None and facts.checksum and frame.checksum == facts.checksum:
        return _result(frame, "unchanged")

    # look up (or create) the instrument before the frame joins the session, so that no
    # half-filled frame row is flushed by the lookup
    instrument = repo.get_or_create_instrument(session, facts.meta) if facts.meta else None

    status = "new" if frame is None else "updated"
    if frame is None:
        frame = RawFrame(path=key, filename=facts.path.name, lease_token=0, attempts=0)
    frame.checksum = facts.checksum
    frame.file_size = facts.size
    frame.ingested_at = utcnow()

    if facts.error is not None or instrument is None:
        _clear_metadata(frame)
        _reset_processing(session, frame, FrameEvent.REJECTED, str(facts.error))
        session.add(frame)
        session.flush()
        log.warning("rejected %s: %s", key, facts.error, extra={"frame_path": key})
        return _result(frame, "rejected")

    _apply_metadata(frame, facts.meta, instrument.id)
    _reset_processing(session, frame, FrameEvent.UPDATED, None)
    session.add(frame)
    session.flush()
    result = _result(frame, status)
    twins = [f for f in repo.frames_with_checksum(session, facts.checksum) if f.id != frame.id]
    if twins:
        result.duplicate_of = twins[0].id
        log.warning("%s has the same content as frame %d (%s)", key, twins[0].id, twins[0].path)
    return result


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
    # a concurrent ingest of the same path can win the unique constraint: then redo the file,
    # which now finds the row the other process wrote
    maker = writer(maker)
    for attempt in range(3):
        with maker() as session:
            try:
                result = record_file(session, facts)
                session.commit()
                return result
            except IntegrityError:
                session.rollback()
                if attempt == 2:
                    raise
    raise AssertionError("unreachable")
