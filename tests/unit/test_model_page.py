"""The model page (flask_api/model_page.py over src/scoring/evaluation.py): the figures the pipeline logged with
the version, drawn and tabled; other versions from the registry; reviewers only; clear messages."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from src.auth.store import set_user
from src.modeling.registry import EVALUATION_DIR
from src.scoring.evaluation import EvaluationMissing, EvaluationSource, read_evaluation
from tests.conftest import TrainedProject
from tests.unit.test_access import (  # noqa: F401  (secured_fixture registers the fixture "secured")
    PASSWORD,
    Secured,
    secured_fixture,
    sign_in,
)


def reviewer(secured: Secured) -> Any:
    set_user(secured.file, "vera", PASSWORD, "review")
    c = secured.client("10.0.0.6")
    assert sign_in(c, "vera", PASSWORD, next_path="/model").status_code == 302
    return c


def spec_of(html: str, chart: str) -> dict[str, Any]:
    return json.loads(re.search(rf'<script type="application/json" id="{chart}-spec">(.*?)</script>', html,
                                re.S).group(1))


def table_of(html: str, chart: str) -> list[list[str]]:
    body = re.search(rf'id="{chart}-table">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    return [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def test_the_page_shows_what_the_pipeline_logged_with_the_version(secured: Secured,
                                                                   trained_project: TrainedProject) -> None:
    logged = trained_project.model_dir / EVALUATION_DIR  # the export carries the run's evaluation
    assert {p.name for p in logged.iterdir()} == {"plots", "metrics", "model_card.md"}
    page = reviewer(secured).get("/model")
    html = page.get_data(as_text=True)
    assert page.status_code == 200, html[:500]
    charts = re.findall(r'data-chart="([^"]+)"', html)
    assert charts == ["roc", "precision-recall", "calibration", "confusion", "importance", "approval-sex",
                      "errors-sex", "approval-marriage", "errors-marriage", "approval-age", "errors-age"]
    assert html.count("vendor/vega-6.4.0.min.js") == 1 and not re.search(r'(src|href)="(https?:)?//', html)

    roc = json.loads((logged / "plots" / "roc.json").read_text())
    assert spec_of(html, "roc")["data"]["values"][5]["tpr"] == roc[5]["tpr"]  # the logged curve, whole
    rows = table_of(html, "roc")
    assert len(rows) == 11
    assert rows[0] == [f"{roc[0]['fpr']:.3f}", f"{roc[0]['tpr']:.3f}", f"{roc[0]['threshold']:.3f}"]
    assert rows[-1][:2] == [f"{roc[-1]['fpr']:.3f}", f"{roc[-1]['tpr']:.3f}"]

    with (logged / "plots" / "confusion.csv").open() as fh:
        pairs = [(r["actual"], r["predicted"]) for r in csv.DictReader(fh)]
    cells = [[f"{pairs.count((actual, predicted)):,}" for predicted in "01"] for actual in "01"]
    assert [row[1:] for row in table_of(html, "confusion")] == cells

    fairness = json.loads((logged / "metrics" / "fairness.json").read_text())
    gate = json.loads((logged / "metrics" / "gate.json").read_text())
    floor = gate["gate"]["fairness"]["min_adverse_impact_ratio"]
    sex = fairness["attributes"]["sex"]["groups"]
    top = max(g["approval_rate"] for g in sex.values() if g["judged"])
    [line] = [layer for layer in spec_of(html, "approval-sex")["layer"] if layer["mark"] != "bar"]
    assert line["mark"]["type"] == "rule" and line["mark"]["strokeDash"]
    assert line["data"]["values"] == [{"line": pytest.approx(floor * top)}]  # the four-fifths line
    assert [r[0] for r in table_of(html, "approval-sex")] == list(sex)
    assert re.search(r'id="verdict-floors">([^<]+)<', html).group(1) == gate["floors"]
    assert "# Model card" in html and "age" not in [c.split("-")[-1] for c in charts[:5]]


def test_other_versions_come_from_the_registry_and_unknown_ones_say_so(secured: Secured,
                                                                        trained_project: TrainedProject,
                                                                        tmp_path: Path) -> None:
    served = secured.app.extensions["credit_service"].model()
    source = EvaluationSource(trained_project.settings, cache=tmp_path / "cache")
    by_registry = dataclasses.replace(served, uri=f"models:/{served.name}/{served.version}")
    version, evaluation = source.for_version(by_registry)
    assert version == served.version
    assert evaluation == read_evaluation(trained_project.model_dir / EVALUATION_DIR)  # downloaded: the same files
    run_id = json.loads((trained_project.model_dir / "registry.json").read_text())["run_id"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [run_id]  # cached per run, nothing partial left
    c = reviewer(secured)
    missing = c.get("/model/7")
    assert missing.status_code == 404 and f"{served.name} has no version 7." in missing.get_data(as_text=True)
    asked = c.get("/model?v=1")
    assert asked.status_code == 302 and asked.headers["Location"] == "/model/1"
    assert c.get("/model?v=one").status_code == 400
    assert c.get("/model/1").status_code == 200


def test_an_export_without_an_evaluation_says_how_to_get_one(secured: Secured, trained_project: TrainedProject,
                                                             tmp_path: Path) -> None:
    old = tmp_path / "old-export"
    shutil.copytree(trained_project.model_dir, old, ignore=shutil.ignore_patterns(EVALUATION_DIR))
    served = dataclasses.replace(secured.app.extensions["credit_service"].model(), uri=str(old))
    with pytest.raises(EvaluationMissing, match=r"carries no evaluation .* export it again"):
        EvaluationSource(trained_project.settings).for_version(served)


def test_only_reviewers_see_the_model(secured: Secured) -> None:
    officer = secured.client("10.0.0.3")
    sign_in(officer, "alice", PASSWORD)
    refused = officer.get("/model")
    assert refused.status_code == 403 and "may not look up decisions or review the model" in \
        refused.get_data(as_text=True)
    assert 'href="/model"' not in officer.get("/").get_data(as_text=True)
    assert secured.client("10.0.0.5").get("/model").headers["Location"].startswith("/login?next=/model")
    assert 'href="/model">The model</a>' in reviewer(secured).get("/decisions").get_data(as_text=True)
