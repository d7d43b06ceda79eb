"""Migrations and models agree, on SQLite and on PostgreSQL, and migrate both ways."""

from __future__ import annotations

import sqlalchemy as sa

from pylcogt.db import migrate
from pylcogt.db.models import Base
from pylcogt.db.session import get_engine


def _schema(url: str) -> dict:
    """Tables, columns, indexes and named constraints as the database reports them."""
    insp = sa.inspect(get_engine(url))
    out = {}
    for table in insp.get_table_names():
        if table == "alembic_version":
            continue
        out[table] = {
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in insp.get_indexes(table)
            ),
            "unique": sorted(
                (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
            ),
            "checks": sorted(c["name"] for c in insp.get_check_constraints(table)),
            "fks": sorted(
                (f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                for f in insp.get_foreign_keys(table)
            ),
            "pk": insp.get_pk_constraint(table)["name"],
        }
    return out


def test_upgrade_matches_models(db_url: str) -> None:
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == migrate.head_revision()
    assert migrate.schema_differences(db_url) == []


def test_migrated_schema_equals_create_all(db_url: str, tmp_path) -> None:
    """Stricter than `alembic check`: constraint names (checks included) are identical too."""
    migrate.upgrade(db_url)
    migrated = _schema(db_url)
    assert set(migrated) == {t.name for t in Base.metadata.sorted_tables}
    with get_engine(db_url).begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
    Base.metadata.drop_all(get_engine(db_url))
    Base.metadata.create_all(get_engine(db_url))
    assert _schema(db_url) == migrated


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    migrate.upgrade(db_url)
    migrate.downgrade(db_url, "base")
    assert migrate.current_revision(db_url) is None
    tables = set(sa.inspect(get_engine(db_url)).get_table_names()) - {"alembic_version"}
    assert tables == set()
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == migrate.head_revision()
    assert migrate.schema_differences(db_url) == []


def test_upgrade_is_idempotent(db_url: str) -> None:
    migrate.upgrade(db_url)
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == migrate.head_revision()


# --- revision 0007 on a populated registry -------------------------------------------------
def _populate_0006(url: str) -> dict[str, int]:
    """A registry at revision 0006 as the worker left it: a night's bias (marked bad, then
    rebuilt), dark and flat with their inputs, the inputs' preparation and a science frame's
    masters in ``frame_calibrations``."""
    migrate.upgrade(url, "0006")
    t = "2026-11-28 21:00:00"
    with get_engine(url).begin() as conn:
        def insert(table: str, **values) -> int:
            columns = ", ".join(values)
            marks = ", ".join(f":{k}" for k in values)
            conn.execute(sa.text(f"INSERT INTO {table} ({columns}) VALUES ({marks})"), values)
            return conn.execute(sa.text(f"SELECT max(id) FROM {table}")).scalar_one()

        site = insert("sites", code="lsc", longitude_deg=-70.8, created_at=t)
        inst = insert("instruments", site_id=site, enclosure="doma", telescope="1m0a",
                      camera="fa15", family="sinistro", nx=4096, ny=4096, n_amplifiers=4,
                      created_at=t)  # fmt: skip

        def frame(name: str, obstype: str, **kw) -> int:
            return insert("raw_frames", path=f"/raw/{name}.fits", filename=f"{name}.fits",
                          checksum=name.ljust(64, "0"), file_size=10,
                          state=kw.pop("state", "done"),
                          obstype=obstype, instrument_id=inst, dateobs=t, dayobs="2026-11-28",
                          exptime_s=30.0, filter_name="rp", binning="1x1",
                          readout_mode="full_frame", attempts=0, lease_token=1, ingested_at=t,
                          updated_at="2026-11-29 10:00:00", **kw)  # fmt: skip

        def master(name: str, obstype: str, inputs: list[int], **kw) -> int:
            mid = insert("master_calibrations", obstype=obstype, instrument_id=inst,
                         binning="1x1", readout_mode="full_frame",
                         filter_name="rp" if obstype == "SKYFLAT" else "", dayobs="2026-11-28",
                         dateobs=t, path=f"/m/{name}.fits.fz", checksum=name.ljust(64, "c"),
                         is_bad=kw.pop("is_bad", False), n_inputs=len(inputs), **kw)  # fmt: skip
            for fid in inputs:
                conn.execute(sa.text("INSERT INTO master_inputs (master_id, frame_id) "
                                     "VALUES (:m, :f)"), {"m": mid, "f": fid})  # fmt: skip
            return mid

        ids = {}
        biases = [frame(f"b{i}", "BIAS") for i in range(3)]
        darks = [frame(f"d{i}", "DARK") for i in range(2)]
        flats = [frame(f"f{i}", "SKYFLAT") for i in range(2)]
        ids["bad"] = master("bias-bad", "BIAS", biases, is_bad=True, created_at=t,
                            bad_reason="2026-11-29T09:15:00Z light leak")  # fmt: skip
        ids["bias"] = master("bias-r2", "BIAS", biases, created_at="2026-11-29 09:20:00")
        ids["dark"] = master("dark", "DARK", darks, created_at="2026-11-29 09:21:00")
        ids["flat"] = master("flat", "SKYFLAT", flats, created_at="2026-11-29 09:22:00")
        ids["science"] = frame("e1", "EXPOSE", product_path="/p/e1-e91.fits.fz")
        ids["waiting"] = frame("e2", "EXPOSE", state="waiting_calibration")
        links = [(f, "bias", ids["bias"]) for f in darks + flats]
        links += [(f, "dark", ids["dark"]) for f in flats]
        links += [(ids["science"], role, ids[key])
                  for role, key in (("bias", "bias"), ("dark", "dark"), ("flat", "flat"))]
        for fid, role, mid in links:
            conn.execute(sa.text("INSERT INTO frame_calibrations (frame_id, role, master_id) "
                                 "VALUES (:f, :r, :m)"), {"f": fid, "r": role, "m": mid})
        ids["dark_frame"], ids["flat_frame"] = darks[0], flats[0]
    return ids


def test_revision_0007_keeps_a_populated_registrys_masters_and_links(db_url: str) -> None:
    ids = _populate_0006(db_url)
    migrate.upgrade(db_url)
    assert migrate.schema_differences(db_url) == []
    with get_engine(db_url).connect() as conn:
        def rows(sql: str, **params) -> list:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]

        masters = {r[0]: r[1:] for r in rows(
            "SELECT id, version, calibration_status, is_bad, bad_at, superseded_at, "
            "finalized_at IS NOT NULL FROM master_calibrations")}  # fmt: skip
        assert len(masters) == 4
        bad_at = masters[ids["bad"]][3]
        assert str(bad_at).startswith("2026-11-29 09:15:00")  # from the reason's time stamp
        assert masters[ids["bad"]][:3] == (1, "final", True)
        assert masters[ids["bias"]][:3] == (2, "final", False)  # the rebuild: version 2
        assert all(m[4] is None and m[5] for m in masters.values())
        # the science frame's masters: one current, final reduction with their checksums
        ((rid, status, calstatus, reason, product, checksum),) = rows(
            "SELECT id, status, calibration_status, reason, product_path, product_checksum "
            "FROM reductions")  # fmt: skip
        assert (status, calstatus, product, checksum) == ("current", "final",
                                                          "/p/e1-e91.fits.fz", None)
        assert reason.startswith("recorded before revision 0007")
        used = rows("SELECT role, master_id, master_checksum FROM reduction_masters "
                    "WHERE reduction_id = :r ORDER BY role", r=rid)  # fmt: skip
        assert used == [("bias", ids["bias"], "bias-r2".ljust(64, "c")),
                        ("dark", ids["dark"], "dark".ljust(64, "c")),
                        ("flat", ids["flat"], "flat".ljust(64, "c"))]  # fmt: skip
        # each input's content and preparation
        prep = rows("SELECT master_id, frame_id, frame_checksum, bias_master_id, dark_master_id "
                    "FROM master_inputs WHERE frame_id IN (:d, :f) ORDER BY frame_id",
                    d=ids["dark_frame"], f=ids["flat_frame"])  # fmt: skip
        assert prep == [(ids["dark"], ids["dark_frame"], "d0".ljust(64, "0"), ids["bias"], None),
                        (ids["flat"], ids["flat_frame"], "f0".ljust(64, "0"), ids["bias"],
                         ids["dark"])]  # fmt: skip
        assert "frame_calibrations" not in sa.inspect(conn).get_table_names()
    # the provenance API reads the migrated registry
    from pylcogt import provenance as prov

    p = prov.frame_provenance(db_url, ids["science"], history=True)
    assert [(u.role, u.master.id) for u in p.masters] == [
        ("bias", ids["bias"]), ("dark", ids["dark"]), ("flat", ids["flat"])]
    assert p.reduction.reason.startswith("recorded before") and p.history == ()
    assert [(u.role, u.master.id) for u in p.masters[1].prepared_with] == [("bias", ids["bias"])]
    # and back: frame_calibrations rebuilt from the reductions and the inputs' preparation
    migrate.downgrade(db_url, "0006")
    with get_engine(db_url).connect() as conn:
        links = sorted(tuple(r) for r in conn.execute(sa.text(
            "SELECT frame_id, role, master_id FROM frame_calibrations")))  # fmt: skip
    assert (ids["science"], "flat", ids["flat"]) in links
    assert (ids["flat_frame"], "dark", ids["dark"]) in links
    assert len(links) == 3 + 2 + 2 * 2
    migrate.upgrade(db_url)
    assert migrate.schema_differences(db_url) == []


# --- revision 0008: header values as text ---------------------------------------------------
def test_revision_0008_keeps_values_and_downgrade_refuses_what_would_not_fit(
    db_url: str,
) -> None:
    """Upgrading keeps every stored value; a value longer than the old column (a 40-character
    FILTER, as stored since 0008) makes the downgrade refuse, naming the column, instead of
    truncating it; without it the downgrade goes through and the upgrade again."""
    import pytest

    ids = _populate_0006(db_url)
    migrate.upgrade(db_url, "0007")
    migrate.upgrade(db_url)
    assert migrate.schema_differences(db_url) == []
    with get_engine(db_url).begin() as conn:
        rows = conn.execute(sa.text("SELECT filter_name, readout_mode, exposure_key FROM "
                                    "raw_frames WHERE id = :id"), {"id": ids["science"]}).all()
        assert [tuple(r) for r in rows] == [("rp", "full_frame", None)]
        assert conn.execute(sa.text("SELECT min_inputs FROM instruments")).scalar_one() is None
        conn.execute(sa.text("UPDATE raw_frames SET filter_name = :f WHERE id = :id"),
                     {"f": "x" * 40, "id": ids["science"]})  # fmt: skip
    with pytest.raises(RuntimeError, match=r"raw_frames\.filter_name: 1 values longer than 32"):
        migrate.downgrade(db_url, "0007")
    assert migrate.current_revision(db_url) == "0008"
    with get_engine(db_url).begin() as conn:
        conn.execute(sa.text("UPDATE raw_frames SET filter_name = 'rp'"))
    migrate.downgrade(db_url, "0007")
    migrate.upgrade(db_url)
    assert migrate.schema_differences(db_url) == []
