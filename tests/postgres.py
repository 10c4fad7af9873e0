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


@contextmanager
def running_server(bindir: Path) -> Iterator[str]:
    """Start a fresh cluster (trust auth, fsync off: a test server), yield its admin URL, stop and delete it."""
    root = Path(tempfile.mkdtemp(prefix="credit-postgres-"))
    data, log = root / "data", root / "server.log"
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    options = f"-p {port} -k {root} -c listen_addresses={HOST} -c fsync=off -c max_connections=60"
    started = False
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, text=True, timeout=120)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                        "-o", options, "start"], check=True, capture_output=True, text=True, timeout=90)
        started = True
        yield f"postgresql://{USER}@{HOST}:{port}/postgres"
    except subprocess.CalledProcessError as exc:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"PostgreSQL test server failed: {exc.cmd[len(as_user)]}: {exc.stderr}\n{tail}") from exc
    finally:
        if started:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


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
