"""The prediction log: every scored row, appended through SQLAlchemy.

Default: a SQLite file in WAL mode with a generous busy timeout, so several
gunicorn workers append concurrently without losing rows. Any SQLAlchemy URL
works (e.g. postgresql://...).

Writes happen off the request path: :meth:`PredictionLog.submit` queues the
scored rows and returns; one writer thread per process collects what arrives
within ``linger`` seconds (serve.log_linger_seconds) and appends it in one
transaction. A commit per request was the largest single cost of a request,
and the writer's Python work competes for the GIL with the request threads (a
request thread back from LightGBM or a socket waits for the GIL while the
writer holds it), so the writer does as little Python as it can: few
transactions, and rows bound as tuples through one INSERT compiled for the
engine's dialect with the columns' own bind processors (the same conversions
SQLAlchemy applies, once per request for the per-request columns).
Nothing is lost on a clean stop: :meth:`close` (gunicorn's ``worker_exit``, and
``atexit`` as a backstop) drains the queue first. A failing write never fails
the prediction: it is retried, then counted through ``on_failure`` and logged.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)


SQLITE_BUSY_MS = 30_000
CREATE_ATTEMPTS = 10
WRITE_ATTEMPTS = 3
MAX_ROWS_PER_TRANSACTION = 20_000
_STOP = object()

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(36), nullable=False, index=True),
    sa.Column("row_index", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("source", sa.String(8), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("features", sa.JSON, nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.close()


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# One queued request: (request_id, source, model_name, model_version, scored_at, rows, results).
Entry = tuple[str, str, str, str, datetime, Sequence[dict[str, Any]], Sequence[dict[str, Any]]]
COLUMNS = ("request_id", "row_index", "created_at", "source", "model_name", "model_version", "features",
           "probability", "decision")
PER_REQUEST = ("request_id", "created_at", "source", "model_name", "model_version")  # same for a request's rows


class FastInsert:
    """``predictions.insert()`` compiled once for a dialect, executed with pre-bound tuples.

    ``conn.execute(table.insert(), list_of_dicts)`` re-processes every parameter of
    every row in Python (~9 us a row). Here each column's bind processor (the
    dialect's own: SQLite's DATETIME string, the engine's JSON serializer, ...) is
    looked up once, the per-request columns are converted once per request, and the
    driver's executemany gets plain tuples (or dicts, for named paramstyles).
    """

    def __init__(self, dialect: sa.Dialect) -> None:
        compiled = predictions.insert().compile(dialect=dialect, column_keys=list(COLUMNS))
        self.sql = str(compiled)
        self.positional = bool(compiled.positional)
        self.order: tuple[str, ...] = tuple(compiled.positiontup or ()) if self.positional else COLUMNS
        if set(self.order) != set(COLUMNS):
            raise RuntimeError(f"unexpected INSERT parameters {self.order} for {dialect.name}")
        self.processors: dict[str, Callable[[Any], Any] | None] = {
            name: predictions.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in COLUMNS}

        slot = self.order.index
        # (position, processor) for the per-request values, in Entry order, and for the per-row ones
        self._request_binds = [(slot(name), self.processors[name]) for name in PER_REQUEST]
        self._row_binds = [(slot(name), self.processors[name])
                           for name in ("row_index", "features", "probability", "decision")]

    def parameters(self, batch: Sequence[Entry]) -> list[Any]:
        """One parameter tuple (or dict) per scored row of every queued request."""
        (ri, bind_ri), (fe, bind_fe), (pr, bind_pr), (de, bind_de) = self._row_binds
        request_binds, width, positional, order = self._request_binds, len(self.order), self.positional, self.order
        out: list[Any] = []
        for request_id, source, model_name, model_version, scored_at, rows, results in batch:
            values: list[Any] = [None] * width
            for (position, bind), value in zip(request_binds, (request_id, scored_at, source, model_name,
                                                               model_version), strict=True):
                values[position] = value if bind is None else bind(value)
            for i, (row, result) in enumerate(zip(rows, results, strict=True)):
                values[ri] = i if bind_ri is None else bind_ri(i)
                values[fe] = row if bind_fe is None else bind_fe(row)
                p = result["probability_of_default"]
                values[pr] = p if bind_pr is None else bind_pr(p)
                d = result["decision"]
                values[de] = d if bind_de is None else bind_de(d)
                out.append(tuple(values) if positional else dict(zip(order, values, strict=True)))
        return out

    def execute(self, conn: sa.Connection, batch: Sequence[Entry]) -> int:
        parameters = self.parameters(batch)
        if parameters:
            conn.exec_driver_sql(self.sql, parameters)
        return len(parameters)


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


def transient(exc: BaseException) -> bool:
    """A failure that may pass on a retry: the connection or the I/O, not the rows themselves."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError | OSError)


def safe_url(url: str) -> str:
    """The URL as SQLAlchemy renders it with the password masked (for logs and messages)."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<unparsable database URL>"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, json_serializer=_json,
                                  connect_args={"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, json_serializer=_json)



class PredictionLog:
    """Append-only log of scored rows; ``submit`` queues, a writer thread commits in batches."""

    def __init__(self, url: str, max_pending: int = 10_000,
                 on_failure: Callable[[int], None] | None = None, linger: float = 0.0) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.on_failure = on_failure
        self.linger = max(0.0, float(linger))
        self._insert_rows = FastInsert(self.engine.dialect)
        self.max_pending = max(1, int(max_pending))
        # Requests append to a deque (atomic, no lock: a request thread never waits for the writer);
        # the writer wakes on `_wake` only when it found nothing to do and said so in `_idle`.
        self._pending: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._idle = False
        self._busy = False  # the writer holds entries it took from the deque and has not yet written
        self._writer: threading.Thread | None = None
        self._writer_pid = 0  # the process it runs in (a fork's child has no writer thread)
        self._writer_done = False
        self._start_lock = threading.Lock()
        self._closed = False
        self._create_table()

    def _create_table(self) -> None:
        # Several gunicorn workers may create a fresh SQLite log at the same moment: one sees
        # "already exists" (fine) or "database is locked" (retry briefly) instead of failing to boot.
        for attempt in range(CREATE_ATTEMPTS):
            try:
                metadata.create_all(self.engine, checkfirst=True)
                return
            except OperationalError as exc:
                if "already exists" in str(exc):
                    return
                if "locked" not in str(exc) or attempt == CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    # -- writing -------------------------------------------------------------------
    def write(self, request_id: str, source: str, model_name: str, model_version: str,
              rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> None:
        """Append one request's rows now, in this thread (raises on failure)."""
        self._insert([(request_id, source, model_name, model_version, datetime.now(UTC), rows, results)])

    def submit(self, request_id: str, source: str, model_name: str, model_version: str,
               rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], timeout: float = 10.0) -> None:
        """Queue one request's rows for the writer thread and return at once.

        Raises queue.Full only when ``max_pending`` requests are already waiting for
        ``timeout`` seconds (the database is down or far too slow): the caller counts it.
        """
        if self._closed:
            raise RuntimeError("the prediction log is closed")
        self._ensure_writer()
        if len(self._pending) >= self.max_pending:
            deadline = time.monotonic() + timeout
            while len(self._pending) >= self.max_pending:
                if time.monotonic() > deadline:
                    raise queue.Full(f"{len(self._pending)} requests already wait for the prediction log")
                time.sleep(0.005)
        self._enqueue((request_id, source, model_name, model_version, datetime.now(UTC), rows, results))

    def _enqueue(self, entry: Any) -> None:
        self._pending.append(entry)
        if self._idle:  # the writer is waiting (or about to): wake it
            self._wake.set()

    def _ensure_writer(self) -> None:
        if self._writer_pid == os.getpid() and not self._writer_done:
            return
        with self._start_lock:  # started lazily, in the process that writes (after any fork)
            if self._writer_pid != os.getpid() or self._writer_done:
                self._writer = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
                self._writer_done = False
                self._writer.start()
                self._writer_pid = os.getpid()
                atexit.register(self.close)

    def _next_entry(self) -> Any:
        """The oldest queued entry, waiting for one if there is none."""
        while True:
            self._busy = True  # before taking: an entry is always in the deque or held by a busy writer
            try:
                return self._pending.popleft()
            except IndexError:
                self._busy = False
            self._idle = True  # first say so, then look again: a submit in between sees it and wakes us
            try:
                if not self._pending:
                    self._wake.wait(1.0)
                    self._wake.clear()
            finally:
                self._idle = False

    def _run(self) -> None:
        try:
            self._write_until_stopped()
        finally:
            self._writer_done = True

    def _write_until_stopped(self) -> None:
        stop = False
        while not stop:
            entries = [self._next_entry()]
            stop = entries[0] is _STOP
            rows = 0 if stop else len(entries[0][5])
            # Everything arriving within `linger` of the first entry goes into the same transaction.
            # Sleeping through the linger (rather than waiting for each entry) means a request's
            # submit wakes nobody: no thread switch and no GIL hand-over per request.
            if not stop and self.linger:
                time.sleep(self.linger)
            while not stop and rows < MAX_ROWS_PER_TRANSACTION:
                try:
                    entry = self._pending.popleft()
                except IndexError:
                    break
                entries.append(entry)
                stop = entry is _STOP
                rows += 0 if stop else len(entry[5])
            batch = [e for e in entries if e is not _STOP]
            try:
                if batch:
                    self._write_batch(batch)
            finally:
                self._busy = False

    def _write_batch(self, batch: list[Entry]) -> None:
        """One transaction for the batch; transient errors are retried, a permanent one costs only its request.

        A lost connection or a locked database (transient) is retried WRITE_ATTEMPTS times. A
        permanent error (a row the database refuses, a value that cannot be bound) would fail
        every retry and take the whole batch with it, so the batch's requests are then written
        one by one: only the request that cannot be written is lost, and counted.
        """
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                self._insert(batch)
                return
            except Exception as exc:
                if not transient(exc):
                    if len(batch) > 1:
                        log.warning("prediction log: %s; writing the batch's %d requests one by one",
                                    _first_line(exc), len(batch))
                        for entry in batch:
                            self._write_batch([entry])
                    else:
                        self._lost(batch, exc)
                    return
                if attempt == WRITE_ATTEMPTS:
                    self._lost(batch, exc)
                    return
                log.warning("prediction log write failed (attempt %d of %d): %s; retrying", attempt,
                            WRITE_ATTEMPTS, _first_line(exc))
                time.sleep(0.2 * attempt)

    def _lost(self, batch: Sequence[Entry], exc: BaseException) -> None:
        rows = sum(len(entry[5]) for entry in batch)
        log.error("prediction log %s: %d row(s) of request(s) %s could not be written: %s", safe_url(self.url),
                  rows, ", ".join(str(entry[0]) for entry in batch), _first_line(exc))
        if self.on_failure is not None:
            self.on_failure(rows)

    def _insert(self, batch: Sequence[Entry]) -> None:
        with self.engine.begin() as conn:
            self._insert_rows.execute(conn, batch)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued row is written (or given up); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._pending or self._busy:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write everything still queued, stop the writer, release connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is not None and writer.is_alive():
            self._enqueue(_STOP)
            writer.join(timeout)
            if writer.is_alive():
                log.error("prediction log: writer still busy after %.0f s; %d request(s) unwritten",
                          timeout, len(self._pending))
        self.engine.dispose()

    def count(self) -> int:
        """Rows in the log, after writing whatever this process still has queued."""
        self.flush()
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one())

    def dispose(self) -> None:
        self.close()
