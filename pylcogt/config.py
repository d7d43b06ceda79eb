"""Run-time settings: where the registry database and the data products live.

Each setting comes from, in order: the CLI option, the environment variable, the default.

- ``PYLCOGT_DATABASE_URL`` / ``--database-url``: an SQLAlchemy URL. Default: an SQLite file
  ``pylcogt.db`` in the current directory. Production: ``postgresql+psycopg2://user:pw@host/db``.
- ``PYLCOGT_DATA_DIR`` / ``--data-dir``: where reduced frames and masters are written. Default:
  ``pylcogt-data`` in the current directory.
- ``PYLCOGT_CROSSTALK_FILE`` / ``--crosstalk-file``: Sinistro crosstalk coefficients per camera
  and binning (LCO commissioning table format) for frames whose header has no ``CRSTLKij``.
- ``PYLCOGT_INDEX_DIR`` / ``--index-dir``: astrometry.net index files for the science chain's
  WCS. Default: ``/usr/share/astrometry`` (Debian's packages). ``none`` turns astrometry off
  (catalogues are still made; the WCS status card says why there is no WCS).
- ``PYLCOGT_REFCAT`` / ``--refcat``: a reference catalogue file (FITS or CSV, Pan-STARRS 1
  column names understood) for the photometric calibration. Default: the catalogues loaded into
  the registry with ``pylcogt refcat load``.
- ``PYLCOGT_REFCAT_BRIGHT_MAG``: reference stars brighter than this are not used for zero points
  (default 14.0: Pan-STARRS 1 saturates near 13.5; ``none`` for catalogues without that limit,
  e.g. wide-field cameras calibrated on brighter stars).
- ``PYLCOGT_KEEP_PRODUCTS`` / ``--keep-products``: when a frame is reduced again, keep the
  superseded product (``processed/superseded/NAME.red<ID>.fits.fz``) instead of replacing it.
  Default: off (the reduction history keeps every product's checksum and masters either way).
- ``PYLCOGT_REREDUCE``: ``0`` (or ``no``/``off``) keeps provisional products as they are when a
  better master arrives (the worker's ``--no-rereduce``). Default: on.
- ``PYLCOGT_MIN_INPUTS`` / ``--min-inputs``: the fewest usable frames a master is built from,
  per calibration type, e.g. ``BIAS=3,DARK=3,SKYFLAT=3`` (a bare number sets every type). Types
  not named keep their defaults (bias 5, dark 3, flat 3). An instrument's own value in the
  registry (``pylcogt instruments set CAMERA --min-inputs ...``) wins over this one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pylcogt.errors import ConfigurationError

__all__ = [
    "Settings",
    "load_settings",
    "redact_url",
    "DATABASE_URL_ENV",
    "DATA_DIR_ENV",
    "CROSSTALK_FILE_ENV",
    "INDEX_DIR_ENV",
    "REFCAT_ENV",
    "REFCAT_BRIGHT_ENV",
    "KEEP_PRODUCTS_ENV",
    "REREDUCE_ENV",
    "MIN_INPUTS_ENV",
    "DEFAULT_INDEX_DIR",
    "DEFAULT_MIN_INPUTS",
    "parse_min_inputs",
    "format_min_inputs",
]

DATABASE_URL_ENV = "PYLCOGT_DATABASE_URL"
DATA_DIR_ENV = "PYLCOGT_DATA_DIR"
CROSSTALK_FILE_ENV = "PYLCOGT_CROSSTALK_FILE"
INDEX_DIR_ENV = "PYLCOGT_INDEX_DIR"
REFCAT_ENV = "PYLCOGT_REFCAT"
REFCAT_BRIGHT_ENV = "PYLCOGT_REFCAT_BRIGHT_MAG"
KEEP_PRODUCTS_ENV = "PYLCOGT_KEEP_PRODUCTS"
REREDUCE_ENV = "PYLCOGT_REREDUCE"
MIN_INPUTS_ENV = "PYLCOGT_MIN_INPUTS"
#: the fewest usable frames per master, by calibration type (the notes' nightly sets)
DEFAULT_MIN_INPUTS: dict[str, int] = {"BIAS": 5, "DARK": 3, "SKYFLAT": 3}
DEFAULT_INDEX_DIR = Path("/usr/share/astrometry")
DEFAULT_SQLITE_NAME = "pylcogt.db"
DEFAULT_DATA_DIR_NAME = "pylcogt-data"


@dataclass(frozen=True)
class Settings:
    """Resolved settings. ``database_url`` may hold a password: print :attr:`safe_database_url`."""

    database_url: str
    data_dir: Path
    crosstalk_file: Path | None = None  # Sinistro crosstalk table, for frames without CRSTLKij
    #: astrometry.net index directory; ``None``: astrometry off
    index_dir: Path | None = DEFAULT_INDEX_DIR
    #: reference catalogue file for the zero points; ``None``: the registry's catalogues
    refcat: Path | None = None
    #: reference stars brighter than this (mag) are not used for zero points; ``None``: all
    refcat_bright_mag: float | None = 14.0
    #: keep a frame's superseded products (``processed/superseded/``) when it is reduced again
    keep_products: bool = False
    #: reduce provisional products again when a better master arrives
    rereduce: bool = True
    #: ``(type, n)`` pairs overriding :data:`DEFAULT_MIN_INPUTS` (``--min-inputs``)
    min_inputs: tuple[tuple[str, int], ...] = ()

    def min_inputs_for(self, obstype: str, instrument_value: str | None = None) -> int:
        """The fewest usable frames for a master of ``obstype``: the instrument's registry value
        (``instruments.min_inputs``, same form as ``--min-inputs``) if it names the type, else
        this setting, else the default."""
        if instrument_value:
            own = parse_min_inputs(instrument_value, what="the instrument's min_inputs")
            if obstype in own:
                return own[obstype]
        return dict(self.min_inputs).get(obstype, DEFAULT_MIN_INPUTS.get(obstype, 1))

    @property
    def safe_database_url(self) -> str:
        return redact_url(self.database_url)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``; safe to print or log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def _check_url(url: str) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        msg = (
            f"the database URL {redact_url(url)!r} is not a valid SQLAlchemy URL ({exc}); "
            f"use e.g. sqlite:///pylcogt.db or postgresql+psycopg2://user@host/dbname"
        )
        raise ConfigurationError(msg) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        msg = f"database backend {backend!r} is not supported; use sqlite or postgresql"
        raise ConfigurationError(msg)
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        # make relative SQLite paths absolute now, so later chdir()s cannot move the database
        db_path = Path(parsed.database).expanduser()
        if not db_path.is_absolute():
            db_path = Path.cwd() / db_path
        url = parsed.set(database=str(db_path)).render_as_string(hide_password=False)
    return url


def load_settings(
    database_url: str | None = None,
    data_dir: str | os.PathLike | None = None,
    crosstalk_file: str | os.PathLike | None = None,
    index_dir: str | os.PathLike | None = None,
    refcat: str | os.PathLike | None = None,
    keep_products: bool | None = None,
    min_inputs: str | None = None,
) -> Settings:
    """Resolve settings from explicit values, then the environment, then the defaults."""
    url = database_url or os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{DEFAULT_SQLITE_NAME}"
    directory = data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR_NAME
    crosstalk = crosstalk_file or os.environ.get(CROSSTALK_FILE_ENV) or None
    index = str(index_dir or os.environ.get(INDEX_DIR_ENV) or DEFAULT_INDEX_DIR)
    reference = refcat or os.environ.get(REFCAT_ENV) or None
    return Settings(
        database_url=_check_url(url),
        data_dir=Path(directory).expanduser().resolve(),
        crosstalk_file=Path(crosstalk).expanduser().resolve() if crosstalk else None,
        index_dir=None if index.lower() in ("none", "off") else Path(index).expanduser().resolve(),
        refcat=Path(reference).expanduser().resolve() if reference else None,
        refcat_bright_mag=_bright_mag(os.environ.get(REFCAT_BRIGHT_ENV)),
        keep_products=keep_products if keep_products else _flag(KEEP_PRODUCTS_ENV, False),
        rereduce=_flag(REREDUCE_ENV, True),
        min_inputs=tuple(sorted(parse_min_inputs(
            min_inputs or os.environ.get(MIN_INPUTS_ENV) or "",
            what="--min-inputs" if min_inputs else MIN_INPUTS_ENV).items())),
    )


def parse_min_inputs(text: str, *, what: str = "--min-inputs") -> dict[str, int]:
    """``'BIAS=3,DARK=3,SKYFLAT=3'`` -> ``{'BIAS': 3, ...}``; a bare ``'3'`` sets every type;
    ``''``: nothing set. Types are BIAS, DARK, SKYFLAT (FLAT is accepted for SKYFLAT), any case;
    each minimum is at least 1. :class:`ConfigurationError` naming ``what`` otherwise."""
    text = (text or "").strip()
    if not text:
        return {}
    if text.isdigit():
        return dict.fromkeys(DEFAULT_MIN_INPUTS, _positive(text, what))
    out: dict[str, int] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip().upper()
        name = "SKYFLAT" if name == "FLAT" else name
        if not sep or name not in DEFAULT_MIN_INPUTS:
            msg = (f"{what}: {item.strip()!r} is not TYPE=N; give e.g. BIAS=3,DARK=3,SKYFLAT=3 "
                   f"(types {', '.join(DEFAULT_MIN_INPUTS)}) or one number for all")
            raise ConfigurationError(msg)
        out[name] = _positive(value.strip(), what)
    return out


def format_min_inputs(values: dict[str, int]) -> str:
    """The inverse of :func:`parse_min_inputs`: ``'BIAS=3,DARK=3'`` (types in a fixed order)."""
    return ",".join(f"{k}={values[k]}" for k in DEFAULT_MIN_INPUTS if k in values)


def _positive(text: str, what: str) -> int:
    if not text.isdigit() or int(text) < 1:
        msg = f"{what}: {text!r} is not a number of frames (1 or more)"
        raise ConfigurationError(msg)
    return int(text)


def _flag(name: str, default: bool) -> bool:
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    if text in ("1", "yes", "on", "true"):
        return True
    if text in ("0", "no", "off", "false"):
        return False
    msg = f"{name}={text!r} is not a yes/no setting; give 1 or 0"
    raise ConfigurationError(msg)


def _bright_mag(text: str | None) -> float | None:
    if text is None or not text.strip():
        return 14.0
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        msg = f"{REFCAT_BRIGHT_ENV}={text!r} is not a magnitude; give e.g. 14.0, or 'none'"
        raise ConfigurationError(msg) from None
