"""Serving benchmark: our Flask API under gunicorn against ``mlflow models serve``, same model, same client.

One run on this machine:

1. builds (or, with ``--project DIR``, reuses) a temporary project on the FULL
   taiwan_credit file: ingest -> validate -> split -> train -> evaluate ->
   register in an embedded MLflow store (SQLite), then exports the champion;
2. starts our service under gunicorn (``gunicorn.conf.py`` when the repo has one,
   else ``-w 2 -k gthread --threads 2``) on a free port with MODEL_URI = the
   exported directory and a throw-away SQLite prediction log, and
   ``mlflow models serve -m models:/<name>@champion --env-manager local`` with
   as many workers as gunicorn booted;
   It also starts the floor (``bench/floor_app.py``: a trivial WSGI app returning a fixed
   answer) under the same ``gunicorn.conf.py``: what the server stack alone costs;
3. drives single-row requests at concurrency 1, 8 and 32 (warm-up first) against
   the floor, (a) our ``/api/v1/predict`` with ``"reasons": false``, (b) mlflow's
   ``/invocations`` with the same row (``dataframe_split``), (c) our API with
   reasons (its default); then 1000-row batches against our API (no reasons)
   and mlflow;
4. times the in-process floors: the booster on one pre-encoded row, the fast
   Scorer with and without reasons, the naive ``Pipeline.predict_proba`` on a
   one-row DataFrame, and the parts of a request (validation, prediction-log
   write, a whole request straight into the WSGI app: through the fast path and through Flask's view);
5. prints Markdown tables and marks each target met / not met. The serving targets are ratios to
   the floor measured in the same run (absolute latencies do not carry between machines):
   throughput at c=8 >= 70 % of the floor's, p99 at c=8 <= 1.5x the floor's (with reasons
   <= 3x), and >= 30x the req/s of ``mlflow models serve``.

The load generator is ``wrk`` (C, one thread, closed loop: N connections each
with one request in flight) when it is installed, else a Python client (N
threads, one ``http.client`` connection each). Both keep connections alive
unless the server answers ``Connection: close`` (then they reconnect for every
request; the context table says which server does what). Client and servers
share this machine's cores: each table reports the client's own CPU time per
request next to the server's, the CPU of each busy server process (so an
unbalanced spread over the workers is visible) and the CPU the rest of the
machine used meanwhile. ``--client python`` forces the Python client;
``--wait-idle`` waits for a quiet machine before each point.

    python bench/serve.py                          # build in a temp dir, 10 s per point
    python bench/serve.py --project /tmp/serve-proj --wait-idle 60   # build once, then reuse
    python bench/serve.py --requests 2000 --skip-mlflow
    python bench/serve.py --project /tmp/serve-proj --skip-mlflow --server-env OMP_NUM_THREADS=1 \
        --server-env GUNICORN_KEEPALIVE=5 --gunicorn-arg=--reuse-port      # try a server setting

Progress goes to stderr (logging); the Markdown tables go to stdout.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import logging
import math
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pandas as pd
import psutil
import requests
import yaml
from mlflow import MlflowClient
from werkzeug.test import EnvironBuilder

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flask_api import create_app  # noqa: E402
from flask_api.validation import validate_applicants  # noqa: E402
from src.auth.store import create_key  # noqa: E402
from src.common import read_table  # noqa: E402
from src.config import Settings, load_settings, read_params  # noqa: E402
from src.data import ingest, split, validate  # noqa: E402
from src.modeling import evaluate, fairness, register, registry, stability, train  # noqa: E402
from src.modeling.pyfunc_model import example_rows  # noqa: E402
from src.scoring.model_store import load_model  # noqa: E402
from src.scoring.predlog import PredictionLog  # noqa: E402
from tests.conftest import REAL_DATASETS  # noqa: E402

log = logging.getLogger("bench.serve")

DATASET = "taiwan_credit"
HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
CONCURRENCY = (1, 8, 32)
BATCH_ROWS = 1000
BATCH_CONCURRENCY = (1, 2)
DEFAULT_WORKERS, DEFAULT_THREADS = 2, 2
IDLE_CORES = 0.3  # --wait-idle: "quiet" = other processes use less than this many cores

TARGET_FLOOR_RPS = 0.70  # single row, c=8: our req/s over the floor's
TARGET_FLOOR_P99 = 1.5  # single row, c=8, no reasons: our p99 over the floor's
TARGET_FLOOR_P99_REASONS = 3.0  # ... with reasons
TARGET_SPEEDUP = 30.0  # our req/s over mlflow's, at every concurrency
TARGET_BATCH_ROWS_S = 50_000.0  # 1000-row batches, no reasons

OURS, OURS_REASONS, MLFLOW, FLOOR = "ours", "ours+reasons", "mlflow", "floor"
LABELS = {OURS: 'our API, "reasons": false', OURS_REASONS: "our API, with reasons (default)",
          MLFLOW: "mlflow models serve /invocations", FLOOR: "floor: fixed answer, same gunicorn.conf.py"}


# --------------------------------------------------------------------------- project
@dataclass(frozen=True)
class Project:
    root: Path
    settings: Settings
    params_file: Path
    model_dir: Path  # `registry export champion`: loads with no tracking server
    tracking_uri: str
    model_name: str
    version: str
    rows_in: int


def default_data_file(dataset: str = DATASET) -> Path:
    """The profile's raw file in the shared data folder (``$SHARED_DATA`` or ``../shared/data``)."""
    shared = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
    source = read_params(ROOT / "params.yaml")["profiles"][dataset]["source"]["file"]
    return (shared / dataset / source).resolve()


def build_project(root: Path, data_file: Path, dataset: str = DATASET) -> Project:
    """Reuse a complete build in ``root``, else run every stage on the full data and export the champion."""
    params_file = root / "params.yaml"
    model_dir = root / "exported"
    complete = (model_dir / "MLmodel").exists() and params_file.exists() and (root / "mlflow.db").exists()
    if complete:
        log.info("reusing the project in %s", root)
    else:
        if root.exists() and any(root.iterdir()):
            raise SystemExit(f"{root} holds files but no complete build; give a new or empty directory")
        if not data_file.exists():
            raise SystemExit(f"{data_file} not found (set SHARED_DATA or --data)")
        _build(root, data_file, params_file, model_dir, dataset)
    settings = load_settings(params_file)
    info = json.loads((model_dir / "registry.json").read_text(encoding="utf-8"))
    quality = json.loads((settings.paths.metrics / "data_quality.json").read_text(encoding="utf-8"))
    return Project(root=root, settings=settings, params_file=params_file, model_dir=model_dir,
                   tracking_uri=f"sqlite:///{(root / settings.mlflow.database).resolve()}",
                   model_name=info["registered_model"], version=str(info["version"]),
                   rows_in=int(quality["rows_in"]))


def _build(root: Path, data_file: Path, params_file: Path, model_dir: Path, dataset: str) -> None:
    started = time.perf_counter()
    external = root / "data" / "external" / dataset
    external.mkdir(parents=True)
    (external / data_file.name).symlink_to(data_file)
    params = read_params(ROOT / "params.yaml")
    params["dataset"] = dataset
    params["ingest"] = {**params["ingest"], "sample_rows": None}  # the full file, never a sample
    params["serve"] = {**params["serve"], "model_uri": None}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    settings = load_settings(params_file)
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)  # the project's embedded store, as the tests do
    lightgbm.register_logger(logging.getLogger("lightgbm"))  # its per-iteration lines off stdout (the report)
    try:
        for stage in (ingest, validate, split, train, fairness, stability, evaluate, register):
            log.info("build: %s", stage.__name__.rsplit(".", 1)[-1])
            stage.run(settings)
        registry.export(MlflowClient(), settings.registered_model_name, "champion", model_dir)
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    log.info("built and registered the model in %.0f s", time.perf_counter() - started)


def sample_rows(settings: Settings, count: int) -> list[dict[str, Any]]:
    """``count`` real test-split applicants as plain JSON values (the signature's dtypes)."""
    test = read_table(settings.split_table("test"))
    frame = example_rows(test, settings.profile, rows=count)
    rows = frame.to_dict(orient="records")
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]


def ours_body(rows: list[dict[str, Any]], reasons: bool) -> bytes:
    return json.dumps({"applicants": rows, "reasons": reasons}).encode()


def mlflow_body(rows: list[dict[str, Any]]) -> bytes:
    columns = list(rows[0])
    data = [[r[c] for c in columns] for r in rows]
    return json.dumps({"dataframe_split": {"columns": columns, "data": data}}).encode()


# --------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    log_file: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        log.info("starting %s: %s", self.name, " ".join(self.command))
        with self.log_file.open("wb") as out:
            self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # its own process group, stopped as one

    def wait(self, path: str, timeout: float, consecutive: int = 1) -> None:
        """Wait until ``consecutive`` fresh connections in a row get 200 from ``path``."""
        deadline = time.monotonic() + timeout
        streak = 0
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                ok = requests.get(self.url + path, timeout=2).status_code == 200
            except requests.RequestException:
                ok = False
            streak = streak + 1 if ok else 0
            if streak >= consecutive:
                return
            time.sleep(0.05 if ok else 0.25)
        raise RuntimeError(f"{self.name} not ready on {path} after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def processes(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            top = psutil.Process(self.proc.pid)
            return [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_by_process(self) -> dict[int, float]:
        """User + system CPU seconds so far of each process in the server's tree."""
        out = {}
        for proc in self.processes():
            with suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
        return out

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_process().values())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        log.info("stopping %s (pid %d)", self.name, self.proc.pid)
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def venv_path() -> str:
    """PATH with this interpreter's bin directory first, as an activated venv has it."""
    return os.pathsep.join([str(BIN), os.environ.get("PATH", "")])


def gunicorn_server(project: Project, run_dir: Path, workers: int | None, threads: int | None,
                    extra_env: dict[str, str], app: str = "flask_api:create_app()",
                    extra_args: tuple[str, ...] = ()) -> Server:
    port = free_port()
    conf = ROOT / "gunicorn.conf.py"
    command = [str(BIN / "gunicorn")]
    if conf.exists():
        command += ["-c", str(conf)]
        if workers:
            command += ["-w", str(workers)]
        if threads:  # the config's worker class (gthread plus keep-alive fixes) stays
            command += ["--threads", str(threads)]
    else:
        command += ["-w", str(workers or DEFAULT_WORKERS), "-k", "gthread",
                    "--threads", str(threads or DEFAULT_THREADS)]
    command += [*extra_args, "-b", f"{HOST}:{port}", app]
    prom = run_dir / "prometheus"
    prom.mkdir()
    database = f"sqlite:///{run_dir / 'predictions.db'}"
    env = {**os.environ, "MODEL_URI": str(project.model_dir), "DATABASE_URL": database,
           "SECRET_KEY": secrets.token_hex(32), "PARAMS_FILE": str(project.params_file),
           "PROMETHEUS_MULTIPROC_DIR": str(prom), "MLFLOW_TRACKING_URI": project.tracking_uri,
           "PYTHONUNBUFFERED": "1", "PATH": venv_path(), **extra_env}
    return Server("gunicorn (our API)", command, env, run_dir / "gunicorn.log", port)


def mlflow_server(project: Project, run_dir: Path, workers: int) -> Server:
    port = free_port()
    command = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{project.model_name}@champion",
               "--env-manager", "local", "-h", HOST, "-p", str(port), "--workers", str(workers)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": project.tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONUNBUFFERED": "1", "PATH": venv_path()}  # it runs `uvicorn` from PATH
    return Server("mlflow models serve", command, env, run_dir / "mlflow.log", port)


def keeps_alive(server: Server) -> str:
    """Whether the server keeps HTTP/1.1 connections open (else every request opens a new TCP connection)."""
    path = "/health" if "gunicorn" in server.name else "/ping"
    with requests.Session() as session:
        header = session.get(server.url + path, timeout=5).headers.get("Connection", "")
    return "off (Connection: close)" if header.lower() == "close" else "on"


def gunicorn_layout(server: Server) -> tuple[int, str]:
    """Workers booted and worker class, from gunicorn's own start-up log."""
    text = server.log_file.read_text(encoding="utf-8", errors="replace")
    workers = len(re.findall(r"Booting worker with pid", text))
    kind = re.search(r"Using worker: (\S+)", text)
    return workers, kind.group(1) if kind else "?"


# --------------------------------------------------------------------------- load generation
@dataclass
class LoadResult:
    target: str
    concurrency: int
    rows: int  # applicants per request
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    client_cpu_s: float
    server_cpu_s: float
    other_cores: float  # CPU the rest of the machine used meanwhile (cores busy outside server and client)
    process_cores: list[float] = field(default_factory=list)  # CPU of each busy server process, in cores
    load: tuple[float, float, float] = field(default_factory=os.getloadavg)
    round: int = 1  # --rounds: which pass over the plan

    @property
    def split(self) -> str:
        return " + ".join(f"{x:.2f}" for x in self.process_cores) or "-"

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rps * self.rows

    def cpu_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.requests if self.requests else math.nan


WRK_MAX_SECONDS = 3600  # upper bound of a --requests point
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
@HEADERS@
local f = assert(io.open("@BODY@", "rb"))
wrk.body = f:read("*a")
f:close()
local limit = @LIMIT@
local count = 0
if limit > 0 then
  function response(status, headers, body)
    count = count + 1
    if count == limit then
      wrk.thread:stop()
      local flag = io.open("@FLAG@", "w")  -- wrk itself runs for -d; the caller sends SIGINT on this flag
      if flag then flag:close() end
    end
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "status": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d, "p50": %.1f, "p95": %.1f, "p99": %.1f}\\n', summary.requests, summary.duration,
    e.status, e.connect, e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99)))
end
"""


def wrk_headers(headers: dict[str, str]) -> str:
    """Lua lines that make wrk send ``headers`` with every request (WRK_SCRIPT's @HEADERS@)."""
    return "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())


class Client:
    """Closed-loop load: ``concurrency`` connections, each with one request in flight."""

    def __init__(self, kind: str, work_dir: Path, headers: dict[str, str] | None = None) -> None:
        self.headers = dict(headers or {})  # sent with every request (the API key), to every server alike
        self.kind = kind
        self.work_dir = work_dir
        self._bodies: dict[bytes, Path] = {}

    def describe(self) -> str:
        if self.kind == "wrk":
            version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
            return f"{version.split(' [')[0].strip() or 'wrk'} (C, 1 thread, closed loop)"
        return "Python threads, one http.client connection each (closed loop, GIL-bound)"

    def run(self, url: str, body: bytes, concurrency: int, duration: float, limit: int | None,
            ) -> tuple[int, int, float, list[float]]:
        """(requests, errors, seconds, [p50, p95, p99] ms) for one closed-loop run."""
        if self.kind == "wrk":
            return self._wrk(url, body, concurrency, duration, limit)
        return self._python(url, body, concurrency, duration, limit)

    def _wrk(self, url: str, body: bytes, concurrency: int, duration: float, limit: int | None,
             ) -> tuple[int, int, float, list[float]]:
        if body not in self._bodies:
            path = self.work_dir / f"body{len(self._bodies)}.json"
            path.write_bytes(body)
            self._bodies[body] = path
        script = self.work_dir / f"wrk_{os.getpid()}.lua"
        flag = self.work_dir / f"wrk_{os.getpid()}.done"
        flag.unlink(missing_ok=True)
        script.write_text(WRK_SCRIPT.replace("@BODY@", str(self._bodies[body])).replace("@LIMIT@", str(limit or 0))
                          .replace("@FLAG@", str(flag)).replace("@HEADERS@", wrk_headers(self.headers)),
                          encoding="utf-8")
        seconds = max(1, math.ceil(duration)) if not limit else WRK_MAX_SECONDS
        command = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{seconds}s", "--timeout", "30s",
                   "-s", str(script), url]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            if limit:  # wrk stops early only on SIGINT (it then still reports, through done())
                while proc.poll() is None and not flag.exists():
                    time.sleep(0.002)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate()
        line = next((ln for ln in stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {stdout}\n{stderr}")
        data = json.loads(line.removeprefix("WRK_JSON "))
        errors = sum(int(data[k]) for k in ("status", "connect", "read", "write", "timeout"))
        return (int(data["requests"]), errors, data["duration_us"] / 1e6,
                [data[k] / 1000 for k in ("p50", "p95", "p99")])

    def _python(self, url: str, body: bytes, concurrency: int, duration: float, limit: int | None,
                ) -> tuple[int, int, float, list[float]]:
        target = requests.utils.urlparse(url)
        headers = {"Content-Type": "application/json", **self.headers}
        latencies: list[list[float]] = [[] for _ in range(concurrency)]
        errors = [0] * concurrency
        issued = iter(range(limit)) if limit else None
        lock = threading.Lock()
        start = time.perf_counter()
        stop_at = start + duration

        def more() -> bool:
            if issued is None:
                return time.perf_counter() < stop_at
            with lock:
                return next(issued, None) is not None

        def worker(i: int) -> None:
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            lat = latencies[i]
            while more():
                t0 = time.perf_counter()
                try:
                    conn.request("POST", target.path, body, headers)
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 200:
                        errors[i] += 1
                except (OSError, http.client.HTTPException):
                    errors[i] += 1
                    conn.close()
                    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                lat.append(time.perf_counter() - t0)
            conn.close()

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        every = np.concatenate([np.asarray(x) for x in latencies]) * 1000
        pct = np.percentile(every, [50, 95, 99]).tolist() if every.size else [math.nan] * 3
        return int(every.size), sum(errors), seconds, pct

    def client_cpu(self) -> float:
        """CPU seconds the client has used so far (wrk: reaped children; Python: this process)."""
        if self.kind == "wrk":
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        else:
            usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime


def measure(client: Client, server: Server, target: str, path: str, body: bytes, rows: int, concurrency: int,
            args: argparse.Namespace, limit: int | None, round_no: int = 1) -> LoadResult:
    url = server.url + path
    if args.wait_idle > 0:
        wait_idle(args.wait_idle)
    if args.warmup > 0:
        client.run(url, body, concurrency, args.warmup, None)
    cpu0, client0, busy0, self0, wall0 = (server.cpu_by_process(), client.client_cpu(), machine_busy(), self_cpu(),
                                          time.monotonic())
    done, errors, seconds, (p50, p95, p99) = client.run(url, body, concurrency, args.duration, limit)
    cpu1, client_cpu = server.cpu_by_process(), client.client_cpu() - client0
    per_process = sorted((cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1), reverse=True)
    server_cpu = sum(per_process)
    ours = server_cpu + client_cpu + (self_cpu() - self0 if client.kind != "python" else 0.0)
    result = LoadResult(target=target, concurrency=concurrency, rows=rows, requests=done, errors=errors,
                        seconds=seconds, p50_ms=p50, p95_ms=p95, p99_ms=p99, client_cpu_s=client_cpu,
                        server_cpu_s=server_cpu,
                        other_cores=max(0.0, machine_busy() - busy0 - ours) / (time.monotonic() - wall0),
                        process_cores=[x / seconds for x in per_process if x / seconds >= 0.01], round=round_no)
    log.info("%-13s rows=%-4d c=%-2d %7.1f req/s  p50 %6.2f  p95 %6.2f  p99 %6.2f ms  errors %d  "
             "load %.2f  other processes %.2f cores  server processes %s cores", target, rows, concurrency, result.rps,
             p50, p95, p99, errors, result.load[0], result.other_cores, result.split)
    return result


def wait_idle(max_seconds: float, busy_cores: float = IDLE_CORES) -> None:
    """Wait (at most ``max_seconds``) until the rest of the machine uses less than ``busy_cores`` for a second."""
    deadline = time.monotonic() + max_seconds
    cores = os.cpu_count() or 1
    while True:
        busy = psutil.cpu_percent(interval=1.0) / 100 * cores  # our servers are idle between points
        if busy < busy_cores:
            return
        if time.monotonic() >= deadline:
            log.warning("machine still busy (%.2f cores used by other processes); measuring anyway", busy)
            return
        log.info("waiting for a quiet machine: %.2f cores busy", busy)


def machine_busy() -> float:
    """CPU seconds every process on the machine has used (all cores, not idle, not I/O wait)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def probe(server: Server, path: str, body: bytes, rows: int, kind: str, headers: dict[str, str]) -> list[float]:
    """One request outside the measurement: check status and shape, return the probabilities."""
    resp = requests.post(server.url + path, data=body, headers={"Content-Type": "application/json", **headers},
                         timeout=60)
    if resp.status_code != 200:
        raise RuntimeError(f"{server.name} {path} answered {resp.status_code}: {resp.text[:500]}")
    data = resp.json()
    if kind == MLFLOW:
        items = data["predictions"]
        proba = [float(p["probability_of_default"] if isinstance(p, dict) else p) for p in items]
    else:
        items = data["results"]
        proba = [float(r["probability_of_default"]) for r in items]
        if kind == OURS_REASONS and not items[0].get("reasons"):
            raise RuntimeError("our API returned no reasons with reasons: true")
        if kind == OURS and "reasons" in items[0]:
            raise RuntimeError('our API returned reasons with "reasons": false')
    if len(proba) != rows:
        raise RuntimeError(f"{server.name}: {len(proba)} results for {rows} rows")
    return proba


# --------------------------------------------------------------------------- in-process floors
@dataclass
class Floor:
    name: str
    rows: int
    calls: int
    mean_us: float
    p50_us: float
    p99_us: float

    @property
    def rows_per_s(self) -> float:
        return self.rows * 1e6 / self.mean_us


def time_calls(name: str, rows: int, fn: Callable[[], Any], budget_s: float, min_calls: int = 20) -> Floor:
    for _ in range(min(50, min_calls)):  # warm caches and lazy imports
        fn()
    samples: list[int] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_calls or time.perf_counter() < deadline:
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    arr = np.asarray(samples, dtype=np.float64) / 1000
    floor = Floor(name, rows, len(samples), float(arr.mean()), float(np.percentile(arr, 50)),
                  float(np.percentile(arr, 99)))
    log.info("floor %-55s mean %9.1f us  p99 %9.1f us  (%d calls)", name, floor.mean_us, floor.p99_us, floor.calls)
    return floor


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wsgi_post(wsgi: Callable[..., Any], path: str, body: bytes, headers: dict[str, str] | None = None,
              ) -> tuple[str, bytes]:
    """One POST straight into a WSGI callable, no HTTP and no test client: (status line, body).

    werkzeug builds the environ once per (path, body); each call only gets a fresh input stream,
    so the timing is the app's, not the environ builder's.
    """
    key = (path, body, tuple(sorted((headers or {}).items())))
    base = _ENVIRONS.get(key)
    if base is None:
        base = _ENVIRONS[key] = EnvironBuilder(path=path, method="POST", data=body, headers=headers,
                                               content_type="application/json").get_environ()
    environ = {**base, "wsgi.input": io.BytesIO(body)}
    status: list[str] = []
    chunks = wsgi(environ, lambda line, headers, exc_info=None: status.append(line))
    data = b"".join(chunks)
    if hasattr(chunks, "close"):
        chunks.close()
    return status[0], data


_ENVIRONS: dict[tuple[str, bytes, tuple[tuple[str, str], ...]], dict[str, Any]] = {}


def api_key(run_dir: Path, scope: str = "score") -> tuple[Path, str]:
    """A credentials file with one key (no rate limit to speak of): the service then needs a key."""
    path = run_dir / "auth" / "credentials.json"
    key, _ = create_key(path, "bench", scope, rate_limit="1000000000/minute")
    return path, key


def in_process_floors(project: Project, rows: list[dict[str, Any]], run_dir: Path, budget: float,
                      auth: tuple[Path, str] | None) -> list[Floor]:
    settings = project.settings
    loaded = load_model(str(project.model_dir), settings)
    scorer = loaded.scorer
    booster, k = scorer.booster, scorer.num_iteration
    one, batch = rows[:1], rows[:BATCH_ROWS]
    m1, mb = scorer.encode(one), scorer.encode(batch)
    frame1 = pd.DataFrame(one)[scorer.meta["features"]]
    floors = [
        time_calls("booster.predict, 1 pre-encoded row (default threads)", 1,
                   lambda: booster.predict(m1, num_iteration=k), budget),
        time_calls("booster.predict, 1 pre-encoded row, num_threads=1", 1,
                   lambda: booster.predict(m1, num_iteration=k, num_threads=1), budget),
        time_calls("booster.predict pred_contrib, 1 row (default threads)", 1,
                   lambda: booster.predict(m1, num_iteration=k, pred_contrib=True), budget),
        time_calls("booster.predict pred_contrib, 1 row, num_threads=1", 1,
                   lambda: booster.predict(m1, num_iteration=k, pred_contrib=True, num_threads=1), budget),
        time_calls("Scorer.encode, 1 row", 1, lambda: scorer.encode(one), budget),
        time_calls("Scorer.score, 1 row, no reasons", 1, lambda: scorer.score(one, with_reasons=False), budget),
        time_calls("Scorer.score, 1 row, with reasons", 1, lambda: scorer.score(one, with_reasons=True), budget),
        time_calls("Pipeline.predict_proba, 1-row DataFrame (naive)", 1,
                   lambda: scorer.pipeline.predict_proba(frame1), budget),
        time_calls("validate_applicants, 1 row", 1, lambda: validate_applicants(one, scorer.profile), budget),
    ]
    results1 = scorer.score(one, with_reasons=False)
    resultsb = scorer.score(batch, with_reasons=False)
    # What a request pays to put its rows on record: the spool append (the shipper runs elsewhere).
    predlog = PredictionLog(f"sqlite:///{run_dir / 'floors.db'}", ship=False)
    floors.append(time_calls("PredictionLog.submit, 1 row (spool append)", 1,
                             lambda: predlog.submit("x" * 36, "api", "m", "1", one, results1), budget))
    floors += [
        time_calls(f"booster.predict, {BATCH_ROWS} pre-encoded rows", BATCH_ROWS,
                   lambda: booster.predict(mb, num_iteration=k), budget, 5),
        time_calls(f"booster.predict, {BATCH_ROWS} pre-encoded rows, num_threads=1", BATCH_ROWS,
                   lambda: booster.predict(mb, num_iteration=k, num_threads=1), budget, 5),
        time_calls(f"Scorer.score, {BATCH_ROWS} rows, no reasons", BATCH_ROWS,
                   lambda: scorer.score(batch, with_reasons=False), budget, 5),
        time_calls(f"validate_applicants, {BATCH_ROWS} rows", BATCH_ROWS,
                   lambda: validate_applicants(batch, scorer.profile), budget, 5),
        time_calls(f"PredictionLog.submit, {BATCH_ROWS} rows", BATCH_ROWS,
                   lambda: predlog.submit("x" * 36, "api", "m", "1", batch, resultsb), budget, 5),
    ]
    predlog.dispose()

    # prometheus_client fixed its value class at import: in-process metrics use its single-process registry.
    # PREDLOG_SHIPPER=external: the app only spools, as under gunicorn (whose shipper is another process).
    # AUTH_FILE: with a key, every request pays the access check (flask_api/access.py); without, none exists.
    with environment(DATABASE_URL=f"sqlite:///{run_dir / 'floors-app.db'}", PROMETHEUS_MULTIPROC_DIR=None,
                     PREDLOG_SHIPPER="external", AUTH_FILE=str(auth[0] if auth else run_dir / "no-credentials")):
        app = create_app({"SETTINGS": settings, "MODEL_URI": str(project.model_dir), "MODEL_LOADING": "sync"})
    gate = app.wsgi_app  # the access check, then the fast path for plain predictions (flask_api/fastpath.py)
    fast = gate.app
    headers = {"X-API-Key": auth[1]} if auth else {}
    routes = (("WSGI app (access check + fast path)", gate), ("Flask view only", fast.flask))
    try:
        for reasons, n in ((False, 1), (True, 1), (False, BATCH_ROWS)):
            body = ours_body(rows[:n], reasons)
            for route, wsgi in routes:
                status, _ = wsgi_post(wsgi, "/api/v1/predict", body, headers)
                if not status.startswith("200"):
                    raise RuntimeError(f"in-process request through the {route} failed: {status}")
                name = f"whole request, {route}, {n} row{'s' if n > 1 else ''}, " + (
                    "with reasons" if reasons else "no reasons")
                floors.append(time_calls(name, n, lambda w=wsgi, b=body: wsgi_post(w, "/api/v1/predict", b, headers),
                                         budget, 20 if n == 1 else 5))
    finally:
        app.extensions["credit_service"].predlog.dispose()
    return floors


# --------------------------------------------------------------------------- report
def fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**not met**")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def report(context: dict[str, str], single: list[LoadResult], batches: list[LoadResult], floors: list[Floor]) -> str:
    out = ["## Serving benchmark", "", table(["", ""], [[k, v] for k, v in context.items()]), ""]
    rounds = max((r.round for r in single), default=1)

    out += ["### Single-row requests", "",
            "Closed loop: `c` connections, each with one request in flight. CPU columns are CPU time per request "
            "(server: its whole process tree; client: the load generator). *other procs* is the CPU the rest of "
            "the machine used during the point, in cores (the load average counts our own server and client too); "
            "*server processes* is the CPU of each busy server process (gunicorn/uvicorn workers), in cores.",
            ""]
    out.append(table(
        ["target", "c", "requests", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "server CPU ms/req",
         "server processes, cores", "client CPU ms/req", "other procs, cores", "load avg 1 min"],
        [[LABELS[r.target] + (f" (round {r.round})" if rounds > 1 else ""), str(r.concurrency), str(r.requests),
          str(r.errors), fmt(r.rps, 1), fmt(r.p50_ms), fmt(r.p95_ms), fmt(r.p99_ms), fmt(r.cpu_ms(r.server_cpu_s)),
          r.split, fmt(r.cpu_ms(r.client_cpu_s), 3), fmt(r.other_cores), fmt(r.load[0])] for r in single]))

    out += ["", f"### {BATCH_ROWS}-row batches", ""]
    out.append(table(
        ["target", "c", "batches", "errors", "batches/s", "rows/s", "p50 ms", "p99 ms", "server CPU ms/batch",
         "server processes, cores", "other procs, cores", "load avg 1 min"],
        [[LABELS[r.target], str(r.concurrency), str(r.requests), str(r.errors), fmt(r.rps, 2), fmt(r.rows_per_s, 0),
          fmt(r.p50_ms, 1), fmt(r.p99_ms, 1), fmt(r.cpu_ms(r.server_cpu_s), 1), r.split, fmt(r.other_cores),
          fmt(r.load[0])] for r in batches]))

    out += ["", "### In-process floors (this process, no HTTP)", ""]
    out.append(table(["operation", "calls", "mean us", "p50 us", "p99 us", "rows/s"],
                     [[f.name, str(f.calls), fmt(f.mean_us, 1), fmt(f.p50_us, 1), fmt(f.p99_us, 1),
                       fmt(f.rows_per_s, 0)] for f in floors]))

    out += ["", "### Targets", ""]
    out.append(table(["target", "measured", "verdict"], targets(single, batches)))
    return "\n".join(out)


def paired_ratios(single: list[LoadResult], target: str, figure: Callable[[LoadResult], float],
                  c: int = 8) -> list[float]:
    """``figure`` of ``target`` over the floor's, per round (each round's floor was measured just before it)."""
    ratios = []
    for r in single:
        if r.target != target or r.concurrency != c:
            continue
        floor = next((f for f in single if f.target == FLOOR and f.concurrency == c and f.round == r.round), None)
        if floor is not None and figure(floor) and r.errors == 0:
            ratios.append(figure(r) / figure(floor))
        elif floor is not None:
            ratios.append(math.inf)  # errors fail the round
    return ratios


def ratio_text(ratios: list[float], as_percent: bool = False) -> str:
    shown = [f"{x:.0%}" if as_percent else f"{x:.2f}x" for x in ratios]
    median = statistics.median(ratios)
    if len(ratios) == 1:
        return shown[0]
    return (f"median {median:.0%}" if as_percent else f"median {median:.2f}x") + f" of {len(ratios)} rounds " \
        f"({', '.join(shown)})"


def targets(single: list[LoadResult], batches: list[LoadResult]) -> list[list[str]]:
    """The verdicts. Against the floor: each round's ratio to that round's floor, judged on their median."""
    def find(target: str, c: int) -> LoadResult | None:
        return next((r for r in single if r.target == target and r.concurrency == c), None)

    rows = []
    shares = paired_ratios(single, OURS, lambda r: r.rps)
    floor, ours8 = find(FLOOR, 8), find(OURS, 8)
    one = len(shares) == 1 and floor is not None and ours8 is not None
    rows.append([f"single-row req/s at c=8 >= {TARGET_FLOOR_RPS:.0%} of the floor's",
                 "-" if not shares else (f"{ours8.rps:,.0f} vs {floor.rps:,.0f} req/s = " if one else "")
                 + ratio_text(shares, as_percent=True),
                 verdict(None if not shares else statistics.median(shares) >= TARGET_FLOOR_RPS)])
    for target, limit, label in ((OURS, TARGET_FLOOR_P99, "without reasons"),
                                 (OURS_REASONS, TARGET_FLOOR_P99_REASONS, "with reasons")):
        ratios = paired_ratios(single, target, lambda r: r.p99_ms)
        r = find(target, 8)
        one = len(ratios) == 1 and floor is not None and r is not None
        rows.append([f"single-row p99 at c=8 {label} <= {limit:g}x the floor's",
                     "-" if not ratios else (f"{r.p99_ms:.2f} vs {floor.p99_ms:.2f} ms = " if one else "")
                     + ratio_text(ratios) + f" ({sum(x.errors for x in single if x.target == target)} errors)",
                     verdict(None if not ratios else statistics.median(ratios) <= limit)])
    for c in CONCURRENCY:
        ours, theirs = find(OURS, c), find(MLFLOW, c)
        if ours is None or theirs is None or not theirs.rps:
            rows.append([f"req/s >= {TARGET_SPEEDUP:g}x mlflow at c={c}", "-", verdict(None)])
            continue
        ratio = ours.rps / theirs.rps
        rows.append([f"req/s >= {TARGET_SPEEDUP:g}x mlflow at c={c}",
                     f"{ours.rps:,.0f} vs {theirs.rps:,.0f} req/s = {ratio:.2f}x", verdict(ratio >= TARGET_SPEEDUP)])
    ours_batches = [r for r in batches if r.target == OURS and r.errors == 0]
    best = max(ours_batches, key=lambda r: r.rows_per_s, default=None)
    rows.append([f"{BATCH_ROWS}-row batches without reasons >= {TARGET_BATCH_ROWS_S:,.0f} rows/s",
                 "-" if best is None else f"{best.rows_per_s:,.0f} rows/s (best, c={best.concurrency})",
                 verdict(None if best is None else best.rows_per_s >= TARGET_BATCH_ROWS_S)])
    return rows


# --------------------------------------------------------------------------- main
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip() and int(x) > 0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured point (default 10)")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per single-row point instead of a duration "
                             "(batch points then use max(N // 100, 20) batches)")
    parser.add_argument("--rounds", type=positive_int, default=1,
                        help="measure the single-row plan this many times over, floor first each time; the floor "
                             "targets are judged on the median of each round's ratio to its own floor (default 1)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each point (default 2)")
    parser.add_argument("--concurrency", type=int_list, default=CONCURRENCY,
                        help="single-row concurrency levels (default 1,8,32)")
    parser.add_argument("--batch-concurrency", type=int_list, default=BATCH_CONCURRENCY,
                        help=f"{BATCH_ROWS}-row batch concurrency levels (default 1,2; 0 = no batches)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help=f"before each point wait up to SECONDS until other processes use < {IDLE_CORES} cores")
    parser.add_argument("--skip-mlflow", action="store_true", help="do not start or measure mlflow models serve")
    parser.add_argument("--project", type=Path, default=None,
                        help="build the project here, or reuse the build already here (kept afterwards)")
    parser.add_argument("--dataset", choices=REAL_DATASETS, default=DATASET,
                        help=f"the profile to build and serve (default {DATASET}; with --project, the build's own)")
    parser.add_argument("--data", type=Path, default=None,
                        help="the profile's full raw file (default: the shared data folder's)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (auto: wrk when installed, else Python threads)")
    parser.add_argument("--workers", type=int, default=None,
                        help="gunicorn workers (default: gunicorn.conf.py, else 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="gunicorn gthread threads per worker (default: gunicorn.conf.py, else 2)")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for our gunicorn server, e.g. OMP_NUM_THREADS=1 (repeatable)")
    parser.add_argument("--gunicorn-arg", action="append", default=[], metavar="ARG",
                        help="extra gunicorn command-line argument, e.g. --gunicorn-arg=--access-logfile=/dev/null "
                             "(repeatable)")
    parser.add_argument("--app", default="flask_api:create_app()",
                        help="WSGI app for gunicorn (default: flask_api:create_app()), e.g. a patched variant "
                             "found through --server-env PYTHONPATH=DIR")
    parser.add_argument("--floor-seconds", type=float, default=1.5, help="time budget per in-process floor")
    parser.add_argument("--skip-floors", action="store_true", help="skip the in-process floors")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve open (no credentials) instead of requiring an API key on every request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "lightgbm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    kind = args.client
    if kind == "auto":
        kind = "wrk" if shutil.which("wrk") else "python"
    if kind == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk), or use --client python")
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    load_before = os.getloadavg()
    log.info("load average before: %.2f %.2f %.2f on %d CPUs", *load_before, os.cpu_count() or 0)

    run_dir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    project_dir = args.project.resolve() if args.project else run_dir / "project"
    servers: list[Server] = []
    diff = math.nan
    try:
        project = build_project(project_dir, (args.data or default_data_file(args.dataset)).resolve(), args.dataset)
        rows = sample_rows(project.settings, BATCH_ROWS)
        auth = None if args.no_auth else api_key(run_dir)
        if auth:
            extra_env = {**extra_env, "AUTH_FILE": str(auth[0])}
        headers = {"X-API-Key": auth[1]} if auth else {}
        floors = [] if args.skip_floors else in_process_floors(project, rows, run_dir, args.floor_seconds, auth)

        ours = gunicorn_server(project, run_dir, args.workers, args.threads, extra_env, args.app,
                               tuple(args.gunicorn_arg))
        servers.append(ours)
        ours.start()
        ours.wait("/ready", timeout=180, consecutive=10)
        floor_dir = run_dir / "floor"
        floor_dir.mkdir()
        floor = gunicorn_server(project, floor_dir, args.workers, args.threads, extra_env, "bench.floor_app:app",
                                tuple(args.gunicorn_arg))
        servers.append(floor)
        floor.start()
        floor.wait("/ready", timeout=60, consecutive=3)
        workers, worker_class = gunicorn_layout(ours)
        mlflow = None
        if not args.skip_mlflow:
            mlflow = mlflow_server(project, run_dir, max(1, workers))
            servers.append(mlflow)
            mlflow.start()
            mlflow.wait("/ping", timeout=300, consecutive=3)
        log.info("servers ready: ours %s (%d %s workers)%s", ours.url, workers, worker_class,
                 f", mlflow {mlflow.url}" if mlflow else "")
        keepalive = {s.name: keeps_alive(s) for s in servers}

        one, batch = rows[:1], rows[:BATCH_ROWS]
        plan = [(FLOOR, floor, "/api/v1/predict", ours_body(one, False)),
                (OURS, ours, "/api/v1/predict", ours_body(one, False)),
                (MLFLOW, mlflow, "/invocations", mlflow_body(one)),
                (OURS_REASONS, ours, "/api/v1/predict", ours_body(one, True))]
        plan = [p for p in plan if p[1] is not None]
        parity = {}
        for target, server, path, body in plan:
            if target != FLOOR:
                parity[target] = probe(server, path, body, 1, target, headers)
        batch_plan = [(OURS, ours, "/api/v1/predict", ours_body(batch, False))]
        if mlflow:
            batch_plan.append((MLFLOW, mlflow, "/invocations", mlflow_body(batch)))
        batch_proba = {t: probe(s, p, b, len(batch), t, headers) for t, s, p, b in batch_plan}
        if mlflow:
            diff = float(np.max(np.abs(np.subtract(batch_proba[OURS], batch_proba[MLFLOW]))))
            log.info("max |ours - mlflow| probability over %d rows: %.2e", len(batch), diff)

        client = Client(kind, run_dir, headers)
        single = [measure(client, server, target, path, body, 1, c, args, args.requests, k)
                  for k in range(1, args.rounds + 1) for c in args.concurrency for target, server, path, body in plan]
        batch_limit = max(args.requests // 100, 20) if args.requests else None
        batches = [measure(client, server, target, path, body, len(batch), c, args, batch_limit)
                   for c in args.batch_concurrency for target, server, path, body in batch_plan]
        predlog = PredictionLog(ours.env["DATABASE_URL"])
        logged = predlog.count()
        predlog.dispose()
    finally:
        for server in reversed(servers):
            try:
                server.stop()
            except Exception:
                log.exception("could not stop %s", server.name)
        shutil.rmtree(run_dir, ignore_errors=True)
    load_after = os.getloadavg()
    log.info("load average after: %.2f %.2f %.2f", *load_after)

    context = {
        "machine": f"{os.cpu_count()} CPUs, {sys.platform}, Python {sys.version.split()[0]}, "
                   f"lightgbm {lightgbm.__version__}, mlflow {_version('mlflow')}, gunicorn {_version('gunicorn')}",
        "load average (1/5/15 min)": f"before {' / '.join(f'{x:.2f}' for x in load_before)}; "
                                     f"after {' / '.join(f'{x:.2f}' for x in load_after)}",
        "model": f"{project.model_name} v{project.version}, trained on all {project.rows_in:,} rows "
                 f"({project.settings.dataset}), {lightgbm_trees(project)} trees",
        "our server": f"gunicorn {'gunicorn.conf.py' if (ROOT / 'gunicorn.conf.py').exists() else 'flags'}: "
                      f"{workers} x {worker_class}" + (f", threads {args.threads}" if args.threads else "")
                      + (f", env {' '.join(args.server_env)}" if args.server_env else "")
                      + (f", app {args.app}" if args.app != "flask_api:create_app()" else "")
                      + (f", args {' '.join(args.gunicorn_arg)}" if args.gunicorn_arg else "")
                      + "; MODEL_URI = exported champion; SQLite prediction log; Prometheus multiprocess; "
                      + f"HTTP keep-alive {keepalive[ours.name]}",
        "mlflow server": "skipped" if args.skip_mlflow else
                         f"mlflow models serve --env-manager local --workers {max(1, workers)} (uvicorn); "
                         f"HTTP keep-alive {keepalive.get('mlflow models serve', '-')}",
        "client": client.describe(),
        "authentication": "off (--no-auth)" if args.no_auth else
                          "an API key on every request (X-API-Key, sent to every server alike), checked by ours",
        "per point": (f"{args.requests} requests" if args.requests else f"{args.duration:g} s")
                     + f" after {args.warmup:g} s warm-up"
                     + (f" (each waited up to {args.wait_idle:g} s for a quiet machine)" if args.wait_idle else "")
                     + (f"; the single-row plan {args.rounds} times over, floor first each round" if args.rounds > 1
                        else ""),
        "prediction log rows written": f"{logged:,}",
    }
    if not args.skip_mlflow:
        context["ours vs mlflow, max abs probability difference"] = f"{diff:.1e} over {len(batch)} rows"
    print(report(context, single, batches, floors))


def _version(package: str) -> str:
    return version(package)


def lightgbm_trees(project: Project) -> str:
    meta_file = project.settings.model_meta_file
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.exists() else {}
    return str(meta.get("best_iteration", "?"))


if __name__ == "__main__":
    main()
