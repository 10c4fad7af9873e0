"""Stage 4, train: train/valid splits -> ``models/model.joblib`` + ``models/model_meta.json``.

Fits the encoders on the training split (TargetEncoder cross-fits, so no row
sees its own label), early-stops LightGBM on the validation split, picks the
cost-minimising decision threshold on the validation split, and saves the whole
thing as one sklearn Pipeline plus the metadata every consumer needs.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import joblib
import lightgbm
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from src.common import PipelineError, read_table, run_main, write_json
from src.config import Settings, load_settings
from src.modeling.features import assemble, build_classifier, build_preprocessor, model_columns, monotone_constraints
from src.modeling.metrics import choose_threshold, score_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    pipeline: Pipeline
    meta: dict[str, Any]


def train_model(train: pd.DataFrame, valid: pd.DataFrame, settings: Settings) -> TrainResult:
    """Fit the Pipeline with early stopping on ``valid`` and choose the threshold on ``valid``."""
    profile = settings.profile
    cfg = settings.train
    features, target = profile.feature_names, profile.target_column
    started = time.perf_counter()

    preprocessor = build_preprocessor(profile, cfg.target_encoder.model_dump(), cfg.seed)
    # fit_transform cross-fits the TargetEncoder; transform() alone would leak each row's label.
    x_train = preprocessor.fit_transform(train[features], train[target])
    x_valid = preprocessor.transform(valid[features])
    log.info("encoded %d train / %d valid rows into %d model columns", len(x_train), len(x_valid), x_train.shape[1])

    if list(x_train.columns) != model_columns(profile):  # the constraints below are given by position
        raise AssertionError(f"encoded columns {list(x_train.columns)} differ from {model_columns(profile)}")
    classifier = build_classifier(cfg.lgbm, cfg.seed, monotone_constraints(profile))
    classifier.fit(
        x_train, train[target],
        eval_X=(x_valid,),
        eval_y=(valid[target],),
        eval_names=["valid"],
        eval_metric="auc",
        callbacks=[
            lightgbm.early_stopping(cfg.early_stopping_rounds, first_metric_only=True, verbose=False),
            lightgbm.log_evaluation(cfg.log_every),
        ],
    )
    best_iteration = int(classifier.best_iteration_ or classifier.n_estimators)
    best_scores = {k: float(v) for k, v in classifier.best_score_["valid"].items()}
    log.info("best iteration %d of at most %d; valid %s", best_iteration, classifier.n_estimators,
             ", ".join(f"{k}={v:.4f}" for k, v in best_scores.items()))

    pipeline = assemble(preprocessor, classifier)
    valid_proba = pipeline.predict_proba(valid[features])[:, 1]
    choice = choose_threshold(valid[target].to_numpy(), valid_proba,
                              settings.threshold.cost_false_negative, settings.threshold.cost_false_positive)
    log.info("decision threshold %.4f on valid (expected cost %.4f per applicant, approval rate %.3f)",
             choice.threshold, choice.expected_cost, choice.approval_rate)
    log.info("trained in %.1f s", time.perf_counter() - started)  # a run fact: the log, not the meta

    meta = {
        "dataset": profile.name,
        "title": profile.title,
        "target": target,
        "features": features,
        "feature_types": {n: f.type for n, f in profile.features.items()},
        "target_encoded": list(profile.target_encode),
        "ordinal_encoded": profile.ordinal_features,
        "monotone": profile.monotone,
        "protected": list(profile.protected),
        "protected_inputs": profile.protected_inputs,
        "model_columns": list(x_train.columns),
        "threshold": choice.threshold,
        "threshold_costs": {
            "cost_false_negative": settings.threshold.cost_false_negative,
            "cost_false_positive": settings.threshold.cost_false_positive,
            "expected_cost_valid": choice.expected_cost,
            "approval_rate_valid": choice.approval_rate,
        },
        "best_iteration": best_iteration,
        "valid_metrics": score_metrics(valid[target].to_numpy(), valid_proba, choice.threshold),
        "rows": {"train": len(train), "valid": len(valid)},
        "feature_summary": feature_summary(train, settings),
        "default_rate_train": float(train[target].mean()),
        "versions": {
            "python": platform.python_version(),
            **{pkg: version(pkg) for pkg in ("lightgbm", "scikit-learn", "pandas", "numpy")},
        },
    }
    return TrainResult(pipeline=pipeline, meta=meta)


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
