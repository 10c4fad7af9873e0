"""Start and stop a REAL gunicorn (gunicorn.conf.py + ``flask_api:create_app()``) for integration tests.

The Flask test client cannot show what only a multi-process server does: several
workers appending to one SQLite log, Prometheus counters summed across
processes, SIGHUP restarts, readiness while a model loads. So these helpers run
the exact command a deployment runs, on a free 127.0.0.1 port, in its own
process group (so teardown stops the workers too), with a throw-away
prediction database and metrics directory, and keep its log for the report of a
failing test.

Import the fixtures into a test module's namespace; each is registered under a
``name=`` different from its function's, so a test's parameter does not shadow
the import (ruff F811):
``from tests.integration.serving import gunicorn_server_fixture  # noqa: F401``
then ask for ``gunicorn_server`` (also ``registry_server``, ``applicant``, ``served_meta``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import mlflow
import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from src.auth.store import create_key
from tests.conftest import ROOT, TrainedProject, default_applicant
from tests.integration.conftest import free_port, stop_process_group, tool_env

CONFIG = ROOT / "gunicorn.conf.py"
APP = "flask_api:create_app()"
# (thread, server) for every server running now: a failing test's report shows the log of those its thread
# started (pytest_runtest_makereport in tests/integration/conftest.py), module-scoped ones included.
RUNNING: list[tuple[int, GunicornServer]] = []
# Generous: two workers import mlflow/sklearn and load a model on a 2-core box that may be busy.
START_TIMEOUT = 240.0
# Environment a developer's shell may carry that would change what the server under test does.
SCRUBBED_ENV = ("PROMETHEUS_MULTIPROC_DIR", "GUNICORN_OWNS_PROMETHEUS_DIR", "SECRET_KEY", "AUTH_FILE",
                "AUTH_ALLOW_OPEN", "METRICS_BIND", "API_KEY",
                "MODEL_URI", "DATABASE_URL", "SERVE_BIND", "WEB_CONCURRENCY", "GUNICORN_THREADS",
                "GUNICORN_CONTROL_SOCKET", "GUNICORN_CMD_ARGS", "GUNICORN_PIDFILE", "GUNICORN_MODEL_WAIT",
                "GUNICORN_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT", "GUNICORN_KEEPALIVE",
                "GUNICORN_KEEPALIVE_REQUESTS")
# gunicorn.conf.py's post_worker_init line: the worker is in its accept loop, model loaded or not.
ACCEPTING_LINE = re.compile(r"worker (?P<pid>\d+) accepting requests: model (?P<state>loaded|NOT loaded)")
# gunicorn.conf.py's on_starting line naming the Prometheus multiprocess directory it uses.
PROM_DIR_LINE = re.compile(r"prometheus multiprocess dir (?P<dir>\S+) \(")
# An access-log line of gunicorn.conf.py's format: ... "POST /path HTTP/1.1" 200 1044 6244us <pid> "agent"
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) \S+ \d+us <(?P<pid>\d+)> ')


@dataclass
class GunicornServer:
    """A running gunicorn master (``proc``) and what a test needs to talk to it and inspect it."""

    proc: subprocess.Popen[bytes]
    base_url: str
    token: str | None
    db_path: Path
    log_path: Path
    model_uri: str
    env: dict[str, str] = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """What every request but /health and /ready sends when the server has credentials."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def master_pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return self.base_url + path

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 120) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def worker_pids(self) -> set[int]:
        """Live workers: the master's children, read from /proc (no psutil needed), but its log shipper."""
        return children_of(self.master_pid) - self.shipper_pids()

    def shipper_pids(self) -> set[int]:
        """The master's prediction-log shipper process (one, unless it is being replaced)."""
        return {pid for pid in children_of(self.master_pid) if SHIPPER_MODULE in command_line(pid)}

    def access_pids(self, method: str, path: str) -> Counter[int]:
        """How many access-log lines for ``method path`` each worker pid wrote (who served what)."""
        served: Counter[int] = Counter()
        for match in ACCESS_LINE.finditer(self.log_text()):
            if match["method"] == method and match["path"] == path:
                served[int(match["pid"])] += 1
        return served

    def accepting_pids(self) -> set[int]:
        """Workers that finished their model load attempt and entered the accept loop (from the log)."""
        return {int(m["pid"]) for m in ACCEPTING_LINE.finditer(self.log_text())}

    def wait_workers_accepting(self, workers: int, timeout: float = START_TIMEOUT) -> set[int]:
        """Until ``workers`` live workers are all serving: /ready == 200 only proves that one of them is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            live = self.worker_pids()
            if len(live) == workers and live <= self.accepting_pids():
                return live
            time.sleep(0.2)
        raise AssertionError(f"workers {self.worker_pids()} not all accepting within {timeout:.0f} s "
                             f"(accepting: {self.accepting_pids()}):\n{self.log_tail()}")

    def sighup(self) -> None:
        """Ask the master for a graceful restart of every worker (config re-read, models re-loaded)."""
        os.kill(self.master_pid, signal.SIGHUP)


SHIPPER_MODULE = "src.scoring.shipper"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process went away while we looked
            continue
        fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def server_env(*, port: int, model_uri: str, db_path: Path, auth_file: Path, workers: int, threads: int,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the gunicorn master: the project's tool env, minus anything that would leak in."""
    env = tool_env()
    for var in SCRUBBED_ENV:
        env.pop(var, None)
    env.update(
        SERVE_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY=str(workers), GUNICORN_THREADS=str(threads),
        MODEL_URI=model_uri, DATABASE_URL=f"sqlite:///{db_path}", PARAMS_FILE=str(ROOT / "params.yaml"),
        PYTHONUNBUFFERED="1", AUTH_FILE=str(auth_file),
    )
    env.update(extra or {})
    return env


def params_copy(workdir: Path, **values: str) -> Path:
    """params.yaml with some one-line keys changed (e.g. failed_limit="100000/minute"), for PARAMS_FILE.

    The copy sits in ``workdir``, so relative paths in it point there: give the server MODEL_URI,
    DATABASE_URL and AUTH_FILE explicitly (running_gunicorn does).
    """
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    for key, value in values.items():
        text, count = re.subn(rf"(?m)^(\s+{key}:)\s*[^#\n]*?(\s*#.*)?$", rf"\g<1> {value}\g<2>", text, count=1)
        assert count == 1, f"no '{key}:' line in params.yaml"
    path = workdir / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def wait_for(url: str, proc: subprocess.Popen[bytes], log_path: Path, *, status: int = 200,
             timeout: float = START_TIMEOUT) -> requests.Response:
    """Poll ``url`` until it answers ``status``; fail with the server log if it dies or never does."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {proc.returncode} before {url} answered {status}:\n"
                                 + _tail(log_path))
        try:
            resp = requests.get(url, timeout=5)
            if resp.status_code == status:
                return resp
            last = f"{resp.status_code} {resp.text[:300]}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer {status} within {timeout:.0f} s (last: {last}):\n"
                         + _tail(log_path))


def _tail(log_path: Path, lines: int = 120) -> str:
    if not log_path.exists():
        return "(no log)"
    return "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@contextmanager
def running_gunicorn(workdir: Path, model_uri: str, *, token: str | None = None, workers: int = 2,
                     threads: int = 2, extra_env: dict[str, str] | None = None,
                     ready: bool = True) -> Iterator[GunicornServer]:
    """Run gunicorn until the block ends, with every worker past its model load attempt.

    ``ready`` also requires /ready == 200 (a model loaded), else only /health == 200.

    ``token="generate"`` makes a credentials file with one admin-scoped API key (``server.token``; every route
    but /health and /ready then needs it: ``server.headers``); ``None``: no credentials, so open on 127.0.0.1.
    The log tail is printed at the end, which pytest shows only for a failing test.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    auth_file = workdir / "credentials.json"
    if token == "generate":  # (no rate limit to speak of: load tests share the key)
        token, _ = create_key(auth_file, "tests", "admin", rate_limit="100000000/minute")
    port = free_port()
    db_path = workdir / "predictions.db"
    log_path = workdir / "gunicorn.log"
    env = server_env(port=port, model_uri=model_uri, db_path=db_path, auth_file=auth_file, workers=workers,
                     threads=threads, extra=extra_env)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(CONFIG), APP], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = GunicornServer(proc=proc, base_url=f"http://127.0.0.1:{port}", token=token, db_path=db_path,
                            log_path=log_path, model_uri=model_uri, env=env)
    running = (threading.get_ident(), server)
    RUNNING.append(running)
    try:
        wait_for(server.url("/ready" if ready else "/health"), proc, log_path)
        server.wait_workers_accepting(workers)
        yield server
    finally:
        RUNNING.remove(running)
        stop_gunicorn(proc)
        print(f"--- gunicorn log ({log_path}), last lines ---\n{server.log_tail()}")
        for match in PROM_DIR_LINE.finditer(server.log_text()):  # left behind only if the master was killed
            shutil.rmtree(match["dir"], ignore_errors=True)


def logs_of_running_servers() -> list[tuple[str, str]]:
    """(title, last lines of its log) of each server this thread started and has not stopped yet."""
    me = threading.get_ident()
    return [(f"gunicorn log {server.log_path}", server.log_tail()) for thread, server in RUNNING if thread == me]


def stop_gunicorn(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM to master and workers, time for gunicorn's graceful stop (30 s) and on_exit, then SIGKILL.

    (tests.integration.conftest.stop_process_group kills after 20 s: shorter than graceful_timeout.)
    """
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process_group(proc)  # SIGKILLs the group after its own grace period


# --- talking to it -------------------------------------------------------------------------------------------


def model_meta(model_dir: Path) -> dict[str, Any]:
    """The served model's own metadata (feature summary with defaults), read from the exported pyfunc."""
    return mlflow.pyfunc.load_model(str(model_dir)).unwrap_python_model().meta


def predict_body(applicant: dict[str, Any], n: int = 1, reasons: bool = True) -> dict[str, Any]:
    return {"applicants": [dict(applicant) for _ in range(n)], "reasons": reasons}


def scrape(base_url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics as {(sample name, labels): value}; the pid label of live gauges is kept."""
    resp = requests.get(base_url + "/metrics", headers=headers, timeout=30)
    resp.raise_for_status()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and wanted <= lab)


def settled_scrape(base_url: str, name: str, quiet: float = 0.6, timeout: float = 30, **labels: str,
                   ) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A scrape once ``name`` (with ``labels``) has stopped moving for ``quiet`` seconds.

    Each worker publishes what it served every quarter second (flask_api/metrics.py), so requests
    answered just before (the previous test's, on a shared server) may still be counted after a first
    scrape; a test that measures a difference takes its starting point here.
    """
    deadline = time.monotonic() + timeout
    last = scrape(base_url)
    while True:
        time.sleep(quiet)
        samples = scrape(base_url)
        if metric(samples, name, **labels) == metric(last, name, **labels):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} {labels} still moving after {timeout:.0f} s with no requests sent")
        last = samples


def logged_rows(db_path: Path, after_id: int = 0) -> list[tuple[int, str]]:
    """(id, request_id) of every prediction-log row with id > ``after_id``."""
    engine = sa.create_engine(f"sqlite:///{db_path}", connect_args={"timeout": 30})
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, request_id FROM predictions WHERE id > :after ORDER BY id"),
                                {"after": after_id}).all()
    finally:
        engine.dispose()
    return [(int(r[0]), str(r[1])) for r in rows]


def settled_rows(db_path: Path, after_id: int, expected: int, timeout: float = 60.0) -> list[tuple[int, str]]:
    """Rows logged after ``after_id``, re-read until there are ``expected`` or they stop changing for a while.

    Each answered request is in a worker's spool before its response; the shipper
    process copies it to the database within a fraction of a second. The wait only
    absorbs that and a busy disk, and a short count is still reported as such.
    """
    deadline = time.monotonic() + timeout
    rows = logged_rows(db_path, after_id)
    stable_since = time.monotonic()
    while len(rows) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        fresh = logged_rows(db_path, after_id)
        if len(fresh) != len(rows):
            stable_since = time.monotonic()
        rows = fresh
        if time.monotonic() - stable_since > 10:
            break
    return rows


def max_row_id(db_path: Path) -> int:
    engine = sa.create_engine(f"sqlite:///{db_path}", connect_args={"timeout": 30})
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM predictions")).scalar_one())
    finally:
        engine.dispose()


def json_or_text(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:  # includes requests' and json's JSONDecodeError
        return resp.text[:500]


class FormFields(HTMLParser):
    """The values a browser would submit from the rendered form: inputs, and each select's chosen option."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("name") and a.get("type") not in {"submit", "button"}:
            self.values[str(a["name"])] = a.get("value") or ""
        elif tag == "select":
            self._select = a.get("name")
        elif tag == "option" and self._select and ("selected" in a or self._select not in self.values):
            self.values[self._select] = a.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", name="served_meta")
def served_meta_fixture(trained_project: TrainedProject) -> dict[str, Any]:
    return model_meta(trained_project.model_dir)


@pytest.fixture(scope="module", name="applicant")
def applicant_fixture(served_meta: dict[str, Any]) -> dict[str, Any]:
    """A valid applicant for the served model (training medians / modes)."""
    return default_applicant(served_meta)


@pytest.fixture(scope="module", name="gunicorn_server")
def gunicorn_server_fixture(trained_project: TrainedProject,
                            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """Two gthread workers serving the exported champion directory; shared by a module's tests. The params are a
    copy in the server's folder, so what the service writes beside them (upload jobs) stays there."""
    workdir = tmp_path_factory.mktemp("gunicorn")
    with running_gunicorn(workdir, str(trained_project.model_dir),
                          extra_env={"PARAMS_FILE": str(params_copy(workdir))}) as server:
        yield server


@pytest.fixture(name="registry_server")
def registry_server_fixture(trained_project: TrainedProject, tmp_path: Path) -> Iterator[GunicornServer]:
    """Two workers serving ``models:/<name>@champion`` from the trained project's registry (for reloads), with an
    admin key."""
    uri = f"models:/{trained_project.model_name}@champion"
    with running_gunicorn(tmp_path / "gunicorn", uri, token="generate",
                          extra_env={"MLFLOW_TRACKING_URI": trained_project.tracking_uri}) as server:
        yield server
