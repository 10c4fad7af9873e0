"""Registry export by models:/ URI (what the Dockerfile's MODEL_URI build arg names) and import of an export.

Real MLflow: a fresh SQLite store in a temp dir receives the trained project's exported
champion through ``import_exported``; ``export_uri`` brings it back by alias and by version.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from src.common import PipelineError
from src.modeling import registry
from src.modeling.model_uri import parse_model_uri
from src.scoring import model_store
from tests.conftest import TrainedProject


@pytest.mark.parametrize(("uri", "parsed"), [
    ("models:/credit-default-taiwan_credit@champion", ("credit-default-taiwan_credit", "champion", None)),
    ("models:/m/12", ("m", None, "12")),
])
def test_model_uris_parse(uri: str, parsed: tuple[str, str | None, str | None]) -> None:
    assert parse_model_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["champion", "models:/m", "models:/m/latest", "models:/@champion", "runs:/abc/model",
                                 "models:/a/b@c", "models:/m/1/2"])
def test_other_uris_are_one_clear_error(uri: str) -> None:
    with pytest.raises(PipelineError, match="is not models:/<name>@<alias> or models:/<name>/<version>"):
        parse_model_uri(uri)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """An empty SQLite registry, also the mlflow module's current one (artifact downloads use that)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield MlflowClient(uri, uri)
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def test_import_then_export_by_alias_and_by_version(trained_project: TrainedProject, store: MlflowClient,
                                                    tmp_path: Path) -> None:
    name = "imported-model"
    store.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
    assert registry.import_exported(store, trained_project.model_dir, name, "champion", "first") == "1"
    assert registry.import_exported(store, trained_project.model_dir, name, "champion", "second") == "2"
    trail = registry.audit_trail(store, name)
    assert [(e.from_version, e.to_version, e.kind, e.reason) for e in trail] == [
        (None, "1", "import", "first"), ("1", "2", "import", "second")]

    by_alias = registry.export_uri(store, f"models:/{name}@champion", tmp_path / "by-alias")
    by_version = registry.export_uri(store, f"models:/{name}/1", tmp_path / "by-version")
    info = {p.name: json.loads((p / "registry.json").read_text()) for p in (by_alias, by_version)}
    assert (info["by-alias"]["version"], info["by-alias"]["alias"]) == (2, "champion")
    assert (info["by-version"]["version"], info["by-version"]["alias"]) == (1, None)
    original = (trained_project.model_dir / "MLmodel").read_text()
    assert (by_alias / "MLmodel").read_text() == (by_version / "MLmodel").read_text() == original
    loaded = mlflow.pyfunc.load_model(str(by_version)).unwrap_python_model()
    assert loaded.meta["dataset"] == trained_project.settings.dataset

    with pytest.raises(PipelineError, match="has no version '7'; versions: 1, 2"):
        registry.export_uri(store, f"models:/{name}/7", tmp_path / "nope")
    with pytest.raises(PipelineError, match="has no alias 'gold'"):
        registry.export_uri(store, f"models:/{name}@gold", tmp_path / "nope")
    with pytest.raises(PipelineError, match="not an exported model directory"):
        registry.import_exported(store, tmp_path, name, "champion", "bad")


def test_an_alias_is_resolved_once_and_that_version_is_loaded(trained_project: TrainedProject, store: MlflowClient,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The champion moves between resolving the alias and loading: the model loaded is the version logged."""
    name = "raced-model"
    store.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
    registry.import_exported(store, trained_project.model_dir, name, "champion", "first")
    registry.import_exported(store, trained_project.model_dir, name, "challenger", "second")
    registry.set_alias(store, name, "champion", "1", "back to v1")
    real_load = mlflow.pyfunc.load_model
    loaded_uris: list[str] = []

    def load_while_the_champion_moves(uri: str, *args: object, **kwargs: object) -> object:
        registry.set_alias(store, name, "champion", "2", "promoted mid-load")  # what a retrain would do
        loaded_uris.append(uri)
        return real_load(uri, *args, **kwargs)

    monkeypatch.setattr(mlflow.pyfunc, "load_model", load_while_the_champion_moves)
    loaded = model_store.load_model(f"models:/{name}@champion", trained_project.settings)
    assert loaded_uris == [f"models:/{name}/1"]
    assert (loaded.name, loaded.version, loaded.uri) == (name, "1", f"models:/{name}@champion")
    assert str(store.get_model_version_by_alias(name, "champion").version) == "2"
