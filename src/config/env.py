"""The environment's overrides of params.yaml, read in one place.

A deployment sets these instead of editing params.yaml (the container, CI, a second
instance on the same machine). Each has one reader here; a malformed number stops
start-up with one line naming the variable.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from src.config.errors import ConfigError

if TYPE_CHECKING:
    from src.config.settings import Settings

PARAMS_FILE = "PARAMS_FILE"            # which params.yaml the service and gunicorn read
MODEL_URI = "MODEL_URI"                # the model to serve / score (models:/..., or an exported folder)
DATABASE_URL = "DATABASE_URL"          # the prediction log (SQLAlchemy URL)
SECRET_KEY = "SECRET_KEY"              # signs the web form's CSRF tokens and sessions
SERVE_BIND = "SERVE_BIND"              # gunicorn's address (else serve.bind)
RELOAD_MARKER_FILE = "RELOAD_MARKER_FILE"  # file every worker watches to follow a reload (set by gunicorn.conf.py)
MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"  # an MLflow server instead of the embedded SQLite store
LOG_LEVEL = "LOG_LEVEL"
MLOPS_ACTOR = "MLOPS_ACTOR"            # who changes the registry (audit tags); else the OS user
PROMETHEUS_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # metrics shared by gunicorn's workers (gunicorn.conf.py sets it)
GUNICORN_WORKER_CLASS = "GUNICORN_WORKER_CLASS"  # keepalive (default) or gthread
GUNICORN_KEEPALIVE_REQUESTS = "GUNICORN_KEEPALIVE_REQUESTS"  # requests per kept-alive connection (0: no limit)
PREDLOG_SPOOL_DIR = "PREDLOG_SPOOL_DIR"  # the prediction log's spool (else serve.log_spool_dir, else beside the log)
PREDLOG_SHIPPER = "PREDLOG_SHIPPER"    # "external": another process ships the spool (gunicorn.conf.py sets it)
SERVICE_STARTED_AT = "SERVICE_STARTED_AT"  # when gunicorn's master started (epoch seconds; gunicorn.conf.py sets it)
GUNICORN_PIDFILE = "GUNICORN_PIDFILE"
GUNICORN_CONTROL_SOCKET = "GUNICORN_CONTROL_SOCKET"
AUTH_FILE = "AUTH_FILE"                # API keys and web users, hashed (else serve.auth.credentials_file)
AUTH_ALLOW_OPEN = "AUTH_ALLOW_OPEN"    # true: run open on a non-loopback address (else serve.auth.allow_open)
METRICS_BIND = "METRICS_BIND"          # a separate address for /metrics (else serve.metrics_bind)
API_KEY = "API_KEY"                    # a client's key: the retrain loop's reload, the deploy smoke test
NOTIFY_WEBHOOK_URL = "NOTIFY_WEBHOOK_URL"  # where notifications go (a secret: a Slack webhook embeds a token)


def text(name: str, default: str | None = None) -> str | None:
    """The variable's value, stripped; ``default`` when unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or default


def number(name: str, kind: type[int] | type[float], default: float, *, minimum: float | None = None) -> float:
    """The variable as a whole number (``int``) or a number; ``default`` when unset; else one line naming it."""
    raw = text(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {'a whole number' if kind is int else 'a number'}, "
                          f"got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


def flag(name: str, default: bool) -> bool:
    """The variable as true/false (also 1/0, yes/no); ``default`` when unset; else one line naming it."""
    raw = text(name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def params_file() -> str:
    return text(PARAMS_FILE, "params.yaml") or "params.yaml"


def model_uri(settings: Settings) -> str:
    """$MODEL_URI, else serve.model_uri, else the current profile's champion."""
    return (text(MODEL_URI) or settings.serve.model_uri
            or f"models:/{settings.registered_model_name}@champion")


SQLITE_PREFIX = "sqlite:///"


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///<path>`` URL as written (relative or absolute); None for any other URL."""
    if not url.startswith(SQLITE_PREFIX) or url == "sqlite:///:memory:":
        return None
    return Path(url.removeprefix(SQLITE_PREFIX).split("?", 1)[0])


def database_url(settings: Settings) -> str:
    """$DATABASE_URL, else serve.database_url with a relative SQLite path anchored at the project root."""
    url = text(DATABASE_URL) or settings.serve.database_url
    path = sqlite_file(url)
    if path is not None and not path.is_absolute():
        url = SQLITE_PREFIX + str((settings.paths.root / url.removeprefix(SQLITE_PREFIX)).resolve())
    return url


def default_spool_dir(url: str, root: Path) -> Path:
    """Where a database's spool lives by default: beside a SQLite file, else under ``<root>/spool/``.

    One spool per database: a shipper copies everything in its spool into its own database.
    """
    path = sqlite_file(url)
    if path is not None:
        return (path if path.is_absolute() else root / path).with_name(path.name + ".spool")
    return root / "spool" / hashlib.sha256(url.encode()).hexdigest()[:16]


def spool_dir(settings: Settings) -> Path:
    """$PREDLOG_SPOOL_DIR, else serve.log_spool_dir (relative to the project root), else the database's default."""
    chosen = text(PREDLOG_SPOOL_DIR) or settings.serve.log_spool_dir
    if chosen:
        path = Path(chosen)
        return path if path.is_absolute() else (settings.paths.root / path).resolve()
    return default_spool_dir(database_url(settings), settings.paths.root)


def ships_elsewhere() -> bool:
    """True when another process ships the spool (gunicorn's master starts one); else the app ships it itself."""
    return text(PREDLOG_SHIPPER) == "external"


def serve_bind(settings: Settings) -> str:
    """$SERVE_BIND, else serve.bind."""
    return text(SERVE_BIND) or settings.serve.bind


def metrics_bind(settings: Settings) -> str | None:
    """$METRICS_BIND, else serve.metrics_bind (None: /metrics on the service port)."""
    return text(METRICS_BIND) or settings.serve.metrics_bind


def credentials_file(settings: Settings) -> Path:
    """$AUTH_FILE, else serve.auth.credentials_file; a relative path is under the project root."""
    path = Path(text(AUTH_FILE) or settings.serve.auth.credentials_file)
    return path if path.is_absolute() else (settings.paths.root / path).resolve()


def allow_open(settings: Settings) -> bool:
    """$AUTH_ALLOW_OPEN, else serve.auth.allow_open."""
    return flag(AUTH_ALLOW_OPEN, settings.serve.auth.allow_open)


def safe_url(url: str) -> str:
    """A database URL as SQLAlchemy renders it with the password masked (for logs and messages)."""
    import sqlalchemy as sa  # noqa: PLC0415  (only when a URL is shown: config stays light to import)

    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<unparsable database URL>"
