"""Register stage, quality gate and registry CLI against real MLflow stores.

Runs the real pipeline (`dvc exp run`) in a throw-away copy of the repo, once
against the embedded SQLite store and once against a real `mlflow server`
process (two background stories, marker ``story``: each starts with the session
in its own copy, with its own client and webhook receiver; the tests run last
and wait), and checks the champion/challenger story end to end: first version
becomes champion, a worse one is blocked by the gate, a better one is promoted,
rollback restores the previous champion, every alias change is audited, the
pyfunc champion predicts exactly like models/model.joblib, and an exported
model loads with no tracking server at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import Future
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from src.modeling.register import registration
from tests.conftest import TrainedProject
from tests.integration.conftest import (
    dvc,
    free_port,
    link_data,
    on_a_copy,
    read_json,
    running_mlflow_server,
    sh,
)
from tests.webhook import Receiver, receiving

pytestmark = pytest.mark.integration

MODEL = "credit-default-taiwan_credit"
ROWS = 12000
# v1: an underfit model (3 trees of 3 leaves, whatever the learning rate); v2: a single stump,
# clearly worse; v3: the full parameter set, clearly better than v1 (gaps well above test-set noise).
BASELINE = ("-S", f"ingest.sample_rows={ROWS}", "-S", "train.lgbm.n_estimators=3", "-S", "train.lgbm.num_leaves=3")
WORSE = ("-S", "train.lgbm.n_estimators=1", "-S", "train.lgbm.num_leaves=2")
BETTER = ("-S", "train.lgbm.n_estimators=3000", "-S", "train.lgbm.num_leaves=15")


def registry(repo: Path, *args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh(repo, sys.executable, "-m", "src.modeling.registry", *args, env=env, check=check)


def aliases(client: MlflowClient) -> dict[str, str]:
    """Alias -> version as strings (the SQLite store returns ints, the REST API strings)."""
    return {alias: str(version) for alias, version in client.get_registered_model(MODEL).aliases.items()}


def uri_for(repo: Path, store: str, server_uri: str | None) -> str:
    return server_uri if store == "server" else f"sqlite:///{repo / 'mlflow.db'}"


def registered(repo: Path, client: MlflowClient) -> dict:
    """The registry's gate record of the model metrics/gate.json reports on (its version, decision, reasons).

    gate.json holds only what the stage's inputs determine (no version numbers): the registry holds the rest.
    """
    gate = read_json(repo / "metrics" / "gate.json")
    assert "version" not in gate and gate["registered_model"] == MODEL, gate
    record = registration(client, MODEL, gate["model_sha256"])
    assert record is not None, gate
    return {**record, "floors": gate["floors"]}


STORES = ("embedded", "server")


def store_story(store: str, repo: Path, tmp_path: Path) -> None:
    """The story with its own webhook receiver and, for ``server``, its own `mlflow server`."""
    with ExitStack() as stack:
        server_uri = stack.enter_context(running_mlflow_server(tmp_path / "mlflow-server")) \
            if store == "server" else None
        champion_challenger_story(repo, store, server_uri, tmp_path, stack.enter_context(receiving()))


@pytest.mark.parametrize("store", [
    pytest.param(store, marks=pytest.mark.story(start=on_a_copy(partial(store_story, store)), minutes=4))
    for store in STORES])
def test_champion_challenger_gate_rollback_export(story: Future[None], store: str) -> None:
    story.result()


def champion_challenger_story(repo: Path, store: str, server_uri: str | None, tmp_path: Path,
                              webhook: Receiver) -> None:
    env = {"MLOPS_ACTOR": "pytest", "NOTIFY_WEBHOOK_URL": webhook.url}
    if server_uri:
        env["MLFLOW_TRACKING_URI"] = server_uri
    link_data(repo, "taiwan_credit")
    uri = uri_for(repo, store, server_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # mlflow's own URIs are process-wide

    # 1. First run: version 1 becomes champion (no champion to beat; floors met).
    dvc(repo, "exp", "run", *BASELINE, env=env)
    gate1 = registered(repo, client)
    assert gate1["version"] == 1 and gate1["decision"] == "passed" and gate1["floors"] == "passed", gate1
    if store == "embedded":
        assert (repo / "mlflow.db").exists() and (repo / "mlartifacts").is_dir()
    else:
        assert not (repo / "mlflow.db").exists(), "server mode must not touch the embedded store"

    # 2. A deliberately worse model is registered as challenger but blocked by the gate.
    #    The server run also checks gate.fail_pipeline: the pipeline then fails, naming the gate.
    fail = store == "server"
    proc = dvc(repo, "exp", "run", *WORSE, "-S", f"gate.fail_pipeline={str(fail).lower()}", env=env, check=not fail)
    if fail:
        assert proc.returncode != 0 and "failed the quality gate" in proc.stderr
        assert "Traceback" not in proc.stderr
    gate2 = registered(repo, client)
    assert gate2["version"] == 2 and gate2["decision"] == "failed", gate2
    # gate.json's floors verdict (what the inputs decide) agrees with the registry's reasons
    assert (gate2["floors"] == "failed") == any("floor" in r or "ceiling" in r for r in gate2["reasons"]), gate2
    assert gate2["champion_version"] == 1 and gate2["test_rows"] == gate1["test_rows"]
    assert any("trails the champion" in r for r in gate2["reasons"]), gate2

    assert aliases(client) == {"champion": "1", "challenger": "2"}
    v2 = client.get_model_version(MODEL, "2")
    assert v2.tags["gate.decision"] == "failed" and "trails the champion" in v2.tags["gate.reasons"]
    # the blocked challenger was notified (version 1 passing was not): which version, why, where to look
    [blocked] = webhook.events()
    assert blocked["event"] == "gate_blocked" and blocked["details"]["version"] == 2
    assert blocked["details"]["champion"] == "1" and blocked["details"]["reasons"] == gate2["reasons"]
    assert blocked["where"][0].endswith("metrics/gate.json") and "champion stays v1" in blocked["text"]

    # 3. A better model passes and takes the champion alias.
    dvc(repo, "exp", "run", *BETTER, "-S", "gate.fail_pipeline=false", env=env)
    gate3 = registered(repo, client)
    assert gate3["version"] == 3 and gate3["decision"] == "passed", gate3
    assert gate3["challenger"]["roc_auc"] > gate3["champion"]["roc_auc"]
    assert aliases(client)["champion"] == "3"

    # The registered run carries params, metrics, datasets, artifacts and provenance tags.
    run = client.get_run(client.get_model_version(MODEL, "3").run_id)
    assert run.data.params["train.lgbm.n_estimators"] == "3000"
    assert run.data.params["dataset"] == "taiwan_credit"
    assert run.data.metrics["test.roc_auc"] == pytest.approx(gate3["challenger"]["roc_auc"], abs=1e-6)
    assert run.data.tags["dataset"] == "taiwan_credit" and len(run.data.tags["dvc_lock_sha256"]) == 64
    assert len(run.data.tags["git_commit"]) == 40
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert contexts == {"train", "valid", "test"}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "metrics", "model_card.md", "model_meta.json"} <= artifacts

    # pyfunc champion == models/model.joblib, exactly, on the whole test split (raw columns in).
    test = pd.read_parquet(repo / "data" / "processed" / "test.parquet")
    meta = read_json(repo / "models" / "model_meta.json")
    local = joblib.load(repo / "models" / "model.joblib").predict_proba(test[meta["features"]])[:, 1]
    rows = tmp_path / "rows.parquet"
    test[meta["features"]].to_parquet(rows)
    served = predict_with(repo, f"models:/{MODEL}@champion", rows, tmp_path / "champion_pred.parquet",
                          {"MLFLOW_TRACKING_URI": uri})
    np.testing.assert_array_equal(served, local)

    # 4. Export the champion; it loads and predicts identically with no tracking server reachable.
    export_dir = tmp_path / "exported"
    registry(repo, "export", "champion", str(export_dir), env=env)
    assert (export_dir / "MLmodel").exists()
    assert read_json(export_dir / "registry.json")["version"] == 3
    evaluation = export_dir / "evaluation"  # the run's figures, for the service's model page
    assert {p.name for p in evaluation.iterdir()} == {"plots", "metrics", "model_card.md"}
    assert read_json(evaluation / "metrics" / "test.json")["roc_auc"] == pytest.approx(
        gate3["challenger"]["roc_auc"], abs=1e-6)
    elsewhere = tmp_path / "elsewhere"  # no checkout here: src must come from the model's own code/
    elsewhere.mkdir()
    exported = predict_with(elsewhere, str(export_dir), rows, tmp_path / "exported_pred.parquet",
                            {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "PYTHONPATH": ""})
    np.testing.assert_array_equal(exported, local)

    # 5. Rollback restores the previous champion, and records it.
    registry(repo, "rollback", "--reason", "v3 misbehaves in production", env=env)
    assert aliases(client)["champion"] == "1"
    assert client.get_model_version(MODEL, "3").tags["rolled_back"] == "true"
    listing = registry(repo, "list", env=env).stdout
    assert "champion" in listing and listing.count("\n") == 4  # header + 3 versions

    # 6. Manual promotion needs a reason and is audited; unknown versions are refused clearly.
    registry(repo, "promote", "2", "--reason", "manual override for the test", env=env)
    assert aliases(client)["champion"] == "2"
    bad = registry(repo, "promote", "9", "--reason", "x", env=env, check=False)
    assert bad.returncode == 1 and "has no version '9'; versions: 1, 2, 3" in bad.stderr
    assert "Traceback" not in bad.stderr

    trail = [json.loads(v) for k, v in sorted(client.get_registered_model(MODEL).tags.items())
             if k.startswith("audit.")]
    champion_moves = [(e["from"], e["to"], e["kind"]) for e in trail if e["alias"] == "champion"]
    assert champion_moves == [(None, "1", "gate"), ("1", "3", "gate"), ("3", "1", "rollback"),
                              ("1", "2", "manual-promote")]
    assert all(e["who"] == "pytest" and e["when"] and e["reason"] for e in trail)
    assert [e["to"] for e in trail if e["alias"] == "challenger"] == ["1", "2", "3"]


def predict_with(cwd: Path, model_uri: str, rows: Path, out: Path, env: dict[str, str]) -> np.ndarray:
    """``mlflow.pyfunc.load_model(model_uri).predict(rows)`` in a fresh interpreter in ``cwd``: its probabilities."""
    script = textwrap.dedent(f"""
        import mlflow, pandas as pd
        model = mlflow.pyfunc.load_model({model_uri!r})
        model.predict(pd.read_parquet({str(rows)!r})).to_parquet({str(out)!r})
    """)
    sh(cwd, sys.executable, "-c", script, env=env)
    return pd.read_parquet(out)["probability_of_default"].to_numpy()


def test_registry_cli_errors_are_one_clear_line(repo: Path, trained_project: TrainedProject) -> None:
    """Unknown model / alias and an unreachable server: exit 1, one line naming what exists, no traceback.

    Against the session's trained project (one version, champion and challenger): every call here only
    reads its registry, and fails before it would change anything.
    """
    assert trained_project.model_name == MODEL
    env = {"MLFLOW_TRACKING_URI": trained_project.tracking_uri}

    unknown_model = registry(repo, "--model", "no-such-model", "list", env=env, check=False)
    assert unknown_model.returncode == 1
    assert f"no registered model 'no-such-model'; registered models: {MODEL}" in unknown_model.stderr

    unknown_alias = registry(repo, "export", "staging", str(repo / "out"), env=env, check=False)
    assert unknown_alias.returncode == 1
    assert "has no alias 'staging'; aliases: challenger -> v1, champion -> v1" in unknown_alias.stderr

    no_previous = registry(repo, "rollback", env=env, check=False)
    assert no_previous.returncode == 1 and "no earlier champion" in no_previous.stderr

    dead = f"http://127.0.0.1:{free_port()}"
    unreachable = registry(repo, "list", env={"MLFLOW_TRACKING_URI": dead}, check=False)
    assert unreachable.returncode == 1
    assert f"MLflow tracking server {dead} is unreachable" in unreachable.stderr
    for proc in (unknown_model, unknown_alias, no_previous, unreachable):
        assert "Traceback" not in proc.stderr
        assert len([line for line in proc.stderr.splitlines() if "ERROR" in line]) == 1
