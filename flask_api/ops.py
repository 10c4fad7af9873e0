"""Operational routes: /health, /ready, /metrics and POST /admin/reload (who may: flask_api/access.py)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from flask_api.service import service

bp = Blueprint("ops", __name__)


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


@bp.post("/admin/reload")
def reload_model() -> Any:
    """Load the current champion (or MODEL_URI) and swap it in; requests in flight finish on the old one.

    This worker reloads now; the others see the shared reload marker on their next request and
    reload in the background, so every worker ends up on the new model without a restart.
    """
    svc = service()
    try:
        fresh = svc.reload()
    except Exception:
        return jsonify({"error": "reload failed; still serving the previous model",
                        "detail": svc.models.error}), 503
    svc.announce_reload()  # the other gunicorn workers follow on their next request
    return jsonify({"status": "reloaded", "model": fresh.describe()})
