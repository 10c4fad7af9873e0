"""Where MLflow lives: the embedded SQLite store by default, a real server when configured.

Every MLflow consumer (register stage, registry CLI, later the web app and batch
scoring) connects through :func:`connect`, so they all agree on the store and
all fail the same clear way when a server is unreachable.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow

from src.common import PipelineError
from src.config import Settings, env

log = logging.getLogger(__name__)

ENV_URI = env.MLFLOW_TRACKING_URI


@dataclass(frozen=True)
class Store:
    tracking_uri: str
    embedded: bool
    artifact_location: str | None  # for experiments created in the embedded store


def resolve_store(settings: Settings) -> Store:
    """The tracking URI from the environment, else the project's own SQLite file."""
    uri = env.text(ENV_URI, "")
    if uri:
        return Store(tracking_uri=uri, embedded=False, artifact_location=None)
    root = settings.paths.root
    database = (root / settings.mlflow.database).resolve()
    artifacts = (root / settings.mlflow.artifact_root).resolve()
    return Store(tracking_uri=f"sqlite:///{database}", embedded=True, artifact_location=artifacts.as_uri())


def check_reachable(uri: str, timeout: float) -> None:
    """Fail fast with the URI when an HTTP tracking server does not answer.

    MLflow's own client retries for minutes before giving up; one health probe
    turns that into an immediate, readable error.
    """
    if not uri.startswith(("http://", "https://")):
        return
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as resp:
            if resp.status >= 400:
                raise PipelineError(f"MLflow tracking server {uri} answered {resp.status} on /health")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(f"MLflow tracking server {uri} is unreachable ({reason}); "
                            f"start it or unset {ENV_URI} to use the embedded store") from exc


def connect(settings: Settings) -> Store:
    """Point the mlflow module at the store (tracking and registry) and check it answers."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars garble logs
    store = resolve_store(settings)
    check_reachable(store.tracking_uri, settings.mlflow.connect_timeout)
    if store.embedded:
        Path(settings.paths.root / settings.mlflow.artifact_root).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(store.tracking_uri)
    mlflow.set_registry_uri(store.tracking_uri)
    return store


def ensure_experiment(settings: Settings, store: Store) -> str:
    """The experiment's id, creating it (with the embedded artifact folder) on first use."""
    name = settings.mlflow.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    log.info("creating MLflow experiment '%s' in %s", name, store.tracking_uri)
    return mlflow.create_experiment(name, artifact_location=store.artifact_location)
