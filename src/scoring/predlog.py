"""The prediction log: every answered decision, on disk before the answer leaves, then in the database.

:meth:`PredictionLog.submit` appends the request's rows to this process's spool
segment (src/scoring/spool.py): one ``write()``, in the request's thread, so a
decision returned to a client survives the worker being killed the next instant,
and a database outage costs nothing but a backlog. The shipper
(src/scoring/shipper.py) copies the spool into the database (``DATABASE_URL``,
any SQLAlchemy URL; a SQLite file in WAL mode by default): as its own process
under gunicorn (``ship=False`` here), as a thread of this process otherwise. If
the spool cannot be written (a full disk), ``submit`` raises and the caller does
not answer with a decision it could not record.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from src.config.env import default_spool_dir
from src.scoring.logdb import create_tables, decision_record, make_engine, predictions, shipped_offsets
from src.scoring.shipper import Shipper
from src.scoring.spool import SUFFIX, SpoolWriter, encode

log = logging.getLogger(__name__)


_RANDOM = threading.local()
_ID_BYTES = 10 * 256
_VARIANT = "89ab"


def new_request_id() -> str:
    """A time-ordered random UUID (version 7, RFC 9562): milliseconds since 1970, then 74 random bits.

    The log's index on request_id then grows at its end like the one on created_at: a random
    (version 4) id lands on a random page of an index that outgrows memory, and every insert
    reads and rewrites one, which SQLite and PostgreSQL alike pay for at millions of rows. The
    74 random bits (os.urandom, read 256 ids at a time per thread) keep ids unguessable. A
    forked child never reuses its parent's bytes.
    """
    state = _RANDOM.__dict__
    buffer, at = state.get("buffer", b""), state.get("at", _ID_BYTES)
    if at >= len(buffer) or state.get("pid") != os.getpid():
        buffer, at = os.urandom(_ID_BYTES), 0
        state["buffer"], state["pid"] = buffer, os.getpid()
    state["at"] = at + 10
    r = buffer[at:at + 10].hex()
    t = f"{time.time_ns() // 1_000_000:012x}"
    return f"{t[:8]}-{t[8:]}-7{r[:3]}-{_VARIANT[int(r[3], 16) & 3]}{r[4:7]}-{r[8:20]}"


class PredictionLog:
    """Durable, append-only log of scored rows: ``submit`` spools them, a shipper copies them to the database."""

    def __init__(self, url: str, spool_dir: Path | str | None = None, *, ship: bool = True,
                 fsync_seconds: float = 1.0, ship_seconds: float = 0.1,
                 registry: CollectorRegistry | None = None) -> None:
        self.url = url
        self.engine = make_engine(url)  # for flush() and count(); nothing here needs the database up
        self.spool_dir = Path(spool_dir) if spool_dir is not None else default_spool_dir(url, Path.cwd())
        self.spool = SpoolWriter(self.spool_dir, fsync_seconds)
        # ship=False: another process ships this spool (gunicorn.conf.py starts one beside the workers)
        self.shipper = Shipper(url, self.spool_dir, ship_seconds, registry, engine=self.engine) if ship else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_pid = 0
        self._start_lock = threading.Lock()
        self._ensure_shipper()

    def submit(self, request_id: str, source: str, model_name: str, model_version: str,
               rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], requested_by: str | None = None,
               ) -> None:
        """Record one request's rows before it is answered; raises if they could not be recorded."""
        self.spool.append(encode(request_id, time.time(), source, model_name, model_version, rows, results,
                                 requested_by))
        if self._thread_pid != os.getpid() and self.shipper is not None:
            self._ensure_shipper()

    def _ensure_shipper(self) -> None:
        """Start the shipping thread in this process (again after a fork: threads do not survive one)."""
        if self.shipper is None or self._stop.is_set():
            return
        with self._start_lock:
            if self._thread_pid != os.getpid():
                self._thread = threading.Thread(target=self.shipper.run, args=(self._stop,),
                                                name="prediction-log-shipper", daemon=True)
                self._thread.start()
                self._thread_pid = os.getpid()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything spooled so far (by any process) is in the database; False on timeout."""
        sizes = {}
        for path in self.spool_dir.glob(f"*{SUFFIX}"):
            try:
                sizes[path.name] = path.stat().st_size
            except FileNotFoundError:
                continue
        deadline = time.monotonic() + timeout
        while True:
            waiting = {name: size for name, size in sizes.items() if (self.spool_dir / name).exists()}
            if waiting:
                try:
                    with self.engine.connect() as conn:
                        done = shipped_offsets(conn, waiting)
                except sa.exc.SQLAlchemyError:
                    done = {}
                waiting = {name: size for name, size in waiting.items() if done.get(name, 0) < size}
            if not waiting:
                return True
            if time.monotonic() > deadline:
                return False
            if self.shipper is not None:
                self.shipper.wake.set()
            time.sleep(0.01)

    def close(self, timeout: float = 30.0) -> None:
        """Close this process's spool segment; a shipping thread ships what is left, then stops. Idempotent."""
        self.spool.close()
        self._stop.set()
        thread = self._thread
        if thread is not None and self._thread_pid == os.getpid() and thread.is_alive():
            assert self.shipper is not None
            self.shipper.wake.set()
            thread.join(timeout)
            if thread.is_alive():
                log.error("prediction log: shipper still busy after %.0f s; the spool %s keeps the rest",
                          timeout, self.spool_dir)
        self.engine.dispose()

    def lookup(self, request_id: str) -> dict[str, Any] | None:
        """The logged decision of one request (as shipped to the database), or None if it is not there."""
        create_tables(self.engine)
        with self.engine.connect() as conn:
            return decision_record(conn, request_id)

    def count(self) -> int:
        """Rows in the database, once everything spooled so far is shipped."""
        if not self.flush():
            raise TimeoutError(f"the prediction log spool {self.spool_dir} is not yet shipped")
        create_tables(self.engine)  # (an empty log: its shipper may not have made them yet)
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one())

    def dispose(self) -> None:
        self.close()
