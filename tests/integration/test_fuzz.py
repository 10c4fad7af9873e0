"""Fuzzing the LIVE service (gunicorn, 2 workers) against its own /api/v1/openapi.json, plus hostile bodies.

Schemathesis generates valid and invalid requests from the published OpenAPI
document and checks every response with its default checks: never a 5xx,
status codes, content types and bodies as documented, schema-valid input
accepted and invalid input rejected with a 4xx, undeclared methods answered
405 with an Allow header. Going through gunicorn (not the Flask test client)
also covers the server's handling of odd bodies and headers.

Two drivers, because they cover different ground:

* the Python API (``operation.as_strategy`` under Hypothesis' ``@given``), one
  test per documented operation and generation mode, so a failure names its
  operation. (schemathesis' own pytest integration, ``from_fixture`` +
  ``@schema.parametrize()``, does not run under the installed pytest 9:
  AttributeError: 'Function' object has no attribute '_nodeid'.)
* the ``st run`` CLI, for the phases only it runs: schema examples and the
  coverage phase (boundary values, every undeclared method, missing bodies).

Bounded for CI: FUZZ_MAX_EXAMPLES per operation and mode (default 150), no
per-example deadline (the machine may be busy; timings are never asserted),
derandomized / fixed seed so a failure reproduces; FUZZ_RANDOM=1 explores new
examples.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.conftest import TrainedProject
from tests.integration.conftest import tool_env
from tests.integration.serving import GunicornServer, params_copy, running_gunicorn

pytestmark = pytest.mark.integration

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "150"))
RANDOM = os.environ.get("FUZZ_RANDOM") == "1"
CLI_SEED = "20240601"
REQUEST_TIMEOUT = 120
# Every operation the service documents; test_every_operation_is_fuzzed keeps this list honest.
OPERATIONS = ("POST /api/v1/predict", "GET /api/v1/decisions/{request_id}", "GET /api/v1/schema", "GET /health",
              "GET /ready")
CASES = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [("POST /api/v1/predict",
                                                                      GenerationMode.NEGATIVE)]
FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
                         print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                                 HealthCheck.data_too_large])


@pytest.fixture(scope="module", name="gunicorn_server")
def secured_server(trained_project: TrainedProject,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """Two workers with credentials (an admin key): schemathesis also checks that every operation the document
    secures refuses a request without the key. Failed attempts are not rate limited here: the fuzzer sends
    many keyless requests from one address on purpose."""
    workdir = tmp_path_factory.mktemp("fuzz")
    params = params_copy(workdir, failed_limit="100000000/minute")
    with running_gunicorn(workdir, str(trained_project.model_dir), token="generate",
                          extra_env={"PARAMS_FILE": str(params)}) as server:
        yield server


@pytest.fixture(scope="module")
def live_schema(gunicorn_server: GunicornServer) -> schemathesis.BaseSchema:
    """The OpenAPI document as the running server publishes it (built from the served model's profile)."""
    return schemathesis.openapi.from_url(gunicorn_server.url("/api/v1/openapi.json"), timeout=60,
                                         headers=gunicorn_server.headers)


def test_every_operation_is_fuzzed(live_schema: schemathesis.BaseSchema) -> None:
    labels = {result.ok().label for result in live_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{m.value}-{lab}" for lab, m in CASES])
def test_operation_conforms_to_the_openapi_document(live_schema: schemathesis.BaseSchema, label: str,
                                                    mode: GenerationMode, gunicorn_server: GunicornServer) -> None:
    operation = live_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the live OpenAPI document"

    auth = gunicorn_server.headers  # an admin key: every operation's scope

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(timeout=REQUEST_TIMEOUT, headers=auth)

    check()


def test_schemathesis_cli_examples_coverage_and_fuzzing(gunicorn_server: GunicornServer, tmp_path: Path) -> None:
    """`st run` with its default checks and phases; its report is the assertion message on failure."""
    seed = [] if RANDOM else ["--seed", CLI_SEED]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "--no-color", "run", gunicorn_server.url("/api/v1/openapi.json"),
         "--max-examples", str(MAX_EXAMPLES), *seed, "--generation-database", "none",
         "--request-timeout", str(REQUEST_TIMEOUT), "--wait-for-schema", "60",
         "-H", f"Authorization: Bearer {gunicorn_server.token}"],
        cwd=tmp_path, env={**tool_env(), "NO_COLOR": "1"}, capture_output=True, text=True, timeout=900,
        check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-12000:]
    assert "No issues found" in output, output[-4000:]


def _post_raw(server: GunicornServer, body: bytes | str, content_type: str = "application/json",
              ) -> requests.Response:
    return requests.post(server.url("/api/v1/predict"), data=body,
                         headers={"Content-Type": content_type, **server.headers}, timeout=REQUEST_TIMEOUT)


HOSTILE_BODIES: dict[str, tuple[bytes | str, str, int]] = {
    # name: (body, content type, expected status)
    "nested-array-2k": ("[" * 2000 + "]" * 2000, "application/json", 400),
    "nested-in-field": ('{"applicants": [{"age": ' + "[" * 5000 + "]" * 5000 + "}]}", "application/json", 400),
    "nested-object": ('{"a":' * 3000 + "1" + "}" * 3000, "application/json", 400),
    "invalid-utf8": (b'{"applicants": ["\xff\xfe"]}', "application/json", 400),
    "huge-integer": ('{"applicants": [{"age": 1' + "0" * 5000 + "}]}", "application/json", 400),
    "nan-literal": ('{"applicants": [{"age": NaN}]}', "application/json", 400),  # NaN is not JSON,
    "too-large": (b'{"applicants": [' + b"1," * 1_100_000 + b"1]}", "application/json", 413),
    "utf16-declared": ('{"applicants": []}'.encode("utf-16"), "application/json; charset=utf-16", 422),
    "empty": (b"", "application/json", 400),
    "form-encoded": (b"applicants=1", "application/x-www-form-urlencoded", 415),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_hostile_bodies_get_a_4xx_json_error(gunicorn_server: GunicornServer, name: str) -> None:
    """Bodies a generator rarely builds: each a client error with a JSON message, never a 500."""
    body, content_type, expected = HOSTILE_BODIES[name]
    resp = _post_raw(gunicorn_server, body, content_type)
    assert resp.status_code == expected, f"{name}: {resp.status_code} {resp.text[:300]}"
    payload: Any = resp.json()
    assert isinstance(payload.get("error"), str) and payload["error"]


def test_fuzzing_left_no_incident(gunicorn_server: GunicornServer) -> None:
    """Runs last in this module (file order): no 5xx in the access log and no unhandled exception logged."""
    log = gunicorn_server.log_text()
    server_errors = [line for line in log.splitlines() if "HTTP/1" in line and '" 5' in line]
    assert not server_errors, "\n".join(server_errors[:20])
    assert "unhandled error" not in log
    assert "Traceback" not in log
