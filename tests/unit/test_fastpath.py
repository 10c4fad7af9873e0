"""The fast path for POST /api/v1/predict (flask_api/fastpath.py) answers exactly as the Flask view does.

Every case is sent twice with the same bytes: once through the app as deployed
(fast path in front) and once straight to the Flask app behind it. A wrapper
around the Flask callable records whether the fast path handed the request on.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from flask_api.access import AccessGate
from flask_api.fastpath import FastPredict, content_length, is_json_type, status_line
from tests.conftest import default_applicant

PREDICT = "/api/v1/predict"


@pytest.fixture
def fast(app) -> FastPredict:
    gate = app.wsgi_app  # the access gate (flask_api/access.py) runs first; the fast path is behind it
    assert isinstance(gate, AccessGate)
    middleware = gate.app
    assert isinstance(middleware, FastPredict)
    flask_app = middleware.flask
    middleware.handed_on = []  # type: ignore[attr-defined]

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        middleware.handed_on.append(environ["PATH_INFO"])  # type: ignore[attr-defined]
        return flask_app(environ, start_response)

    middleware.flask = recording
    middleware.flask_app = flask_app  # type: ignore[attr-defined]
    return middleware


def call(wsgi: Any, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    environ = EnvironBuilder(path=kwargs.pop("path", PREDICT), method=kwargs.pop("method", "POST"),
                             **kwargs).get_environ()
    app_iter, status, headers = run_wsgi_app(wsgi, environ, buffered=True)
    body = b"".join(app_iter)
    assert int(headers["Content-Length"]) == len(body)
    return int(status.split()[0]), dict(headers), json.loads(body)


def without_id(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k not in ("request_id", "incident")}
    return body


def both(fast: FastPredict, **kwargs: Any) -> tuple[tuple[int, dict[str, str], Any], tuple[int, dict[str, str], Any]]:
    return call(fast, **kwargs), call(fast.flask_app, **kwargs)  # type: ignore[attr-defined]


def good(app: Any, **changes: Any) -> dict[str, Any]:
    return {**default_applicant(app.extensions["credit_service"].model().meta), **changes}


SERVED_CASES = [
    ("one row with reasons", lambda a: {"json": {"applicants": [good(a)]}}),
    ("two rows without reasons", lambda a: {"json": {"applicants": [good(a), good(a, age=61.0)], "reasons": False}}),
    ("charset parameter", lambda a: {"data": json.dumps({"applicants": [good(a)]}),
                                     "content_type": "application/json; charset=utf-8"}),
    ("null body", lambda a: {"data": "null", "content_type": "application/json"}),
    ("a list body", lambda a: {"json": [good(a)]}),
    ("no applicants", lambda a: {"json": {"applicants": []}}),
    ("unknown top-level field", lambda a: {"json": {"applicants": [good(a)], "extra": 1}}),
    ("reasons not a boolean", lambda a: {"json": {"applicants": [good(a)], "reasons": "yes"}}),
    ("bad fields", lambda a: {"json": {"applicants": [good(a), good(a, age=200, sex=3, limit_bal="lots")]}}),
    ("too many rows", lambda a: {"json": {"applicants": [good(a)] * (
        a.extensions["credit_service"].settings.serve.max_batch + 1)}}),
]


@pytest.mark.parametrize(("name", "request_of"), SERVED_CASES, ids=[c[0] for c in SERVED_CASES])
def test_fast_path_answers_like_the_flask_view(app, fast: FastPredict, name: str, request_of: Any) -> None:
    kwargs = request_of(app)
    (status, headers, body), (flask_status, flask_headers, flask_body) = both(fast, **kwargs)
    assert fast.handed_on == [], f"{name}: the fast path handed it to Flask"  # type: ignore[attr-defined]
    assert status == flask_status
    assert headers["Content-Type"] == flask_headers["Content-Type"] == "application/json"
    assert without_id(body) == without_id(flask_body)
    if status == 200:
        assert body["request_id"] != flask_body["request_id"]
        sent = kwargs["json"] if "json" in kwargs else json.loads(kwargs["data"])
        assert len(body["results"]) == len(sent["applicants"])
    else:
        assert body["error"]


def test_the_status_line_is_werkzeugs(app, fast: FastPredict) -> None:
    environ = EnvironBuilder(path=PREDICT, method="POST", json={"applicants": []}).get_environ()
    _, status, _ = run_wsgi_app(fast, environ, buffered=True)
    _, flask_status, _ = run_wsgi_app(fast.flask_app, EnvironBuilder(  # type: ignore[attr-defined]
        path=PREDICT, method="POST", json={"applicants": []}).get_environ(), buffered=True)
    assert status == flask_status == "422 UNPROCESSABLE ENTITY"
    assert status_line(200) == "200 OK" and status_line(503) == "503 SERVICE UNAVAILABLE"


HANDED_ON_CASES = [
    ("not JSON", {"data": "x", "content_type": "text/plain"}, 415),
    ("no content type", {"data": "{}"}, 415),
    ("empty body", {"data": "", "content_type": "application/json"}, 400),
    ("malformed JSON", {"data": "{\"applicants\": [", "content_type": "application/json"}, 400),
    ("NaN literal", {"data": "{\"applicants\": [NaN]}", "content_type": "application/json"}, 400),
    ("too large", "too large", 413),
]


@pytest.mark.parametrize(("name", "kwargs", "expected"), HANDED_ON_CASES, ids=[c[0] for c in HANDED_ON_CASES])
def test_transport_errors_are_flasks(app, fast: FastPredict, name: str, kwargs: Any, expected: int) -> None:
    if kwargs == "too large":
        kwargs = {"data": json.dumps({"pad": "x" * app.config["MAX_CONTENT_LENGTH"]}),
                  "content_type": "application/json"}
    (status, _, body), (flask_status, _, flask_body) = both(fast, **kwargs)
    assert fast.handed_on == [PREDICT]  # type: ignore[attr-defined]
    assert status == flask_status == expected
    assert body == flask_body and body["error"]


def test_a_body_the_fast_path_cannot_parse_reaches_flask_whole(app, fast: FastPredict) -> None:
    """UTF-16 JSON is legal (RFC 8259 readers may accept it) and only Flask's provider decodes it."""
    data = json.dumps({"applicants": [good(app)], "reasons": False}).encode("utf-16")
    status, _, body = call(fast, data=data, content_type="application/json")
    assert fast.handed_on == [PREDICT]  # type: ignore[attr-defined]
    assert status == 200 and len(body["results"]) == 1


def test_other_routes_go_to_flask(app, fast: FastPredict) -> None:
    status, _, body = call(fast, path="/api/v1/schema", method="GET")
    assert status == 200 and body["type"] == "object"
    status, _, body = call(fast, method="GET")
    assert status == 405
    assert fast.handed_on == ["/api/v1/schema", PREDICT]  # type: ignore[attr-defined]


def test_fast_path_requests_are_counted_and_timed(app, fast: FastPredict) -> None:
    call(fast, json={"applicants": [good(app)], "reasons": False})
    call(fast, json={"applicants": []})
    assert fast.handed_on == []  # type: ignore[attr-defined]
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{endpoint="/api/v1/predict",method="POST",status="200"} 1.0' in metrics
    assert 'http_requests_total{endpoint="/api/v1/predict",method="POST",status="422"} 1.0' in metrics
    assert 'http_request_duration_seconds_count{endpoint="/api/v1/predict"} 2.0' in metrics
    assert 'rows_scored_total{source="api"} 1.0' in metrics
    assert app.extensions["credit_service"].predlog.count() == 1


def test_an_unexpected_error_is_a_logged_500_with_an_incident(app, fast: FastPredict, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    svc = app.extensions["credit_service"]

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("scorer exploded")

    monkeypatch.setattr(svc, "score", broken)
    with caplog.at_level(logging.ERROR, logger="flask_api"):
        (status, _, body), (flask_status, _, flask_body) = both(fast, json={"applicants": [good(app)]})
    assert status == flask_status == 500
    assert without_id(body) == without_id(flask_body) == {"error": "internal error; it has been logged"}
    assert body["incident"] != flask_body["incident"]
    logged = [r for r in caplog.records if body["incident"] in r.getMessage()]
    assert logged and logged[0].exc_info and "scorer exploded" in str(logged[0].exc_info[1])
    assert "Traceback" not in json.dumps(body)
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{endpoint="/api/v1/predict",method="POST",status="500"} 2.0' in metrics


def test_fast_path_follows_announced_reloads(app, fast: FastPredict, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = app.extensions["credit_service"]
    seen: list[int] = []
    monkeypatch.setattr(svc, "follow_reloads", lambda: seen.append(1))
    call(fast, json={"applicants": [good(app)], "reasons": False})
    assert seen == [1] and fast.handed_on == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(("raw", "expected"), [("12", 12), ("0", 0), (None, None), ("", None), ("-1", None),
                                               ("1e3", None), (" 5", None)])
def test_content_length_parsing(raw: str | None, expected: int | None) -> None:
    assert content_length(raw) == expected


@pytest.mark.parametrize(("value", "expected"), [("application/json", True), ("Application/JSON; charset=utf-8", True),
                                                 ("application/problem+json", False), ("text/json", False),
                                                 ("", False)])
def test_json_content_types(value: str, expected: bool) -> None:
    assert is_json_type(value) is expected
