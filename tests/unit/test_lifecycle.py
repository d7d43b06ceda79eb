"""The lifecycle owns every change of state: transitions as data, statements built from them, the
ORM guard, and no other module writing a frame's state."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from pylcogt import lifecycle
from pylcogt.db.models import Base, FrameState, RawFrame
from pylcogt.lifecycle import (
    FRAME_TRANSITIONS,
    FrameEvent,
    IllegalTransitionError,
    apply_frame_event,
    frame_transition,
)

PACKAGE = Path(lifecycle.__file__).resolve().parent
P, W, R, D = FrameState.PENDING, FrameState.PROCESSING, FrameState.READY, FrameState.DONE
WAITING, FAILED, REJECTED = (FrameState.WAITING_CALIBRATION, FrameState.FAILED,
                             FrameState.REJECTED)  # fmt: skip


def test_every_event_has_a_transition_and_every_state_a_way_out() -> None:
    assert set(FRAME_TRANSITIONS) == set(FrameEvent)
    targets = {t.target for t in FRAME_TRANSITIONS.values()}
    sources = set().union(*(t.sources for t in FRAME_TRANSITIONS.values()))
    assert targets | lifecycle.INITIAL_STATES == set(FrameState)  # every state is reachable
    assert sources == set(FrameState)  # and can be left (rejected: a changed file)


@pytest.mark.parametrize(
    ("event", "allowed", "target"),
    [
        (FrameEvent.CLAIMED, {P, W}, W),
        (FrameEvent.CHECKED, {W}, R),
        (FrameEvent.REDUCED, {W}, D),
        (FrameEvent.STACKED, {P, R, D, FAILED}, D),
        (FrameEvent.WOKEN, {WAITING}, P),
        (FrameEvent.GIVEN_UP, {R}, FAILED),
        (FrameEvent.REQUEUED, {P, W, R, D, WAITING, FAILED}, P),
        (FrameEvent.RESET, {P, D, WAITING, FAILED}, P),
    ],
)
def test_transitions_are_what_the_worker_relies_on(event, allowed, target) -> None:
    assert FRAME_TRANSITIONS[event].sources == allowed
    assert FRAME_TRANSITIONS[event].target is target


def test_nothing_but_ingest_leaves_rejected_and_nothing_becomes_processing_unclaimed() -> None:
    for event, transition in FRAME_TRANSITIONS.items():
        if REJECTED in transition.sources:
            assert event in (FrameEvent.UPDATED, FrameEvent.REJECTED)
        if transition.target is W:
            assert event is FrameEvent.CLAIMED


@pytest.fixture
def session() -> Session:
    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        yield s


def _frame(session: Session, state: FrameState) -> RawFrame:
    frame = RawFrame(path=f"/raw/{state.value}.fits", filename=f"{state.value}.fits",
                     checksum="0" * 64, file_size=1, state=state, lease_token=0, attempts=0,
                     obstype="EXPOSE" if state is not REJECTED else None)  # fmt: skip
    if state is not REJECTED:
        frame.instrument_id, frame.binning = None, "1x1"
    session.add(frame)
    return frame


def test_statements_change_only_frames_in_a_source_state(session: Session) -> None:
    session.execute(sa.text("PRAGMA ignore_check_constraints = ON"))
    frames = {state: _frame(session, state) for state in FrameState}
    session.commit()
    table = RawFrame.__table__
    changed = session.execute(frame_transition(FrameEvent.WOKEN, table.c.id.in_(
        [f.id for f in frames.values()]), next_attempt_at=None)).rowcount  # fmt: skip
    assert changed == 1
    states = dict(session.execute(sa.select(table.c.filename, table.c.state)).all())
    assert states["waiting_calibration.fits"] == "pending"
    assert states["done.fits"] == "done" and states["processing.fits"] == "processing"
    statement = str(frame_transition(FrameEvent.CHECKED, table.c.id == 1))
    assert "raw_frames.state IN" in statement and "SET state=" in statement


def test_orm_guard_refuses_an_illegal_change(session: Session) -> None:
    session.execute(sa.text("PRAGMA ignore_check_constraints = ON"))
    frame = _frame(session, D)
    session.commit()
    with pytest.raises(IllegalTransitionError, match="done -> ready is not allowed"):
        frame.state = R  # a done frame is never 'ready' again (re-queued: pending first)
    session.rollback()
    assert not apply_frame_event(frame, FrameEvent.CHECKED)  # not processing: nothing changes
    assert frame.state is D
    assert apply_frame_event(frame, FrameEvent.REQUEUED) and frame.state is P
    frame.state = W  # claimed: allowed
    session.flush()
    new = RawFrame(path="/raw/new.fits", filename="new.fits", checksum="1" * 64, file_size=1)
    assert apply_frame_event(new, FrameEvent.UPDATED) and new.state is P
    with pytest.raises(IllegalTransitionError, match="cannot be done"):
        apply_frame_event(RawFrame(path="/x", filename="x"), FrameEvent.REDUCED)


class _StateWrites(ast.NodeVisitor):
    """``x.state = ...`` and ``.values(state=...)`` / ``RawFrame(state=...)`` calls."""

    def __init__(self) -> None:
        self.found: list[int] = []

    def visit_Assign(self, node: ast.Assign) -> None:  # noqa: N802 - ast's name
        for target in node.targets:
            if isinstance(target, ast.Attribute) and target.attr == "state":
                self.found.append(node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
        writes = any(k.arg == "state" for k in node.keywords)
        if name in ("values", "RawFrame", "update") and writes:
            self.found.append(node.lineno)
        self.generic_visit(node)


def test_no_module_but_the_lifecycle_writes_a_frames_state() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "lifecycle.py" or "simulate" in path.parts:
            continue
        visitor = _StateWrites()
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        offenders += [f"{path.relative_to(PACKAGE.parent)}:{line}" for line in visitor.found]
    assert offenders == [], "state changes belong in pylcogt/lifecycle.py"


def test_the_scanner_finds_state_writes() -> None:
    visitor = _StateWrites()
    visitor.visit(ast.parse("frame.state = 'done'\nupdate(t).values(state='x')\n"
                            "RawFrame(path='p', state='pending')\n"))  # fmt: skip
    assert visitor.found == [1, 2, 3]
