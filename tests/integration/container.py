"""The container story of tests/integration/test_container.py: the repo's Dockerfile, unchanged, built, run,
pushed, pulled and run again, with ../shared/tools/container-sandbox.sh (buildah/podman, no Docker daemon).

The story is mostly other processes (an apt install and a base image the first time, a build, three
containers, a registry), about eight minutes on 2 cores, so the session starts it in the background at its
first integration test (``background_stories`` in conftest.py) and the test, run last, waits for it. Its processes run
at a lower CPU priority than the tests in the foreground.
"""

from __future__ import annotations

import csv
import io
import os
import re
import secrets
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow import MlflowClient

from src.auth.store import create_key, set_user
from src.config import DeploySettings
from src.deploy.secrets import smoke_lines as secrets_lines
from src.modeling import registry
from src.scoring.model_store import load_model
from tests.conftest import ROOT, TrainedProject, default_applicant
from tests.integration.conftest import free_port, running_mlflow_server, tool_env
from tests.integration.serving import FormFields, model_meta

SANDBOX = Path(os.environ.get("CONTAINER_SANDBOX", ROOT.parent / "shared" / "tools" / "container-sandbox.sh"))
TOOL_INSTALL_FAILED = ("apt-get could not install", "must run as root")
BUILD_TIMEOUT = 1800  # seconds: a cold vfs build installs the serving packages from PyPI
PASSWORD = "container test passphrase"
START_TIMEOUT = 240   # seconds to /ready: two workers import mlflow/sklearn and load the model
NICENESS = 10  # the story's processes yield the cores to the tests in the foreground


def sandbox(*args: str, env: dict[str, str], timeout: float = 600, check: bool = True,
            ) -> subprocess.CompletedProcess[str]:
    """Run container-sandbox.sh; a tool it cannot install skips the test, any other failure fails it."""
    proc = subprocess.run(["nice", "-n", str(NICENESS), "bash", str(SANDBOX), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
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
        """Its output: gunicorn's access log (stdout) and error log (stderr)."""
        proc = sandbox("logs", self.cid, env=self.env, check=False)
        return proc.stdout + proc.stderr


@contextmanager
def running(tag: str, env: dict[str, str], *run_args: str) -> Iterator[Container]:
    """The image as a detached container on a free 127.0.0.1 port until the block ends (``run_args``: podman's)."""
    port = free_port()
    cid = sandbox("run", tag, str(port), *(["--", *run_args] if run_args else []),
                  env=env).stdout.strip().splitlines()[-1]
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


@dataclass(frozen=True)
class Access:
    """What a client of a container with credentials presents (none: the container runs open)."""

    key: str | None = None
    user: tuple[str, str] | None = None
    mount: tuple[str, ...] = ()  # podman run arguments that hand the credentials file to the container

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key} if self.key else {}


def credentials(tmp_path: Path) -> Access:
    """A credentials file (a score key, a user) mounted read-only where AUTH_FILE points."""
    folder = tmp_path / "auth"
    key, _ = create_key(folder / "credentials.json", "container-test", "score")
    set_user(folder / "credentials.json", "officer", PASSWORD, "score")
    (folder / "credentials.json").chmod(0o644)  # hashes only; the image's user (uid 10001) must read it
    folder.chmod(0o755)
    return Access(key=key, user=("officer", PASSWORD),
                  mount=("-v", f"{folder}:/app/auth:ro", "-e", "AUTH_FILE=/app/auth/credentials.json"))


def host_command(container: Container, pattern: str, key: str = "") -> subprocess.CompletedProcess[str]:
    """A docker command of the release script's smoke lines (src/deploy/secrets.py; ``pattern`` finds it), run
    by podman against ``container`` with ``key`` in API_KEY (podman with the sandbox's own storage and runtime
    options: the sandbox has no exec command)."""
    lines = secrets_lines(DeploySettings(container_name=container.cid, smoke_timeout=60), "eu-west-1")
    found = [re.search(pattern, line) for line in lines]
    [command] = [shlex.split(match.group(1)) for match in found if match]
    podman = ["podman", "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
              "--events-backend", "file"]
    return subprocess.run([*podman, *command[1:]], env={**container.env, "API_KEY": key}, capture_output=True,
                          text=True, timeout=120, check=False)


def smoke_inside(container: Container, key: str) -> subprocess.CompletedProcess[str]:
    """The smoke test inside the container, as a host runs it before taking traffic again; first the probe
    that tells an image with the smoke test from an older one."""
    assert host_command(container, r"! (docker cp \S+ -) ").returncode == 0, "the image has no smoke test"
    return host_command(container, r"API_KEY=\$SMOKE_KEY (docker exec [^;]+);", key)


def score_through_api(base_url: str, applicant: dict[str, Any], access: Access) -> dict[str, Any]:
    body = {"applicants": [applicant], "reasons": True}
    if access.key:
        refused = requests.post(base_url + "/api/v1/predict", json=body, timeout=60)
        assert refused.status_code == 401, refused.text[:300]
    resp = requests.post(base_url + "/api/v1/predict", json=body, headers=access.headers, timeout=60)
    assert resp.status_code == 200, resp.text[:500]
    return resp.json()


@contextmanager
def signed_in_session(base_url: str, access: Access) -> Iterator[requests.Session]:
    """A browser-like session, signed in first if the container has users."""
    with requests.Session() as browser:
        if access.user:
            login = browser.get(base_url + "/", timeout=60)
            assert "/login" in login.url, login.url
            fields = FormFields()
            fields.feed(login.text)
            name, password = access.user
            signed = browser.post(login.url, data={**fields.values, "username": name, "password": password},
                                  timeout=60)
            assert signed.status_code == 200 and signed.url == base_url + "/", (signed.status_code, signed.url)
        yield browser


def score_through_form(base_url: str, access: Access) -> str:
    """GET the form, post it back as a browser would (CSRF token, defaults), return the result page."""
    with signed_in_session(base_url, access) as browser:
        page = browser.get(base_url + "/", timeout=60)
        assert page.status_code == 200, page.text[:300]
        form = FormFields()
        form.feed(page.text)
        assert form.values.get("csrf_token"), "no CSRF token on the form"
        result = browser.post(base_url + "/", data=form.values, timeout=60)
        assert result.status_code == 200, result.text[:500]
        return result.text


def score_through_upload(base_url: str, access: Access, applicant: dict[str, Any]) -> dict[str, str]:
    """Upload a one-row CSV on the batch page (written by the app user into /app/uploads), wait for the job,
    return the downloaded scored CSV's row."""
    with signed_in_session(base_url, access) as browser:
        page = browser.get(base_url + "/batch", timeout=60)
        form = FormFields()
        form.feed(page.text)
        body = ",".join(applicant) + "\n" + ",".join(str(v) for v in applicant.values()) + "\n"
        sent = browser.post(base_url + "/batch", data={"csrf_token": form.values["csrf_token"]},
                            files={"file": ("one.csv", body.encode())}, allow_redirects=False, timeout=60)
        assert sent.status_code == 303, sent.text[:500]
        job_url = base_url + sent.headers["Location"]
        deadline = time.monotonic() + 60
        while 'id="job-done"' not in (page := browser.get(job_url, timeout=60).text):
            assert 'id="job-error"' not in page and time.monotonic() < deadline, page_text(page, "main")
            time.sleep(0.5)
        scored = browser.get(job_url + "/scored.csv", timeout=60)
        assert scored.status_code == 200, scored.text[:300]
        [row] = list(csv.DictReader(io.StringIO(scored.text)))
        return row


def page_text(html: str, element_id: str) -> str:
    match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>(.*?)</\1>', html, re.S)
    assert match, f"no element #{element_id} on the result page"
    return " ".join(re.sub(r"<[^>]+>", " ", match.group(2)).split())


def check_scoring(container: Container, project: TrainedProject, applicant: dict[str, Any],
                  expected: dict[str, Any], access: Access) -> None:
    """Ready with the baked model; the API and the form give the in-process probability and decision."""
    ready = wait_ready(container)
    base_url = container.url
    assert ready["model"]["uri"] == "/app/model", ready
    assert ready["model"]["name"] == project.model_name and ready["model"]["version"] == "1", ready
    assert ready["model"]["probabilities_by"] == "lightgbm", ready

    api = score_through_api(base_url, applicant, access)
    row = api["results"][0]
    assert api["model"]["name"] == project.model_name and str(api["model"]["version"]) == "1"
    assert row["probability_of_default"] == pytest.approx(expected["probability_of_default"], abs=1e-12)
    assert row["decision"] == expected["decision"]
    assert [r["feature"] for r in row["reasons"]] == [r["feature"] for r in expected["reasons"]]

    html = score_through_form(base_url, access)  # the form's defaults are the same training medians as ``applicant``
    assert page_text(html, "probability") == f"{expected['probability_of_default'] * 100:.1f}%"
    assert page_text(html, "decision") == expected["decision"].capitalize()
    assert "version 1" in page_text(html, "model-line")

    uploaded = score_through_upload(base_url, access, applicant)  # the batch page: src/batch in the image
    assert float(uploaded["probability"]) == pytest.approx(expected["probability_of_default"], abs=1e-12)
    assert uploaded["decision"] == expected["decision"]


def story_env(workdir: Path) -> dict[str, str]:
    """The sandbox's environment, taken once: its registry state in ``workdir``, so it cannot meet another run's."""
    env = tool_env()
    env["TMPDIR"] = str(workdir)
    env.pop("CSB_STORAGE_DRIVER", None)
    env["CSB_WAIT"] = "0"  # we wait for /ready ourselves (the model loads after gunicorn answers)
    return env


@contextmanager
def built_image(project: TrainedProject, env: dict[str, str], workdir: Path) -> Iterator[str]:
    """The repo's Dockerfile, unchanged, built with the project's champion baked in from a real mlflow server
    on 127.0.0.1 (proxied artifacts, like a team registry) through the Dockerfile's build args; removed after."""
    if not SANDBOX.exists():
        raise AssertionError(f"{SANDBOX} not found (set CONTAINER_SANDBOX)")
    sandbox("base", env=env, timeout=BUILD_TIMEOUT)  # installs buildah + debootstrap; builds the base image once
    tag = f"localhost/credit-default-test:{secrets.token_hex(4)}"
    try:
        with running_mlflow_server(workdir / "mlflow-registry") as uri:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            assert registry.import_exported(client, project.model_dir, project.model_name, "champion",
                                            "container test") == "1"
            started = time.monotonic()
            sandbox("build", str(ROOT), tag, "--", "--network", "host",
                    "--build-arg", f"MLFLOW_TRACKING_URI={uri}",
                    "--build-arg", f"MODEL_URI=models:/{project.model_name}@champion",
                    env=env, timeout=BUILD_TIMEOUT)
            print(f"built {tag} in {time.monotonic() - started:.0f} s")
        yield tag
    finally:
        sandbox("rmi", tag, env=env, check=False)


def start(request: pytest.FixtureRequest, workdir: Path) -> Callable[[], None]:
    """The story with what it needs, taken at the session's start: the trained project, a valid applicant
    (training medians and modes), what the model says about it in process (the containers must say exactly
    the same), the sandbox's environment."""
    project: TrainedProject = request.getfixturevalue("trained_project")
    applicant = default_applicant(model_meta(project.model_dir))
    expected = load_model(str(project.model_dir), project.settings).scorer.score([applicant])[0]
    return partial(container_story, project, applicant, expected, story_env(workdir), workdir)


def container_story(project: TrainedProject, applicant: dict[str, Any], expected: dict[str, Any],
                    env: dict[str, str], workdir: Path) -> None:
    """Build; without credentials it refuses to start; with them it scores exactly as ``expected`` (the
    model in process) and passes the release script's smoke test inside; through a registry and back, it
    scores the same again."""
    with built_image(project, env, workdir) as tag:
        with running(tag, env) as container:  # no credentials: it refuses to serve open on 0.0.0.0
            deadline = time.monotonic() + START_TIMEOUT
            while "refusing to start open" not in container.logs() and time.monotonic() < deadline:
                time.sleep(1)
            assert "refusing to start open on 0.0.0.0:8000" in container.logs(), container.logs()[-3000:]
            with pytest.raises(requests.RequestException):
                requests.get(container.url + "/health", timeout=5)
        access = credentials(workdir)
        with running(tag, env, *access.mount) as container:
            check_scoring(container, project, applicant, expected, access)
            # what a host's release script runs before the host takes traffic: the smoke test inside the container
            assert access.key
            passed = smoke_inside(container, access.key)
            assert passed.returncode == 0 and "smoke test http://127.0.0.1:8000 passed" in passed.stderr, passed.stderr
            refused = smoke_inside(container, "cdk_000000000000_" + "x" * 43)
            assert refused.returncode == 1 and "/api/v1/schema answered 401" in refused.stderr, refused.stderr
            assert "Traceback" not in refused.stderr

        registry_port = free_port()
        remote = f"127.0.0.1:{registry_port}/credit-default:{tag.rsplit(':', 1)[1]}"
        sandbox("registry-start", str(registry_port), env=env)
        try:
            sandbox("push", tag, remote, env=env, timeout=BUILD_TIMEOUT)
            catalog = requests.get(f"http://127.0.0.1:{registry_port}/v2/_catalog", timeout=30).json()
            assert "credit-default" in catalog["repositories"]
            sandbox("rmi", tag, env=env)
            gone = sandbox("run", tag, str(free_port()), env=env, check=False)
            assert gone.returncode != 0 and "no local image" in gone.stderr

            sandbox("pull", remote, env=env, timeout=BUILD_TIMEOUT)
            try:
                with running(remote, env, "-e", "AUTH_ALLOW_OPEN=true") as container:  # open, on purpose
                    check_scoring(container, project, applicant, expected, Access())
            finally:
                sandbox("rmi", remote, env=env, check=False)
        finally:
            sandbox("registry-stop", env=env, check=False)
