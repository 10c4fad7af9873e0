"""Shared fixtures: project root, the public data folder, settings for each profile."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.tracking._model_registry import utils as registry_uri_state
from mlflow.tracking._tracking_service import utils as tracking_uri_state

from flask_api import create_app
from src.config import Profile, Settings, read_params, settings_from_dict
from src.data import ingest, split, validate
from src.modeling import evaluate, fairness, register, registry, stability, train
from tests import postgres
from tests.webhook import Receiver, receiving

ROOT = Path(__file__).resolve().parents[1]
REAL_DATASETS = ("taiwan_credit", "credit_risk", "lending_club")
ALL_DATASETS = (*REAL_DATASETS, "risk_flag")


def shared_data_dir() -> Path:
    """Where the public datasets are: $SHARED_DATA, else ../shared/data beside the repo."""
    return Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()


def load_params() -> dict:
    return read_params(ROOT / "params.yaml")


def make_settings(dataset: str, root: Path, **overrides: dict) -> Settings:
    """Settings for ``dataset`` whose paths live under ``root`` (a tmp dir), with section overrides."""
    params = load_params()
    params["dataset"] = dataset
    for section, values in overrides.items():
        params[section] = {**params[section], **values}
    return settings_from_dict(params, root)


def real_file(dataset: str) -> Path:
    """Path of a real public file, skipping the test when the data folder is absent."""
    params = load_params()
    path = shared_data_dir() / dataset / params["profiles"][dataset]["source"]["file"]
    if dataset == "risk_flag":
        path = shared_data_dir() / "risk_flag" / "test_unlabeled.csv"
    if not path.exists():
        pytest.skip(f"public data file {path} not present (see docs/datasets.md)")
    return path


def venv_tool(name: str, package: str) -> str:
    """A linter installed as a dev dependency (next to this interpreter, else on PATH); fails naming its package."""
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not installed: pipenv sync --dev ({package})")
    return found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``story`` run last: their stories run in the background from the session's first
    integration test (tests/integration/conftest.py), so by then they have had the whole session to finish."""
    items.sort(key=lambda item: item.get_closest_marker("story") is not None)


@pytest.fixture(autouse=True)
def _restore_mlflow_uris() -> Iterator[None]:
    """Put MLflow's tracking and registry URIs back after every test.

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` (called by ``tracking.connect``) also
    export ``$MLFLOW_TRACKING_URI`` / ``$MLFLOW_REGISTRY_URI`` in MLflow 3, so a test that talked
    to a server it then stopped would otherwise point every later test, and every
    subprocess they start, at that dead server.
    """
    saved = {var: os.environ.get(var) for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    tracking, registry_uri = tracking_uri_state._tracking_uri, registry_uri_state._registry_uri
    yield
    tracking_uri_state._tracking_uri, registry_uri_state._registry_uri = tracking, registry_uri
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


@pytest.fixture
def params() -> dict:
    return load_params()


@dataclass(frozen=True)
class TrainedProject:
    """A small real model: taiwan_credit sample -> pipeline -> embedded MLflow -> exported champion."""

    root: Path
    settings: Settings
    model_dir: Path  # `registry export champion` output: loads with no tracking server
    tracking_uri: str
    model_name: str


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> TrainedProject:
    """Built once per test session (about 15 s); tests must not modify it."""
    root = tmp_path_factory.mktemp("project")
    source = real_file("taiwan_credit")
    external = root / "data" / "external" / "taiwan_credit"
    external.mkdir(parents=True)
    (external / source.name).symlink_to(source)
    settings = make_settings("taiwan_credit", root, ingest={"sample_rows": 6000})
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        for stage in (ingest, validate, split, train, fairness, stability, evaluate, register):
            stage.run(settings)
        model_dir = registry.export(MlflowClient(), settings.registered_model_name, "champion", root / "exported")
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return TrainedProject(root=root, settings=settings, model_dir=model_dir,
                          tracking_uri=f"sqlite:///{root / 'mlflow.db'}", model_name=settings.registered_model_name)


def uploads_under(settings: Settings, folder: Path, **changes: object) -> Settings:
    """``settings`` with the batch page's job folders in ``folder`` (tests never write into the trained project)."""
    uploads = settings.serve.uploads.model_copy(update={"folder": str(folder), **changes})
    return dataclasses.replace(settings, serve=settings.serve.model_copy(update={"uploads": uploads}))


@pytest.fixture
def app(trained_project: TrainedProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The Flask app serving the exported champion, with its own prediction-log database and upload folder."""
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'predictions.db'}")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("AUTH_FILE", str(tmp_path / "credentials.json"))  # none: open, on a loopback address
    application = create_app({"SETTINGS": uploads_under(trained_project.settings, tmp_path / "uploads"),
                              "MODEL_URI": str(trained_project.model_dir),
                              "MODEL_LOADING": "sync", "TESTING": True})
    yield application
    application.extensions["credit_service"].predlog.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


def plain_rows(frame: pd.DataFrame, profile: Profile) -> list[dict]:
    """The profile's inputs of each row as an API client would send them: codes (int or str), floats, None."""
    kinds = {k: (f.value_kind if f.is_categorical else float) for k, f in profile.features.items()}
    return [{k: (None if pd.isna(v) else kinds[k](v)) for k, v in row.items()}
            for row in frame[profile.feature_names].to_dict("records")]


def default_applicant(meta: dict) -> dict:
    """A valid applicant built from the model's training medians / modes."""
    return {name: entry["default"] for name, entry in meta["feature_summary"].items()}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server for the session (admin URL); skipped where the server is not installed."""
    bindir = postgres.server_binaries()
    if bindir is None:
        pytest.skip("the PostgreSQL server is not installed: apt-get install -y postgresql (.ci/run does)")
    with postgres.running_server(bindir) as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database of its own on the session's PostgreSQL server."""
    with postgres.fresh_database(postgres_server) as url:
        yield url


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A real local HTTP receiver, and $NOTIFY_WEBHOOK_URL pointing at it (for this process and its children)."""
    with receiving() as receiver:
        monkeypatch.setenv("NOTIFY_WEBHOOK_URL", receiver.url)
        yield receiver
