"""Smoke test of a freshly restarted service: it is ready, and it scores one applicant sensibly.

Readiness alone is not enough (a container can load a model and still answer every
prediction with 422 or 500 if image and model disagree), so one real prediction is
made. The applicant is built from the service's own /api/v1/schema, so the check
follows whatever dataset profile the deployed model was trained on.

``python -m src.deploy.smoke URL`` runs it on its own: a host's release script runs it
inside the new container against 127.0.0.1, before the host takes traffic again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from src.common import run_main
from src.config import env
from src.deploy.errors import DeployError

log = logging.getLogger(__name__)

DECISIONS = {"approve", "refer", "decline"}


class SmokeTestFailed(DeployError):
    """The new release does not serve: the caller rolls back."""


def _request(url: str, timeout: float, body: dict[str, Any] | None = None, key: str | None = None,
             ) -> tuple[int, Any]:
    """(status, parsed JSON or text); connection problems come back as status 0 with the reason."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["X-API-Key"] = key
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, ValueError) as exc:  # refused, reset, timeout, DNS
        return 0, str(getattr(exc, "reason", exc))
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:200]


def example_applicant(schema: dict[str, Any]) -> dict[str, Any]:
    """One valid applicant from a JSON Schema of the shape /api/v1/schema publishes.

    Numbers: 0 clamped into [minimum, maximum]; coded categories: the first code;
    open categories: a placeholder string (target encoding scores unseen values).
    """
    out: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        enum = [v for v in prop.get("enum", []) if v is not None]
        kinds = prop.get("type")
        kinds = set(kinds) if isinstance(kinds, list) else {kinds}
        if enum:
            out[name] = enum[0]
        elif "number" in kinds or "integer" in kinds:
            value = 0.0
            if prop.get("minimum") is not None:
                value = max(value, float(prop["minimum"]))
            if prop.get("maximum") is not None:
                value = min(value, float(prop["maximum"]))
            out[name] = int(value) if "integer" in kinds else value
        else:
            out[name] = "smoke-test"
    return out


def check_prediction(status: int, body: Any) -> str | None:
    """None when the answer is a sane single-row prediction, else what is wrong with it."""
    if status != 200:
        detail = body.get("error") if isinstance(body, dict) else body
        return f"POST /api/v1/predict answered {status or 'no connection'}: {detail}"
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != 1:
        return f"POST /api/v1/predict answered 200 without one result: {str(body)[:200]}"
    row = results[0]
    p = row.get("probability_of_default") if isinstance(row, dict) else None
    if not isinstance(p, int | float) or not 0 <= p <= 1:
        return f"POST /api/v1/predict gave probability_of_default {p!r}, not a number in [0, 1]"
    if row.get("decision") not in DECISIONS:
        return f"POST /api/v1/predict gave decision {row.get('decision')!r}, not one of {sorted(DECISIONS)}"
    return None


def smoke_test(base_url: str, ready_timeout: float, http_timeout: float, applicant: dict[str, Any] | None = None,
               poll_interval: float = 2.0, sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic, api_key: str | None = None) -> dict[str, Any]:
    """Wait for GET /ready to answer 200, then score one applicant; returns the prediction's response body.

    ``api_key`` (a key with the score scope; the deploy CLI passes $API_KEY) is sent as X-API-Key.
    Raises :class:`SmokeTestFailed` naming the URL and what went wrong.
    """
    base = base_url.rstrip("/")
    deadline = clock() + ready_timeout
    last_seen = None
    while True:
        status, body = _request(f"{base}/ready", http_timeout)
        if status == 200:
            break
        detail = str((body.get("error") or body.get("status")) if isinstance(body, dict) else body).strip()[:200]
        if isinstance(body, dict) and body.get("status") == "error":  # the model failed to load: no use waiting
            raise SmokeTestFailed(f"smoke test {base}: /ready answered {status}: the model failed to load "
                                  f"({detail})")
        if clock() >= deadline:
            raise SmokeTestFailed(f"smoke test {base}: /ready answered {status or 'no connection'} "
                                  f"for {ready_timeout:g} s" + (f" ({detail})" if detail else ""))
        if (status, detail) != last_seen:  # one line per change, not per poll
            log.info("waiting for %s/ready: %s %s", base, status or "no connection", detail)
            last_seen = (status, detail)
        sleep(poll_interval)
    if applicant is None:
        status, schema = _request(f"{base}/api/v1/schema", http_timeout, key=api_key)
        if status in (401, 403):
            raise SmokeTestFailed(f"smoke test {base}: GET /api/v1/schema answered {status}: set API_KEY to a key "
                                  "with the score scope (python -m src.auth keys create --scope score)")
        if status != 200 or not isinstance(schema, dict):
            raise SmokeTestFailed(f"smoke test {base}: GET /api/v1/schema answered {status or 'no connection'}")
        applicant = example_applicant(schema)
    status, body = _request(f"{base}/api/v1/predict", http_timeout, {"applicants": [applicant], "reasons": True},
                            key=api_key)
    problem = check_prediction(status, body)
    if problem:
        raise SmokeTestFailed(f"smoke test {base}: {problem}")
    row = body["results"][0]
    model = body.get("model", {})
    log.info("smoke test %s passed: model %s v%s, probability %.4f, %s", base, model.get("name"),
             model.get("version"), row["probability_of_default"], row["decision"])
    return body


def main(argv: list[str] | None = None) -> None:
    """Smoke-test URL with the key in $API_KEY; a failure is one line on stderr and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m src.deploy.smoke", description=__doc__.split("\n")[0])
    parser.add_argument("url", help="the service's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for /ready")
    parser.add_argument("--http-timeout", type=float, default=10.0, help="seconds per request")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    smoke_test(args.url, args.ready_timeout, args.http_timeout, api_key=env.text(env.API_KEY))


if __name__ == "__main__":
    run_main(main)
