"""What the API and the web form share: score validated rows, log them, count them."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from flask import current_app

from flask_api.metrics import Metrics
from flask_api.model_store import LoadedModel, ModelHolder
from flask_api.predlog import PredictionLog
from src.config import Settings

log = logging.getLogger(__name__)


class ModelNotReady(RuntimeError):
    """No model is loaded yet (or loading failed); the client should retry later."""


@dataclass
class Service:
    settings: Settings
    models: ModelHolder
    predlog: PredictionLog
    metrics: Metrics

    def model(self) -> LoadedModel:
        current = self.models.current
        if current is None:
            raise ModelNotReady(self.models.error or "the model is still loading")
        return current

    def score(self, rows: list[dict[str, Any]], source: str, reasons: bool = True,
              ) -> tuple[str, LoadedModel, list[dict[str, Any]]]:
        """Score validated rows with the current model; log every row; never fail on logging."""
        model = self.model()  # one reference for the whole request, even across a reload
        request_id = str(uuid.uuid4())
        results = model.scorer.score(rows, with_reasons=reasons)
        self.metrics.rows_scored.labels(source).inc(len(rows))
        for result in results:
            self.metrics.probability.observe(result["probability_of_default"])
            self.metrics.decisions.labels(result["decision"]).inc()
        try:
            self.predlog.write(request_id, source, model.name, model.version, rows, results)
        except Exception:  # the decision stands; the failure is counted and logged
            self.metrics.log_failures.inc(len(rows))
            log.exception("prediction log write failed for request %s (%d rows)", request_id, len(rows))
        return request_id, model, results

    def reload(self) -> LoadedModel:
        previous = self.models.current
        try:
            fresh = self.models.load()
        except Exception:
            self.metrics.reloads.labels("failed").inc()
            raise
        self.metrics.reloads.labels("ok").inc()
        self.metrics.set_model(fresh.name, fresh.version,
                               (previous.name, previous.version) if previous else None)
        return fresh


def service() -> Service:
    return current_app.extensions["credit_service"]
