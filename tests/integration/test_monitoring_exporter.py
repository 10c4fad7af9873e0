"""The Prometheus exporter, scraped for real, the Grafana dashboard that reads it, and S3 batch folders.

The exporter runs as its own process (``python -m src.monitoring exporter``) on a
free 127.0.0.1 port, fed with drift.json / performance.json produced by the real
monitoring functions on SYNTHETIC data. The dashboard test checks every metric
name in every PromQL expression is one the service or the exporter exposes.
"""

from __future__ import annotations

import json
import re

import boto3
import pytest
import yaml
from prometheus_client import CollectorRegistry

from flask_api.metrics import Metrics
from src.config import load_settings
from src.monitoring.sources import read_frame
from src.scoring.shipper import ShipperMetrics
from tests.conftest import ROOT
from tests.integration.exporting import Exporter, exporter_fixture  # noqa: F401  (registers the fixture)
from tests.synthetic_monitoring import synthetic_scored

GRAFANA = ROOT / "monitoring" / "grafana"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "le", "inf", "nan"}


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
    return registry_names(Metrics().registry)


def registry_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name a registry's metrics expose (counters' _total, histograms' _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in registry.collect():
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


def alert_rules() -> list[dict]:
    rules = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_alert_rules_use_only_exposed_metrics(exporter: Exporter) -> None:
    """Every series an alert watches is one the service, its log shipper, the exporter or Prometheus exposes:
    a renamed metric would otherwise leave its alert silent for ever."""
    shipper = CollectorRegistry()
    ShipperMetrics(shipper)
    exposed = app_metric_names() | registry_names(shipper) | set(exporter.scrape()) | {"up"}
    used = {rule["alert"]: promql_metric_names(rule["expr"]) for rule in alert_rules()}
    assert all(used.values()), used
    unknown = {alert: sorted(names - exposed) for alert, names in used.items() if names - exposed}
    assert unknown == {}, f"alerts watch metrics nobody exposes: {unknown}"
    assert {r["alert"] for r in alert_rules()} >= {
        "HighErrorRate", "PredictionLatencyOverSLO", "ServiceNotReady", "DecisionsNotRecorded", "DriftFlagged",
        "ModelPerformanceDecay", "FairnessFloorBreached"}


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
