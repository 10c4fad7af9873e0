"""The Prometheus exporter, scraped for real, the Grafana dashboard that reads it, and S3 batch folders.

The exporter runs as its own process (``python -m src.monitoring exporter``) on a
free 127.0.0.1 port, fed with drift.json / performance.json produced by the real
monitoring functions on SYNTHETIC data. The dashboard test checks every metric
name in every PromQL expression is one the service or the exporter exposes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from flask_api.metrics import Metrics
from src.common import write_json
from src.config import load_settings
from src.data import ingest, validate
from src.monitoring import performance as perf
from src.monitoring.drift import compare
from src.monitoring.sources import read_frame
from tests.conftest import ROOT, make_settings
from tests.integration.conftest import free_port, stop_process_group, tool_env, wait_http
from tests.synthetic_monitoring import synthetic_score, synthetic_scored, synthetic_taiwan_applicants

GRAFANA = ROOT / "monitoring" / "grafana"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "le", "inf", "nan"}


def synthetic_reports(folder: Path) -> tuple[Path, Path]:
    """drift.json and performance.json from the real functions on SYNTHETIC rows (with some drift)."""
    settings = make_settings("taiwan_credit", ROOT)
    raw = synthetic_taiwan_applicants(3000, seed=1)
    clean = validate.validate(ingest.ingest(raw, settings.profile), settings.profile).clean
    reference, batch = clean.iloc[:2000], clean.iloc[2000:].copy()
    batch["limit_bal"] = (batch["limit_bal"] * 2.0).round(-4)
    drift = compare(reference, synthetic_score(reference), batch, synthetic_score(batch), settings.profile,
                    settings.monitoring)
    drift_file = folder / "drift.json"
    write_json(drift_file, {"created_at": "2026-11-21T12:00:00+00:00", **drift})
    scored, labels = synthetic_scored(400)
    labels = labels.assign(sex=np.where(np.arange(len(labels)) % 2 == 0, "female", "male"))  # SYNTHETIC groups
    joined = perf.join_labels(scored, perf.read_labels(labels, "id", "default", 1, "labels", by=("sex",)), "scored")
    performance_file = folder / "performance.json"
    write_json(performance_file, {"created_at": "2026-11-21T12:00:00+00:00",
                                  **perf.summarise(joined, {"roc_auc": 0.9}, "week", settings.monitoring,
                                                   by=("sex",))})
    return drift_file, performance_file


@dataclass
class Exporter:
    url: str
    drift_file: Path
    performance_file: Path

    def scrape(self) -> dict[str, list]:
        """{sample name: [(labels, value), ...]} of one real scrape."""
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            text = resp.read().decode()
        samples: dict[str, list] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return samples


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    folder = tmp_path_factory.mktemp("exporter")
    drift_file, performance_file = synthetic_reports(folder)
    port = free_port()
    log = (folder / "exporter.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "src.monitoring", "exporter", "--bind", f"127.0.0.1:{port}",
                             "--drift-file", str(drift_file), "--performance-file", str(performance_file)],
                            cwd=ROOT, env=tool_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_http(url, timeout=120, proc=proc)
        yield Exporter(url=url, drift_file=drift_file, performance_file=performance_file)
    finally:
        stop_process_group(proc)
        log.close()


def test_exporter_serves_the_reports_as_gauges(exporter: Exporter) -> None:
    drift = json.loads(exporter.drift_file.read_text())
    performance = json.loads(exporter.performance_file.read_text())
    samples = exporter.scrape()
    psi = {labels["feature"]: value for labels, value in samples["monitoring_drift_feature_psi"]}
    assert psi == pytest.approx({n: f["psi"] for n, f in drift["features"].items()})
    assert samples["monitoring_drift_score_psi"][0][1] == pytest.approx(drift["score"]["psi"])
    assert samples["monitoring_drift_flag"][0][1] == 1.0 and "limit_bal" in drift["drifted_features"]
    assert samples["monitoring_drift_drifted_features"][0][1] == len(drift["drifted_features"])
    fired = {(labels["feature"], labels["test"]) for labels, value in samples["monitoring_drift_test_fired"]
             if value == 1.0}
    assert fired == {(n, t) for n, f in [*drift["features"].items(), ("score", drift["score"])]
                     for t in f["fired_by"]}
    assert ("limit_bal", "ks") in fired
    assert samples["monitoring_performance_roc_auc"][0][1] == pytest.approx(performance["overall"]["roc_auc"])
    assert samples["monitoring_performance_reference_roc_auc"][0][1] == 0.9
    by_group = {labels["group"]: value for labels, value in samples["monitoring_performance_group_approval_rate"]
                if labels["column"] == "sex"}
    assert by_group == pytest.approx({g["group"]: g["approval_rate"] for g in performance["by"]["sex"]})
    assert set(by_group) == {"female", "male"}
    assert samples["monitoring_performance_decay"][0][1] == float(performance["decay"])
    rates = {labels["band"]: value for labels, value in samples["monitoring_performance_band_default_rate"]}
    assert rates == pytest.approx({b: v["default_rate"] for b, v in performance["overall"]["bands"].items()})
    assert {labels["report"]: value for labels, value in samples["monitoring_report_up"]} == {
        "drift": 1.0, "performance": 1.0}


def test_exporter_rereads_files_at_each_scrape(exporter: Exporter) -> None:
    original = exporter.drift_file.read_text()
    saved = exporter.performance_file.read_bytes()
    try:
        drift = json.loads(original)
        drift["score"]["psi"] = 0.4242
        drift["flag"] = False
        exporter.drift_file.write_text(json.dumps(drift))
        exporter.performance_file.unlink()
        samples = exporter.scrape()
        assert samples["monitoring_drift_score_psi"][0][1] == 0.4242
        assert samples["monitoring_drift_flag"][0][1] == 0.0
        assert {labels["report"]: value for labels, value in samples["monitoring_report_up"]} == {
            "drift": 1.0, "performance": 0.0}
        assert "monitoring_performance_roc_auc" not in samples
    finally:
        exporter.drift_file.write_text(original)
        exporter.performance_file.write_bytes(saved)


def app_metric_names() -> set[str]:
    """Every sample name the service's /metrics can expose (from its own registry, so renames are caught)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "gauge": ("",)}.get(family.type, ("",))
        names |= {family.name + s for s in suffixes}
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"[^"]*"', "", expr)                       # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                    # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                   # range selectors
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping label lists
    return {m.group(1) for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text)
            if m.group(1).lower() not in PROMQL_WORDS and not m.group(1).startswith("__")}


def test_grafana_dashboard_uses_only_exposed_metrics(exporter: Exporter) -> None:
    dashboard = json.loads((GRAFANA / "credit-default.json").read_text())
    assert {"uid", "title", "panels", "schemaVersion", "templating"} <= set(dashboard)
    exposed = app_metric_names() | set(exporter.scrape())
    used: set[str] = set()
    titles = []
    for panel in dashboard["panels"]:
        assert {"id", "type", "title", "gridPos"} <= set(panel)
        if panel["type"] == "row":
            continue
        titles.append(panel["title"])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = promql_metric_names(target["expr"])
            assert names, target["expr"]
            used |= names
    assert used - exposed == set(), f"dashboard queries metrics nobody exposes: {sorted(used - exposed)}"
    for needed in ("http_requests_total", "http_request_duration_seconds_bucket",
                   "predicted_probability_of_default_bucket", "decisions_total", "monitoring_drift_feature_psi",
                   "monitoring_drift_score_psi", "monitoring_performance_roc_auc"):
        assert needed in used, needed
    assert len(set(p["id"] for p in dashboard["panels"])) == len(dashboard["panels"])
    assert promql_metric_names('histogram_quantile(0.95, sum by (le) (rate(x_bucket{a="b"}[5m])))') == {"x_bucket"}


def test_provisioning_and_scrape_config_point_at_the_service_and_exporter() -> None:
    settings = load_settings(ROOT / "params.yaml")
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources.yml").read_text())
    assert datasources["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards.yml").read_text())
    assert providers["providers"][0]["type"] == "file"
    scrape = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for cfg in job["static_configs"] for t in cfg["targets"]}
    assert {settings.serve.bind, settings.monitoring.exporter_bind} <= targets


def test_batches_are_read_from_s3_folders(moto_server: str) -> None:
    """A folder of scored parts on S3 (a real moto server) reads like a local folder."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="scores")
    scored, _ = synthetic_scored(30)
    for part in range(3):
        body = scored.iloc[part * 10:(part + 1) * 10].to_csv(index=False).encode()
        s3.put_object(Bucket="scores", Key=f"2026-11-21/part-{part}.csv", Body=body)
    frame = read_frame("s3://scores/2026-11-21")
    assert len(frame) == 30 and sorted(frame["id"]) == list(range(30))
