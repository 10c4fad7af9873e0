"""The scoring service under a real gunicorn (gunicorn.conf.py): what only several processes can show.

* concurrency: 2 workers x 2 threads (the shipped config) take 1,600 requests from 8 clients with no
  error, and the shared SQLite prediction log holds exactly one row per request;
* reloads under load: POST /admin/reload (twice) and a SIGHUP restart of every
  worker while clients keep sending; no request fails, not even with a
  connection error, and the new workers serve the champion; the admin route
  answers 401 to a missing or wrong token and 404 when no token is configured;
* metrics: /metrics sums counters over both workers (multiprocess collector),
  the probability histogram counts exactly the rows scored, and model_info
  lists one live gauge per worker;
* readiness: with a model that cannot be loaded the server is alive (/health 200)
  but not ready (/ready 503 with the reason) and /predict answers 503 in JSON,
  never 500;
* one SECRET_KEY for all workers: a form's CSRF token validates on both;
* the config module itself: shared SECRET_KEY and metrics directory created
  in the master, stable across the re-read that SIGHUP does; each worker shortens
  the GIL switch interval, and a bad value stops start-up naming the variable;
* keep-alive (src/server/worker.py): a connection is closed after
  GUNICORN_KEEPALIVE_REQUESTS answers, and a SIGHUP restart never closes a
  connection under a request it promised to serve.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import runpy
import shutil
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
import yaml
from gunicorn.workers.gthread import ThreadWorker

from src.config import read_params
from src.server import worker as gunicorn_worker
from tests.conftest import TrainedProject
from tests.integration.serving import (  # noqa: F401  (the *_fixture names register fixtures)
    CONFIG,
    FormFields,
    GunicornServer,
    applicant_fixture,
    gunicorn_server_fixture,
    json_or_text,
    max_row_id,
    metric,
    predict_body,
    registry_server_fixture,
    running_gunicorn,
    scrape,
    served_meta_fixture,
    settled_rows,
    settled_scrape,
    wait_for,
)

pytestmark = pytest.mark.integration

PREDICT = "/api/v1/predict"
# An access-log line of a prediction: its response size and the worker pid (gunicorn.conf.py's format).
SIZED_ACCESS = re.compile(r'"POST /api/v1/predict HTTP/[\d.]+" \d{3} (?P<size>\d+) \d+us <(?P<pid>\d+)>')
CLIENT_TIMEOUT = 180  # seconds: a request queued in the backlog during a SIGHUP restart waits for a model load
LOAD_THREADS, LOAD_REQUESTS = 8, 200


def post_predict(session: requests.Session | None, base_url: str, body: dict[str, Any],
                 close: bool = False) -> requests.Response:
    headers = {"Connection": "close"} if close else None
    poster = session.post if session is not None else requests.post
    return poster(base_url + PREDICT, json=body, headers=headers, timeout=CLIENT_TIMEOUT)


def describe_failures(failures: list[str], server: GunicornServer) -> str:
    return f"{len(failures)} failed requests, first ones:\n" + "\n".join(failures[:10]) + \
        "\n--- server log ---\n" + server.log_tail(60)


# --- a. concurrency and the shared prediction log --------------------------------------------------------------


def test_concurrent_clients_every_request_scored_and_logged_once(gunicorn_server: GunicornServer,
                                                                  applicant: dict[str, Any]) -> None:
    """8 clients x 200 requests: all 200, and exactly one log row (with its own request id) per request."""
    server = gunicorn_server
    assert len(server.worker_pids()) == 2
    first_new_id = max_row_id(server.db_path)

    def client(index: int) -> tuple[list[str], list[str]]:
        ids: list[str] = []
        failures: list[str] = []
        with requests.Session() as session:
            for i in range(LOAD_REQUESTS):
                body = predict_body(applicant, reasons=(i + index) % 2 == 0)
                try:
                    resp = post_predict(session, server.base_url, body)
                except requests.RequestException as exc:
                    failures.append(f"client {index} request {i}: {exc!r}")
                    continue
                if resp.status_code != 200:
                    failures.append(f"client {index} request {i}: {resp.status_code} {json_or_text(resp)}")
                    continue
                payload = resp.json()
                assert len(payload["results"]) == 1
                assert ("reasons" in payload["results"][0]) == body["reasons"]
                ids.append(payload["request_id"])
        return ids, failures

    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        outcomes = list(pool.map(client, range(LOAD_THREADS)))
    failures = [f for _, fs in outcomes for f in fs]
    sent_ids = [i for ids, _ in outcomes for i in ids]
    assert not failures, describe_failures(failures, server)
    expected = LOAD_THREADS * LOAD_REQUESTS
    assert len(sent_ids) == expected
    assert len(set(sent_ids)) == expected

    rows = settled_rows(server.db_path, first_new_id, expected)
    assert len(rows) == expected, f"{len(rows)} rows logged for {expected} requests"
    logged_ids = {request_id for _, request_id in rows}
    assert len(logged_ids) == expected
    assert logged_ids == set(sent_ids)
    # Both workers appended to the one SQLite log, and neither was restarted under load.
    served = server.access_pids("POST", PREDICT)
    assert set(served) == server.worker_pids(), f"requests per worker pid: {dict(served)}"


def settled_access(server: GunicornServer, before: Counter[int], expected: int, timeout: float = 30) -> Counter[int]:
    """Predictions per worker pid since ``before``; access lines land just after each response, so wait a little."""
    deadline = time.monotonic() + timeout
    served = server.access_pids("POST", PREDICT) - before
    while sum(served.values()) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        served = server.access_pids("POST", PREDICT) - before
    return served


# --- c. metrics summed over the workers --------------------------------------------------------------------------


def test_metrics_are_aggregated_across_workers(gunicorn_server: GunicornServer, applicant: dict[str, Any]) -> None:
    """Counters and histograms on /metrics equal what was sent, with both workers having served part of it."""
    server = gunicorn_server
    workers = server.worker_pids()
    assert len(workers) == 2
    # the previous test's last requests may be published a quarter second after they were answered
    before = settled_scrape(server.base_url, "http_requests_total", endpoint=PREDICT)
    served_before = server.access_pids("POST", PREDICT)
    sent = rows = 0
    lock = threading.Lock()

    def client(index: int) -> list[str]:
        nonlocal sent, rows
        failures = []
        for i in range(25):
            n = 1 + (i + index) % 3  # batches of 1-3 rows, so rows scored != requests
            # A new connection per request: the kernel hands connections to whichever worker accepts first.
            resp = post_predict(None, server.base_url, predict_body(applicant, n, reasons=i % 2 == 0), close=True)
            if resp.status_code != 200:
                failures.append(f"{resp.status_code} {json_or_text(resp)}")
                continue
            with lock:
                sent += 1
                rows += n
        return failures

    served: Counter[int] = Counter()
    for _round in range(6):  # until both workers have served some of this test's requests (normally 1 round)
        with ThreadPoolExecutor(4) as pool:
            failures = [f for fs in pool.map(client, range(4)) for f in fs]
        assert not failures, describe_failures(failures, server)
        served = settled_access(server, served_before, sent)
        if len(served) == 2:
            break
    assert set(served) == workers, f"requests per worker pid: {dict(served)}; workers {workers}"
    assert sum(served.values()) == sent

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    # Each worker publishes its counts every quarter second (flask_api/metrics.py): a scrape served by one
    # worker may lag the other by that much, never more.
    deadline = time.monotonic() + 5
    after = scrape(server.base_url)
    while delta("rows_scored_total", source="api") < rows and time.monotonic() < deadline:
        time.sleep(0.1)
        after = scrape(server.base_url)

    assert delta("http_requests_total", endpoint=PREDICT, method="POST", status="200") == sent
    assert delta("http_request_duration_seconds_count", endpoint=PREDICT) == sent
    assert delta("predicted_probability_of_default_count") == rows
    assert delta("rows_scored_total", source="api") == rows
    decisions = {lab for (name, lab) in after if name == "decisions_total"}
    assert decisions, "no decisions_total samples"
    assert delta("decisions_total") == rows
    assert metric(after, "prediction_log_failures_total") == 0

    info = {(dict(lab)["pid"], dict(lab)["name"], dict(lab)["version"]): v
            for (name, lab), v in after.items() if name == "model_info"}
    live = {key for key, value in info.items() if value == 1}
    assert {int(pid) for pid, _, _ in live} == workers, f"model_info: {info}"
    assert len({(name, version) for _, name, version in live}) == 1  # both serve the same model

    # the monitoring page counts the same requests over both workers, since the master started
    page = requests.get(server.base_url + "/monitoring", timeout=30).text
    total = sum(v for (name, lab), v in scrape(server.base_url).items()
                if name == "http_requests_total" and dict(lab)["endpoint"] == PREDICT)
    shown = re.search(rf"<td>{re.escape(PREDICT)}</td><td[^>]*>([\d,]+)</td>", page)
    assert shown and int(shown.group(1).replace(",", "")) == total, page[-3000:]
    started = re.search(r"Since the service started ([\d,]+) minutes ago", page)
    assert started and int(started.group(1).replace(",", "")) < 30  # this run's start (set in the master)


def test_form_csrf_token_is_valid_on_every_worker(gunicorn_server: GunicornServer) -> None:
    """The master's SECRET_KEY is shared: a token signed by one worker validates on the other."""
    server = gunicorn_server
    workers = server.worker_pids()
    before = server.access_pids("POST", "/")
    statuses: Counter[int] = Counter()
    served: Counter[int] = Counter()
    with requests.Session() as browser:  # keeps the session cookie, like a browser
        page = browser.get(server.url("/"), timeout=60)
        assert page.status_code == 200, page.text[:300]
        form = FormFields()
        form.feed(page.text)
        assert form.values.get("csrf_token"), "no CSRF token on the form"
        for _round in range(6):  # until both workers have checked a token (normally 1 round)
            for _ in range(10):
                resp = browser.post(server.url("/"), data=form.values, headers={"Connection": "close"}, timeout=60)
                statuses[resp.status_code] += 1
            served = server.access_pids("POST", "/") - before
            if set(served) == workers and sum(served.values()) == sum(statuses.values()):
                break
            time.sleep(0.5)
    assert dict(statuses) == {200: sum(statuses.values())}, f"form posts by status: {dict(statuses)}"
    assert set(served) == workers, f"form posts per worker: {dict(served)}"


# --- b. reloads under load ----------------------------------------------------------------------------------------


class LoadGenerator:
    """Clients that POST continuously until stopped, recording every failure (connection errors included)."""

    def __init__(self, base_url: str, body: dict[str, Any], clients: int,
                 headers: dict[str, str] | None = None) -> None:
        self.base_url, self.body, self.headers = base_url, body, headers or {}
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.versions: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=CLIENT_TIMEOUT + 30)

    def _run(self, index: int) -> None:
        with requests.Session() as session:
            session.headers.update(self.headers)
            while not self.stop.is_set():
                body = {**self.body, "reasons": index % 2 == 0}
                try:
                    resp = post_predict(session, self.base_url, body)
                except requests.RequestException as exc:
                    self._record(f"client {index}: {exc!r}")
                    continue
                if resp.status_code != 200:
                    self._record(f"client {index}: {resp.status_code} {json_or_text(resp)}")
                    continue
                with self._lock:
                    self.ok += 1
                    self.versions[resp.json()["model"]["version"]] += 1

    def _record(self, failure: str) -> None:
        with self._lock:
            self.failures.append(failure)

    def wait_for(self, successes: int, timeout: float = 240) -> None:
        """Block until ``successes`` more requests succeeded (bounded; never asserts on speed)."""
        target = self.ok + successes
        deadline = time.monotonic() + timeout
        while self.ok < target and not self.failures and time.monotonic() < deadline:
            time.sleep(0.1)


def wait_for_new_workers(server: GunicornServer, old: set[int], timeout: float = 240) -> set[int]:
    """After SIGHUP: until the master's children are all new (old ones exited), two of them, both serving."""
    deadline = time.monotonic() + timeout
    current = server.worker_pids()
    while time.monotonic() < deadline:
        current = server.worker_pids()
        if len(current) == 2 and not current & old and current <= server.accepting_pids():
            return current
        time.sleep(0.2)
    raise AssertionError(f"workers after SIGHUP: {current} (before: {old})\n{server.log_tail(80)}")


def test_reload_and_sighup_under_load_drop_no_request(registry_server: GunicornServer,
                                                      applicant: dict[str, Any],
                                                      trained_project: TrainedProject) -> None:
    """Two HTTP reloads and one SIGHUP restart while 4 clients keep sending: every request succeeds."""
    server = registry_server
    auth = server.headers
    old_workers = server.worker_pids()
    assert len(old_workers) == 2
    reloads = []
    with LoadGenerator(server.base_url, predict_body(applicant), clients=4, headers=auth) as load:
        load.wait_for(40)
        reloads.append(requests.post(server.url("/admin/reload"), headers=auth, timeout=CLIENT_TIMEOUT))
        load.wait_for(40)
        server.sighup()
        new_workers = wait_for_new_workers(server, old_workers)
        load.wait_for(80)
        reloads.append(requests.post(server.url("/admin/reload"), headers=auth, timeout=CLIENT_TIMEOUT))
        load.wait_for(40)
    assert not load.failures, describe_failures(load.failures, server)
    assert load.ok >= 200
    for resp in reloads:
        assert resp.status_code == 200, json_or_text(resp)
        assert resp.json()["model"]["name"] == trained_project.model_name
    served = server.access_pids("POST", PREDICT)
    assert new_workers & set(served), f"no prediction served by the new workers {new_workers}: {dict(served)}"
    assert old_workers & set(served)

    ready = requests.get(server.url("/ready"), timeout=60)
    assert ready.status_code == 200
    model = ready.json()["model"]
    assert model["name"] == trained_project.model_name
    assert model["uri"] == server.model_uri
    assert set(load.versions) == {model["version"]}
    # The master dropped the exited workers' live gauges (child_exit): model_info lists the new workers only.
    deadline = time.monotonic() + 60
    while True:
        info = {int(dict(lab)["pid"]) for (name, lab), v in scrape(server.base_url, auth).items()
                if name == "model_info" and v == 1}
        if info == new_workers or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert info == new_workers, f"model_info pids {info}, workers {new_workers}"
    assert "handling signal: hup" in server.log_text().lower()


# --- d. not ready: the model cannot be loaded ----------------------------------------------------------------------


def test_unloadable_model_is_alive_but_not_ready_and_never_500(trained_project: TrainedProject, tmp_path: Path,
                                                              applicant: dict[str, Any]) -> None:
    """/health 200, /ready 503 with the reason, /predict 503 JSON, /admin/reload 503 (still nothing to load)."""
    uri = "models:/no-such-model@champion"
    with running_gunicorn(tmp_path / "gunicorn", uri, token=None, ready=False,
                          extra_env={"MLFLOW_TRACKING_URI": trained_project.tracking_uri}) as server:
        # Workers accept only once their load attempt ended, so the first answers already say "error".
        for _ in range(6):  # fresh connections, so both workers get asked
            ready = wait_for(server.url("/ready"), server.proc, server.log_path, status=503, timeout=120)
            body = ready.json()
            assert body["status"] == "error", body
            assert body["model_uri"] == uri
            assert "no-such-model" in body["error"] or "RESOURCE_DOES_NOT_EXIST" in body["error"], body

            health = requests.get(server.url("/health"), timeout=60)
            assert health.status_code == 200

            resp = requests.post(server.url(PREDICT), json=predict_body(applicant), timeout=60,
                                 headers={"Connection": "close"})
            assert resp.status_code == 503, json_or_text(resp)
            assert resp.headers["Content-Type"].startswith("application/json")
            assert resp.json()["error"].startswith("no model loaded yet")

        # The contract is still published (from params.yaml's profile) for clients to code against.
        assert requests.get(server.url("/api/v1/openapi.json"), timeout=60).status_code == 200
        assert requests.get(server.url("/api/v1/schema"), timeout=60).status_code == 200

        failed = requests.post(server.url("/admin/reload"), timeout=60)
        assert failed.status_code == 503 and "reload failed" in failed.json()["error"], json_or_text(failed)

        samples = scrape(server.base_url)
        assert metric(samples, "model_reloads_total", outcome="failed") >= 1
        assert not [n for (n, _lab) in samples if n == "model_info"]
        assert " 500 " not in server.log_text()


# --- the config module ---------------------------------------------------------------------------------------------


def test_config_shares_secret_and_metrics_dir_and_survives_reread(tmp_path: Path) -> None:
    """Run gunicorn.conf.py as gunicorn does (master, then again on SIGHUP): values set once and kept."""
    keys = ("SECRET_KEY", "PROMETHEUS_MULTIPROC_DIR", "GUNICORN_OWNS_PROMETHEUS_DIR", "SERVE_BIND",
            "WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_CONTROL_SOCKET", "GUNICORN_SWITCH_INTERVAL_MS",
            "PREDLOG_SHIPPER", "RELOAD_MARKER_FILE")  # all restored after: later tests build apps in this process
    saved = {k: os.environ.get(k) for k in keys}
    created = None
    try:
        for key in keys:
            os.environ.pop(key, None)
        os.environ.update(SERVE_BIND="127.0.0.1:8123", WEB_CONCURRENCY="3")
        first = runpy.run_path(str(CONFIG))
        created = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        secret = os.environ["SECRET_KEY"]
        assert len(secret) >= 32
        assert Path(created).is_dir()
        assert first["bind"] == ["127.0.0.1:8123"]
        assert first["workers"] == 3
        assert first["worker_class"] == "src.server.worker.KeepAliveThreadWorker"
        assert issubclass(gunicorn_worker.KeepAliveThreadWorker, ThreadWorker)  # what the name resolves to
        assert first["threads"] == 2
        assert first["switch_interval"] == pytest.approx(0.0005)
        assert first["keepalive"] == gunicorn_worker.DEFAULT_KEEPALIVE
        assert first["preload_app"] is False
        assert first["control_socket_disable"] is True
        assert "%(D)s" in first["access_log_format"]
        assert os.environ["PREDLOG_SHIPPER"] == "external"  # workers only spool; the master's shipper ships

        second = runpy.run_path(str(CONFIG))  # what a SIGHUP does in the master
        assert os.environ["SECRET_KEY"] == secret
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == created
        stale = Path(created) / "counter_999999.db"
        stale.write_bytes(b"x")

        class Log:
            def info(self, *args: object) -> None:
                pass

            def error(self, *args: object) -> None:
                raise AssertionError(f"on_starting refused: {args}")

        class Cfg:
            bind = second["bind"]  # what gunicorn was given (on_starting checks it is not served open)

        class Server:
            log = Log()
            cfg = Cfg()

        second["on_starting"](Server())
        assert not stale.exists()
        second["on_exit"](Server())
        assert not Path(created).exists()  # it created the directory, so it removes it
    finally:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.parametrize(("setting", "expected"), [(None, 0.0005), ("2", 0.002)])
def test_post_fork_sets_the_gil_switch_interval(setting: str | None, expected: float,
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each worker shortens the GIL switch interval (default 0.5 ms; GUNICORN_SWITCH_INTERVAL_MS overrides)."""
    conf = _run_config_isolated(monkeypatch, tmp_path, GUNICORN_SWITCH_INTERVAL_MS=setting)
    saved_interval = sys.getswitchinterval()
    loggers = [logging.getLogger(name) for name in conf["APP_LOGGERS"]]
    saved_loggers = [(lg.handlers, lg.level, lg.propagate) for lg in loggers]
    try:
        sys.setswitchinterval(0.005)
        conf["post_fork"](None, None)
        assert sys.getswitchinterval() == pytest.approx(expected)
    finally:
        sys.setswitchinterval(saved_interval)
        for lg, (handlers, level, propagate) in zip(loggers, saved_loggers, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)


@pytest.mark.parametrize("setting", ["0", "-1", "fast"])
def test_a_bad_switch_interval_is_named(setting: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"GUNICORN_SWITCH_INTERVAL_MS .*{setting}"):
        _run_config_isolated(monkeypatch, tmp_path, GUNICORN_SWITCH_INTERVAL_MS=setting)


@pytest.mark.parametrize(("variable", "setting"), [("WEB_CONCURRENCY", "two"), ("GUNICORN_THREADS", "2.5"),
                                                   ("GUNICORN_TIMEOUT", "1e3")])
def test_a_bad_whole_number_is_named(variable: str, setting: str, monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{variable} must be a whole number, got '{setting}'"):
        _run_config_isolated(monkeypatch, tmp_path, **{variable: setting})


def _run_config_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str | None) -> dict[str, Any]:
    """Execute gunicorn.conf.py as the master does, its environment writes kept out of this process's."""
    environ = {k: v for k, v in os.environ.items() if k not in env}
    environ.update({k: v for k, v in env.items() if v is not None}, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    monkeypatch.setattr(os, "environ", environ)
    return runpy.run_path(str(CONFIG))


# --- f. keep-alive: connections recycled, and never closed under a client after a restart began ---------------


def http_exchange(sock: socket.socket, body: bytes, reader: Any) -> tuple[int, dict[str, str], bytes]:
    """One POST /api/v1/predict on an open socket; (status, lower-cased headers, body) of its response."""
    sock.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection without answering")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, reader.read(int(headers["content-length"]))


def test_keepalive_connections_are_recycled_and_survive_a_restart_mid_request(
        trained_project: TrainedProject, tmp_path: Path, applicant: dict[str, Any]) -> None:
    """KeepAliveThreadWorker (src/server/worker.py) on a real gunicorn, over a raw socket.

    * GUNICORN_KEEPALIVE_REQUESTS=3: answers 1-2 keep the connection, the 3rd says
      "Connection: close" and the server closes it.
    * A slow request (1000 rows with reasons) is in flight when SIGHUP restarts every
      worker: its answer still promises keep-alive (it began before the signal), so the
      client's next request on the same connection must be served, not dropped (stock
      gthread closed that connection: benoitc/gunicorn#1236), with "Connection: close".
    * A connection idle at the SIGHUP is closed by its stopping worker after
      STOPPING_KEEPALIVE (5 s), not kept for the 75 s idle timeout nor the (here 120 s)
      graceful timeout.
    """
    small = json.dumps(predict_body(applicant, reasons=False)).encode()
    slow = json.dumps(predict_body(applicant, n=1000, reasons=True)).encode()
    with running_gunicorn(tmp_path / "gunicorn", str(trained_project.model_dir), token=None,
                          extra_env={"GUNICORN_KEEPALIVE_REQUESTS": "3", "GUNICORN_GRACEFUL_TIMEOUT": "120"}) as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock, \
                sock.makefile("rb") as reader:
            answers = [http_exchange(sock, small, reader) for _ in range(3)]
            assert [status for status, _, _ in answers] == [200, 200, 200]
            assert [h.get("connection") for _, h, _ in answers] == ["keep-alive", "keep-alive", "close"]
            assert reader.read(1) == b"", "the server closes the connection after the 3rd answer"

        old_workers = server.worker_pids()
        with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock, \
                sock.makefile("rb") as reader, \
                socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as idle, \
                idle.makefile("rb") as idle_reader:
            assert http_exchange(idle, small, idle_reader)[1]["connection"] == "keep-alive"  # then idle
            assert http_exchange(sock, small, reader)[1]["connection"] == "keep-alive"  # request 1: a worker owns it
            hup = threading.Timer(0.3, server.sighup)  # lands while the slow request is being scored
            hup.start()
            status, headers, payload = http_exchange(sock, slow, reader)
            hup.join()
            assert status == 200 and len(json.loads(payload)["results"]) == 1000
            assert headers["connection"] == "keep-alive", "precondition: the slow request began before SIGHUP"
            status, headers, payload = http_exchange(sock, small, reader)  # stock gthread: connection reset here
            assert status == 200 and json.loads(payload)["results"][0]["decision"]
            assert headers["connection"] == "close"  # the stopping worker ends the connection after this answer
            idle.settimeout(gunicorn_worker.STOPPING_KEEPALIVE + 25)  # (raises TimeoutError if kept longer)
            assert idle_reader.read(1) == b"", "a stopping worker closes an idle connection"
        wait_for_new_workers(server, old_workers)


SLOW_ROWS = 10_000  # applicants in each slow request of the test below


def test_new_connections_go_to_the_idle_worker(trained_project: TrainedProject, tmp_path: Path,
                                               applicant: dict[str, Any]) -> None:
    """While one worker scores slow requests, new connections are taken by the idle one.

    A KeepAliveThreadWorker handling a request leaves a new connection to the others for
    1 ms before it accepts it itself; stock gthread lets both race for it (about half each
    here: 32 of 60).
    """
    # Slow enough (well over the 0.2 s below) whatever the model's size: more rows than a
    # request may normally carry, allowed by a params file of this test's own.
    slow = json.dumps(predict_body(applicant, n=SLOW_ROWS, reasons=True)).encode()
    small = json.dumps(predict_body(applicant, reasons=False)).encode()
    params = read_params(CONFIG.parent / "params.yaml")
    params["serve"].update(max_batch=SLOW_ROWS, max_body_bytes=4 * len(slow))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params), encoding="utf-8")
    with running_gunicorn(tmp_path / "gunicorn", str(trained_project.model_dir), token=None,
                          extra_env={"PARAMS_FILE": str(params_file)}) as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        statuses: list[int] = []
        probes = 0
        with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as slow_sock, \
                slow_sock.makefile("rb") as slow_reader:
            for _ in range(3):  # slow requests on one kept-alive connection: always the same worker
                waiter = threading.Thread(target=lambda: statuses.append(http_exchange(slow_sock, slow,
                                                                                       slow_reader)[0]))
                waiter.start()
                time.sleep(0.2)
                while waiter.is_alive() and probes < 60:  # one new connection per small request
                    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock, \
                            sock.makefile("rb") as reader:
                        assert http_exchange(sock, small, reader)[0] == 200
                    probes += 1
                    time.sleep(0.02)  # the idle worker finishes that request (access log...) before the next
                waiter.join()
        assert statuses == [200, 200, 200]
        deadline = time.monotonic() + 30
        while True:  # access lines land just after each response
            served = [(int(m["pid"]), int(m["size"])) for m in SIZED_ACCESS.finditer(server.log_text())]
            if len(served) >= probes + 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        slow_pids = {pid for pid, size in served if size > 50_000}
        small_pids = Counter(pid for pid, size in served if size <= 50_000)
        assert len(slow_pids) == 1 and sum(small_pids.values()) == probes >= 5, (slow_pids, small_pids, probes)
        on_busy = small_pids[next(iter(slow_pids))]
        print(f"new connections on the busy worker: {on_busy} of {probes}")
        assert on_busy <= 0.1 * probes, f"{on_busy} of {probes} new connections went to the busy worker"


def test_an_open_server_says_so_once(gunicorn_server: GunicornServer) -> None:
    """No credentials on a loopback address: the master warns that it runs open; its workers do not repeat it."""
    assert gunicorn_server.token is None and len(gunicorn_server.worker_pids()) == 2
    assert gunicorn_server.log_text().count("running OPEN") == 1, gunicorn_server.log_text()[-3000:]


def test_an_upload_runs_on_one_worker_and_every_worker_shows_it(gunicorn_server: GunicornServer,
                                                                 trained_project: TrainedProject) -> None:
    """The batch page's job state lives on disk: the worker that scores the file and the workers that show its
    page or hand out its files need not be the same."""
    server = gunicorn_server
    test = pd.read_parquet(trained_project.settings.split_table("test")).drop(columns=["default"])
    with requests.Session() as browser:
        page = browser.get(server.url("/batch"), timeout=30)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        sent = browser.post(server.url("/batch"), data={"csrf_token": token}, allow_redirects=False, timeout=60,
                            files={"file": ("applicants.csv", test.to_csv(index=False).encode())})
        assert sent.status_code == 303, sent.text[:500]
        job = sent.headers["Location"]
        before = server.access_pids("GET", job)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # new connections: whichever worker accepts first answers
            html = browser.get(server.url(job), headers={"Connection": "close"}, timeout=30).text
            shown = server.access_pids("GET", job) - before
            if 'id="job-done"' in html and len(shown) == 2:
                break
            assert 'id="job-error"' not in html, html[-2000:]
            time.sleep(0.2)
        assert 'id="job-done"' in html and set(shown) == server.worker_pids(), (shown, html[-1500:])
        assert re.search(r'id="count-rows">([\d,]+)<', html).group(1) == f"{len(test):,}"
        scored = pd.read_parquet(io.BytesIO(browser.get(server.url(f"{job}/scored.parquet"), timeout=30).content))
        assert scored["id"].tolist() == test["id"].tolist()
