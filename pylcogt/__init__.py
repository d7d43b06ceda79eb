"""pylcogt: a database-backed CCD reduction service for the LCO telescope network."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pylcogt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
