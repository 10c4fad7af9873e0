"""The real pipeline, run by the real DVC, in a throw-away git copy of this repository.

Each test copies the project's files (as a fresh clone would have them) into a
temporary folder, links the public data there and drives ``dvc`` exactly as the
README tells a user to.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ALL_DATASETS, load_params, real_file
from tests.integration.conftest import SAMPLE_ROWS, dvc, link_data, read_json, sh

pytestmark = pytest.mark.integration

@pytest.mark.parametrize("dataset", ALL_DATASETS)
def test_switch_profile_and_compare_runs(repo: Path, dataset: str) -> None:
    """`dvc exp run -S dataset=...` runs every stage for that profile; a train param change shows in metrics diff."""
    link_data(repo, dataset)
    dvc(repo, "exp", "run", "-S", f"dataset={dataset}", "-S", f"ingest.sample_rows={SAMPLE_ROWS}")

    quality = read_json(repo / "metrics" / "data_quality.json")
    test = read_json(repo / "metrics" / "test.json")
    assert quality["dataset"] == test["dataset"] == dataset
    assert quality["rows_in"] == SAMPLE_ROWS == quality["accepted"] + quality["rejected"]
    rejected = pd.read_parquet(repo / "data" / "interim" / "rejected.parquet")
    assert len(rejected) == quality["rejected"]
    splits = {n: pd.read_parquet(repo / "data" / "processed" / f"{n}.parquet") for n in ("train", "valid", "test")}
    assert sum(len(s) for s in splits.values()) == quality["accepted"]
    assert test["rows"] == len(splits["test"])
    # the score stage: the champion scored the test split as a "new batch"; every row validates again
    scored = read_json(repo / "metrics" / "score_summary.json")
    assert scored["rows_in"] == len(splits["test"]) == scored["scored"] + scored["rejected"] and scored["rejected"] == 0
    assert len(pd.read_parquet(repo / "data" / "scored" / "test_scored.parquet")) == scored["scored"]
    assert (repo / "data" / "raw" / f"{dataset}.parquet").exists()
    assert 0.55 < test["roc_auc"] <= 1.0, test
    meta = read_json(repo / "models" / "model_meta.json")
    assert meta["dataset"] == dataset and 0 < meta["threshold"] < 1
    card = (repo / "reports" / "model_card.md").read_text(encoding="utf-8")
    assert f"{test['roc_auc']:.4f}" in card
    fairness = read_json(repo / "metrics" / "fairness.json")
    protected = load_params()["profiles"][dataset]["protected"]
    assert fairness["dataset"] == dataset and set(fairness["attributes"]) == set(protected)
    # a champion is served on every profile: no blocking fairness verdict on the real (or synthetic) data
    assert fairness["gate"]["verdict"] in {"passed", "warned", "not measured"}, fairness["gate"]
    plots = ("roc.json", "prc.json", "calibration.json", "importance.json", "confusion.csv", "approval_by_group.csv")
    for plot in plots:
        assert (repo / "plots" / plot).stat().st_size > 0, plot

    # Record this run, then change one training parameter: only the stages after train rerun.
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", f"baseline {dataset}")
    noop = dvc(repo, "repro")
    assert "Running stage" not in noop.stdout, noop.stdout
    rerun = dvc(repo, "exp", "run", "-S", "train.lgbm.num_leaves=3", "-S", "train.lgbm.learning_rate=0.2")
    ran = {line.split("'")[1] for line in rerun.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "fairness", "stability", "evaluate", "register", "score"}, rerun.stdout

    metrics_diff = dvc(repo, "metrics", "diff", "--json")
    diff = json.loads(metrics_diff.stdout)
    changed = diff["metrics/test.json"]
    assert changed["roc_auc"]["diff"] != 0, changed
    # the gate's report is committed and input-determined: compared with HEAD's like any metric
    assert diff["metrics/gate.json"]["challenger.roc_auc"]["diff"] == pytest.approx(changed["roc_auc"]["diff"],
                                                                                    abs=2e-6)
    assert "failed to load" not in metrics_diff.stderr.lower(), metrics_diff.stderr
    assert "metrics/data_quality.json" not in diff or not diff["metrics/data_quality.json"]
    plots = dvc(repo, "plots", "diff", "--json")
    assert "ROC curve (test)" in plots.stdout


def test_default_profile_full_data_repro_is_reproducible(repo: Path) -> None:
    """`dvc repro` on a fresh clone rebuilds taiwan_credit on all rows; a second run does nothing."""
    link_data(repo, "taiwan_credit")
    committed = read_json(repo / "metrics" / "test.json")
    dvc(repo, "repro")
    test = read_json(repo / "metrics" / "test.json")
    assert test["rows"] > 4000
    assert test["roc_auc"] >= 0.78, test  # quality floor on the real data (docs/model-quality.md: ~0.79)
    if committed.get("dataset") == "taiwan_credit" and committed.get("rows") == test["rows"]:
        # Deterministic LightGBM + seeded split: a clone reproduces the committed figures.
        assert test["roc_auc"] == pytest.approx(committed["roc_auc"], abs=1e-9)
    noop = dvc(repo, "repro")
    assert "Running stage" not in noop.stdout
    assert dvc(repo, "status").stdout.strip().startswith("Data and pipelines are up to date")
    # Byte for byte what was committed: dvc.lock (every output's md5), metrics, plots and the model card.
    # The committed ones came from another clone's `dvc repro`, so two clones agree on every output.
    changed = sh(repo, "git", "status", "--porcelain").stdout
    diff = sh(repo, 'git', 'diff', 'HEAD').stdout[:4000]
    assert changed == "", f"dvc repro changed tracked files:\n{changed}\n{diff}"


def test_missing_raw_file_fails_with_instructions(repo: Path) -> None:
    proc = dvc(repo, "repro", check=False)
    assert proc.returncode != 0
    assert "no raw file for dataset 'taiwan_credit'" in proc.stderr
    assert "data/external/taiwan_credit/UCI_Credit_Card.csv" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validation_gate_stops_the_pipeline(repo: Path) -> None:
    """A raw file that is mostly garbage is quarantined and the stage fails, naming the share and the limit."""
    params = load_params()
    header = list(params["profiles"]["credit_risk"]["rename"])
    good = pd.read_csv(real_file("credit_risk")).head(500)
    good.loc[good.index[:100], "person_age"] = 250  # 20 % impossible ages
    dest = repo / "data" / "external" / "credit_risk"
    dest.mkdir(parents=True, exist_ok=True)
    good[header].to_csv(dest / "credit_risk_dataset.csv", index=False)
    proc = dvc(repo, "exp", "run", "-S", "dataset=credit_risk", check=False)
    assert proc.returncode != 0
    assert "failed validation" in proc.stderr and "max_reject_share" in proc.stderr
    assert "Traceback" not in proc.stderr
    quality = read_json(repo / "metrics" / "data_quality.json")
    assert quality["rejected"] >= 100 and quality["passed"] is False
    assert quality["rejected_per_reason"]["person_age: outside [18, 100]"] >= 100
