"""Reference-catalogue files (photometric calibration): FITS binary tables and CSV/ECSV tables.

Readable: ``.fits``/``.fit``/``.fts`` (the first binary or ASCII table HDU), ``.csv``, ``.ecsv``,
each optionally gzipped (``.gz``). Which column is what is decided by
:mod:`pylcogt.photometry.refcat`; here the table is only read, with masked (missing) values
of float columns filled with NaN, so a Pan-STARRS MAST download, a VizieR FITS table or a hand
made CSV all arrive as plain columns. An unreadable file is a
:class:`~pylcogt.errors.ConfigurationError`: the operator named it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import MaskedColumn, Table

from pylcogt.errors import ConfigurationError

__all__ = ["read_reference_table", "write_reference_table", "file_sha256", "table_format"]

_FITS = (".fits", ".fit", ".fts")
_CHUNK = 1 << 20


def table_format(path: str | Path) -> str:
    """``"fits"``, ``"csv"`` or ``"ecsv"`` from the file name (a ``.gz`` suffix is ignored);
    ConfigurationError for anything else."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(_FITS):
        return "fits"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".ecsv"):
        return "ecsv"
    msg = f"{Path(path).name}: a reference catalogue must be .fits, .csv or .ecsv (or .gz)"
    raise ConfigurationError(msg)


def read_reference_table(path: str | Path) -> Table:
    """The table in ``path`` (see the module doc); float columns are float64, NaN where empty."""
    path = Path(path)
    kind = table_format(path)
    if not path.is_file():
        raise ConfigurationError(f"reference catalogue {path} does not exist")
    try:
        if kind == "fits":
            table = _read_fits_table(path)
        else:
            fmt = "ascii.ecsv" if kind == "ecsv" else "ascii.csv"
            table = Table.read(path, format=fmt)
    except ConfigurationError:
        raise
    except Exception as exc:  # astropy raises many kinds for a bad file
        raise ConfigurationError(f"cannot read reference catalogue {path}: {exc}") from exc
    out = Table()
    for name in table.colnames:
        column = table[name]
        if column.dtype.kind in "fiu" and column.ndim == 1:
            values = np.asarray(column, dtype=np.float64)
            if isinstance(column, MaskedColumn):
                values = np.where(np.ma.getmaskarray(column), np.nan, values)
            out[name] = values
        elif column.ndim == 1:
            out[name] = column
    return out


def _read_fits_table(path: Path) -> Table:
    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                return Table(hdu.data, masked=False).copy()
    msg = f"{path.name} has no table extension"
    raise ConfigurationError(msg)


def write_reference_table(table: Table, path: str | Path) -> None:
    """Write ``table`` as FITS (one binary table ``REFCAT``) or CSV/ECSV, by the file name;
    an existing file is replaced."""
    path = Path(path)
    kind = table_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fits":
        hdu = fits.BinTableHDU(table, name="REFCAT")
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    else:
        table.write(path, format="ascii.ecsv" if kind == "ecsv" else "ascii.csv", overwrite=True)


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
