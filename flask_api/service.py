"""What the API and the web form share: score validated rows, log them, count them."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import current_app

from flask_api.metrics import Metrics
from src.config import Settings
from src.scoring.model_store import LoadedModel, ModelHolder
from src.scoring.predlog import PredictionLog, new_request_id

log = logging.getLogger(__name__)

# How often a worker looks for a reload another worker announced (a stat() per request was ~3 % of one)
# and publishes its metrics.
RELOAD_CHECK_SECONDS = 0.25


class ModelNotReady(RuntimeError):
    """No model is loaded yet (or loading failed); the client should retry later."""


class NotRecorded(RuntimeError):
    """The decision could not be put on record (the spool cannot be written): it is not given."""


@dataclass
class Service:
    settings: Settings
    models: ModelHolder
    predlog: PredictionLog
    metrics: Metrics
    # A file shared by all workers (gunicorn.conf.py sets RELOAD_MARKER_FILE): /admin/reload on one
    # worker bumps it, and every worker reloads when it sees a newer generation than its own.
    reload_marker: Path | None = None
    _seen_generation: int = field(default=0, init=False)
    _next_check: float = field(default=0.0, init=False)
    _reloading: threading.Lock = field(default_factory=threading.Lock, init=False)

    def announce_reload(self) -> None:
        """Tell the other workers to reload (this one already has)."""
        if self.reload_marker is None:
            return
        self.reload_marker.parent.mkdir(parents=True, exist_ok=True)
        self.reload_marker.write_text(str(os.getpid()), encoding="utf-8")
        self._seen_generation = self.reload_marker.stat().st_mtime_ns

    def watch(self) -> threading.Thread:
        """This worker's housekeeping thread, every RELOAD_CHECK_SECONDS: take up a reload another worker
        announced (so a worker that gets no request still does; requests check too, see below) and turn
        the metrics noted since last time into samples the other workers' /metrics can read."""
        def watch() -> None:
            while True:
                time.sleep(RELOAD_CHECK_SECONDS)
                try:
                    self.follow_reloads()
                    self.metrics.flush()
                except Exception:  # never let housekeeping die quietly: say so, and go on next time
                    log.exception("worker housekeeping failed; retrying in %s s", RELOAD_CHECK_SECONDS)

        watcher = threading.Thread(target=watch, name="housekeeping", daemon=True)
        watcher.start()
        return watcher

    def follow_reloads(self) -> None:
        """At most every RELOAD_CHECK_SECONDS, one stat(): if another worker announced a reload, reload.

        The request itself never waits: it is served by the current model, and the
        fresh one is loaded in the background and swapped in atomically.
        """
        if self.reload_marker is None:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + RELOAD_CHECK_SECONDS
        try:
            generation = self.reload_marker.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if generation <= self._seen_generation or not self._reloading.acquire(blocking=False):
            return
        self._seen_generation = generation

        def reload_quietly() -> None:
            try:
                self.reload()
            except Exception:
                log.warning("announced reload failed; still serving the previous model: %s", self.models.error)
            finally:
                self._reloading.release()

        threading.Thread(target=reload_quietly, name="model-reload", daemon=True).start()

    def model(self) -> LoadedModel:
        current = self.models.current
        if current is None:
            raise ModelNotReady(self.models.error or "the model is still loading")
        return current

    def score(self, rows: list[dict[str, Any]], source: str, reasons: bool = True, requested_by: str | None = None,
              ) -> tuple[str, LoadedModel, list[dict[str, Any]]]:
        """Score validated rows with the current model and put every row on record (with who asked:
        flask_api/access.py's ``requester``) before answering.

        Raises NotRecorded when the rows cannot be recorded (the spool's disk is full or
        failing): a credit decision that is not on record is not given.
        """
        model = self.model()  # one reference for the whole request, even across a reload
        request_id = new_request_id()
        results = model.scorer.score(rows, with_reasons=reasons)
        try:  # on local disk when this returns; the shipper copies it to the database
            self.predlog.submit(request_id, source, model.name, model.version, rows, results, requested_by)
        except Exception as exc:
            self.metrics.log_failures.inc(len(rows))
            log.error("request %s (%d rows) could not be recorded, so it is not answered: %s", request_id,
                      len(rows), exc)
            raise NotRecorded(str(exc)) from exc
        self.metrics.count_scored(source, results)
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


def incident(exc: BaseException, method: str, path: str) -> dict[str, Any]:
    """Log an unexpected error with a short incident id; the body the client gets (no stack trace)."""
    code = secrets.token_hex(6)
    log.error("unhandled error (incident %s) on %s %s", code, method, path, exc_info=exc)
    return {"error": "internal error; it has been logged", "incident": code}


def service() -> Service:
    return current_app.extensions["credit_service"]
