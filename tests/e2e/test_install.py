"""`pylcogt db upgrade` works from a normal (non-editable) install, from any directory."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from pylcogt.db.migrate import head_revision

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_install_ships_migrations(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = wheel_dir.glob("pylcogt-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    # the dependencies come from the test environment: its site-packages as a plain path (its
    # .pth files, including an editable pylcogt, are not processed)
    new_site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (new_site / "zz_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(py), "-c", "import pylcogt.migrations as m; print(m.__file__)"],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(env_dir) in where, where
    proc = subprocess.run(
        [str(env_dir / "bin" / "pylcogt"), "db", "upgrade", "--json"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["from"], result["to"]) == (None, head_revision())
    assert (work / "pylcogt.db").exists()
    check = subprocess.run(
        [str(env_dir / "bin" / "pylcogt"), "db", "check"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_developer_alembic_ini_works(tmp_path: Path) -> None:
    """`alembic` from the repository root (the developers' way) sees the same migrations."""
    db = tmp_path / "dev.db"
    env = {"PYLCOGT_DATABASE_URL": f"sqlite:///{db}", "PATH": str(Path(sys.executable).parent)}
    alembic = [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini")]
    subprocess.run(
        [*alembic, "upgrade", "head"], cwd=tmp_path, env=env, check=True, capture_output=True
    )
    proc = subprocess.run(
        [*alembic, "check"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No new upgrade operations detected" in proc.stdout + proc.stderr
