"""Stage stability: is the model's quality a property of the data, or of one lucky split?

The same pipeline (split, train with early stopping, cost-based threshold) is rerun on
``evaluate.stability_seeds`` other split seeds, each scored on its own test split. The spread
of test ROC-AUC, approval rate and threshold across seeds goes to ``metrics/stability.json``
and the model card's validation summary, in the spirit of model-risk guidance (SR 11-7):
a figure reported without its variance across resamples is not a validated figure.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import replace
from typing import Any

import lightgbm
import pandas as pd

from src.common import read_json, read_table, run_main, write_json
from src.config import Settings, load_settings
from src.data.split import split_frame
from src.modeling.metrics import score_metrics
from src.modeling.train import predict_proba, train_model

log = logging.getLogger(__name__)


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 6), "sd": round(statistics.stdev(values), 6) if len(values) > 1
            else 0.0, "min": round(min(values), 6), "max": round(max(values), 6)}


def stability(clean: pd.DataFrame, settings: Settings, meta: dict[str, Any]) -> dict[str, Any]:
    """How much the model's ROC-AUC moves with the data it is judged on.

    From the training's own cross-validation (free): each fold's model on its held-out rows. And,
    for each of ``evaluate.stability_seeds``, the whole pipeline retrained on that split seed and
    scored on its own test split: test ROC-AUC, approval rate, threshold.
    """
    profile = settings.profile
    seeds = list(settings.evaluate.stability_seeds)
    validation = meta.get("validation") or {}
    folds = validation.get("fold_roc_auc") or []
    runs = []
    for seed in seeds:
        seeded = replace(settings, split=settings.split.model_copy(update={"seed": seed}),
                         train=settings.train.model_copy(update={"seed": seed}))
        parts = split_frame(clean, profile.feature_names, profile.target_column, seeded.split)
        trained = train_model(parts["train"], parts["valid"], seeded)
        test = parts["test"]
        proba = predict_proba(trained.pipeline, test, profile.feature_names)
        metrics = score_metrics(test[profile.target_column].to_numpy(), proba, trained.meta["threshold"])
        runs.append({"seed": seed, "test_rows": len(test), "roc_auc": round(metrics["roc_auc"], 6),
                     "approval_rate": round(metrics["approval_rate"], 6),
                     "threshold": round(trained.meta["threshold"], 6), "trees": trained.meta["best_iteration"]})
        log.info("split seed %d: test ROC-AUC %.4f, approval rate %.3f, threshold %.4f", seed, metrics["roc_auc"],
                 metrics["approval_rate"], trained.meta["threshold"])
    summary = {key: _spread([r[key] for r in runs]) for key in ("roc_auc", "approval_rate", "threshold")} if runs \
        else {}
    report: dict[str, Any] = {"dataset": profile.name, "seeds": seeds, "runs": runs, **summary}
    if folds:
        report["folds"] = {"roc_auc": folds, **_spread(folds)}
    return report


def run(settings: Settings) -> dict[str, Any]:
    meta = read_json(settings.model_meta_file)  # the folds' figures only: the model itself is not needed
    report = stability(read_table(settings.clean_table), settings, meta)
    write_json(settings.stability_file, report)
    if "folds" in report:
        f = report["folds"]
        log.info("held-out ROC-AUC over the training's %d folds: %.4f +- %.4f (%.4f to %.4f)", len(f["roc_auc"]),
                 f["mean"], f["sd"], f["min"], f["max"])
    if report["runs"]:
        log.info("test ROC-AUC over %d split seeds: %.4f +- %.4f (%.4f to %.4f)", len(report["runs"]),
                 report["roc_auc"]["mean"], report["roc_auc"]["sd"], report["roc_auc"]["min"], report["roc_auc"]["max"])
    return report


def main() -> None:
    lightgbm.register_logger(logging.getLogger("lightgbm"))  # its per-iteration lines through logging, as train's
    run(load_settings())


if __name__ == "__main__":
    run_main(main)
