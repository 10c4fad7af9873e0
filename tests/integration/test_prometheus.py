"""A real Prometheus server scrapes the real service and the monitoring exporter and runs the shipped rules.

Prometheus (Debian's ``prometheus`` package, which .ci/run installs for promtool) starts on a
free 127.0.0.1 port with the repo's own ``prometheus.yml`` (its two jobs pointed at a gunicorn
service serving the trained project's model and at the exporter fed with reports made from
SYNTHETIC rows, scraped every second) and the repo's ``alerts.yml``. While clients post
applicants, every query of the Grafana dashboard must return data, every alerting rule must
load and evaluate without error, the flagged (synthetic) drift report must raise
``DriftFlagged``, and the healthy service must raise none of the service's alerts.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import ROOT
from tests.integration.conftest import free_port, stop_process_group, wait_http
from tests.integration.exporting import Exporter, exporter_fixture  # noqa: F401  (registers the fixture)
from tests.integration.serving import (  # noqa: F401  (the *_fixture names register fixtures)
    GunicornServer,
    applicant_fixture,
    gunicorn_server_fixture,
    predict_body,
    served_meta_fixture,
)

PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
DASHBOARD = ROOT / "monitoring" / "grafana" / "credit-default.json"
# What Grafana's $__rate_interval comes to at a 1 s scrape interval: several scrapes per window.
RATE_WINDOW = "15s"
SERVICE_ALERTS = {"HighErrorRate", "PredictionLatencyOverSLO", "ServiceNotReady", "DecisionsNotRecorded",
                  "PredictionLogNotShipping", "PredictionLogBacklogLarge", "PredictionLogRowsSetAside"}


@dataclass
class Prometheus:
    url: str
    log_path: Path

    def get(self, path: str, **params: str) -> dict[str, Any]:
        resp = requests.get(self.url + path, params=params, timeout=30)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["result"]

    def firing(self) -> dict[str, str]:
        """{alertname: state} of the alerts Prometheus holds now (pending or firing)."""
        return {a["labels"]["alertname"]: a["state"] for a in self.get("/api/v1/alerts")["alerts"]}


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip("prometheus is not installed: apt-get install -y prometheus (.ci/run does)")
    return found


def address(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


@pytest.fixture(scope="module")
def prometheus(gunicorn_server: GunicornServer, exporter: Exporter,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    workdir = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
    targets = {"credit-default-service": address(gunicorn_server.base_url),
               "credit-default-monitoring": address(exporter.url)}
    for job in config["scrape_configs"]:  # the shipped jobs, pointed at this test's servers
        job.pop("scrape_interval", None)
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={workdir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={workdir / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/-/ready", timeout=60, proc=proc)
        yield Prometheus(url=url, log_path=log_path)
    finally:
        stop_process_group(proc)
        print(f"--- prometheus log ---\n{log_path.read_text(errors='replace')[-4000:]}")


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard, with its variables as Grafana fills them ("All" endpoints)."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"].replace("$endpoint", ".*").replace("$__rate_interval", RATE_WINDOW)
            for panel in dashboard["panels"] for target in panel.get("targets", [])]


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (histogram_quantile and ratios give NaN without traffic)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)


def test_prometheus_scrapes_both_evaluates_the_rules_and_answers_every_dashboard_query(
        prometheus: Prometheus, gunicorn_server: GunicornServer, applicant: dict[str, Any]) -> None:
    stop = threading.Event()
    answered: list[int] = []

    def clients() -> None:  # single applicants, with and without reasons, and a client mistake (422)
        with requests.Session() as session:
            while not stop.is_set():
                for body in (predict_body(applicant, 1, reasons=False), predict_body(applicant, 2),
                             {"applicants": [{"no_such_field": 1}]}):
                    answered.append(session.post(gunicorn_server.url("/api/v1/predict"), json=body,
                                                 timeout=30).status_code)
                time.sleep(0.02)

    thread = threading.Thread(target=clients, daemon=True)
    thread.start()
    try:
        def targets_up() -> bool:
            active = prometheus.get("/api/v1/targets")["activeTargets"]
            return {t["labels"]["job"]: t["health"] for t in active} == {
                "credit-default-service": "up", "credit-default-monitoring": "up"}

        wait_until(targets_up, 60, "both scrape targets up")
        pending = dashboard_queries()
        assert len(pending) >= 20
        deadline = time.monotonic() + 45  # rates need a few scrapes with traffic between them
        while pending and time.monotonic() < deadline:
            pending = [expr for expr in pending if not has_data(prometheus.query(expr))]
            if pending:
                time.sleep(1)
        assert pending == [], f"dashboard queries without data: {pending}"
    finally:
        stop.set()
        thread.join(timeout=60)
    assert set(answered) == {200, 422}, sorted(set(answered))

    rules = {rule["name"]: rule for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]}
    shipped = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    assert set(rules) == {r["alert"] for g in shipped["groups"] for r in g["rules"]}
    broken = {name: rule.get("lastError") for name, rule in rules.items() if rule["health"] != "ok"}
    assert broken == {}

    # The exporter's synthetic drift report is flagged (limits doubled); the service itself is healthy.
    wait_until(lambda: prometheus.firing().get("DriftFlagged") == "firing", 30, "DriftFlagged firing")
    assert SERVICE_ALERTS & set(prometheus.firing()) == set(), prometheus.firing()
