"""``drift``: how far a batch of applicants (and its scores) moved from the training reference.

The reference is the current profile's train split and the model's scores on it;
the batch is a file/folder (scored by the batch scorer, or raw applicants we score
here) or a time window of the serving prediction log. Per feature and for the
score: PSI on the reference's bins and its band, and a two-sample test (KS or
chi-square, src/monitoring/stats.py); with outcomes in the batch, default rates per
category too. A feature is drifted when any of them fires (``fired_by`` says which); the
run is flagged when any feature or the score is. Writes ``metrics/drift.json`` and an
HTML report drawn from the same numbers (drift_html), so the two always agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from src import notify
from src.common import read_table, write_json
from src.config import MonitoringSettings, Profile, Settings
from src.monitoring import drift_html, stats
from src.monitoring import psi as psi_math
from src.monitoring.sources import SCORE_COLUMN, Batch, InputError, Model, check_scores

log = logging.getLogger(__name__)

BAND_ORDER = {band: i for i, band in enumerate(psi_math.BANDS)}
PSI = "psi"


@dataclass(frozen=True)
class DriftResult:
    """The drift summary (what drift.json holds) and whether it is flagged."""

    summary: dict[str, Any]

    @property
    def flag(self) -> bool:
        return bool(self.summary["flag"])

    @property
    def drifted_features(self) -> list[str]:
        return list(self.summary["drifted_features"])


def compare(reference: pd.DataFrame, reference_scores: pd.Series, batch: pd.DataFrame, batch_scores: pd.Series,
            profile: Profile, cfg: MonitoringSettings, reference_outcomes: pd.Series | None = None,
            batch_outcomes: pd.Series | None = None) -> dict[str, Any]:
    """PSI, a two-sample test and (with outcomes on both sides) default rates per category, for each feature
    and the score; which test fired, the drifted features and the flag. Pure: frames in, dict out.

    Outcomes are 0/1 per row (NaN: not known yet), aligned with ``reference`` and ``batch``.
    """
    if len(batch) == 0:
        raise InputError("the batch has no rows to compare")
    if len(batch) < cfg.drift_min_rows:
        log.warning("only %d batch row(s) (monitoring.drift_min_rows = %d): PSI will be noisy",
                    len(batch), cfg.drift_min_rows)
    tests = len(profile.features) + 1  # the score too
    alpha = cfg.drift_alpha / tests
    features: dict[str, dict[str, Any]] = {}
    for name, spec in profile.features.items():
        if spec.is_categorical:
            result = psi_math.categorical_psi(reference[name], batch[name], spec.values, cfg.psi_epsilon)
            test = stats.chi_square_test(result.reference_counts, result.batch_counts, alpha, cfg.js_min_distance)
        else:
            result = psi_math.numeric_psi(reference[name], batch[name], cfg.psi_bins, cfg.psi_epsilon)
            test = stats.ks_test(reference[name], batch[name], alpha, cfg.ks_min_statistic)
        features[name] = _entry(result, spec.type, cfg, test)
    score = _entry(psi_math.numeric_psi(reference_scores, batch_scores, cfg.psi_bins, cfg.psi_epsilon), "score",
                   cfg, stats.ks_test(reference_scores, batch_scores, alpha, cfg.ks_min_statistic))
    outcomes = None
    if reference_outcomes is not None and batch_outcomes is not None and batch_outcomes.notna().any():
        outcomes = _default_rates(reference, reference_outcomes, batch, batch_outcomes, profile, cfg, features)
    drifted = [n for n, f in features.items() if f["fired_by"]]
    score_drifted = bool(score["fired_by"])
    return {
        "n_reference": len(reference),
        "n_batch": len(batch),
        "thresholds": {"moderate": cfg.psi_moderate, "significant": cfg.psi_significant,
                       "flag_band": cfg.drift_flag_band, "bins": cfg.psi_bins, "epsilon": cfg.psi_epsilon,
                       "alpha": cfg.drift_alpha, "tests": tests, "alpha_per_test": alpha,
                       "ks_min_statistic": cfg.ks_min_statistic, "js_min_distance": cfg.js_min_distance,
                       "default_rate_min_difference": cfg.default_rate_min_difference,
                       "default_rate_min_rows": cfg.default_rate_min_rows},
        "features": features,
        "score": score,
        "outcomes": outcomes,
        "drifted_features": sorted(drifted, key=lambda n: -features[n]["psi"]),
        "score_drifted": score_drifted,
        "flag": bool(drifted) or score_drifted,
    }


def _entry(result: psi_math.PsiResult, kind: str, cfg: MonitoringSettings, test: stats.TestResult,
           ) -> dict[str, Any]:
    band = psi_math.band(result.psi, cfg.psi_moderate, cfg.psi_significant)
    fired_by = ([PSI] if BAND_ORDER[band] >= BAND_ORDER[cfg.drift_flag_band] else []) + ([test.name] if test.fired
                                                                                       else [])
    return {"type": kind, "psi": round(result.psi, 6), "band": band, "bins": result.bins(), "test": test.as_dict(),
            "fired_by": fired_by}


def _default_rates(reference: pd.DataFrame, reference_outcomes: pd.Series, batch: pd.DataFrame,
                   batch_outcomes: pd.Series, profile: Profile, cfg: MonitoringSettings,
                   features: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each categorical feature's default rate per category against the reference's (into ``features``)."""
    per_feature = {
        name: stats.default_rates(reference[name].map(psi_math.category_key, na_action="ignore"), reference_outcomes,
                                  batch[name].map(psi_math.category_key, na_action="ignore"), batch_outcomes,
                                  cfg.default_rate_min_rows)
        for name, spec in profile.features.items() if spec.is_categorical}
    compared = sum(len(categories) for categories in per_feature.values())
    alpha = cfg.drift_alpha / max(compared, 1)
    for name, categories in per_feature.items():
        fired = stats.judge_default_rates(categories, alpha, cfg.default_rate_min_difference)
        features[name]["default_rate"] = {"fired": fired, "categories": categories}
        if fired:
            features[name]["fired_by"].append(stats.DEFAULT_RATE)
    known = batch_outcomes.dropna()
    return {"rows": len(known), "batch_default_rate": round(float(known.mean()), 6),
            "reference_default_rate": round(float(reference_outcomes.dropna().mean()), 6),
            "categories_compared": compared, "alpha_per_category": alpha}


def outcomes_of(frame: pd.DataFrame, column: str, positive: Any) -> pd.Series | None:
    """The frame's outcomes as 0/1 (NaN where unknown or unreadable), or None when it has no such column.

    ``positive``: the value that means "defaulted" (the profile's for a batch as delivered; 1 for the
    pipeline's own tables, whose target the ingest stage already turned into 0/1)."""
    if column not in frame.columns:
        return None
    valid, label = stats.outcome_labels(frame[column], positive)
    return label.astype("float64").where(valid.fillna(False).astype(bool))


def batch_scores(batch: Batch, model: Model) -> tuple[pd.Series, str]:
    """The batch's own scores when it has them (scored file, prediction log), else the model's."""
    if SCORE_COLUMN in batch.frame.columns:
        return check_scores(batch.frame, batch.source), "batch"
    log.info("%s has no '%s' column: scoring %d row(s) with %s v%s", batch.source, SCORE_COLUMN,
             len(batch.frame), model.name, model.version)
    return model.predict(batch.frame), "model"


def reference_frame(settings: Settings, model: Model) -> tuple[pd.DataFrame, pd.Series]:
    """The current profile's train split and the model's scores on it."""
    reference = read_table(settings.split_table("train"))
    return reference, model.predict(reference)


def run_drift(settings: Settings, batch: Batch, model: Model, output: Path, html: Path | None) -> DriftResult:
    """Compare ``batch`` with the model's training reference; write drift.json (and the HTML report)."""
    cfg = settings.monitoring
    reference, ref_scores = reference_frame(settings, model)
    scores, scored_by = batch_scores(batch, model)
    profile = settings.profile
    batch_outcomes = outcomes_of(batch.frame, profile.target_column, profile.positive)
    if batch_outcomes is not None:
        log.info("%s carries outcomes for %d row(s): default rates per category are compared too", batch.source,
                 int(batch_outcomes.notna().sum()))
    summary = compare(reference, ref_scores, batch.frame, scores, settings.profile, cfg,
                      outcomes_of(reference, profile.target_column, 1), batch_outcomes)
    versions = (batch.frame["model_version"].astype(str).value_counts().to_dict()
                if "model_version" in batch.frame.columns else {})
    if versions and set(versions) != {model.version}:
        log.warning("batch was scored by model version(s) %s; the reference scores come from %s v%s",
                    ", ".join(sorted(versions)), model.name, model.version)
    header = {
        "dataset": settings.dataset,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model.describe(),
        "batch": {"source": batch.source, "rows_in": batch.rows_in, "rows": len(batch.frame),
                  "rejected": batch.rejected, "rejected_reasons": batch.rejected_reasons,
                  "scores_from": scored_by, "model_versions": {str(k): int(v) for k, v in versions.items()}},
        "reference": {"source": str(settings.split_table("train")), "rows": len(reference)},
        "report": None,
    }
    summary = {**header, **summary}
    if html is not None:
        summary["report"] = str(html)
        drift_html.write(summary, html)
    write_json(output, summary)
    return DriftResult(summary)


def describe(result: DriftResult) -> str:
    """A few lines for the terminal: the flag, the drifted features (with the tests that fired), the score."""
    s = result.summary
    lines = [f"drift: {'FLAGGED' if result.flag else 'none'}  (batch {s['n_batch']} rows vs reference "
             f"{s['n_reference']}; flag band {s['thresholds']['flag_band']})"]
    for name in result.drifted_features:
        lines.append(f"  {name:<24} {test_line(s['features'][name])}")
    lines.append(f"  {'score':<24} {test_line(s['score'])}")
    return "\n".join(lines)


def test_line(entry: dict[str, Any]) -> str:
    """'PSI 0.071 none; chi-square p 2.6e-53, JS 0.112; fired: chi-square, default-rate' for one feature."""
    test = entry["test"]
    if test["statistic"] is None:
        second = f"{test['name']} not testable"
    elif test["name"] == stats.CHI_SQUARE:
        second = f"chi-square p {test['p_value']:.2g}, JS {test['js_distance']:.3f}"
    else:
        second = f"KS D {test['statistic']:.3f}, p {test['p_value']:.2g}"
    fired = ", ".join(entry["fired_by"]) or "nothing"
    return f"PSI {entry['psi']:.3f} {entry['band']}; {second}; fired: {fired}"


def drift_event(result: DriftResult, dataset: str, source: str, output: Path, html: Path | None) -> notify.Event:
    """The notification for a flagged drift run: what drifted, by which test, and where the report is."""
    s = result.summary
    drifted = [f"{name} ({', '.join(s['features'][name]['fired_by'])})" for name in result.drifted_features]
    if s["score_drifted"]:
        drifted.append(f"the score ({', '.join(s['score']['fired_by'])})")
    return notify.Event(
        "drift_flagged", "warning", f"Drift flagged on {dataset}: {', '.join(result.drifted_features) or 'the score'}",
        f"{s['n_batch']:,} rows of {source} against the {s['n_reference']:,} training rows: drifted "
        f"{'; '.join(drifted)}.", where=[str(output), *([str(html)] if html else [])],
        details={"drifted_features": result.drifted_features, "score_drifted": s["score_drifted"],
                 "fired_by": {n: s["features"][n]["fired_by"] for n in result.drifted_features},
                 "n_batch": s["n_batch"]}, dataset=dataset)
