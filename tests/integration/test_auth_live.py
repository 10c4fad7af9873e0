"""Keys, scopes, rate limits, sign-in and the metrics address on a real gunicorn (two workers, the fast path).

The unit tests (tests/unit/test_access.py) cover every rule on the Flask app; here the
same rules hold where they matter: through gunicorn's workers, with /metrics on its own
listener, and a master that refuses to start open on a public address.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from src.auth.store import create_key, set_user
from tests.conftest import ROOT, TrainedProject
from tests.integration.conftest import free_port
from tests.integration.serving import (  # noqa: F401  (the *_fixture names register fixtures)
    APP,
    CONFIG,
    GunicornServer,
    applicant_fixture,
    json_or_text,
    predict_body,
    running_gunicorn,
    served_meta_fixture,
    server_env,
)

PREDICT = "/api/v1/predict"
PASSWORD = "live test passphrase"


@dataclass
class Live:
    server: GunicornServer
    metrics_url: str
    keys: dict[str, str]


@pytest.fixture(scope="module")
def live(trained_project: TrainedProject, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    workdir = tmp_path_factory.mktemp("auth-live")
    file = workdir / "credentials.json"
    keys = {scope: create_key(file, scope, scope)[0] for scope in ("score", "metrics")}
    keys["limited"] = create_key(file, "limited", "score", rate_limit="3/minute")[0]
    set_user(file, "officer", PASSWORD, "score")
    metrics_port = free_port()
    with running_gunicorn(workdir, str(trained_project.model_dir), token="generate",
                          extra_env={"METRICS_BIND": f"127.0.0.1:{metrics_port}"}) as server:
        assert server.token is not None
        yield Live(server=server, metrics_url=f"http://127.0.0.1:{metrics_port}", keys={**keys, "admin": server.token})


def test_the_fast_path_and_flask_routes_need_a_key_of_the_right_scope(live: Live, applicant: dict[str, Any]) -> None:
    server, keys, body = live.server, live.keys, predict_body(applicant, reasons=False)
    with requests.Session() as http:
        for _ in range(4):  # keep-alive and fresh connections: both workers answer
            missing = http.post(server.url(PREDICT), json=body, timeout=60)
            assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
            fresh = requests.post(server.url(PREDICT), json=body, headers={"X-API-Key": keys["score"]}, timeout=60)
            assert fresh.status_code == 200, json_or_text(fresh)
        assert http.post(server.url(PREDICT), json=body, headers={"X-API-Key": keys["metrics"]},
                         timeout=60).status_code == 403
        assert http.get(server.url("/api/v1/schema"), timeout=60).status_code == 401
        assert http.get(server.url("/api/v1/schema"), headers={"X-API-Key": keys["score"]}, timeout=60).ok
        reload_url = server.url("/admin/reload")
        assert http.post(reload_url, headers={"X-API-Key": keys["score"]}, timeout=60).status_code == 403
        reloaded = http.post(reload_url, headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=120)
        assert reloaded.status_code == 200, json_or_text(reloaded)
        assert http.get(server.url("/ready"), timeout=60).status_code == 200  # the load balancer's probe


def test_metrics_only_on_their_own_address(live: Live) -> None:
    on_service_port = requests.get(live.server.url("/metrics"), headers={"X-API-Key": live.keys["admin"]},
                                   timeout=60)
    assert on_service_port.status_code == 404 and live.metrics_url.removeprefix("http://") in \
        on_service_port.json()["error"]
    refused = re.compile(r'http_requests_total\{[^}]*endpoint="/api/v1/predict"[^}]*status="401"')
    deadline = time.monotonic() + 30  # each worker publishes its counts every quarter second (a busy one later)
    while True:
        scraped = requests.get(live.metrics_url + "/metrics", timeout=60)
        assert scraped.status_code == 200
        if refused.search(scraped.text) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert refused.search(scraped.text), scraped.text[-3000:]
    assert requests.get(live.metrics_url + PREDICT, timeout=60).status_code == 404


def test_the_form_after_signing_in(live: Live) -> None:
    with requests.Session() as browser:
        login = browser.get(live.server.url("/"), timeout=60)
        assert "/login?next=" in login.url and "Sign in" in login.text
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', login.text).group(1)
        signed = browser.post(login.url, data={"csrf_token": token, "username": "officer", "password": PASSWORD},
                              timeout=60)
        assert signed.status_code == 200 and signed.url == live.server.url("/")
        assert "Score a loan applicant" in signed.text and "officer" in signed.text


def test_a_key_over_its_limit_gets_429(live: Live) -> None:
    """3 a minute per worker: within ten requests some are refused, with Retry-After."""
    with requests.Session() as http:
        answers = [http.get(live.server.url("/api/v1/schema"), headers={"X-API-Key": live.keys["limited"]},
                            timeout=60) for _ in range(10)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited and {a.status_code for a in answers} == {200, 429}
    assert all(int(a.headers["Retry-After"]) >= 1 for a in limited)


def test_zz_guessing_keys_is_rate_limited(live: Live) -> None:
    """(Last in the module: 127.0.0.1 stays blocked for up to a minute.)"""
    with requests.Session() as http:
        codes = [http.get(live.server.url("/api/v1/schema"), headers={"X-API-Key": f"cdk_{i:012x}_" + "g" * 43},
                          timeout=60).status_code for i in range(60)]
    assert set(codes) == {401, 429} and codes.count(429) >= 20, codes


def test_gunicorn_refuses_to_start_open_on_a_public_address(trained_project: TrainedProject, tmp_path: Path) -> None:
    port = free_port()
    env = server_env(port=port, model_uri=str(trained_project.model_dir), db_path=tmp_path / "p.db",
                     auth_file=tmp_path / "none.json", workers=1, threads=1,
                     extra={"SERVE_BIND": f"0.0.0.0:{port}"})
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(CONFIG), APP], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"refusing to start open on 0.0.0.0:{port}" in proc.stderr and "AUTH_ALLOW_OPEN" in proc.stderr
