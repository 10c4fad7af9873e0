"""The service image end to end: the repo's Dockerfile, unchanged, built, run, pushed, pulled and run again.

No Docker daemon here: ../shared/tools/container-sandbox.sh builds with buildah and runs
with podman (it apt-installs them, and builds the local python:3.11-slim stand-in with
`base`). The model is baked in from a real `mlflow server` on 127.0.0.1 holding the
trained project's exported champion (proxied artifacts, like a team registry), through
the Dockerfile's build args. Then, against the running container:

* /ready says the baked model (/app/model, the registered name and version) is served;
* POST /api/v1/predict and the web form (CSRF token from the page) both score a row,
  with exactly the probability and decision the model gives in process;
* the image goes to a registry on 127.0.0.1, is deleted locally, pulled back, run
  again on another port, and scores the same.

Skips only when the sandbox's tools cannot be installed (the message says so).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow import MlflowClient

from src.modeling import registry
from src.scoring.model_store import load_model
from tests.conftest import ROOT, TrainedProject
from tests.integration.conftest import free_port, running_mlflow_server, tool_env
from tests.integration.serving import (  # noqa: F401  (the *_fixture names register fixtures)
    FormFields,
    applicant_fixture,
    served_meta_fixture,
)

pytestmark = [pytest.mark.container, pytest.mark.integration]

SANDBOX = Path(os.environ.get("CONTAINER_SANDBOX", ROOT.parent / "shared" / "tools" / "container-sandbox.sh"))
TOOL_INSTALL_FAILED = ("apt-get could not install", "must run as root")
BUILD_TIMEOUT = 1800  # seconds: a cold vfs build installs the serving packages from PyPI
START_TIMEOUT = 240   # seconds to /ready: two workers import mlflow/sklearn and load the model


def sandbox(*args: str, env: dict[str, str], timeout: float = 600, check: bool = True,
            ) -> subprocess.CompletedProcess[str]:
    """Run container-sandbox.sh; a tool it cannot install skips the test, any other failure fails it."""
    proc = subprocess.run(["bash", str(SANDBOX), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0 and any(s in proc.stderr for s in TOOL_INSTALL_FAILED):
        pytest.skip(f"container tools could not be installed ({SANDBOX.name} {args[0]}): {proc.stderr.strip()[-500:]}")
    if check and proc.returncode != 0:
        raise AssertionError(f"{SANDBOX.name} {' '.join(args)} exited {proc.returncode}\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@dataclass(frozen=True)
class Container:
    cid: str
    url: str
    env: dict[str, str]

    def logs(self) -> str:
        return sandbox("logs", self.cid, env=self.env, check=False).stdout


@contextmanager
def running(tag: str, env: dict[str, str]) -> Iterator[Container]:
    """The image as a detached container on a free 127.0.0.1 port until the block ends."""
    port = free_port()
    cid = sandbox("run", tag, str(port), env=env).stdout.strip().splitlines()[-1]
    try:
        yield Container(cid=cid, url=f"http://127.0.0.1:{port}", env=env)
    finally:
        sandbox("stop", cid, env=env, check=False)


def wait_ready(container: Container, timeout: float = START_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            resp = requests.get(container.url + "/ready", timeout=5)
            if resp.status_code == 200:
                return resp.json()
            last = f"{resp.status_code} {resp.text[:300]}"
            if resp.status_code == 503 and resp.json().get("status") == "error":  # the load failed: no use waiting
                break
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(1)
    polls = re.compile(r'"GET /ready HTTP')  # our own polling: hundreds of access-log lines
    log = "\n".join(line for line in container.logs().splitlines() if not polls.search(line))
    raise AssertionError(f"{container.url}/ready not 200 (waited up to {timeout} s; last: {last})\n"
                         f"--- container log ---\n{log[-8000:]}")


@pytest.fixture(scope="module")
def sandbox_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The sandbox's environment: its registry state in a temp dir of ours, so it cannot meet another run's."""
    if not SANDBOX.exists():
        raise AssertionError(f"{SANDBOX} not found (set CONTAINER_SANDBOX)")
    env = tool_env()
    env["TMPDIR"] = str(tmp_path_factory.mktemp("sandbox"))
    env.pop("CSB_STORAGE_DRIVER", None)
    env["CSB_WAIT"] = "0"  # we wait for /ready ourselves (the model loads after gunicorn answers)
    sandbox("base", env=env, timeout=BUILD_TIMEOUT)  # installs buildah + debootstrap; builds the base image once
    return env


@pytest.fixture(scope="module")
def model_registry(trained_project: TrainedProject, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real mlflow server on 127.0.0.1 whose champion (v1) is the trained project's exported model."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-registry")) as uri:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        assert registry.import_exported(client, trained_project.model_dir, trained_project.model_name, "champion",
                                        "container test") == "1"
        yield uri


@pytest.fixture(scope="module")
def image(sandbox_env: dict[str, str], model_registry: str, trained_project: TrainedProject) -> Iterator[str]:
    """The repo's Dockerfile, unchanged, built with that champion baked in; removed afterwards."""
    tag = f"localhost/credit-default-test:{secrets.token_hex(4)}"
    started = time.monotonic()
    try:
        sandbox("build", str(ROOT), tag, "--", "--network", "host",
                "--build-arg", f"MLFLOW_TRACKING_URI={model_registry}",
                "--build-arg", f"MODEL_URI=models:/{trained_project.model_name}@champion",
                env=sandbox_env, timeout=BUILD_TIMEOUT)
        print(f"built {tag} in {time.monotonic() - started:.0f} s")
        yield tag
    finally:
        sandbox("rmi", tag, env=sandbox_env, check=False)


@pytest.fixture(scope="module")
def expected(trained_project: TrainedProject, applicant: dict[str, Any]) -> dict[str, Any]:
    """What the model says about the applicant in process: the container must say exactly the same."""
    return load_model(str(trained_project.model_dir), trained_project.settings).scorer.score([applicant])[0]


def score_through_api(base_url: str, applicant: dict[str, Any]) -> dict[str, Any]:
    resp = requests.post(base_url + "/api/v1/predict", json={"applicants": [applicant], "reasons": True}, timeout=60)
    assert resp.status_code == 200, resp.text[:500]
    return resp.json()


def score_through_form(base_url: str) -> str:
    """GET the form, post it back as a browser would (CSRF token, defaults), return the result page."""
    with requests.Session() as browser:
        page = browser.get(base_url + "/", timeout=60)
        assert page.status_code == 200, page.text[:300]
        form = FormFields()
        form.feed(page.text)
        assert form.values.get("csrf_token"), "no CSRF token on the form"
        result = browser.post(base_url + "/", data=form.values, timeout=60)
        assert result.status_code == 200, result.text[:500]
        return result.text


def page_text(html: str, element_id: str) -> str:
    match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>(.*?)</\1>', html, re.S)
    assert match, f"no element #{element_id} on the result page"
    return " ".join(re.sub(r"<[^>]+>", " ", match.group(2)).split())


def check_scoring(container: Container, project: TrainedProject, applicant: dict[str, Any],
                  expected: dict[str, Any]) -> None:
    """Ready with the baked model; the API and the form give the in-process probability and decision."""
    ready = wait_ready(container)
    base_url = container.url
    assert ready["model"]["uri"] == "/app/model", ready
    assert ready["model"]["name"] == project.model_name and ready["model"]["version"] == "1", ready
    assert ready["model"]["probabilities_by"] == "lightgbm", ready

    api = score_through_api(base_url, applicant)
    row = api["results"][0]
    assert api["model"]["name"] == project.model_name and str(api["model"]["version"]) == "1"
    assert row["probability_of_default"] == pytest.approx(expected["probability_of_default"], abs=1e-12)
    assert row["decision"] == expected["decision"]
    assert [r["feature"] for r in row["reasons"]] == [r["feature"] for r in expected["reasons"]]

    html = score_through_form(base_url)  # the form's defaults are the same training medians as ``applicant``
    assert page_text(html, "probability") == f"{expected['probability_of_default'] * 100:.1f}%"
    assert page_text(html, "decision") == expected["decision"].capitalize()
    assert "version 1" in page_text(html, "model-line")


def test_image_builds_runs_ships_through_a_registry_and_runs_again(
        image: str, sandbox_env: dict[str, str], trained_project: TrainedProject, applicant: dict[str, Any],
        expected: dict[str, Any]) -> None:
    env = sandbox_env
    with running(image, env) as container:
        check_scoring(container, trained_project, applicant, expected)

    registry_port = free_port()
    remote = f"127.0.0.1:{registry_port}/credit-default:{image.rsplit(':', 1)[1]}"
    sandbox("registry-start", str(registry_port), env=env)
    try:
        sandbox("push", image, remote, env=env, timeout=BUILD_TIMEOUT)
        catalog = requests.get(f"http://127.0.0.1:{registry_port}/v2/_catalog", timeout=30).json()
        assert "credit-default" in catalog["repositories"]
        sandbox("rmi", image, env=env)
        gone = sandbox("run", image, str(free_port()), env=env, check=False)
        assert gone.returncode != 0 and "no local image" in gone.stderr

        sandbox("pull", remote, env=env, timeout=BUILD_TIMEOUT)
        try:
            with running(remote, env) as container:
                check_scoring(container, trained_project, applicant, expected)
        finally:
            sandbox("rmi", remote, env=env, check=False)
    finally:
        sandbox("registry-stop", env=env, check=False)
