"""The serving benchmark's floor: a WSGI app that reads the request and returns a fixed prediction.

Run by ``bench/serve.py`` under the very same ``gunicorn.conf.py`` (workers, threads, worker
class, access log) and driven by the same client in the same run, it measures what the server
stack alone costs. Our service's figures are stated as ratios to it, which carry between
machines where absolute latencies do not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

ANSWER = b'{"results":[{"probability_of_default":0.1,"decision":"approve"}]}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)  # a real request's body is read too
    start_response("200 OK", HEADERS)
    return [ANSWER]
