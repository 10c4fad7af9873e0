"""JSON API: POST /api/v1/predict, GET /api/v1/decisions/<id> (review), GET /api/v1/schema, GET /api/v1/openapi.json.

Client mistakes get 400 (malformed JSON), 413 (body too large), 415 (not JSON)
or 422 (valid JSON that breaks the contract), each with a JSON body naming every
offending row and field. Never a 500 for client input, never a stack trace.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import BadRequest

from flask_api.service import ModelNotReady, NotRecorded, Service, service
from flask_api.validation import applicant_json_schema, validate_applicants
from src.auth.policy import requester

bp = Blueprint("api", __name__, url_prefix="/api/v1")

ALLOWED_KEYS = {"applicants", "reasons"}
REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


Answer = tuple[int, dict[str, Any]]


def error_body(status: int, message: str, errors: list[dict[str, Any]] | None = None) -> Answer:
    body: dict[str, Any] = {"error": message}
    if errors is not None:
        body["errors"] = errors
    return status, body


def error(status: int, message: str, errors: list[dict[str, Any]] | None = None) -> tuple[Response, int]:
    status, body = error_body(status, message, errors)
    return jsonify(body), status


def answer_predict(svc: Service, payload: Any, requested_by: str | None = None) -> Answer:
    """The contract of POST /api/v1/predict on a parsed JSON body: (HTTP status, JSON body).

    Both ways in answer through this one function, so they cannot disagree: the
    Flask view below and the fast path (flask_api/fastpath.py) that serves plain
    requests without Flask's per-request machinery.
    """
    if not isinstance(payload, dict):
        return error_body(422, "the body must be a JSON object like {\"applicants\": [{...}]}")
    unknown = sorted(set(payload) - ALLOWED_KEYS)
    if unknown:
        return error_body(422, "unknown top-level fields",
                          [{"row": None, "field": k, "message": "is not a known field"} for k in unknown])
    applicants = payload.get("applicants")
    if not isinstance(applicants, list) or not applicants:
        return error_body(422, "'applicants' must be a non-empty list of applicant objects",
                          [{"row": None, "field": "applicants", "message": "must be a non-empty list"}])
    limit = svc.settings.serve.max_batch
    if len(applicants) > limit:
        return error_body(422, f"too many applicants: {len(applicants)} > serve.max_batch = {limit}",
                          [{"row": None, "field": "applicants", "message": f"at most {limit} rows per request"}])
    reasons = payload.get("reasons", True)
    if not isinstance(reasons, bool):
        return error_body(422, "'reasons' must be true or false",
                          [{"row": None, "field": "reasons", "message": "must be a boolean"}])
    try:
        model = svc.model()
    except ModelNotReady as exc:
        return error_body(503, f"no model loaded yet: {exc}")
    rows, problems = validate_applicants(applicants, model.scorer.profile)
    if problems:
        return error_body(422, f"{len(problems)} invalid field(s)", [p.as_dict() for p in problems])
    try:
        request_id, used, results = svc.score(rows, source="api", reasons=reasons, requested_by=requested_by)
    except NotRecorded:
        return error_body(503, "the decision could not be recorded (prediction log unavailable), so none was "
                               "made; try again later")
    return 200, {"request_id": request_id, "model": {"name": used.name, "version": used.version},
                 "threshold": used.scorer.threshold, "results": results}


@bp.post("/predict")
def predict() -> Any:
    """Transport checks (content type, well-formed JSON) here; the rest in :func:`answer_predict`."""
    svc = service()
    if not request.is_json:
        return error(415, f"Content-Type must be application/json, got '{request.mimetype or 'none'}'")
    try:
        payload = request.get_json()
    except BadRequest:
        return error(400, "the request body is not valid JSON")
    except RecursionError:  # the JSON parser gives up on pathological nesting
        return error(400, "the request body is nested too deeply to be an applicant list")
    status, body = answer_predict(svc, payload, requester(request.environ))
    return jsonify(body), status


@bp.get("/decisions/<request_id>")
def decision(request_id: str) -> Any:
    """A logged decision, for disputes and audits: inputs, model version, probability, decision, reasons given."""
    if not REQUEST_ID.fullmatch(request_id):
        return error(404, f"no decision '{request_id}': request ids look like 0190a3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d")
    try:
        record = service().predlog.lookup(request_id)
    except (SQLAlchemyError, OSError):
        return error(503, "the prediction log cannot be read right now; try again later")
    if record is None:
        return error(404, f"no decision '{request_id}' in the prediction log (a decision reaches it within "
                          "about a second of its answer)")
    return jsonify(record)


@bp.get("/schema")
def schema() -> Any:
    svc = service()
    current = svc.models.current
    profile = current.scorer.profile if current else svc.settings.profile
    return jsonify(applicant_json_schema(profile))


def openapi_document(applicant: dict[str, Any], max_batch: int) -> dict[str, Any]:
    """OpenAPI 3.1 description of the API (JSON Schema 2020-12 bodies)."""
    applicant = {k: v for k, v in applicant.items() if k != "$schema"}
    error_body = {
        "type": "object", "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "errors": {"type": "array", "items": {
                "type": "object", "required": ["row", "field", "message"],
                "properties": {"row": {"type": ["integer", "null"]}, "field": {"type": "string"},
                               "message": {"type": "string"}}}},
        },
    }
    reason = {"type": "object", "required": ["feature", "label", "value", "contribution", "direction", "text"],
              "properties": {"feature": {"type": "string"}, "label": {"type": "string"},
                             "value": {"type": "string"}, "contribution": {"type": "number"},
                             "direction": {"enum": ["raises", "lowers"]}, "text": {"type": "string"}}}
    adverse = {"type": "object", "required": ["code", "reason", "feature", "value"],
               "properties": {"code": {"type": "string"}, "reason": {"type": "string"},
                              "feature": {"type": "string"}, "value": {"type": "string"}}}
    result = {"type": "object", "required": ["probability_of_default", "decision", "adverse_action"],
              "properties": {"probability_of_default": {"type": "number", "minimum": 0, "maximum": 1},
                             "decision": {"enum": ["approve", "refer", "decline"]},
                             "adverse_action": {"type": "array", "items": adverse,
                                                "description": "principal reasons for a decline or referral "
                                                               "(empty for an approval)"},
                             "reasons": {"type": "array", "items": reason}}}
    response = {"type": "object", "required": ["request_id", "model", "threshold", "results"],
                "properties": {"request_id": {"type": "string"},
                               "model": {"type": "object", "required": ["name", "version"],
                                         "properties": {"name": {"type": "string"},
                                                        "version": {"type": "string"}}},
                               "threshold": {"type": "number"},
                               "results": {"type": "array", "items": result}}}
    err = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    # Once the service has credentials (python -m src.auth), every route but /health and /ready needs a key.
    refused = {"401": {"description": "Missing or wrong API key", "content": err},
               "403": {"description": "The key's scope does not allow this route", "content": err},
               "429": {"description": "Rate limit reached (see Retry-After)", "content": err}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Credit default scoring API", "version": "1.0.0",
                 "description": "Probability of default, decision and reasons for loan applicants."},
        "paths": {
            "/api/v1/predict": {"post": {
                "summary": "Score 1 to max_batch applicants",
                "operationId": "predict",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["applicants"], "additionalProperties": False,
                    "properties": {
                        "applicants": {"type": "array", "minItems": 1, "maxItems": max_batch,
                                       "items": {"$ref": "#/components/schemas/Applicant"}},
                        "reasons": {"type": "boolean", "default": True},
                    }}}}},
                "responses": {
                    "200": {"description": "Scored", "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/Prediction"}}}},
                    "400": {"description": "Malformed JSON", "content": err},
                    "413": {"description": "Body too large", "content": err},
                    "415": {"description": "Not JSON", "content": err},
                    "422": {"description": "Invalid applicants (each row and field named)", "content": err},
                    "503": {"description": "No model loaded yet", "content": err},
                    **refused,
                },
            }},
            "/api/v1/decisions/{request_id}": {"get": {
                "summary": "A logged decision (inputs, model, probability, decision, reason codes given, "
                           "who asked); a key with the review (or admin) scope",
                "operationId": "decision",
                "parameters": [{"name": "request_id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The logged decision"},
                              "404": {"description": "Unknown request id", "content": err},
                              "503": {"description": "Prediction log unreadable", "content": err}, **refused},
            }},
            "/api/v1/schema": {"get": {"summary": "JSON Schema of one applicant", "operationId": "schema",
                                       "responses": {"200": {"description": "JSON Schema",
                                                             "content": {"application/json": {}}}, **refused}}},
            "/health": {"get": {"summary": "Liveness", "operationId": "health", "security": [],
                                "responses": {"200": {"description": "Alive"}}}},
            "/ready": {"get": {"summary": "Readiness: 200 once a model is loaded", "operationId": "ready",
                               "security": [],
                               "responses": {"200": {"description": "Ready"},
                                             "503": {"description": "No model yet"}}}},
        },
        "security": [{"bearerKey": []}, {"apiKeyHeader": []}],
        "components": {"schemas": {"Applicant": applicant, "Prediction": response, "Error": error_body},
                       "securitySchemes": {
                           "bearerKey": {"type": "http", "scheme": "bearer",
                                         "description": "an API key (python -m src.auth keys create)"},
                           "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
    }


@bp.get("/openapi.json")
def openapi() -> Any:
    svc = service()
    current = svc.models.current
    profile = current.scorer.profile if current else svc.settings.profile
    return jsonify(openapi_document(applicant_json_schema(profile), svc.settings.serve.max_batch))
