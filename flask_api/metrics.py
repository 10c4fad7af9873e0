"""Prometheus metrics that work under several gunicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn.conf.py sets it), every worker
writes its samples to files there and /metrics aggregates them; without it
(tests, ``flask run``) the metrics live in this instance's own registry. Each
app gets its own registry, so building several apps in one process is fine.

A request only notes what it counts (one list append); :meth:`Metrics.flush` turns the
notes into samples, a few file writes per series instead of six locked writes per request
(that was ~10 % of a worker's CPU on single-row predictions, docs/performance.md). The
worker's own housekeeping thread flushes every quarter second, /metrics flushes the
serving worker first and a stopping worker flushes on exit, so a scrape lags the other
workers by at most that quarter second; a SIGKILLed worker's last quarter second of counts
is lost (never a decision: those are in the prediction log).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
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
        # When the counts began: gunicorn's master start (shared by its workers), else this instance's creation.
        self.started = float(env.text(env.SERVICE_STARTED_AT) or time.time())
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
        # Noted by requests, turned into samples by flush(): appends only at the end (atomic under the GIL),
        # so flush() takes the first n notes and deletes exactly those, never one noted meanwhile.
        self._requests: list[tuple[str, str, int, float | None]] = []
        self._scored: list[tuple[str, list[dict[str, Any]]]] = []
        self._flushing = threading.Lock()

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def count_scored(self, source: str, results: list[dict[str, Any]]) -> None:
        """Rows scored by source, their probabilities and decisions (one sample per row), at the next flush."""
        self._scored.append((source, results))

    def count_request(self, endpoint: str, method: str, status: int, seconds: float | None) -> None:
        """One served request, its count by endpoint/method/status and (if timed) its latency, at the next flush."""
        self._requests.append((endpoint, method, status, seconds))

    def flush(self) -> None:
        """Turn the requests and rows noted since the last flush into samples."""
        with self._flushing:
            requests, scored = _take(self._requests), _take(self._scored)
            if requests:
                for (endpoint, method, status), count in Tally(r[:3] for r in requests).items():
                    self._child(self.requests, endpoint, method, str(status)).inc(count)
                latencies: dict[str, list[float]] = {}
                for endpoint, _method, _status, seconds in requests:
                    if seconds is not None:
                        latencies.setdefault(endpoint, []).append(seconds)
                for endpoint, values in latencies.items():
                    observe_many(self._child(self.latency, endpoint), values)
            if scored:
                rows: Tally[str] = Tally()
                for source, results in scored:
                    rows[source] += len(results)
                for source, count in rows.items():
                    self._child(self.rows_scored, source).inc(count)
                observe_many(self.probability, [r["probability_of_default"] for _, results in scored for r in results])
                for decision, count in Tally(r["decision"] for _, results in scored for r in results).items():
                    self._child(self.decisions, decision).inc(count)

    def set_model(self, name: str, version: str, previous: tuple[str, str] | None) -> None:
        if previous is not None and previous != (name, version):
            self.model_info.labels(*previous).set(0)
        self.model_info.labels(name, version).set(1)

    def _registry(self) -> CollectorRegistry:
        """Every worker's samples (multiprocess mode), else this instance's."""
        self.flush()
        if multiprocess_mode():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return registry
        return self.registry

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self._registry()), CONTENT_TYPE_LATEST

    def traffic(self) -> dict[str, Any]:
        """Requests per endpoint since the service started, with 5xx counts and latency quantiles (estimated from
        the histogram's buckets as Prometheus' histogram_quantile does), for the monitoring page."""
        requests: Tally[str] = Tally()
        errors: Tally[str] = Tally()
        buckets: dict[str, list[tuple[float, float]]] = {}
        for family in self._registry().collect():
            for sample in family.samples:
                endpoint = sample.labels.get("endpoint")
                if sample.name == "http_requests_total" and endpoint:
                    requests[endpoint] += sample.value
                    errors[endpoint] += sample.value if sample.labels["status"].startswith("5") else 0
                elif sample.name == "http_request_duration_seconds_bucket" and endpoint:
                    buckets.setdefault(endpoint, []).append((float(sample.labels["le"]), sample.value))
        seconds = max(time.time() - self.started, 1e-9)
        endpoints = [{"endpoint": name, "requests": int(count), "errors": int(errors[name]),
                      "per_minute": round(60 * count / seconds, 2),
                      **{f"p{int(q * 100)}": histogram_quantile(q, buckets.get(name, [])) for q in (0.5, 0.95, 0.99)}}
                     for name, count in requests.most_common()]
        return {"since": self.started, "seconds": seconds, "endpoints": endpoints}


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile (seconds) of cumulative ``(upper bound, count)`` buckets, interpolated linearly within
    its bucket as Prometheus does; None without observations. Beyond the last finite bound: that bound."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def _take(notes: list[Any]) -> list[Any]:
    """The notes so far, removed from ``notes`` (only flush() removes; other threads only append)."""
    count = len(notes)
    taken = notes[:count]
    del notes[:count]
    return taken
