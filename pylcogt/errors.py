"""One error hierarchy, classified by what the worker (or the CLI) should do about it.

- :class:`UnprocessableFrameError`: the input itself is bad (corrupt, truncated, missing keyword,
  unsupported OBSTYPE). Record the reason and never retry: the same bytes will fail again.
- :class:`CalibrationNotFoundError`: a master the frame needs does not exist yet. Wait and retry
  when a matching master is registered.
- :class:`TransientError`: an outage (database connection lost, disk full, timeout). Retry with
  backoff.
- :class:`ConfigurationError`: the installation is wrong (bad URL, missing directory, unknown
  option). Fail loudly; nothing is recorded against a frame.
- :class:`ExternalToolError`: an external program (``solve-field``, ``query-starkd``) crashed,
  exited with an error or ran out of time on this input. An outcome of this frame's step (e.g.
  ``ASTSTAT = 'failed'`` with the reason), never a reason to stop the worker.

Anything else that escapes is a bug.
"""

from __future__ import annotations

__all__ = [
    "PylcogtError",
    "UnprocessableFrameError",
    "CalibrationNotFoundError",
    "TransientError",
    "ConfigurationError",
    "NotEnoughInputsError",
    "ExternalToolError",
]


class PylcogtError(Exception):
    """Root of every error pylcogt raises on purpose."""


class UnprocessableFrameError(PylcogtError):
    """The frame's bytes or header cannot be used; fail for good with this reason.

    ``path`` names the file and ``keyword`` the header keyword at fault, when there is one.
    """

    def __init__(self, message: str, *, path: str | None = None, keyword: str | None = None):
        super().__init__(message)
        self.path = path
        self.keyword = keyword


class CalibrationNotFoundError(PylcogtError):
    """No usable master calibration exists yet; retry once one is registered."""


class TransientError(PylcogtError):
    """A temporary failure of something outside the frame; retry with backoff."""


class ConfigurationError(PylcogtError):
    """pylcogt is configured wrongly; say what to change."""


class NotEnoughInputsError(PylcogtError):
    """A master cannot be built: its group has fewer usable frames than the minimum.

    More frames may still arrive: the worker retries when the group changes.
    """


class ExternalToolError(PylcogtError):
    """An external program failed on this input (crash, error exit, timeout); the message is
    one line: the program, its exit status and the last line of its error output."""


def one_line(error: BaseException | str) -> str:
    """The error's text on one line (whitespace runs collapsed, other control characters
    escaped: NUL cannot be stored in PostgreSQL): what the registry's ``error`` columns and the
    terminal show; tracebacks go to the log only."""
    text = " ".join(str(error).split())
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if not text and isinstance(error, BaseException):
        return type(error).__name__
    return text
