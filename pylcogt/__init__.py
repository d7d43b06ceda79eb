"""pylcogt: a database-backed CCD reduction service for the LCO telescope network."""

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("pylcogt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "pipeline_version"]


@functools.cache
def pipeline_version() -> str:
    """The version recorded with every reduction and product (``PIPEVER``): the release, plus
    the git commit when pylcogt runs from a git checkout (``0.2.0+g1a2b3c4d5e``, ``.dirty``
    when the checkout has uncommitted changes), so that provenance names the exact code."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / ".git").exists():
        return __version__
    try:
        described = subprocess.run(
            ["git", "-C", str(checkout), "describe", "--always", "--dirty=.dirty", "--abbrev=10",
             "--exclude", "*"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{described}" if described else __version__
