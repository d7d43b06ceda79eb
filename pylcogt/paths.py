"""Where products and masters are written, built from header values and validated.

Header values (site, camera, file names) become path components only if they look like the
names LCO uses: letters, digits, ``.``, ``_``, ``-``, ``+``, starting with a letter or digit, no
``..``. Anything else (a ``/``, a ``..``, a space, a control character) is refused, so that no
header can make pylcogt write outside its data directory.

Layout under the data directory::

    {site}/{camera}/{YYYYMMDD}/processed/{raw stem with 00 -> 91}.fits.fz
    {site}/{camera}/{YYYYMMDD}/processed/superseded/{product stem}.red{ID}.fits.fz
    {site}/{camera}/{YYYYMMDD}/masters/{camera}-{type}-{YYYYMMDD}-bin{NxN}[-{mode}][-{filter}][-v{N}].fits.fz

A master's version ``N`` (2, 3..: the rebuilds of its group) is in its name, so no master file is
ever written twice. A superseded product is kept (``PYLCOGT_KEEP_PRODUCTS``) under the id of the
reduction that made it.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from pylcogt.errors import UnprocessableFrameError

__all__ = ["safe_component", "product_path", "kept_product_path", "master_path", "raw_stem"]

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_RAW_SUFFIXES = (".fits.fz", ".fits.gz", ".fits", ".fit", ".fts", ".fz")
_LEVEL_00 = re.compile(r"^(.*-[a-z])00$")


def safe_component(value: str, what: str) -> str:
    """``value`` if it is safe as one path component, else UnprocessableFrameError."""
    text = str(value).strip()
    if not _SAFE.match(text) or ".." in text:
        msg = (
            f"{what} {value!r} cannot be used in a file name (only letters, digits and . _ - + "
            f"are allowed, no '..'); fix the header"
        )
        raise UnprocessableFrameError(msg, keyword=what)
    return text


def raw_stem(filename: str) -> str:
    """The raw file name without its FITS/compression suffix."""
    name = Path(filename).name
    for suffix in _RAW_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _inside(data_dir: Path, path: Path) -> Path:
    root = data_dir.resolve()
    resolved = path.resolve()
    if root not in resolved.parents:
        raise UnprocessableFrameError(f"refusing to write {resolved}: it is outside {root}")
    return resolved


def _night_dir(data_dir: Path, site: str, camera: str, dayobs: dt.date) -> Path:
    return (
        Path(data_dir)
        / safe_component(site, "SITEID")
        / safe_component(camera, "INSTRUME")
        / dayobs.strftime("%Y%m%d")
    )


def product_path(
    data_dir: Path, *, site: str, camera: str, dayobs: dt.date, raw_filename: str
) -> Path:
    """The reduced product for a raw frame: LCO's reduction level ``00`` becomes ``91``."""
    stem = safe_component(raw_stem(raw_filename), "file name")
    match = _LEVEL_00.match(stem)
    reduced = f"{match.group(1)}91" if match else f"{stem}-91"
    path = _night_dir(data_dir, site, camera, dayobs) / "processed" / f"{reduced}.fits.fz"
    return _inside(Path(data_dir), path)


def kept_product_path(product: Path, reduction_id: int) -> Path:
    """Where the product of superseded reduction ``reduction_id`` is kept (beside the current
    product, in ``superseded/``)."""
    product = Path(product)
    stem = product.name.removesuffix(".fits.fz")
    return product.parent / "superseded" / f"{stem}.red{int(reduction_id)}.fits.fz"


def master_path(
    data_dir: Path,
    *,
    site: str,
    camera: str,
    dayobs: dt.date,
    obstype: str,
    binning: str,
    readout_mode: str = "",
    filter_name: str = "",
    version: int = 1,
) -> Path:
    """The file of a night's master calibration of one kind (``version`` 2 and up: ``-vN``)."""
    parts = [
        safe_component(camera, "INSTRUME"),
        safe_component(obstype.lower(), "OBSTYPE"),
        dayobs.strftime("%Y%m%d"),
        f"bin{safe_component(binning, 'CCDSUM')}",
    ]
    if readout_mode:
        parts.append(safe_component(readout_mode, "CONFMODE"))
    if filter_name:
        parts.append(safe_component(filter_name, "FILTER"))
    if version > 1:
        parts.append(f"v{int(version)}")
    path = _night_dir(data_dir, site, camera, dayobs) / "masters" / ("-".join(parts) + ".fits.fz")
    return _inside(Path(data_dir), path)
