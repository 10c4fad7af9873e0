"""Train and evaluate on a small real sample of taiwan_credit (a few seconds, no DVC)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from src.common import PipelineError, write_json, write_table
from src.data.ingest import ingest, read_raw
from src.data.split import SPLITS, split_frame
from src.data.validate import validate
from src.modeling import evaluate as evaluate_mod
from src.modeling import fairness as fairness_mod
from src.modeling import stability as stability_mod
from src.modeling import train as train_mod
from src.modeling.evaluate import feature_importance, model_card, plot_data
from src.modeling.metrics import choose_threshold, decide
from tests.conftest import load_params, make_settings, real_file

PARAMS = load_params()
DATASET = "taiwan_credit"
META_KEYS = {"features", "threshold", "best_iteration", "versions"}


def small_settings(root):
    """Early stopping and the threshold on the validation split (cv_folds 0); cross-validation has
    its own tests (test_cross_validation.py) and is the default every integration test trains with."""
    lgbm = {**PARAMS["train"]["lgbm"], "n_estimators": 200, "learning_rate": 0.08, "n_jobs": 1}
    return make_settings(DATASET, root, train={"lgbm": lgbm, "early_stopping_rounds": 30, "log_every": 0,
                                               "cv_folds": 0},
                         ingest={"sample_rows": 3000, "sample_seed": 1}, evaluate={"stability_seeds": [43, 44]})


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """ingest sample -> validate -> split in memory, then train.run and evaluate.run on a tmp root."""
    root = tmp_path_factory.mktemp("taiwan")
    settings = small_settings(root)
    profile = settings.profile
    raw = ingest(read_raw(real_file(DATASET), "csv", {}), profile,
                 settings.ingest.sample_rows, settings.ingest.sample_seed)
    checked = validate(raw, profile)
    parts = split_frame(checked.clean, profile.feature_names, profile.target_column, settings.split)
    for name, part in parts.items():
        write_table(part, settings.split_table(name))
    write_json(settings.paths.metrics / "data_quality.json", checked.report)
    write_table(checked.clean, settings.clean_table)
    trained = train_mod.run(settings)
    fairness = fairness_mod.run(settings)
    stability = stability_mod.run(settings)
    metrics = evaluate_mod.run(settings)
    return SimpleNamespace(settings=settings, parts=parts, trained=trained, metrics=metrics, quality=checked.report,
                           fairness=fairness, stability=stability)


def test_sample_size(pipeline_run):
    assert sum(len(p) for p in pipeline_run.parts.values()) == pipeline_run.quality["accepted"]
    assert pipeline_run.quality["rows_in"] == 3000


def test_pipeline_predicts_probabilities_on_raw_rows(pipeline_run):
    pipe = pipeline_run.trained.pipeline
    assert isinstance(pipe, Pipeline)
    assert [name for name, _ in pipe.steps] == ["preprocess", "model"]
    test = pipeline_run.parts["test"]
    features = pipeline_run.settings.profile.feature_names
    proba = pipe.predict_proba(test[features])
    assert proba.shape == (len(test), 2)
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # column order of the input does not matter: the pipeline selects by name
    np.testing.assert_allclose(pipe.predict_proba(test[features[::-1]]), proba)
    # the model learned something real (taiwan_credit is well above chance)
    assert roc_auc_score(test[pipeline_run.settings.profile.target_column], proba[:, 1]) > 0.65
    np.testing.assert_array_equal(train_mod.predict_proba(pipe, test, features), proba[:, 1])


def test_pipeline_scores_plain_api_rows(pipeline_run):
    pipe = pipeline_run.trained.pipeline
    features = pipeline_run.settings.profile.feature_names
    test = pipeline_run.parts["test"].head(20)
    plain = pd.DataFrame([{k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
                          for rec in test[features].astype(object).to_dict("records")])
    np.testing.assert_allclose(pipe.predict_proba(plain)[:, 1], pipe.predict_proba(test[features])[:, 1])


def test_meta_contents(pipeline_run):
    meta = pipeline_run.trained.meta
    settings = pipeline_run.settings
    assert set(meta) >= META_KEYS
    assert meta["features"] == settings.profile.feature_names
    assert set(meta["model_columns"]) == set(settings.profile.feature_names)
    assert 0.0 < meta["threshold"] < 1.0
    assert 1 <= meta["best_iteration"] <= 200
    assert {"python", "lightgbm", "scikit-learn", "pandas", "numpy"} <= set(meta["versions"])
    assert not {"trained_at", "train_seconds"} & set(meta), "run facts (times) belong in the log and MLflow"
    assert meta["rows"] == {"train": len(pipeline_run.parts["train"]), "valid": len(pipeline_run.parts["valid"])}
    assert meta["default_rate_train"] == pytest.approx(pipeline_run.parts["train"]["default"].mean())
    assert meta["target_encoded"] == list(settings.profile.target_encode)
    # written to disk identically
    on_disk = json.loads(settings.model_meta_file.read_text())
    assert on_disk == json.loads(json.dumps(meta))


def test_threshold_is_cost_optimal_on_valid(pipeline_run):
    meta = pipeline_run.trained.meta
    valid = pipeline_run.parts["valid"]
    settings = pipeline_run.settings
    proba = pipeline_run.trained.pipeline.predict_proba(valid[settings.profile.feature_names])[:, 1]
    y = valid[settings.profile.target_column].to_numpy()
    expected = choose_threshold(y, proba, settings.threshold.cost_false_negative,
                                settings.threshold.cost_false_positive)
    assert meta["threshold"] == pytest.approx(expected.threshold)
    assert meta["threshold_costs"]["approval_rate_valid"] == pytest.approx(np.mean(proba < meta["threshold"]))
    assert meta["valid_metrics"]["roc_auc"] == pytest.approx(roc_auc_score(y, proba))


def test_saved_model_equals_returned_model(pipeline_run):
    settings = pipeline_run.settings
    loaded = joblib.load(settings.model_file)
    test = pipeline_run.parts["test"][settings.profile.feature_names]
    np.testing.assert_array_equal(loaded.predict_proba(test), pipeline_run.trained.pipeline.predict_proba(test))


def test_training_is_reproducible(pipeline_run, tmp_path):
    settings = small_settings(tmp_path)
    again = train_mod.train_model(pipeline_run.parts["train"], pipeline_run.parts["valid"], settings)
    test = pipeline_run.parts["test"][settings.profile.feature_names]
    np.testing.assert_array_equal(again.pipeline.predict_proba(test), pipeline_run.trained.pipeline.predict_proba(test))
    assert again.meta["best_iteration"] == pipeline_run.trained.meta["best_iteration"]
    assert again.meta["threshold"] == pipeline_run.trained.meta["threshold"]


# --- evaluate ----------------------------------------------------------------------------------------


def test_test_metrics_match_scores(pipeline_run):
    settings = pipeline_run.settings
    test = pipeline_run.parts["test"]
    proba = pipeline_run.trained.pipeline.predict_proba(test[settings.profile.feature_names])[:, 1]
    y = test[settings.profile.target_column].to_numpy()
    written = json.loads((settings.paths.metrics / "test.json").read_text())
    assert written["dataset"] == DATASET
    assert written["rows"] == len(test)
    assert written["roc_auc"] == pytest.approx(roc_auc_score(y, proba))
    assert written["threshold"] == pipeline_run.trained.meta["threshold"]
    assert written["approval_rate"] == pytest.approx(np.mean(proba < written["threshold"]))
    assert written == json.loads(json.dumps(pipeline_run.metrics))


EXPECTED_ROW_KEYS = {
    "roc": {"fpr", "tpr", "threshold"},
    "prc": {"recall", "precision"},
    "calibration": {"mean_predicted", "observed_rate"},
    "confusion": {"actual", "predicted"},
    "importance": {"feature", "gain"},
}


def test_plot_files(pipeline_run):
    settings = pipeline_run.settings
    test = pipeline_run.parts["test"]
    y = test[settings.profile.target_column].to_numpy()
    proba = pipeline_run.trained.pipeline.predict_proba(test[settings.profile.feature_names])[:, 1]
    threshold = pipeline_run.trained.meta["threshold"]
    for name, keys in EXPECTED_ROW_KEYS.items():
        if name == "confusion":
            continue
        rows = json.loads((settings.paths.plots / f"{name}.json").read_text())
        assert rows, name
        assert all(set(r) == keys for r in rows), name
    # one row per test applicant, as CSV (dvc.yaml's plots/confusion.csv)
    assert not (settings.paths.plots / "confusion.json").exists()
    confusion = pd.read_csv(settings.paths.plots / "confusion.csv")
    assert set(confusion.columns) == EXPECTED_ROW_KEYS["confusion"]
    assert len(confusion) == len(test)
    assert confusion["actual"].tolist() == y.tolist()
    assert confusion["predicted"].tolist() == decide(proba, threshold).tolist()
    roc = json.loads((settings.paths.plots / "roc.json").read_text())
    assert roc[0]["fpr"] == 0.0 and roc[-1]["fpr"] == 1.0 and roc[-1]["tpr"] == 1.0
    assert all(0.0 <= r["threshold"] <= 1.0 for r in roc)
    assert len(roc) <= evaluate_mod.CURVE_POINTS * 2 + 1
    importance = json.loads((settings.paths.plots / "importance.json").read_text())
    assert {r["feature"] for r in importance} <= set(settings.profile.feature_names)
    gains = [r["gain"] for r in importance]
    assert gains == sorted(gains, reverse=True)
    assert len(importance) <= settings.evaluate.top_features
    calibration = json.loads((settings.paths.plots / "calibration.json").read_text())
    assert len(calibration) <= settings.evaluate.calibration_bins
    assert all(0 <= r["observed_rate"] <= 1 for r in calibration)


def test_plot_data_on_synthetic_scores():
    rng = np.random.default_rng(0)
    y = (rng.random(1000) < 0.3).astype(int)
    proba = np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.15, 1000), 0.001, 0.999)
    importance = pd.Series([5.0, 2.0], index=["a", "b"])
    data = plot_data(y, proba, 0.45, importance, bins=5)
    assert set(data) == set(EXPECTED_ROW_KEYS)
    for name, keys in EXPECTED_ROW_KEYS.items():
        assert all(set(row) == keys for row in data[name]), name
    assert len(data["confusion"]) == 1000
    assert sum(r["predicted"] for r in data["confusion"]) == int(np.sum(proba >= 0.45))
    assert len(data["calibration"]) == 5
    # quantile bins: each holds ~200 rows, so their mean predictions average to the overall mean
    assert np.mean([r["mean_predicted"] for r in data["calibration"]]) == pytest.approx(proba.mean(), abs=1e-3)
    assert data["importance"] == [{"feature": "a", "gain": 5.0}, {"feature": "b", "gain": 2.0}]
    assert len(data["roc"]) <= 2 * evaluate_mod.CURVE_POINTS + 1
    assert data["roc"][-1]["fpr"] == 1.0  # the last point survives thinning


def test_feature_importance_top_n(pipeline_run):
    imp = feature_importance(pipeline_run.trained.pipeline, 5)
    assert len(imp) == 5
    assert list(imp) == sorted(imp, reverse=True)
    assert set(imp.index) <= set(pipeline_run.settings.profile.feature_names)
    # repayment status is by far the strongest signal in this dataset
    assert "pay_0" in imp.index[:3]


def test_model_card(pipeline_run):
    settings = pipeline_run.settings
    card = (settings.paths.reports / "model_card.md").read_text()
    assert settings.profile.title in card
    assert f"{pipeline_run.metrics['roc_auc']:.4f}" in card
    assert f"| roc_auc | {pipeline_run.metrics['roc_auc']:.4f} |" in card
    assert f"{pipeline_run.trained.meta['threshold']:.4f}" in card
    assert f"test {len(pipeline_run.parts['test'])}" in card
    assert "Generated by `dvc repro` (stage evaluate)" in card
    assert card.endswith("\n")


def test_model_card_function_uses_its_inputs(pipeline_run):
    settings = pipeline_run.settings
    meta = dict(pipeline_run.trained.meta)
    metrics = dict(pipeline_run.metrics, roc_auc=0.123456)
    importance = pd.Series([3.0, 1.0], index=["limit_bal", "pay_0"])
    card = model_card(settings, meta, metrics, pipeline_run.quality, importance)
    assert "| roc_auc | 0.1235 |" in card
    assert "Credit limit (`limit_bal`), Repayment status, September (`pay_0`)" in card
    assert "- Protected attributes: sex, marriage, age. Kept in the data to measure decisions by group; not model" \
           " inputs" in card
    assert "Repayment status, September (`pay_0`) increasing" in card and "NOT FIT" not in card
    # a research model trained on protected attributes says so before anything else
    research = model_card(settings, {**meta, "protected_inputs": ["sex", "age"]}, metrics, pipeline_run.quality,
                          importance)
    assert research.splitlines()[2] == ("**NOT FIT FOR LENDING DECISIONS: this research model uses protected "
                                        "attributes (sex, age) as inputs (fairness.use_protected: true).**")
    assert "**Used as model inputs**" in research
    # how it is watched, with the thresholds of this params.yaml
    assert "## Monitoring plan" in card and f"falls more than {settings.monitoring.max_auc_drop} below" in card
    assert "protected attributes: sex, marriage, age" in card and "adverse-impact ratio >= 0.8" in card


def test_evaluate_without_model(tmp_path):
    with pytest.raises(PipelineError, match=r"model\.joblib is missing"):
        evaluate_mod.run(small_settings(tmp_path))


def test_train_without_splits(tmp_path):
    with pytest.raises(PipelineError, match=r"train\.parquet is missing"):
        train_mod.run(small_settings(tmp_path))


def test_all_split_names_written(pipeline_run):
    for name in SPLITS:
        assert pipeline_run.settings.split_table(name).exists()


def test_stability_retrains_on_each_seed_and_the_card_reports_the_spread(pipeline_run):
    """Each stability seed is a real retrain on its own split: the seed-43 run equals a by-hand split and train
    with that seed, the spread is over the runs, and the model card quotes it next to this split's figure."""
    report = pipeline_run.stability
    settings = pipeline_run.settings
    assert report["seeds"] == [43, 44] and [r["seed"] for r in report["runs"]] == [43, 44]
    aucs = [r["roc_auc"] for r in report["runs"]]
    assert report["roc_auc"]["mean"] == pytest.approx(sum(aucs) / 2, abs=1e-6)
    assert report["roc_auc"]["min"] == min(aucs) and report["roc_auc"]["max"] == max(aucs)
    assert len(set(aucs)) == 2  # different splits, different figures
    clean = pd.read_parquet(settings.clean_table)
    seeded = dataclasses.replace(settings, split=settings.split.model_copy(update={"seed": 43}),
                                 train=settings.train.model_copy(update={"seed": 43}))
    parts = split_frame(clean, settings.profile.feature_names, settings.profile.target_column, seeded.split)
    by_hand = train_mod.train_model(parts["train"], parts["valid"], seeded)
    proba = train_mod.predict_proba(by_hand.pipeline, parts["test"], settings.profile.feature_names)
    assert report["runs"][0]["roc_auc"] == pytest.approx(roc_auc_score(parts["test"]["default"], proba), abs=1e-6)
    card = (settings.paths.reports / "model_card.md").read_text(encoding="utf-8")
    assert "## Stability across splits" in card
    assert f"{report['roc_auc']['mean']:.4f} ± {report['roc_auc']['sd']:.4f}" in card
    assert f"(seed {settings.split.seed}) gives {pipeline_run.metrics['roc_auc']:.4f}" in card
