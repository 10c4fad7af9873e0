"""The prediction log on a real PostgreSQL server (DATABASE_URL=postgresql://...), not only on SQLite.

The server is Debian's PostgreSQL started for the session on a free 127.0.0.1 port
(tests/postgres.py); every test gets its own database.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from flask_api import create_app
from src.scoring.logdb import predictions
from src.scoring.predlog import PredictionLog
from tests.conftest import TrainedProject, default_applicant

WORKERS, THREADS, REQUESTS = 2, 4, 40  # two logs stand in for two gunicorn workers


def rows_of(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    rows = [{"age": 20 + (seed + i) % 50, "education": 1 + i % 3, "limit_bal": 1000.5 * (i + 1), "note": None}
            for i in range(n)]
    results = [{"probability_of_default": ((seed + i) % 97) / 97, "decision": ("approve", "refer", "decline")[i % 3]}
               for i in range(n)]
    return rows, results


def test_concurrent_workers_lose_no_rows(postgres_url: str, tmp_path: Path) -> None:
    """N scored rows -> N log rows with several writers and two shippers (two hosts' spools) inserting at once,
    each request's rows together and in order."""
    logs = [PredictionLog(postgres_url, tmp_path / f"spool-{w}", ship_seconds=0.02) for w in range(WORKERS)]
    sent: Counter[str] = Counter()
    lock = threading.Lock()

    def client(log: PredictionLog, worker: int, thread: int) -> None:
        for k in range(REQUESTS):
            request_id = f"w{worker}-t{thread}-{k}"
            rows, results = rows_of(1 + k % 3, k)
            log.submit(request_id, "api", "credit-default-taiwan_credit", "7", rows, results)
            with lock:
                sent[request_id] = len(rows)

    threads = [threading.Thread(target=client, args=(log, w, t)) for w, log in enumerate(logs) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()  # its shipper ships everything spooled first
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            got = conn.execute(sa.select(predictions.c.request_id, predictions.c.row_index)).all()
    finally:
        engine.dispose()
    assert len(got) == sum(sent.values()) == WORKERS * THREADS * sum(1 + k % 3 for k in range(REQUESTS))
    by_request: dict[str, list[int]] = {}
    for request_id, row_index in got:
        by_request.setdefault(request_id, []).append(row_index)
    assert {k: sorted(v) for k, v in by_request.items()} == {k: list(range(n)) for k, n in sent.items()}


def test_rows_read_back_with_their_types(postgres_url: str, tmp_path: Path) -> None:
    """JSON features, a timezone-aware timestamp, floats and text, exactly as written."""
    log = PredictionLog(postgres_url, tmp_path / "spool")
    rows, results = rows_of(2, 5)
    rows[1]["note"] = "é, \"quoted\""
    before = datetime.now(UTC)
    log.submit("req-pg", "form", "model-x", "3", rows, results)
    assert log.flush(30)
    with log.engine.connect() as conn:
        got = conn.execute(sa.select(predictions).order_by(predictions.c.row_index)).mappings().all()
    dialect = log.engine.dialect.name
    log.dispose()
    assert dialect == "postgresql"
    assert [r["features"] for r in got] == rows
    assert [(r["probability"], r["decision"]) for r in got] == [(x["probability_of_default"], x["decision"])
                                                                for x in results]
    stamp = got[0]["created_at"]
    assert stamp.tzinfo is not None and before - timedelta(seconds=5) <= stamp <= datetime.now(UTC)
    assert {(r["request_id"], r["source"], r["model_name"], r["model_version"]) for r in got} == {
        ("req-pg", "form", "model-x", "3")}


def test_the_service_logs_predictions_to_postgres(trained_project: TrainedProject, postgres_url: str,
                                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """DATABASE_URL=postgresql://... is all it takes: the API's rows land in PostgreSQL."""
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    monkeypatch.setenv("PREDLOG_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = create_app({"SETTINGS": trained_project.settings, "MODEL_URI": str(trained_project.model_dir),
                      "MODEL_LOADING": "sync", "TESTING": True})
    svc = app.extensions["credit_service"]
    try:
        row = default_applicant(svc.model().meta)
        resp = app.test_client().post("/api/v1/predict", json={"applicants": [row, {**row, "limit_bal": 61000.0}],
                                                              "reasons": False})
        assert resp.status_code == 200, resp.json
        assert svc.predlog.count() == 2
        assert svc.predlog.engine.dialect.name == "postgresql"
        with svc.predlog.engine.connect() as conn:
            logged = list(conn.execute(sa.select(predictions.c.features)).scalars())
        assert sorted(f["limit_bal"] for f in logged) == sorted([row["limit_bal"], 61000.0])
    finally:
        svc.predlog.dispose()
