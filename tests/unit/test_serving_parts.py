"""The serving hot path's parts on their own: the validation fast path, batched histogram updates, the
keep-alive worker's setting and the lean access log (the prediction log: test_predlog.py)."""

from __future__ import annotations

import ast
import math
import re
import threading
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import gunicorn
import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger, SafeAtoms
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import multiprocess as mp
from prometheus_client import values as prom_values

from flask_api.metrics import PROBABILITY_BUCKETS, Metrics, observe_many
from flask_api.validation import FieldError, check_value, validate_applicants
from src.config import Profile, build_profile
from src.server import worker as gunicorn_worker
from src.server.access_log import BASIC_ENVIRON, LeanAccessLogger, needs_every_atom
from tests.conftest import ROOT, load_params

PROFILES = {name: build_profile(name, raw) for name, raw in load_params()["profiles"].items()}


def reference(rows: list[Any], profile: Profile) -> tuple[list[dict[str, Any]], list[FieldError]]:
    """validate_applicants spelled out field by field with check_value: what the fast path must equal."""
    clean, errors = [], []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            errors.append(FieldError(i, "", "each applicant must be a JSON object"))
            continue
        errors += [FieldError(i, str(k), "is not a known field") for k in row if k not in profile.features]
        out = {}
        for name, spec in profile.features.items():
            value, problem = check_value(spec, row.get(name), profile)
            if problem:
                errors.append(FieldError(i, name, problem))
            out[name] = value
        clean.append(out)
    return clean, errors


def value_for(spec: Any) -> st.SearchStrategy[Any]:
    """Mostly valid values, and every near miss the fast path must hand to the slow one."""
    odd = st.sampled_from([None, True, False, "", " ", math.inf, -math.inf, math.nan, 10**30, "12", [], {}])
    if spec.is_categorical and spec.values:
        codes = list(spec.values)
        near = [f" {c} " if isinstance(c, str) else float(c) for c in codes]
        return st.one_of(st.sampled_from(codes), st.sampled_from(near), odd, st.text(max_size=4))
    if spec.is_categorical:
        return st.one_of(st.text(max_size=6), odd)
    low = spec.min if spec.min is not None else -1e6
    high = spec.max if spec.max is not None else 1e6
    return st.one_of(st.floats(low - 10, high + 10, allow_nan=False), st.integers(int(low) - 10, int(high) + 10),
                     odd)


@st.composite
def rows_for(draw: st.DrawFn, profile: Profile) -> list[Any]:
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        row = {name: draw(value_for(spec)) for name, spec in profile.features.items()}
        if draw(st.booleans()) and row:
            row.pop(draw(st.sampled_from(sorted(row))))
        if draw(st.integers(0, 9)) == 0:
            row["unknown_field"] = 1
        rows.append(row if draw(st.integers(0, 19)) else [row])
    return rows


@pytest.mark.parametrize("dataset", sorted(PROFILES))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fast_validation_equals_the_field_by_field_checks(dataset: str, data: st.DataObject) -> None:
    profile = PROFILES[dataset]
    rows = data.draw(rows_for(profile))
    assert validate_applicants(rows, profile) == reference(rows, profile)


def test_plain_valid_rows_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row of in-range numbers and known codes never reaches check_value (and a bad one does)."""
    profile = PROFILES["taiwan_credit"]
    calls = []
    from flask_api import validation  # noqa: PLC0415

    real = validation.check_value
    monkeypatch.setattr(validation, "check_value", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    row = {name: (next(iter(spec.values)) if spec.is_categorical else (spec.min or 0) + 1)
           for name, spec in profile.features.items()}
    clean, errors = validate_applicants([row], profile)
    assert not errors and not calls and clean[0]["limit_bal"] == float(row["limit_bal"])
    _, errors = validate_applicants([{**row, "age": -5}], profile)
    assert [e.field for e in errors] == ["age"] and calls



@pytest.mark.parametrize("multiprocess", [False, True])
@given(values=st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=60))
@example(values=[0.0, 0.05, 0.05, 0.1, 0.5, 0.95, 1.0])  # on the bucket bounds: le is inclusive
@settings(max_examples=40, deadline=None)
def test_observe_many_equals_observe_one_by_one(values: list[float], multiprocess: bool,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    """The batch histogram update exposes exactly what observe() per value would (buckets, sum, count)."""
    def exposition(batch: bool) -> bytes:
        directory = tmp_path_factory.mktemp("prom")
        if multiprocess:  # what gunicorn workers do: samples in mmap files, aggregated on scrape
            with pytest.MonkeyPatch.context() as mpatch:
                mpatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
                prom_values.ValueClass = prom_values.get_value_class()
                try:
                    fill(Histogram("p", "p", buckets=PROBABILITY_BUCKETS, registry=None), batch)
                    registry = CollectorRegistry()
                    mp.MultiProcessCollector(registry, path=str(directory))
                    return generate_latest(registry)
                finally:
                    mpatch.delenv("PROMETHEUS_MULTIPROC_DIR")
                    prom_values.ValueClass = prom_values.get_value_class()
        registry = CollectorRegistry()
        fill(Histogram("p", "p", buckets=PROBABILITY_BUCKETS, registry=registry), batch)
        return generate_latest(registry)

    def fill(histogram: Any, batch: bool) -> None:
        if batch:
            observe_many(histogram, values)
        else:
            for v in values:
                histogram.observe(v)

    def samples(text: bytes) -> dict[str, float]:  # sums compared with a tolerance (float addition order)
        out = {}
        for line in text.decode().splitlines():
            if line and not line.startswith("#") and "_created" not in line:
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    one_by_one, batched = samples(exposition(False)), samples(exposition(True))
    assert one_by_one.keys() == batched.keys()
    for key, value in one_by_one.items():
        assert batched[key] == pytest.approx(value, abs=1e-9), key
    assert one_by_one['p_count'] == len(values)


# --- metrics noted per request, published by flush() ----------------------------------------------------------


@pytest.fixture
def multiprocess_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What a gunicorn worker has: prometheus_client writing samples to files in a shared directory."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    prom_values.ValueClass = prom_values.get_value_class()
    yield tmp_path
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    prom_values.ValueClass = prom_values.get_value_class()


def other_workers_view(directory: Any) -> dict[str, float]:
    """/metrics as another worker serves it: the samples in the shared files, not this process's notes."""
    registry = CollectorRegistry()
    mp.MultiProcessCollector(registry, path=str(directory))
    out: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def served(decision: str, probability: float) -> list[dict[str, Any]]:
    return [{"probability_of_default": probability, "decision": decision}]


def test_metrics_noted_by_requests_reach_the_shared_files_at_flush(multiprocess_dir: Any) -> None:
    """A request only notes its counts; flush() publishes exactly them (counters, latency and probability
    histograms, decisions) for the other workers' scrapes, and a second flush adds nothing twice."""
    metrics = Metrics()
    metrics.count_request("/api/v1/predict", "POST", 200, 0.002)
    metrics.count_request("/api/v1/predict", "POST", 422, 0.0004)
    metrics.count_request("/ready", "GET", 200, None)
    metrics.count_scored("api", served("approve", 0.08))
    metrics.count_scored("api", served("decline", 0.9) + served("approve", 0.12))
    before = other_workers_view(multiprocess_dir)
    assert before.get("http_requests_total{endpoint=/api/v1/predict,method=POST,status=200}", 0) == 0
    assert before.get("rows_scored_total{source=api}", 0) == 0

    metrics.flush()
    metrics.flush()
    after = other_workers_view(multiprocess_dir)
    assert after["http_requests_total{endpoint=/api/v1/predict,method=POST,status=200}"] == 1
    assert after["http_requests_total{endpoint=/api/v1/predict,method=POST,status=422}"] == 1
    assert after["http_requests_total{endpoint=/ready,method=GET,status=200}"] == 1
    assert after["http_request_duration_seconds_count{endpoint=/api/v1/predict}"] == 2
    assert after["http_request_duration_seconds_sum{endpoint=/api/v1/predict}"] == pytest.approx(0.0024)
    assert after["http_request_duration_seconds_bucket{endpoint=/api/v1/predict,le=0.001}"] == 1
    assert after.get("http_request_duration_seconds_count{endpoint=/ready}", 0) == 0  # untimed: counted only
    assert after["rows_scored_total{source=api}"] == 3
    assert after["decisions_total{decision=approve}"] == 2 and after["decisions_total{decision=decline}"] == 1
    assert after["predicted_probability_of_default_count{}"] == 3
    assert after["predicted_probability_of_default_sum{}"] == pytest.approx(1.1)


def test_exposition_publishes_this_workers_notes_first() -> None:
    """The worker that serves /metrics includes what it noted a moment ago (no wait for its housekeeping)."""
    metrics = Metrics()
    metrics.count_scored("form", served("refer", 0.3))
    text = metrics.exposition()[0].decode()
    assert 'rows_scored_total{source="form"} 1.0' in text
    assert 'decisions_total{decision="refer"} 1.0' in text


def test_no_count_is_lost_while_threads_note_and_flush_runs(multiprocess_dir: Any) -> None:
    """Requests note from several threads while flush() runs again and again: every note is published once."""
    metrics = Metrics()
    per_thread, threads = 5_000, 4
    done = threading.Event()

    def flush_until_done() -> None:
        while not done.is_set():
            metrics.flush()

    def note() -> None:
        for _ in range(per_thread):
            metrics.count_request("/api/v1/predict", "POST", 200, 0.001)
            metrics.count_scored("api", served("approve", 0.1))

    flusher = threading.Thread(target=flush_until_done)
    flusher.start()
    workers = [threading.Thread(target=note) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    flusher.join()
    metrics.flush()
    view = other_workers_view(multiprocess_dir)
    assert view["http_requests_total{endpoint=/api/v1/predict,method=POST,status=200}"] == per_thread * threads
    assert view["http_request_duration_seconds_count{endpoint=/api/v1/predict}"] == per_thread * threads
    assert view["rows_scored_total{source=api}"] == per_thread * threads


def test_a_workers_housekeeping_publishes_its_metrics_without_a_scrape(multiprocess_dir: Any) -> None:
    """Under gunicorn a worker's notes reach the shared files on their own, so a scrape served by another
    worker sees them within a fraction of a second."""
    from flask_api.service import RELOAD_CHECK_SECONDS, Service  # noqa: PLC0415

    metrics = Metrics()
    svc = Service(settings=SimpleNamespace(), models=SimpleNamespace(), predlog=SimpleNamespace(),  # type: ignore[arg-type]
                  metrics=metrics, reload_marker=None)
    svc.watch()
    metrics.count_request("/api/v1/predict", "POST", 200, 0.001)
    deadline = time.monotonic() + 20 * RELOAD_CHECK_SECONDS
    key = "http_requests_total{endpoint=/api/v1/predict,method=POST,status=200}"
    while other_workers_view(multiprocess_dir).get(key, 0) != 1 and time.monotonic() < deadline:
        time.sleep(RELOAD_CHECK_SECONDS / 5)
    assert other_workers_view(multiprocess_dir).get(key, 0) == 1


# --- the keep-alive worker's setting -------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [(None, 100), ("", 100), ("0", 0), ("7", 7), (" 25 ", 25)])
def test_requests_per_connection_setting(raw: str | None, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    if raw is None:
        monkeypatch.delenv(gunicorn_worker.REQUESTS_ENV, raising=False)
    else:
        monkeypatch.setenv(gunicorn_worker.REQUESTS_ENV, raw)
    assert gunicorn_worker.requests_per_connection() == expected


@pytest.mark.parametrize(("raw", "message"), [("many", "whole number of requests, got 'many'"),
                                              ("-1", "must be >= 0")])
def test_a_bad_requests_per_connection_setting_names_itself(raw: str, message: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gunicorn_worker.REQUESTS_ENV, raw)
    with pytest.raises(ValueError, match="GUNICORN_KEEPALIVE_REQUESTS") as info:
        gunicorn_worker.requests_per_connection()
    assert message in str(info.value)


def test_the_keepalive_worker_was_verified_against_the_installed_gunicorn() -> None:
    """Fails on a gunicorn whose gthread internals changed: re-verify the subclass, then record the new digests."""
    changed = gunicorn_worker.changed_internals()
    assert not changed, (
        f"gunicorn {gunicorn.__version__} changed ThreadWorker.{', '.join(changed)} since "
        f"{gunicorn_worker.VERIFIED_GUNICORN}, which src/server/worker.py's KeepAliveThreadWorker relies on. "
        f"Re-verify it (tests/integration/test_gunicorn.py) and record {gunicorn_worker.internals_digest()}")


def test_a_busy_workers_accept_pause_bounds_its_next_poll_and_starts_no_thread() -> None:
    """A busy worker leaves a new connection to the others for ACCEPT_DELAY; its event loop then wakes by itself
    (its poll waits no longer than the pause) to accept again, with no timer thread per pause."""
    worker = gunicorn_worker.KeepAliveThreadWorker.__new__(gunicorn_worker.KeepAliveThreadWorker)
    waits: list[float] = []
    unregistered: list[Any] = []
    worker.poller = SimpleNamespace(select=lambda timeout: waits.append(timeout) or [],
                                    unregister=unregistered.append)
    worker.cfg = SimpleNamespace(workers=2)
    worker.sockets, worker.nr_conns, worker.keepalived_conns = ["listener"], 1, []  # one connection being served
    worker.alive, worker._accepting, worker._take_waiting, worker._accept_paused_until = True, True, False, 0.0

    worker.wait_for_and_dispatch_events(1.0)  # no pause: the loop's own timeout
    threads = threading.active_count()
    worker.accept("listener")
    assert unregistered == ["listener"] and not worker._accepting and worker._accept_paused_until > 0
    assert threading.active_count() == threads
    worker.wait_for_and_dispatch_events(1.0)
    worker._accept_paused_until = time.monotonic() - 0.5  # the pause is over: poll without waiting
    worker.wait_for_and_dispatch_events(1.0)
    worker.alive = False  # stopping: at most a second, as before
    worker._accept_paused_until = 0.0
    worker.wait_for_and_dispatch_events(30.0)
    assert waits[0] == 1.0 and 0 < waits[1] <= gunicorn_worker.ACCEPT_DELAY and waits[2] == 0.0 and waits[3] == 1.0


@pytest.mark.parametrize(("raw", "expected"), [(None, gunicorn_worker.KEEPALIVE_WORKER),
                                               ("keepalive", gunicorn_worker.KEEPALIVE_WORKER),
                                               (" GThread ", "gthread")])
def test_the_worker_class_is_chosen_by_an_environment_variable(raw: str | None, expected: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if raw is None:
        monkeypatch.delenv(gunicorn_worker.WORKER_CLASS_ENV, raising=False)
    else:
        monkeypatch.setenv(gunicorn_worker.WORKER_CLASS_ENV, raw)
    assert gunicorn_worker.worker_class() == expected


def test_a_bad_worker_class_setting_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gunicorn_worker.WORKER_CLASS_ENV, "eventlet")
    with pytest.raises(ValueError, match="GUNICORN_WORKER_CLASS must be keepalive or gthread, got 'eventlet'"):
        gunicorn_worker.worker_class()


def test_changed_gunicorn_internals_fall_back_to_stock_gthread(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(gunicorn_worker.WORKER_CLASS_ENV, raising=False)
    monkeypatch.setitem(gunicorn_worker.VERIFIED_INTERNALS, "finish_request", "0" * 16)
    assert gunicorn_worker.changed_internals() == ["finish_request"]
    with caplog.at_level("WARNING", logger=gunicorn_worker.__name__):
        assert gunicorn_worker.worker_class() == "gthread"
    assert "changed ThreadWorker.finish_request" in caplog.text and "stock gthread" in caplog.text


# --- the lean access log ----------------------------------------------------------------------------------------


def _gunicorn_config(access_log_format: str) -> Any:
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", access_log_format)
    return cfg


def _one_request() -> tuple[Any, Any, dict[str, Any], timedelta]:
    headers = [("HOST", "127.0.0.1:8000"), ("USER-AGENT", 'wrk "4"'), ("X-REQUEST-ID", "abc-123")]
    req = SimpleNamespace(headers=headers)
    resp = SimpleNamespace(status="422 UNPROCESSABLE ENTITY", sent=321,
                           headers=[("Content-Type", "application/json"), ("Content-Length", "321")])
    environ = {"REMOTE_ADDR": "10.0.0.7", "REQUEST_METHOD": "POST", "RAW_URI": "/api/v1/predict?x=1",
               "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/api/v1/predict", "QUERY_STRING": "x=1",
               "HTTP_USER_AGENT": 'wrk "4"', "HTTP_REFERER": "http://example.test/",
               "HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz", "HTTP_X_REQUEST_ID": "abc-123",
               "wsgi.input": object(), "SERVER_NAME": "127.0.0.1", "CONTENT_LENGTH": "17"}
    return resp, req, environ, timedelta(seconds=1, microseconds=2345)


FULL_FORMAT = ('%(h)s %(l)s %(u)s "%(r)s" %(s)s %(b)s %(B)s %(m)s %(U)s %(q)s %(H)s "%(f)s" "%(a)s" %(T)s %(D)s '
               "%(M)s %(L)s %(p)s")


EXTENDED_FORMAT = FULL_FORMAT + " %({x-request-id}i)s %({content-type}o)s %({server_name}e)s"


@pytest.mark.parametrize("fmt", [FULL_FORMAT, EXTENDED_FORMAT, "%(h)s %(missing)s"])
def test_lean_access_log_lines_are_gunicorns(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every line reads exactly as stock gunicorn writes it, for the repo's format and for others."""
    monkeypatch.setattr(Logger, "now", lambda self: "[22/Nov/2026:03:04:05 +0000]")
    cfg = _gunicorn_config(fmt)
    stock, lean = Logger(cfg), LeanAccessLogger(cfg)
    request = _one_request()
    expected = fmt % SafeAtoms(stock.atoms(*request))
    assert fmt % SafeAtoms(lean.atoms(*request)) == expected
    assert "user" in expected or "%(u)s" not in fmt  # basic-auth user, from HTTP_AUTHORIZATION


def test_lean_access_log_builds_only_the_basic_atoms_for_the_repo_format() -> None:
    # Read, not executed: running gunicorn.conf.py would set PROMETHEUS_MULTIPROC_DIR in this process.
    conf = (ROOT / "gunicorn.conf.py").read_text(encoding="utf-8")
    repo_format = ast.literal_eval(re.search(r"^access_log_format = (.+)$", conf, re.M).group(1))
    assert "logger_class = \"src.server.access_log.LeanAccessLogger\"" in conf
    assert not needs_every_atom(repo_format)
    assert needs_every_atom("%({x-request-id}i)s") and needs_every_atom("%({wsgi.url_scheme}e)s")
    cfg = _gunicorn_config(repo_format)
    resp, req, environ, took = _one_request()
    lean, stock = LeanAccessLogger(cfg).atoms(resp, req, environ, took), Logger(cfg).atoms(resp, req, environ, took)
    assert {k for k in lean if k.startswith("{")} == {f"{{{k.lower()}}}e" for k in BASIC_ENVIRON if k in environ}
    assert {"{wsgi.input}e", "{x-request-id}i", "{content-type}o"} <= set(stock)
