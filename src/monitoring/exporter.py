"""Prometheus exporter for the monitoring results: gauges read from drift.json and performance.json.

The files are re-read on every scrape (they are small), so a new ``drift`` or
``performance`` run shows up at the next scrape with no restart. A missing or
unreadable file is not an error: ``monitoring_report_up{report=...}`` is 0 and
that report's other gauges are simply absent. This is a separate process rather
than part of the app's /metrics because gunicorn runs the app in multiprocess
mode, where gauges computed from files would be reported once per worker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX = "monitoring"
REPORTS = ("drift", "performance")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", path, exc)
        return None


def _timestamp(text: str | None) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def _gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> Iterator[Metric]:
    if value is None:
        return
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), float(value))
    yield family


class MonitoringCollector(Collector):
    """Turns the latest drift.json / performance.json into gauges at each scrape."""

    def __init__(self, drift_file: Path, performance_file: Path) -> None:
        self.files = {"drift": Path(drift_file), "performance": Path(performance_file)}

    def collect(self) -> Iterator[Metric]:
        data = {name: _read(path) for name, path in self.files.items()}
        up = GaugeMetricFamily(f"{PREFIX}_report_up", "1 when the report file was read at this scrape",
                               labels=["report"])
        for name in REPORTS:
            up.add_metric([name], 1.0 if data[name] is not None else 0.0)
        yield up
        if data["drift"] is not None:
            yield from self._drift(data["drift"])
        if data["performance"] is not None:
            yield from self._performance(data["performance"])

    @staticmethod
    def _drift(d: dict[str, Any]) -> Iterator[Metric]:
        psi = GaugeMetricFamily(f"{PREFIX}_drift_feature_psi", "PSI of each feature vs the training reference",
                                labels=["feature", "type", "band"])
        for name, entry in d.get("features", {}).items():
            psi.add_metric([name, str(entry.get("type")), str(entry.get("band"))], float(entry["psi"]))
        yield psi
        score = d.get("score", {})
        yield from _gauge("drift_score_psi", "PSI of the predicted probability vs the reference scores",
                          score.get("psi"))
        yield from _gauge("drift_flag", "1 when the last drift run was flagged", float(bool(d.get("flag"))))
        yield from _gauge("drift_drifted_features", "Features flagged by any test (PSI band, KS or chi-square, "
                          "default rate)", len(d.get("drifted_features", [])))
        fired = GaugeMetricFamily(f"{PREFIX}_drift_test_fired", "1 for each test that flagged a feature (or the "
                                  "score) in the last drift run", labels=["feature", "test"])
        for name, entry in [*d.get("features", {}).items(), ("score", d.get("score", {}))]:
            for test in entry.get("fired_by", []):
                fired.add_metric([name, str(test)], 1.0)
        yield fired
        rows = GaugeMetricFamily(f"{PREFIX}_drift_rows", "Rows compared", labels=["set"])
        rows.add_metric(["reference"], float(d.get("n_reference", 0)))
        rows.add_metric(["batch"], float(d.get("n_batch", 0)))
        yield rows
        thresholds = GaugeMetricFamily(f"{PREFIX}_drift_psi_threshold", "PSI where each band starts",
                                       labels=["band"])
        for band in ("moderate", "significant"):
            if d.get("thresholds", {}).get(band) is not None:
                thresholds.add_metric([band], float(d["thresholds"][band]))
        yield thresholds
        yield from _gauge("drift_last_run_timestamp_seconds", "When drift.json was written",
                          _timestamp(d.get("created_at")))

    @staticmethod
    def _performance(p: dict[str, Any]) -> Iterator[Metric]:
        overall = p.get("overall", {})
        for key, doc in (("roc_auc", "ROC-AUC on labelled outcomes"), ("ks", "KS on labelled outcomes"),
                         ("brier", "Brier score on labelled outcomes"),
                         ("default_rate", "Observed default rate of the labelled rows"),
                         ("approval_rate", "Share of labelled rows approved")):
            yield from _gauge(f"performance_{key}", doc, overall.get(key))
        yield from _gauge("performance_reference_roc_auc", "The model's test ROC-AUC (decay reference)",
                          p.get("reference", {}).get("roc_auc"))
        yield from _gauge("performance_decay", "1 when ROC-AUC fell more than the tolerance below the reference",
                          float(bool(p.get("decay"))))
        rows = GaugeMetricFamily(f"{PREFIX}_performance_rows", "Join counts", labels=["kind"])
        for kind, value in p.get("counts", {}).items():
            rows.add_metric([kind], float(value))
        yield rows
        share = GaugeMetricFamily(f"{PREFIX}_performance_band_share", "Share of rows per decision band",
                                  labels=["band"])
        rate = GaugeMetricFamily(f"{PREFIX}_performance_band_default_rate", "Observed default rate per band",
                                 labels=["band"])
        for band, entry in overall.get("bands", {}).items():
            if entry.get("share") is not None:
                share.add_metric([band], float(entry["share"]))
            if entry.get("default_rate") is not None:
                rate.add_metric([band], float(entry["default_rate"]))
        yield share
        yield rate
        yield from MonitoringCollector._groups(p.get("by") or {})
        yield from _gauge("performance_last_run_timestamp_seconds", "When performance.json was written",
                          _timestamp(p.get("created_at")))


    @staticmethod
    def _groups(by: dict[str, list[dict[str, Any]]]) -> Iterator[Metric]:
        """performance --by: each group's approval rate, its ratio to the most approved group, default rate, AUC."""
        families = {key: GaugeMetricFamily(f"{PREFIX}_performance_group_{key}", doc, labels=["column", "group"])
                    for key, doc in (("approval_rate", "Share approved, per group of a --by column"),
                                     ("approval_ratio", "Approval rate / the most approved group's (four-fifths)"),
                                     ("default_rate", "Observed default rate, per group"),
                                     ("roc_auc", "ROC-AUC on labelled outcomes, per group"),
                                     ("rows", "Labelled rows, per group"))}
        for column, groups in by.items():
            for entry in groups:
                for key, family in families.items():
                    if entry.get(key) is not None:
                        family.add_metric([column, str(entry["group"])], float(entry[key]))
        yield from families.values()


def build_registry(drift_file: Path, performance_file: Path) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitoringCollector(drift_file, performance_file))
    return registry


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


def serve(host: str, port: int, drift_file: Path, performance_file: Path) -> None:
    """Serve /metrics on host:port until interrupted."""
    app = make_wsgi_app(build_registry(drift_file, performance_file))
    with make_server(host, port, app, handler_class=_QuietHandler) as server:
        log.info("monitoring exporter on http://%s:%d/metrics (from %s, %s)", host, server.server_port,
                 drift_file, performance_file)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            log.info("stopped")
