"""Monitoring, in pictures: GET /monitoring for an operator.

The latest drift (PSI per input with the 0.1 / 0.25 bands, the score's distribution against
the training reference) and performance on matured outcomes (ROC-AUC per period against the
model's test ROC-AUC, the default rate per decision band), read from what
``python -m src.monitoring drift | performance`` and the monitor flow write
(``<metrics>/drift.json``, ``<metrics>/performance.json``, the files the monitoring exporter
reads too), and the service's own request rate and latency. Without data yet, each section says
how to produce it. Signed-in users with the ``metrics`` scope (or ``admin``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, render_template

from flask_api import charts
from flask_api.service import service
from src.scoring.evaluation import read_report

bp = Blueprint("monitoring_page", __name__)


def _when(text: str | None) -> str:
    try:
        return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if text else "unknown"
    except ValueError:
        return text or "unknown"


def drift_charts(drift: dict[str, Any], labels: dict[str, str]) -> list[charts.Chart]:
    t = drift["thresholds"]
    return [charts.psi_by_feature(drift["features"], labels, t["moderate"], t["significant"]),
            charts.score_distribution(drift["score"]["bins"], drift["score"]["psi"])]


def performance_charts(performance: dict[str, Any]) -> list[charts.Chart]:
    found = []
    periods = performance.get("periods") or [{"period": "all", **performance["overall"]}]
    found.append(charts.auc_by_period(periods, performance["reference"].get("roc_auc"),
                                      performance["tolerance"]["max_auc_drop"]))
    found.append(charts.default_rate_by_band(performance["overall"]["bands"]))
    return found


@bp.get("/monitoring")
def show() -> tuple[str, int, dict[str, str]]:
    svc = service()
    metrics_dir = Path(svc.settings.paths.metrics)
    drift = read_report(metrics_dir / "drift.json")
    performance = read_report(metrics_dir / "performance.json")
    served = svc.models.current
    profile = served.scorer.profile if served is not None else svc.settings.profile
    labels = {name: spec.label for name, spec in profile.features.items()}
    traffic = svc.metrics.traffic()
    return render_template(
        "monitoring.html", model=served, drift=drift, performance=performance,
        drift_charts=drift_charts(drift, labels) if drift else [],
        drift_when=_when(drift.get("created_at")) if drift else None,
        performance_charts=performance_charts(performance) if performance else [],
        performance_when=_when(performance.get("created_at")) if performance else None,
        traffic=charts.traffic(traffic["endpoints"], traffic["seconds"] / 60) if traffic["endpoints"] else None,
        metrics_dir=metrics_dir), 200, {"Cache-Control": "no-store"}
