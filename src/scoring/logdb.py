"""The prediction log's database side: its tables, engines, a pre-bound INSERT and error triage.

Any SQLAlchemy URL works (a SQLite file in WAL mode by default; postgresql://...).
Only the shipper (src/scoring/shipper.py) writes here in normal operation; the
monitoring reads it. ``prediction_log_spool`` records how far each spool segment
has been copied, in the same transaction as the rows, so a crash between two
passes never copies a row twice or skips one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from src.scoring.pacer import ROWS_PER_CHECK

SQLITE_BUSY_MS = 30_000
WAL_CHECKPOINT_PAGES = 100  # copy the WAL back in ~0.4 MB steps (default 1000 pages: one ~5 ms CPU burst)
CREATE_ATTEMPTS = 10

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
    # The principal reason codes the applicant was given (a decline or referral; [] for an approval):
    # the record of what they were told. Null for rows logged before codes were recorded.
    sa.Column("adverse_action", sa.JSON, nullable=True),
    # Who asked: "key:<API key id>" or "user:<signed-in name>"; null when the service ran open, and for rows
    # logged before the requester was recorded.
    sa.Column("requested_by", sa.String(160), nullable=True),
)
spool_offsets = sa.Table(
    "prediction_log_spool", metadata,
    sa.Column("segment", sa.String(255), primary_key=True),
    sa.Column("shipped_bytes", sa.BigInteger, nullable=False),
)

# One request's rows: (request_id, source, model_name, model_version, created_at, rows, probabilities, decisions,
# reason codes per row, requester).
Entry = tuple[str, str, str, str, datetime, Sequence[dict[str, Any]], Sequence[float], Sequence[str],
              Sequence[Sequence[str] | None], str | None]
COLUMNS = ("request_id", "row_index", "created_at", "source", "model_name", "model_version", "features",
           "probability", "decision", "adverse_action", "requested_by")
ROW_COLUMNS = ("row_index", "features", "probability", "decision", "adverse_action")
PER_REQUEST = ("request_id", "created_at", "source", "model_name", "model_version",
               "requested_by")  # the same for all of a request's rows


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    cursor.close()


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, json_serializer=_json,
                                  connect_args={"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, json_serializer=_json)


def create_tables(engine: Engine) -> None:
    """Create the log's tables if missing (several processes may race to create a fresh SQLite log), and
    add the columns a log made by an earlier version lacks."""
    for attempt in range(CREATE_ATTEMPTS):
        try:
            metadata.create_all(engine, checkfirst=True)
            _add_missing_columns(engine)
            return
        except OperationalError as exc:
            if "already exists" in str(exc) or "duplicate column" in str(exc):  # another process was first
                return
            if "locked" not in str(exc) or attempt == CREATE_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _add_missing_columns(engine: Engine) -> None:
    """ALTER TABLE ... ADD COLUMN for each nullable column of ``predictions`` the existing table lacks."""
    present = {c["name"] for c in sa.inspect(engine).get_columns(predictions.name)}
    missing = [c for c in predictions.columns if c.name not in present and c.nullable]
    with engine.begin() as conn:
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {predictions.name} ADD COLUMN {column.name} {kind}")


def decision_record(conn: sa.Connection, request_id: str) -> dict[str, Any] | None:
    """One logged request (every row: inputs, probability, decision, reason codes), or None if not logged."""
    rows = conn.execute(sa.select(predictions).where(predictions.c.request_id == request_id)
                        .order_by(predictions.c.row_index)).mappings().all()
    if not rows:
        return None
    first = rows[0]
    stamp = first["created_at"]  # stored in UTC; SQLite gives it back without its zone
    stamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    return {"request_id": request_id, "created_at": stamp.isoformat(), "source": first["source"],
            "requested_by": first["requested_by"],
            "model": {"name": first["model_name"], "version": first["model_version"]},
            "results": [{"row": r["row_index"], "features": r["features"], "probability_of_default": r["probability"],
                         "decision": r["decision"], "adverse_action": r["adverse_action"]} for r in rows]}


def shipped_offsets(conn: sa.Connection, segments: Sequence[str] | None = None) -> dict[str, int]:
    """How far each spool segment (all, or just ``segments``) has been copied into the log, in bytes."""
    query = sa.select(spool_offsets.c.segment, spool_offsets.c.shipped_bytes)
    if segments is not None:
        query = query.where(spool_offsets.c.segment.in_(list(segments)))
    return {segment: int(shipped) for segment, shipped in conn.execute(query).all()}


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
        self._row_binds = [(slot(name), self.processors[name]) for name in ROW_COLUMNS]

    def parameters(self, batch: Sequence[Entry]) -> list[Any]:
        """One parameter tuple (or dict) per scored row of every request."""
        (ri, bind_ri), (fe, bind_fe), (pr, bind_pr), (de, bind_de), (aa, bind_aa) = self._row_binds
        request_binds, width, positional, order = self._request_binds, len(self.order), self.positional, self.order
        out: list[Any] = []
        for (request_id, source, model_name, model_version, created_at, rows, probabilities, decisions, adverse,
             requested_by) in batch:
            values: list[Any] = [None] * width
            for (position, bind), value in zip(request_binds, (request_id, created_at, source, model_name,
                                                               model_version, requested_by), strict=True):
                values[position] = value if bind is None else bind(value)
            for i, (row, p, d, a) in enumerate(zip(rows, probabilities, decisions, adverse, strict=True)):
                values[ri] = i if bind_ri is None else bind_ri(i)
                values[fe] = row if bind_fe is None else bind_fe(row)
                values[pr] = p if bind_pr is None else bind_pr(p)
                values[de] = d if bind_de is None else bind_de(d)
                values[aa] = a if bind_aa is None or a is None else bind_aa(a)
                out.append(tuple(values) if positional else dict(zip(order, values, strict=True)))
        return out

    def execute(self, conn: sa.Connection, batch: Sequence[Entry], pause: Callable[[int], None] | None = None,
                chunk_rows: int = ROWS_PER_CHECK) -> int:
        """Insert every row of ``batch``: in one executemany, or with ``pause`` in chunks of about
        ``chunk_rows`` rows, calling ``pause(rows)`` after each (the shipper's pacer: src/scoring/pacer.py)."""
        limit = chunk_rows if pause is not None else math.inf
        done, start, rows = 0, 0, 0
        for end, entry in enumerate(batch, 1):
            rows += len(entry[5])
            if rows >= limit or end == len(batch):
                parameters = self.parameters(batch[start:end])
                if parameters:
                    conn.exec_driver_sql(self.sql, parameters)
                done += len(parameters)
                if pause is not None:
                    pause(len(parameters))
                start, rows = end, 0
        return done


def transient(exc: BaseException) -> bool:
    """A failure that may pass on a retry: the connection or the I/O, not the rows themselves."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError | OSError)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
