"""The model, in pictures: GET /model (the served version) and /model/<version> (any registered version).

For a model validator: the test split's ROC and precision-recall curves, calibration, the
confusion matrix at the threshold, feature importance, approval and error rates by protected
group with the four-fifths line, the gate's verdict and the model card, each chart with a table
of its figures. Drawn from what the pipeline logged with the version (src/scoring/evaluation.py).
Signed-in users with the ``review`` scope (or ``admin``).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from flask_api import charts
from flask_api.service import service
from src.config import Settings
from src.scoring.evaluation import Evaluation, EvaluationMissing, EvaluationSource

log = logging.getLogger(__name__)

bp = Blueprint("model_page", __name__)

Page = tuple[str, int, dict[str, str]]


def install(app: Flask, settings: Settings) -> None:
    app.extensions["credit_evaluations"] = EvaluationSource(settings)
    app.register_blueprint(bp)


def figures(evaluation: Evaluation, labels: dict[str, str]) -> list[charts.Chart]:
    """Every chart the evaluation has data for, in reading order."""
    test = evaluation.test or {}
    found: list[charts.Chart] = []
    if evaluation.roc:
        found.append(charts.roc(evaluation.roc, test.get("roc_auc")))
    if evaluation.prc:
        found.append(charts.precision_recall(evaluation.prc, test.get("pr_auc")))
    if evaluation.calibration:
        found.append(charts.calibration(evaluation.calibration, test.get("ece")))
    if evaluation.confusion:
        found.append(charts.confusion(evaluation.confusion, test.get("threshold")))
    if evaluation.importance:
        found.append(charts.importance(evaluation.importance, labels))
    return found


def group_figures(evaluation: Evaluation, floors: dict[str, float]) -> list[charts.Chart]:
    attributes = (evaluation.fairness or {}).get("attributes") or {}
    found = []
    for key, attribute in attributes.items():
        found.append(charts.approval_by_group(key, attribute, floors["min_adverse_impact_ratio"]))
        found.append(charts.error_rates_by_group(key, attribute, floors["max_equal_opportunity_gap"]))
    return found


def _floors(evaluation: Evaluation) -> dict[str, float]:
    """The fairness floors the gate judged this version by (else today's params)."""
    judged = ((evaluation.gate or {}).get("gate") or {}).get("fairness") or {}
    today = service().settings.gate.fairness
    return {key: float(judged.get(key, getattr(today, key)))
            for key in ("min_adverse_impact_ratio", "max_equal_opportunity_gap")}


def _page(status: int, **context: Any) -> Page:
    return render_template("model.html", model=service().models.current, **context), status, {}


@bp.get("/model")
@bp.get("/model/<int:version>")
def show(version: int | None = None) -> Page | Response:
    asked = request.args.get("v", "").strip()
    if version is None and asked:  # the version box (a plain GET form)
        if not asked.isdigit() or int(asked) < 1:
            return _page(400, error=f"A version is a whole number from 1, not {asked[:20]!r}.", version=None)
        return redirect(url_for("model_page.show", version=int(asked)))
    served = service().models.current
    if served is None:
        return _page(503, error="No model is loaded yet; please try again in a minute.", version=None)
    source: EvaluationSource = current_app.extensions["credit_evaluations"]
    try:
        shown, evaluation = source.for_version(served, None if version is None else str(version))
    except EvaluationMissing as exc:
        return _page(exc.status, error=str(exc), version=version, served=served)
    floors = _floors(evaluation)
    labels = {name: spec.label for name, spec in served.scorer.profile.features.items()}
    gate = evaluation.gate or {}
    return _page(200, error=None, version=shown, served=served, evaluation=evaluation, test=evaluation.test or {},
                 charts=figures(evaluation, labels), group_charts=group_figures(evaluation, floors),
                 gate=gate, floors=floors, is_served=shown == served.version)
