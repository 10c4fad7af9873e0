"""Decision lookup for reviewers: GET /decisions, a reference id in, the decision as it was given out.

A reviewer handling a complaint or an audit types the reference the result page and
the API returned and sees the logged record: time, channel, who asked, the model
name and version, and per applicant the inputs, probability, decision and the
principal reasons they were given (statement and value, rebuilt from the logged codes
and inputs by the same code that gave them). Signed-in users with the ``review`` scope
(or ``admin``) only; the JSON of the same record is ``GET /api/v1/decisions/<id>``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Blueprint, render_template, request
from sqlalchemy.exc import SQLAlchemyError

from flask_api.api import REQUEST_ID
from flask_api.service import Service, service
from flask_api.views import pct
from src.config import Profile
from src.scoring.scorer import AdverseReason, display_value, reasons_from_codes

log = logging.getLogger(__name__)

bp = Blueprint("review", __name__)

Page = tuple[str, int, dict[str, str]]


@dataclass(frozen=True)
class Applicant:
    """One row of a logged decision, as a reviewer reads it."""

    row: int
    probability: str
    decision: str
    reasons: list[AdverseReason] | None  # None: logged before reason codes were recorded
    answers: list[tuple[str, str]]


def profile_for(svc: Service, model_name: str) -> Profile | None:
    """The profile that gave the logged decision's inputs their labels and reasons their statements."""
    current = svc.models.current
    if current is not None and current.name == model_name:
        return current.scorer.profile
    return svc.settings.profile if svc.settings.registered_model_name == model_name else None


def applicant_view(result: dict[str, Any], profile: Profile | None) -> Applicant:
    features = result["features"]
    codes = result.get("adverse_action")
    if profile is None:
        answers = [(name, str(value)) for name, value in features.items()]
        reasons = None if codes is None else [AdverseReason(code=c, reason="", feature="", value="") for c in codes]
    else:
        answers = [(spec.label, display_value(spec, features.get(name)))
                   for name, spec in profile.features.items() if name in features]
        reasons = None if codes is None else reasons_from_codes(profile, features, codes)
    return Applicant(row=result["row"], probability=pct(float(result["probability_of_default"])),
                     decision=str(result["decision"]), reasons=reasons, answers=answers)


def _page(reference: str, status: int, record: dict[str, Any] | None = None, error: str | None = None,
          applicants: list[Applicant] | None = None) -> Page:
    return render_template("decision.html", model=None, reference=reference, record=record, error=error,
                           applicants=applicants or [], when=_when(record)), status, {}


def _when(record: dict[str, Any] | None) -> str:
    """The decision's time (the record's is in UTC)."""
    return datetime.fromisoformat(record["created_at"]).strftime("%Y-%m-%d %H:%M:%S UTC") if record else ""


@bp.get("/decisions")
def lookup() -> Page:
    """The lookup form; with ``?reference=<id>``, the decision behind it (or why there is none)."""
    reference = (request.args.get("reference") or "").strip().lower()
    if not reference:
        return _page("", 200)
    if not REQUEST_ID.fullmatch(reference):
        return _page(reference, 404, error="A reference looks like 0190a3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d "
                                            "(letters a to f and digits in groups of 8, 4, 4, 4 and 12).")
    svc = service()
    try:
        record = svc.predlog.lookup(reference)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("decision lookup %s: the prediction log cannot be read: %s", reference, exc)
        return _page(reference, 503, error="The prediction log cannot be read right now; please try again "
                                           "in a minute.")
    if record is None:
        return _page(reference, 404, error="No decision with this reference in the log. (A decision reaches "
                                           "the log within about a second of its answer.)")
    profile = profile_for(svc, record["model"]["name"])
    return _page(reference, 200, record, applicants=[applicant_view(r, profile) for r in record["results"]])
