"""Start a throw-away PostgreSQL server for the test session (never a mock).

The server runs from the Debian binaries (``/usr/lib/postgresql/<v>/bin`` or ``pg_ctl`` on PATH)
in a temporary directory, listening on 127.0.0.1 at a free port, with durability switched off for
speed. As root it runs as the unprivileged ``postgres`` user (the Debian package creates it).
``PYLCOGT_TEST_POSTGRES_URL`` points the tests at an existing server instead (the URL of a role
that may CREATE DATABASE).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def find_pg_bin() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return Path(candidate).parent
    msg = (
        "PostgreSQL server binaries (pg_ctl, initdb) were not found; install them with "
        "`apt-get install postgresql` (./dev test does this) or set PYLCOGT_TEST_POSTGRES_URL"
    )
    raise PostgresUnavailable(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    """A PostgreSQL cluster in a temporary directory; ``admin_url`` connects as superuser."""

    def __init__(self) -> None:
        self.bin = find_pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="pylcogt-pg-"))
        self.port = _free_port()
        self.user = "pylcogt"
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            account = "postgres"
            try:
                entry = pwd.getpwnam(account)
            except KeyError:
                account, entry = "nobody", pwd.getpwnam("nobody")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            self._run_as = ["runuser", "-u", account, "--"]
        self.admin_url = f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        cmd = [*self._run_as, str(self.bin / tool), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir)
        if proc.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            msg = f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}\n{tail}"
            raise PostgresUnavailable(msg)

    def start(self) -> TempPostgres:
        data = str(self.dir / "data")
        self._pg("initdb", "-D", data, "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._pg(
            "pg_ctl",
            "-D",
            data,
            "-l",
            str(self.dir / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self) -> None:
        try:
            self._pg("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
