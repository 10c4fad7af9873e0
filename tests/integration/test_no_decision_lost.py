"""No answered decision is lost: the drills, on a real gunicorn (gunicorn.conf.py) and a real PostgreSQL.

* a worker SIGKILLed under load (what the OOM killer does): every request answered 200 is in the
  log once the replacement worker serves, exactly once;
* the shipper process SIGKILLed: the master starts another within seconds, nothing is lost;
* the database stopped for 60 s under load: every request is still answered, /metrics shows the
  backlog and the failing passes, and when the database is back every row arrives, once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from tests import postgres
from tests.conftest import TrainedProject
from tests.integration.serving import (  # noqa: F401  (the *_fixture names register fixtures)
    GunicornServer,
    applicant_fixture,
    metric,
    predict_body,
    running_gunicorn,
    scrape,
    served_meta_fixture,
    settled_rows,
)

pytestmark = pytest.mark.integration

PREDICT = "/api/v1/predict"
CLIENTS = 4
OUTAGE_SECONDS = 30  # six times the shipper's longest back-off (5 s)


class Load:
    """CLIENTS threads posting single applicants until stopped; the request ids answered 200, and failures."""

    def __init__(self, base_url: str, applicant: dict[str, Any], pause: float = 0.0) -> None:
        self.base_url, self.applicant, self.pause = base_url, applicant, pause
        self.answered: list[str] = []
        self.refused: list[str] = []  # connection errors (the killed worker's in-flight requests), non-200s
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    resp = session.post(self.base_url + PREDICT, json=predict_body(self.applicant, reasons=False),
                                        timeout=60)
                except requests.RequestException as exc:
                    with self._lock:
                        self.refused.append(repr(exc))
                    session.close()
                    continue
                with self._lock:
                    if resp.status_code == 200:
                        self.answered.append(resp.json()["request_id"])
                    else:
                        self.refused.append(f"{resp.status_code} {resp.text[:200]}")
                if self.pause:
                    time.sleep(self.pause)

    def count(self) -> int:
        with self._lock:
            return len(self.answered)

    @contextmanager
    def running(self) -> Iterator[Load]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in self._threads:
                thread.join(90)


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


def assert_each_answered_once(answered: list[str], logged: list[str], unanswered: int = 0) -> None:
    """Every answered decision is on record, once; at most ``unanswered`` more were recorded but not delivered
    (a request in flight on a killed worker: decided and spooled, then its connection died with the worker)."""
    assert len(set(answered)) == len(answered) > 0
    assert len(logged) == len(set(logged)), "a decision was logged twice"
    missing = set(answered) - set(logged)
    assert not missing, f"{len(missing)} answered decision(s) not on record, e.g. {sorted(missing)[:3]}"
    assert len(set(logged) - set(answered)) <= unanswered


def test_a_sigkilled_worker_loses_no_answered_decision(trained_project: TrainedProject, tmp_path: Path,
                                                       applicant: dict[str, Any]) -> None:
    with running_gunicorn(tmp_path / "gunicorn", str(trained_project.model_dir)) as server:
        load = Load(server.base_url, applicant)
        with load.running():
            wait_until(lambda: load.count() > 300, 60, "300 answers before the kill")
            victim = sorted(server.worker_pids())[0]
            os.kill(victim, signal.SIGKILL)
            at_kill = load.count()
            wait_until(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids()
                       and load.count() > at_kill + 300, 120, "a replacement worker serving")
            (shipper,) = server.shipper_pids()
            os.kill(shipper, signal.SIGKILL)  # the shipper too: the master starts another
            wait_until(lambda: server.shipper_pids() - {shipper}, 30, "a new shipper process")
            at_shipper_kill = load.count()
            wait_until(lambda: load.count() > at_shipper_kill + 200, 60, "answers after the shipper's restart")
        answered = load.answered
        logged = [request_id for _, request_id in settled_rows(server.db_path, 0, len(answered))]
        assert_each_answered_once(answered, logged, unanswered=len(load.refused))
        assert "SIGKILL" in server.log_text() and "shipper (pid" in server.log_text()
        assert len(load.refused) <= 2 * CLIENTS, load.refused[:5]  # only what was in flight on the killed worker


@pytest.fixture(name="cluster")
def cluster_fixture() -> Iterator[postgres.Cluster]:
    """A PostgreSQL cluster of the test's own, since the test stops it."""
    bindir = postgres.server_binaries()
    if bindir is None:
        pytest.skip("the PostgreSQL server is not installed: apt-get install -y postgresql (.ci/run does)")
    with postgres.cluster(bindir) as server:
        yield server


def logged_ids(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT request_id FROM predictions ORDER BY id")).scalars())
    finally:
        engine.dispose()


def test_a_database_outage_loses_no_row(trained_project: TrainedProject, tmp_path: Path,
                                        applicant: dict[str, Any], cluster: postgres.Cluster) -> None:
    extra = {"DATABASE_URL": cluster.url, "PREDLOG_SPOOL_DIR": str(tmp_path / "spool")}
    with running_gunicorn(tmp_path / "gunicorn", str(trained_project.model_dir), extra_env=extra) as server:
        load = Load(server.base_url, applicant, pause=0.05)
        with load.running():
            wait_until(lambda: load.count() >= 100, 60, "100 answers before the outage")
            wait_until(lambda: len(logged_ids(cluster.url)) >= 100, 30, "rows shipped before the outage")
            cluster.stop()
            stopped = load.count()
            time.sleep(OUTAGE_SECONDS)
            during = scrape(server.base_url)
            answered_during = load.count() - stopped
            cluster.start()
            wait_until(lambda: len(logged_ids(cluster.url)) >= load.count(), 60, "the backlog shipped")
        assert answered_during > 500 and not load.refused, load.refused[:5]  # answered right through the outage
        assert metric(during, "prediction_log_backlog_bytes") > 0
        assert metric(during, "prediction_log_ship_errors_total") >= 5
        assert metric(during, "prediction_log_failures_total") == 0
        # what the PredictionLogNotShipping alert watches (monitoring/prometheus/alerts.yml): stale since the stop
        assert time.time() - metric(during, "prediction_log_last_ship_timestamp_seconds") > OUTAGE_SECONDS - 10
        wait_until(lambda: len(logged_ids(cluster.url)) >= len(load.answered), 60, "every answer shipped")
        assert_each_answered_once(load.answered, logged_ids(cluster.url))
        wait_until(lambda: metric(scrape(server.base_url), "prediction_log_backlog_bytes") == 0, 10, "no backlog")
        assert "unreachable" in server.log_text() and "reachable again" in server.log_text()
