"""POST /api/v1/predict without Flask's per-request machinery: the same answers for much less CPU.

A single-row prediction is cheap (validation, encoding and the trees), so what it
costs is mostly framework: Flask builds a request context, a URL adapter (twice), a
session, a ``Response`` and about twenty ``LocalProxy`` look-ups per request. On two
cores shared by every worker that overhead is what sets the tail latency under
concurrent load (docs/performance.md).

:class:`FastPredict` is WSGI middleware in front of the Flask app. It takes only
requests whose *transport* is plain: ``POST /api/v1/predict``, a JSON content
type, a Content-Length within ``MAX_CONTENT_LENGTH`` and a body that parses as
UTF-8 JSON. Those it answers through :func:`flask_api.api.answer_predict`, the
very function the Flask view calls, so the status and body (including every 422
naming a row and field, and 503 before a model is loaded) are the same; it also
does what the app's hooks do (follow a reload announced by another worker, count
the request and its latency) and turns an unexpected error into the same logged
500 with an incident id. Everything else, including every transport error (415,
400 malformed JSON, 413, chunked bodies), goes to Flask unchanged, with the body
it already read handed back.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES

from flask_api.api import answer_predict
from flask_api.jsonio import dumps_bytes
from flask_api.service import Service, incident
from src.auth.policy import requester

PATH = "/api/v1/predict"
METHOD = "POST"
StartResponse = Callable[..., Any]


def status_line(code: int) -> str:
    """The status line werkzeug writes for ``code`` (e.g. "422 UNPROCESSABLE ENTITY")."""
    return f"{code} {HTTP_STATUS_CODES.get(code, 'UNKNOWN').upper()}"


def is_json_type(content_type: str) -> bool:
    """application/json with or without parameters (what ``request.is_json`` accepts first)."""
    return content_type.partition(";")[0].strip().lower() == "application/json"


def content_length(raw: str | None) -> int | None:
    """A plain non-negative Content-Length, else None (missing, chunked, garbage: Flask decides)."""
    if not raw or not raw.isdigit():
        return None
    return int(raw)


class FastPredict:
    """WSGI middleware: answers plain ``POST /api/v1/predict`` requests itself, passes the rest to Flask."""

    def __init__(self, app: Flask, svc: Service) -> None:
        self.flask: Callable[[dict[str, Any], StartResponse], Iterable[bytes]] = app.wsgi_app
        self.svc = svc
        self.config = app.config  # read per request, as Flask does: MAX_CONTENT_LENGTH may change after start-up
        self._status_lines = {code: status_line(code) for code in (200, 422, 500, 503)}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if (environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != METHOD
                or not is_json_type(environ.get("CONTENT_TYPE", ""))):
            return self.flask(environ, start_response)
        length = content_length(environ.get("CONTENT_LENGTH"))
        max_body = self.config.get("MAX_CONTENT_LENGTH")
        if length is None or (max_body is not None and length > max_body):
            return self.flask(environ, start_response)
        started = time.perf_counter()
        body = environ["wsgi.input"].read(length)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:  # malformed, too deep, or not UTF-8: Flask's answer (or its UTF-16 parse)
            environ["wsgi.input"] = io.BytesIO(body)
            return self.flask(environ, start_response)
        return self.answer(payload, started, start_response, requester(environ))

    def answer(self, payload: Any, started: float, start_response: StartResponse, requested_by: str | None = None,
               ) -> list[bytes]:
        svc = self.svc
        try:
            svc.follow_reloads()
            status, answer = answer_predict(svc, payload, requested_by)
            data = dumps_bytes(answer)
        except Exception as exc:  # the Flask app's own handler would do the same: log it, 500 with an id
            status, data = 500, dumps_bytes(incident(exc, METHOD, PATH))
        line = self._status_lines.get(status) or status_line(status)
        start_response(line, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        svc.metrics.count_request(PATH, METHOD, status, time.perf_counter() - started)
        return [data]
