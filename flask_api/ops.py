"""Operational routes: /health, /ready, /metrics and POST /admin/reload."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, jsonify, request

from flask_api.service import service
from src.config import env

bp = Blueprint("ops", __name__)

TOKEN_ENV = env.ADMIN_TOKEN


@bp.get("/health")
def health() -> Any:
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> Any:
    svc = service()
    current = svc.models.current
    if current is None:
        body = {"status": "error" if svc.models.error else "loading", "model_uri": svc.models.uri}
        if svc.models.error:
            body["error"] = svc.models.error
        return jsonify(body), 503
    return jsonify({"status": "ready", "model": current.describe()})


@bp.get("/metrics")
def metrics() -> Response:
    payload, content_type = service().metrics.exposition()
    return Response(payload, content_type=content_type)


def admin_refusal(what: str) -> tuple[Response, int] | None:
    """None when the request carries the admin bearer token; else the 404 (no token set) or 401 to answer."""
    token = env.text(TOKEN_ENV, "")
    if not token:
        return jsonify({"error": f"{what} over HTTP is disabled: set {TOKEN_ENV} to enable it"}), 404
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        return jsonify({"error": "missing or wrong bearer token"}), 401
    return None


@bp.post("/admin/reload")
def reload_model() -> Any:
    """Load the current champion (or MODEL_URI) and swap it in; requests in flight finish on the old one.

    This worker reloads now; the others see the shared reload marker on their next request and
    reload in the background, so every worker ends up on the new model without a restart.
    """
    refusal = admin_refusal("reload")
    if refusal is not None:
        return refusal
    svc = service()
    try:
        fresh = svc.reload()
    except Exception:
        return jsonify({"error": "reload failed; still serving the previous model",
                        "detail": svc.models.error}), 503
    svc.announce_reload()  # the other gunicorn workers follow on their next request
    return jsonify({"status": "reloaded", "model": fresh.describe()})
