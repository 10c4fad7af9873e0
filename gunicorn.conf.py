"""Gunicorn settings for the scoring service: ``gunicorn -c gunicorn.conf.py "flask_api:create_app()"``.

Gunicorn executes this file in the master process at start-up and again on every
SIGHUP, so everything at module level is idempotent (``setdefault``) and the
one-time work lives in ``on_starting``. The choices, and why:

* gthread workers: a second thread per process overlaps one request's Python with
  another's time in LightGBM or a socket (both release the GIL), and keeps a slow
  request (a 1000-row batch, a /metrics scrape) from stalling the worker's single-row
  predictions; several processes side-step the GIL. Two threads, not more: on 2 cores
  every extra runnable thread only queues for the GIL and the CPU, which lengthened
  the c=8 tail in the benchmark (docs/performance.md).
  The class is ``src.server.worker.KeepAliveThreadWorker``: gthread plus two
  keep-alive fixes (a restart never closes a connection it promised to keep; a
  connection is recycled after GUNICORN_KEEPALIVE_REQUESTS requests so clients
  spread over the workers). See that module.
* ``sys.setswitchinterval(0.5 ms)`` in each worker (GUNICORN_SWITCH_INTERVAL_MS): a
  thread that wants the GIL waits up to the interval (5 ms by default) for one that
  holds it, so a request could stall behind the prediction-log writer or another
  request's Python for a whole interval. A shorter interval shortened the c=8 tail at
  no measurable CPU cost (figures: docs/performance.md).
* HTTP keep-alive on: no TCP handshake and per-connection set-up per request,
  about a third of the server CPU of a single-row prediction. An idle connection
  stays open 75 s, longer than the load balancer's 60 s (src/server/worker.py says why).
* ``gc.freeze()`` once the model is loaded: the ~250,000 objects the imports
  (Flask, MLflow, pandas, scikit-learn) leave behind are never scanned again. Left
  in the collector, every full collection walked them all and stalled the worker's
  requests, a few times a minute under load.
* ``preload_app = False``: each worker imports the app and loads its own model
  after the fork, so SIGHUP (new workers) re-reads the current champion behind
  MODEL_URI, and nothing model-related is shared by fork between processes.
* Workers start accepting connections only once their model is loaded (or has
  failed to load, or GUNICORN_MODEL_WAIT seconds passed): gunicorn stops the old
  workers as soon as it forks the new ones, so during a SIGHUP restart requests
  wait in the listen backlog while the new workers import the app and load the
  model (3-20 s on a busy 2-core box) instead of getting 503 "model still
  loading". Nothing fails; clients need a timeout above that. /ready stays truthful.
* PROMETHEUS_MULTIPROC_DIR must be in the environment *before* any worker
  imports prometheus_client (it picks its value class at import time), so it is
  set here, in the master, before the first fork; dead workers' live gauges are
  dropped in ``child_exit`` so model_info only lists live workers.
* The prediction log: workers append each answered decision to their own spool
  file before answering (src/scoring/spool.py); one shipper process, started here
  when the master is ready and restarted within a second if it dies, copies
  the spool to DATABASE_URL (src/scoring/shipper.py). On stop it ships what the
  workers left (for up to 30 s; the spool keeps the rest), then exits; it also
  exits when the master is gone.
* SECRET_KEY is generated once in the master when unset, so every worker (and
  every worker after a SIGHUP) signs CSRF tokens and sessions with the same key.

Environment: SERVE_BIND (else params.yaml serve.bind, else 127.0.0.1:8000),
WEB_CONCURRENCY (workers, 2), GUNICORN_THREADS (2), GUNICORN_SWITCH_INTERVAL_MS (0.5),
GUNICORN_TIMEOUT (60),
GUNICORN_GRACEFUL_TIMEOUT (30), GUNICORN_KEEPALIVE (idle seconds, 75; 0 = Connection: close),
GUNICORN_KEEPALIVE_REQUESTS (100; read by the worker class), GUNICORN_WORKER_CLASS (keepalive),
GUNICORN_MODEL_WAIT (120),
GUNICORN_PIDFILE (none), GUNICORN_CONTROL_SOCKET (enables gunicornc on that path),
LOG_LEVEL (info).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # `gunicorn -c /path/to/gunicorn.conf.py` from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from src.auth.policy import CredentialSource, open_or_refuse
from src.auth.store import CredentialsError
from src.auth.throttle import Throttle
from src.common import freeze_survivors
from src.config import ConfigError, env, load_settings
from src.server import worker as server_worker

PROM_ENV = env.PROMETHEUS_MULTIPROC_DIR
# Set when this config created the multiprocess directory itself, so on_exit may delete it.
PROM_OWNED_ENV = "GUNICORN_OWNS_PROMETHEUS_DIR"
APP_LOGGERS = ("flask_api", "src")


def _int_env(name: str, default: int, minimum: int = 0) -> int:
    return int(env.number(name, int, default, minimum=minimum))


def _float_env(name: str, default: float) -> float:
    return float(env.number(name, float, default))


# --- process model -----------------------------------------------------------
SETTINGS = load_settings(env.params_file())
# $SERVE_BIND, else params.yaml serve.bind; and $METRICS_BIND / serve.metrics_bind, which serves only /metrics
bind = [env.serve_bind(SETTINGS), *filter(None, [env.metrics_bind(SETTINGS)])]
if len(bind) == 2 and bind[0].rsplit(":", 1)[-1] == bind[1].rsplit(":", 1)[-1]:
    raise ConfigError(f"METRICS_BIND {bind[1]} must use another port than the service's {bind[0]}")
workers = _int_env("WEB_CONCURRENCY", 2, minimum=1)
# GUNICORN_WORKER_CLASS: keepalive (default; stock gthread if this gunicorn's internals differ from the
# verified ones) or gthread. See src/server/worker.py.
worker_class = server_worker.worker_class()
threads = _int_env("GUNICORN_THREADS", 2, minimum=1)
# Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005); set per worker.
switch_interval = _float_env("GUNICORN_SWITCH_INTERVAL_MS", 0.5) / 1000
if not switch_interval > 0:
    raise ValueError(f"GUNICORN_SWITCH_INTERVAL_MS must be a number of milliseconds above 0, "
                     f"got {os.environ.get('GUNICORN_SWITCH_INTERVAL_MS', '').strip()!r}")
preload_app = False
# A gthread worker's main loop checks in at least once a second whatever its threads do (and
# post_worker_init does while waiting for the model), so this only fires for a wedged process.
timeout = _int_env("GUNICORN_TIMEOUT", 60, minimum=1)
# On SIGHUP/SIGTERM a worker stops accepting and finishes in-flight requests within this.
graceful_timeout = _int_env("GUNICORN_GRACEFUL_TIMEOUT", 30)
# Seconds an idle kept-alive connection stays open (see above); 0 = "Connection: close" on every response.
keepalive = _int_env("GUNICORN_KEEPALIVE", server_worker.DEFAULT_KEEPALIVE)
model_wait = _int_env("GUNICORN_MODEL_WAIT", 120)
# Where `kill -HUP $(cat <pidfile>)` finds the master (restarts every worker: each loads the champion).
pidfile = env.text(env.GUNICORN_PIDFILE)
if Path("/dev/shm").is_dir():  # heartbeat files on tmpfs: no disk I/O stalls blocking workers
    worker_tmp_dir = "/dev/shm"
# gunicorn >= 25 opens a control socket at one fixed per-user path, so a second server on the
# same machine (tests, a dev instance) would unlink and take over the first one's. Opt-in only.
control_socket_disable = not env.text(env.GUNICORN_CONTROL_SOCKET)
if not control_socket_disable:
    control_socket = env.text(env.GUNICORN_CONTROL_SOCKET)

# --- logging -----------------------------------------------------------------
loglevel = (env.text(env.LOG_LEVEL) or "info").lower()
accesslog = "-"
errorlog = "-"
# gunicorn's logger, minus the ~60 per-header/per-environ atoms it builds for every access line
# when the format prints none of them (see that module).
logger_class = "src.server.access_log.LeanAccessLogger"
# %(D)s: request time in microseconds; %(p)s: "<pid>" of the worker that served it.
access_log_format = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(D)sus %(p)s "%(a)s"'

# --- shared by all workers: set in the master before the first fork ----------
os.environ.setdefault("SECRET_KEY", secrets.token_hex(32))
if not os.environ.get(PROM_ENV):
    os.environ[PROM_ENV] = tempfile.mkdtemp(prefix="credit-prometheus-")
    os.environ[PROM_OWNED_ENV] = os.environ[PROM_ENV]
# Workers only append to the prediction log's spool; one shipper process beside them (started below) copies
# it to the database, so no worker spends CPU or GIL time on database writes.
os.environ[env.PREDLOG_SHIPPER] = "external"
# POST /admin/reload on any worker bumps this file; every worker sees it and reloads (flask_api/service.py).
os.environ.setdefault("RELOAD_MARKER_FILE", os.path.join(os.environ[PROM_ENV], "reload-generation"))


def on_starting(server: Any) -> None:
    """Once per master (not on SIGHUP): refuse to serve open beyond this machine (src/auth/policy.py), then
    drop metric files left by a previous run in the same directory."""
    try:
        # (the addresses gunicorn was given in the end: -b on its command line wins over this file's bind)
        open_or_refuse(CredentialSource(env.credentials_file(SETTINGS)), list(server.cfg.bind),
                       env.allow_open(SETTINGS))
        Throttle(SETTINGS.serve.auth.rate_limit_storage)  # the rate limits' store works (before any worker)
    except (ConfigError, CredentialsError, ValueError) as exc:
        server.log.error("%s", exc)
        sys.exit(3)
    directory = Path(os.environ[PROM_ENV])
    directory.mkdir(parents=True, exist_ok=True)
    stale = list(directory.glob("*.db"))
    for path in stale:
        path.unlink(missing_ok=True)
    server.log.info("prometheus multiprocess dir %s (%d stale files removed)", directory, len(stale))
    os.environ[env.SERVICE_STARTED_AT] = f"{time.time():.3f}"  # the counts start now (the monitoring page's rates)


ROOT = Path(__file__).resolve().parent
SHIPPER_CHECK_SECONDS = 1.0
SHIPPER_DRAIN_SECONDS = 30  # on stop, how long the shipper keeps retrying a failing database (then: the spool)
# Kept on the arbiter, not in module globals: SIGHUP re-reads this file into a fresh namespace.
SHIPPER_ATTR, STOPPING_ATTR = "credit_log_shipper", "credit_log_shipper_stopping"


def _start_shipper(server: Any) -> None:
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    shipper = subprocess.Popen([sys.executable, "-m", "src.scoring.shipper", "--parent", str(os.getpid()),
                                "--drain-seconds", str(SHIPPER_DRAIN_SECONDS)],
                               env={**os.environ, "PYTHONPATH": python_path},
                               start_new_session=True)  # signals to the group (Ctrl-C) are for the master
    setattr(server, SHIPPER_ATTR, shipper)
    server.log.info("prediction log shipper started (pid %s)", shipper.pid)


def _watch_shipper(server: Any) -> None:
    """Restart the shipper within a second if it dies (rows wait in the spool meanwhile, never lost)."""
    while not getattr(server, STOPPING_ATTR, False):
        time.sleep(SHIPPER_CHECK_SECONDS)
        shipper = getattr(server, SHIPPER_ATTR)
        if shipper.poll() is not None and not getattr(server, STOPPING_ATTR, False):
            # (the arbiter may have reaped it first: then its exit status is unknown)
            server.log.error("prediction log shipper (pid %s) exited; starting a new one", shipper.pid)
            _start_shipper(server)


def when_ready(server: Any) -> None:
    """Once per master, before the first worker: the shipper process and the thread that keeps it running."""
    _start_shipper(server)
    threading.Thread(target=_watch_shipper, args=(server,), name="shipper-watch", daemon=True).start()


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker: the app's own log records (model loads, incidents) go to gunicorn's error log,
    with the pid, and the GIL switch interval is shortened (see the module docstring)."""
    sys.setswitchinterval(switch_interval)
    error_log = logging.getLogger("gunicorn.error")
    for name in APP_LOGGERS:
        app_log = logging.getLogger(name)
        app_log.handlers = list(error_log.handlers)
        app_log.setLevel(error_log.level)
        app_log.propagate = False


def post_worker_init(worker: Any) -> None:
    """Hold the worker out of the accept loop until its model is loaded (or failed), heartbeating meanwhile.

    create_app() starts loading in a background thread; without this wait a freshly
    (re)started worker would answer 503 for the seconds the load takes, which during a
    SIGHUP restart would fail live traffic. Bounded: after ``model_wait`` seconds the
    worker serves anyway and /ready reports the state.
    """
    extensions = getattr(worker.wsgi, "extensions", None) or {}
    service = extensions.get("credit_service")
    if service is None or model_wait <= 0:
        return
    started = time.monotonic()
    deadline = started + model_wait
    models = service.models
    while worker.alive and models.current is None and models.error is None and time.monotonic() < deadline:
        worker.notify()
        time.sleep(0.1)
    waited = time.monotonic() - started
    if not worker.alive:  # told to stop (SIGHUP/SIGTERM) before its model was ready: it will not serve
        worker.log.info("worker %s stopping before serving (after %.1f s)", worker.pid, waited)
        return
    freeze_survivors()  # the imports and the model (~250,000 objects)
    state = "loaded" if models.current is not None else f"NOT loaded ({models.error or 'still loading'})"
    worker.log.info("worker %s accepting requests: model %s after %.1f s", worker.pid, state, waited)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker as it stops (SIGHUP restart, SIGTERM, max requests): publish its last metrics, then sync
    and close its spool segment."""
    extensions = getattr(worker.wsgi, "extensions", None) or {}
    service = extensions.get("credit_service")
    if service is not None:
        try:
            service.metrics.flush()
        finally:
            service.predlog.close()


def child_exit(server: Any, worker: Any) -> None:
    """In the master when a worker exits: drop its live-only gauges (model_info) from the aggregate."""
    # Imported here, not at the top: prometheus_client must first see PROMETHEUS_MULTIPROC_DIR (set above).
    from prometheus_client import multiprocess  # noqa: PLC0415

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """After the workers stopped: the shipper ships what they left and exits; then drop an owned metrics dir."""
    setattr(server, STOPPING_ATTR, True)
    shipper = getattr(server, SHIPPER_ATTR, None)
    if shipper is not None and shipper.poll() is None:
        shipper.send_signal(signal.SIGTERM)
        try:
            shipper.wait(SHIPPER_DRAIN_SECONDS + 5)
        except subprocess.TimeoutExpired:
            server.log.error("prediction log shipper still busy; the spool keeps the rest for the next start")
            shipper.kill()
    owned = os.environ.get(PROM_OWNED_ENV)
    if owned and owned == os.environ.get(PROM_ENV):
        shutil.rmtree(owned, ignore_errors=True)
