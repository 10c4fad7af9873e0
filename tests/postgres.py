"""A throw-away PostgreSQL server for tests: initdb in a temporary directory, on a free 127.0.0.1 port.

Debian's ``postgresql`` package provides the server binaries (``.ci/run`` installs it).
PostgreSQL refuses to run as root, so as root the server runs as the package's
``postgres`` user. Each test gets its own database (:func:`fresh_database`), dropped after.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from tests.net import HOST, free_port

USER = "credit"


def server_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl (newest Debian version first), or None."""
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True):
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


@dataclass
class Cluster:
    """A running test cluster that a test may stop and start again (a database outage drill)."""

    bindir: Path
    data: Path
    log: Path
    options: str
    as_user: list[str]
    url: str

    def pg_ctl(self, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args], check=True,
                       capture_output=True, text=True, timeout=90)

    def start(self) -> None:
        self.pg_ctl("-l", str(self.log), "-w", "-t", "60", "-o", self.options, "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop")


@contextmanager
def cluster(bindir: Path) -> Iterator[Cluster]:
    """Start a fresh cluster (trust auth, fsync off: a test server); stop and delete it afterwards."""
    root = Path(tempfile.mkdtemp(prefix="credit-postgres-"))
    data, log = root / "data", root / "server.log"
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    options = f"-p {port} -k {root} -c listen_addresses={HOST} -c fsync=off -c max_connections=60"
    server = Cluster(bindir, data, log, options, as_user, f"postgresql://{USER}@{HOST}:{port}/postgres")
    started = False
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, text=True, timeout=120)
        server.start()
        started = True
        yield server
    except subprocess.CalledProcessError as exc:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"PostgreSQL test server failed: {exc.cmd[len(as_user)]}: {exc.stderr}\n{tail}") from exc
    finally:
        if started:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def running_server(bindir: Path) -> Iterator[str]:
    """A fresh cluster's admin URL, for as long as the block runs."""
    with cluster(bindir) as server:
        yield server.url


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty database on the server; its URL; dropped afterwards (connections closed first)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
