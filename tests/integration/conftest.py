"""Helpers for tests that drive the real tools (dvc, git, mlflow) in a throw-away copy of the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import s3fs

from tests.conftest import ROOT, real_file
from tests.net import free_port
from tests.synthetic import write_synthetic_risk_flag

SAMPLE_ROWS = 4000
LANES = 2  # background stories at once (each is mostly other processes, one core at a time)


_story = threading.local()  # .environ: what tool_env() starts from in a background story's thread


def _pinned(environ: dict[str, str], run: Callable[[], Any]) -> Any:
    _story.environ = environ
    try:
        return run()
    finally:
        del _story.environ


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                               ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test's report carries the log of every gunicorn it talked to that is still running."""
    report = yield
    if report.when == "call" and report.failed:
        from tests.integration.serving import logs_of_running_servers  # noqa: PLC0415  (serving imports this)

        report.sections.extend(logs_of_running_servers())
    return report


def tool_env() -> dict[str, str]:
    env = dict(getattr(_story, "environ", None) or os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true",
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.invalid",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.invalid")
    # each test sets what it needs; an earlier test's mlflow.set_registry_uri() leaves MLFLOW_REGISTRY_URI behind
    for var in ("LOG_LEVEL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLOPS_ACTOR"):
        env.pop(var, None)
    return env


def sh(repo: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
       ) -> subprocess.CompletedProcess[str]:
    """Run a command in ``repo``; ``env`` adds variables (e.g. MLFLOW_TRACKING_URI) to the tool environment."""
    proc = subprocess.run(list(args), cwd=repo, env={**tool_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=600, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(repo: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    return sh(repo, sys.executable, "-m", "dvc", *args, check=check, env=env)


def project_files() -> list[str]:
    """What a clone holds: tracked files plus new, not-ignored ones (so uncommitted work is tested too)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


def copy_project(dest: Path) -> Path:
    """A fresh git repository at ``dest`` holding a copy of the project, with no data linked yet."""
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    sh(dest, "git", "init", "-q")
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-qm", "clone")
    return dest


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh git repository holding a copy of the project, with no data linked yet."""
    return copy_project(tmp_path / "repo")


def link_data(repo: Path, dataset: str) -> None:
    dest = repo / "data" / "external" / dataset
    dest.mkdir(parents=True, exist_ok=True)
    if dataset == "risk_flag":  # SYNTHETIC labels on real unlabeled rows: the labelled file is not public here
        write_synthetic_risk_flag(real_file("risk_flag"), dest, rows=SAMPLE_ROWS, seed=7)
    else:
        src = real_file(dataset)
        (dest / src.name).symlink_to(src)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))



def wait_http(url: str, timeout: float = 90, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200, failing early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True, workers included."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)


@contextmanager
def running_mlflow_server(store: Path) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, proxied artifact store under ``store``) on a free 127.0.0.1 port."""
    port = free_port()
    store.mkdir(parents=True, exist_ok=True)
    log = (store / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=tool_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", proc=proc)
        yield uri
    finally:
        stop_process_group(proc)
        log.close()


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, proxied artifact store) on a free 127.0.0.1 port."""
    with running_mlflow_server(tmp_path / "mlflow-server") as uri:
        yield uri


@pytest.fixture
def moto_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real moto server (S3, ECR, EC2, SSM, IAM, STS...) on a free 127.0.0.1 port.

    Sets AWS_ENDPOINT_URL and dummy credentials for this test (boto3 and DVC's s3
    remote then talk to it as they would to AWS), and yields the endpoint URL.
    """
    port = free_port()
    log = (tmp_path / "moto.log").open("w")
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], env=tool_env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    # fsspec caches one S3FileSystem per set of arguments, and the endpoint comes from the
    # environment, not the arguments: without this, a later test's s3:// paths would reach
    # an earlier test's (stopped) server through the cached instance.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        wait_http(f"{endpoint}/moto-api/", proc=proc, timeout=60)
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        stop_process_group(proc)
        log.close()


@pytest.fixture(scope="session", autouse=True)
def background_stories(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                       ) -> Iterator[dict[str, Future[Any]]]:
    """The long stories of the selected tests marked ``story(start=..., minutes=...)``, by test id, started at the
    session's first integration test on two background lanes, the longest (``minutes``, about what it takes on
    a busy machine) first, so the short ones fill the lanes' ends.

    ``start(request, workdir)`` runs here, in the foreground (fixtures, copies), and returns what the lane
    runs: mostly other processes (builds, DVC, servers), so the session's other tests go on meanwhile. Those
    tests run last (tests/conftest.py) and each waits for its story (and gets what the story returned); an
    assertion failing in a story fails its test. A story's ``tool_env()`` is the environment as it was here,
    whatever tests change later.
    """
    marked = sorted(((item.nodeid, mark.kwargs) for item in request.session.items
                     if (mark := item.get_closest_marker("story"))), key=lambda story: -story[1]["minutes"])
    if not marked:
        yield {}
        return
    futures: dict[str, Future[Any]] = {}
    lanes = ThreadPoolExecutor(max_workers=LANES, thread_name_prefix="story")
    try:
        for nodeid, kwargs in marked:
            try:
                run = kwargs["start"](request, tmp_path_factory.mktemp("story"))
            except Exception as exc:  # the story's own test fails with it, not the session
                futures[nodeid] = Future()
                futures[nodeid].set_exception(exc)
                continue
            futures[nodeid] = lanes.submit(_pinned, dict(os.environ), run)
        yield futures
    finally:  # a session cut short (-x, Ctrl-C) starts no more stories; running ones clean up after themselves
        lanes.shutdown(wait=True, cancel_futures=True)


def on_a_copy(scenario: Callable[[Path, Path], Any]) -> Callable[[pytest.FixtureRequest, Path], Callable[[], Any]]:
    """A ``story(start=...)`` for a scenario needing only its own copy of the project: ``scenario(repo, workdir)``."""
    def start(request: pytest.FixtureRequest, workdir: Path) -> Callable[[], Any]:
        return partial(scenario, copy_project(workdir / "repo"), workdir)
    return start


@pytest.fixture
def story(request: pytest.FixtureRequest, background_stories: dict[str, Future[Any]]) -> Future[Any]:
    """This test's story (marker ``story``), started at the session's start: ``.result()`` waits for it."""
    assert request.node.nodeid in background_stories, "not a story test: mark it story(start=..., minutes=...)"
    return background_stories[request.node.nodeid]
