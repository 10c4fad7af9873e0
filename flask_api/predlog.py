"""The prediction log: every scored row, appended through SQLAlchemy.

Default: a SQLite file in WAL mode with a generous busy timeout, so several
gunicorn workers append concurrently without losing rows. Any SQLAlchemy URL
works (e.g. postgresql://...). A failing write never fails the prediction: the
caller counts and logs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

SQLITE_BUSY_MS = 30_000
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
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class PredictionLog:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
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

    def write(self, request_id: str, source: str, model_name: str, model_version: str,
              rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> None:
        now = datetime.now(UTC)
        records = [{
            "request_id": request_id, "row_index": i, "created_at": now, "source": source,
            "model_name": model_name, "model_version": model_version, "features": row,
            "probability": result["probability_of_default"], "decision": result["decision"],
        } for i, (row, result) in enumerate(zip(rows, results, strict=True))]
        with self.engine.begin() as conn:
            conn.execute(predictions.insert(), records)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one())

    def dispose(self) -> None:
        self.engine.dispose()
