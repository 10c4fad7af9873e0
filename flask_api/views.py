"""Web form for loan officers: GET / shows the form, POST / scores one applicant.

The form is generated from the served model's profile (flask_api/forms.py) and
scored through :meth:`Service.score` with source="form", so every decision made
here is validated, counted and logged exactly like an API decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, render_template, request
from flask_wtf.csrf import CSRFError

from flask_api.forms import ApplicantForm, default_values, field_infos, form_class
from flask_api.service import ModelNotReady, NotRecorded, service
from flask_api.signin import signed_in
from src.scoring.model_store import LoadedModel
from src.scoring.scorer import APPROVE, DECLINE, REFER, display_value

log = logging.getLogger(__name__)

bp = Blueprint("views", __name__)

Page = tuple[str, int, dict[str, str]]


def pct(probability: float) -> str:
    """A probability as a percentage with one decimal: 0.2345 -> "23.5%"."""
    return f"{probability * 100:.1f}%"


@dataclass(frozen=True)
class ReasonView:
    """One reason as the result page shows it: field, value, and the bar length relative to the largest."""

    label: str
    value: str
    share: float  # |contribution| / largest |contribution| among the reasons shown, in percent


def _unavailable(reason: str | None = None) -> Page:
    """Friendly 503 (no model loaded yet, or the decision could not be recorded): retry, no stack trace."""
    return render_template("unavailable.html", model=None, reason=reason), 503, {"Retry-After": "30"}


def _render_form(form: ApplicantForm, model: LoadedModel, status: int = 200) -> Page:
    summary = model.meta.get("feature_summary") or {}
    errors = [(name, form[name].errors[0]) for name in form.profile.features if form[name].errors]
    errors += [("", message) for message in form.form_errors]
    errors += [("", f"Security token: {m}") for m in form.errors.get("csrf_token", [])]
    return render_template("form.html", form=form, model=model, profile=form.profile,
                           infos=field_infos(form.profile, summary), errors=errors), status, {}


def _decision_words(decision: str, probability: float, threshold: float, refer_from: float) -> str:
    """Why this applicant got this decision, in one sentence."""
    if decision == DECLINE:
        return (f"{pct(probability)} is at or above the decline threshold of {pct(threshold)}, "
                "so the model recommends declining.")
    if decision == REFER:
        return (f"{pct(probability)} is just under the decline threshold of {pct(threshold)} "
                f"(from {pct(refer_from)} up), so a loan officer should review the application.")
    return f"{pct(probability)} is below {pct(refer_from)}, comfortably under the decline threshold, so approve."


def _rules_words(model: LoadedModel, refer_from: float) -> str:
    """How the bands are set, including where the threshold comes from when the model records it."""
    threshold = model.scorer.threshold
    text = (f"Decline at {pct(threshold)} or more; refer from {pct(refer_from)} to just under {pct(threshold)}; "
            f"approve below {pct(refer_from)}.")
    costs = model.meta.get("threshold_costs") or {}
    fn, fp = costs.get("cost_false_negative"), costs.get("cost_false_positive")
    if fn and fp:
        text += (f" The {pct(threshold)} threshold was chosen on validation data, counting an approved applicant "
                 f"who defaults as {fn / fp:g} times as costly as a declined applicant who would have repaid.")
    return text


def _result_page(form: ApplicantForm, row: dict[str, Any], request_id: str, model: LoadedModel,
                 result: dict[str, Any]) -> Page:
    probability = float(result["probability_of_default"])
    decision = str(result["decision"])
    threshold = model.scorer.threshold
    refer_from = max(threshold - model.scorer.refer_margin, 0.0)
    reasons = result.get("reasons") or []
    largest = max((abs(r["contribution"]) for r in reasons), default=0.0) or 1.0

    profile = form.profile

    def view(r: dict[str, Any]) -> ReasonView:
        spec = profile.features.get(r["feature"])
        value = display_value(spec, row.get(r["feature"])) if spec else r["value"]
        return ReasonView(label=r["label"], value=value, share=round(100 * abs(r["contribution"]) / largest, 1))

    answers = [(spec.label, display_value(spec, row.get(name))) for name, spec in profile.features.items()]
    gauge = {"approve": round(100 * refer_from, 2), "refer": round(100 * (threshold - refer_from), 2),
             "marker": round(min(max(probability, 0.0), 1.0) * 100, 2)}
    return render_template(
        "result.html", model=model, request_id=request_id, probability=pct(probability), decision=decision,
        decision_words=_decision_words(decision, probability, threshold, refer_from),
        rules_words=_rules_words(model, refer_from), gauge=gauge,
        up=[view(r) for r in reasons if r["direction"] == "raises"],
        down=[view(r) for r in reasons if r["direction"] != "raises"],
        answers=answers, raw=form.raw(), decisions=(APPROVE, REFER, DECLINE),
        adverse=result.get("adverse_action") or [],
    ), 200, {}


@bp.get("/")
def index() -> Page:
    """The form, pre-filled with a typical applicant (the training medians / modes)."""
    model = service().models.current
    if model is None:
        return _unavailable()
    cls = form_class(model.scorer.profile)
    form = cls(formdata=None, data=default_values(model.scorer.profile, model.meta.get("feature_summary") or {}))
    return _render_form(form, model)


@bp.post("/")
def submit() -> Page:
    """Validate with the API's rules; on success score, log and show the result.

    The result page's "Change the answers" button posts the answers back with
    edit=1: the form reopens filled in, nothing is scored. (A POST rather than a
    link keeps applicant data out of URLs, access logs and browser history.)
    """
    svc = service()
    model = svc.models.current
    if model is None:
        return _unavailable()
    form = form_class(model.scorer.profile)()
    if request.form.get("edit"):
        return _render_form(form, model)
    if not form.validate():
        return _render_form(form, model, status=422)
    row = form.row()
    try:
        request_id, used, results = svc.score([row], source="form", reasons=True, requested_by=signed_in())
    except ModelNotReady:
        return _unavailable()
    except NotRecorded:
        return _unavailable("The decision could not be put on record, so none was made. Nothing was saved; "
                            "please try again in a minute.")
    return _result_page(form, row, request_id, used, results[0])


@bp.errorhandler(CSRFError)
def csrf_failed(exc: CSRFError) -> Page:
    """A missing or stale token (e.g. the service restarted with a new secret): explain, score nothing."""
    log.info("form post rejected: %s", exc.description)
    return render_template("csrf_error.html", model=None, reason=exc.description), 400, {}
