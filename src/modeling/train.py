"""Stage 4, train: train/valid splits -> ``models/model.joblib`` + ``models/model_meta.json``.

Fits the encoders on the training split (TargetEncoder cross-fits, so no row
sees its own label), early-stops LightGBM on the validation split, picks the
cost-minimising decision threshold on the validation split, and saves the whole
thing as one sklearn Pipeline plus the metadata every consumer needs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import joblib
import lightgbm
import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from src.common import PipelineError, read_table, run_main, write_json
from src.config import Settings, load_settings
from src.data.split import group_folds
from src.modeling.features import (
    assemble,
    build_classifier,
    build_preprocessor,
    classifier_params,
    fit_options,
    model_columns,
    monotone_constraints,
)
from src.modeling.metrics import choose_threshold, score_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    pipeline: Pipeline
    meta: dict[str, Any]


def train_model(train: pd.DataFrame, valid: pd.DataFrame, settings: Settings) -> TrainResult:
    """Fit the Pipeline and choose its threshold: by k-fold CV on train+valid, or on ``valid`` alone.

    With ``train.cv_folds`` set, each fold early-stops on its held-out rows, the threshold is chosen
    on the out-of-fold predictions (every train+valid row, not one small validation split), and the
    served model is refit on all of train+valid for the folds' mean best iteration.
    """
    if settings.train.cv_folds:
        return _train_cross_validated(train, valid, settings)
    profile, cfg = settings.profile, settings.train
    features, target = profile.feature_names, profile.target_column
    started = time.perf_counter()
    preprocessor = build_preprocessor(profile, cfg.target_encoder.model_dump(), cfg.seed)
    # fit_transform cross-fits the TargetEncoder; transform() alone would leak each row's label.
    x_train = preprocessor.fit_transform(train[features], train[target])
    x_valid = preprocessor.transform(valid[features])
    log.info("encoded %d train / %d valid rows into %d model columns", len(x_train), len(x_valid), x_train.shape[1])
    classifier = _fit_early_stopped(x_train, train[target], x_valid, valid[target], settings, "valid")
    pipeline = assemble(preprocessor, classifier)
    valid_proba = pipeline.predict_proba(valid[features])[:, 1]
    validation = {"method": "validation split", "rows": len(valid)}
    return _finish(pipeline, valid[target].to_numpy(), valid_proba, validation, train, settings, started,
                   rows={"train": len(train), "valid": len(valid)})


def _threads(lgbm: dict[str, Any]) -> int:
    """The threads ``train.lgbm.n_jobs`` asks for (LightGBM: 0 or less, or unset, means every core)."""
    asked = lgbm.get("n_jobs")
    return int(asked) if isinstance(asked, int) and asked > 0 else os.cpu_count() or 1


def _fit_early_stopped(x_fit: pd.DataFrame, y_fit: pd.Series, x_held: pd.DataFrame, y_held: pd.Series,
                       settings: Settings, name: str, threads: int | None = None) -> LGBMClassifier:
    """LightGBM on ``x_fit``, stopped at its best ROC-AUC on ``x_held`` (``threads`` over ``n_jobs``)."""
    cfg = settings.train
    if list(x_fit.columns) != model_columns(settings.profile):  # the constraints are given by position
        raise AssertionError(f"encoded columns {list(x_fit.columns)} differ from {model_columns(settings.profile)}")
    profile = settings.profile
    params = classifier_params(cfg.lgbm, profile)
    if threads is not None:
        params = {**params, "n_jobs": threads}
    classifier = build_classifier(params, cfg.seed, monotone_constraints(profile))
    classifier.fit(
        x_fit, y_fit, eval_X=(x_held,), eval_y=(y_held,), eval_names=[name], eval_metric="auc",
        **fit_options(profile),
        callbacks=[
            lightgbm.early_stopping(cfg.early_stopping_rounds, first_metric_only=True, verbose=False),
            lightgbm.log_evaluation(cfg.log_every),
        ],
    )
    best = classifier.best_score_[name]
    log.info("%s: best iteration %d of at most %d; %s", name, classifier.best_iteration_ or classifier.n_estimators,
             classifier.n_estimators, ", ".join(f"{k}={v:.4f}" for k, v in best.items()))
    return classifier


def _train_cross_validated(train: pd.DataFrame, valid: pd.DataFrame, settings: Settings) -> TrainResult:
    profile, cfg = settings.profile, settings.train
    data = pd.concat([train, valid], ignore_index=True)
    features, target = profile.feature_names, profile.target_column
    started = time.perf_counter()
    preprocessor = build_preprocessor(profile, cfg.target_encoder.model_dump(), cfg.seed)
    # One cross-fitted encoding for the folds and the refit: no row's encoding saw its own label.
    x_all = preprocessor.fit_transform(data[features], data[target])
    y_all = data[target]
    log.info("encoded %d train+valid rows into %d model columns; %d-fold cross-validation", len(x_all),
             x_all.shape[1], cfg.cv_folds)
    folds = group_folds(data, features, target, cfg.cv_folds, cfg.seed)

    def fit_fold(k: int) -> LGBMClassifier:
        fit_rows, held_rows = folds[k]
        return _fit_early_stopped(x_all.iloc[fit_rows], y_all.iloc[fit_rows], x_all.iloc[held_rows],
                                  y_all.iloc[held_rows], settings, f"fold{k + 1}", threads=1)

    # Folds run side by side, one LightGBM thread each (it releases the GIL while it boosts): as fast as
    # one fold at a time on every thread (measured on taiwan_credit), and each fold's model is then the
    # same whatever the number of cores.
    with ThreadPoolExecutor(max_workers=min(len(folds), _threads(cfg.lgbm))) as pool:
        fitted = list(pool.map(fit_fold, range(len(folds))))
    out_of_fold = np.empty(len(data))
    for fold, (_, held_rows) in zip(fitted, folds, strict=True):
        out_of_fold[held_rows] = fold.predict_proba(x_all.iloc[held_rows])[:, 1]
    iterations = [int(fold.best_iteration_ or fold.n_estimators) for fold in fitted]
    # Each fold's model on its own held-out rows: how much ROC-AUC moves from one partition to another.
    fold_auc = [round(float(roc_auc_score(y_all.iloc[held], out_of_fold[held])), 6) for _, held in folds]
    trees = max(1, round(float(np.mean(iterations)) * profile.refit_trees))
    classifier = build_classifier({**classifier_params(cfg.lgbm, profile), "n_estimators": trees}, cfg.seed,
                                  monotone_constraints(profile))
    classifier.fit(x_all, y_all, **fit_options(profile))
    log.info("refit on all %d rows: %d trees (the folds' best iterations %s, x %g)", len(x_all), trees, iterations,
             profile.refit_trees)
    validation = {"method": "cross-validation", "folds": cfg.cv_folds, "rows": len(data),
                  "fold_best_iterations": iterations, "fold_roc_auc": fold_auc}
    return _finish(assemble(preprocessor, classifier), y_all.to_numpy(), out_of_fold, validation, data, settings,
                   started, rows={"train": len(train), "valid": len(valid)})


def _finish(pipeline: Pipeline, y_valid: np.ndarray, valid_proba: np.ndarray, validation: dict[str, Any],
            train: pd.DataFrame, settings: Settings, started: float, rows: dict[str, int]) -> TrainResult:
    """The threshold on the validation predictions, and the metadata every consumer needs."""
    profile = settings.profile
    target = profile.target_column
    classifier = pipeline.named_steps["model"]
    best_iteration = int(classifier.best_iteration_ or classifier.n_estimators)
    choice = choose_threshold(y_valid, valid_proba,
                              settings.threshold.cost_false_negative, settings.threshold.cost_false_positive)
    log.info("decision threshold %.4f on the %s (expected cost %.4f per applicant, approval rate %.3f)",
             choice.threshold, validated_on(validation), choice.expected_cost, choice.approval_rate)
    log.info("trained in %.1f s", time.perf_counter() - started)  # a run fact: the log, not the meta
    features = profile.feature_names
    meta = {
        "dataset": profile.name,
        "title": profile.title,
        "target": target,
        "features": features,
        "feature_types": {n: f.type for n, f in profile.features.items()},
        "target_encoded": list(profile.target_encode),
        "ordinal_encoded": profile.ordinal_features,
        "native_categorical": list(profile.native_categorical),
        "monotone": profile.monotone,
        "protected": list(profile.protected),
        "protected_inputs": profile.protected_inputs,
        "model_columns": model_columns(profile),
        "threshold": choice.threshold,
        "threshold_costs": {
            "cost_false_negative": settings.threshold.cost_false_negative,
            "cost_false_positive": settings.threshold.cost_false_positive,
            "expected_cost_valid": choice.expected_cost,
            "approval_rate_valid": choice.approval_rate,
        },
        "best_iteration": best_iteration,
        "valid_metrics": score_metrics(y_valid, valid_proba, choice.threshold),
        "validation": validation,
        "rows": rows,
        "feature_summary": feature_summary(train, settings),
        "default_rate_train": float(train[target].mean()),
        "versions": {
            "python": platform.python_version(),
            **{pkg: version(pkg) for pkg in ("lightgbm", "scikit-learn", "pandas", "numpy")},
        },
    }
    return TrainResult(pipeline=pipeline, meta=meta)


def validated_on(validation: dict[str, Any]) -> str:
    """What the threshold and the validation metrics were computed on, in words (logs, model card)."""
    if validation["method"] == "cross-validation":
        return f"out-of-fold predictions of {validation['folds']}-fold cross-validation on train+valid"
    return "validation split"


def feature_summary(train: pd.DataFrame, settings: Settings) -> dict[str, dict[str, Any]]:
    """Per input column: a typical value (default for forms) and what training saw.

    Open category sets (e.g. 300 cities) get their seen values so a form can offer them.
    """
    summary: dict[str, dict[str, Any]] = {}
    for name, spec in settings.profile.features.items():
        col = train[name]
        if spec.is_categorical:
            mode = col.mode(dropna=True)
            entry: dict[str, Any] = {"default": _plain(mode.iloc[0]) if len(mode) else None}
            if spec.values is None:
                entry["seen"] = sorted(str(v) for v in col.dropna().unique())
        else:
            q = col.quantile([0.01, 0.5, 0.99])
            entry = {"default": float(q.loc[0.5]), "p01": float(q.loc[0.01]), "p99": float(q.loc[0.99])}
        summary[name] = entry
    return summary


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def predict_proba(pipeline: Pipeline, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Probability of default for each row (column 1 of predict_proba)."""
    return pipeline.predict_proba(frame[features])[:, 1]


def load_trained(settings: Settings) -> tuple[Pipeline, dict[str, Any]]:
    """This stage's outputs, for the stages after it: the fitted Pipeline and its metadata."""
    if not settings.model_file.exists():
        raise PipelineError(f"{settings.model_file} is missing: run the train stage first (dvc repro)")
    return joblib.load(settings.model_file), json.loads(settings.model_meta_file.read_text(encoding="utf-8"))


def run(settings: Settings) -> TrainResult:
    train = read_table(settings.split_table("train"))
    valid = read_table(settings.split_table("valid"))
    result = train_model(train, valid, settings)
    settings.model_file.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(result.pipeline, settings.model_file)
    write_json(settings.model_meta_file, result.meta)
    log.info("wrote %s and %s", settings.model_file.relative_to(settings.paths.root),
             settings.model_meta_file.relative_to(settings.paths.root))
    return result


def main() -> None:
    lightgbm.register_logger(logging.getLogger("lightgbm"))
    run(load_settings())


if __name__ == "__main__":
    run_main(main)
