"""The monitoring page (flask_api/monitoring_page.py): the monitor's own drift.json and performance.json drawn
and tabled, the service's request counts and latency, an empty state that says how to produce each, metrics
scope only."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from flask_api.metrics import histogram_quantile
from src.auth.store import set_user
from src.batch.__main__ import main as batch_main
from src.config import load_settings
from src.monitoring.__main__ import main as monitoring_main
from tests.conftest import TrainedProject, load_params
from tests.unit.test_access import (  # noqa: F401  (secured_fixture registers the fixture "secured")
    PASSWORD,
    PREDICT,
    Secured,
    bearer,
    build,
    secured_fixture,
    sign_in,
)
from tests.unit.test_model_page import spec_of, table_of


@pytest.fixture(scope="module", name="monitored")
def monitored_fixture(trained_project: TrainedProject, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder whose metrics/ holds what `python -m src.monitoring drift | performance` wrote for the
    trained project's real test split, scored by the batch CLI (outcomes: the split's own)."""
    root = tmp_path_factory.mktemp("monitored")
    params = load_params()
    params["dataset"] = "taiwan_credit"
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    (root / "data").symlink_to(trained_project.root / "data")  # the training reference (read only)
    test = pd.read_parquet(trained_project.settings.split_table("test"))
    scored, labels = root / "scored.parquet", root / "labels.csv"
    model = str(trained_project.model_dir)
    batch_main([str(trained_project.settings.split_table("test")), "--output", str(scored), "--model-uri", model,
                "--params", str(params_file), "--include-features"])
    test[["id", "default"]].to_csv(labels, index=False)
    assert monitoring_main(["--params", str(params_file), "drift", str(scored), "--model-uri", model,
                            "--no-html"]) in (0, 1)
    assert monitoring_main(["--params", str(params_file), "performance", str(scored), "--labels", str(labels),
                            "--period", "week"]) == 0
    return root


def operator(secured: Secured) -> Any:
    c = secured.client("10.0.0.11")
    assert sign_in(c, "prom", PASSWORD, next_path="/monitoring").status_code == 302
    return c


def test_the_page_draws_what_the_monitor_wrote(trained_project: TrainedProject, monitored: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from src.auth.store import create_key  # noqa: PLC0415

    key, _ = create_key(tmp_path / "credentials.json", "client", "score")
    set_user(tmp_path / "credentials.json", "prom", PASSWORD, "metrics")
    app = build(trained_project, tmp_path, monkeypatch, load_settings(monitored / "params.yaml"))
    secured = Secured(app=app, file=tmp_path / "credentials.json", keys={"score": key})
    try:
        for _ in range(3):
            assert secured.client().post(PREDICT, json=secured.body(), headers=bearer(key)).status_code == 200
        page = operator(secured).get("/monitoring")
        html = page.get_data(as_text=True)
        assert page.status_code == 200, html[:500]
        assert re.findall(r'data-chart="([^"]+)"', html) == ["psi", "score-distribution", "auc-by-period",
                                                              "default-rate-by-band", "traffic"]
        drift = json.loads((monitored / "metrics" / "drift.json").read_text())
        performance = json.loads((monitored / "metrics" / "performance.json").read_text())

        psi_rows = table_of(html, "psi")
        assert len(psi_rows) == len(drift["features"])
        worst = max(drift["features"].values(), key=lambda f: f["psi"])
        assert psi_rows[0][1] == f"{worst['psi']:.3f}"  # largest first
        rules = [layer for layer in spec_of(html, "psi")["layer"] if layer["mark"] != "bar"]
        assert rules[0]["data"]["values"] == [{"at": 0.1}, {"at": 0.25}]  # the bands
        assert len(table_of(html, "score-distribution")) == len(drift["score"]["bins"])
        period = performance["periods"][0]
        assert table_of(html, "auc-by-period")[0][1:3] == [f"{period['rows']:,}", f"{period['roc_auc']:.3f}"]
        [auc_lines] = [layer for layer in spec_of(html, "auc-by-period")["layer"] if "data" in layer]
        reference, drop = performance["reference"]["roc_auc"], performance["tolerance"]["max_auc_drop"]
        assert auc_lines["data"]["values"] == [{"at": reference}, {"at": pytest.approx(reference - drop)}]
        bands = table_of(html, "default-rate-by-band")
        assert [r[1] for r in bands] == [f"{b['rows']:,}" for b in performance["overall"]["bands"].values()]
        traffic = {row[0]: row for row in re.findall(r"<tr><td>([^<]*)</td><td[^>]*>([^<]*)</td>",
                                                     html.split('id="traffic-table"')[1].split("</table>")[0])}
        assert traffic[PREDICT][1] == "3"  # the three predictions, counted by the service itself
        assert "No drift flagged." in html or "Drift flagged" in html
    finally:
        app.extensions["credit_service"].predlog.dispose()


def test_without_reports_each_section_says_how_to_produce_them(secured: Secured) -> None:
    html = operator(secured).get("/monitoring").get_data(as_text=True)
    assert 'id="drift-empty"' in html and "python -m src.monitoring drift" in html
    assert 'id="performance-empty"' in html and "python -m src.monitoring performance" in html
    assert re.findall(r'data-chart="([^"]+)"', html) == ["traffic"]  # the sign-in's own requests, counted


def test_only_metrics_users_see_the_monitoring(secured: Secured) -> None:
    officer = secured.client("10.0.0.3")
    sign_in(officer, "alice", PASSWORD)
    refused = officer.get("/monitoring")
    assert refused.status_code == 403 and "may not see the monitoring" in refused.get_data(as_text=True)
    assert 'href="/monitoring">Monitoring</a>' in operator(secured).get("/monitoring").get_data(as_text=True)


@pytest.mark.parametrize(("q", "expected"), [(0.5, 0.005), (0.9, 0.01), (0.99, 0.046), (1.0, 0.05)])
def test_latency_quantiles_follow_prometheus(q: float, expected: float) -> None:
    """SYNTHETIC buckets: 50 requests under 5 ms, 40 more under 10 ms, 10 more under 50 ms; linear within a bucket."""
    buckets = [(0.05, 100.0), (0.005, 50.0), (float("inf"), 100.0), (0.01, 90.0)]  # any order
    assert histogram_quantile(q, buckets) == pytest.approx(expected)
    assert histogram_quantile(q, []) is None and histogram_quantile(q, [(float("inf"), 0.0)]) is None
