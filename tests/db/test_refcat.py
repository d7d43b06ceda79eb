"""Reference catalogues in the registry: ``pylcogt refcat load|list`` on SQLite and PostgreSQL,
idempotent reloads, and cone searches (across RA 0/360 and near a pole)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.table import Table

from pylcogt.cli_refcat import add_refcat_command, parse_column_options
from pylcogt.config import load_settings
from pylcogt.db import migrate
from pylcogt.db.models import ReferenceCatalog, ReferenceStar
from pylcogt.db.session import get_engine, get_sessionmaker
from pylcogt.errors import ConfigurationError
from pylcogt.photometry import reference_stars_near
from pylcogt.photometry.refcat import angular_separation_deg
from pylcogt.photometry.store import load_catalog_file, query_cone, ra_ranges
from pylcogt.simulate.sky import tan_deproject


def _refcat(argv: list[str], db_url: str, tmp_path: Path, capsys) -> tuple[int, str]:
    """Run ``pylcogt refcat ...`` through the module's own parser (as cli.build_parser adds it)."""
    common = argparse.ArgumentParser(add_help=False)
    parser = argparse.ArgumentParser(prog="pylcogt")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, help_text, description=None):
        return sub.add_parser(name, help=help_text, description=description, parents=[common])

    handler = add_refcat_command(add, common)
    args = parser.parse_args(["refcat", *argv])
    capsys.readouterr()
    code = handler(args, load_settings(db_url, tmp_path / "data"))
    return code, capsys.readouterr().out


def _field(seed: int, ra0: float, dec0: float, half: float, n: int) -> Table:
    """``n`` stars uniform in a tangent-plane box of half-width ``half`` degrees about (ra0,
    dec0), with r (and g for most), Pan-STARRS MAST column names and -999 missing."""
    rng = np.random.default_rng(seed)
    ra, dec = tan_deproject(rng.uniform(-half, half, n), rng.uniform(-half, half, n), ra0, dec0)
    r = rng.uniform(13, 21, n)
    g = np.where(rng.uniform(size=n) < 0.8, r + rng.normal(0.5, 0.2, n), -999.0)
    return Table({
        "objID": np.arange(n, dtype=np.int64) + 1000, "raMean": ra, "decMean": dec,
        "gMeanPSFMag": g, "gMeanPSFMagErr": np.where(g > -900, 0.02, -999.0),
        "rMeanPSFMag": r, "rMeanPSFMagErr": np.full(n, 0.015),
    })  # fmt: skip


def _count(db_url: str, name: str | None = None) -> int:
    with get_sessionmaker(db_url)() as session:
        query = sa.select(sa.func.count()).select_from(ReferenceStar)
        if name is not None:
            query = query.join(ReferenceCatalog).where(ReferenceCatalog.name == name)
        return session.scalar(query)


def test_load_list_and_reload(db_url: str, tmp_path: Path, capsys) -> None:
    migrate.upgrade(db_url)
    csv_path = tmp_path / "ps1_field.csv"
    table = _field(1, 359.98, 10.0, 0.2, 400)  # across RA 0/360
    table.write(csv_path, format="ascii.csv")
    code, out = _refcat(["load", str(csv_path), "--json"], db_url, tmp_path, capsys)
    first = json.loads(out)
    assert code == 0 and first["action"] == "loaded" and first["name"] == "ps1_field"
    assert first["n_stars"] == 400 and first["bands"] == ["g", "r"]
    assert first["columns"]["ra"] == "raMean" and first["columns"]["g_err"] == "gMeanPSFMagErr"
    assert _count(db_url) == 400

    # the same file again: nothing changes
    code, out = _refcat(["load", str(csv_path), "--json"], db_url, tmp_path, capsys)
    assert json.loads(out)["action"] == "unchanged" and _count(db_url) == 400
    code, out = _refcat(["load", str(csv_path)], db_url, tmp_path, capsys)
    assert "unchanged (already loaded)" in out

    # a FITS file (VizieR II/349 names) under another name
    fits_path = tmp_path / "vizier.fits"
    other = _field(2, 120.0, -30.0, 0.1, 150)
    other.rename_columns(["raMean", "decMean", "gMeanPSFMag", "gMeanPSFMagErr", "rMeanPSFMag",
                          "rMeanPSFMagErr"], ["RAJ2000", "DEJ2000", "gmag", "e_gmag", "rmag",
                                              "e_rmag"])  # fmt: skip
    other.write(fits_path)
    code, out = _refcat(["load", str(fits_path), "--name", "ps1-south", "--json"], db_url,
                        tmp_path, capsys)  # fmt: skip
    loaded = json.loads(out)
    assert loaded["action"] == "loaded" and loaded["n_stars"] == 150
    assert loaded["columns"]["ra"] == "RAJ2000"
    assert _count(db_url) == 550 and _count(db_url, "ps1-south") == 150

    # a changed file under an existing name replaces its stars, in place
    table[:300].write(csv_path, format="ascii.csv", overwrite=True)
    code, out = _refcat(["load", str(csv_path), "--json"], db_url, tmp_path, capsys)
    replaced = json.loads(out)
    assert replaced["action"] == "replaced" and replaced["id"] == first["id"]
    assert _count(db_url, "ps1_field") == 300 and _count(db_url) == 450
    # other column options are a change too
    code, out = _refcat(["load", str(csv_path), "--column", "r=gMeanPSFMag", "--json"], db_url,
                        tmp_path, capsys)  # fmt: skip
    assert json.loads(out)["action"] == "replaced" and _count(db_url, "ps1_field") == 300

    code, out = _refcat(["list", "--json"], db_url, tmp_path, capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == {"ps1_field", "ps1-south"}
    assert rows["ps1-south"]["n_stars"] == 150 and rows["ps1-south"]["bands"] == ["g", "r"]
    assert rows["ps1-south"]["dec_min"] >= -30.1 and rows["ps1-south"]["dec_max"] <= -29.9
    code, out = _refcat(["list"], db_url, tmp_path, capsys)
    assert code == 0 and "ps1-south" in out and "ps1_field" in out


def test_cone_query_returns_the_right_stars(db_url: str, tmp_path: Path) -> None:
    migrate.upgrade(db_url)
    maker = get_sessionmaker(db_url)
    fields = {"wrap": (359.95, 20.0), "pole": (75.0, 89.8), "plain": (200.0, -45.0)}
    tables = {}
    for k, (name, (ra0, dec0)) in enumerate(fields.items()):
        tables[name] = _field(10 + k, ra0, dec0, 0.3, 600)
        path = tmp_path / f"{name}.csv"
        tables[name].write(path, format="ascii.csv")
        assert load_catalog_file(maker, path).action == "loaded"
    cones = [("wrap", 0.0, 20.05, 0.15), ("wrap", 359.9, 19.9, 0.2), ("pole", 250.0, 89.9, 0.2),
             ("plain", 200.1, -45.1, 0.1)]  # fmt: skip
    for name, ra, dec, radius in cones:
        table = tables[name]
        sep = angular_separation_deg(table["raMean"], table["decMean"], ra, dec)
        expected = np.sort(np.asarray(table["raMean"])[sep <= radius])
        assert expected.size > 5
        for source in (maker, get_engine(db_url)):
            stars = reference_stars_near(source, ra, dec, radius)
            assert stars.name == name
            np.testing.assert_allclose(np.sort(stars.ra), expected, rtol=0, atol=1e-9)
        with maker() as session:
            stars = query_cone(session, ra, dec, radius, name=name)
        assert len(stars) == expected.size
        # magnitudes and missing values (-999 -> NULL -> NaN) survive the trip
        order = np.argsort(stars.ra)
        rows = np.flatnonzero(sep <= radius)[np.argsort(np.asarray(table["raMean"])[sep <= radius])]
        np.testing.assert_allclose(stars.mags["r"][order], np.asarray(table["rMeanPSFMag"])[rows])
        g = np.asarray(table["gMeanPSFMag"])[rows]
        assert np.array_equal(np.isnan(stars.mags["g"][order]), g < -900)
    assert len(reference_stars_near(maker, 10.0, 0.0, 0.5)) == 0
    with pytest.raises(ConfigurationError, match="no reference catalogue named"):
        reference_stars_near(maker, 0.0, 20.0, 0.1, name="nope")


def test_overlapping_catalogues_use_the_one_with_most_stars(db_url: str, tmp_path: Path) -> None:
    migrate.upgrade(db_url)
    maker = get_sessionmaker(db_url)
    for name, n in (("sparse", 50), ("dense", 300)):
        path = tmp_path / f"{name}.fits"
        _field(len(name), 30.0, 5.0, 0.2, n).write(path)
        load_catalog_file(maker, path)
    stars = reference_stars_near(maker, 30.0, 5.0, 0.3)
    assert stars.name == "dense" and len(stars) == 300
    assert reference_stars_near(maker, 30.0, 5.0, 0.3, name="sparse").name == "sparse"


def test_bad_files_and_options(db_url: str, tmp_path: Path, capsys) -> None:
    migrate.upgrade(db_url)
    maker = get_sessionmaker(db_url)
    bad = tmp_path / "positions.csv"
    Table({"ra": [1.0], "dec": [2.0]}).write(bad, format="ascii.csv")
    with pytest.raises(ConfigurationError, match="no magnitude column"):
        load_catalog_file(maker, bad)
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_catalog_file(maker, tmp_path / "missing.csv")
    text = bad.with_suffix(".txt")
    text.write_text(bad.read_text())
    with pytest.raises(ConfigurationError, match=r"\.fits, \.csv or \.ecsv"):
        load_catalog_file(maker, text)
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"not a FITS file" * 100)
    with pytest.raises(ConfigurationError, match="cannot read reference catalogue"):
        load_catalog_file(maker, garbage)
    with pytest.raises(ConfigurationError, match="KEY=COLUMN"):
        parse_column_options(["g"])
    assert parse_column_options(["g=gK", " ra = RA_x "]) == {"g": "gK", "ra": "RA_x"}
    assert _count(db_url) == 0


def test_ra_ranges() -> None:
    assert ra_ranges(10.0, 0.0, 1.0) == [pytest.approx((9.0, 11.0), abs=1e-6)]
    lo, hi = ra_ranges(0.2, 60.0, 0.5)
    half = math.degrees(math.asin(math.sin(math.radians(0.5)) / math.cos(math.radians(60.0))))
    assert lo == pytest.approx((360.0 + 0.2 - half, 360.0)) and hi == pytest.approx(
        (0.0, 0.2 + half)
    )
    assert ra_ranges(0.0, 89.7, 0.5) == [(0.0, 360.0)]
