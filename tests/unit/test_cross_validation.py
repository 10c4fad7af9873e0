"""Training by k-fold cross-validation on train+valid, and LightGBM's native categorical splits.

On a small real sample of taiwan_credit (a few seconds each, no DVC).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from src.common import PipelineError
from src.config import ConfigError, settings_from_dict
from src.data.ingest import ingest, read_raw
from src.data.split import group_folds, split_frame
from src.data.validate import validate
from src.modeling.evaluate import _stability
from src.modeling.metrics import choose_threshold
from src.modeling.stability import stability
from src.modeling.train import train_model
from src.scoring.scorer import Scorer
from tests.conftest import load_params, plain_rows, real_file

DATASET = "taiwan_credit"


def _params(cv_folds: int, dataset: str = DATASET) -> dict:
    params = copy.deepcopy(load_params())
    params["dataset"] = dataset
    params["ingest"] = {**params["ingest"], "sample_rows": 4000, "sample_seed": 3}
    params["train"] = {**params["train"], "cv_folds": cv_folds, "early_stopping_rounds": 30, "log_every": 0,
                       "lgbm": {**params["train"]["lgbm"], "n_estimators": 300, "n_jobs": 1}}
    return params


def _parts(settings) -> dict[str, pd.DataFrame]:
    profile = settings.profile
    raw = ingest(read_raw(real_file(settings.dataset), "csv", {}), profile, settings.ingest.sample_rows,
                 settings.ingest.sample_seed)
    clean = validate(raw, profile).clean
    return split_frame(clean, profile.feature_names, profile.target_column, settings.split)


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, pd.DataFrame]:
    return _parts(settings_from_dict(_params(0), tmp_path_factory.mktemp("cv")))


@pytest.fixture(scope="module")
def cross_validated(parts, tmp_path_factory):
    settings = settings_from_dict(_params(4), tmp_path_factory.mktemp("cv4"))
    return settings, train_model(parts["train"], parts["valid"], settings)


def test_group_folds_hold_every_row_out_once_and_keep_repeats_together() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.integers(0, 40, 600), "b": rng.integers(0, 3, 600),
                          "y": (rng.random(600) < 0.25).astype(int)})
    folds = group_folds(frame, ["a", "b"], "y", 5, seed=1)
    assert len(folds) == 5
    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(len(frame)))  # every row held out exactly once
    for fit_rows, held_rows in folds:
        assert not set(fit_rows) & set(held_rows)
        assert len(fit_rows) + len(held_rows) == len(frame)
        # exact feature repeats (there are many here) never straddle a fold's two sides
        fit_keys = set(map(tuple, frame.iloc[fit_rows][["a", "b"]].to_numpy()))
        held_keys = set(map(tuple, frame.iloc[held_rows][["a", "b"]].to_numpy()))
        assert not fit_keys & held_keys
    assert group_folds(frame, ["a", "b"], "y", 5, seed=1)[0][1].tolist() == folds[0][1].tolist()  # seeded


def test_group_folds_refuse_too_few_defaults_naming_the_counts() -> None:
    frame = pd.DataFrame({"a": range(20), "y": [1, 1] + [0] * 18})
    with pytest.raises(PipelineError, match=r"into 5 folds"):
        group_folds(frame, ["a"], "y", 5, seed=0)


@pytest.mark.parametrize(("folds", "message"), [
    (1, r"'train\.cv_folds' is 1; it must be 0 \(off\) or at least 2 folds"),
    (-2, r"train\.cv_folds"),
    ("5", r"train\.cv_folds"),
])
def test_a_bad_fold_count_is_an_error_naming_the_key(folds, message, tmp_path) -> None:
    params = _params(0)
    params["train"]["cv_folds"] = folds
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(params, tmp_path)


def test_cross_validation_trains_on_train_and_valid_and_says_so(parts, cross_validated) -> None:
    _, result = cross_validated
    meta = result.meta
    rows = len(parts["train"]) + len(parts["valid"])
    assert meta["rows"] == {"train": len(parts["train"]), "valid": len(parts["valid"])}
    assert meta["validation"]["method"] == "cross-validation" and meta["validation"]["folds"] == 4
    assert meta["validation"]["rows"] == rows == meta["valid_metrics"]["rows"]
    iterations = meta["validation"]["fold_best_iterations"]
    assert len(iterations) == 4 and all(1 <= i <= 300 for i in iterations)
    booster = result.pipeline.named_steps["model"].booster_
    # the refit: the folds' mean best iteration, every tree used when scoring
    assert meta["best_iteration"] == booster.current_iteration() == round(float(np.mean(iterations)))
    # the threshold and its costs come from the out-of-fold predictions, on every train+valid row
    assert meta["threshold_costs"]["approval_rate_valid"] == pytest.approx(meta["valid_metrics"]["approval_rate"])
    assert 0.65 < meta["valid_metrics"]["roc_auc"] < 0.85


def test_the_refit_grows_the_profiles_multiple_of_the_folds_trees(parts, cross_validated, tmp_path) -> None:
    """profiles.<name>.refit_trees scales the refit's trees; the folds (and so the threshold's predictions) stay."""
    _, plain = cross_validated
    params = _params(4)
    params["profiles"][DATASET]["refit_trees"] = 1.5
    result = train_model(parts["train"], parts["valid"], settings_from_dict(params, tmp_path))
    iterations = result.meta["validation"]["fold_best_iterations"]
    assert iterations == plain.meta["validation"]["fold_best_iterations"]
    assert result.meta["best_iteration"] == round(float(np.mean(iterations)) * 1.5) > plain.meta["best_iteration"]
    assert result.meta["threshold"] == plain.meta["threshold"]
    params["profiles"][DATASET]["refit_trees"] = 0
    with pytest.raises(ConfigError, match=r"profiles\.taiwan_credit\.refit_trees"):
        settings_from_dict(params, tmp_path)


def test_the_threshold_is_cost_optimal_on_the_out_of_fold_predictions(parts, cross_validated) -> None:
    settings, result = cross_validated
    data = pd.concat([parts["train"], parts["valid"]], ignore_index=True)
    target = settings.profile.target_column
    in_sample = result.pipeline.predict_proba(data[settings.profile.feature_names])[:, 1]
    naive = choose_threshold(data[target].to_numpy(), in_sample, settings.threshold.cost_false_negative,
                             settings.threshold.cost_false_positive)
    # chosen on predictions the refit model made for rows it was fitted on, the cut would differ
    assert result.meta["threshold"] != naive.threshold
    assert result.meta["valid_metrics"]["roc_auc"] < roc_auc_score(data[target], in_sample)


def test_stability_reports_the_folds_held_out_spread_for_free(parts, cross_validated) -> None:
    settings, result = cross_validated
    folds = result.meta["validation"]["fold_roc_auc"]
    assert len(folds) == 4 and len(set(folds)) == 4 and all(0.6 < a < 0.9 for a in folds)
    report = stability(pd.concat(parts.values(), ignore_index=True), settings, result.meta)
    assert report["runs"] == [] and report["seeds"] == []  # no retrain asked for: nothing retrained
    assert report["folds"]["roc_auc"] == folds
    assert report["folds"]["min"] == min(folds) and report["folds"]["max"] == max(folds)
    assert report["folds"]["mean"] == pytest.approx(np.mean(folds), abs=1e-6)
    card = _stability(report, {"roc_auc": 0.77}, settings.split.seed)
    assert card[0] == "## Stability across splits"
    assert f"{report['folds']['mean']:.4f} ± {report['folds']['sd']:.4f}" in card[1]
    assert "(seed 42) gives 0.7700" in card[2]


def test_native_categorical_splits_and_reasons_stay_one_per_input(tmp_path) -> None:
    """credit_risk's loan grade, home ownership and loan purpose: split by LightGBM as sets of values,
    each still one column, so a decision's reasons stay one per input and sum to its score."""
    settings = settings_from_dict(_params(0, "credit_risk"), tmp_path)
    profile = settings.profile
    assert "loan_grade" in profile.native_categorical
    parts = _parts(settings)
    result = train_model(parts["train"], parts["valid"], settings)
    booster = result.pipeline.named_steps["model"].booster_
    column = result.meta["model_columns"].index("loan_grade")
    splits = [node for tree in booster.dump_model()["tree_info"] for node in _nodes(tree["tree_structure"])
              if node.get("split_feature") == column]
    assert splits and {node["decision_type"] for node in splits} == {"=="}, "loan_grade is split as a category"
    assert result.meta["native_categorical"] == list(profile.native_categorical)
    assert set(profile.native_categorical) <= set(result.meta["ordinal_encoded"])
    scorer = Scorer(result.pipeline, result.meta, profile, top_reasons=len(profile.features))
    test = parts["test"][profile.feature_names].head(300)
    rows = plain_rows(test, profile)
    contrib = scorer.contributions(scorer.encode(rows))
    assert contrib.shape == (len(rows), len(profile.features) + 1)  # one contribution per input, and the bias
    proba = result.pipeline.predict_proba(test)[:, 1]
    np.testing.assert_allclose(1 / (1 + np.exp(-contrib.sum(axis=1))), proba, rtol=1e-9)
    served = [r["probability_of_default"] for r in scorer.score(rows, with_reasons=True)]
    np.testing.assert_allclose(served, proba, rtol=1e-6)


def _nodes(node: dict):
    yield node
    for side in ("left_child", "right_child"):
        if side in node:
            yield from _nodes(node[side])
