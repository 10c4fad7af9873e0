"""Prometheus metrics that work under several gunicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn.conf.py sets it), every worker
writes its samples to files there and /metrics aggregates them; without it
(tests, ``flask run``) the metrics live in this instance's own registry. Each
app gets its own registry, so building several apps in one process is fine.
"""

from __future__ import annotations

import bisect
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from src.config import env

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PROBABILITY_BUCKETS = tuple(round(x / 20, 2) for x in range(1, 21))


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """``histogram.observe(v)`` for every value, with one write per touched bucket instead of one per value.

    A 1000-row request would otherwise make 2000 multiprocess-file writes (sum and
    bucket per row), about a quarter of its CPU. prometheus_client has no batch
    observe, so this uses the (pinned) Histogram's ``_upper_bounds``, ``_buckets`` and
    ``_sum``, exactly as its ``observe`` does; a unit test checks both give the same
    exposition.
    """
    values = list(values)
    if len(values) < 2:  # nothing to batch (a served applicant): the histogram's own observe
        for value in values:
            histogram.observe(value)
        return
    bounds = histogram._upper_bounds
    tally = Tally(bisect.bisect_left(bounds, v) for v in values)  # first bound >= v, as observe() picks
    histogram._sum.inc(sum(values))
    for index, count in tally.items():
        if index < len(bounds):  # +Inf is always the last bound, so every finite value lands in a bucket
            histogram._buckets[index].inc(count)


def multiprocess_mode() -> bool:
    return bool(env.text(env.PROMETHEUS_MULTIPROC_DIR))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("http_requests_total", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=reg)
        self.latency = Histogram("http_request_duration_seconds", "Request latency by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg)
        self.probability = Histogram("predicted_probability_of_default", "Predicted probability of default",
                                     buckets=PROBABILITY_BUCKETS, registry=reg)
        self.decisions = Counter("decisions_total", "Decisions made", ["decision"], registry=reg)
        self.rows_scored = Counter("rows_scored_total", "Applicants scored", ["source"], registry=reg)
        self.log_failures = Counter("prediction_log_failures_total", "Rows that could not be written to the log",
                                    registry=reg)
        self.reloads = Counter("model_reloads_total", "Model reload attempts", ["outcome"], registry=reg)
        # Info metrics are not supported in multiprocess mode: a 0/1 gauge per (name, version) instead.
        self.model_info = Gauge("model_info", "Served model (1 = being served by this worker)",
                                ["name", "version"], multiprocess_mode="liveall", registry=reg)
        # labels() parses and looks up its arguments on every call: each labelled child is looked up once
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def count_scored(self, source: str, results: list[dict[str, Any]]) -> None:
        """Rows scored by source, their probabilities and decisions (one sample per row)."""
        self._child(self.rows_scored, source).inc(len(results))
        observe_many(self.probability, [r["probability_of_default"] for r in results])
        for decision, count in Tally(r["decision"] for r in results).items():
            self._child(self.decisions, decision).inc(count)

    def count_request(self, endpoint: str, method: str, status: int, seconds: float | None) -> None:
        """One served request: its count by endpoint/method/status and (if timed) its latency."""
        self._child(self.requests, endpoint, method, str(status)).inc()
        if seconds is not None:
            self._child(self.latency, endpoint).observe(seconds)

    def set_model(self, name: str, version: str, previous: tuple[str, str] | None) -> None:
        if previous is not None and previous != (name, version):
            self.model_info.labels(*previous).set(0)
        self.model_info.labels(name, version).set(1)

    def exposition(self) -> tuple[bytes, str]:
        if multiprocess_mode():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
